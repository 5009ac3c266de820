//! Training progress: an indicatif bar per epoch on a terminal, else the reference's lines.

use std::io::{self, IsTerminal, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use resnet_mnist::train::Event;

use super::output::print_event;

pub enum Reporter {
    Bar { bar: Option<(ProgressBar, Instant, usize)>, loss: Option<f64>, batch_size: usize },
    Plain,
}

impl Reporter {
    /// A bar only when both streams are terminals: redirected output gets plain lines.
    pub fn new(quiet: bool, batch_size: usize) -> Self {
        if quiet || !io::stdout().is_terminal() || !io::stderr().is_terminal() {
            Reporter::Plain
        } else {
            Reporter::Bar { bar: None, loss: None, batch_size }
        }
    }

    pub fn handle(&mut self, event: &Event) -> io::Result<()> {
        let Reporter::Bar { bar, loss, batch_size } = self else {
            return print_event(&mut io::stdout().lock(), event);
        };
        match *event {
            Event::Step { epoch, batch, batches } => {
                let (bar, started, first) = bar.get_or_insert_with(|| (new_bar(epoch, batches), Instant::now(), batch));
                bar.set_position(batch as u64);
                // Timed from the bar's first step, which itself ran before the clock started.
                let images = (batch - *first) * *batch_size;
                let rate = if images == 0 {
                    String::from("…")
                } else {
                    format!("{:.0}", images as f64 / started.elapsed().as_secs_f64())
                };
                let loss = loss.map_or(String::from("…"), |l| format!("{l:.3}"));
                bar.set_message(format!("loss {loss}  {rate} images/s"));
            }
            Event::RunningLoss { loss: l, .. } => *loss = Some(l),
            Event::GradNorms(_) => {}
            Event::Epoch(_) => {
                if let Some((bar, ..)) = bar.take() {
                    bar.finish_and_clear();
                }
                print_event(&mut io::stdout().lock(), event)?;
            }
        }
        io::stdout().flush()
    }

    /// Clears a bar left by an interrupted epoch.
    pub fn finish(&mut self) {
        if let Reporter::Bar { bar: Some((bar, ..)), .. } = self {
            bar.finish_and_clear();
        }
    }
}

fn new_bar(epoch: usize, batches: usize) -> ProgressBar {
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}, ETA {eta}")
        .expect("valid template")
        .progress_chars("=> ");
    ProgressBar::new(batches as u64).with_style(style).with_prefix(epoch.to_string())
}

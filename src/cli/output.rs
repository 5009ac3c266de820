//! What training prints, in the reference script's words: shared by `train` and `compare`
//! and by the progress display.

use std::io::Write;

use resnet_mnist::train::{self, EpochReport, Event};

pub fn print_event(out: &mut impl Write, event: &Event) -> std::io::Result<()> {
    match event {
        Event::Step { .. } | Event::GradNorms(_) => Ok(()),
        Event::RunningLoss { epoch, batch, loss } => writeln!(out, "[{epoch}, {batch:5}] loss: {loss:.3}"),
        Event::Epoch(r) => writeln!(
            out,
            "Accuracy on test set: {:.2} %  (epoch {}: {:.2} s, {:.0} images/s; train loss {:.4}, test loss {:.4})",
            r.test.accuracy, r.epoch, r.seconds, r.images_per_s, r.train_loss, r.test.loss
        ),
    }
}

pub fn print_summary(out: &mut impl Write, reports: &[EpochReport]) -> std::io::Result<()> {
    let accuracies: Vec<String> = reports.iter().map(|r| format!("{:.2}", r.test.accuracy)).collect();
    writeln!(out, "[{}]", accuracies.join(", "))?;
    if let (Some(best), Some(last)) = (train::best(reports), reports.last()) {
        let seconds: f64 = reports.iter().map(|r| r.seconds).sum();
        writeln!(
            out,
            "Best {:.2} % at epoch {}, last {:.2} %; {:.1} s of training, {:.0} images/s",
            best.test.accuracy,
            best.epoch,
            last.test.accuracy,
            seconds,
            reports.iter().map(|r| r.images_per_s * r.seconds).sum::<f64>() / seconds
        )?;
    }
    Ok(())
}

//! The comparison of block variants, depths and recipes: one finished run each, summed up in
//! a Markdown table.

use serde::{Deserialize, Serialize};

use crate::model::Arch;
use crate::train::EpochReport;

/// The data a comparison directory's runs were trained and tested on, recorded as JSON in
/// the directory so that a comparison is never continued on other data.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub dataset: String,
    pub train: usize,
    pub test: usize,
}

/// One network's run with one recipe.
pub struct Run<'a> {
    /// The recipe's name.
    pub recipe: String,
    pub arch: Arch,
    pub params: usize,
    pub history: &'a [EpochReport],
}

impl Run<'_> {
    /// The first epoch whose test accuracy reaches `target` (%), and the training seconds
    /// up to its end.
    fn reaching(&self, target: f64) -> Option<(usize, f64)> {
        let at = self.history.iter().position(|r| r.test.accuracy >= target)?;
        Some((self.history[at].epoch, self.history[..=at].iter().map(|r| r.seconds).sum()))
    }
}

/// A Markdown table, one row per run: test accuracy (best, with its epoch, and last), the first
/// epoch at `target` % and the training seconds to its end, training seconds and throughput.
pub fn markdown_table(runs: &[Run], target: f64) -> String {
    let mut table = format!(
        "| block | depth | recipe | parameters | best test accuracy | last test accuracy | first epoch ≥ {target} % | training s to {target} % | training s | images/s |\n"
    );
    table += "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for run in runs {
        let (Some(best), Some(last)) = (crate::train::best(run.history), run.history.last()) else { continue };
        let seconds: f64 = run.history.iter().map(|r| r.seconds).sum();
        let images: f64 = run.history.iter().map(|r| r.images_per_s * r.seconds).sum();
        let (epoch, time) = match run.reaching(target) {
            Some((epoch, time)) => (epoch.to_string(), format!("{time:.1}")),
            None => ("never".to_string(), "–".to_string()),
        };
        table += &format!(
            "| {} | {} | {} | {} | {:.2} % (epoch {}) | {:.2} % | {epoch} | {time} | {seconds:.1} | {:.0} |\n",
            run.arch.block,
            run.arch.depth,
            run.recipe,
            run.params,
            best.test.accuracy,
            best.epoch,
            last.test.accuracy,
            images / seconds
        );
    }
    table
}

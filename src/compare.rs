//! The comparison of block variants and depths: one finished run per network, summed up in a
//! Markdown table.

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

/// One network's run.
pub struct Run<'a> {
    pub arch: Arch,
    pub params: usize,
    pub history: &'a [EpochReport],
}

impl Run<'_> {
    /// The first epoch whose test accuracy reaches `target` (%).
    fn reaching(&self, target: f64) -> Option<usize> {
        self.history.iter().find(|r| r.test.accuracy >= target).map(|r| r.epoch)
    }
}

/// A Markdown table, one row per run: test accuracy (best, with its epoch, and last), the first
/// epoch at `target` %, training seconds and throughput.
pub fn markdown_table(runs: &[Run], target: f64) -> String {
    let mut table = format!(
        "| block | depth | parameters | best test accuracy | last test accuracy | first epoch ≥ {target} % | training s | images/s |\n"
    );
    table += "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for run in runs {
        let (Some(best), Some(last)) = (crate::train::best(run.history), run.history.last()) else { continue };
        let seconds: f64 = run.history.iter().map(|r| r.seconds).sum();
        let images: f64 = run.history.iter().map(|r| r.images_per_s * r.seconds).sum();
        let reaching = run.reaching(target).map_or("never".to_string(), |e| e.to_string());
        table += &format!(
            "| {} | {} | {} | {:.2} % (epoch {}) | {:.2} % | {reaching} | {seconds:.1} | {:.0} |\n",
            run.arch.block,
            run.arch.depth,
            run.params,
            best.test.accuracy,
            best.epoch,
            last.test.accuracy,
            images / seconds
        );
    }
    table
}

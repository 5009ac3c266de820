//! The command-line front end: flags in `args`, the dispatcher in `commands`, one module per
//! subcommand (`train`, `eval`, `predict`, `samples`, `serve`, `bench`, `compare`), and what they share:
//! `output` (the reference's lines), `progress` (the bar), `signals` (stopping on a signal),
//! `memory` (what a batch size needs).

pub mod args;
mod bench;
pub mod commands;
mod compare;
mod eval;
mod memory;
mod output;
mod predict;
mod progress;
mod samples;
mod serve;
pub mod signals;
mod train;

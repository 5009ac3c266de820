//! The command-line front end: flags in `args`, what each subcommand does in `commands`.

pub mod args;
mod artifacts;
pub mod commands;
mod compare;
mod progress;
pub mod signals;

//! SIGINT, SIGTERM and SIGHUP (Ctrl-C, `docker stop` or a batch scheduler, a closed terminal):
//! the first asks training to stop after the step in flight and save a resumable state; a
//! second one exits at once, which corrupts nothing since every file is written atomically.
//! Either way the exit status is 128 + the signal's number (130, 143, 129), so that `train &&
//! next-step` can tell an interrupted run from a finished one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

const SIGNALS: [(i32, &str); 3] = [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM"), (SIGHUP, "SIGHUP")];

/// Which of [`SIGNALS`] arrived first, once one has.
pub struct Interrupt {
    signal: Arc<AtomicUsize>,
}

/// The run stopped on a signal and saved; the process exits with [`Interrupted::exit_code`].
#[derive(Debug, thiserror::Error)]
#[error("interrupted by {name}; the run is saved")]
pub struct Interrupted {
    signal: i32,
    name: &'static str,
}

impl Interrupted {
    pub fn exit_code(&self) -> u8 {
        (128 + self.signal) as u8
    }
}

impl Interrupt {
    pub fn install() -> Result<Self> {
        let signal = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(AtomicBool::new(false));
        for (number, name) in SIGNALS {
            // In this order: a signal exits only if one came before it, then arms the next.
            signal_hook::flag::register_conditional_shutdown(number, 128 + number, Arc::clone(&armed))
                .and_then(|_| signal_hook::flag::register(number, Arc::clone(&armed)))
                .and_then(|_| signal_hook::flag::register_usize(number, Arc::clone(&signal), number as usize))
                .with_context(|| format!("cannot install the {name} handler"))?;
        }
        Ok(Interrupt { signal })
    }

    /// The first signal that arrived, if any.
    pub fn raised(&self) -> Option<Interrupted> {
        let number = self.signal.load(Ordering::SeqCst) as i32;
        SIGNALS.iter().find(|&&(n, _)| n == number).map(|&(signal, name)| Interrupted { signal, name })
    }
}

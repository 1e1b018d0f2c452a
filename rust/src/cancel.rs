//! How a running pass is asked to stop: a flag that the caller sets from
//! another thread and the pass reads once per time step (and between the large
//! products after backward's loop), never inside a step. The bindings set it
//! when Ctrl-C arrives during a long call (docs/design.md, "Threads").

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use crate::error::{Error, Result};

/// Asks the passes given it to stop. Once cancelled it stays cancelled: a pass
/// that sees it returns [`Error::Interrupted`] at its next time step, with its
/// outputs partly written, and leaves the engine ready for the next call.
#[derive(Debug, Default)]
pub struct Cancel {
    cancelled: AtomicBool,
}

impl Cancel {
    /// Not cancelled.
    pub const fn new() -> Self {
        Cancel {
            cancelled: AtomicBool::new(false),
        }
    }

    /// Asks every pass that has this flag to stop.
    pub fn cancel(&self) {
        self.cancelled.store(true, Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called. Relaxed: the flag carries no
    /// data, and a pass that sees it a step late stops a step late.
    #[inline(always)]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Relaxed)
    }

    /// [`Error::Interrupted`] once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

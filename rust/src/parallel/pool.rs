//! The engine's own rayon pool: sized by `set_num_threads`, by
//! `LSTM_FAST_NUM_THREADS`, or by the number of cores, and entered at most once
//! per call; with it, the lock that says who may use all its threads at once.

use std::sync::{Arc, Mutex, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

/// The worker threads, and the lock that says who may use all of them at once.
///
/// The lock lives with the pool (not in a static) so that forgetting the pool
/// after `fork()` also forgets a lock some thread of the parent held.
pub struct Workers {
    pub pool: ThreadPool,
    /// Taken shared by every call that uses the pool, and exclusively by a call
    /// whose threads wait for each other at a
    /// [`SpinBarrier`](super::barrier::SpinBarrier): such a call needs every
    /// worker at once, which is only guaranteed while no other call holds one.
    pub team: RwLock<()>,
}

struct Pool {
    threads: usize,
    workers: Option<Arc<Workers>>,
}

/// Held only for moments (never while threads start), so that a `fork()` from
/// another thread is unlikely to find it locked.
static POOL: Mutex<Pool> = Mutex::new(Pool {
    threads: 0,
    workers: None,
});

fn default_threads() -> usize {
    std::env::var("LSTM_FAST_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // A panic while holding the lock leaves nothing half-written worth guarding.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the current thread is a worker of a rayon pool (so parallel
/// iterators run on that pool rather than spawning the global one).
pub fn in_pool() -> bool {
    rayon::current_thread_index().is_some()
}

/// The number of threads calls will use.
pub fn num_threads() -> usize {
    let mut p = lock();
    if p.threads == 0 {
        p.threads = default_threads();
    }
    p.threads
}

/// Sets the thread count for later calls (calls already running keep theirs).
pub fn set_num_threads(n: usize) -> Result<()> {
    if n < 1 {
        return Err(Error::Value(format!(
            "set_num_threads: n must be >= 1, got {n}"
        )));
    }
    let mut p = lock();
    if p.threads != n {
        p.threads = n;
        p.workers = None;
    }
    Ok(())
}

/// Forgets the pool without joining it: after `fork()` the child has no worker
/// threads, so the parent's pool (and its team lock, which a parent thread may
/// have held) must not be used there.
pub fn forget_pool_after_fork() {
    // The child is single-threaded: if the lock is taken, its holder is gone,
    // and waiting would hang; leave the state as it is in that (rare) case.
    if let Ok(mut p) = POOL.try_lock() {
        if let Some(workers) = p.workers.take() {
            std::mem::forget(workers);
        }
    }
}

/// The pool for the current thread count, built on first use (outside the
/// lock: starting threads takes a while).
pub fn workers() -> Result<Arc<Workers>> {
    let threads = {
        let mut p = lock();
        if p.threads == 0 {
            p.threads = default_threads();
        }
        if let Some(workers) = &p.workers {
            return Ok(workers.clone());
        }
        p.threads
    };
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("lstm_fast-{i}"))
        .build()
        .map_err(|e| Error::Value(format!("could not start {threads} threads: {e}")))?;
    let built = Arc::new(Workers {
        pool,
        team: RwLock::new(()),
    });
    let mut p = lock();
    match &p.workers {
        // Another call built one meanwhile: use it, drop ours.
        Some(workers) if p.threads == threads => Ok(workers.clone()),
        _ => {
            if p.threads == threads {
                p.workers = Some(built.clone());
            }
            Ok(built)
        }
    }
}

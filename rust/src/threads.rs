//! The engine's own rayon pool: sized by `set_num_threads`, by
//! `LSTM_FAST_NUM_THREADS`, or by the number of cores, and entered once per call.

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

struct Pool {
    threads: usize,
    pool: Option<Arc<ThreadPool>>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    threads: 0,
    pool: None,
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
        p.pool = None;
    }
    Ok(())
}

/// Forgets the pool without joining it: after `fork()` the child has no worker
/// threads, so the parent's pool must not be used there.
pub fn forget_pool_after_fork() {
    let mut p = lock();
    if let Some(pool) = p.pool.take() {
        std::mem::forget(pool);
    }
}

/// The pool for the current thread count, built on first use.
pub fn pool() -> Result<Arc<ThreadPool>> {
    let mut p = lock();
    if p.threads == 0 {
        p.threads = default_threads();
    }
    if p.pool.is_none() {
        let pool = ThreadPoolBuilder::new()
            .num_threads(p.threads)
            .thread_name(|i| format!("lstm_fast-{i}"))
            .build()
            .map_err(|e| Error::Value(format!("could not start {} threads: {e}", p.threads)))?;
        p.pool = Some(Arc::new(pool));
    }
    Ok(p.pool.clone().expect("pool was just built"))
}

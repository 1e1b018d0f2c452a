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

/// Threads that meet once per time step: a counter and a generation number,
/// spinning briefly (about the length of a small step, a few microseconds) and
/// then yielding, so a partner that lost its core gets it back soon.
pub struct SpinBarrier {
    members: usize,
    arrived: std::sync::atomic::AtomicUsize,
    generation: std::sync::atomic::AtomicUsize,
}

impl SpinBarrier {
    pub fn new(members: usize) -> Self {
        SpinBarrier {
            members,
            arrived: 0.into(),
            generation: 0.into(),
        }
    }

    /// Returns once all members have called `wait` for this generation; writes
    /// made before `wait` by any member are visible to all after it.
    pub fn wait(&self) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
        let generation = self.generation.load(Acquire);
        if self.arrived.fetch_add(1, AcqRel) + 1 == self.members {
            self.arrived.store(0, Relaxed);
            self.generation.fetch_add(1, Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Acquire) == generation {
            if spins < 200 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Held shared by every call that uses the pool, and exclusively by a call
/// whose threads wait for each other at a [`SpinBarrier`]: such a call needs
/// every worker at once, which is only guaranteed while no other call holds one.
pub static TEAM: std::sync::RwLock<()> = std::sync::RwLock::new(());

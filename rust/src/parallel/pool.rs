//! The engine's own rayon pool: sized by `set_num_threads`, by
//! `LSTM_FAST_NUM_THREADS`, or by the number of cores (never more than
//! [`MAX_THREADS`]), and entered at most once per call; with it, the lock that
//! says who may use all its threads at once, and what a `fork()` leaves of it.

use std::cell::UnsafeCell;
use std::fmt::Display;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use rayon::{ThreadPool, ThreadPoolBuilder};

use super::placement;
use super::warm::Warm;
use crate::error::{Error, Result};
use crate::tuning::MAX_THREADS;

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
    /// Notified (under `team_ended_lock`) when an exclusive hold of `team`
    /// ends, for the calls waiting to take it shared: they wait in slices, so
    /// that a cancelled call stops waiting (`split::claim`).
    pub team_ended: Condvar,
    pub team_ended_lock: Mutex<()>,
    /// The workers kept awake after short team calls (`warm.rs`).
    pub warm: Arc<Warm>,
}

struct Pool {
    /// 0 until first use.
    threads: usize,
    workers: Option<Arc<Workers>>,
}

/// The pool's state behind a lock that a `fork()` cannot leave held: a flag,
/// not a `Mutex`. It is held only for moments (reading the count, cloning or
/// taking the `Arc`; never while threads start, a pool stops or the
/// environment is read), and a child, which has only the thread that forked,
/// clears it in [`forget_pool_after_fork`]: whoever held it in the parent does
/// not exist there. A `Mutex` caught locked by the fork would block the child
/// forever.
struct Guarded {
    locked: AtomicBool,
    pool: UnsafeCell<Pool>,
}

// SAFETY: `pool` is reached only through `lock()`, one thread at a time.
unsafe impl Sync for Guarded {}

static STATE: Guarded = Guarded {
    locked: AtomicBool::new(false),
    pool: UnsafeCell::new(Pool {
        threads: 0,
        workers: None,
    }),
};

/// The pool state, locked until dropped.
struct Locked(());

impl Deref for Locked {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        // SAFETY: this `Locked` holds the lock (see `lock`).
        unsafe { &*STATE.pool.get() }
    }
}

impl DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Pool {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { &mut *STATE.pool.get() }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        STATE.locked.store(false, Release);
    }
}

fn lock() -> Locked {
    while STATE
        .locked
        .compare_exchange_weak(false, true, Acquire, Acquire)
        .is_err()
    {
        // Its holder is a moment away from letting go, unless it lost its
        // core: give the core back rather than spin.
        std::thread::yield_now();
    }
    Locked(())
}

/// `LSTM_FAST_NUM_THREADS`, when set and not blank: a thread count in
/// [1, `MAX_THREADS`], or the error saying why it is not one (the engine then
/// uses the default; `import lstm_fast` warns).
pub fn env_num_threads() -> Option<Result<usize>> {
    let value = std::env::var_os("LSTM_FAST_NUM_THREADS")?;
    let value = value.to_string_lossy();
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    Some(match value.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(Error::Value(format!(
            "LSTM_FAST_NUM_THREADS={value:?} is not a number of threads in [1, {MAX_THREADS}]"
        ))),
    })
}

fn default_threads() -> usize {
    match env_num_threads() {
        Some(Ok(n)) => n,
        _ => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS),
    }
}

/// Whether the current thread is a worker of a rayon pool (so parallel
/// iterators run on that pool rather than spawning the global one).
pub fn in_pool() -> bool {
    rayon::current_thread_index().is_some()
}

/// The threads a parallel loop started here runs on: the pool's when this
/// thread is one of its workers, else 1 (the loop then runs on this thread;
/// rayon's own count would name, and start, its global pool).
pub fn threads_here() -> usize {
    if in_pool() {
        rayon::current_num_threads()
    } else {
        1
    }
}

impl Workers {
    /// Runs `body` in the pool, or on the calling thread when the pool has
    /// one thread: a pool of one would only add the hand-off (microseconds,
    /// which small calls notice), and inside `body` [`threads_here`] then
    /// says 1 either way.
    pub fn run<R: Send>(&self, body: impl FnOnce() -> R + Send) -> R {
        if self.pool.current_num_threads() == 1 {
            body()
        } else {
            self.pool.install(body)
        }
    }
}

/// The number of threads calls will use.
pub fn num_threads() -> usize {
    let threads = lock().threads;
    if threads != 0 {
        return threads;
    }
    // Outside the lock: this reads the environment and the CPU affinity.
    let default = default_threads();
    let mut p = lock();
    if p.threads == 0 {
        p.threads = default;
    }
    p.threads
}

/// The error for a thread count outside [1, `MAX_THREADS`], showing `n` as
/// the caller gave it (the bindings pass integers beyond `usize` here too).
pub fn threads_out_of_range(n: impl Display) -> Error {
    Error::Value(format!(
        "set_num_threads: n must be in [1, {MAX_THREADS}], got {n}"
    ))
}

/// Sets the thread count for later calls (calls already running keep theirs).
pub fn set_num_threads(n: usize) -> Result<()> {
    if !(1..=MAX_THREADS).contains(&n) {
        return Err(threads_out_of_range(n));
    }
    let old = {
        let mut p = lock();
        if p.threads == n {
            return Ok(());
        }
        p.threads = n;
        p.workers.take()
    };
    // Stopping a pool takes more than a moment: outside the lock (and only
    // once the calls still using it have ended, since they hold it too).
    drop(old);
    Ok(())
}

/// Forgets the pool without joining it: after `fork()` the child has no worker
/// threads, so the parent's pool (and its team lock, which a parent thread may
/// have held) must not be used there. Call it in the child (`lstm_fast`
/// registers it with `os.register_at_fork`).
pub fn forget_pool_after_fork() {
    // The child has one thread, the one that forked: a holder of the lock in
    // the parent does not exist here, so the lock is free whatever it says.
    // What it guarded may be caught mid-update, but the pool in it is the
    // parent's either way, and the count is one word.
    STATE.locked.store(false, Release);
    if let Some(workers) = lock().workers.take() {
        std::mem::forget(workers);
    }
}

/// Holds the pool's lock for `duration` (tests: a fork while another thread
/// holds it).
#[doc(hidden)]
pub fn hold_pool_lock(duration: Duration) {
    let _p = lock();
    std::thread::sleep(duration);
}

/// The pool for the current thread count, built on first use (outside the
/// lock: starting threads takes a while). A system that refuses the threads is
/// [`Error::OutOfMemory`].
pub fn workers() -> Result<Arc<Workers>> {
    if let Some(workers) = &lock().workers {
        return Ok(workers.clone());
    }
    let threads = num_threads();
    let cores = placement::cores_for(threads);
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("lstm_fast-{i}"))
        .start_handler(move |i| placement::start_worker(i, cores.as_ref()))
        .build()
        .map_err(|e| Error::OutOfMemory(format!("could not start {threads} threads: {e}")))?;
    let built = Arc::new(Workers {
        pool,
        team: RwLock::new(()),
        team_ended: Condvar::new(),
        team_ended_lock: Mutex::new(()),
        warm: Arc::default(),
    });
    // (`built` outlives the lock: a pool we do not keep stops after it.)
    let mut p = lock();
    if p.threads != threads {
        // The count changed meanwhile: this call uses what it built, later
        // calls build their own.
        return Ok(built);
    }
    match &p.workers {
        // Another call built one meanwhile: use it, drop ours.
        Some(workers) => Ok(workers.clone()),
        None => {
            p.workers = Some(built.clone());
            Ok(built)
        }
    }
}

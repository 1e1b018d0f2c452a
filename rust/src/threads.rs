//! The engine's own rayon pool: sized by `set_num_threads`, by
//! `LSTM_FAST_NUM_THREADS`, or by the number of cores, and entered at most once
//! per call. Also the barrier that threads splitting the hidden units meet at
//! every step, and the record of how well such teams have been doing (a team
//! is only worth it while its threads have cores to themselves).

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

/// The worker threads, and the lock that says who may use all of them at once.
///
/// The lock lives with the pool (not in a static) so that forgetting the pool
/// after `fork()` also forgets a lock some thread of the parent held.
pub struct Engine {
    pub pool: ThreadPool,
    /// Taken shared by every call that uses the pool, and exclusively by a call
    /// whose threads wait for each other at a [`SpinBarrier`]: such a call needs
    /// every worker at once, which is only guaranteed while no other call holds
    /// one.
    pub team: RwLock<()>,
}

struct Pool {
    threads: usize,
    engine: Option<Arc<Engine>>,
}

/// Held only for moments (never while threads start), so that a `fork()` from
/// another thread is unlikely to find it locked.
static POOL: Mutex<Pool> = Mutex::new(Pool {
    threads: 0,
    engine: None,
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
        p.engine = None;
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
        if let Some(engine) = p.engine.take() {
            std::mem::forget(engine);
        }
    }
}

/// The pool for the current thread count, built on first use (outside the
/// lock: starting threads takes a while).
pub fn pool() -> Result<Arc<Engine>> {
    let threads = {
        let mut p = lock();
        if p.threads == 0 {
            p.threads = default_threads();
        }
        if let Some(engine) = &p.engine {
            return Ok(engine.clone());
        }
        p.threads
    };
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("lstm_fast-{i}"))
        .build()
        .map_err(|e| Error::Value(format!("could not start {threads} threads: {e}")))?;
    let built = Arc::new(Engine {
        pool,
        team: RwLock::new(()),
    });
    let mut p = lock();
    match &p.engine {
        // Another call built one meanwhile: use it, drop ours.
        Some(engine) if p.threads == threads => Ok(engine.clone()),
        _ => {
            if p.threads == threads {
                p.engine = Some(built.clone());
            }
            Ok(built)
        }
    }
}

/// Threads that meet once per time step. Each waiter spins for a few tens of
/// microseconds (a step is microseconds, and a spinning partner answers in tens
/// of nanoseconds), then sleeps on a condition variable so that a partner who
/// lost its core gets it back instead of waiting out a time slice. After the
/// first sleep of a call waiters spin much longer (see `spins`). How often
/// members had to sleep is counted: see [`team_finished`].
pub struct SpinBarrier {
    members: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    sleepers: AtomicUsize,
    waits: AtomicUsize,
    slept: AtomicUsize,
    /// Spins before sleeping: grows after a sleep, so that a member just woken
    /// (which can take tens of microseconds on a virtual machine) is waited for
    /// by spinning instead of both members taking turns to sleep every step.
    spins: AtomicUsize,
    /// Set when a member panicked: the others stop waiting and panic too,
    /// instead of waiting forever for it.
    poisoned: std::sync::atomic::AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Polls before a waiter sleeps, at first and after a sleep (each an atomic
/// load, about a nanosecond: 20 000 is some tens of microseconds). No `pause`
/// instruction in the loop: under KVM a run of them makes the hypervisor take
/// the virtual CPU away (pause-loop exiting), which costs far more than it saves.
const SPINS: usize = 20_000;
const MAX_SPINS: usize = 100_000;
/// Waits at the start of a call whose sleeps do not count against the team.
const WARMUP_WAITS: usize = 8;

impl SpinBarrier {
    pub fn new(members: usize) -> Self {
        SpinBarrier {
            members,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            waits: AtomicUsize::new(0),
            slept: AtomicUsize::new(0),
            spins: AtomicUsize::new(SPINS),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Returns once all members have called `wait` for this generation; writes
    /// made before `wait` by any member are visible to all after it.
    pub fn wait(&self) {
        let generation = self.generation.load(SeqCst);
        if self.arrived.fetch_add(1, SeqCst) + 1 == self.members {
            self.arrived.store(0, SeqCst);
            self.generation.fetch_add(1, SeqCst);
            // SeqCst on both sides: either a sleeper sees the new generation
            // before sleeping, or we see it registered and wake it.
            if self.sleepers.load(SeqCst) > 0 {
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.wake.notify_all();
            }
            return;
        }
        let nth = self.waits.fetch_add(1, Relaxed);
        for _ in 0..self.spins.load(Relaxed) {
            if self.generation.load(Acquire) != generation {
                return;
            }
        }
        self.check_poison();
        // The first waits of a call also wait for members being woken: that
        // cost is the call's start, not a sign of busy cores.
        if nth >= WARMUP_WAITS {
            self.slept.fetch_add(1, Relaxed);
        }
        self.spins.store(MAX_SPINS, Relaxed);
        self.sleepers.fetch_add(1, SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.generation.load(SeqCst) == generation {
            self.check_poison();
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        drop(guard);
        self.sleepers.fetch_sub(1, SeqCst);
    }

    fn check_poison(&self) {
        if self.poisoned.load(SeqCst) {
            panic!("a thread of this team panicked");
        }
    }

    /// Marks the team broken and wakes every waiter (called as a member unwinds).
    pub fn poison(&self) {
        self.poisoned.store(true, SeqCst);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    /// (waits, of which slept).
    pub fn stats(&self) -> (usize, usize) {
        (self.waits.load(Relaxed), self.slept.load(Relaxed))
    }
}

/// Calls left during which teams are not used, after one whose members often
/// had to sleep (the cores are busy elsewhere: a team then costs more than it
/// gives). Counts down once per call, so teams are tried again later.
static TEAM_PENALTY: AtomicUsize = AtomicUsize::new(0);
/// The next penalty: 8 calls, doubling while team calls keep going badly (up
/// to 256), back to 8 after one goes well. A passing disturbance (a cold start
/// on a virtual machine) costs a few calls; lasting contention settles on the
/// path without a barrier.
static TEAM_BACKOFF: AtomicUsize = AtomicUsize::new(8);

/// Whether a team may be used for this call.
pub fn team_allowed() -> bool {
    TEAM_PENALTY
        .fetch_update(Relaxed, Relaxed, |p| p.checked_sub(1))
        .map_or(true, |_| false)
}

/// Records how a team call went: more than 1 wait in 16 ending asleep (not
/// counting the first waits of the call) disables teams for a while.
pub fn team_finished(barrier: &SpinBarrier) {
    let (waits, slept) = barrier.stats();
    if slept * 16 > waits.max(1) {
        let backoff = TEAM_BACKOFF.load(Relaxed);
        TEAM_PENALTY.store(backoff, Relaxed);
        TEAM_BACKOFF.store((backoff * 2).min(256), Relaxed);
    } else {
        TEAM_BACKOFF.store(8, Relaxed);
    }
}

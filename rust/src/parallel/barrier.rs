//! The barrier that threads splitting the hidden units meet at every step, and
//! the record of how well such teams have been doing (a team is only worth it
//! while its threads have cores to themselves). The barrier also decides when a
//! cancelled team stops, so that all its members stop at the same step.

use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Condvar, Mutex};

use crate::cancel::Cancel;
use crate::tuning::{
    MAX_SPINS, SPINS, TEAM_BACKOFF_MAX, TEAM_BACKOFF_MIN, TEAM_SLEEP_RATIO, WARMUP_WAITS,
};

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
    /// Whether the team stops after the step that the last generation ended:
    /// written by the last member to arrive before it starts the new
    /// generation, read by the others after they see it.
    stop: AtomicBool,
    sleepers: AtomicUsize,
    waits: AtomicUsize,
    slept: AtomicUsize,
    /// Spins before sleeping: grows after a sleep, so that a member just woken
    /// (which can take tens of microseconds on a virtual machine) is waited for
    /// by spinning instead of both members taking turns to sleep every step.
    spins: AtomicUsize,
    /// Set when a member panicked: the others stop waiting and panic too,
    /// instead of waiting forever for it.
    poisoned: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl SpinBarrier {
    pub fn new(members: usize) -> Self {
        SpinBarrier {
            members,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            waits: AtomicUsize::new(0),
            slept: AtomicUsize::new(0),
            spins: AtomicUsize::new(SPINS),
            poisoned: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Returns once all members have called `wait` for this generation; writes
    /// made before `wait` by any member are visible to all after it. Returns
    /// whether the team stops here: the last member to arrive reads `cancel` and
    /// publishes what it saw with the new generation, so every member gets the
    /// same answer (one that went on alone would wait for the others forever).
    pub fn wait(&self, cancel: &Cancel) -> bool {
        let generation = self.generation.load(SeqCst);
        if self.arrived.fetch_add(1, SeqCst) + 1 == self.members {
            let stop = cancel.is_cancelled();
            // Published by the generation's increment below (SeqCst, so also a
            // release), which every other member reads before `stop`.
            self.stop.store(stop, Relaxed);
            self.arrived.store(0, SeqCst);
            self.generation.fetch_add(1, SeqCst);
            // SeqCst on both sides: either a sleeper sees the new generation
            // before sleeping, or we see it registered and wake it.
            if self.sleepers.load(SeqCst) > 0 {
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.wake.notify_all();
            }
            return stop;
        }
        let nth = self.waits.fetch_add(1, Relaxed);
        // No `pause` instruction in the loop: under KVM a run of them makes the
        // hypervisor take the virtual CPU away (pause-loop exiting), which costs
        // far more than it saves.
        for _ in 0..self.spins.load(Relaxed) {
            if self.generation.load(Acquire) != generation {
                return self.stop.load(Relaxed);
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
        self.stop.load(Relaxed)
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

/// Whether a member stops after the step it has just finished: with a team, the
/// team's decision at the barrier (after waiting for the others); alone, whether
/// the call was cancelled. One relaxed load per step either way.
#[inline(always)]
pub fn end_of_step(barrier: Option<&SpinBarrier>, cancel: &Cancel) -> bool {
    match barrier {
        Some(barrier) => barrier.wait(cancel),
        None => cancel.is_cancelled(),
    }
}

/// Calls left during which teams are not used, after one whose members often
/// had to sleep (the cores are busy elsewhere: a team then costs more than it
/// gives). Counts down once per call, so teams are tried again later.
static TEAM_PENALTY: AtomicUsize = AtomicUsize::new(0);
/// The next penalty (see `TEAM_BACKOFF_MIN` in `tuning.rs`).
static TEAM_BACKOFF: AtomicUsize = AtomicUsize::new(TEAM_BACKOFF_MIN);

/// Whether a team may be used for this call.
pub fn team_allowed() -> bool {
    TEAM_PENALTY
        .fetch_update(Relaxed, Relaxed, |p| p.checked_sub(1))
        .map_or(true, |_| false)
}

/// Records how a team call went: more than 1 wait in `TEAM_SLEEP_RATIO` ending
/// asleep (not counting the first waits of the call) disables teams for a
/// while.
pub fn team_finished(barrier: &SpinBarrier) {
    let (waits, slept) = barrier.stats();
    if slept * TEAM_SLEEP_RATIO > waits.max(1) {
        let backoff = TEAM_BACKOFF.load(Relaxed);
        TEAM_PENALTY.store(backoff, Relaxed);
        TEAM_BACKOFF.store((backoff * 2).min(TEAM_BACKOFF_MAX), Relaxed);
    } else {
        TEAM_BACKOFF.store(TEAM_BACKOFF_MIN, Relaxed);
    }
}

//! The barrier that threads splitting the hidden units meet at every step, and
//! the record of how well such teams have been doing (a team is only worth it
//! while its threads have cores to themselves). The barrier also decides when a
//! cancelled team stops, so that all its members stop at the same step.

use std::cell::Cell;
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
    /// Written by every member once per step.
    arrived: Line<AtomicUsize>,
    /// Written once per step (by the last member to arrive) and polled by every
    /// waiter: a line of its own, so that the arrivals' and the counters'
    /// writes do not take it from the waiters' caches while they poll.
    step: Line<StepEnd>,
    /// How the waits went: written by the waiters, read after the call.
    counts: Line<Counts>,
    sleepers: AtomicUsize,
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

/// What the last member to arrive publishes.
struct StepEnd {
    generation: AtomicUsize,
    /// Whether the team stops after the step that the last generation ended:
    /// written by the last member to arrive before it starts the new
    /// generation, read by the others after they see it.
    stop: AtomicBool,
}

/// The counters of [`TeamStats`], summed over the members.
struct Counts {
    waits: AtomicUsize,
    slept: AtomicUsize,
    polls: AtomicUsize,
}

/// One member's counts of its waits, kept in its thread while the team runs.
struct MemberCounts {
    waits: Cell<usize>,
    slept: Cell<usize>,
    polls: Cell<usize>,
}

thread_local! {
    static MINE: MemberCounts = const {
        MemberCounts { waits: Cell::new(0), slept: Cell::new(0), polls: Cell::new(0) }
    };
}

/// A value alone on its cache line, and on the pair of lines that Intel's
/// adjacent-line prefetcher fetches together (crossbeam's `CachePadded` uses
/// 128 bytes on x86-64 for that reason): for what the members write every step.
#[repr(align(128))]
struct Line<T>(T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// How a team's waits at its barrier went: the measure of what a team costs
/// beyond its members' work (`_core._last_team_stats`, for measurements).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TeamStats {
    /// Members of the team.
    pub members: usize,
    /// Waits of members that were not the last to arrive (about members - 1
    /// per step).
    pub waits: usize,
    /// Of those, waits that ended asleep (the spin ran out).
    pub slept: usize,
    /// Polls of the generation over all waits: about a nanosecond each, so
    /// polls / waits is roughly how long a member waited, in nanoseconds, for
    /// the last one to arrive.
    pub polls: usize,
}

impl SpinBarrier {
    pub fn new(members: usize) -> Self {
        SpinBarrier {
            members,
            arrived: Line(AtomicUsize::new(0)),
            step: Line(StepEnd {
                generation: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
            }),
            counts: Line(Counts {
                waits: AtomicUsize::new(0),
                slept: AtomicUsize::new(0),
                polls: AtomicUsize::new(0),
            }),
            sleepers: AtomicUsize::new(0),
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
        let generation = self.step.generation.load(SeqCst);
        if self.arrived.fetch_add(1, SeqCst) + 1 == self.members {
            let stop = cancel.is_cancelled();
            // Published by the generation's increment below (SeqCst, so also a
            // release), which every other member reads before `stop`.
            self.step.stop.store(stop, Relaxed);
            self.arrived.store(0, SeqCst);
            self.step.generation.fetch_add(1, SeqCst);
            // SeqCst on both sides: either a sleeper sees the new generation
            // before sleeping, or we see it registered and wake it.
            if self.sleepers.load(SeqCst) > 0 {
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.wake.notify_all();
            }
            return stop;
        }
        // Counted in this thread, added to the team's counts once when the
        // member ends (`end_member`): no write to a shared line per step.
        let nth = MINE.with(|c| c.waits.replace(c.waits.get() + 1));
        // No `pause` instruction in the loop: under KVM a run of them makes the
        // hypervisor take the virtual CPU away (pause-loop exiting), which costs
        // far more than it saves.
        let spins = self.spins.load(Relaxed);
        for poll in 0..spins {
            if self.step.generation.load(Acquire) != generation {
                MINE.with(|c| c.polls.set(c.polls.get() + poll));
                return self.step.stop.load(Relaxed);
            }
        }
        self.check_poison();
        // The first waits of a member also wait for members being woken: that
        // cost is the call's start, not a sign of busy cores.
        MINE.with(|c| {
            c.polls.set(c.polls.get() + spins);
            if nth >= WARMUP_WAITS {
                c.slept.set(c.slept.get() + 1);
            }
        });
        self.spins.store(MAX_SPINS, Relaxed);
        self.sleepers.fetch_add(1, SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.step.generation.load(SeqCst) == generation {
            self.check_poison();
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        drop(guard);
        self.sleepers.fetch_sub(1, SeqCst);
        self.step.stop.load(Relaxed)
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

    /// Adds this thread's counts of its waits to the team's and clears them;
    /// every member calls it once as it ends (also when it unwinds).
    pub fn end_member(&self) {
        MINE.with(|c| {
            self.counts.waits.fetch_add(c.waits.take(), Relaxed);
            self.counts.slept.fetch_add(c.slept.take(), Relaxed);
            self.counts.polls.fetch_add(c.polls.take(), Relaxed);
        });
    }

    /// How the waits went: complete once every member has ended.
    pub fn stats(&self) -> TeamStats {
        TeamStats {
            members: self.members,
            waits: self.counts.waits.load(Relaxed),
            slept: self.counts.slept.load(Relaxed),
            polls: self.counts.polls.load(Relaxed),
        }
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
    let stats = barrier.stats();
    *LAST_TEAM.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    let TeamStats { waits, slept, .. } = stats;
    if slept * TEAM_SLEEP_RATIO > waits.max(1) {
        let backoff = TEAM_BACKOFF.load(Relaxed);
        TEAM_PENALTY.store(backoff, Relaxed);
        TEAM_BACKOFF.store((backoff * 2).min(TEAM_BACKOFF_MAX), Relaxed);
    } else {
        TEAM_BACKOFF.store(TEAM_BACKOFF_MIN, Relaxed);
    }
}

/// The stats of the last team call that ended (for measurements: what a team
/// costs on a given machine).
static LAST_TEAM: Mutex<TeamStats> = Mutex::new(TeamStats {
    members: 0,
    waits: 0,
    slept: 0,
    polls: 0,
});

/// [`TeamStats`] of the last team call that ended in this process (all zero
/// before the first).
pub fn last_team_stats() -> TeamStats {
    *LAST_TEAM.lock().unwrap_or_else(|e| e.into_inner())
}

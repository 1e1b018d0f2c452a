//! The barrier that threads splitting the hidden units meet at every step, and
//! the record of how well such teams have been doing (a team is only worth it
//! while its threads have cores to themselves). The barrier also decides when a
//! cancelled team stops, so that all its members stop at the same step.

use std::cell::Cell;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::cancel::Cancel;
use crate::setting::Setting;
use crate::tuning::{
    POLLS_PER_CLOCK, SPIN_AFTER_SLEEP, SPIN_MAX, SPIN_MIN, SPIN_STEPS, STEPS_PER_CLOCK,
    TEAM_BACKOFF_MAX, TEAM_BACKOFF_MIN, TEAM_SLEEP_RATIO, WARMUP_WAITS,
};

/// Threads that meet once per time step. Each waiter spins for about two of
/// its own steps (see `SPIN_STEPS` in `tuning.rs`: a spinning partner answers
/// in tens of nanoseconds), then sleeps on a condition variable so that a
/// partner who lost its core gets it back instead of waiting out a time slice.
/// Once a member has slept, every waiter of the call spins at least
/// `SPIN_AFTER_SLEEP`: a member just woken (which can take tens of
/// microseconds on a virtual machine) is waited for by spinning instead of
/// the members taking turns to sleep every step. How often members had to
/// sleep is counted: see [`team_finished`].
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
    /// Whether a member has slept in this call (written once, by the first
    /// to sleep; read as each wait starts).
    slept: AtomicBool,
}

/// The counters of [`TeamStats`], summed over the members.
struct Counts {
    waits: AtomicUsize,
    slept: AtomicUsize,
    polls: AtomicUsize,
}

/// One member's counts of its waits and the length of its last step, kept in
/// its thread while the team runs.
struct MemberCounts {
    waits: Cell<usize>,
    slept: Cell<usize>,
    polls: Cell<usize>,
    /// When the member last read the clock as it left the barrier (None
    /// before its first leaving in a call), and how often it has left since.
    left: Cell<Option<Instant>>,
    since: Cell<u32>,
    /// Its step: the mean from leaving to leaving between its last two
    /// readings (zero until it has read twice).
    step: Cell<Duration>,
}

impl MemberCounts {
    /// Notes that the member leaves the barrier, reading the clock once every
    /// `STEPS_PER_CLOCK` steps (a reading costs some tens of nanoseconds, a
    /// step at S a few microseconds).
    fn leave(&self) {
        let since = self.since.get() + 1;
        if since < STEPS_PER_CLOCK && self.left.get().is_some() {
            self.since.set(since);
            return;
        }
        let now = Instant::now();
        if let Some(before) = self.left.replace(Some(now)) {
            self.step.set(now.saturating_duration_since(before) / since);
        }
        self.since.set(0);
    }

    /// Notes that the member leaves the barrier after a sleep: the steps
    /// since its last reading are not measured (the sleep is not its step;
    /// counted in, a waiter would spin up to `SPIN_MAX` where a partner has
    /// lost its core), the next leaving starts afresh.
    fn leave_after_sleep(&self) {
        self.left.set(None);
        self.since.set(0);
    }

    /// How long the member spins before it sleeps (`SPIN_STEPS` in `tuning.rs`;
    /// at least `SPIN_AFTER_SLEEP` once a member of the call has `slept`),
    /// unless `LSTM_FAST_SPIN_US` fixes it.
    fn spin_budget(&self, slept: bool) -> Duration {
        let least = if slept { SPIN_AFTER_SLEEP } else { SPIN_MIN };
        match forced_spin() {
            0 => (self.step.get() * SPIN_STEPS).clamp(least, SPIN_MAX),
            micros => Duration::from_micros(micros),
        }
    }
}

thread_local! {
    static MINE: MemberCounts = const {
        MemberCounts {
            waits: Cell::new(0),
            slept: Cell::new(0),
            polls: Cell::new(0),
            left: Cell::new(None),
            since: Cell::new(0),
            step: Cell::new(Duration::ZERO),
        }
    };
}

/// A fixed spin in microseconds, for measurements: `LSTM_FAST_SPIN_US` = 20,
/// 50, 200, 1000 or 5000, read on first use; 0 (the default) spins for about
/// two steps. The bits do not depend on it.
static SPIN_US: Setting<u64> = Setting::new(&SPIN_CHOICES);
const SPIN_CHOICES: [u64; 6] = [0, 20, 50, 200, 1000, 5000];

fn forced_spin() -> u64 {
    SPIN_US.get(|| Setting::env_choice("LSTM_FAST_SPIN_US", &SPIN_CHOICES, 0))
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
    /// polls / waits is roughly how long a member spun, in nanoseconds, for
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
                slept: AtomicBool::new(false),
            }),
            counts: Line(Counts {
                waits: AtomicUsize::new(0),
                slept: AtomicUsize::new(0),
                polls: AtomicUsize::new(0),
            }),
            sleepers: AtomicUsize::new(0),
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
            MINE.with(MemberCounts::leave);
            return stop;
        }
        // Counted in this thread, added to the team's counts once when the
        // member ends (`end_member`): no write to a shared line per step.
        let slept = self.step.slept.load(Relaxed);
        let (nth, budget) =
            MINE.with(|c| (c.waits.replace(c.waits.get() + 1), c.spin_budget(slept)));
        // No `pause` instruction in the loop: under KVM a run of them makes the
        // hypervisor take the virtual CPU away (pause-loop exiting), which costs
        // far more than it saves. The clock is first read after one round of
        // polls, so that the common wait (tens of nanoseconds) reads it only
        // when it leaves.
        let mut polls = 0;
        let mut started = None;
        loop {
            for _ in 0..POLLS_PER_CLOCK {
                polls += 1;
                if self.step.generation.load(Acquire) != generation {
                    MINE.with(|c| {
                        c.polls.set(c.polls.get() + polls);
                        c.leave();
                    });
                    return self.step.stop.load(Relaxed);
                }
            }
            let now = Instant::now();
            match started {
                None => started = Some(now),
                Some(start) if now.saturating_duration_since(start) >= budget => break,
                Some(_) => {}
            }
            self.check_poison();
        }
        // The first waits of a member also wait for members being woken: that
        // cost is the call's start, not a sign of busy cores.
        MINE.with(|c| {
            c.polls.set(c.polls.get() + polls);
            if nth >= WARMUP_WAITS {
                c.slept.set(c.slept.get() + 1);
            }
        });
        if !slept {
            self.step.slept.store(true, Relaxed);
        }
        self.sleepers.fetch_add(1, SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.step.generation.load(SeqCst) == generation {
            self.check_poison();
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        drop(guard);
        self.sleepers.fetch_sub(1, SeqCst);
        MINE.with(MemberCounts::leave_after_sleep);
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

    /// Adds this thread's counts of its waits to the team's and clears them
    /// (and its last step, so that its next call starts afresh); every member
    /// calls it once as it ends (also when it unwinds).
    pub fn end_member(&self) {
        MINE.with(|c| {
            c.left.set(None);
            c.since.set(0);
            c.step.set(Duration::ZERO);
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

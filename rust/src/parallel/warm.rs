//! Keeping workers awake between short calls led by the calling thread.
//!
//! A rayon worker that finds no work yields its core some thirty times and
//! then sleeps, about 20 µs after its last job; waking it again takes tens of
//! microseconds on a virtual machine. A short call on a team of the calling
//! thread and workers (`split::run_team_here`: `LSTM.step` and other forwards
//! of one row) waited that long for its workers whenever its caller's Python
//! between two calls took longer than that. Measured on KVM (Intel Xeon, 2
//! vCPUs), a team call of no work: 1 µs median with the worker awake, 30–70 µs
//! once it had slept (the caller spun 50 µs or more between calls).
//!
//! So after such a call, one keep-awake job per worker of its team is given
//! to the pool: the worker that takes it runs the pool's work as it comes
//! (the next call's members among it) and stays awake `WARM_SPAN` after its
//! start and after each piece of work it runs, then goes back to rayon's
//! idling. The spinning is calibrated by the calls themselves: it follows
//! only a call that came within `WARM_SPAN` of the one before, so a caller
//! that calls rarely costs no spinning, and one that streams steps pays for
//! two cold calls (the first is not close to another; the second is, but
//! finds the workers asleep). A team of n has n − 1 workers, so on a pool of
//! one thread per core a core is left for the caller's own Python.
//!
//! Rayon counts a worker in a keep-awake job as busy: a member injected for
//! the next call also wakes a sleeping worker, which finds nothing (or takes
//! the member, and the worker kept awake steps aside: [`Warm::member`]) and
//! sleeps again.

use std::cell::Cell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::{ThreadPool, Yield};

use super::placement;
use crate::tuning::{POLLS_PER_CLOCK, WARM_LIFE_SPANS, WARM_SPAN};

/// The workers of a pool kept awake, the caller's team now running, and when
/// the last call led by a caller ended. The counts steer a policy and
/// publish no data: they are read and written `Relaxed`.
pub struct Warm {
    /// Keep-awake jobs given to the pool and not yet ended.
    awake: AtomicUsize,
    /// Workers running a member of a caller's team now running ...
    members: AtomicUsize,
    /// ... and how many workers those teams have (0: none is running).
    team: AtomicUsize,
    /// Nanoseconds from `epoch` to the end of the last call; `u64::MAX`
    /// before the first.
    last_end: AtomicU64,
    epoch: Instant,
    span: Duration,
}

thread_local! {
    /// Whether this thread runs a keep-awake job (see [`Warm::stay_awake`]).
    static KEEPING_AWAKE: Cell<bool> = const { Cell::new(false) };
}

impl Default for Warm {
    fn default() -> Self {
        Warm::new(WARM_SPAN)
    }
}

impl Warm {
    /// Workers kept awake `span` after each call that came within `span` of
    /// the one before (the engine's is `WARM_SPAN`).
    pub fn new(span: Duration) -> Self {
        Warm {
            awake: AtomicUsize::new(0),
            members: AtomicUsize::new(0),
            team: AtomicUsize::new(0),
            last_end: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            span,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Whether a call starting now comes within the span of the end of the
    /// last one ([`Warm::ended`]).
    pub fn close_to_last(&self) -> bool {
        let last = self.last_end.load(Relaxed);
        let span = u64::try_from(self.span.as_nanos()).unwrap_or(u64::MAX);
        last != u64::MAX && self.now().saturating_sub(last) < span
    }

    /// After a call whose team had `workers` workers of `pool` besides its
    /// caller (member 0): records its end and, when it came close to the one
    /// before (`close`, from [`Warm::close_to_last`]), gives the pool
    /// keep-awake jobs until `workers` of them are under way.
    pub fn ended(self: &Arc<Self>, pool: &ThreadPool, workers: usize, close: bool) {
        self.last_end.store(self.now(), Relaxed);
        if !close {
            return;
        }
        for _ in 0..workers {
            // Counted before it starts, so that the next call does not give
            // another while this one waits for a worker to take it.
            if self.awake.fetch_add(1, Relaxed) >= workers {
                self.awake.fetch_sub(1, Relaxed);
                return;
            }
            let warm = Arc::clone(self);
            pool.spawn(move || warm.stay_awake());
        }
    }

    /// Runs the pool's work as it comes (`rayon::yield_now`, as rayon's own
    /// idle loop does) until none has come for the span, or the caller's
    /// team now running has all its workers without this one: the caller and
    /// those need the cores, and a third thread spinning beside them made one
    /// call in 40 at S take 5–20 ms instead of 0.6 (scheduler time slices).
    ///
    /// A keep-awake job can start inside another one on the same thread, or
    /// inside a wait (a worker waiting for a join or a scope runs the pool's
    /// work meanwhile): a second one on a thread returns at once, and none
    /// lives longer than `WARM_LIFE_SPANS` spans, so the wait it delays is
    /// delayed at most that long. It runs unbound (`placement.rs`: a team of
    /// the whole pool binds its workers, and a bound worker may sit on the
    /// caller's core), and it polls without `pause`: on KVM, pause-loop
    /// exiting takes a vCPU that pauses in a loop off its core.
    fn stay_awake(&self) {
        if !KEEPING_AWAKE.with(|k| k.replace(true)) {
            let start = Instant::now();
            let last = start + self.span * WARM_LIFE_SPANS;
            let mut until = start + self.span;
            placement::hold_own_core(false);
            loop {
                match rayon::yield_now() {
                    Some(Yield::Executed) => {
                        placement::hold_own_core(false);
                        until = (Instant::now() + self.span).min(last);
                    }
                    _ if !self.stays_awake(until) => break,
                    _ => {}
                }
            }
            KEEPING_AWAKE.with(|k| k.set(false));
        }
        self.awake.fetch_sub(1, Relaxed);
    }

    /// Whether a worker kept awake until `until`, with nothing to run, keeps
    /// polling: not once its time is up, nor while the caller's team now
    /// running has all its workers (this one, polling, is not among them).
    fn stays_awake(&self, until: Instant) -> bool {
        let team = self.team.load(Relaxed);
        (team == 0 || self.members.load(Relaxed) < team) && Instant::now() < until
    }

    /// Marks a caller's team of `workers` workers as running until the guard
    /// drops. Added, not stored: teams of two callers at once (two Python
    /// threads) sum, and each takes off only its own.
    pub fn team(&self, workers: usize) -> impl Drop + '_ {
        self.team.fetch_add(workers, Relaxed);
        Counted(&self.team, workers)
    }

    /// Marks the calling worker as running a member of the caller's team
    /// until the guard drops.
    pub fn member(&self) -> impl Drop + '_ {
        self.members.fetch_add(1, Relaxed);
        Counted(&self.members, 1)
    }
}

/// Takes its count off a counter when dropped.
struct Counted<'a>(&'a AtomicUsize, usize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Relaxed);
    }
}

/// Polls `done()` until it holds or for at most `limit`; whether it held. For
/// a caller waiting for its team's workers to finish their part, which they
/// do at the same moment it does (they leave the same last barrier): a
/// blocking wait would put the caller to sleep for a wake-up far longer than
/// the wait. It polls as the barrier does (`barrier.rs`): `POLLS_PER_CLOCK`
/// polls between readings of the clock, without `pause`.
pub fn spin_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..POLLS_PER_CLOCK {
            if done() {
                return true;
            }
        }
        if start.elapsed() >= limit {
            return done();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{spin_until, Warm};
    use crate::tuning::WARM_SPAN;

    fn awake(warm: &Warm) -> usize {
        warm.awake.load(Relaxed)
    }

    /// Waits up to a second for `awake(warm) == want`.
    fn settles(warm: &Warm, want: usize) -> bool {
        spin_until(Duration::from_secs(1), || awake(warm) == want)
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a pool")
    }

    /// Ends the keep-awake jobs of `warm` (a team complete without them)
    /// rather than let them spin out their span beside the other tests.
    fn stop(warm: &Warm) {
        let (_team, _member) = (warm.team(1), warm.member());
        assert!(settles(warm, 0));
    }

    /// A span far longer than any test waits: only what the test does ends
    /// a keep-awake job before it.
    const LONG: Duration = Duration::from_secs(3);

    /// Only a call close to the one before keeps workers awake, never more
    /// jobs than its team has workers; the worker kept awake runs the pool's
    /// work; with the engine's span it goes back to idling soon after.
    #[test]
    fn a_call_soon_after_another_keeps_its_workers_awake_for_a_while() {
        let one = pool(1);
        let warm = Arc::new(Warm::new(LONG));
        assert!(!warm.close_to_last(), "no call before the first");
        warm.ended(&one, 1, false);
        assert_eq!(awake(&warm), 0, "a first call keeps nobody awake");
        let close = warm.close_to_last();
        assert!(close, "a call right after another is close");
        for _ in 0..5 {
            warm.ended(&one, 1, close);
            assert_eq!(awake(&warm), 1, "one worker: one keep-awake job");
        }
        // The pool's one worker is in the keep-awake job (it was given
        // first): work given now runs inside it, long before its span ends.
        let start = Instant::now();
        assert_eq!(one.install(|| awake(&warm)), 1);
        assert!(start.elapsed() < Duration::from_secs(1));
        stop(&warm);

        let one = pool(1);
        let warm = Arc::new(Warm::default());
        warm.ended(&one, 1, true);
        assert!(settles(&warm, 0), "the worker went back to idling");
        std::thread::sleep(2 * WARM_SPAN);
        assert!(
            !warm.close_to_last(),
            "a call long after the last is not close"
        );
    }

    /// A worker kept awake steps aside once the caller's team has all its
    /// workers without it, however much of its span is left.
    #[test]
    fn a_worker_kept_awake_steps_aside_for_a_team_complete_without_it() {
        let one = pool(1);
        let warm = Arc::new(Warm::new(LONG));
        warm.ended(&one, 1, true);
        one.install(|| ()); // now the job runs (see the test above)
        let team = warm.team(1);
        assert!(
            !spin_until(Duration::from_millis(50), || awake(&warm) == 0),
            "a team short of a worker keeps it"
        );
        let member = warm.member();
        assert!(settles(&warm, 0), "the worker kept awake stepped aside");
        drop((member, team));
        assert_eq!(
            (warm.members.load(Relaxed), warm.team.load(Relaxed)),
            (0, 0)
        );
    }

    /// A keep-awake job that starts inside another on the same thread ends
    /// at once.
    #[test]
    fn one_keep_awake_job_per_thread() {
        let one = pool(1);
        let warm = Arc::new(Warm::new(LONG));
        warm.ended(&one, 2, true);
        assert!(settles(&warm, 1), "the second job, nested, ended");
        stop(&warm);
    }

    #[test]
    fn the_predicate_of_staying_awake() {
        let warm = Warm::new(LONG);
        let later = Instant::now() + LONG;
        assert!(warm.stays_awake(later));
        assert!(!warm.stays_awake(Instant::now()), "its time is up");
        let member = warm.member();
        assert!(warm.stays_awake(later), "a member of no team running");
        let team = warm.team(2);
        assert!(warm.stays_awake(later), "a team short of a worker");
        let other = warm.member();
        assert!(!warm.stays_awake(later), "a team complete without it");
        drop((other, member, team));
    }

    #[test]
    fn spin_until_says_whether_the_condition_came() {
        assert!(spin_until(Duration::ZERO, || true));
        assert!(!spin_until(Duration::from_micros(100), || false));
    }
}

//! Keeping workers awake between short team calls made close together.
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
//! So after such a call its workers stay awake for `WARM_SPAN`, running any
//! work the pool is given meanwhile (the next call's members among it) and
//! staying awake `WARM_SPAN` after each piece, then go back to rayon's idling.
//! The spinning is calibrated by the calls themselves: it follows only a call
//! that came within `WARM_SPAN` of the one before, so a caller that calls
//! rarely costs no spinning, and one that streams steps pays for one cold
//! call. Only the team's workers stay awake, never the calling thread's core:
//! on a machine of n cores, n − 1 of them, beside the caller's Python.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::{ThreadPool, Yield};

use super::placement;
use crate::tuning::{POLLS_PER_CLOCK, WARM_SPAN};

/// How many workers of a pool are being kept awake, and when the last call
/// that keeps them so ended.
pub struct Warm {
    awake: AtomicUsize,
    /// Workers running a member of a caller's team.
    members: AtomicUsize,
    /// Nanoseconds from `epoch` to the end of the last such call; `u64::MAX`
    /// before the first.
    last_end: AtomicU64,
    epoch: Instant,
}

impl Default for Warm {
    fn default() -> Self {
        Warm {
            awake: AtomicUsize::new(0),
            members: AtomicUsize::new(0),
            last_end: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        }
    }
}

impl Warm {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Marks the start of a call that will end with [`Warm::ended`]: whether
    /// it came within `WARM_SPAN` of the end of the one before.
    pub fn started(&self) -> bool {
        let last = self.last_end.load(Relaxed);
        last != u64::MAX && self.now().saturating_sub(last) < span_nanos()
    }

    /// After a call whose team had `helpers` workers of `pool` (its caller
    /// being the other member): when it came close after the one before
    /// (`close`, from [`Warm::started`]), keeps `helpers` workers awake,
    /// starting those that are not already.
    pub fn ended(self: &Arc<Self>, pool: &ThreadPool, helpers: usize, close: bool) {
        self.last_end.store(self.now(), Relaxed);
        if !close {
            return;
        }
        for _ in 0..helpers {
            // Counted before it starts, so that the next call does not start
            // another while this one waits for a worker to pick it up.
            let awake = self.awake.fetch_add(1, AcqRel);
            if awake >= helpers {
                self.awake.fetch_sub(1, AcqRel);
                return;
            }
            let warm = Arc::clone(self);
            pool.spawn(move || warm.stay_awake());
        }
    }

    /// Runs the pool's work as it comes until none has come for `WARM_SPAN`.
    /// A job that reaches its worker runs here as it would in rayon's own
    /// idle loop (`rayon::yield_now`), on this stack, so nothing else changes.
    ///
    /// It never holds a core against a team it is not in: while another
    /// worker runs a member of a caller's team ([`Warm::member`]) the caller
    /// and that member need both cores, and a third thread spinning beside
    /// them made one call in 40 at S take 5–20 ms instead of 0.6 (scheduler
    /// time slices), so it goes back to rayon's idling at once. It runs
    /// unbound (`placement.rs`: a worker stays bound to its own core after a
    /// team of the whole pool, which may be the core the caller's thread
    /// runs on), and it polls without `pause`: on KVM, pause-loop exiting
    /// takes a vCPU that pauses in a loop off its core.
    fn stay_awake(&self) {
        placement::hold_own_core(false);
        let mut until = Instant::now() + WARM_SPAN;
        loop {
            match rayon::yield_now() {
                Some(Yield::Executed) => until = Instant::now() + WARM_SPAN,
                _ if !self.stays_awake(until) => break,
                _ => {}
            }
        }
        self.awake.fetch_sub(1, AcqRel);
    }

    /// Whether a worker kept awake until `until` with nothing to run keeps
    /// polling: not once its time is up, nor while another worker runs a
    /// member of a caller's team.
    fn stays_awake(&self, until: Instant) -> bool {
        self.members.load(Acquire) == 0 && Instant::now() < until
    }

    /// Marks the calling worker as running a member of a caller's team until
    /// the guard drops (see [`Warm::stay_awake`]).
    pub fn member(&self) -> impl Drop + '_ {
        struct Member<'a>(&'a AtomicUsize);
        impl Drop for Member<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Release);
            }
        }
        self.members.fetch_add(1, Release);
        Member(&self.members)
    }
}

fn span_nanos() -> u64 {
    u64::try_from(WARM_SPAN.as_nanos()).unwrap_or(u64::MAX)
}

/// Spins until `done()` or for at most `limit`; whether `done()` held. For a
/// caller waiting for its team's workers to finish their part, which they
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
    use std::sync::atomic::Ordering::Acquire;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{spin_until, Warm};
    use crate::tuning::WARM_SPAN;

    fn awake(warm: &Warm) -> usize {
        warm.awake.load(Acquire)
    }

    /// Waits up to a second for `awake(warm) == want`.
    fn settles(warm: &Warm, want: usize) -> bool {
        spin_until(Duration::from_secs(1), || awake(warm) == want)
    }

    /// Only a call made soon after the one before keeps workers awake, never
    /// more of them than its team had, and they go back to idling once no
    /// work has come for `WARM_SPAN`, having run the work that did come.
    #[test]
    fn a_call_soon_after_another_keeps_its_workers_awake_for_a_while() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool");
        let warm = Arc::new(Warm::default());
        assert!(!warm.started(), "no call before the first");
        warm.ended(&pool, 1, false);
        assert_eq!(awake(&warm), 0, "a first call keeps nobody awake");
        let close = warm.started();
        assert!(close, "a call right after another is close");
        for _ in 0..5 {
            warm.ended(&pool, 1, close);
            assert_eq!(awake(&warm), 1, "one helper: one worker awake");
        }
        // Work given meanwhile runs (and keeps the worker awake a while more).
        assert_eq!(pool.install(|| 6 * 7), 42);
        assert!(settles(&warm, 0), "the worker went back to idling");
        std::thread::sleep(2 * WARM_SPAN);
        assert!(!warm.started(), "a call long after the last is not close");
    }

    /// A worker kept awake steps aside while another worker runs a member of
    /// a caller's team, however much of its time is left.
    #[test]
    fn a_worker_kept_awake_steps_aside_for_a_team_it_is_not_in() {
        let warm = Warm::default();
        let until = Instant::now() + Duration::from_secs(60);
        assert!(warm.stays_awake(until));
        let member = warm.member();
        assert!(!warm.stays_awake(until), "a member runs elsewhere");
        drop(member);
        assert!(warm.stays_awake(until));
        assert!(!warm.stays_awake(Instant::now()), "its time is up");
    }

    #[test]
    fn spin_until_says_whether_the_condition_came() {
        assert!(spin_until(Duration::ZERO, || true));
        assert!(!spin_until(Duration::from_micros(100), || false));
    }
}

//! How a call's time loop is shared among threads: by batch rows (each chunk
//! runs the whole loop alone, threads never meet) or, when rows are few, by
//! hidden units (each thread keeps its slice of `w_hh` hot and the team meets
//! at a barrier every step). The choice, its override, the claim on the pool,
//! the batch chunks, and running the members.

use std::ops::Range;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use rayon::prelude::*;

use super::barrier::{team_allowed, team_finished, SpinBarrier};
use super::placement;
use super::pool::Workers;
use super::warm::spin_until;
use crate::alloc;
use crate::cancel::Cancel;
use crate::error::Result;
use crate::setting::Setting;
use crate::tuning::{
    BATCH_SPLIT_ROWS, FINISH_SPIN, MIN_CHUNK_WORK, MIN_ROWS_PER_CHUNK, ONE_TILE_TEAMS_FROM,
    SIGNAL_POLL, TEAM_WEIGHT_BYTES,
};

/// How the time loop is shared among threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Chunks of batch rows, one thread each.
    Batch,
    /// All rows on a team of this many threads, each with a range of tiles.
    Hidden(usize),
}

/// How the time loop is shared among threads, when forced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForcedSplit {
    /// The engine chooses per call.
    Choose,
    /// Chunks of batch rows, one thread each.
    Batch,
    /// One team of threads over the hidden units.
    Hidden,
}

/// The forced split: `LSTM_FAST_SPLIT` (for measurements), read on first use,
/// or what [`force_split`] (tests) set.
static FORCED: Setting<ForcedSplit> =
    Setting::new(&[ForcedSplit::Choose, ForcedSplit::Batch, ForcedSplit::Hidden]);

/// Forces a split for later calls, or goes back to choosing. Results are the
/// same either way; this exists to measure and to test both.
pub fn force_split(split: ForcedSplit) {
    FORCED.set(split);
}

pub(crate) fn forced_split() -> ForcedSplit {
    // Read once: reading the environment on every call could race with
    // Python's os.environ writes, which bypass Rust's lock.
    FORCED.get(|| match std::env::var("LSTM_FAST_SPLIT").ok().as_deref() {
        Some("batch") => ForcedSplit::Batch,
        Some("hidden") => ForcedSplit::Hidden,
        _ => ForcedSplit::Choose,
    })
}

/// The least rows of a batch chunk: `MIN_ROWS_PER_CHUNK`, or
/// `LSTM_FAST_CHUNK_ROWS` = 1, 2, 4, 8 or 16 (for measurements: the bits do not
/// depend on the chunks), read on first use.
static CHUNK_ROWS: Setting<usize> = Setting::new(&[MIN_ROWS_PER_CHUNK, 1, 2, 4, 8, 16]);

fn min_rows_per_chunk() -> usize {
    CHUNK_ROWS.get(|| {
        Setting::env_choice(
            "LSTM_FAST_CHUNK_ROWS",
            &[1, 2, 4, 8, 16],
            MIN_ROWS_PER_CHUNK,
        )
    })
}

/// The split for `batch` rows and `tiles` tiles of hidden units on `threads`
/// threads. `LSTM_FAST_SPLIT=batch|hidden` overrides it (for measurements).
///
/// A team gets every thread it can give a tile to, down to one tile per member
/// from `ONE_TILE_TEAMS_FROM` tiles on (below, each member has at least two),
/// and is chosen while rows are few (`BATCH_SPLIT_ROWS` per thread) and it
/// keeps at least as many threads busy as the batch chunks would. On 2 threads
/// this is the rule it always was (a team for fewer than 64 rows, 4 tiles or
/// more); on 16 cores it is what lets M (16 rows, 16 tiles on AVX-512) run on
/// 16 members instead of 2 batch chunks.
///
/// `work` is the call's multiply-adds (for the batch chunks it would have,
/// [`chunk_rows`]); `team_worth` is whether the call has the work for a
/// team ([`team_pays`], or the row-major path's own rule): without it the
/// call runs without one.
pub fn choose_split(
    batch: usize,
    tiles: usize,
    threads: usize,
    work: usize,
    team_worth: bool,
) -> Split {
    match forced_split() {
        ForcedSplit::Batch => return Split::Batch,
        ForcedSplit::Hidden if threads.min(tiles) > 1 => return Split::Hidden(threads.min(tiles)),
        _ => {}
    }
    match preferred_split(batch, tiles, threads, chunk_rows(batch, threads, work).0) {
        // `team_allowed` last: it counts down a penalty, which calls that
        // would not have had a team must not use up.
        Split::Hidden(team) if team_worth && team_allowed() => Split::Hidden(team),
        _ => Split::Batch,
    }
}

/// Whether a time loop of `work` multiply-adds that reads `weight_bytes` of
/// weights every step has the work for a team ([`choose_split`]): at least
/// `MIN_CHUNK_WORK` for each of two members (as two batch chunks would
/// need), or weights of `TEAM_WEIGHT_BYTES` or more, which the members'
/// caches share.
pub(crate) fn team_pays(work: usize, weight_bytes: usize) -> bool {
    work >= 2 * MIN_CHUNK_WORK || weight_bytes >= TEAM_WEIGHT_BYTES
}

/// [`choose_split`]'s rule on a machine whose cores are free, where the batch
/// split would make `chunks` chunks.
pub(crate) fn preferred_split(batch: usize, tiles: usize, threads: usize, chunks: usize) -> Split {
    let team = if tiles >= ONE_TILE_TEAMS_FROM {
        threads.min(tiles)
    } else {
        threads.min(tiles / 2)
    };
    if team <= 1 || batch >= threads * BATCH_SPLIT_ROWS || team < chunks {
        Split::Batch
    } else {
        Split::Hidden(team)
    }
}

/// Holds the pool's team lock for the length of a call.
pub enum Claim<'a> {
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    /// Released on drop, then the calls waiting for it told (see [`claim`]).
    Exclusive(Option<RwLockWriteGuard<'a, ()>>, &'a Workers),
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Claim::Exclusive(guard, workers) = self {
            drop(guard.take());
            // Under the lock: a waiter either takes the team lock before it
            // waits, or is waiting when this arrives.
            let _lock = lock_ignoring_poison(&workers.team_ended_lock);
            workers.team_ended.notify_all();
        }
    }
}

fn lock_ignoring_poison(lock: &Mutex<()>) -> MutexGuard<'_, ()> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the pool for a call: exclusively for a hidden split (its members wait
/// for each other, so all must run at once), shared otherwise. When another
/// call is running, a hidden split becomes a batch split, which yields the same
/// bits, instead of waiting. A shared claim does wait while a team runs, in
/// slices of `SIGNAL_POLL`: once `cancel` is set it stops waiting and returns
/// [`Error::Interrupted`](crate::Error::Interrupted), instead of waiting for
/// another call to end. A lock poisoned by a panic elsewhere still works.
pub fn claim<'a>(
    workers: &'a Workers,
    split: Split,
    cancel: &Cancel,
) -> Result<(Split, Claim<'a>)> {
    if let Split::Hidden(_) = split {
        let guard = match workers.team.try_write() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        if let Some(guard) = guard {
            return Ok((split, Claim::Exclusive(Some(guard), workers)));
        }
    }
    // Held from the second try on, so that a team ending meanwhile is heard.
    let mut ended: Option<MutexGuard<'_, ()>> = None;
    loop {
        match workers.team.try_read() {
            Ok(guard) => return Ok((Split::Batch, Claim::Shared(guard))),
            Err(TryLockError::Poisoned(p)) => {
                return Ok((Split::Batch, Claim::Shared(p.into_inner())))
            }
            Err(TryLockError::WouldBlock) => {}
        }
        cancel.check()?;
        ended = Some(match ended.take() {
            None => lock_ignoring_poison(&workers.team_ended_lock),
            Some(held) => {
                let waited = workers.team_ended.wait_timeout(held, SIGNAL_POLL);
                waited.unwrap_or_else(|e| e.into_inner()).0
            }
        });
    }
}

/// A chunk of batch rows: their indices and their lengths, longest first.
pub type Chunk = (Vec<usize>, Vec<usize>);

/// How many chunks a batch split of `batch` rows makes on `threads` threads
/// for a call of `work` multiply-adds, and the rows of each (the last may have
/// fewer): one per thread, each of at least the least rows
/// ([`min_rows_per_chunk`]) and of `MIN_CHUNK_WORK` multiply-adds, so that a
/// small call (one step of a few rows) stays one chunk on the calling thread.
pub(crate) fn chunk_rows(batch: usize, threads: usize, work: usize) -> (usize, usize) {
    let tasks = threads
        .min(batch.div_ceil(min_rows_per_chunk()))
        .min(work / MIN_CHUNK_WORK)
        .max(1);
    let per = batch.div_ceil(tasks).max(1);
    (batch.div_ceil(per), per)
}

/// The batch rows `0..batch` in contiguous chunks, one per task of a batch
/// split (a hidden split has one; see [`chunk_rows`]). The lists are allocated
/// fallibly.
pub fn chunks(
    split: Split,
    threads: usize,
    batch: usize,
    work: usize,
    length: impl Fn(usize) -> usize,
) -> Result<Vec<Chunk>> {
    let threads = if split == Split::Batch { threads } else { 1 };
    let (count, per) = chunk_rows(batch, threads, work);
    let chunk = |b0: usize| -> Result<Chunk> {
        let mut rows = alloc::collect(b0..(b0 + per).min(batch), "the batch rows of a chunk")?;
        // Longest first; equal lengths in row order (as a stable sort would
        // leave them), without the buffer a stable sort allocates.
        rows.sort_unstable_by_key(|&b| (std::cmp::Reverse(length(b)), b));
        let lens = alloc::collect(rows.iter().map(|&b| length(b)), "the lengths of a chunk")?;
        Ok((rows, lens))
    };
    alloc::try_collect((0..count).map(|c| chunk(c * per)), "the batch chunks")
}

/// Tiles `0..tiles` dealt into `members` contiguous ranges.
fn tile_range(member: usize, members: usize, tiles: usize) -> Range<usize> {
    (member * tiles / members)..((member + 1) * tiles / members)
}

/// The members of a call, in the order [`run_split`] gives them their scratch:
/// (chunk, tiles) of each. A caller allocates each member's scratch from this
/// before the threads start.
pub fn members(
    split: Split,
    chunks: usize,
    tiles: usize,
) -> impl ExactSizeIterator<Item = (usize, Range<usize>)> {
    let count = match split {
        _ if chunks == 0 => 0,
        Split::Hidden(n) => n,
        Split::Batch => chunks,
    };
    (0..count).map(move |m| match split {
        Split::Hidden(n) => (0, tile_range(m, n, tiles)),
        Split::Batch => (m, 0..tiles),
    })
}

/// One team member's work: (chunk, its tiles, its scratch, the team's barrier
/// if any).
pub type Member<'a, T> = dyn Fn(usize, Range<usize>, &mut T, Option<&SpinBarrier>) + Sync + 'a;

/// Hands each member of a team its own element of a slice, from the closure
/// the members share.
struct PerMember<T>(*mut T);

// SAFETY: each element is taken by one member only (see `take`), so sharing
// the pointer shares no element; the elements themselves move between threads.
unsafe impl<T: Send> Sync for PerMember<T> {}

impl<T> PerMember<T> {
    /// # Safety
    /// `m` is inside the slice, which outlives the use, and no other `take`
    /// of `m` overlaps this one.
    #[allow(clippy::mut_from_ref)]
    unsafe fn take(&self, m: usize) -> &mut T {
        // SAFETY: forwarded from the caller.
        unsafe { &mut *self.0.add(m) }
    }
}

/// Runs `member(chunk, tiles, scratch, barrier)` for every member of
/// [`members`], each with its element of `scratch` (one per member): for
/// `Split::Hidden(n)`, n members of the one chunk at once, each with its range
/// of `0..tiles`, meeting at a barrier; for `Split::Batch`, every chunk with
/// all tiles, in parallel. A team of every worker of a binding pool has each
/// member bound to a core of its own (`placement.rs`), and so do the workers
/// of a batch split into as many chunks as the pool has workers.
pub fn run_split<T: Send>(
    split: Split,
    chunks: usize,
    tiles: usize,
    scratch: &mut [T],
    member: &Member<'_, T>,
) {
    assert_eq!(
        scratch.len(),
        members(split, chunks, tiles).len(),
        "one scratch per member"
    );
    if chunks == 0 {
        return;
    }
    match split {
        Split::Hidden(n) => {
            let barrier = SpinBarrier::new(n);
            let per_member = PerMember(scratch.as_mut_ptr());
            // No other call's work holds a worker (the claim is exclusive; a
            // keep-awake job, `warm.rs`, runs what it finds) and the pool has
            // at least n threads, so all n members run at once.
            rayon::broadcast(|ctx| {
                if ctx.index() < n {
                    // Bound only when the team is the whole pool: a smaller
                    // one would always sit on the first n CPUs, in every
                    // process that runs one.
                    placement::hold_own_core(n == ctx.num_threads());
                    // SAFETY: index < n = scratch.len() (asserted above), the
                    // slice is borrowed until the broadcast returns, and the
                    // broadcast runs this once per thread index.
                    let own = unsafe { per_member.take(ctx.index()) };
                    as_member(&barrier, || {
                        member(0, tile_range(ctx.index(), n, tiles), own, Some(&barrier))
                    });
                }
            });
            team_finished(&barrier);
        }
        Split::Batch if chunks == 1 => member(0, 0..tiles, &mut scratch[0], None),
        Split::Batch => {
            // As many chunks as workers: bound as a team of every worker is,
            // for the same reason (after a pause both ran on one core, each
            // call at one thread's speed, for some ten calls).
            let whole = chunks == rayon::current_num_threads();
            scratch.par_iter_mut().enumerate().for_each(|(chunk, own)| {
                placement::hold_own_core(whole);
                member(chunk, 0..tiles, own, None)
            })
        }
    }
}

/// Runs `f` as a member of `barrier`'s team: ends the member at the barrier
/// (its counts of waits) and poisons the barrier if the member unwinds, so
/// the others do not wait for it forever.
fn as_member<R>(barrier: &SpinBarrier, f: impl FnOnce() -> R) -> R {
    struct Guard<'a>(&'a SpinBarrier);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            self.0.end_member();
            if std::thread::panicking() {
                self.0.poison();
            }
        }
    }
    let _guard = Guard(barrier);
    f()
}

/// [`run_split`]'s `Split::Hidden(n)` of one chunk with the calling thread as
/// member 0 and n − 1 of the pool's threads as the others, for a short call
/// made from outside the pool (with the exclusive claim, so no other call's
/// work holds a worker): [`run_split`] would block the calling thread while n workers run,
/// n + 1 threads on n cores, and on a machine of two cores the caller's next
/// work then waited for a CPU while the idle workers spun (measured: a
/// one-step forward at I = H = 256 took 29–31 µs at best, 44–45 as median).
/// Its workers run unbound (`placement.rs`): the caller may be on any core.
///
/// The caller spins for its workers to finish (`FINISH_SPIN`) rather than
/// sleep for them, and a call that came soon after the one before keeps its
/// workers awake for the next (`warm.rs`): a team call of no work took 22 µs
/// median back to back and 63–72 µs with 100 µs or more between calls, 1 µs
/// both ways with the two (KVM, 2 vCPUs).
pub fn run_team_here<T: Send>(
    workers: &Workers,
    n: usize,
    tiles: usize,
    scratch: &mut [T],
    member: &Member<'_, T>,
) {
    assert_eq!(scratch.len(), n, "one scratch per member");
    let Some((first, rest)) = scratch.split_first_mut() else {
        return;
    };
    let close = workers.warm.close_to_last();
    let barrier = SpinBarrier::new(n);
    let finished = AtomicUsize::new(0);
    let team = workers.warm.team(n - 1);
    workers.pool.in_place_scope(|scope| {
        for (m, own) in rest.iter_mut().enumerate() {
            let (barrier, finished) = (&barrier, &finished);
            let warm = &workers.warm;
            scope.spawn(move |_| {
                let _member = warm.member();
                placement::hold_own_core(false);
                as_member(barrier, || {
                    member(0, tile_range(m + 1, n, tiles), own, Some(barrier))
                });
                finished.fetch_add(1, Relaxed);
            });
        }
        as_member(&barrier, || {
            member(0, tile_range(0, n, tiles), first, Some(&barrier))
        });
        // The scope's own wait would block. This spin only shortens it: the
        // scope still waits for its jobs (which makes their writes visible)
        // and passes on the panic of a member, which never counts itself.
        spin_until(FINISH_SPIN, || finished.load(Relaxed) == n - 1);
    });
    drop(team);
    workers.warm.ended(&workers.pool, n - 1, close);
    team_finished(&barrier);
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{run_split, Split};
    use crate::parallel::placement::test_support::{binding_pool, cpus};

    /// A batch split into as many chunks as workers binds each worker that
    /// runs a chunk to its own CPU; one of another number of chunks frees
    /// them.
    #[test]
    fn a_batch_split_of_every_worker_binds_them() {
        let Some((pool, cores)) = binding_pool() else {
            return;
        };
        let allowed = cpus();
        let seen = |chunks: usize| {
            let mut places = vec![None; chunks];
            pool.install(|| {
                run_split(Split::Batch, chunks, 1, &mut places, &|_, _, own, _| {
                    let index = rayon::current_thread_index().expect("a worker");
                    *own = Some((index, cpus()));
                })
            });
            places.into_iter().map(|p| p.expect("every chunk ran"))
        };
        for (index, got) in seen(cores.len()) {
            assert_eq!(got.as_deref(), Some(&[cores[index]][..]), "worker {index}");
        }
        for (index, got) in seen(cores.len() + 1) {
            assert_eq!(got, allowed, "worker {index}");
        }
    }
}

//! How a call's time loop is shared among threads: by batch rows (each chunk
//! runs the whole loop alone, threads never meet) or, when rows are few, by
//! hidden units (each thread keeps its slice of `w_hh` hot and the team meets
//! at a barrier every step). The choice, its override, the claim on the pool,
//! the batch chunks, and running the members.

use std::ops::Range;
use std::sync::{RwLockReadGuard, RwLockWriteGuard, TryLockError};

use rayon::prelude::*;

use super::barrier::{team_allowed, team_finished, SpinBarrier};
use super::pool::Workers;
use crate::setting::Setting;
use crate::tuning::{BATCH_SPLIT_ROWS, MIN_ROWS_PER_CHUNK};

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

fn forced_split() -> ForcedSplit {
    // Read once: reading the environment on every call could race with
    // Python's os.environ writes, which bypass Rust's lock.
    FORCED.get(|| match std::env::var("LSTM_FAST_SPLIT").ok().as_deref() {
        Some("batch") => ForcedSplit::Batch,
        Some("hidden") => ForcedSplit::Hidden,
        _ => ForcedSplit::Choose,
    })
}

/// The split for `batch` rows and `tiles` tiles of hidden units on `threads`
/// threads. `LSTM_FAST_SPLIT=batch|hidden` overrides it (for measurements).
pub fn choose_split(batch: usize, tiles: usize, threads: usize) -> Split {
    let team = threads.min(tiles);
    match forced_split() {
        ForcedSplit::Batch => return Split::Batch,
        ForcedSplit::Hidden if team > 1 => return Split::Hidden(team),
        _ => {}
    }
    if team <= 1 || batch >= threads * BATCH_SPLIT_ROWS || tiles < 2 * threads || !team_allowed() {
        Split::Batch
    } else {
        Split::Hidden(team)
    }
}

/// Holds the pool's team lock for the length of a call.
pub enum Claim<'a> {
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

/// Takes the pool for a call: exclusively for a hidden split (its members wait
/// for each other, so all must run at once), shared otherwise. When another
/// call is running, a hidden split becomes a batch split, which yields the same
/// bits, instead of waiting. A lock poisoned by a panic elsewhere still works.
pub fn claim(workers: &Workers, split: Split) -> (Split, Claim<'_>) {
    if let Split::Hidden(_) = split {
        match workers.team.try_write() {
            Ok(guard) => return (split, Claim::Exclusive(guard)),
            Err(TryLockError::Poisoned(p)) => return (split, Claim::Exclusive(p.into_inner())),
            Err(TryLockError::WouldBlock) => {}
        }
    }
    (
        Split::Batch,
        Claim::Shared(workers.team.read().unwrap_or_else(|e| e.into_inner())),
    )
}

/// A chunk of batch rows: their indices and their lengths, longest first.
pub type Chunk = (Vec<usize>, Vec<usize>);

/// The batch rows `0..batch` in contiguous chunks, one per task of a batch
/// split (a hidden split has one).
pub fn chunks(
    split: Split,
    threads: usize,
    batch: usize,
    length: impl Fn(usize) -> usize,
) -> Vec<Chunk> {
    let threads = if split == Split::Batch { threads } else { 1 };
    let tasks = threads.min(batch.div_ceil(MIN_ROWS_PER_CHUNK)).max(1);
    let per = batch.div_ceil(tasks).max(1);
    (0..batch)
        .step_by(per)
        .map(|b0| {
            let mut rows: Vec<usize> = (b0..(b0 + per).min(batch)).collect();
            rows.sort_by_key(|&b| std::cmp::Reverse(length(b)));
            let lens = rows.iter().map(|&b| length(b)).collect();
            (rows, lens)
        })
        .collect()
}

/// Tiles `0..tiles` dealt into `members` contiguous ranges.
fn tile_range(member: usize, members: usize, tiles: usize) -> Range<usize> {
    (member * tiles / members)..((member + 1) * tiles / members)
}

/// One team member's work: (chunk, its tiles, the team's barrier if any).
pub type Member<'a> = dyn Fn(usize, Range<usize>, Option<&SpinBarrier>) + Sync + 'a;

/// Runs `member(chunk, tiles, barrier)`: for `Split::Hidden(n)`, n members of
/// the one chunk at once, each with its range of `0..tiles`, meeting at a
/// barrier; for `Split::Batch`, every chunk with all tiles, in parallel.
pub fn run_split(split: Split, chunks: usize, tiles: usize, member: &Member<'_>) {
    if chunks == 0 {
        return;
    }
    match split {
        Split::Hidden(n) => {
            let barrier = SpinBarrier::new(n);
            // Every worker is idle (the claim is exclusive) and the pool has at
            // least n threads, so all n members run at once.
            rayon::broadcast(|ctx| {
                if ctx.index() < n {
                    /// Poisons the barrier if the member unwinds, so the others
                    /// do not wait for it forever.
                    struct Guard<'a>(&'a SpinBarrier);
                    impl Drop for Guard<'_> {
                        fn drop(&mut self) {
                            if std::thread::panicking() {
                                self.0.poison();
                            }
                        }
                    }
                    let _guard = Guard(&barrier);
                    member(0, tile_range(ctx.index(), n, tiles), Some(&barrier));
                }
            });
            team_finished(&barrier);
        }
        Split::Batch if chunks == 1 => member(0, 0..tiles, None),
        Split::Batch => (0..chunks)
            .into_par_iter()
            .for_each(|chunk| member(chunk, 0..tiles, None)),
    }
}

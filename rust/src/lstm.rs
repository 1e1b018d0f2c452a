//! One layer, one direction, a whole sequence: argument checks, weight packing,
//! the large products after the time loop (the input projection runs inside
//! it, a block of steps at a time, in `step.rs`), and how the time loop is
//! split across threads: by batch rows (each chunk runs the whole loop alone,
//! threads never meet) or, when rows are few, by hidden units (each thread
//! keeps its slice of `w_hh` hot and the team meets at a barrier every step).

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::gemm::{gemm, Mat};
use crate::pack;
use crate::simd::{self, Isa, Kernel, Simd};
use crate::step::{
    BackwardChunk, BackwardState, ForwardChunk, ForwardOut, ForwardState, Geometry, SharedMut,
    Slots,
};
use crate::threads::{self, Engine, SpinBarrier};

/// T, B, I, H.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub steps: usize,
    pub batch: usize,
    pub input: usize,
    pub hidden: usize,
}

/// Everything that defines one sequence pass. Arrays are dense row-major:
/// `x` (T, B, I), or (B, T, I) when `batch_first`; `w_ih` (4H, I); `w_hh`
/// (4H, H); `bias` (4H,) = b_ih + b_hh; `h0`, `c0` (B, H); `lengths` (B,).
#[derive(Clone, Copy)]
pub struct Sequence<'a, E> {
    pub dims: Dims,
    pub batch_first: bool,
    pub reverse: bool,
    pub lengths: Option<&'a [usize]>,
    pub x: &'a [E],
    pub w_ih: &'a [E],
    pub w_hh: &'a [E],
    pub bias: Option<&'a [E]>,
    pub h0: Option<&'a [E]>,
    pub c0: Option<&'a [E]>,
}

/// What backward needs from forward, in the sequence's layout (rows ordered
/// like x): activated gates (T·B, 4·Hp) in blocks i, f, g, o; cell states and
/// the h each step started from, (T·B, Hp). Hp = [`hidden_pad`].
pub struct Cache<'a, E> {
    pub gates: &'a mut [E],
    pub cells: &'a mut [E],
    pub h_prev: &'a mut [E],
}

/// Read-only view of a [`Cache`].
#[derive(Clone, Copy)]
pub struct CacheRef<'a, E> {
    pub gates: &'a [E],
    pub cells: &'a [E],
    pub h_prev: &'a [E],
}

/// Outputs of forward: `y` like x with last dimension H; `h_n`, `c_n` (B, H).
pub struct Outputs<'a, E> {
    pub y: &'a mut [E],
    pub h_n: &'a mut [E],
    pub c_n: &'a mut [E],
}

/// Gradients of the outputs (None = zeros): `dy` like y, `dh_n`, `dc_n` (B, H).
#[derive(Clone, Copy, Default)]
pub struct Seeds<'a, E> {
    pub dy: Option<&'a [E]>,
    pub dh_n: Option<&'a [E]>,
    pub dc_n: Option<&'a [E]>,
}

/// Gradients, each shaped like its variable; `db` (4H,) is the gradient of
/// both b_ih and b_hh (None: not wanted). `scratch`, when given, holds the gate
/// gradients (T·B × 4Hp, any contents): callers that allocate large arrays
/// better (NumPy asks for huge pages) pass it; otherwise it is allocated here.
pub struct Grads<'a, E> {
    pub dx: &'a mut [E],
    pub dh0: &'a mut [E],
    pub dc0: &'a mut [E],
    pub dw_ih: &'a mut [E],
    pub dw_hh: &'a mut [E],
    pub db: Option<&'a mut [E]>,
    pub scratch: Option<&'a mut [E]>,
}

/// The padded hidden size Hp of the cache layout for element type `E`.
pub fn hidden_pad<E: Float>(hidden: usize) -> usize {
    hidden.next_multiple_of(E::PAD)
}

/// Rows per chunk below which a batch chunk is not worth a thread of its own.
const MIN_ROWS_PER_CHUNK: usize = 8;
/// Rows per thread from which the batch split wins over the hidden split.
const BATCH_SPLIT_ROWS: usize = 32;

/// How the time loop is shared among threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    /// Chunks of batch rows, one thread each.
    Batch,
    /// All rows on a team of this many threads, each with a range of tiles.
    Hidden(usize),
}

/// A forced split: 0 none, 1 batch, 2 hidden. Set from `LSTM_FAST_SPLIT` once
/// (for measurements), or by [`force_split`] (tests).
static FORCED_SPLIT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

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

/// Forces a split for later calls, or goes back to choosing. Results are the
/// same either way; this exists to measure and to test both.
pub fn force_split(split: ForcedSplit) {
    let code = match split {
        ForcedSplit::Choose => 0,
        ForcedSplit::Batch => 1,
        ForcedSplit::Hidden => 2,
    };
    FORCED_SPLIT.store(code, std::sync::atomic::Ordering::Relaxed);
}

fn forced_split() -> u8 {
    use std::sync::atomic::Ordering::Relaxed;
    match FORCED_SPLIT.load(Relaxed) {
        u8::MAX => {
            // Read once: reading the environment on every call could race
            // with Python's os.environ writes, which bypass Rust's lock.
            let forced = match std::env::var("LSTM_FAST_SPLIT").ok().as_deref() {
                Some("batch") => 1,
                Some("hidden") => 2,
                _ => 0,
            };
            let _ = FORCED_SPLIT.compare_exchange(u8::MAX, forced, Relaxed, Relaxed);
            FORCED_SPLIT.load(Relaxed)
        }
        forced => forced,
    }
}

/// The split for `batch` rows and `tiles` tiles of hidden units on `threads`
/// threads. `LSTM_FAST_SPLIT=batch|hidden` overrides it (for measurements).
fn choose_split(batch: usize, tiles: usize, threads: usize) -> Split {
    let team = threads.min(tiles);
    match forced_split() {
        1 => return Split::Batch,
        2 if team > 1 => return Split::Hidden(team),
        _ => {}
    }
    if team <= 1
        || batch >= threads * BATCH_SPLIT_ROWS
        || tiles < 2 * threads
        || !threads::team_allowed()
    {
        Split::Batch
    } else {
        Split::Hidden(team)
    }
}

/// Tiles `0..tiles` dealt into `members` contiguous ranges.
fn tile_range(member: usize, members: usize, tiles: usize) -> std::ops::Range<usize> {
    (member * tiles / members)..((member + 1) * tiles / members)
}

/// Holds the pool's team lock for the length of a call.
enum Claim<'a> {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] std::sync::RwLockWriteGuard<'a, ()>),
}

/// Takes the pool for a call: exclusively for a hidden split (its members wait
/// for each other, so all must run at once), shared otherwise. When another
/// call is running, a hidden split becomes a batch split, which yields the same
/// bits, instead of waiting. A lock poisoned by a panic elsewhere still works.
fn claim(engine: &Engine, split: Split) -> (Split, Claim<'_>) {
    use std::sync::TryLockError;
    if let Split::Hidden(_) = split {
        match engine.team.try_write() {
            Ok(guard) => return (split, Claim::Exclusive(guard)),
            Err(TryLockError::Poisoned(p)) => return (split, Claim::Exclusive(p.into_inner())),
            Err(TryLockError::WouldBlock) => {}
        }
    }
    (
        Split::Batch,
        Claim::Shared(engine.team.read().unwrap_or_else(|e| e.into_inner())),
    )
}

/// One team member's work: (chunk, its tiles, the team's barrier if any).
type Member<'a> = dyn Fn(usize, std::ops::Range<usize>, Option<&SpinBarrier>) + Sync + 'a;

/// Runs `member(chunk, tiles, barrier)`: for `Split::Hidden(n)`, n members of
/// the one chunk at once, each with its range of `0..tiles`, meeting at a
/// barrier; for `Split::Batch`, every chunk with all tiles, in parallel.
fn run_split(split: Split, chunks: usize, tiles: usize, member: &Member<'_>) {
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
            threads::team_finished(&barrier);
        }
        Split::Batch if chunks == 1 => member(0, 0..tiles, None),
        Split::Batch => (0..chunks)
            .into_par_iter()
            .for_each(|chunk| member(chunk, 0..tiles, None)),
    }
}

fn product(name: &str, factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .filter(|&n| n <= isize::MAX as usize / 8)
        .ok_or_else(|| {
            Error::TooLarge(format!(
                "{name}: size {factors:?} overflows the address space"
            ))
        })
}

fn expect_len(name: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Value(format!(
            "{name}: expected {want} elements, got {got}"
        )));
    }
    Ok(())
}

fn expect_opt(name: &str, got: Option<usize>, want: usize) -> Result<()> {
    got.map_or(Ok(()), |got| expect_len(name, got, want))
}

impl<E: Float> Sequence<'_, E> {
    fn rows(&self) -> Result<usize> {
        product("x", &[self.dims.steps, self.dims.batch])
    }

    fn check(&self) -> Result<()> {
        let Dims {
            steps,
            batch,
            input,
            hidden,
        } = self.dims;
        if hidden == 0 {
            return Err(Error::Value("hidden_size must be at least 1".into()));
        }
        let rows = self.rows()?;
        product("cache", &[rows, 4, hidden_pad::<E>(hidden)])?;
        expect_len("x", self.x.len(), product("x", &[rows, input])?)?;
        expect_len(
            "w_ih",
            self.w_ih.len(),
            product("w_ih", &[4, hidden, input])?,
        )?;
        expect_len(
            "w_hh",
            self.w_hh.len(),
            product("w_hh", &[4, hidden, hidden])?,
        )?;
        expect_opt("bias", self.bias.map(<[E]>::len), 4 * hidden)?;
        let state = product("h0", &[batch, hidden])?;
        expect_opt("h0", self.h0.map(<[E]>::len), state)?;
        expect_opt("c0", self.c0.map(<[E]>::len), state)?;
        if let Some(lengths) = self.lengths {
            expect_len("lengths", lengths.len(), batch)?;
            if let Some((b, &len)) = lengths.iter().enumerate().find(|&(_, &len)| len > steps) {
                return Err(Error::Value(format!(
                    "lengths[{b}] = {len} is out of range: lengths must lie in [0, T] = [0, {steps}]"
                )));
            }
        }
        Ok(())
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            steps: self.dims.steps,
            batch: self.dims.batch,
            hidden: self.dims.hidden,
            hidden_pad: hidden_pad::<E>(self.dims.hidden),
            batch_major: self.batch_first,
            reverse: self.reverse,
        }
    }

    fn length(&self, b: usize) -> usize {
        self.lengths.map_or(self.dims.steps, |l| l[b])
    }

    /// Contiguous ranges of batch rows, one per task, each ordered longest first.
    fn chunks(&self, threads: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
        let batch = self.dims.batch;
        let tasks = threads.min(batch.div_ceil(MIN_ROWS_PER_CHUNK)).max(1);
        let per = batch.div_ceil(tasks).max(1);
        (0..batch)
            .step_by(per)
            .map(|b0| {
                let mut rows: Vec<usize> = (b0..(b0 + per).min(batch)).collect();
                rows.sort_by_key(|&b| std::cmp::Reverse(self.length(b)));
                let lens = rows.iter().map(|&b| self.length(b)).collect();
                (rows, lens)
            })
            .collect()
    }

    /// Rows (in the layout) of padded steps, which the kernels never visit.
    fn padded_rows(&self) -> impl Iterator<Item = usize> + '_ {
        let geo = self.geometry();
        (0..self.dims.batch)
            .flat_map(move |b| (self.length(b)..self.dims.steps).map(move |pos| geo.row(pos, b)))
    }
}

/// How many elements one vector of `E` holds on `isa`.
fn lanes<E: Float>(isa: Isa) -> usize {
    struct Lanes;
    impl<E: Float> Kernel<E> for Lanes {
        type Output = usize;
        #[inline(always)]
        fn run<S: Simd<E = E>>(self) -> usize {
            S::LANES
        }
    }
    simd::dispatch::<E, _>(isa, Lanes)
}

/// Forward pass over the whole sequence. With `cache`, also records what
/// [`backward`] needs (sizes: see [`Cache`]).
pub fn forward<E: Float>(
    seq: &Sequence<'_, E>,
    out: Outputs<'_, E>,
    cache: Option<Cache<'_, E>>,
) -> Result<()> {
    seq.check()?;
    let Dims {
        batch,
        input,
        hidden,
        ..
    } = seq.dims;
    let rows = seq.rows()?;
    let hp = hidden_pad::<E>(hidden);
    expect_len("y", out.y.len(), rows * hidden)?;
    expect_len("h_n", out.h_n.len(), batch * hidden)?;
    expect_len("c_n", out.c_n.len(), batch * hidden)?;
    if let Some(c) = &cache {
        expect_len("cache gates", c.gates.len(), rows * 4 * hp)?;
        expect_len("cache cells", c.cells.len(), rows * hp)?;
        expect_len("cache h_prev", c.h_prev.len(), rows * hp)?;
    }
    let isa = simd::active();
    let engine = threads::pool()?;
    let pool = &engine.pool;
    let geo = seq.geometry();
    let lanes = lanes::<E>(isa);
    let tiles = hp / lanes;
    let threads = pool.current_num_threads();
    let (split, _claim) = claim(&engine, choose_split(batch, tiles, threads));
    let chunks = seq.chunks(if split == Split::Batch { threads } else { 1 });
    // One batch chunk has nothing to share: run it on the calling thread and
    // skip the hand-off to the pool (microseconds, which small calls notice).
    let inline = split == Split::Batch && chunks.len() <= 1;

    let body = || {
        let bias = pack::pad_bias(seq.bias, hidden, hp);
        let panels = pack::forward_panels(seq.w_hh, hidden, hp, lanes);

        let mut cache = cache;
        for row in seq.padded_rows() {
            out.y[row * hidden..][..hidden].fill(E::ZERO);
            if let Some(c) = cache.as_mut() {
                c.gates[row * 4 * hp..][..4 * hp].fill(E::ZERO);
                c.cells[row * hp..][..hp].fill(E::ZERO);
                c.h_prev[row * hp..][..hp].fill(E::ZERO);
            }
        }
        let (gates, cells, h_prev) = match cache {
            Some(c) => (
                SharedMut(c.gates.as_mut_ptr()),
                SharedMut(c.cells.as_mut_ptr()),
                SharedMut(c.h_prev.as_mut_ptr()),
            ),
            None => (SharedMut::null(), SharedMut::null(), SharedMut::null()),
        };
        let shared = ForwardOut {
            y: SharedMut(out.y.as_mut_ptr()),
            gates,
            cells,
            h_prev,
        };

        // Per chunk: its slots and its state (h twice, c), h0/c0 copied in.
        let mut states: Vec<[Vec<E>; 3]> = chunks
            .iter()
            .map(|(slot_rows, _)| {
                let mut st = [(); 3].map(|_| vec![E::ZERO; slot_rows.len() * hp]);
                for (r, &b) in slot_rows.iter().enumerate() {
                    for (src, dst) in [(seq.h0, 0), (seq.c0, 2)] {
                        if let Some(src) = src {
                            st[dst][r * hp..][..hidden]
                                .copy_from_slice(&src[b * hidden..][..hidden]);
                        }
                    }
                }
                st
            })
            .collect();
        let state_ptrs: Vec<ForwardState<E>> = states
            .iter_mut()
            .map(|[h0, h1, c]| ForwardState {
                h: [SharedMut(h0.as_mut_ptr()), SharedMut(h1.as_mut_ptr())],
                c: SharedMut(c.as_mut_ptr()),
            })
            .collect();
        // Chunks own disjoint batch rows and write only those rows of the shared
        // outputs (sizes checked above); members of a chunk write disjoint units.
        run_split(split, chunks.len(), tiles, &|chunk, tile_range, barrier| {
            let (slot_rows, slot_lens) = &chunks[chunk];
            let kernel = ForwardChunk {
                geo,
                slots: Slots {
                    rows: slot_rows,
                    lens: slot_lens,
                },
                x: seq.x,
                input,
                w_ih: seq.w_ih,
                bias: &bias,
                panels: &panels,
                state: state_ptrs[chunk],
                out: shared,
                tiles: tile_range,
                barrier,
            };
            simd::dispatch(isa, kernel);
        });

        // A row of length L last wrote h into buffer L % 2 (h0 sits in 0).
        for ((slot_rows, slot_lens), st) in chunks.iter().zip(&states) {
            for (slot, (&b, &len)) in slot_rows.iter().zip(slot_lens).enumerate() {
                out.h_n[b * hidden..][..hidden]
                    .copy_from_slice(&st[len % 2][slot * hp..][..hidden]);
                out.c_n[b * hidden..][..hidden].copy_from_slice(&st[2][slot * hp..][..hidden]);
            }
        }
    };
    if inline {
        body();
    } else {
        pool.install(body);
    }
    Ok(())
}

/// Backpropagation through time over the whole sequence, from the cache that
/// [`forward`] filled for the same `seq`.
pub fn backward<E: Float>(
    seq: &Sequence<'_, E>,
    cache: CacheRef<'_, E>,
    seeds: Seeds<'_, E>,
    grads: Grads<'_, E>,
) -> Result<()> {
    seq.check()?;
    let Dims {
        batch,
        input,
        hidden,
        ..
    } = seq.dims;
    let rows = seq.rows()?;
    let hp = hidden_pad::<E>(hidden);
    expect_len("cache gates", cache.gates.len(), rows * 4 * hp)?;
    expect_len("cache cells", cache.cells.len(), rows * hp)?;
    expect_len("cache h_prev", cache.h_prev.len(), rows * hp)?;
    expect_opt("dy", seeds.dy.map(<[E]>::len), rows * hidden)?;
    expect_opt("dh_n", seeds.dh_n.map(<[E]>::len), batch * hidden)?;
    expect_opt("dc_n", seeds.dc_n.map(<[E]>::len), batch * hidden)?;
    expect_len("dx", grads.dx.len(), rows * input)?;
    expect_len("dh0", grads.dh0.len(), batch * hidden)?;
    expect_len("dc0", grads.dc0.len(), batch * hidden)?;
    expect_len("dw_ih", grads.dw_ih.len(), 4 * hidden * input)?;
    expect_len("dw_hh", grads.dw_hh.len(), 4 * hidden * hidden)?;
    expect_opt("db", grads.db.as_ref().map(|d| d.len()), 4 * hidden)?;
    let isa = simd::active();
    let engine = threads::pool()?;
    let pool = &engine.pool;
    let geo = seq.geometry();
    let depth = 4 * hp;
    let lanes = lanes::<E>(isa);
    let tiles = hp.div_ceil(4 * lanes);
    let threads = pool.current_num_threads();
    let (split, _claim) = claim(&engine, choose_split(batch, tiles, threads));
    let chunks = seq.chunks(if split == Split::Batch { threads } else { 1 });

    let mut owned = Vec::new();
    let da: &mut [E] = match grads.scratch {
        Some(scratch) => {
            expect_len("scratch", scratch.len(), rows * depth)?;
            scratch
        }
        None => {
            owned.resize(rows * depth, E::ZERO);
            &mut owned
        }
    };
    let body = || {
        let panels = pack::backward_panels(seq.w_hh, hidden, hp, lanes);
        // The kernels write every visited (step, row) in full; padded steps
        // must hold zeros so the products below ignore them.
        for row in seq.padded_rows() {
            da[row * depth..][..depth].fill(E::ZERO);
        }
        let (da_ptr, dh0) = (
            SharedMut(da.as_mut_ptr()),
            SharedMut(grads.dh0.as_mut_ptr()),
        );

        // Per chunk: its slots and its state (dh_n seed, dc, c0), copied in.
        let mut states: Vec<[Vec<E>; 3]> = chunks
            .iter()
            .map(|(slot_rows, _)| {
                let mut st = [(); 3].map(|_| vec![E::ZERO; slot_rows.len() * hp]);
                for (r, &b) in slot_rows.iter().enumerate() {
                    for (src, dst) in [(seeds.dh_n, 0), (seeds.dc_n, 1), (seq.c0, 2)] {
                        if let Some(src) = src {
                            st[dst][r * hp..][..hidden]
                                .copy_from_slice(&src[b * hidden..][..hidden]);
                        }
                    }
                }
                st
            })
            .collect();
        let state_ptrs: Vec<BackwardState<E>> = states
            .iter_mut()
            .map(|[dh, dc, c0]| BackwardState {
                dh_seed: SharedMut(dh.as_mut_ptr()),
                dc: SharedMut(dc.as_mut_ptr()),
                c_first: SharedMut(c0.as_mut_ptr()),
            })
            .collect();
        // Chunks own disjoint batch rows and write only their rows of da and dh0
        // (sizes checked above); members of a chunk write disjoint units.
        run_split(split, chunks.len(), tiles, &|chunk, tile_range, barrier| {
            let (slot_rows, slot_lens) = &chunks[chunk];
            let kernel = BackwardChunk {
                geo,
                slots: Slots {
                    rows: slot_rows,
                    lens: slot_lens,
                },
                gates: cache.gates,
                cells: cache.cells,
                panels: &panels,
                dy: seeds.dy,
                state: state_ptrs[chunk],
                da: da_ptr,
                dh0,
                tiles: tile_range,
                barrier,
            };
            simd::dispatch(isa, kernel);
        });
        for ((slot_rows, _), st) in chunks.iter().zip(&states) {
            for (slot, &b) in slot_rows.iter().enumerate() {
                grads.dc0[b * hidden..][..hidden].copy_from_slice(&st[1][slot * hp..][..hidden]);
            }
        }

        // The non-recurrent gradients: one product each over all T·B rows. When
        // H is already a multiple of the padding, da's gate blocks are exactly
        // w_ih's and one product serves all four gates.
        let w_ih = if hidden == hp {
            std::borrow::Cow::Borrowed(seq.w_ih)
        } else {
            pack::pad_gate_rows(seq.w_ih, hidden, hp, input).into()
        };
        gemm(
            Mat::rows(da, rows, depth, depth),
            Mat::rows(&w_ih, depth, input, input),
            grads.dx,
            input,
            false,
        );
        // (first da column, first output row, rows) per product.
        let blocks: Vec<(usize, usize, usize)> = if hidden == hp {
            vec![(0, 0, 4 * hidden)]
        } else {
            (0..4).map(|g| (g * hp, g * hidden, hidden)).collect()
        };
        for (col, out_row, n) in blocks {
            // da's columns of these gate rows, transposed: (n, T·B).
            let da_t = Mat {
                data: &da[col.min(da.len())..],
                rows: n,
                cols: rows,
                row_stride: 1,
                col_stride: depth,
            };
            gemm(
                da_t,
                Mat::rows(seq.x, rows, input, input),
                &mut grads.dw_ih[out_row * input..][..n * input],
                input,
                false,
            );
            let h_prev = Mat::rows(cache.h_prev, rows, hidden, hp);
            gemm(
                da_t,
                h_prev,
                &mut grads.dw_hh[out_row * hidden..][..n * hidden],
                hidden,
                false,
            );
        }
        if let Some(db) = grads.db {
            // Column blocks in parallel, each summed over rows in order: the
            // same bits for any thread count.
            let mut sum = vec![E::ZERO; depth];
            let column_block = |(blk, sum): (usize, &mut [E])| {
                for da_row in da.chunks_exact(depth) {
                    for (s, &d) in sum.iter_mut().zip(&da_row[blk * 64..]) {
                        *s = *s + d;
                    }
                }
            };
            if threads::in_pool() {
                sum.par_chunks_mut(64).enumerate().for_each(column_block);
            } else {
                sum.chunks_mut(64).enumerate().for_each(column_block);
            }
            for gate in 0..4 {
                db[gate * hidden..][..hidden].copy_from_slice(&sum[gate * hp..][..hidden]);
            }
        }
    };
    // Unlike forward, even one batch chunk shares work: the products after the
    // loop split their rows over the pool. Only a one-thread pool stays here.
    if threads == 1 {
        body();
    } else {
        pool.install(body);
    }
    Ok(())
}

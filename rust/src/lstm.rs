//! One layer, one direction, a whole sequence: the forward and backward
//! passes. Each checks its arguments, packs the weights, splits the time loop
//! over threads (`parallel/split.rs`), runs one chunk kernel per team member
//! (`kernels/forward_step.rs`, `kernels/backward_step.rs`; the input projection
//! runs inside the forward loop, a block of steps at a time) and, for
//! backward, the large products after the loop. A [`Cancel`] stops either at
//! its next time step (and backward between its products).
//!
//! A pass with a projection (`variant.w_hr`) always splits the batch: each
//! step's projection needs every tile of the step's m (forward) or every
//! unit of dh_t (backward), so a hidden split would need a second barrier per
//! step; teams of one need none, and give the same bits (each output is one
//! FMA chain whatever the rows grouped with it).

use rayon::prelude::*;

use crate::alloc;
use crate::cancel::Cancel;
use crate::check;
use crate::error::Result;
use crate::float::Float;
use crate::kernels::backward_step::{BackwardChunk, BackwardScratch, BackwardState};
use crate::kernels::candidate::Candidates;
use crate::kernels::forward_step::{ForwardChunk, ForwardOut, ForwardScratch, ForwardState};
use crate::kernels::gemm::{gemm, gemm_in_order, KOrder, Mat, Runs};
use crate::kernels::layout::{SharedMut, Slots};
use crate::kernels::pack;
use crate::kernels::row_major;
use crate::parallel::pool::{self, threads_here};
use crate::parallel::split::{self, choose_split, claim, run_split, Chunk, Split};
use crate::sequence::{hidden_pad, Cache, CacheRef, Dims, Grads, Outputs, Seeds, Sequence};
use crate::simd::{dispatch, Bf16, Isa};
use crate::tuning::{DB_COLUMN_BLOCK, ORDERED_BLOCK_ROWS};
use crate::variant::Variant;

/// Forward pass over the whole sequence. With `cache`, also records what
/// [`backward`] needs (sizes: see [`Cache`]). Once `cancel` is set, returns
/// [`Error::Interrupted`](crate::Error::Interrupted) at the next time step, with
/// `out` and `cache` partly written.
pub fn forward<E: Float>(
    seq: &Sequence<'_, E>,
    out: Outputs<'_, E>,
    cache: Option<Cache<'_, E>>,
    cancel: &Cancel,
) -> Result<()> {
    forward_on(Isa::active(), seq, out, cache, cancel)
}

/// [`forward`] on `isa` (the active ISA, read once by the caller: a caller
/// that decided on a path from it runs that path even if another thread
/// changes the active ISA meanwhile).
pub(crate) fn forward_on<E: Float>(
    isa: Isa,
    seq: &Sequence<'_, E>,
    out: Outputs<'_, E>,
    cache: Option<Cache<'_, E>>,
    cancel: &Cancel,
) -> Result<()> {
    check::forward_args(seq, &out, cache.as_ref())?;
    if let (Some(kept), Some(_)) = (seq.panels, &cache) {
        kept.check_not_bf16()?;
    }
    if !seq.runs() {
        return forward_without_steps(seq, out, cache);
    }
    if row_major::applies(seq, isa, cache.is_some()) {
        return row_major::forward(isa, seq, out, cache, cancel);
    }
    let Dims {
        batch,
        input,
        hidden,
        ..
    } = seq.dims;
    let hp = hidden_pad::<E>(hidden);
    let state = seq.state();
    let workers = pool::workers()?;
    let pool = &workers.pool;
    let geo = seq.geometry();
    let lanes = isa.lanes::<E>();
    let tiles = hp / lanes;
    let threads = pool.current_num_threads();
    let work = seq.dims.work();
    let wanted = if seq.projects() {
        Split::Batch
    } else {
        // The loop reads both weights (the members project their own units'
        // inputs) and does all the call's work.
        let worth = split::team_pays(work, seq.weight_bytes());
        choose_split(batch, tiles, threads, work, worth)
    };
    let (split, _claim) = claim(&workers, wanted, cancel)?;
    let chunks = split::chunks(split, threads, batch, work, |b| seq.length(b))?;
    // One batch chunk has nothing to share: run it on the calling thread and
    // skip the hand-off to the pool (microseconds, which small calls notice).
    let inline = split == Split::Batch && chunks.len() <= 1;

    let body = || -> Result<()> {
        let bias = pack::pad_bias(seq.bias, hidden, hp)?;
        // bf16 inference streams w_hh's panels as bfloat16 (`simd/bf16.rs`);
        // where the ISA has the BF16 dot products, both products run on them
        // over panels of pairs of depths (`kernels/bf16_dot.rs`).
        let bf16_dot = isa.dot_bf16()
            && seq.variant.recurrent_keep.is_none()
            && seq.panels.is_some_and(|kept| kept.bf16());
        let mut ih_pairs = Default::default();
        let mut bf16_panels = None;
        let (ih_panels, panels) = match seq.panels {
            Some(kept) if bf16_dot => {
                ih_pairs = kept.forward_bf16_pairs(0, seq.w_ih, hidden, hp, input)?;
                bf16_panels = Some(kept.forward_bf16_pairs(1, seq.w_hh, hidden, hp, state)?);
                Default::default()
            }
            Some(kept) if kept.bf16() => {
                bf16_panels = Some(kept.forward_bf16(seq.w_hh, hidden, hp, state, lanes)?);
                (
                    kept.input(seq.w_ih, hidden, hp, input, lanes)?,
                    Default::default(),
                )
            }
            Some(kept) => (
                kept.input(seq.w_ih, hidden, hp, input, lanes)?,
                kept.forward(seq.w_hh, hidden, hp, state, lanes)?,
            ),
            None => (
                pack::forward_panels(seq.w_ih, "w_ih", hidden, hp, input, lanes)?.into(),
                pack::forward_panels(seq.w_hh, "w_hh", hidden, hp, state, lanes)?.into(),
            ),
        };
        let proj_panels: pack::Panels<E> = match (seq.variant.w_hr, seq.panels) {
            (None, _) => Default::default(),
            (Some(w_hr), Some(kept)) => kept.projection(w_hr, state, hidden, lanes)?,
            (Some(w_hr), None) => pack::projection_panels(w_hr, state, hidden, lanes)?.into(),
        };

        let peepholes = pad_peepholes(&seq.variant, hidden, hp)?;
        let recurrent_keep = pad_recurrent_keep(&seq.variant, batch, state)?;
        let variant = Variant {
            peepholes: peepholes.as_deref(),
            recurrent_keep: recurrent_keep.as_deref(),
            ..seq.variant
        };
        let mut cache = cache;
        clear_padded_rows(seq, out.y, cache.as_mut());
        let (gates, cells, h_prev, pre) = match cache {
            Some(c) => (
                SharedMut(c.gates.as_mut_ptr()),
                SharedMut(c.cells.as_mut_ptr()),
                SharedMut(c.h_prev.as_mut_ptr()),
                match c.pre {
                    Some(p) if variant.caches_pre() => SharedMut(p.as_mut_ptr()),
                    _ => SharedMut::null(),
                },
            ),
            None => (
                SharedMut::null(),
                SharedMut::null(),
                SharedMut::null(),
                SharedMut::null(),
            ),
        };
        let shared = ForwardOut {
            y: SharedMut(out.y.as_mut_ptr()),
            gates,
            cells,
            h_prev,
            pre,
        };
        // The gate math, chosen once per call: the plain LSTM's own kernel or
        // the general one (`variant.rs`).
        let plain = variant.plain_gates();

        // Per chunk: its state (h twice, c, m with a projection), h0/c0
        // copied in.
        let m_width = if seq.projects() { hidden } else { 0 };
        let mut states = chunk_states(
            &chunks,
            [
                (seq.h0, state),
                (None, state),
                (seq.c0, hidden),
                (None, m_width),
            ],
        )?;
        let state_ptrs = alloc::collect(
            states.iter_mut().map(|[h0, h1, c, m]| ForwardState {
                h: [SharedMut(h0.as_mut_ptr()), SharedMut(h1.as_mut_ptr())],
                c: SharedMut(c.as_mut_ptr()),
                m: SharedMut(m.as_mut_ptr()),
            }),
            "the chunk states",
        )?;
        // Per member: its scratch, allocated here, before the threads start.
        let mut scratch = alloc::try_collect(
            split::members(split, chunks.len(), tiles).map(|(chunk, tile_range)| {
                let (rows, lens) = &chunks[chunk];
                let units = tile_range.start * lanes..tile_range.end * lanes;
                ForwardScratch::new(geo, &Slots { rows, lens }, input, units, lanes, bf16_dot)
            }),
            "the members' scratch",
        )?;
        // Chunks own disjoint batch rows and write only those rows of the shared
        // outputs (sizes checked above); members of a chunk write disjoint units.
        run_split(
            split,
            chunks.len(),
            tiles,
            &mut scratch,
            &|chunk, tile_range, scratch, barrier| {
                let (rows, lens) = &chunks[chunk];
                macro_rules! run {
                    ($variant:literal, $weight:ty, $panels:expr, $dot:expr) => {
                        dispatch(
                            isa,
                            ForwardChunk::<E, $variant, $weight> {
                                geo,
                                slots: Slots { rows, lens },
                                x: seq.x,
                                input,
                                ih_panels: &ih_panels,
                                ih_pairs: &ih_pairs,
                                bias: &bias,
                                panels: $panels,
                                bf16_dot: $dot,
                                proj_panels: &proj_panels,
                                state: state_ptrs[chunk],
                                out: shared,
                                tiles: tile_range,
                                scratch: std::mem::take(scratch),
                                barrier,
                                cancel,
                                variant,
                            },
                        )
                    };
                }
                match (plain, &bf16_panels) {
                    (true, None) => run!(false, E, &panels, false),
                    (false, None) => run!(true, E, &panels, false),
                    (true, Some(bf16)) => run!(false, Bf16, bf16, bf16_dot),
                    (false, Some(bf16)) => run!(true, Bf16, bf16, bf16_dot),
                }
            },
        );
        // A cancelled pass stops here (its kernels have stopped at a step).
        cancel.check()?;

        // A row of length L last wrote h into buffer L % 2 (h0 sits in 0); a
        // row of length 0 has no state and keeps h0, c0.
        let pp = hidden_pad::<E>(state);
        for (st, slot, b, len) in chunk_rows(&chunks, &states) {
            let h_n = &mut out.h_n[b * state..][..state];
            let c_n = &mut out.c_n[b * hidden..][..hidden];
            if len == 0 {
                copy_row_or_zero(h_n, seq.h0, b);
                copy_row_or_zero(c_n, seq.c0, b);
            } else {
                h_n.copy_from_slice(&st[len % 2][slot * pp..][..state]);
                c_n.copy_from_slice(&st[2][slot * hp..][..hidden]);
            }
        }
        Ok(())
    };
    if inline {
        body()
    } else {
        pool.install(body)
    }
}

/// Backpropagation through time over the whole sequence, from the cache that
/// [`forward`] filled for the same `seq`. Once `cancel` is set, returns
/// [`Error::Interrupted`](crate::Error::Interrupted) at the next time step or
/// before the next large product, with `grads` partly written.
pub fn backward<E: Float>(
    seq: &Sequence<'_, E>,
    cache: CacheRef<'_, E>,
    seeds: Seeds<'_, E>,
    grads: Grads<'_, E>,
    cancel: &Cancel,
) -> Result<()> {
    let rows = check::backward_args(seq, &cache, &seeds, &grads)?;
    if let Some(kept) = seq.panels {
        kept.check_not_bf16()?;
    }
    if !seq.runs() {
        return backward_without_steps(seeds, grads);
    }
    backward_pass(seq, cache, seeds, grads, rows, false, cancel)
}

/// [`backward`] of a checked call in which some row runs. With `accumulate`
/// the weight, bias and peephole gradients continue the sums already in
/// `grads` (a later segment of the same sequence, `checkpoint.rs`) instead of
/// starting from zero; every other gradient is written afresh.
pub(crate) fn backward_pass<E: Float>(
    seq: &Sequence<'_, E>,
    cache: CacheRef<'_, E>,
    seeds: Seeds<'_, E>,
    grads: Grads<'_, E>,
    rows: usize,
    accumulate: bool,
    cancel: &Cancel,
) -> Result<()> {
    let Dims { batch, hidden, .. } = seq.dims;
    let hp = hidden_pad::<E>(hidden);
    let state = seq.state();
    let pp = hidden_pad::<E>(state);
    let isa = Isa::active();
    let workers = pool::workers()?;
    let pool = &workers.pool;
    let geo = seq.geometry();
    let depth = 4 * hp;
    let lanes = isa.lanes::<E>();
    let tiles = hp.div_ceil(4 * lanes);
    // The flow sums' tiles: those of the wider of H and P (BackwardChunk).
    let flow_tiles = hp.max(pp).div_ceil(4 * lanes);
    let threads = pool.current_num_threads();
    let work = seq.dims.work();
    let wanted = if seq.projects() {
        Split::Batch
    } else {
        // The loop reads only w_hh (4H × H, no projection here) and does
        // T·B·4H·H of the work: dx and dW come after it, on the pool.
        let loop_work = seq.dims.steps * batch * 4 * hidden * hidden;
        let worth = split::team_pays(loop_work, 4 * hidden * hidden * size_of::<E>());
        choose_split(batch, tiles, threads, work, worth)
    };
    let (split, _claim) = claim(&workers, wanted, cancel)?;
    let chunks = split::chunks(split, threads, batch, work, |b| seq.length(b))?;

    let mut owned;
    let da: &mut [E] = match grads.scratch {
        Some(scratch) => scratch,
        None => {
            owned = alloc::zeroed(&[rows, depth], "the gate gradients (backward's scratch)")?;
            &mut owned
        }
    };
    let body = || -> Result<()> {
        let panels = match seq.panels {
            Some(kept) => kept.backward(seq.w_hh, hidden, hp, state, lanes)?,
            None => pack::backward_panels(seq.w_hh, hidden, hp, state, lanes)?.into(),
        };
        let proj_panels: pack::Panels<E> = match (seq.variant.w_hr, seq.panels) {
            (None, _) => Default::default(),
            (Some(w_hr), Some(kept)) => kept.projection_backward(w_hr, state, hidden, lanes)?,
            (Some(w_hr), None) => {
                pack::projection_backward_panels(w_hr, state, hidden, lanes)?.into()
            }
        };
        // With a projection: dh_t (P wide) and m_t (H wide) of every (step,
        // row), for dW_hr after the loop. Rows of padded steps stay zero.
        let (mut dh_steps, mut m_steps) = if seq.projects() {
            (
                alloc::zeroed::<E>(&[rows, pp], "the dh of every step (projection)")?,
                alloc::zeroed::<E>(&[rows, hp], "the m of every step (projection)")?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let (dh_ptr, m_ptr) = if seq.projects() {
            (
                SharedMut(dh_steps.as_mut_ptr()),
                SharedMut(m_steps.as_mut_ptr()),
            )
        } else {
            (SharedMut::null(), SharedMut::null())
        };
        // The kernels write every visited (step, row) in full; padded steps
        // must hold zeros so the products below ignore them.
        for row in seq.padded_rows() {
            da[row * depth..][..depth].fill(E::ZERO);
        }
        let (da_ptr, dh0) = (
            SharedMut(da.as_mut_ptr()),
            SharedMut(grads.dh0.as_mut_ptr()),
        );
        let peepholes = pad_peepholes(&seq.variant, hidden, hp)?;
        let recurrent_keep = pad_recurrent_keep(&seq.variant, batch, state)?;
        let variant = Variant {
            peepholes: peepholes.as_deref(),
            recurrent_keep: recurrent_keep.as_deref(),
            ..seq.variant
        };
        let plain = variant.plain_gates();
        let pre = match cache.pre {
            Some(p) if variant.caches_pre() => p,
            _ => &[],
        };
        // Per (row, tile): the sums of squares of dh and dc (gradient flow).
        let mut flow_sums = match grads.flow {
            Some(_) => alloc::zeroed::<E>(&[rows, flow_tiles, 2], "the gradient-flow sums")?,
            None => Vec::new(),
        };
        let flow_ptr = match grads.flow {
            Some(_) => SharedMut(flow_sums.as_mut_ptr()),
            None => SharedMut::null(),
        };

        // Per chunk: its state (dh_n seed, dc, c0), copied in; with zoneout
        // of h, the share of dh that goes to the previous step (zeros).
        let carry_width = if variant.zoneout_h.is_on() { state } else { 0 };
        let mut states = chunk_states(
            &chunks,
            [
                (seeds.dh_n, state),
                (seeds.dc_n, hidden),
                (seq.c0, hidden),
                (None, carry_width),
            ],
        )?;
        let state_ptrs = alloc::collect(
            states.iter_mut().map(|[dh, dc, c0, carry]| BackwardState {
                dh_seed: SharedMut(dh.as_mut_ptr()),
                dc: SharedMut(dc.as_mut_ptr()),
                c_first: SharedMut(c0.as_mut_ptr()),
                dh_carry: if carry.is_empty() {
                    SharedMut::null()
                } else {
                    SharedMut(carry.as_mut_ptr())
                },
            }),
            "the chunk states",
        )?;
        // Per member: its scratch, allocated here, before the threads start.
        let mut scratch = alloc::try_collect(
            split::members(split, chunks.len(), tiles).map(|(chunk, _)| {
                let (rows, lens) = &chunks[chunk];
                BackwardScratch::new::<E>(&Slots { rows, lens }, lanes)
            }),
            "the members' scratch",
        )?;
        // Chunks own disjoint batch rows and write only their rows of da and dh0
        // (sizes checked above); members of a chunk write disjoint units.
        run_split(
            split,
            chunks.len(),
            tiles,
            &mut scratch,
            &|chunk, tile_range, scratch, barrier| {
                let (slot_rows, slot_lens) = &chunks[chunk];
                macro_rules! run {
                    ($variant:literal, $flow:literal) => {
                        dispatch(
                            isa,
                            BackwardChunk::<E, $variant, $flow> {
                                geo,
                                slots: Slots {
                                    rows: slot_rows,
                                    lens: slot_lens,
                                },
                                gates: cache.gates,
                                cells: cache.cells,
                                panels: &panels,
                                proj_panels: &proj_panels,
                                dh: dh_ptr,
                                m: m_ptr,
                                dy: seeds.dy,
                                state: state_ptrs[chunk],
                                da: da_ptr,
                                dh0,
                                tiles: tile_range,
                                scratch: std::mem::take(scratch),
                                barrier,
                                cancel,
                                variant,
                                pre,
                                flow: flow_ptr,
                            },
                        )
                    };
                }
                // The gate math and the flow, chosen once per call.
                match (plain, flow_ptr.0.is_null()) {
                    (true, true) => run!(false, false),
                    (true, false) => run!(false, true),
                    (false, true) => run!(true, false),
                    (false, false) => run!(true, true),
                }
            },
        );
        // A cancelled pass stops here, or between the products below (each
        // takes a fraction of the call).
        cancel.check()?;
        // A row of length 0 has no state: its dh0, dc0 are its seeds.
        for (st, slot, b, len) in chunk_rows(&chunks, &states) {
            let dc0 = &mut grads.dc0[b * hidden..][..hidden];
            if len == 0 {
                copy_row_or_zero(&mut grads.dh0[b * state..][..state], seeds.dh_n, b);
                copy_row_or_zero(dc0, seeds.dc_n, b);
            } else {
                dc0.copy_from_slice(&st[1][slot * hp..][..hidden]);
            }
        }
        if let Some([norm_h, norm_c]) = grads.flow {
            flow_norms(seq, &flow_sums, flow_tiles, norm_h, norm_c);
        }
        input_grads(seq, da, rows, grads.dx)?;
        cancel.check()?;
        let steps = StepRows {
            da,
            gates: cache.gates,
            h_prev: cache.h_prev,
            cells: cache.cells,
            dh: &dh_steps,
            m: &m_steps,
        };
        let sums = WeightSums {
            dw_ih: grads.dw_ih,
            dw_hh: grads.dw_hh,
            db: grads.db,
            dpeepholes: grads.dpeepholes,
            dw_hr: grads.dw_hr,
        };
        weight_grads(seq, steps, sums, accumulate, cancel)
    };
    // Unlike forward, even one batch chunk shares work: the products after the
    // loop split their rows over the pool. Only a one-thread pool stays here.
    workers.run(body)
}

/// The cell each step computed, in the cache's layout ((T·B) × Hp, like
/// `cache.cells`), from the cache [`forward`] filled for the same `seq`: with
/// zoneout of c the candidates c̃_t = f ⊙ c_{t−1} + i ⊙ g rebuilt from the
/// gates and the cached states c_{t−1} (c0 at a row's first step) with the
/// forward's operation on the active ISA (`kernels/candidate.rs`), the bits
/// the forward computed; without, the cached cells themselves. Rows of padded
/// steps get zeros.
pub fn candidates<E: Float>(
    seq: &Sequence<'_, E>,
    cache: CacheRef<'_, E>,
    out: &mut [E],
) -> Result<()> {
    seq.check()?;
    let rows = seq.rows()?;
    check::cache_ref(seq, &cache)?;
    let hp = hidden_pad::<E>(seq.dims.hidden);
    check::expect_len("out", out.len(), rows * hp)?;
    if !seq.variant.zoneout_c.is_on() {
        out.copy_from_slice(cache.cells);
        return Ok(());
    }
    out.fill(E::ZERO);
    let geo = seq.geometry();
    let (hidden, depth, isa) = (seq.dims.hidden, 4 * hp, Isa::active());
    let mut c_first = alloc::zeroed::<E>(&[hp], "a row's c0 (candidates)")?;
    for b in 0..seq.dims.batch {
        let len = seq.length(b);
        if let (Some(c0), true) = (seq.c0, len > 0) {
            c_first[..hidden].copy_from_slice(&c0[b * hidden..][..hidden]);
        }
        for s in 0..len {
            let row = geo.row(geo.pos(s, len), b);
            let c_prev = if s > 0 {
                &cache.cells[geo.row(geo.pos(s - 1, len), b) * hp..][..hp]
            } else {
                &c_first[..]
            };
            dispatch(
                isa,
                Candidates {
                    hidden_pad: hp,
                    gates: &cache.gates[row * depth..][..depth],
                    c_prev,
                    out: &mut out[row * hp..][..hp],
                },
            )?;
        }
    }
    Ok(())
}

/// The peepholes [p_i, p_o, p_f] with each block padded to Hp (zeros in
/// padded units), or None without peepholes.
fn pad_peepholes<E: Float>(v: &Variant<'_, E>, hidden: usize, hp: usize) -> Result<Option<Vec<E>>> {
    let Some(p) = v.peepholes else {
        return Ok(None);
    };
    let mut out = alloc::zeroed::<E>(&[3, hp], "the padded peepholes")?;
    for k in 0..3 {
        out[k * hp..][..hidden].copy_from_slice(&p[k * hidden..][..hidden]);
    }
    Ok(Some(out))
}

/// Recurrent dropout's keep mask (B, P) with each row padded to Pp (zeros in
/// padded units), or None without recurrent dropout.
fn pad_recurrent_keep<E: Float>(
    v: &Variant<'_, E>,
    batch: usize,
    state: usize,
) -> Result<Option<Vec<E>>> {
    let Some(r) = v.recurrent_keep else {
        return Ok(None);
    };
    let pp = hidden_pad::<E>(state);
    let mut out = alloc::zeroed::<E>(&[batch, pp], "the padded recurrent dropout mask")?;
    for b in 0..batch {
        out[b * pp..][..state].copy_from_slice(&r[b * state..][..state]);
    }
    Ok(Some(out))
}

/// The gradient-flow norms from the kernels' per-tile sums of squares: each
/// (t, b) adds its tiles in order and takes the root (the same bits for any
/// thread count and split). `norm_h`, `norm_c` are (T, B), by real time;
/// steps past a row's length get 0.
fn flow_norms<E: Float>(
    seq: &Sequence<'_, E>,
    sums: &[E],
    tiles: usize,
    norm_h: &mut [E],
    norm_c: &mut [E],
) {
    let geo = seq.geometry();
    let batch = seq.dims.batch;
    norm_h.fill(E::ZERO);
    norm_c.fill(E::ZERO);
    for b in 0..batch {
        for t in 0..seq.length(b) {
            let row = geo.row(t, b);
            for (k, out) in [&mut *norm_h, &mut *norm_c].into_iter().enumerate() {
                let sum = (0..tiles).fold(E::ZERO, |a, q| a + sums[(row * tiles + q) * 2 + k]);
                // Rounded once from f64: the correctly rounded root for f32 too.
                out[t * batch + b] = E::from_f64(sum.to_f64().sqrt());
            }
        }
    }
}

/// dx = da · w_ih over all `rows` rows (each row of dx its own FMA chains,
/// so any split of the rows gives the same bits). When H is already a
/// multiple of the padding, da's gate blocks are exactly w_ih's.
pub(crate) fn input_grads<E: Float>(
    seq: &Sequence<'_, E>,
    da: &[E],
    rows: usize,
    dx: &mut [E],
) -> Result<()> {
    let (input, hidden) = (seq.dims.input, seq.dims.hidden);
    let hp = hidden_pad::<E>(hidden);
    let depth = 4 * hp;
    let w_ih = if hidden == hp {
        std::borrow::Cow::Borrowed(seq.w_ih)
    } else {
        pack::pad_gate_rows(seq.w_ih, hidden, hp, input)?.into()
    };
    gemm(
        Mat::rows(da, rows, depth, depth),
        Mat::rows(&w_ih, depth, input, input),
        dx,
        input,
        false,
    );
    Ok(())
}

/// What backward leaves per (step, row) for the weight sums, in the
/// sequence's layout: the gate gradients da (rows × 4Hp), the cache's gates
/// (rows × 4Hp: with zoneout of c the output peephole's c̃_t is rebuilt from
/// them), h_prev (rows × Pp) and cells (rows × Hp, the states c_t), and with
/// a projection dh (rows × Pp) and m (rows × Hp) (else empty).
#[derive(Clone, Copy)]
struct StepRows<'a, E> {
    da: &'a [E],
    gates: &'a [E],
    h_prev: &'a [E],
    cells: &'a [E],
    dh: &'a [E],
    m: &'a [E],
}

/// The gradients summed over every (step, row): shaped as in [`Grads`].
struct WeightSums<'a, E> {
    dw_ih: &'a mut [E],
    dw_hh: &'a mut [E],
    db: Option<&'a mut [E]>,
    dpeepholes: Option<&'a mut [E]>,
    dw_hr: Option<&'a mut [E]>,
}

/// Every (step, row) of `seq` in the order backward produces them, which
/// is the order of every sum over them: iterations last to first, batch
/// rows ascending within one; as (iteration, batch row, layout row).
/// Segments of iterations (`checkpoint.rs`), last to first, visit the same
/// terms in the same order, so their sums continue these chains exactly.
/// The LayerNorm LSTM (`layernorm.rs`) sums in this order too.
pub(crate) fn processing_order<'a, E: Float>(
    seq: &'a Sequence<'a, E>,
) -> impl Iterator<Item = (usize, usize, usize)> + 'a {
    let geo = seq.geometry();
    let longest = (0..seq.dims.batch)
        .map(|b| seq.length(b))
        .max()
        .unwrap_or(0);
    (0..longest).rev().flat_map(move |s| {
        (0..seq.dims.batch).filter_map(move |b| {
            let len = seq.length(b);
            (s < len).then(|| (s, b, geo.row(geo.pos(s, len), b)))
        })
    })
}

/// Rows of one block of [`ordered_blocks`]: at most `ORDERED_BLOCK_ROWS`,
/// fewer when the sequence has fewer valid (step, row) (at least 1).
pub(crate) fn ordered_block_rows<E: Float>(seq: &Sequence<'_, E>) -> usize {
    let valid: usize = (0..seq.dims.batch).map(|b| seq.length(b)).sum();
    ORDERED_BLOCK_ROWS.min(valid).max(1)
}

/// Runs `block(rows, more)` on every block of [`processing_order`] in turn:
/// `rows` its (iteration, batch row, layout row), at most
/// [`ordered_block_rows`]; `more` whether a product over it continues the
/// chains already in its output (`gemm`'s `accumulate`): false for the first
/// block unless `accumulate`. A product per block with `more` then sums over
/// every (step, row) in processing order, however the steps were grouped
/// into calls.
pub(crate) fn ordered_blocks<E: Float>(
    seq: &Sequence<'_, E>,
    accumulate: bool,
    cancel: &Cancel,
    mut block: impl FnMut(&[(usize, usize, usize)], bool) -> Result<()>,
) -> Result<()> {
    let size = ordered_block_rows(seq);
    let mut rows = alloc::with_capacity(size, "the rows of an ordered block")?;
    let mut order = processing_order(seq).peekable();
    let mut more = accumulate;
    while order.peek().is_some() {
        cancel.check()?;
        rows.clear();
        rows.extend(order.by_ref().take(size));
        block(&rows, more)?;
        more = true;
    }
    Ok(())
}

/// The transpose of `n` gathered rows `stride` apart, `width` used: the
/// (width, n) left operand of Σ aᵀ b.
pub(crate) fn gathered_t<E>(data: &[E], n: usize, width: usize, stride: usize) -> Mat<'_, E> {
    Mat {
        data,
        rows: width,
        cols: n,
        row_stride: 1,
        col_stride: stride,
    }
}

/// `out[k] (+)= Σ a[r][k]` (with `b`: `Σ a[r][k] · b[r][k]`) over the layout
/// rows r of every (step, row) in [`processing_order`]; `a`, `b` have rows
/// of `out.len()`. Continues `out`'s values with `accumulate`, else starts
/// from zero. Columns in blocks over the pool's threads, each column summed
/// on one thread in order: the same bits for any thread count, and segments
/// (last to first, with `accumulate`) continue the whole pass's sums.
///
/// A block is as wide as the threads allow (one block on one thread): each
/// row is then read in long runs the hardware prefetcher follows, where
/// narrow blocks read a few lines per row, every row in another 4 KiB page
/// (rows are 4·Hp apart), each line a miss waited for.
pub(crate) fn ordered_column_sums<E: Float>(
    seq: &Sequence<'_, E>,
    out: &mut [E],
    a: &[E],
    b: Option<&[E]>,
    accumulate: bool,
) {
    let width = out.len();
    let threads = threads_here();
    let block = width
        .div_ceil(threads)
        .next_multiple_of(DB_COLUMN_BLOCK)
        .max(DB_COLUMN_BLOCK);
    let column_block = |(blk, sum): (usize, &mut [E])| {
        if !accumulate {
            sum.fill(E::ZERO);
        }
        let k0 = blk * block;
        let n = sum.len();
        for (_, _, r) in processing_order(seq) {
            let a_row = &a[r * width + k0..][..n];
            match b {
                Some(b) => {
                    let b_row = &b[r * width + k0..][..n];
                    for ((s, &x), &y) in sum.iter_mut().zip(a_row).zip(b_row) {
                        *s = *s + x * y;
                    }
                }
                None => {
                    for (s, &x) in sum.iter_mut().zip(a_row) {
                        *s = *s + x;
                    }
                }
            }
        }
    };
    if threads > 1 {
        out.par_chunks_mut(block).enumerate().for_each(column_block);
    } else {
        out.chunks_mut(block).enumerate().for_each(column_block);
    }
}

/// Adds one (step, row)'s terms to the peephole gradients `dp` = [dp_i,
/// dp_o, dp_f] (3 × `hidden`): dp_i += da_i ⊙ c_{t−1}, dp_f += da_f ⊙
/// c_{t−1}, dp_o += da_o ⊙ c_t; `da` the row's gate gradients in blocks i, f,
/// g, o `stride` apart; `c_prev` empty for zeros (no c0).
pub(crate) fn peephole_terms<E: Float>(
    dp: &mut [E],
    da: &[E],
    stride: usize,
    c_prev: &[E],
    c: &[E],
) {
    let hidden = dp.len() / 3;
    let (dp_i, rest) = dp.split_at_mut(hidden);
    let (dp_o, dp_f) = rest.split_at_mut(hidden);
    for u in 0..hidden {
        let cp = c_prev.get(u).copied().unwrap_or(E::ZERO);
        dp_i[u] = dp_i[u] + da[u] * cp;
        dp_f[u] = dp_f[u] + da[stride + u] * cp;
        dp_o[u] = dp_o[u] + da[3 * stride + u] * c[u];
    }
}

/// dW_ih = Σ daᵀ x, dW_hh = Σ daᵀ h_prev, db = Σ da, the peephole gradients
/// and dW_hr = Σ dhᵀ m over every (step, row) in [`processing_order`]: the
/// products a block of rows at a time ([`ordered_blocks`]), read in place in
/// that order ([`in_order`]: full lengths) or else gathered in it, each
/// continuing the previous block's FMA chains, the column sums by
/// [`ordered_column_sums`], so that the sums do not depend on how the steps
/// were grouped. With `accumulate` the chains continue from the gradients'
/// current values.
fn weight_grads<E: Float>(
    seq: &Sequence<'_, E>,
    steps: StepRows<'_, E>,
    sums: WeightSums<'_, E>,
    accumulate: bool,
    cancel: &Cancel,
) -> Result<()> {
    let Dims { input, hidden, .. } = seq.dims;
    let (hp, state) = (hidden_pad::<E>(hidden), seq.state());
    let pp = hidden_pad::<E>(state);
    let depth = 4 * hp;
    let block = ordered_block_rows(seq);
    let what = "the gathered rows of the weight gradients";
    // Allocated for the first block that is not read in place.
    let (mut da_blk, mut x_blk, mut h_blk) = (Vec::new(), Vec::new(), Vec::new());
    let (mut dh_blk, mut m_blk) = (Vec::new(), Vec::new());
    let WeightSums {
        dw_ih,
        dw_hh,
        db,
        mut dpeepholes,
        mut dw_hr,
    } = sums;
    if let Some(db) = db {
        // The bias sums, padded like da; continued from db with `accumulate`.
        let mut db_sum = alloc::zeroed::<E>(&[depth], "the column sums of the bias gradient")?;
        if accumulate {
            for gate in 0..4 {
                db_sum[gate * hp..][..hidden].copy_from_slice(&db[gate * hidden..][..hidden]);
            }
        }
        ordered_column_sums(seq, &mut db_sum, steps.da, None, true);
        for gate in 0..4 {
            db[gate * hidden..][..hidden].copy_from_slice(&db_sum[gate * hp..][..hidden]);
        }
    }
    if let (Some(dp), false) = (dpeepholes.as_deref_mut(), accumulate) {
        dp.fill(E::ZERO);
    }
    // (first da column, first output row, rows) per product: all four gates
    // at once when da's gate blocks are exactly w_ih's.
    let (all_gates, per_gate) = (
        [(0, 0, 4 * hidden)],
        [0, 1, 2, 3].map(|g| (g * hp, g * hidden, hidden)),
    );
    let gate_blocks: &[(usize, usize, usize)] = if hidden == hp { &all_gates } else { &per_gate };
    let geo = seq.geometry();
    // With peepholes and zoneout of c: dp_o takes the candidate c̃_t, rebuilt
    // per row from the gates and c_{t−1} (padded: c0's row copied in, or
    // zeros) with the forward's ISA and operation (`kernels/candidate.rs`).
    let rebuild = dpeepholes.is_some() && seq.variant.zoneout_c.is_on();
    let (mut c_first, mut c_cand) = if rebuild {
        let what = "a row's candidate cell (peephole gradients)";
        (
            alloc::zeroed::<E>(&[hp], what)?,
            alloc::zeroed::<E>(&[hp], what)?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let isa = Isa::active();
    // The layout rows of a block, in order; and where the block starts in
    // the whole order (its place within a step).
    let mut rows_blk = alloc::zeroed::<usize>(&[block], what)?;
    let mut done = 0;
    ordered_blocks(seq, accumulate, cancel, |rows, more| {
        let n = rows.len();
        for (k, &(s, b, row)) in rows.iter().enumerate() {
            rows_blk[k] = row;
            if let Some(dp) = dpeepholes.as_deref_mut() {
                let len = seq.length(b);
                // dp_i, dp_f use c_{t−1}, the state (after zoneout when there
                // is zoneout of c); dp_o uses the step's own cell, c_t, or
                // with zoneout of c the candidate c̃_t.
                let c_prev: &[E] = if s > 0 {
                    &steps.cells[geo.row(geo.pos(s - 1, len), b) * hp..][..hidden]
                } else {
                    match seq.c0 {
                        Some(c0) => &c0[b * hidden..][..hidden],
                        None => &[],
                    }
                };
                let c = if rebuild {
                    let c_prev_pad = if s > 0 {
                        &steps.cells[geo.row(geo.pos(s - 1, len), b) * hp..][..hp]
                    } else {
                        // c0's row (zeros stay zeros without c0).
                        if !c_prev.is_empty() {
                            c_first[..hidden].copy_from_slice(c_prev);
                        }
                        &c_first[..]
                    };
                    dispatch(
                        isa,
                        Candidates {
                            hidden_pad: hp,
                            gates: &steps.gates[row * depth..][..depth],
                            c_prev: c_prev_pad,
                            out: &mut c_cand,
                        },
                    )?;
                    &c_cand[..hidden]
                } else {
                    &steps.cells[row * hp..][..hidden]
                };
                peephole_terms(dp, &steps.da[row * depth..][..depth], hp, c_prev, c);
            }
        }
        let rows_in_order = &rows_blk[..n];
        let in_place = in_order(seq, rows_in_order, done);
        done += n;
        // Rows that the order does not visit at constant strides (rows of
        // different lengths) are gathered; the packed operands, and so the
        // bits, are the same either way.
        if in_place.is_none() {
            if da_blk.is_empty() {
                da_blk = alloc::zeroed::<E>(&[block, depth], what)?;
                x_blk = alloc::zeroed::<E>(&[block, input], what)?;
                h_blk = alloc::zeroed::<E>(&[block, pp], what)?;
                if dw_hr.is_some() {
                    dh_blk = alloc::zeroed::<E>(&[block, pp], what)?;
                    m_blk = alloc::zeroed::<E>(&[block, hp], what)?;
                }
            }
            for (k, &row) in rows_in_order.iter().enumerate() {
                da_blk[k * depth..][..depth].copy_from_slice(&steps.da[row * depth..][..depth]);
                x_blk[k * input..][..input].copy_from_slice(&seq.x[row * input..][..input]);
                h_blk[k * pp..][..pp].copy_from_slice(&steps.h_prev[row * pp..][..pp]);
                if dw_hr.is_some() {
                    dh_blk[k * pp..][..pp].copy_from_slice(&steps.dh[row * pp..][..pp]);
                    m_blk[k * hp..][..hp].copy_from_slice(&steps.m[row * hp..][..hp]);
                }
            }
        }
        // C (+)= A·B over the block's k = n rows, in place or gathered.
        let product = |a: Mat<'_, E>, b: Mat<'_, E>, c: &mut [E], ldc: usize| match in_place {
            Some(order) => gemm_in_order(a, b, order, c, ldc, more),
            None => gemm(a, b, c, ldc, more),
        };
        let (da, x, h_prev, dh, m) = match in_place {
            Some(_) => (steps.da, seq.x, steps.h_prev, steps.dh, steps.m),
            None => (&da_blk[..], &x_blk[..], &h_blk[..], &dh_blk[..], &m_blk[..]),
        };
        for &(col, out_row, gate_rows) in gate_blocks {
            // da's columns of these gate rows, transposed: (gate_rows, n).
            let da_t = gathered_t(&da[col.min(da.len())..], n, gate_rows, depth);
            product(
                da_t,
                Mat::rows(x, n, input, input),
                &mut dw_ih[out_row * input..][..gate_rows * input],
                input,
            );
            product(
                da_t,
                Mat::rows(h_prev, n, state, pp),
                &mut dw_hh[out_row * state..][..gate_rows * state],
                state,
            );
        }
        if let Some(dw_hr) = dw_hr.as_deref_mut() {
            // dW_hr = Σ dh_tᵀ m_t: (P, n)·(n, H).
            let dh_t = gathered_t(dh, n, state, pp);
            product(dh_t, Mat::rows(m, n, hidden, hp), dw_hr, hidden);
        }
        Ok(())
    })
}

/// Where the weight sums can read a block of rows in place: `rows`, the
/// layout rows of the (step, row) pairs `done`.. of [`processing_order`],
/// as k = 0.. of a [`KOrder`] when every row has the full length (each step
/// then visits the batch rows at one stride, and consecutive steps lie one
/// stride apart, backwards in time-major order); None otherwise (gather).
fn in_order<E: Float>(seq: &Sequence<'_, E>, rows: &[usize], done: usize) -> Option<KOrder> {
    let (steps, batch) = (seq.dims.steps, seq.dims.batch);
    if rows.is_empty() || (0..batch).any(|b| seq.length(b) != steps) {
        return None;
    }
    let geo = seq.geometry();
    let at = |s: usize, b: usize| geo.row(geo.pos(s, steps), b) as isize;
    let last = steps - 1;
    let inner = if batch > 1 {
        at(last, 1) - at(last, 0)
    } else {
        0
    };
    let outer = if steps > 1 {
        at(last - 1, 0) - at(last, 0)
    } else {
        0
    };
    let order = KOrder {
        origin: rows[0],
        runs: Runs {
            skip: done % batch,
            len: batch,
            inner,
            outer,
        },
    };
    // Checked row by row (a few operations per row of a block whose every
    // row is then read many times over).
    let visits =
        |(k, &row): (usize, &usize)| order.origin as isize + order.runs.offset(k) == row as isize;
    rows.iter().enumerate().all(visits).then_some(order)
}

/// [`in_order`] for the sums of another engine whose rows lie in x's
/// layout, dense or padded alike (the LayerNorm LSTM's, `layernorm.rs`):
/// where the block of layout rows `rows`, the (step, row) pairs `done`.. of
/// [`processing_order`], can be read in place as k = 0.. of a [`KOrder`]
/// (None: gather them).
pub(crate) fn in_place_order<E: Float>(
    seq: &Sequence<'_, E>,
    rows: &[usize],
    done: usize,
) -> Option<KOrder> {
    in_order(seq, rows, done)
}

/// Per chunk, N state buffers per row of length > 0 (a prefix of its slots):
/// for `sources[k]` = (source, width), buffer k holds, per such slot, `width`
/// padded like H (Hp, or Pp for a state of P) elements: the source's row (B ×
/// width, zeros when None) of the slot's batch row, zeros in padded units. A
/// row of length 0 needs no state: its results are its sources.
fn chunk_states<E: Float, const N: usize>(
    chunks: &[Chunk],
    sources: [(Option<&[E]>, usize); N],
) -> Result<Vec<[Vec<E>; N]>> {
    let chunk_state = |(rows, lens): &Chunk| -> Result<[Vec<E>; N]> {
        let running = Slots { rows, lens }.active(0);
        let mut st = alloc::try_collect(
            sources.iter().map(|&(_, width)| {
                alloc::zeroed::<E>(
                    &[running, hidden_pad::<E>(width)],
                    "the per-row state of a chunk",
                )
            }),
            "the per-row state of a chunk",
        )?;
        for (r, &b) in rows[..running].iter().enumerate() {
            for (&(src, width), dst) in sources.iter().zip(&mut st) {
                if let Some(src) = src {
                    let padded = hidden_pad::<E>(width);
                    dst[r * padded..][..width].copy_from_slice(&src[b * width..][..width]);
                }
            }
        }
        Ok(st.try_into().unwrap_or_else(|_| unreachable!("N buffers")))
    };
    alloc::try_collect(chunks.iter().map(chunk_state), "the chunk states")
}

/// Every batch row of `chunks`, with its chunk's state: (state, slot, row,
/// length).
fn chunk_rows<'a, S>(
    chunks: &'a [Chunk],
    states: &'a [S],
) -> impl Iterator<Item = (&'a S, usize, usize, usize)> + 'a {
    chunks.iter().zip(states).flat_map(|((rows, lens), st)| {
        let rows = rows.iter().zip(lens).enumerate();
        rows.map(move |(slot, (&b, &len))| (st, slot, b, len))
    })
}

/// Row `b` of `src` (B × H, zeros when None) into `dst` (H).
fn copy_row_or_zero<E: Float>(dst: &mut [E], src: Option<&[E]>, b: usize) {
    copy_or_zero(dst, src.map(|src| &src[b * dst.len()..][..dst.len()]));
}

/// `src` into `dst` (the same length), or zeros when None.
fn copy_or_zero<E: Float>(dst: &mut [E], src: Option<&[E]>) {
    match src {
        Some(src) => dst.copy_from_slice(src),
        None => dst.fill(E::ZERO),
    }
}

/// Zeros in every row of padded steps of `y` and the cache (the kernels never
/// visit them).
fn clear_padded_rows<E: Float>(
    seq: &Sequence<'_, E>,
    y: &mut [E],
    mut cache: Option<&mut Cache<'_, E>>,
) {
    let hidden = seq.dims.hidden;
    let hp = hidden_pad::<E>(hidden);
    let (state, pp) = (seq.state(), hidden_pad::<E>(seq.state()));
    for row in seq.padded_rows() {
        y[row * state..][..state].fill(E::ZERO);
        if let Some(c) = cache.as_mut() {
            if let Some(pre) = c.pre.as_deref_mut() {
                pre[row * 4 * hp..][..4 * hp].fill(E::ZERO);
            }
            c.gates[row * 4 * hp..][..4 * hp].fill(E::ZERO);
            c.cells[row * hp..][..hp].fill(E::ZERO);
            c.h_prev[row * pp..][..pp].fill(E::ZERO);
        }
    }
}

/// [`forward`] of a call in which no row has a step to run (T = 0, B = 0 or
/// every length 0): every row of `y` and the cache is padding, and the final
/// states are the initial ones. Allocates nothing.
fn forward_without_steps<E: Float>(
    seq: &Sequence<'_, E>,
    out: Outputs<'_, E>,
    mut cache: Option<Cache<'_, E>>,
) -> Result<()> {
    clear_padded_rows(seq, out.y, cache.as_mut());
    copy_or_zero(out.h_n, seq.h0);
    copy_or_zero(out.c_n, seq.c0);
    Ok(())
}

/// [`backward`] of a call in which no row has a step to run: the gradients of
/// the initial states are the seeds, every other gradient is zero (no step
/// used the weights or the input). Allocates nothing.
pub(crate) fn backward_without_steps<E: Float>(
    seeds: Seeds<'_, E>,
    grads: Grads<'_, E>,
) -> Result<()> {
    copy_or_zero(grads.dh0, seeds.dh_n);
    copy_or_zero(grads.dc0, seeds.dc_n);
    grads.dx.fill(E::ZERO);
    grads.dw_ih.fill(E::ZERO);
    grads.dw_hh.fill(E::ZERO);
    if let Some(db) = grads.db {
        db.fill(E::ZERO);
    }
    if let Some(dp) = grads.dpeepholes {
        dp.fill(E::ZERO);
    }
    if let Some(dw_hr) = grads.dw_hr {
        dw_hr.fill(E::ZERO);
    }
    if let Some([norm_h, norm_c]) = grads.flow {
        norm_h.fill(E::ZERO);
        norm_c.fill(E::ZERO);
    }
    Ok(())
}

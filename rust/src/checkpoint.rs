//! Recompute for long sequences: a forward that keeps the state (h, c) only
//! at every `every`-th iteration of each row, and a backward that recomputes
//! each segment of `every` iterations from its state, last segment first,
//! and runs the backward recurrence over it carrying dh and dc.
//!
//! A segment runs as a sequence of its own (time-major, forward order, at
//! most `every` steps): its rows are the whole sequence's rows of
//! iterations `start..start + every`, gathered (x, dy) and scattered back (y,
//! dx, the flow norms) through [`Geometry`]. Each step of a row is then the
//! same arithmetic on the same values as in the whole pass: the state
//! entering a segment is the state the whole pass had there, and the dh, dc
//! leaving one (its dh0, dc0) are the same chains the whole pass's loop
//! computes. The weight, bias, gain and peephole gradients sum over (step,
//! row) in backward's processing order (`lstm.rs`, `ordered_blocks`), which
//! the segments, last to first, continue. So the gradients are bitwise those
//! of the full cache, for any `every`.
//!
//! Both engine paths run this way: the fused LSTM ([`forward_checkpointed`],
//! [`backward_checkpointed`]) and the LayerNorm LSTM
//! ([`forward_checkpointed_ln`], [`backward_checkpointed_ln`]); a
//! [`SegmentPass`] is what differs, the driver is one.
//!
//! Memory: the kept states, (⌈T/every⌉ − 1) · B · (P + H) elements, and
//! during backward one segment's cache and backward's scratch: every · B ·
//! (the cache's width per row + 4·Hp) elements for the fused LSTM, every · B
//! · (14·H + P + 3 (+ 4·H with pre, + H with zoneout of c) + 9·H (+ P + H
//! with a projection)) for the LayerNorm LSTM (the segment's x, y, dy, dx
//! besides).
//!
//! Zoneout: the kept states are the states after zoneout (what the next
//! step reads), and each segment runs with its rows of the training masks
//! ([`SegmentMasks`]): the masks are keyed by real time and batch row, so
//! every step sees the same mask as in the whole pass. Given whole (a
//! [`Zone::Keep`] of (T·B) × Wp), they are gathered like x; given as
//! [`ZoneoutDraws`], each segment draws its own rows from the key in forward
//! and again in backward (the same bits), so no mask of the whole sequence
//! is ever held: every · B · (Pp + Hp) elements at a time.

use crate::alloc;
use crate::cancel::Cancel;
use crate::check;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::layout::Geometry;
use crate::kernels::pack::PanelCache;
use crate::layernorm::{self, LayerNorm, LnCache, LnCacheRef, LnGrads};
use crate::lstm::{self, backward_pass, input_grads};
use crate::masks::{self, Draw, ZoneoutDraws};
use crate::sequence::{hidden_pad, Cache, CacheRef, Dims, Grads, Outputs, Seeds, Sequence};
use crate::variant::Zone;

/// Segments of `every` iterations over `steps` steps: ⌈steps / every⌉.
pub fn checkpoint_segments(steps: usize, every: usize) -> usize {
    steps.div_ceil(every.max(1))
}

/// Elements of the kept states of a checkpointed forward: one (h, c) per
/// batch row at the start of every segment but the first (whose state is
/// h0, c0): (⌈T/every⌉ − 1) · B · (P + H).
pub fn checkpoint_len<E: Float>(seq: &Sequence<'_, E>, every: usize) -> usize {
    let Dims { steps, batch, .. } = seq.dims;
    checkpoint_segments(steps, every).saturating_sub(1) * batch * (seq.state() + seq.dims.hidden)
}

fn check_every(every: usize) -> Result<()> {
    if every == 0 {
        return Err(Error::Value(
            "checkpoint: expected an integer >= 1, got 0".into(),
        ));
    }
    Ok(())
}

fn check_states(got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Value(format!(
            "checkpoint states: expected {want} elements, got {got}"
        )));
    }
    Ok(())
}

/// One segment: iterations `start..start + every` of every row.
struct Segment {
    start: usize,
    /// Per batch row, its iterations in the segment (0 for rows that ended
    /// before it).
    lens: Vec<usize>,
    /// The longest of `lens`: the segment sequence's steps.
    steps: usize,
}

impl Segment {
    fn new<E: Float>(seq: &Sequence<'_, E>, index: usize, every: usize) -> Result<Self> {
        let start = index * every;
        let lens = alloc::try_collect(
            (0..seq.dims.batch).map(|b| Ok(seq.length(b).saturating_sub(start).min(every))),
            "the lengths of a segment",
        )?;
        let steps = lens.iter().copied().max().unwrap_or(0);
        Ok(Segment { start, lens, steps })
    }

    /// (segment row, whole-sequence row) of every (iteration, batch row) the
    /// segment runs.
    fn rows<'a>(
        &'a self,
        geo: &'a Geometry,
        whole: &'a [usize],
    ) -> impl Iterator<Item = (usize, usize)> + 'a {
        let batch = self.lens.len();
        (0..self.steps).flat_map(move |s| {
            (0..batch)
                .filter(move |&b| s < self.lens[b])
                .map(move |b| (s * batch + b, geo.row(geo.pos(self.start + s, whole[b]), b)))
        })
    }
}

/// Copies `width` elements per row from `src`'s rows to `dst`'s, for each
/// (dst row, src row).
fn copy_rows<E: Copy>(
    pairs: impl Iterator<Item = (usize, usize)>,
    dst: &mut [E],
    src: &[E],
    width: usize,
) {
    for (d, s) in pairs {
        dst[d * width..][..width].copy_from_slice(&src[s * width..][..width]);
    }
}

/// The sequence of one segment: its gathered `x` (time-major), lengths and
/// entering state, the whole sequence's weights and variant.
fn segment_sequence<'a, E: Float>(
    seq: &Sequence<'a, E>,
    seg: &'a Segment,
    x: &'a [E],
    h0: Option<&'a [E]>,
    c0: Option<&'a [E]>,
) -> Sequence<'a, E> {
    Sequence {
        dims: Dims {
            steps: seg.steps,
            ..seq.dims
        },
        batch_first: false,
        reverse: false,
        lengths: Some(&seg.lens),
        x: &x[..seg.steps * seq.dims.batch * seq.dims.input],
        h0,
        c0,
        ..*seq
    }
}

/// The panels every segment's pass runs on: the caller's kept ones, or ones
/// packed on the first segment's use and kept for the others in `local`, so
/// a pass packs the weights once, not once per segment (the packing is the
/// same, so the bits are too).
fn kept_panels<'p, E: Float>(
    seq: &Sequence<'p, E>,
    local: &'p mut Option<PanelCache<E>>,
) -> &'p PanelCache<E> {
    match seq.panels {
        Some(kept) => kept,
        None => local.insert(PanelCache::new(seq.w_ih, seq.w_hh, seq.variant.w_hr)),
    }
}

/// The training masks of zoneout (h, c) for one segment, in the segment's
/// layout (rows of steps the segment does not run are zero): either the
/// whole sequence's rows of the segment's iterations, gathered like x, or,
/// with [`ZoneoutDraws`], drawn for those rows from the key. The masks are
/// keyed by real time and batch row, so each step sees the mask the whole
/// pass gives it. Empty for a state without a mask.
struct SegmentMasks<E> {
    h: Vec<E>,
    c: Vec<E>,
    draws: ZoneoutDraws,
}

impl<E: Float> SegmentMasks<E> {
    fn new(seq: &Sequence<'_, E>, seg_rows: usize, draws: ZoneoutDraws) -> Result<Self> {
        let what = "a segment's zoneout masks (checkpoint)";
        let buffer = |zone: Zone<'_, E>, draw: Option<Draw>, width_pad: usize| match (zone, draw) {
            (Zone::Keep(_), _) | (_, Some(_)) => alloc::zeroed::<E>(&[seg_rows, width_pad], what),
            _ => Ok(Vec::new()),
        };
        Ok(SegmentMasks {
            h: buffer(seq.variant.zoneout_h, draws.h, hidden_pad::<E>(seq.state()))?,
            c: buffer(
                seq.variant.zoneout_c,
                draws.c,
                hidden_pad::<E>(seq.dims.hidden),
            )?,
            draws,
        })
    }

    /// The segment's rows of the masks, gathered or drawn.
    fn gather(&mut self, seq: &Sequence<'_, E>, seg: &Segment, geo: &Geometry, whole: &[usize]) {
        let batch = seq.dims.batch;
        let rows = seg.steps * batch;
        let (state, hidden) = (seq.state(), seq.dims.hidden);
        for (zone, draw, buf, width) in [
            (seq.variant.zoneout_h, self.draws.h, &mut self.h, state),
            (seq.variant.zoneout_c, self.draws.c, &mut self.c, hidden),
        ] {
            let width_pad = hidden_pad::<E>(width);
            if let Zone::Keep(d) = zone {
                buf[..rows * width_pad].fill(E::ZERO);
                copy_rows(seg.rows(geo, whole), buf, d, width_pad);
            } else if let Some(draw) = draw {
                let threshold = masks::threshold(draw.p);
                buf[..rows * width_pad].fill(E::ZERO);
                for s in 0..seg.steps {
                    for b in (0..batch).filter(|&b| s < seg.lens[b]) {
                        let t = geo.pos(seg.start + s, whole[b]);
                        let dst = &mut buf[(s * batch + b) * width_pad..][..width_pad];
                        masks::zoneout_row(draw.key, t, b, width, threshold, dst);
                    }
                }
            }
        }
    }

    /// `sub` (a segment of `seq`) with the segment's masks in place of the
    /// whole sequence's (or of none, where they are drawn).
    fn apply<'a>(&'a self, sub: &mut Sequence<'a, E>) {
        let rows = sub.dims.steps * sub.dims.batch;
        if !self.h.is_empty() {
            let pp = hidden_pad::<E>(sub.state());
            sub.variant.zoneout_h = Zone::Keep(&self.h[..rows * pp]);
        }
        if !self.c.is_empty() {
            let hp = hidden_pad::<E>(sub.dims.hidden);
            sub.variant.zoneout_c = Zone::Keep(&self.c[..rows * hp]);
        }
    }
}

/// `draws` checked against `seq`: a mask is drawn only for a state without
/// one, with a probability in [0, 1).
fn check_draws<E: Float>(seq: &Sequence<'_, E>, draws: &ZoneoutDraws) -> Result<()> {
    for (name, draw, zone) in [
        ("zoneout (h)", draws.h, seq.variant.zoneout_h),
        ("zoneout (c)", draws.c, seq.variant.zoneout_c),
    ] {
        if let Some(d) = draw {
            if zone.is_on() {
                return Err(Error::Value(format!(
                    "{name}: a mask to draw and a mask or rate given"
                )));
            }
            if !(0.0..1.0).contains(&d.p) {
                return Err(Error::Value(format!(
                    "{name}: expected a probability in [0, 1), got {}",
                    d.p
                )));
            }
        }
    }
    Ok(())
}

/// Whether the pass has zoneout of c: given, or drawn per segment.
fn zones_c<E: Float>(seq: &Sequence<'_, E>, draws: &ZoneoutDraws) -> bool {
    seq.variant.zoneout_c.is_on() || draws.c.is_some()
}

/// Per-batch-row lengths of the whole sequence.
fn whole_lengths<E: Float>(seq: &Sequence<'_, E>) -> Result<Vec<usize>> {
    alloc::try_collect(
        (0..seq.dims.batch).map(|b| Ok(seq.length(b))),
        "the lengths of the sequence",
    )
}

/// [`lstm::forward`] without the cache: writes `out` and keeps in `states`
/// ([`checkpoint_len`] elements) the state (h, c) of every batch row at the
/// start of each segment of `every` iterations but the first, for
/// [`backward_checkpointed`]. `every ≥ T` keeps nothing.
pub fn forward_checkpointed<E: Float>(
    seq: &Sequence<'_, E>,
    out: Outputs<'_, E>,
    every: usize,
    states: &mut [E],
    draws: ZoneoutDraws,
    cancel: &Cancel,
) -> Result<()> {
    check_every(every)?;
    check::forward_args(seq, &out, None)?;
    check_states(states.len(), checkpoint_len(seq, every))?;
    check_draws(seq, &draws)?;
    if !seq.runs() {
        return lstm::forward(seq, out, None, cancel);
    }
    forward_segments(seq, out, every, states, draws, |sub, sub_out| {
        lstm::forward(sub, sub_out, None, cancel)
    })
}

/// [`forward_checkpointed`] of the LayerNorm LSTM ([`layernorm::forward`]),
/// for [`backward_checkpointed_ln`].
pub fn forward_checkpointed_ln<E: Float>(
    seq: &Sequence<'_, E>,
    ln: &LayerNorm<'_, E>,
    out: Outputs<'_, E>,
    every: usize,
    states: &mut [E],
    draws: ZoneoutDraws,
    cancel: &Cancel,
) -> Result<()> {
    check_every(every)?;
    check::forward_args(seq, &out, None)?;
    check_states(states.len(), checkpoint_len(seq, every))?;
    check_draws(seq, &draws)?;
    if !seq.runs() {
        return layernorm::forward(seq, ln, out, None, cancel);
    }
    forward_segments(seq, out, every, states, draws, |sub, sub_out| {
        layernorm::forward(sub, ln, sub_out, None, cancel)
    })
}

/// The segments of a checked forward in which some row runs: each gathered,
/// run by `run` (a forward without a cache) from the state the previous one
/// left, scattered back, its entering state kept.
fn forward_segments<E: Float>(
    seq: &Sequence<'_, E>,
    out: Outputs<'_, E>,
    every: usize,
    states: &mut [E],
    draws: ZoneoutDraws,
    mut run: impl FnMut(&Sequence<'_, E>, Outputs<'_, E>) -> Result<()>,
) -> Result<()> {
    let Dims {
        batch,
        input,
        hidden,
        ..
    } = seq.dims;
    let state = seq.state();
    let geo = seq.geometry();
    let whole = whole_lengths(seq)?;
    let seg_rows = every.min(seq.dims.steps) * batch;
    let what = "a segment's buffers (checkpoint)";
    let mut x = alloc::zeroed::<E>(&[seg_rows, input], what)?;
    let mut y = alloc::zeroed::<E>(&[seg_rows, state], what)?;
    // The state entering the segment (h0, c0 first), and the one leaving it.
    let mut h = alloc::zeroed::<E>(&[batch, state], what)?;
    let mut c = alloc::zeroed::<E>(&[batch, hidden], what)?;
    let mut h_n = alloc::zeroed::<E>(&[batch, state], what)?;
    let mut c_n = alloc::zeroed::<E>(&[batch, hidden], what)?;
    let mut masks = SegmentMasks::new(seq, seg_rows, draws)?;
    let mut local = None;
    let panels = kept_panels(seq, &mut local);
    if let Some(h0) = seq.h0 {
        h.copy_from_slice(h0);
    }
    if let Some(c0) = seq.c0 {
        c.copy_from_slice(c0);
    }
    for row in seq.padded_rows() {
        out.y[row * state..][..state].fill(E::ZERO);
    }
    let width = batch * (state + hidden);
    for index in 0..checkpoint_segments(seq.dims.steps, every) {
        let seg = Segment::new(seq, index, every)?;
        if seg.steps == 0 {
            break;
        }
        if index > 0 {
            let kept = &mut states[(index - 1) * width..][..width];
            kept[..batch * state].copy_from_slice(&h);
            kept[batch * state..].copy_from_slice(&c);
        }
        copy_rows(seg.rows(&geo, &whole), &mut x, seq.x, input);
        masks.gather(seq, &seg, &geo, &whole);
        // The first segment starts from the caller's h0, c0 (None stays None).
        let (h0, c0) = if index == 0 {
            (seq.h0, seq.c0)
        } else {
            (Some(&h[..]), Some(&c[..]))
        };
        let mut sub = segment_sequence(seq, &seg, &x, h0, c0);
        sub.panels = Some(panels);
        masks.apply(&mut sub);
        let sub_out = Outputs {
            y: &mut y[..seg.steps * batch * state],
            h_n: &mut h_n,
            c_n: &mut c_n,
        };
        run(&sub, sub_out)?;
        for (d, s) in seg.rows(&geo, &whole) {
            out.y[s * state..][..state].copy_from_slice(&y[d * state..][..state]);
        }
        for b in (0..batch).filter(|&b| seg.lens[b] > 0) {
            h[b * state..][..state].copy_from_slice(&h_n[b * state..][..state]);
            c[b * hidden..][..hidden].copy_from_slice(&c_n[b * hidden..][..hidden]);
        }
    }
    out.h_n.copy_from_slice(&h);
    out.c_n.copy_from_slice(&c);
    Ok(())
}

/// The gradients of one segment that are not sums over its steps, each
/// shaped for the segment: dx, dh0, dc0 and the flow norms.
struct StepGrads<'a, E> {
    dx: &'a mut [E],
    dh0: &'a mut [E],
    dc0: &'a mut [E],
    flow: Option<[&'a mut [E]; 2]>,
}

/// One engine path's segment pass for [`backward_segments`]: it owns one
/// segment's cache and scratch and the whole pass's sums over (step, row).
trait SegmentPass<E: Float> {
    /// The forward of segment `sub` (`rows` rows) with its cache, writing
    /// `out`, then its backward from `seeds`: the weight sums continue with
    /// `accumulate`, `grads` are written afresh.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        sub: &Sequence<'_, E>,
        rows: usize,
        out: Outputs<'_, E>,
        seeds: Seeds<'_, E>,
        grads: StepGrads<'_, E>,
        accumulate: bool,
        cancel: &Cancel,
    ) -> Result<()>;
}

/// The fused LSTM's segment pass: its [`Cache`] of one segment, the gate
/// gradients da, and the weight sums of [`Grads`].
struct FusedPass<'g, E> {
    gates: Vec<E>,
    cells: Vec<E>,
    h_prev: Vec<E>,
    pre: Vec<E>,
    da: Vec<E>,
    dw_ih: &'g mut [E],
    dw_hh: &'g mut [E],
    db: Option<&'g mut [E]>,
    dpeepholes: Option<&'g mut [E]>,
    dw_hr: Option<&'g mut [E]>,
}

impl<E: Float> SegmentPass<E> for FusedPass<'_, E> {
    fn run(
        &mut self,
        sub: &Sequence<'_, E>,
        rows: usize,
        out: Outputs<'_, E>,
        seeds: Seeds<'_, E>,
        grads: StepGrads<'_, E>,
        accumulate: bool,
        cancel: &Cancel,
    ) -> Result<()> {
        let hp = hidden_pad::<E>(sub.dims.hidden);
        let pp = hidden_pad::<E>(sub.state());
        let cache = Cache {
            gates: &mut self.gates[..rows * 4 * hp],
            cells: &mut self.cells[..rows * hp],
            h_prev: &mut self.h_prev[..rows * pp],
            pre: (!self.pre.is_empty()).then(|| &mut self.pre[..rows * 4 * hp]),
        };
        lstm::forward(sub, out, Some(cache), cancel)?;
        let cache = CacheRef {
            gates: &self.gates[..rows * 4 * hp],
            cells: &self.cells[..rows * hp],
            h_prev: &self.h_prev[..rows * pp],
            pre: (!self.pre.is_empty()).then(|| &self.pre[..rows * 4 * hp]),
        };
        let grads = Grads {
            dx: grads.dx,
            dh0: grads.dh0,
            dc0: grads.dc0,
            dw_ih: &mut *self.dw_ih,
            dw_hh: &mut *self.dw_hh,
            db: self.db.as_deref_mut(),
            scratch: Some(&mut self.da[..rows * 4 * hp]),
            dpeepholes: self.dpeepholes.as_deref_mut(),
            dw_hr: self.dw_hr.as_deref_mut(),
            flow: grads.flow,
        };
        backward_pass(sub, cache, seeds, grads, rows, accumulate, cancel)
    }
}

/// The LayerNorm LSTM's segment pass: its [`LnCache`] of one segment, the
/// scratch dz and ds_h, and the sums of [`LnGrads`].
struct LnPass<'g, 'l, E> {
    ln: LayerNorm<'l, E>,
    /// cells, h_prev, sx_hat, sh_hat, moments, c_state as in [`LnCache`]
    /// (empty where the variant keeps none).
    cache: [Vec<E>; 6],
    dz: Vec<E>,
    dsh: Vec<E>,
    dw_ih: &'g mut [E],
    dw_hh: &'g mut [E],
    db: Option<&'g mut [E]>,
    dpeepholes: Option<&'g mut [E]>,
    dw_hr: Option<&'g mut [E]>,
    dw_ln_ih: Option<&'g mut [E]>,
    dw_ln_hh: Option<&'g mut [E]>,
    dw_ln_c: Option<&'g mut [E]>,
    db_ln_c: Option<&'g mut [E]>,
}

/// Elements per (step, row) of each of [`LnPass`]'s cache buffers (0: not
/// kept by this variant); the scratch dz and ds_h take 4·H each.
fn ln_widths<E: Float>(seq: &Sequence<'_, E>, zones_c: bool) -> [usize; 6] {
    let (h, p) = (seq.dims.hidden, seq.state());
    let c_state = if zones_c { h } else { 0 };
    [h, p, 4 * h, 4 * h, layernorm::MOMENTS, c_state]
}

impl<E: Float> SegmentPass<E> for LnPass<'_, '_, E> {
    fn run(
        &mut self,
        sub: &Sequence<'_, E>,
        rows: usize,
        out: Outputs<'_, E>,
        seeds: Seeds<'_, E>,
        grads: StepGrads<'_, E>,
        accumulate: bool,
        cancel: &Cancel,
    ) -> Result<()> {
        let widths = ln_widths(sub, sub.variant.zoneout_c.is_on());
        {
            let mut parts = self.cache.iter_mut().zip(widths);
            let mut next = || {
                let (b, w) = parts.next().expect("six buffers");
                &mut b[..rows * w]
            };
            let (cells, h_prev, sx_hat) = (next(), next(), next());
            let (sh_hat, moments, c_state) = (next(), next(), next());
            let cache = LnCache {
                cells,
                h_prev,
                sx_hat,
                sh_hat,
                moments,
                c_state: (!c_state.is_empty()).then_some(c_state),
            };
            layernorm::forward(sub, &self.ln, out, Some(cache), cancel)?;
        }
        let cut = |k: usize| &self.cache[k][..rows * widths[k]];
        let cache = LnCacheRef {
            cells: cut(0),
            h_prev: cut(1),
            sx_hat: cut(2),
            sh_hat: cut(3),
            moments: cut(4),
            c_state: (widths[5] > 0).then(|| cut(5)),
        };
        let g4 = 4 * sub.dims.hidden;
        let grads = LnGrads {
            dx: grads.dx,
            dh0: grads.dh0,
            dc0: grads.dc0,
            dw_ih: &mut *self.dw_ih,
            dw_hh: &mut *self.dw_hh,
            db: self.db.as_deref_mut(),
            dpeepholes: self.dpeepholes.as_deref_mut(),
            dw_hr: self.dw_hr.as_deref_mut(),
            flow: grads.flow,
            scratch: Some([&mut self.dz[..rows * g4], &mut self.dsh[..rows * g4]]),
            dw_ln_ih: self.dw_ln_ih.as_deref_mut(),
            dw_ln_hh: self.dw_ln_hh.as_deref_mut(),
            dw_ln_c: self.dw_ln_c.as_deref_mut(),
            db_ln_c: self.db_ln_c.as_deref_mut(),
        };
        layernorm::backward_pass(sub, &self.ln, cache, seeds, grads, rows, accumulate, cancel)
    }
}

/// [`lstm::backward`] from the `states` that [`forward_checkpointed`] kept
/// for the same `seq` and `every`: per segment, last to first, the forward
/// recomputed with a segment cache, then the backward recurrence over it
/// from the dh, dc the later segment left, its weight gradients continuing
/// the sums. The gradients are bitwise those of the full cache. `grads.scratch`
/// is not used (the segment's da is allocated here).
#[allow(clippy::too_many_arguments)]
pub fn backward_checkpointed<E: Float>(
    seq: &Sequence<'_, E>,
    every: usize,
    states: &[E],
    draws: ZoneoutDraws,
    seeds: Seeds<'_, E>,
    grads: Grads<'_, E>,
    cancel: &Cancel,
) -> Result<()> {
    check_every(every)?;
    check::backward_seeds_grads(seq, &seeds, &grads)?;
    check_states(states.len(), checkpoint_len(seq, every))?;
    check_draws(seq, &draws)?;
    if !seq.runs() {
        // Nothing ran: the gradients are the seeds' and zeros.
        return lstm::backward_without_steps(seeds, grads);
    }
    let hp = hidden_pad::<E>(seq.dims.hidden);
    let pp = hidden_pad::<E>(seq.state());
    let seg_rows = every.min(seq.dims.steps) * seq.dims.batch;
    let what = "a segment's cache (checkpoint)";
    let width = |on: bool, w: usize| if on { w } else { 0 };
    let mut pass = FusedPass {
        gates: alloc::zeroed::<E>(&[seg_rows, 4 * hp], what)?,
        cells: alloc::zeroed::<E>(&[seg_rows, hp], what)?,
        h_prev: alloc::zeroed::<E>(&[seg_rows, pp], what)?,
        pre: alloc::zeroed::<E>(&[seg_rows, width(seq.variant.caches_pre(), 4 * hp)], what)?,
        da: alloc::zeroed::<E>(&[seg_rows, 4 * hp], what)?,
        dw_ih: grads.dw_ih,
        dw_hh: grads.dw_hh,
        db: grads.db,
        dpeepholes: grads.dpeepholes,
        dw_hr: grads.dw_hr,
    };
    // Rows of padded steps: dx as the full pass's product gives a zero da row.
    let zero_da = alloc::zeroed::<E>(&[4 * hp], what)?;
    let mut zero_dx = alloc::zeroed::<E>(&[seq.dims.input], what)?;
    input_grads(seq, &zero_da, 1, &mut zero_dx)?;
    let step = StepGrads {
        dx: grads.dx,
        dh0: grads.dh0,
        dc0: grads.dc0,
        flow: grads.flow,
    };
    backward_segments(
        seq, every, states, draws, seeds, step, &zero_dx, &mut pass, cancel,
    )
}

/// [`backward_checkpointed`] of the LayerNorm LSTM, from the `states` that
/// [`forward_checkpointed_ln`] kept: the gradients bitwise those of
/// [`layernorm::backward`] with the full cache. `grads.scratch` is not used.
#[allow(clippy::too_many_arguments)]
pub fn backward_checkpointed_ln<E: Float>(
    seq: &Sequence<'_, E>,
    ln: &LayerNorm<'_, E>,
    every: usize,
    states: &[E],
    draws: ZoneoutDraws,
    seeds: Seeds<'_, E>,
    grads: LnGrads<'_, E>,
    cancel: &Cancel,
) -> Result<()> {
    check_every(every)?;
    layernorm::check_grads(seq, ln, &seeds, &grads)?;
    check_states(states.len(), checkpoint_len(seq, every))?;
    check_draws(seq, &draws)?;
    if !seq.runs() {
        // Nothing ran: the gradients are the seeds' and zeros.
        return layernorm::backward_without_steps(seeds, grads);
    }
    let seg_rows = every.min(seq.dims.steps) * seq.dims.batch;
    let what = "a segment's cache (checkpoint)";
    let g4 = 4 * seq.dims.hidden;
    let widths = ln_widths(seq, zones_c(seq, &draws));
    let mut cache: [Vec<E>; 6] = Default::default();
    for (buf, w) in cache.iter_mut().zip(widths) {
        *buf = alloc::zeroed::<E>(&[seg_rows, w], what)?;
    }
    let mut pass = LnPass {
        ln: *ln,
        cache,
        dz: alloc::zeroed::<E>(&[seg_rows, g4], what)?,
        dsh: alloc::zeroed::<E>(&[seg_rows, g4], what)?,
        dw_ih: grads.dw_ih,
        dw_hh: grads.dw_hh,
        db: grads.db,
        dpeepholes: grads.dpeepholes,
        dw_hr: grads.dw_hr,
        dw_ln_ih: grads.dw_ln_ih,
        dw_ln_hh: grads.dw_ln_hh,
        dw_ln_c: grads.dw_ln_c,
        db_ln_c: grads.db_ln_c,
    };
    // A padded step's dx is zero (`layernorm::backward`).
    let zero_dx = alloc::zeroed::<E>(&[seq.dims.input], what)?;
    let step = StepGrads {
        dx: grads.dx,
        dh0: grads.dh0,
        dc0: grads.dc0,
        flow: grads.flow,
    };
    backward_segments(
        seq, every, states, draws, seeds, step, &zero_dx, &mut pass, cancel,
    )
}

/// The segments of a checked backward in which some row runs, last to
/// first: each gathered (x, dy, masks), run by `pass` from its kept state
/// with the dh, dc the later segment left, scattered back (dx, the flow
/// norms); `zero_dx` the dx of every padded step.
#[allow(clippy::too_many_arguments)]
fn backward_segments<E: Float>(
    seq: &Sequence<'_, E>,
    every: usize,
    states: &[E],
    draws: ZoneoutDraws,
    seeds: Seeds<'_, E>,
    mut grads: StepGrads<'_, E>,
    zero_dx: &[E],
    pass: &mut impl SegmentPass<E>,
    cancel: &Cancel,
) -> Result<()> {
    let Dims {
        batch,
        input,
        hidden,
        ..
    } = seq.dims;
    let state = seq.state();
    let geo = seq.geometry();
    let whole = whole_lengths(seq)?;
    let seg_rows = every.min(seq.dims.steps) * batch;
    let what = "a segment's buffers (checkpoint)";
    let mut x = alloc::zeroed::<E>(&[seg_rows, input], what)?;
    let mut y = alloc::zeroed::<E>(&[seg_rows, state], what)?;
    let mut dy = match seeds.dy {
        Some(_) => alloc::zeroed::<E>(&[seg_rows, state], what)?,
        None => Vec::new(),
    };
    let mut dx = alloc::zeroed::<E>(&[seg_rows, input], what)?;
    let mut masks = SegmentMasks::new(seq, seg_rows, draws)?;
    let mut local = None;
    let panels = kept_panels(seq, &mut local);
    let (mut flow_h, mut flow_c) = match grads.flow {
        Some(_) => (
            alloc::zeroed::<E>(&[seg_rows], what)?,
            alloc::zeroed::<E>(&[seg_rows], what)?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    let mut h_n = alloc::zeroed::<E>(&[batch, state], what)?;
    let mut c_n = alloc::zeroed::<E>(&[batch, hidden], what)?;
    // dh, dc entering the segment from the later one (the seeds first), and
    // leaving it.
    let mut dh = alloc::zeroed::<E>(&[batch, state], what)?;
    let mut dc = alloc::zeroed::<E>(&[batch, hidden], what)?;
    let mut dh_out = alloc::zeroed::<E>(&[batch, state], what)?;
    let mut dc_out = alloc::zeroed::<E>(&[batch, hidden], what)?;
    if let Some(s) = seeds.dh_n {
        dh.copy_from_slice(s);
    }
    if let Some(s) = seeds.dc_n {
        dc.copy_from_slice(s);
    }
    if let Some([norm_h, norm_c]) = grads.flow.as_mut() {
        norm_h.fill(E::ZERO);
        norm_c.fill(E::ZERO);
    }
    let width = batch * (state + hidden);
    let segments = checkpoint_segments(seq.dims.steps, every);
    let mut first = true;
    for index in (0..segments).rev() {
        let seg = Segment::new(seq, index, every)?;
        if seg.steps == 0 {
            continue;
        }
        let (h0, c0) = if index == 0 {
            (seq.h0, seq.c0)
        } else {
            let kept = &states[(index - 1) * width..][..width];
            let (h, c) = kept.split_at(batch * state);
            (Some(h), Some(c))
        };
        copy_rows(seg.rows(&geo, &whole), &mut x, seq.x, input);
        masks.gather(seq, &seg, &geo, &whole);
        let mut sub = segment_sequence(seq, &seg, &x, h0, c0);
        sub.panels = Some(panels);
        masks.apply(&mut sub);
        let rows = seg.steps * batch;
        let sub_out = Outputs {
            y: &mut y[..rows * state],
            h_n: &mut h_n,
            c_n: &mut c_n,
        };
        if let Some(whole_dy) = seeds.dy {
            dy[..rows * state].fill(E::ZERO);
            copy_rows(seg.rows(&geo, &whole), &mut dy, whole_dy, state);
        }
        let sub_seeds = Seeds {
            dy: seeds.dy.map(|_| &dy[..rows * state]),
            dh_n: Some(&dh),
            dc_n: Some(&dc),
        };
        let sub_grads = StepGrads {
            dx: &mut dx[..rows * input],
            dh0: &mut dh_out,
            dc0: &mut dc_out,
            flow: grads
                .flow
                .as_ref()
                .map(|_| [&mut flow_h[..rows], &mut flow_c[..rows]]),
        };
        pass.run(&sub, rows, sub_out, sub_seeds, sub_grads, !first, cancel)?;
        first = false;
        for (d, s) in seg.rows(&geo, &whole) {
            grads.dx[s * input..][..input].copy_from_slice(&dx[d * input..][..input]);
        }
        if let Some([norm_h, norm_c]) = grads.flow.as_mut() {
            // The norms are (T, B) by real time.
            for s in 0..seg.steps {
                for b in (0..batch).filter(|&b| s < seg.lens[b]) {
                    let t = geo.pos(seg.start + s, whole[b]);
                    norm_h[t * batch + b] = flow_h[s * batch + b];
                    norm_c[t * batch + b] = flow_c[s * batch + b];
                }
            }
        }
        std::mem::swap(&mut dh, &mut dh_out);
        std::mem::swap(&mut dc, &mut dc_out);
    }
    grads.dh0.copy_from_slice(&dh);
    grads.dc0.copy_from_slice(&dc);
    for row in seq.padded_rows() {
        grads.dx[row * input..][..input].copy_from_slice(zero_dx);
    }
    Ok(())
}

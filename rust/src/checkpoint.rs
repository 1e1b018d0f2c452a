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
//! leaving one (its dh0, dc0, `mrx4v`) are the same FMA chains the whole
//! pass's loop computes. The weight, bias and peephole gradients sum over
//! (step, row) in backward's order (`lstm.rs`, `weight_grads`), which the
//! segments, last to first, continue. So the gradients are bitwise those of
//! the full cache, for any `every`.
//!
//! Memory: the kept states, (⌈T/every⌉ − 1) · B · (P + H) elements, and
//! during backward one segment's cache and gate gradients, every · B ·
//! (the cache's width per row + 4·Hp) elements (the segment's x, dy, dx
//! besides).
//!
//! Zoneout: the kept states are the states after zoneout (what the next
//! step reads), and each segment runs with its rows of the caller's training
//! masks, gathered like x ([`SegmentMasks`]): the masks are keyed by real
//! time and batch row, so every step sees the same mask as in the whole
//! pass. The masks themselves stay the caller's, (T·B) × (Pp + Hp).

use crate::alloc;
use crate::cancel::Cancel;
use crate::check;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::layout::Geometry;
use crate::lstm::{self, backward_pass, input_grads};
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

/// The training masks of zoneout (h, c) for one segment: the whole
/// sequence's rows of the segment's iterations, gathered into the segment's
/// layout like x (the masks are keyed by real time and batch row, so each
/// step sees the mask the whole pass gives it); rows of steps the segment
/// does not run are zero. Empty for a state without a mask.
struct SegmentMasks<E> {
    h: Vec<E>,
    c: Vec<E>,
}

impl<E: Float> SegmentMasks<E> {
    fn new(seq: &Sequence<'_, E>, seg_rows: usize) -> Result<Self> {
        let what = "a segment's zoneout masks (checkpoint)";
        let buffer = |zone: Zone<'_, E>, width_pad: usize| match zone {
            Zone::Keep(_) => alloc::zeroed::<E>(&[seg_rows, width_pad], what),
            _ => Ok(Vec::new()),
        };
        Ok(SegmentMasks {
            h: buffer(seq.variant.zoneout_h, hidden_pad::<E>(seq.state()))?,
            c: buffer(seq.variant.zoneout_c, hidden_pad::<E>(seq.dims.hidden))?,
        })
    }

    /// Gathers the segment's rows of the masks.
    fn gather(&mut self, seq: &Sequence<'_, E>, seg: &Segment, geo: &Geometry, whole: &[usize]) {
        let rows = seg.steps * seq.dims.batch;
        let pp = hidden_pad::<E>(seq.state());
        let hp = hidden_pad::<E>(seq.dims.hidden);
        for (zone, buf, width_pad) in [
            (seq.variant.zoneout_h, &mut self.h, pp),
            (seq.variant.zoneout_c, &mut self.c, hp),
        ] {
            if let Zone::Keep(d) = zone {
                buf[..rows * width_pad].fill(E::ZERO);
                copy_rows(seg.rows(geo, whole), buf, d, width_pad);
            }
        }
    }

    /// `sub` (a segment of `seq`) with the segment's masks in place of the
    /// whole sequence's.
    fn apply<'a>(&'a self, sub: &mut Sequence<'a, E>) {
        let rows = sub.dims.steps * sub.dims.batch;
        if let Zone::Keep(_) = sub.variant.zoneout_h {
            let pp = hidden_pad::<E>(sub.state());
            sub.variant.zoneout_h = Zone::Keep(&self.h[..rows * pp]);
        }
        if let Zone::Keep(_) = sub.variant.zoneout_c {
            let hp = hidden_pad::<E>(sub.dims.hidden);
            sub.variant.zoneout_c = Zone::Keep(&self.c[..rows * hp]);
        }
    }
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
    cancel: &Cancel,
) -> Result<()> {
    check_every(every)?;
    check::forward_args(seq, &out, None)?;
    check_states(states.len(), checkpoint_len(seq, every))?;
    if !seq.runs() {
        return lstm::forward(seq, out, None, cancel);
    }
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
    let mut masks = SegmentMasks::new(seq, seg_rows)?;
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
        masks.apply(&mut sub);
        let sub_out = Outputs {
            y: &mut y[..seg.steps * batch * state],
            h_n: &mut h_n,
            c_n: &mut c_n,
        };
        lstm::forward(&sub, sub_out, None, cancel)?;
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

/// [`lstm::backward`] from the `states` that [`forward_checkpointed`] kept
/// for the same `seq` and `every`: per segment, last to first, the forward
/// recomputed with a segment cache, then the backward recurrence over it
/// from the dh, dc the later segment left, its weight gradients continuing
/// the sums. The gradients are bitwise those of the full cache. `grads.scratch`
/// is not used (the segment's da is allocated here).
pub fn backward_checkpointed<E: Float>(
    seq: &Sequence<'_, E>,
    every: usize,
    states: &[E],
    seeds: Seeds<'_, E>,
    mut grads: Grads<'_, E>,
    cancel: &Cancel,
) -> Result<()> {
    check_every(every)?;
    check::backward_seeds_grads(seq, &seeds, &grads)?;
    check_states(states.len(), checkpoint_len(seq, every))?;
    let Dims {
        batch,
        input,
        hidden,
        ..
    } = seq.dims;
    let state = seq.state();
    if !seq.runs() {
        // Nothing ran: the gradients are the seeds' and zeros.
        return lstm::backward_without_steps(seeds, grads);
    }
    let hp = hidden_pad::<E>(hidden);
    let pp = hidden_pad::<E>(state);
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
    let mut gates = alloc::zeroed::<E>(&[seg_rows, 4 * hp], what)?;
    let mut cells = alloc::zeroed::<E>(&[seg_rows, hp], what)?;
    let mut h_prev = alloc::zeroed::<E>(&[seg_rows, pp], what)?;
    // With zoneout of c: the states after zoneout (`cells` are candidates).
    let mut c_state = match seq.variant.zoneout_c {
        Zone::Off => Vec::new(),
        _ => alloc::zeroed::<E>(&[seg_rows, hp], what)?,
    };
    let mut masks = SegmentMasks::new(seq, seg_rows)?;
    let mut pre = match seq.variant.caches_pre() {
        true => alloc::zeroed::<E>(&[seg_rows, 4 * hp], what)?,
        false => Vec::new(),
    };
    let mut da = alloc::zeroed::<E>(&[seg_rows, 4 * hp], what)?;
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
        masks.apply(&mut sub);
        let rows = seg.steps * batch;
        let cache = Cache {
            gates: &mut gates[..rows * 4 * hp],
            cells: &mut cells[..rows * hp],
            h_prev: &mut h_prev[..rows * pp],
            pre: (!pre.is_empty()).then(|| &mut pre[..rows * 4 * hp]),
            c_state: (!c_state.is_empty()).then(|| &mut c_state[..rows * hp]),
        };
        let sub_out = Outputs {
            y: &mut y[..rows * state],
            h_n: &mut h_n,
            c_n: &mut c_n,
        };
        lstm::forward(&sub, sub_out, Some(cache), cancel)?;
        if let Some(whole_dy) = seeds.dy {
            dy[..rows * state].fill(E::ZERO);
            copy_rows(seg.rows(&geo, &whole), &mut dy, whole_dy, state);
        }
        let sub_seeds = Seeds {
            dy: seeds.dy.map(|_| &dy[..rows * state]),
            dh_n: Some(&dh),
            dc_n: Some(&dc),
        };
        let sub_grads = Grads {
            dx: &mut dx[..rows * input],
            dh0: &mut dh_out,
            dc0: &mut dc_out,
            dw_ih: &mut *grads.dw_ih,
            dw_hh: &mut *grads.dw_hh,
            db: grads.db.as_deref_mut(),
            scratch: Some(&mut da[..rows * 4 * hp]),
            dpeepholes: grads.dpeepholes.as_deref_mut(),
            dw_hr: grads.dw_hr.as_deref_mut(),
            flow: grads
                .flow
                .as_ref()
                .map(|_| [&mut flow_h[..rows], &mut flow_c[..rows]]),
        };
        let cache = CacheRef {
            gates: &gates[..rows * 4 * hp],
            cells: &cells[..rows * hp],
            h_prev: &h_prev[..rows * pp],
            pre: (!pre.is_empty()).then(|| &pre[..rows * 4 * hp]),
            c_state: (!c_state.is_empty()).then(|| &c_state[..rows * hp]),
        };
        backward_pass(&sub, cache, sub_seeds, sub_grads, rows, !first, cancel)?;
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
    // Rows of padded steps: dx as the full pass's product gives a zero da row.
    let mut padded = seq.padded_rows().peekable();
    if padded.peek().is_some() {
        let zero_da = alloc::zeroed::<E>(&[4 * hp], what)?;
        let mut zero_dx = alloc::zeroed::<E>(&[input], what)?;
        input_grads(seq, &zero_da, 1, &mut zero_dx)?;
        for row in padded {
            grads.dx[row * input..][..input].copy_from_slice(&zero_dx);
        }
    }
    Ok(())
}

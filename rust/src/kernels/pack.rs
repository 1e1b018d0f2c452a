//! Weights packed into the layouts the kernels stream: once per call, or once
//! for many calls through a [`PanelCache`] (prepared weights).
//!
//! Hidden units are padded from H to `Hp` (a multiple of `Float::PAD`) with
//! zero weights, so every tile is whole. Padded units never reach real ones:
//! forward products run over the H real units only, and backward zeroes the
//! padded units' gate gradients (they can be NaN, 0·inf, when h holds an
//! infinity) before the products that sum over all Hp.
//!
//! Each layout is allocated here, fallibly ([`crate::alloc`]).

use std::sync::{Arc, Mutex, PoisonError};

use crate::alloc;
use crate::error::{Error, Result};
use rayon::prelude::*;

use super::bf16_dot;
use crate::float::Float;
use crate::parallel::pool;
use crate::simd::bf16::{round_f32, Bf16};
use crate::tuning::{PACK_DEPTH, SAME_BYTES_BLOCK, SAME_BYTES_PARALLEL_MIN};

/// Panels of a `w_hh` packed by the pass that needed them.
pub type Panels<E> = Arc<Vec<E>>;

/// The panels of one layer's weights kept across passes: each layout is packed
/// by the first pass that needs it and reused by the next ones, so passes over
/// the same weights (a stream of one-step calls, a training loop between
/// updates) pack nothing.
///
/// It belongs to one `w_ih`, one `w_hh` and, for a layer with a projection,
/// one `w_hr`, which must not change while the cache lives (the owner, e.g.
/// the Python binding's prepared weights, keeps private copies); each use
/// checks that it is given the same slices. Panels
/// are kept for one lane count each: an ISA switched between passes
/// (`Isa::set_active`) packs anew.
///
/// A cache made by [`PanelCache::new_bf16`] holds bf16 inference's panels:
/// every weight rounded to bfloat16 once, here; `w_hh`'s panels, which the
/// recurrence streams every step, stored as bfloat16 ([`PanelCache::forward_bf16`]),
/// the others as the rounded values in `E`; for the BF16 dot products, `w_ih`'s
/// and `w_hh`'s as bfloat16 pairs ([`PanelCache::forward_bf16_pairs`]).
pub struct PanelCache<E> {
    /// Address and length of the `w_ih`, the `w_hh` and the `w_hr` (0, 0
    /// without one) the panels come from.
    sources: [(usize, usize); 3],
    /// Whether the weights are rounded to bfloat16 (inference only).
    bf16: bool,
    forward_bf16: Mutex<Option<(usize, Panels<Bf16>)>>,
    /// `w_ih`'s and `w_hh`'s as pairs of depths, for the BF16 dot products.
    input_bf16_pairs: Mutex<Option<(usize, Panels<Bf16>)>>,
    forward_bf16_pairs: Mutex<Option<(usize, Panels<Bf16>)>>,
    input: Mutex<Option<(usize, Panels<E>)>>,
    forward: Mutex<Option<(usize, Panels<E>)>>,
    backward: Mutex<Option<(usize, Panels<E>)>>,
    projection: Mutex<Option<(usize, Panels<E>)>>,
    projection_backward: Mutex<Option<(usize, Panels<E>)>>,
}

fn source<E>(w: &[E]) -> (usize, usize) {
    (w.as_ptr() as usize, w.len())
}

impl<E: Float> PanelCache<E> {
    /// An empty cache for `w_ih`, `w_hh` and the projection `w_hr` (None for
    /// a layer without one), which must stay unchanged while it lives.
    pub fn new(w_ih: &[E], w_hh: &[E], w_hr: Option<&[E]>) -> Self {
        PanelCache {
            sources: [source(w_ih), source(w_hh), w_hr.map_or((0, 0), source)],
            bf16: false,
            forward_bf16: Mutex::new(None),
            input_bf16_pairs: Mutex::new(None),
            forward_bf16_pairs: Mutex::new(None),
            input: Mutex::new(None),
            forward: Mutex::new(None),
            backward: Mutex::new(None),
            projection: Mutex::new(None),
            projection_backward: Mutex::new(None),
        }
    }

    /// An empty cache of bf16 inference's panels (see the type) for `w_ih`,
    /// `w_hh` and `w_hr` (f32 only: a float64 computation with bfloat16
    /// weights is refused), which must stay unchanged while it lives.
    pub fn new_bf16(w_ih: &[E], w_hh: &[E], w_hr: Option<&[E]>) -> Result<Self> {
        if size_of::<E>() != size_of::<f32>() {
            return Err(Error::Value(
                "bfloat16 weights compute in float32: the weights and inputs must be float32"
                    .into(),
            ));
        }
        Ok(PanelCache {
            bf16: true,
            ..Self::new(w_ih, w_hh, w_hr)
        })
    }

    /// Whether the weights are rounded to bfloat16 ([`PanelCache::new_bf16`]).
    pub fn bf16(&self) -> bool {
        self.bf16
    }

    /// bf16 panels: `w_hh`'s [`forward_panels`] rounded to bfloat16, each
    /// pair of vectors of a panel row (2v, 2v + 1) interleaved value by value
    /// for [`Simd::load_bf16_pair`](crate::simd::Simd::load_bf16_pair), packed
    /// on first use.
    pub fn forward_bf16(
        &self,
        w_hh: &[E],
        hidden: usize,
        hp: usize,
        state: usize,
        lanes: usize,
    ) -> Result<Panels<Bf16>> {
        self.check_source(1, w_hh)?;
        kept(&self.forward_bf16, lanes, || {
            let panels = forward_panels(w_hh, "w_hh", hidden, hp, state, lanes)?;
            let mut out = alloc::zeroed(&[panels.len()], "the bfloat16 panels of w_hh")?;
            // Each pair of vectors (2·lanes values): value j of the first at
            // 2j, of the second at 2j + 1.
            for (dst, src) in out
                .chunks_exact_mut(2 * lanes)
                .zip(panels.chunks_exact(2 * lanes))
            {
                let (first, second) = src.split_at(lanes);
                for (j, (&a, &b)) in first.iter().zip(second).enumerate() {
                    dst[2 * j] = Bf16::round(a.to_f64() as f32);
                    dst[2 * j + 1] = Bf16::round(b.to_f64() as f32);
                }
            }
            Ok(out)
        })
    }

    /// bf16 panels for the BF16 dot products (the `avx512bf16` ISA) of
    /// `w_ih` (`which` 0, depth `input`) or `w_hh` (1, depth `state`): its
    /// [`forward_panels`] for 16 lanes rounded to bfloat16, the weights of
    /// depths k and k + 1 of each column side by side
    /// ([`bf16_dot::pair_panels`]), packed on first use.
    pub fn forward_bf16_pairs(
        &self,
        which: usize,
        w: &[E],
        hidden: usize,
        hp: usize,
        depth: usize,
    ) -> Result<Panels<Bf16>> {
        self.check_source(which, w)?;
        const LANES: usize = 16;
        let (slot, name) = match which {
            0 => (&self.input_bf16_pairs, "w_ih"),
            _ => (&self.forward_bf16_pairs, "w_hh"),
        };
        kept(slot, LANES, || {
            let panels = forward_panels(w, name, hidden, hp, depth, LANES)?;
            let len = hp / LANES * bf16_dot::panel_len(depth);
            let mut out = alloc::zeroed(&[len], "bfloat16 pair panels")?;
            bf16_dot::pair_panels(&panels, depth, &mut out);
            Ok(out)
        })
    }

    /// `panels`, rounded to bfloat16 values when this cache is bf16's.
    fn rounded(&self, mut panels: Vec<E>) -> Vec<E> {
        if self.bf16 {
            // E is f32 here (`new_bf16`).
            round_to_bf16(&mut panels);
        }
        panels
    }

    /// The error of a pass bf16 inference does not run (backward, a forward
    /// with a cache) on this cache, if it is bf16's.
    pub fn check_not_bf16(&self) -> Result<()> {
        if self.bf16 {
            return Err(Error::Value(
                "bfloat16 weights are for inference only: forward without a cache \
                 (need_cache=False), no backward"
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_source(&self, which: usize, w: &[E]) -> Result<()> {
        if source(w) != self.sources[which] {
            let name = ["w_ih", "w_hh", "w_hr"][which];
            return Err(Error::Value(format!(
                "{name} is not the array its packed panels were made from"
            )));
        }
        Ok(())
    }

    /// [`forward_panels`] of `w_ih` (4H × `input`), packed on first use.
    pub fn input(
        &self,
        w_ih: &[E],
        hidden: usize,
        hp: usize,
        input: usize,
        lanes: usize,
    ) -> Result<Panels<E>> {
        self.check_source(0, w_ih)?;
        kept(&self.input, lanes, || {
            Ok(self.rounded(forward_panels(w_ih, "w_ih", hidden, hp, input, lanes)?))
        })
    }

    /// [`forward_panels`] of `w_hh` (4H × `state`), packed on first use.
    pub fn forward(
        &self,
        w_hh: &[E],
        hidden: usize,
        hp: usize,
        state: usize,
        lanes: usize,
    ) -> Result<Panels<E>> {
        self.check_source(1, w_hh)?;
        kept(&self.forward, lanes, || {
            Ok(self.rounded(forward_panels(w_hh, "w_hh", hidden, hp, state, lanes)?))
        })
    }

    /// [`backward_panels`] of `w_hh` (4H × `state`), packed on first use.
    pub fn backward(
        &self,
        w_hh: &[E],
        hidden: usize,
        hp: usize,
        state: usize,
        lanes: usize,
    ) -> Result<Panels<E>> {
        self.check_source(1, w_hh)?;
        self.check_not_bf16()?;
        kept(&self.backward, lanes, || {
            backward_panels(w_hh, hidden, hp, state, lanes)
        })
    }

    /// [`projection_panels`] of `w_hr` (`state` × `hidden`), packed on first use.
    pub fn projection(
        &self,
        w_hr: &[E],
        state: usize,
        hidden: usize,
        lanes: usize,
    ) -> Result<Panels<E>> {
        self.check_source(2, w_hr)?;
        kept(&self.projection, lanes, || {
            Ok(self.rounded(projection_panels(w_hr, state, hidden, lanes)?))
        })
    }

    /// [`projection_backward_panels`] of `w_hr`, packed on first use.
    pub fn projection_backward(
        &self,
        w_hr: &[E],
        state: usize,
        hidden: usize,
        lanes: usize,
    ) -> Result<Panels<E>> {
        self.check_source(2, w_hr)?;
        self.check_not_bf16()?;
        kept(&self.projection_backward, lanes, || {
            projection_backward_panels(w_hr, state, hidden, lanes)
        })
    }
}

/// Whether each pair of byte slices holds the same bytes: how the owner of a
/// [`PanelCache`] proves the weights it was given unchanged since it packed
/// them (a read of the weights, several times cheaper than packing them).
/// Every byte is compared (memcmp, which stops at the first difference).
/// Large weights are compared in blocks over the engine's threads, which share
/// the bandwidth; small ones, or any with one thread, on the calling thread
/// ([`SAME_BYTES_PARALLEL_MIN`]).
pub fn same_bytes(pairs: &[(&[u8], &[u8])]) -> Result<bool> {
    if pairs.iter().any(|(a, b)| a.len() != b.len()) {
        return Ok(false);
    }
    let total: usize = pairs.iter().map(|(a, _)| a.len()).sum();
    if total < SAME_BYTES_PARALLEL_MIN || pool::num_threads() == 1 || pool::in_pool() {
        return Ok(pairs.iter().all(|(a, b)| a == b));
    }
    let workers = pool::workers()?;
    let blocks: Vec<_> = pairs
        .iter()
        .flat_map(|(a, b)| a.chunks(SAME_BYTES_BLOCK).zip(b.chunks(SAME_BYTES_BLOCK)))
        .collect();
    Ok(workers
        .pool
        .install(|| blocks.par_iter().all(|(a, b)| a == b)))
}

/// The panels in `slot` for `lanes`, packed by `pack` (under the lock, so two
/// passes never pack the same layout twice) when missing or for other lanes.
fn kept<E>(
    slot: &Mutex<Option<(usize, Panels<E>)>>,
    lanes: usize,
    pack: impl FnOnce() -> Result<Vec<E>>,
) -> Result<Panels<E>> {
    // A pass that panicked while packing left nothing half-made in the slot.
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((kept_lanes, panels)) = slot.as_ref() {
        if *kept_lanes == lanes {
            return Ok(Arc::clone(panels));
        }
    }
    let panels = Arc::new(pack()?);
    *slot = Some((lanes, Arc::clone(&panels)));
    Ok(panels)
}

/// `w_ih` (4H × I) with each gate block padded to Hp rows: (4Hp × I).
pub fn pad_gate_rows<E: Float>(
    w: &[E],
    hidden: usize,
    hidden_pad: usize,
    cols: usize,
) -> Result<Vec<E>> {
    let mut out = alloc::zeroed(&[4, hidden_pad, cols], "w_ih padded to 4·Hp rows")?;
    for gate in 0..4 {
        let src = &w[gate * hidden * cols..(gate + 1) * hidden * cols];
        out[gate * hidden_pad * cols..][..hidden * cols].copy_from_slice(src);
    }
    Ok(out)
}

/// A bias (4H), or zeros, laid out as 4 gate blocks of Hp.
pub fn pad_bias<E: Float>(bias: Option<&[E]>, hidden: usize, hidden_pad: usize) -> Result<Vec<E>> {
    let mut out = alloc::zeroed(&[4, hidden_pad], "the padded bias")?;
    if let Some(b) = bias {
        for gate in 0..4 {
            out[gate * hidden_pad..][..hidden].copy_from_slice(&b[gate * hidden..][..hidden]);
        }
    }
    Ok(out)
}

/// Each of `w` (float32 values) rounded to bfloat16 and widened back, as
/// bf16 inference computes with it (`lstm_fast.bfloat16_round`): the one
/// rounding of the kept panels and of the LayerNorm LSTM's w_ih. For f32
/// the casts are exact.
pub fn round_to_bf16<E: Float>(w: &mut [E]) {
    for x in w {
        *x = E::from_f64(f64::from(round_f32(x.to_f64() as f32)));
    }
}

/// Forward panels of `w` (4H × `cols`: `w_hh`, or `w_ih` with `cols` = I),
/// named `name` in an allocation error:
/// panel p holds, for k = 0..cols, the 4·`lanes` weights that feed hidden
/// units p·lanes.. of gates i, f, g, o:
/// `panel[p][k][gate·lanes + u] = w[gate·H + p·lanes + u][k]`.
/// One micro-kernel tile then yields all four gates of the same units.
pub fn forward_panels<E: Float>(
    w: &[E],
    name: &str,
    hidden: usize,
    hidden_pad: usize,
    cols: usize,
    lanes: usize,
) -> Result<Vec<E>> {
    let tiles = hidden_pad / lanes;
    let width = 4 * lanes;
    let what = format!("the forward panels of {name}");
    let mut out: Vec<E> = alloc::zeroed(&[tiles, cols, width], &what)?;
    #[cfg(target_arch = "x86_64")]
    if lanes == 16
        && std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>()
        && crate::simd::Isa::Avx512.is_supported()
    {
        assert!(4 * hidden * cols <= w.len() && tiles * lanes >= hidden);
        // SAFETY: E is f32 (the same TypeId), so both slices are f32 of the
        // lengths they have; avx512f was detected; `w` holds the 4H rows of
        // `cols` (asserted) and `out` the panels of every unit.
        unsafe {
            let w32 = std::slice::from_raw_parts(w.as_ptr().cast::<f32>(), w.len());
            let o32 = std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len());
            forward_panels_avx512(w32, hidden, cols, o32);
        }
        return Ok(out);
    }
    fill_forward_panels(w, hidden, cols, lanes, &mut out);
    Ok(out)
}

/// [`forward_panels`]' general loop, into zeroed `out` (⌈Hp / lanes⌉ panels).
fn fill_forward_panels<E: Float>(w: &[E], hidden: usize, cols: usize, lanes: usize, out: &mut [E]) {
    let width = 4 * lanes;
    let tiles = out.len() / (cols * width).max(1);
    // Writes each panel in order, PACK_DEPTH rows at a time: the pieces of
    // the 4·lanes rows of w they gather from (4·lanes · PACK_DEPTH elements)
    // stay in L1 while the block is written.
    for (p, panel) in out
        .chunks_exact_mut((cols * width).max(1))
        .enumerate()
        .take(tiles)
    {
        let units = hidden.saturating_sub(p * lanes).min(lanes);
        let rows = p * lanes..p * lanes + units;
        if units > 0 {
            // Rows of w read below: those of this panel's units, in all 4 gates.
            assert!(((3 * hidden + rows.end - 1) * cols).saturating_add(cols) <= w.len());
        }
        for k0 in (0..cols).step_by(PACK_DEPTH) {
            let depth = PACK_DEPTH.min(cols - k0);
            let block = &mut panel[k0 * width..][..depth * width];
            for (k, dst) in block.chunks_exact_mut(width).enumerate() {
                for gate in 0..4 {
                    let dst = &mut dst[gate * lanes..][..units];
                    for (d, row) in dst.iter_mut().zip(rows.clone()) {
                        // SAFETY: gate < 4, row < rows.end and k0 + k < cols, so
                        // the index is inside w (asserted above).
                        *d = unsafe { *w.get_unchecked((gate * hidden + row) * cols + k0 + k) };
                    }
                }
            }
        }
    }
}

/// [`forward_panels`] for f32 panels of 16 lanes on AVX-512: each gate's 16
/// rows (units) × 16 depths of `w` are loaded as 16 vectors, transposed in
/// registers and stored as 16 panel rows, where the general loop moves one
/// element at a time (measured: packing was 43 % of a T = 1 forward from raw
/// weights at I = H = 256). `out` is zeroed (the padded units' lanes stay 0).
///
/// # Safety
/// The CPU supports avx512f; `w` holds 4·`hidden` rows of `cols`; `out` holds
/// ⌈hidden / 16⌉ panels of `cols` rows of 64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_panels_avx512(w: &[f32], hidden: usize, cols: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    const LANES: usize = 16;
    let width = 4 * LANES;
    for p in 0..hidden.div_ceil(LANES) {
        let units = (hidden - p * LANES).min(LANES);
        let panel = out[p * cols * width..][..cols * width].as_mut_ptr();
        for gate in 0..4 {
            let row0 = gate * hidden + p * LANES;
            for k0 in (0..cols).step_by(LANES) {
                let kd = (cols - k0).min(LANES);
                let mask: __mmask16 = if kd == LANES { !0 } else { (1 << kd) - 1 };
                // SAFETY: rows row0 + u < 4·hidden of `cols` elements, depths
                // k0 + j < cols (masked past kd); panel rows k0 + j < cols.
                unsafe {
                    let mut r = [_mm512_setzero_ps(); LANES];
                    for (u, r) in r.iter_mut().enumerate().take(units) {
                        *r = _mm512_maskz_loadu_ps(mask, w.as_ptr().add((row0 + u) * cols + k0));
                    }
                    let t = transpose_16x16(r);
                    for (j, t) in t.iter().enumerate().take(kd) {
                        _mm512_storeu_ps(panel.add((k0 + j) * width + gate * LANES), *t);
                    }
                }
            }
        }
    }
}

/// The transpose of a 16 × 16 block of f32: row j of the result holds element
/// j of every input row, in row order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn transpose_16x16(
    r: [std::arch::x86_64::__m512; 16],
) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    // SAFETY: register shuffles only; the caller runs with avx512f.
    unsafe {
        let pd = |x: __m512| _mm512_castps_pd(x);
        let ps = |x: __m512d| _mm512_castpd_ps(x);
        // Pairs of rows interleaved by element, then by pairs of elements.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let q = i / 4 * 4;
            let (a, b) = (pd(t[q + i % 4 / 2]), pd(t[q + i % 4 / 2 + 2]));
            if i % 2 == 0 {
                ps(_mm512_unpacklo_pd(a, b))
            } else {
                ps(_mm512_unpackhi_pd(a, b))
            }
        });
        // Then 128-bit lanes: rows 4 apart, then 8 apart.
        let v: [__m512; 16] = std::array::from_fn(|i| {
            let q = i / 8 * 8;
            let (a, b) = (u[q + i % 4], u[q + i % 4 + 4]);
            if i % 8 < 4 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(a, b)
            }
        });
        std::array::from_fn(|i| {
            let (a, b) = (v[i % 8], v[i % 8 + 8]);
            if i < 8 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(a, b)
            }
        })
    }
}

/// Backward panels of `w_hh` (4H × `state`: P with a projection, else H) for
/// `dh_prev = da · w_hh`: panel q holds, for each padded gate row
/// j = gate·Hp + unit, the 4·`lanes` weights of state units q·4·lanes..:
/// `panel[q][j][v] = w_hh[gate·H + unit][q·4·lanes + v]`. There are
/// Pp / (4·lanes) panels, rounded up (Pp: `state` padded like H).
pub fn backward_panels<E: Float>(
    w_hh: &[E],
    hidden: usize,
    hidden_pad: usize,
    state: usize,
    lanes: usize,
) -> Result<Vec<E>> {
    let width = 4 * lanes;
    let tiles = state.next_multiple_of(E::PAD).div_ceil(width);
    let depth = 4 * hidden_pad;
    let mut out = alloc::zeroed(&[tiles, depth, width], "the backward panels of w_hh")?;
    for q in 0..tiles {
        let panel = &mut out[q * depth * width..][..depth * width];
        let k0 = q * width;
        let cols = state.saturating_sub(k0).min(width);
        if cols == 0 {
            continue;
        }
        for gate in 0..4 {
            for unit in 0..hidden {
                let src = &w_hh[(gate * hidden + unit) * state + k0..][..cols];
                panel[(gate * hidden_pad + unit) * width..][..cols].copy_from_slice(src);
            }
        }
    }
    Ok(out)
}

/// Panels of a matrix whose products yield `outputs` values from `depth`
/// inputs, the output `o` from input `k` weighted by `weight(o, k)`: panel q
/// holds, for k = 0..depth, the 4·`lanes` weights of outputs q·4·lanes..,
/// `panel[q][k][v] = weight(q·4·lanes + v, k)`, zeros past `outputs`; there
/// are `outputs` padded like H, / (4·lanes), rounded up. One register tile
/// ([`rows_x4v_kblocked`](super::microkernel::rows_x4v_kblocked)) then
/// yields 4·lanes consecutive outputs.
fn output_panels<E: Float>(
    outputs: usize,
    depth: usize,
    lanes: usize,
    what: &str,
    weight: impl Fn(usize, usize) -> E,
) -> Result<Vec<E>> {
    let width = 4 * lanes;
    let tiles = outputs.next_multiple_of(E::PAD).div_ceil(width);
    let mut out = alloc::zeroed(&[tiles, depth, width], what)?;
    for q in 0..tiles {
        let panel = &mut out[q * depth * width..][..depth * width];
        let o0 = q * width;
        let cols = outputs.saturating_sub(o0).min(width);
        for (k, dst) in panel.chunks_exact_mut(width).enumerate() {
            for (v, d) in dst[..cols].iter_mut().enumerate() {
                *d = weight(o0 + v, k);
            }
        }
    }
    Ok(out)
}

/// Forward panels of the projection `w_hr` (`state` × `hidden`, P × H) for
/// `h = m · w_hrᵀ` (P outputs, depth H):
/// `panel[q][k][v] = w_hr[q·4·lanes + v][k]`.
pub fn projection_panels<E: Float>(
    w_hr: &[E],
    state: usize,
    hidden: usize,
    lanes: usize,
) -> Result<Vec<E>> {
    assert_eq!(w_hr.len(), state * hidden, "w_hr is P × H");
    output_panels(state, hidden, lanes, "the panels of w_hr", |o, k| {
        w_hr[o * hidden + k]
    })
}

/// Backward panels of the projection `w_hr` (P × H) for `dm = dh · w_hr` (H
/// outputs, depth P): `panel[q][k][v] = w_hr[k][q·4·lanes + v]`.
pub fn projection_backward_panels<E: Float>(
    w_hr: &[E],
    state: usize,
    hidden: usize,
    lanes: usize,
) -> Result<Vec<E>> {
    assert_eq!(w_hr.len(), state * hidden, "w_hr is P × H");
    output_panels(
        hidden,
        state,
        lanes,
        "the backward panels of w_hr",
        |o, k| w_hr[k * hidden + o],
    )
}

#[cfg(all(test, target_arch = "x86_64"))]
mod transpose_tests {
    use super::{fill_forward_panels, forward_panels};
    use crate::simd::Isa;

    /// The AVX-512 packer gives the general loop's panels, bit for bit, for
    /// hidden sizes and depths that are and are not multiples of 16.
    #[test]
    fn avx512_forward_panels_are_the_general_loops() {
        if !Isa::Avx512.is_supported() {
            return;
        }
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for (hidden, cols) in [
            (1, 1),
            (5, 3),
            (16, 16),
            (17, 33),
            (40, 7),
            (33, 100),
            (128, 256),
        ] {
            let w: Vec<f32> = (0..4 * hidden * cols)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            let hp = usize::next_multiple_of(hidden, 16);
            let fast = forward_panels(&w, "w", hidden, hp, cols, 16).unwrap();
            let mut general = vec![0f32; fast.len()];
            fill_forward_panels(&w, hidden, cols, 16, &mut general);
            let same = fast
                .iter()
                .zip(&general)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "hidden {hidden}, cols {cols}");
        }
    }
}

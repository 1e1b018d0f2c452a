//! The LayerNorm LSTM (docs/variants.md, 'LayerNorm LSTM'): forward and
//! backward of one layer and direction, a whole sequence.
//!
//! Its own path, not the fused step kernels of `kernels/`: the normalisation
//! of the recurrent product s_h = (h_{t−1} ⊙ r)·W_hhᵀ needs the whole 4H row
//! before any gate math, which the fused kernels' per-tile gate math cannot
//! wait for. Per call:
//!
//! - forward: s_x = x·W_ihᵀ for every (t, b) in one product (`kernels/gemm.rs`;
//!   a short call with prepared weights on their panels of W_ih), each row
//!   normalised in place when its step runs; without a cache and past
//!   `LAYER_NORM_WHOLE_PRODUCT_BYTES`, each chunk's rows a block of steps at a
//!   time inside its loop (`InputBlock`); per step the recurrent
//!   product of the running rows on W_hh's panels packed once per call
//!   (`kernels/panel_product.rs`, the fused kernels' register tiles, into a
//!   dense 4H row each), then per row its normalisation, the gate math of the
//!   [`Variant`] (peepholes, clip, input_forget, no forget gate, activations),
//!   c_t, n_t = LN(c_t), m_t = o_t ⊙ σ_h(n_t), and with a projection one more
//!   product h_t = m_t·W_hrᵀ (on w_hr's panels). bf16 inference (prepared
//!   weights rounded to bfloat16) streams W_hh's panels as bfloat16 and takes
//!   w_ih and w_hr rounded: the bits of the float32 pass on rounded weights;
//! - backward: per step (last first) each row's gates rebuilt from the cache
//!   (which keeps ŝ_x, ŝ_h, c_t and the moments, not the gates: [`LnCache`])
//!   and their derivatives, the gradient through the normalisations of c_t,
//!   s_h and s_x, the step's
//!   terms of the bias, gain and peephole sums (while they are in cache), and
//!   dh_{t−1} = ds_h·W_hh (on W_hh's backward panels over the dense 4H);
//!   after the loop dx = ds_x·W_ih (one product), and dW_ih = Σ ds_xᵀ x,
//!   dW_hh = Σ ds_hᵀ (h ⊙ r), dW_hr, the rows read in place where they can
//!   be. Every sum over (step, row) runs in backward's processing order
//!   (`lstm.rs`, `processing_order`, `ordered_blocks`), which a checkpointed
//!   pass's segments continue (`checkpoint.rs`).
//!
//! Threads: the forward gives each thread a chunk of the batch rows, which
//! runs the whole time loop alone, where the chunks have enough rows
//! (`LAYER_NORM_CHUNK_ROWS` and the rest in `tuning.rs`); otherwise, and in
//! backward, each step's rows and products are shared out over the pool's
//! threads.
//!
//! Bits independent of the thread count: the rows of a step are independent
//! and each runs the same code whatever thread takes it; every product gives
//! each output one FMA chain in k order (`gemm.rs`, `panel_product.rs`); the
//! means and variances of a row and the sums over rows run in a fixed order
//! on one thread.
//!
//! The arrays are dense (not padded like the fused path's): rows ordered like
//! x (time-major, or batch-major with `batch_first`), the gates in blocks
//! i, f, g, o of H each.

use rayon::prelude::*;

use crate::alloc;
use crate::cancel::Cancel;
use crate::check;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::gemm::{gemm, gemm_in_order, gemm_tasks, Mat};
use crate::kernels::layout::SharedMut;
use crate::kernels::pack::{self, Panels};
use crate::kernels::panel_product::{panel_product, Columns, PanelProduct, ProductScratch};
use crate::lstm::{gathered_t, in_place_order, ordered_block_rows, ordered_blocks};
use crate::parallel::pool::{self, threads_here};
use crate::parallel::split::{claim, Split};
use crate::sequence::{hidden_pad, Dims, Outputs, Seeds, Sequence};
use crate::simd::wide::{gradient_row, normalise_row, pair_sums, row_sum, Rows};
use crate::simd::{dispatch, load_n, store_n, Bf16, Isa, Kernel, Simd, SimdElement};
use crate::tuning::{
    DB_COLUMN_BLOCK, LAYER_NORM_CHUNK_ROWS, LAYER_NORM_CHUNK_STREAMING_ROWS,
    LAYER_NORM_CHUNK_WEIGHT_BYTES, LAYER_NORM_WHOLE_PRODUCT_BYTES, PROJECTION_ROWS,
    STEP_LOOP_MIN_ELEMENTS,
};
use crate::variant::{Variant, Zone};

/// The gains and biases of the three normalisations (None: a gain of 1, a
/// bias of 0): `w_ih`, `b_ih` of s_x and `w_hh`, `b_hh` of s_h, (4H,) in the
/// gate blocks i, f, g, o; `w_c`, `b_c` of c_t, (H,). `eps` is added to the
/// variance (> 0, finite).
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm<'a, E> {
    pub w_ih: Option<&'a [E]>,
    pub b_ih: Option<&'a [E]>,
    pub w_hh: Option<&'a [E]>,
    pub b_hh: Option<&'a [E]>,
    pub w_c: Option<&'a [E]>,
    pub b_c: Option<&'a [E]>,
    pub eps: f64,
}

/// What backward needs from forward, rows R = T·B ordered like x: `cells`
/// (R, H) c_t; `h_prev` (R, P) the recurrent product's operand h_{t−1} ⊙ r;
/// `sx_hat`, `sh_hat` (R, 4H) the normalised products before gain and bias;
/// `moments` (R, 4) the three 1/σ (s_x, s_h, c) and the mean of c_t. That is
/// 9·H + P + 4 per (row, step), for every variant. What backward can rebuild
/// from these while the row is in cache is not kept: the gates and the
/// pre-activations (from ŝ_x, ŝ_h, the gains and biases, c_{t−1} and c_t:
/// [`GateMath`], the forward's arithmetic and bits), and ĉ_t, c_t
/// normalised, which forward and backward both compute from c_t and its two
/// moments as they are kept, (c − μ)·r (`renormalise`). With zoneout (docs/variants.md, 'Zoneout')
/// `cells` holds the cell each step computed (c̃_t, which ĉ_t normalises) and
/// `c_state` (R, H), with zoneout of c only, the state c_t after zoneout (the
/// next step's c_{t−1}): H more. Rows of padded steps are zero.
pub struct LnCache<'a, E> {
    pub cells: &'a mut [E],
    pub h_prev: &'a mut [E],
    pub sx_hat: &'a mut [E],
    pub sh_hat: &'a mut [E],
    pub moments: &'a mut [E],
    pub c_state: Option<&'a mut [E]>,
}

/// Read-only view of an [`LnCache`].
#[derive(Clone, Copy)]
pub struct LnCacheRef<'a, E> {
    pub cells: &'a [E],
    pub h_prev: &'a [E],
    pub sx_hat: &'a [E],
    pub sh_hat: &'a [E],
    pub moments: &'a [E],
    pub c_state: Option<&'a [E]>,
}

impl<E> LnCacheRef<'_, E> {
    /// The lengths of the arrays, in [`check_cache`]'s order.
    fn lens(&self) -> [Option<usize>; 6] {
        [
            Some(self.cells.len()),
            Some(self.h_prev.len()),
            Some(self.sx_hat.len()),
            Some(self.sh_hat.len()),
            Some(self.moments.len()),
            self.c_state.map(<[E]>::len),
        ]
    }
}

/// Gradients of a LayerNorm pass, each shaped like its variable; `db` (4H,)
/// is that of b_ih, b_hh, b_ln_ih and b_ln_hh alike (Σ dz); the gains' and
/// `db_ln_c`'s are wanted where given (None: not computed). `dpeepholes`,
/// `dw_hr` and `flow` as in [`crate::Grads`]. `scratch`, when given, holds ds_x
/// and ds_h, each (R, 4H), any contents: callers that allocate large arrays
/// better (NumPy asks for huge pages) pass them; otherwise they are allocated
/// here.
pub struct LnGrads<'a, E> {
    pub dx: &'a mut [E],
    pub dh0: &'a mut [E],
    pub dc0: &'a mut [E],
    pub dw_ih: &'a mut [E],
    pub dw_hh: &'a mut [E],
    pub db: Option<&'a mut [E]>,
    pub dpeepholes: Option<&'a mut [E]>,
    pub dw_hr: Option<&'a mut [E]>,
    pub flow: Option<[&'a mut [E]; 2]>,
    pub scratch: Option<[&'a mut [E]; 2]>,
    pub dw_ln_ih: Option<&'a mut [E]>,
    pub dw_ln_hh: Option<&'a mut [E]>,
    pub dw_ln_c: Option<&'a mut [E]>,
    pub db_ln_c: Option<&'a mut [E]>,
}

// ---------------------------------------------------------------------------
// Checks

fn expect(name: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Value(format!(
            "{name}: expected {want} elements, got {got}"
        )));
    }
    Ok(())
}

fn expect_opt(name: &str, got: Option<usize>, want: usize) -> Result<()> {
    got.map_or(Ok(()), |got| expect(name, got, want))
}

impl<E: Float> LayerNorm<'_, E> {
    fn check(&self, hidden: usize) -> Result<()> {
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::Value(format!(
                "layer_norm_eps must be a finite number > 0, got {}",
                self.eps
            )));
        }
        let g = 4 * hidden;
        expect_opt("w_ln_ih", self.w_ih.map(<[E]>::len), g)?;
        expect_opt("b_ln_ih", self.b_ih.map(<[E]>::len), g)?;
        expect_opt("w_ln_hh", self.w_hh.map(<[E]>::len), g)?;
        expect_opt("b_ln_hh", self.b_hh.map(<[E]>::len), g)?;
        expect_opt("w_ln_c", self.w_c.map(<[E]>::len), hidden)?;
        expect_opt("b_ln_c", self.b_c.map(<[E]>::len), hidden)
    }

    /// eps as the compute dtype holds it (the reference adds it in that dtype).
    fn eps(&self) -> f64 {
        E::from_f64(self.eps).to_f64()
    }
}

/// Per (row, step): the three 1/σ (s_x, s_h, c) and the mean of c.
pub(crate) const MOMENTS: usize = 4;

/// The cache's lengths: cells, h_prev, sx_hat, sh_hat, moments, c_state.
fn cache_lens<E: Float>(seq: &Sequence<'_, E>, rows: usize) -> [usize; 6] {
    let (h, p) = (seq.dims.hidden, seq.state());
    [
        rows * h,
        rows * p,
        rows * 4 * h,
        rows * 4 * h,
        rows * MOMENTS,
        if seq.variant.zoneout_c.is_on() {
            rows * h
        } else {
            0
        },
    ]
}

const CACHE_NAMES: [&str; 6] = [
    "cache cells",
    "cache h_prev",
    "cache sx_hat",
    "cache sh_hat",
    "cache moments",
    "cache c_state",
];

fn check_cache<E: Float>(
    seq: &Sequence<'_, E>,
    rows: usize,
    got: [Option<usize>; 6],
) -> Result<()> {
    for ((name, want), got) in CACHE_NAMES.iter().zip(cache_lens(seq, rows)).zip(got) {
        match got {
            Some(got) => expect(name, got, want)?,
            None if want > 0 => {
                return Err(Error::Value(format!(
                    "{name}: this variant needs it cached"
                )))
            }
            None => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Rows

/// Row of (real time t, batch row b) in x's layout.
#[inline]
fn row_of(seq: &Sequence<'_, impl Sized>, t: usize, b: usize) -> usize {
    let Dims { steps, batch, .. } = seq.dims;
    if seq.batch_first {
        b * steps + t
    } else {
        t * batch + b
    }
}

/// The real time of processing step s of batch row b (which runs at s).
#[inline]
fn time_of<E: Float>(seq: &Sequence<'_, E>, s: usize, b: usize) -> usize {
    if seq.reverse {
        seq.length(b) - 1 - s
    } else {
        s
    }
}

/// The mean of `v` and r = 1/sqrt(var + eps) (var divided by the width),
/// rounded to the element type, from two passes over `v` in the element
/// type, as the NumPy reference computes them: the mean m₁ of the first
/// (`row_sum`), then the sums of d = v − m₁ and of d² (`pair_sums`), with
/// mean = m₁ + mean(d) and var = mean(d²) − mean(d)² (the corrected
/// two-pass algorithm: no cancellation when the mean is large against the
/// spread, and m₁'s rounding corrected). The few operations per row after
/// the sums run in f64.
///
/// # Safety
/// As `row_sum`: the CPU has S's ISA (inside a kernel dispatched for S).
#[inline(always)]
unsafe fn moments<S: Simd>(v: &[S::E], eps: f64) -> (S::E, S::E) {
    let n = v.len() as f64;
    // SAFETY: the caller's contract.
    let (first, d, squares) = unsafe {
        let first = S::E::from_f64(row_sum::<S>(v).to_f64() / n);
        let (d, q) = pair_sums::<S>(Rows::of(v), first);
        (first.to_f64(), d.to_f64() / n, q.to_f64())
    };
    let var = squares / n - d * d;
    // Rounding can leave a near-constant row's variance a hair below zero.
    // A sum of squares that overflowed makes the variance infinite (r = 0:
    // the row normalises to zeros, as the reference's does); an infinity or
    // a NaN in the row, or a sum that overflowed, makes m₁ or d NaN and so
    // the whole row NaN, as the reference's, and that NaN stays (`max(0.0)`
    // would have made the variance 0: a finite r for a row of NaN).
    let var = if squares.is_infinite() {
        f64::INFINITY
    } else if var < 0.0 {
        0.0
    } else {
        var
    };
    (
        S::E::from_f64(first + d),
        S::E::from_f64(1.0 / (var + eps).sqrt()),
    )
}

/// Layer normalisation of `v` without gain and bias into `out`: (v − μ)·r,
/// r = 1/sqrt(var + eps) (var divided by the width), from the moments
/// rounded to the element type, as the cache keeps them (so that backward
/// rebuilds the same bits from the cache: [`renormalise`]); returns (μ, r).
///
/// # Safety
/// As [`moments`].
#[inline(always)]
unsafe fn normalise<S: Simd>(v: &[S::E], out: &mut [S::E], eps: f64) -> (S::E, S::E) {
    // SAFETY: the caller's contract.
    unsafe {
        let (mean, rstd) = moments::<S>(v, eps);
        renormalise::<S>(v, out, mean, rstd);
        (mean, rstd)
    }
}

/// (v − μ)·r into `out`, from the moments as the cache keeps them.
///
/// # Safety
/// As [`moments`].
#[inline(always)]
unsafe fn renormalise<S: Simd>(v: &[S::E], out: &mut [S::E], mean: S::E, rstd: S::E) {
    let out = &mut out[..v.len()];
    // SAFETY: the caller's contract; both rows hold v.len() elements.
    unsafe { normalise_row::<S>(v.as_ptr(), out.as_mut_ptr(), v.len(), mean, rstd) }
}

/// [`normalise`] of `v` in place; returns r.
///
/// # Safety
/// As [`moments`].
#[inline(always)]
unsafe fn normalise_in_place<S: Simd>(v: &mut [S::E], eps: f64) -> S::E {
    // SAFETY: the caller's contract; each element is read before it is
    // written (`normalise_row` allows `out` = `a`), through one pointer.
    unsafe {
        let (mean, rstd) = moments::<S>(v, eps);
        let p = v.as_mut_ptr();
        normalise_row::<S>(p, p, v.len(), mean, rstd);
        rstd
    }
}

/// The gradient through [`normalise`] (docs/variants.md) into `out`, from
/// the gradient `dy` of its output after the gain `gain` (absent: 1), x̂ and
/// r: dx̂ = dy ⊙ gain, out = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂)), with dx̂
/// made in registers in both passes, never stored; in the element type.
///
/// # Safety
/// As [`moments`]; `out` holds dy.len() elements and overlaps no row read.
#[inline(always)]
unsafe fn normalise_grad<S: Simd>(
    dy: &[S::E],
    gain: Option<&[S::E]>,
    x_hat: &[S::E],
    out: *mut S::E,
    rstd: S::E,
) {
    // A mean as the element type's division gives it (f64 holds the
    // quotient of two f32 exactly enough that one rounding is the f32's).
    let mean = |sum: S::E| S::E::from_f64(sum.to_f64() / dy.len() as f64);
    let rows = Rows {
        a: dy,
        g: gain,
        b: Some(x_hat),
    };
    // SAFETY: the caller's contract.
    unsafe {
        let (sum_d, sum_dx) = pair_sums::<S>(rows, S::E::ZERO);
        gradient_row::<S>(rows, out, rstd, mean(sum_d), mean(sum_dx));
    }
}

/// [`normalise_in_place`] compiled for the dispatched ISA.
struct NormaliseInPlace<'a, E> {
    v: &'a mut [E],
    eps: f64,
}

impl<E: Float> Kernel<E> for NormaliseInPlace<'_, E> {
    type Output = E;
    #[inline(always)]
    fn run<S: Simd<E = E>>(self) -> E {
        // SAFETY: `dispatch` runs this for S on a CPU that has S's ISA.
        unsafe { normalise_in_place::<S>(self.v, self.eps) }
    }
}

/// Runs `f(j)` for j in 0..n, over the pool's threads when inside it and the
/// loop touches about `elements` elements in all, at least
/// `STEP_LOOP_MIN_ELEMENTS` (a smaller loop costs less than handing it out).
fn each(n: usize, elements: usize, f: impl Fn(usize) + Sync + Send) {
    if threads_here() > 1 && n > 1 && elements >= STEP_LOOP_MIN_ELEMENTS {
        (0..n).into_par_iter().for_each(f);
    } else {
        (0..n).for_each(f);
    }
}

/// `n` elements from p + u, the rest of the vector zero. `FULL`: the row
/// widths are whole vectors (H a multiple of LANES), so every load is one
/// (the row kernels are compiled for both: the test of each load for a
/// partial vector, and its copy through the stack, kept the loops' values in
/// memory).
///
/// # Safety
/// `p + u` readable for `min(n − u, LANES)` elements (LANES with `FULL`).
#[inline(always)]
unsafe fn ld<S: Simd, const FULL: bool>(p: *const S::E, u: usize, n: usize) -> S {
    // SAFETY: forwarded from the caller.
    unsafe {
        if FULL {
            S::load(p.add(u))
        } else {
            load_n::<S>(p.add(u), n - u)
        }
    }
}

/// # Safety
/// `p + u` writable for `min(n − u, LANES)` elements (LANES with `FULL`).
#[inline(always)]
unsafe fn st<S: Simd, const FULL: bool>(v: S, p: *mut S::E, u: usize, n: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if FULL {
            v.store(p.add(u))
        } else {
            store_n::<S>(v, p.add(u), n - u)
        }
    }
}

/// An optional parameter vector at offset `off + u` (of `n`), or `absent`.
///
/// # Safety
/// A given slice holds `off + n` elements.
#[inline(always)]
unsafe fn param<S: Simd, const FULL: bool>(
    p: Option<&[S::E]>,
    off: usize,
    u: usize,
    n: usize,
    absent: S,
) -> S {
    match p {
        // SAFETY: forwarded from the caller.
        Some(p) => unsafe { ld::<S, FULL>(p.as_ptr().add(off), u, n) },
        None => absent,
    }
}

/// A row kernel's body, compiled per ISA four times: with the plain gate
/// math's constants or the variant's (`PLAIN`, [`Variant::gate_math_for`]),
/// and for widths of whole vectors or not (`FULL`, [`ld`]). [`run_row`]
/// picks the one that applies.
trait RowBody<E> {
    fn body<S: Simd<E = E>, const PLAIN: bool, const FULL: bool>(self);
}

#[inline(always)]
fn run_row<E: Float, S: Simd<E = E>, K: RowBody<E>>(k: K, v: &Variant<'_, E>, hidden: usize) {
    match (v.plain_gate_math(), hidden.is_multiple_of(S::LANES)) {
        (true, true) => k.body::<S, true, true>(),
        (true, false) => k.body::<S, true, false>(),
        (false, true) => k.body::<S, false, true>(),
        (false, false) => k.body::<S, false, false>(),
    }
}

// ---------------------------------------------------------------------------
// Forward

/// What the rows of one forward step read and write. Pointers address rows
/// that exactly one active row j writes (its own cache row, its own state
/// row b, its own slot j of the step buffers).
struct ForwardStep<'a, E> {
    /// The gates' arithmetic (and the variant, the normalisations' gains
    /// and biases, H).
    math: GateMath<'a, E>,
    hidden: usize,
    eps: f64,
    /// s_x, which each row normalises in place when its step runs (while the
    /// row is in cache for the gates): with `whole`, `sx_hat`, every row's
    /// (R, 4H: the cache's, or the call's own), by row; else `sx`, the step's
    /// rows (n, 4H) of the block of input products, by slot j. The moments
    /// ([`MOMENTS`] a row) go where the cells go (`caching`).
    whole: bool,
    sx: SharedMut<E>,
    sx_hat: SharedMut<E>,
    moments: SharedMut<E>,
    /// s_h of the step's rows (n, 4H), by slot j.
    sh: *const E,
    /// Where row j's cells, ŝ_h and moments go: by row when caching, else by slot j
    /// (step buffers of the step's rows); its gates and ĉ always go to slot
    /// j (backward rebuilds them).
    caching: bool,
    gates: SharedMut<E>,
    cells: SharedMut<E>,
    sh_hat: SharedMut<E>,
    c_hat: SharedMut<E>,
    /// The state c of the chunk's batch rows (its rows × H), by batch row
    /// b − b0 (after zoneout).
    c: SharedMut<E>,
    /// With zoneout of c while caching: the cache's states after zoneout
    /// (R, H) by row; else null. `hp`: the mask's row stride (H padded).
    c_after: SharedMut<E>,
    hp: usize,
    /// m_t (n, H) by slot j: h_t itself without a projection (written to y and
    /// the state h by the caller), the projection's operand with one. Where
    /// slot j is batch row b0 + j of the chunk and nothing comes between m_t
    /// and the state (no projection, no zoneout of h), the chunk's state h
    /// itself, which the step product has read by then (`run_rows`).
    m: SharedMut<E>,
    /// Where each row's gates go too (R, 4H) by row, for the test that the
    /// rebuilt gates are the forward's bits ([`forward_recording`]); else
    /// null. Read only in test builds.
    #[cfg_attr(not(test), allow(dead_code))]
    record: SharedMut<E>,
}

// SAFETY: the raw pointers are read (sh) or written (sx and sx_hat
// normalised in place, the rest) at rows that one task owns (see
// `ForwardStep`); the slices are shared reads.
unsafe impl<E: Send> Send for ForwardStep<'_, E> {}
// SAFETY: as above.
unsafe impl<E: Sync> Sync for ForwardStep<'_, E> {}

/// One active row of a forward step on one ISA.
struct ForwardRow<'a, 'b, E> {
    step: &'b ForwardStep<'a, E>,
    j: usize,
    b: usize,
    row: usize,
}

impl<E: Float> Kernel<E> for ForwardRow<'_, '_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        let (v, hidden) = (self.step.math.v, self.step.hidden);
        run_row::<E, S, _>(self, &v, hidden);
    }
}

impl<E: Float> RowBody<E> for ForwardRow<'_, '_, E> {
    #[inline(always)]
    fn body<S: Simd<E = E>, const PLAIN: bool, const FULL: bool>(self) {
        let st_ = self.step;
        let (h, g4) = (st_.hidden, 4 * st_.hidden);
        let (j, b, row) = (self.j, self.b, self.row);
        let at = if st_.caching { row } else { j };
        let v = &st_.math.v.gate_math_for::<PLAIN>();
        let ln = &st_.math.ln;
        let zero = S::splat(E::ZERO);
        let one = S::splat(E::ONE);
        // SAFETY: every pointer below addresses row `row` (R rows), slot `j`
        // (the step's rows) or the chunk's batch row `b` (its rows) of a buffer of that many
        // rows of the width used; each is written by this row alone. This
        // kernel runs for S (`dispatch`), so the CPU has S's ISA (the
        // normalisations' contract).
        unsafe {
            // LN of s_x in place: the row's of the whole call, or the
            // block's row of slot j.
            let sx_hat = if st_.whole {
                st_.sx_hat.0.add(row * g4)
            } else {
                st_.sx.0.add(j * g4)
            };
            let sx = std::slice::from_raw_parts_mut(sx_hat, g4);
            let r_x = normalise_in_place::<S>(sx, st_.eps);
            *st_.moments.0.add(at * MOMENTS) = r_x;
            let sx_hat = sx_hat.cast_const();
            // LN of s_h into the cache (or step) row.
            let sh = std::slice::from_raw_parts(st_.sh.add(j * g4), g4);
            let sh_hat = std::slice::from_raw_parts_mut(st_.sh_hat.0.add(at * g4), g4);
            let (_, r_h) = normalise::<S>(sh, sh_hat, st_.eps);
            *st_.moments.0.add(at * MOMENTS + 1) = r_h;
            let sh_hat = sh_hat.as_ptr();
            // The gates (GateMath, which backward rebuilds them with), then
            // c_t from them in a second pass over the row, which also
            // finishes o with its peephole term on c_t.
            let math = &st_.math;
            let gates = st_.gates.0.add(j * g4);
            let c_state = st_.c.0.add(b * h);
            math.run::<S, PLAIN, FULL>(
                sx_hat,
                sh_hat,
                c_state,
                std::ptr::null(),
                gates,
                std::ptr::null_mut(),
            );
            let cells = st_.cells.0.add(at * h);
            let mut u = 0;
            while u < h {
                let c_prev = ld::<S, FULL>(c_state, u, h);
                let gate = |k: usize| ld::<S, FULL>(gates.add(k * h), u, h);
                let c_new = gate(1).mul_add(c_prev, gate(0).mul(gate(2)));
                st::<S, FULL>(c_new, cells, u, h);
                if v.peepholes.is_some() {
                    let (_, og) = math.out_gate::<S, PLAIN, FULL>(gate(3), cells, u);
                    st::<S, FULL>(og, gates.add(3 * h), u, h);
                }
                // Zoneout of c: the state the next step starts from (the
                // mask's row is padded to hp, a multiple of LANES).
                let c_next = v.zoneout_c.mix(row, st_.hp, u, c_prev, c_new);
                st::<S, FULL>(c_next, c_state, u, h);
                if !st_.c_after.0.is_null() {
                    st::<S, FULL>(c_next, st_.c_after.0.add(row * h), u, h);
                }
                u += S::LANES;
            }
            // n = LN(c_t), m = o ⊙ σ_h(n).
            let cells = std::slice::from_raw_parts(cells, h);
            let c_hat = std::slice::from_raw_parts_mut(st_.c_hat.0.add(j * h), h);
            let (mu_c, r_c) = normalise::<S>(cells, c_hat, st_.eps);
            *st_.moments.0.add(at * MOMENTS + 2) = r_c;
            *st_.moments.0.add(at * MOMENTS + 3) = mu_c;
            let c_hat = c_hat.as_ptr();
            let m = st_.m.0.add(j * h);
            let mut u = 0;
            while u < h {
                let n = ld::<S, FULL>(c_hat, u, h).mul(param::<S, FULL>(ln.w_c, 0, u, h, one));
                let n = n.add(param::<S, FULL>(ln.b_c, 0, u, h, zero));
                let og = ld::<S, FULL>(gates.add(3 * h), u, h);
                st::<S, FULL>(og.mul(v.h.apply(n)), m, u, h);
                u += S::LANES;
            }
            // Only tests record (no check per row in a release build).
            #[cfg(test)]
            if !st_.record.0.is_null() {
                std::ptr::copy_nonoverlapping(gates, st_.record.0.add(row * g4), g4);
            }
        }
    }
}

/// Forward pass of the LayerNorm LSTM over the whole sequence (see the
/// module's doc); with `cache`, also what [`backward`] needs. Once `cancel`
/// is set, returns [`Error::Interrupted`] at the next step.
pub fn forward<E: Float>(
    seq: &Sequence<'_, E>,
    ln: &LayerNorm<'_, E>,
    out: Outputs<'_, E>,
    cache: Option<LnCache<'_, E>>,
    cancel: &Cancel,
) -> Result<()> {
    forward_impl(seq, ln, out, cache, None, cancel)
}

/// [`forward`] with `cache` that also writes each running row's gates i, f,
/// g, o (R, 4H) to `record` by row, as the forward computed them: what
/// [`gates`] must rebuild from the cache bit for bit.
#[cfg(test)]
pub(crate) fn forward_recording<E: Float>(
    seq: &Sequence<'_, E>,
    ln: &LayerNorm<'_, E>,
    out: Outputs<'_, E>,
    cache: LnCache<'_, E>,
    record: &mut [E],
) -> Result<()> {
    forward_impl(seq, ln, out, Some(cache), Some(record), &Cancel::new())
}

fn forward_impl<E: Float>(
    seq: &Sequence<'_, E>,
    ln: &LayerNorm<'_, E>,
    out: Outputs<'_, E>,
    cache: Option<LnCache<'_, E>>,
    record: Option<&mut [E]>,
    cancel: &Cancel,
) -> Result<()> {
    let rows = check::forward_args(seq, &out, None)?;
    ln.check(seq.dims.hidden)?;
    if let Some(c) = &cache {
        let got = [
            Some(c.cells.len()),
            Some(c.h_prev.len()),
            Some(c.sx_hat.len()),
            Some(c.sh_hat.len()),
            Some(c.moments.len()),
            c.c_state.as_ref().map(|p| p.len()),
        ];
        check_cache(seq, rows, got)?;
        if let Some(kept) = seq.panels {
            // bf16 inference: no cache for a backward.
            kept.check_not_bf16()?;
        }
    }
    let Dims {
        steps,
        batch,
        input,
        hidden,
    } = seq.dims;
    let state = seq.state();
    let g4 = 4 * hidden;
    let mut cache = cache;
    // Padded steps' rows: zero in y and the cache.
    for b in 0..batch {
        for t in seq.length(b)..steps {
            let row = row_of(seq, t, b);
            out.y[row * state..][..state].fill(E::ZERO);
            if let Some(c) = cache.as_mut() {
                zero_cache_row(c, row, hidden, state);
            }
        }
    }
    copy_or_zero(out.h_n, seq.h0);
    copy_or_zero(out.c_n, seq.c0);
    if !seq.runs() {
        return Ok(());
    }
    let isa = Isa::active();
    let workers = pool::workers()?;
    let (_, _claim) = claim(&workers, Split::Batch, cancel)?;
    let eps = ln.eps();
    expect_opt("record", record.as_ref().map(|r| r.len()), rows * g4)?;
    let record = record.map_or(SharedMut::null(), |r| SharedMut(r.as_mut_ptr()));

    let body = || -> Result<()> {
        let caching = cache.is_some();
        let (c_cells, c_h_prev, c_sx, c_sh, c_moments, c_after) = match cache {
            Some(c) => (
                Some(c.cells),
                Some(c.h_prev),
                Some(c.sx_hat),
                Some(c.sh_hat),
                Some(c.moments),
                c.c_state,
            ),
            None => (None, None, None, None, None, None),
        };
        let c_after = match c_after {
            Some(a) if seq.variant.zoneout_c.is_on() => SharedMut(a.as_mut_ptr()),
            _ => SharedMut::null(),
        };
        let hp = hidden_pad::<E>(hidden);
        let lanes = isa.lanes::<E>();
        let mut c_moments = c_moments;
        // The input products s_x = x·w_ihᵀ. With a cache, every row's into
        // the cache, each normalised in place by its step (here the rows of
        // padded steps, whose normalised products the cache holds too, as the
        // reference's); without one, every row's into a buffer of the call's
        // while that stays small (`LAYER_NORM_WHOLE_PRODUCT_BYTES`), else each
        // chunk makes its own a block of steps at a time inside its loop
        // (`run_rows`), on w_ih's forward panels: scratch O(B·H) however long
        // the sequence.
        let mut own_sx;
        let whole_bytes = rows.saturating_mul(g4).saturating_mul(size_of::<E>());
        let mut sx_rows: Option<&mut [E]> = match c_sx {
            Some(a) => Some(a),
            None if whole_bytes <= LAYER_NORM_WHOLE_PRODUCT_BYTES => {
                own_sx = alloc::zeroed::<E>(&[rows, g4], "the input products")?;
                Some(&mut own_sx)
            }
            None => None,
        };
        let whole = sx_rows.is_some();
        let ih_panels: Panels<E> = match sx_rows.as_deref_mut() {
            Some(sx) => {
                input_products(seq, isa, rows, sx)?;
                if let Some(moments) = c_moments.as_deref_mut() {
                    for b in 0..batch {
                        for t in seq.length(b)..steps {
                            let r = row_of(seq, t, b);
                            let v = &mut sx[r * g4..][..g4];
                            moments[r * MOMENTS] =
                                dispatch::<E, _>(isa, NormaliseInPlace { v, eps });
                        }
                    }
                }
                Panels::default()
            }
            // Kept by prepared weights (bf16 inference: rounded to bfloat16,
            // the values `input_products` uses), else packed for the call.
            None => match seq.panels {
                Some(kept) => kept.input(seq.w_ih, hidden, hp, input, lanes)?,
                None => pack::forward_panels(seq.w_ih, "w_ih", hidden, hp, input, lanes)?.into(),
            },
        };
        cancel.check()?;

        // The recurrent weights (and the projection's) packed once for the
        // whole call, or kept by prepared weights.
        // bf16 inference streams w_hh's panels as bfloat16 and projects with
        // w_hr rounded (the prepared weights' panels).
        let hh_panels = match seq.panels {
            Some(kept) if kept.bf16() => {
                HhPanels::Bf16(kept.forward_bf16(seq.w_hh, hidden, hp, state, lanes)?)
            }
            Some(kept) => HhPanels::Elements(kept.forward(seq.w_hh, hidden, hp, state, lanes)?),
            None => HhPanels::Elements(
                pack::forward_panels(seq.w_hh, "w_hh", hidden, hp, state, lanes)?.into(),
            ),
        };
        let proj_panels: Panels<E> = match (seq.variant.w_hr, seq.panels) {
            (None, _) => Panels::default(),
            (Some(w_hr), Some(kept)) => kept.projection(w_hr, state, hidden, lanes)?,
            (Some(w_hr), None) => pack::projection_panels(w_hr, state, hidden, lanes)?.into(),
        };
        let shared = ForwardShared {
            seq,
            ln,
            isa,
            eps,
            caching,
            whole,
            ih_panels: &ih_panels,
            hh_panels: &hh_panels,
            proj_panels: &proj_panels,
            sx_hat: sx_rows.map_or(SharedMut::null(), |a| SharedMut(a.as_mut_ptr())),
            moments: c_moments.map_or(SharedMut::null(), |a| SharedMut(a.as_mut_ptr())),
            cells: c_cells.map_or(SharedMut::null(), |a| SharedMut(a.as_mut_ptr())),
            sh_hat: c_sh.map_or(SharedMut::null(), |a| SharedMut(a.as_mut_ptr())),
            h_prev: c_h_prev.map_or(SharedMut::null(), |a| SharedMut(a.as_mut_ptr())),
            c_after,
            record,
            y: SharedMut(out.y.as_mut_ptr()),
            h_n: SharedMut(out.h_n.as_mut_ptr()),
            c_n: SharedMut(out.c_n.as_mut_ptr()),
            cancel,
        };
        // Chunks of the batch, each running the whole time loop on one
        // thread (no meeting per step); else the rows of each step and the
        // products' panels shared out step by step.
        let threads = threads_here();
        // w_hh's size as the caller holds it (its panels pad H; bfloat16
        // panels are half): the rule's scale, not an exact count.
        let weight_bytes = g4 * state * size_of::<E>();
        let chunk_rows = if weight_bytes <= LAYER_NORM_CHUNK_WEIGHT_BYTES {
            LAYER_NORM_CHUNK_ROWS
        } else {
            LAYER_NORM_CHUNK_STREAMING_ROWS
        };
        let chunks = if threads > 1 && batch >= threads * chunk_rows {
            threads
        } else {
            1
        };
        if chunks == 1 {
            return shared.run_rows(0..batch, true);
        }
        (0..chunks)
            .into_par_iter()
            .try_for_each(|k| shared.run_rows(k * batch / chunks..(k + 1) * batch / chunks, false))
    };
    workers.run(body)
}

/// s_x = x·w_ihᵀ for all `rows` rows of x into `sx` (R, 4H). A call of at
/// most `PROJECTION_ROWS` rows (a few steps: `LSTM.step`, streaming, S) with
/// prepared weights runs on their kept forward panels of w_ih, where packing
/// w_ih again for the general product is a fair share of the call (at S, 64 K
/// weights against 100 rows). A longer one runs the general product, which
/// packs w_ih again but runs faster over many rows (on the panels, the
/// forward at L took 1.01–1.02× the time on one thread, and 1.07× at B = 64,
/// I = H = 256 on two). Either way
/// each element is one FMA chain in k order from zero: the same bits. bf16
/// inference uses w_ih rounded to bfloat16 values (the values the float32
/// engine would get from `bfloat16_round`; the kept panels are rounded).
fn input_products<E: Float>(
    seq: &Sequence<'_, E>,
    isa: Isa,
    rows: usize,
    sx: &mut [E],
) -> Result<()> {
    let Dims { input, hidden, .. } = seq.dims;
    let g4 = 4 * hidden;
    if let Some(kept) = seq.panels.filter(|_| rows <= PROJECTION_ROWS) {
        let (hp, lanes) = (hidden_pad::<E>(hidden), isa.lanes::<E>());
        let panels = kept.input(seq.w_ih, hidden, hp, input, lanes)?;
        let mut scratch =
            ProductScratch::for_threads::<E>(projection_tasks(rows), rows, input, lanes)?;
        panel_input_products(isa, seq, &panels[..], seq.x, rows, sx, &mut scratch);
        return Ok(());
    }
    let own_w_ih;
    let w_ih: &[E] = match seq.panels {
        Some(kept) if kept.bf16() => {
            let mut rounded = alloc::zeroed::<E>(&[seq.w_ih.len()], "w_ih rounded to bfloat16")?;
            rounded.copy_from_slice(seq.w_ih);
            // E is f32 here (`PanelCache::new_bf16` refuses f64).
            pack::round_to_bf16(&mut rounded);
            own_w_ih = rounded;
            &own_w_ih
        }
        _ => seq.w_ih,
    };
    let w_ih_t = Mat {
        data: w_ih,
        rows: input,
        cols: g4,
        row_stride: 1,
        col_stride: input,
    };
    gemm(Mat::rows(seq.x, rows, input, input), w_ih_t, sx, g4, false);
    Ok(())
}

/// s_x = x·w_ihᵀ of the first `rows` rows of `a` (I apart) into `c` (4H
/// apart) on `panels`, w_ih's forward panels: each element one FMA chain in
/// k order from zero (`panel_product`), as the general product makes it.
fn panel_input_products<E: Float>(
    isa: Isa,
    seq: &Sequence<'_, E>,
    panels: &[E],
    a: &[E],
    rows: usize,
    c: &mut [E],
    scratch: &mut [ProductScratch],
) {
    let Dims { input, hidden, .. } = seq.dims;
    let product = PanelProduct {
        rows,
        a,
        lda: input,
        depth: input,
        panels,
        tiles: hidden_pad::<E>(hidden) / isa.lanes::<E>(),
        columns: Columns::Gates { hidden },
        c,
        ldc: 4 * hidden,
    };
    panel_product(isa, product, scratch);
}

/// The tasks a product of `rows` rows made once per call or block (the input
/// products) is shared among: the large products' rule, a task per
/// `GEMM_MIN_ROWS_PER_TASK` rows at most. Split by tiles as the step products
/// are (`PANEL_TASK_MIN_WORK`), S's 100 rows went to 8 tasks on 16 threads,
/// and its forward with a cache took 1.12× the time of the general product's.
fn projection_tasks(rows: usize) -> usize {
    gemm_tasks(threads_here(), rows)
}

/// Room for the input products of a block of rows: the rows of x gathered,
/// their products x·w_ihᵀ (4H each, in gate blocks i, f, g, o), and the
/// product's scratch. Made before a time loop (a refused allocation is an
/// error of the call, not a panic on a pool thread).
struct InputBlock<E> {
    x: Vec<E>,
    products: Vec<E>,
    scratch: Vec<ProductScratch>,
}

impl<E: Float> InputBlock<E> {
    /// For blocks of up to `rows` rows of `seq`, the product shared among
    /// `tasks` tasks at most on an ISA of `lanes` lanes.
    fn new(seq: &Sequence<'_, E>, rows: usize, tasks: usize, lanes: usize) -> Result<Self> {
        let Dims { input, hidden, .. } = seq.dims;
        Ok(InputBlock {
            x: alloc::zeroed(&[rows, input], "the input rows of a block")?,
            products: alloc::zeroed(&[rows, 4 * hidden], "the input products of a block")?,
            scratch: ProductScratch::for_threads::<E>(tasks, rows, input, lanes)?,
        })
    }

    /// The products of x's rows `rows` (at most the rows this block was made
    /// for), in that order: the k-th at `products[k·4H..]`, on `panels`, w_ih's
    /// forward panels. Each element is one FMA chain in k order from zero
    /// (`panel_product`), whatever the block or the threads.
    fn project(
        &mut self,
        isa: Isa,
        seq: &Sequence<'_, E>,
        panels: &[E],
        rows: impl Iterator<Item = usize>,
    ) {
        let input = seq.dims.input;
        let mut m = 0;
        for r in rows {
            self.x[m * input..][..input].copy_from_slice(&seq.x[r * input..][..input]);
            m += 1;
        }
        let (x, products) = (&self.x, &mut self.products);
        panel_input_products(isa, seq, panels, x, m, products, &mut self.scratch);
    }
}

/// What every chunk of a forward's batch rows reads, and where they write:
/// the pointers address rows (by row, R rows) or batch rows (h_n, c_n) that
/// exactly one chunk writes (its own batch rows'); null where there is no
/// cache (`cells`, `sh_hat`, `h_prev`, `moments`; `sx_hat` unless `whole`),
/// no zoneout of c (`c_after`) or no record.
struct ForwardShared<'s, 'a, E> {
    seq: &'s Sequence<'a, E>,
    ln: &'s LayerNorm<'a, E>,
    isa: Isa,
    eps: f64,
    caching: bool,
    /// Whether `sx_hat` holds every row's s_x (with a cache, or for a call
    /// whose s_x fits `LAYER_NORM_WHOLE_PRODUCT_BYTES`); else each chunk
    /// makes its own a block at a time from `ih_panels`.
    whole: bool,
    ih_panels: &'s Panels<E>,
    hh_panels: &'s HhPanels<E>,
    proj_panels: &'s Panels<E>,
    sx_hat: SharedMut<E>,
    moments: SharedMut<E>,
    cells: SharedMut<E>,
    sh_hat: SharedMut<E>,
    h_prev: SharedMut<E>,
    c_after: SharedMut<E>,
    record: SharedMut<E>,
    y: SharedMut<E>,
    h_n: SharedMut<E>,
    c_n: SharedMut<E>,
    cancel: &'s Cancel,
}

// SAFETY: the pointers are written only at rows of the chunk's own batch rows
// (see `ForwardShared`); the rest is read. (Written out rather than derived:
// `Sequence` and the panels are shared reads whose types the compiler cannot
// see through.)
unsafe impl<E: Send> Send for ForwardShared<'_, '_, E> {}
// SAFETY: as above.
unsafe impl<E: Sync> Sync for ForwardShared<'_, '_, E> {}

/// The layout rows of `active` (slot j: (batch row, layout row)) as
/// (first, stride) when they are evenly spaced, increasing (every batch row
/// of a step whose rows share its time: no lengths, or all still running at
/// one time), else None.
fn even_rows(active: &[(usize, usize)]) -> Option<(usize, usize)> {
    let &[(_, first), ..] = active else {
        return None;
    };
    let stride = match active.get(1) {
        Some(&(_, second)) => second.checked_sub(first).filter(|&d| d > 0)?,
        None => 1,
    };
    let spaced = active.iter().enumerate().all(|(j, &(_, row))| {
        Some(row) == j.checked_mul(stride).and_then(|o| o.checked_add(first))
    });
    spaced.then_some((first, stride))
}

impl<E: Float> ForwardShared<'_, '_, E> {
    /// The time loop of batch rows `rows_b`, from their h_n and c_n (h0 and
    /// c0) to their final state there. `parallel`: each step's rows and
    /// products shared out over the pool's threads (else on this thread).
    fn run_rows(&self, rows_b: std::ops::Range<usize>, parallel: bool) -> Result<()> {
        let (seq, isa) = (self.seq, self.isa);
        let Dims { steps, hidden, .. } = seq.dims;
        let (state, g4, b0, nb) = (seq.state(), 4 * hidden, rows_b.start, rows_b.len());
        let (hp, pp) = (hidden_pad::<E>(hidden), hidden_pad::<E>(state));
        let lanes = isa.lanes::<E>();
        let projects = seq.variant.w_hr.is_some();
        // The state of the chunk's rows (b − b0), and the step buffers of
        // its running rows (slot j).
        let mut h = alloc::zeroed::<E>(&[nb, state], "the state h")?;
        let mut c = alloc::zeroed::<E>(&[nb, hidden], "the state c")?;
        // SAFETY: rows b0.. of h_n and c_n (B rows each), this chunk's.
        unsafe {
            h.copy_from_slice(std::slice::from_raw_parts(
                self.h_n.0.add(b0 * state),
                nb * state,
            ));
            c.copy_from_slice(std::slice::from_raw_parts(
                self.c_n.0.add(b0 * hidden),
                nb * hidden,
            ));
        }
        let mut h_in = alloc::zeroed::<E>(&[nb, state], "the recurrent operand")?;
        let mut sh = alloc::zeroed::<E>(&[nb, g4], "the recurrent products")?;
        let mut m = alloc::zeroed::<E>(&[nb, hidden], "m_t of a step")?;
        let mut h_new = alloc::zeroed::<E>(&[nb, state], "h_t of a step")?;
        let step_rows = if self.caching { 0 } else { nb };
        let mut own = [
            alloc::zeroed::<E>(&[nb, g4], "the gates of a step")?,
            alloc::zeroed::<E>(&[step_rows, hidden], "the cells of a step")?,
            alloc::zeroed::<E>(&[step_rows, g4], "the normalised products of a step")?,
            alloc::zeroed::<E>(&[nb, hidden], "the normalised cells of a step")?,
            alloc::zeroed::<E>(&[step_rows, MOMENTS], "the moments of a step")?,
        ];
        let [o_gates, o_cells, o_sh, o_chat, o_moments] = &mut own;
        let ptr = |given: SharedMut<E>, own: &mut Vec<E>| {
            if given.0.is_null() {
                SharedMut(own.as_mut_ptr())
            } else {
                given
            }
        };
        let gates = SharedMut(o_gates.as_mut_ptr());
        let cells = ptr(self.cells, o_cells);
        let sh_hat = ptr(self.sh_hat, o_sh);
        let moments = ptr(self.moments, o_moments);
        let c_hat = SharedMut(o_chat.as_mut_ptr());
        let threads = if parallel { threads_here() } else { 1 };
        let mut scratch = ProductScratch::for_threads::<E>(threads, nb, state.max(hidden), lanes)?;
        let mut active: Vec<(usize, usize)> = alloc::with_capacity(nb, "the running rows")?;
        // The running rows of step s, slot by slot: (batch row, layout row).
        let running = move |s: usize| {
            rows_b
                .clone()
                .filter(move |&b| seq.length(b) > s)
                .map(move |b| (b, row_of(seq, time_of(seq, s, b), b)))
        };
        // The input products of a block of steps (about PROJECTION_ROWS
        // rows), made as it starts; `first[k]`: the block's first row of its
        // step k (the rows of a step in slot order). Only without the whole
        // call's (`whole`).
        let block_steps = (PROJECTION_ROWS / nb.max(1)).clamp(1, steps.max(1));
        let block_rows = if self.whole { 0 } else { block_steps * nb };
        let tasks = if parallel {
            projection_tasks(block_rows)
        } else {
            1
        };
        let mut inputs = InputBlock::new(seq, block_rows, tasks, lanes)?;
        let mut first =
            alloc::zeroed::<usize>(&[block_steps], "the first rows of a block's steps")?;
        for s in 0..steps {
            self.cancel.check()?;
            active.clear();
            active.extend(running(s));
            let n = active.len();
            if n == 0 {
                // Every row of the chunk has ended (rows only end as s grows).
                break;
            }
            let k = s % block_steps;
            if k == 0 && !self.whole {
                let end = (s + block_steps).min(steps);
                let mut count = 0;
                for (at, s2) in first.iter_mut().zip(s..end) {
                    *at = count;
                    count += running(s2).count();
                }
                let rows = (s..end).flat_map(|s2| running(s2).map(|(_, row)| row));
                inputs.project(isa, seq, &self.ih_panels[..], rows);
            }
            let sx = if self.whole {
                SharedMut::null()
            } else {
                SharedMut(inputs.products[first[k] * g4..].as_mut_ptr())
            };
            // Every row of the chunk running, in order, without a dropout
            // mask: the operand is the state h itself, and without zoneout
            // or a projection each row's m_t is its new state, which the
            // row kernels then write there (the product has read h by then).
            let in_place = n == nb && seq.variant.recurrent_keep.is_none();
            let m_in_h = in_place && !projects && !seq.variant.zoneout_h.is_on();
            for (j, &(b, row)) in active.iter().enumerate() {
                let src = if in_place {
                    &h[j * state..][..state]
                } else {
                    let dst = &mut h_in[j * state..][..state];
                    dst.copy_from_slice(&h[(b - b0) * state..][..state]);
                    if let Some(keep) = seq.variant.recurrent_keep {
                        for (d, &k) in dst.iter_mut().zip(&keep[b * state..][..state]) {
                            *d = *d * k;
                        }
                    }
                    dst
                };
                if !self.h_prev.0.is_null() {
                    // SAFETY: row `row` (R rows of `state`) of the cache's
                    // h_prev, which only this chunk writes.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr(),
                            self.h_prev.0.add(row * state),
                            state,
                        );
                    }
                }
            }
            match self.hh_panels {
                HhPanels::Elements(panels) => panel_product(
                    isa,
                    PanelProduct {
                        rows: n,
                        a: if in_place { &h } else { &h_in },
                        lda: state,
                        depth: state,
                        panels: &panels[..],
                        tiles: hp / lanes,
                        columns: Columns::Gates { hidden },
                        c: &mut sh,
                        ldc: g4,
                    },
                    &mut scratch,
                ),
                HhPanels::Bf16(panels) => panel_product(
                    isa,
                    PanelProduct {
                        rows: n,
                        a: if in_place { &h } else { &h_in },
                        lda: state,
                        depth: state,
                        panels: &panels[..],
                        tiles: hp / lanes,
                        columns: Columns::Gates { hidden },
                        c: &mut sh,
                        ldc: g4,
                    },
                    &mut scratch,
                ),
            }
            let step = ForwardStep {
                math: GateMath {
                    v: seq.variant,
                    ln: *self.ln,
                    bias: seq.bias,
                    hidden,
                },
                hidden,
                eps: self.eps,
                sx,
                sx_hat: self.sx_hat,
                moments,
                sh: sh.as_ptr(),
                caching: self.caching,
                whole: self.whole,
                gates,
                cells,
                sh_hat,
                c_hat,
                c: SharedMut(c.as_mut_ptr()),
                c_after: self.c_after,
                hp,
                m: SharedMut(if m_in_h {
                    h.as_mut_ptr()
                } else {
                    m.as_mut_ptr()
                }),
                record: self.record,
            };
            let active = &active;
            // Each row: its two 4H pre-activations normalised, c and h.
            let run_slot = |j: usize| {
                let (b, row) = active[j];
                dispatch::<E, _>(
                    isa,
                    ForwardRow {
                        step: &step,
                        j,
                        b: b - b0,
                        row,
                    },
                )
            };
            if parallel {
                each(n, n * 10 * hidden, run_slot);
            } else {
                (0..n).for_each(run_slot);
            }
            let h_t: &[E] = if projects {
                panel_product(
                    isa,
                    PanelProduct {
                        rows: n,
                        a: &m,
                        lda: hidden,
                        depth: hidden,
                        panels: &self.proj_panels[..],
                        tiles: state.next_multiple_of(E::PAD).div_ceil(4 * lanes),
                        columns: Columns::Outputs { outputs: state },
                        c: &mut h_new,
                        ldc: state,
                    },
                    &mut scratch,
                );
                &h_new
            } else {
                &m
            };
            // y_t = h_t, the state after zoneout.
            for (j, &(b, row)) in active.iter().enumerate() {
                let dst = &mut h[(b - b0) * state..][..state];
                if !m_in_h {
                    zone_mix(
                        seq.variant.zoneout_h,
                        row,
                        pp,
                        dst,
                        &h_t[j * state..][..state],
                    );
                }
                // SAFETY: row `row` of y (R rows of `state`), this chunk's.
                unsafe {
                    std::ptr::copy_nonoverlapping(dst.as_ptr(), self.y.0.add(row * state), state);
                }
            }
        }
        // SAFETY: rows b0.. of h_n and c_n, this chunk's.
        unsafe {
            std::ptr::copy_nonoverlapping(h.as_ptr(), self.h_n.0.add(b0 * state), nb * state);
            std::ptr::copy_nonoverlapping(c.as_ptr(), self.c_n.0.add(b0 * hidden), nb * hidden);
        }
        Ok(())
    }
}

/// The panels of w_hh for the forward's step product: elements, or bfloat16
/// for bf16 inference (widened in registers: the same values in the same FMA
/// chains as the rounded weights' element panels).
enum HhPanels<E> {
    Elements(Panels<E>),
    Bf16(Panels<Bf16>),
}

fn zero_cache_row<E: Float>(c: &mut LnCache<'_, E>, row: usize, hidden: usize, state: usize) {
    let g4 = 4 * hidden;
    c.cells[row * hidden..][..hidden].fill(E::ZERO);
    c.h_prev[row * state..][..state].fill(E::ZERO);
    c.sh_hat[row * g4..][..g4].fill(E::ZERO);
    c.moments[row * MOMENTS..][..MOMENTS].fill(E::ZERO);
    if let Some(cs) = c.c_state.as_mut() {
        if !cs.is_empty() {
            cs[row * hidden..][..hidden].fill(E::ZERO);
        }
    }
    // sx_hat of padded rows is the normalised input product like any other
    // row's (the reference keeps it): written by the forward's first product.
}

fn copy_or_zero<E: Float>(dst: &mut [E], src: Option<&[E]>) {
    match src {
        Some(s) => dst.copy_from_slice(s),
        None => dst.fill(E::ZERO),
    }
}

/// Zoneout of the state h of row `row` (mask rows `width_pad` apart): `state`
/// (h_{t−1} in) becomes h_t from the candidate `new`, as [`Zone::mix`] does
/// it (a select in training; z·prev + (1 − z)·new at inference).
fn zone_mix<E: Float>(zone: Zone<'_, E>, row: usize, width_pad: usize, state: &mut [E], new: &[E]) {
    match zone {
        Zone::Off => state.copy_from_slice(new),
        Zone::Keep(d) => {
            let half = E::from_f64(0.5);
            for ((s, &n), &k) in state.iter_mut().zip(new).zip(&d[row * width_pad..]) {
                if k < half {
                    *s = n;
                }
            }
        }
        Zone::Rate(z) => {
            let keep = E::ONE - z;
            for (s, &n) in state.iter_mut().zip(new) {
                *s = z * *s + keep * n;
            }
        }
    }
}

/// The split of [`Zone::split`] for the gradient `g` of the state h of row
/// `row`: `kept` gets the share of h_{t−1}, `g` keeps that of the candidate.
fn zone_split<E: Float>(
    zone: Zone<'_, E>,
    row: usize,
    width_pad: usize,
    g: &mut [E],
    kept: &mut [E],
) {
    match zone {
        Zone::Off => kept.fill(E::ZERO),
        Zone::Keep(d) => {
            let half = E::from_f64(0.5);
            for ((x, k), &m) in g.iter_mut().zip(kept.iter_mut()).zip(&d[row * width_pad..]) {
                if m < half {
                    *k = E::ZERO;
                } else {
                    *k = *x;
                    *x = E::ZERO;
                }
            }
        }
        Zone::Rate(z) => {
            let rest = E::ONE - z;
            for (x, k) in g.iter_mut().zip(kept.iter_mut()) {
                *k = z * *x;
                *x = rest * *x;
            }
        }
    }
}

/// The gate math of the LayerNorm LSTM, written once: the forward computes
/// each row's gates with it ([`ForwardRow`]) and [`gates`] and backward
/// rebuild them from the cache with it, so the rebuilt gates are the
/// forward's bits. a = (ŝ_x·γ_ih + β_ih) + b + (ŝ_h·γ_hh + β_hh) by gate
/// block, the peepholes' terms from c_{t−1} and c_t, the clip, the
/// activations.
#[derive(Clone, Copy)]
struct GateMath<'a, E> {
    v: Variant<'a, E>,
    ln: LayerNorm<'a, E>,
    bias: Option<&'a [E]>,
    hidden: usize,
}

/// The input a of the gate block at `o` (0, H, 2H, 3H), units u..:
/// (ŝ_x·γ_ih + β_ih) + b + (ŝ_h·γ_hh + β_hh). A function, not a closure, so
/// that it is inlined into the ISA's kernel (a closure that is not inlined
/// runs each SIMD operation as a call).
///
/// # Safety
/// `sx_hat`, `sh_hat` and the parameters given hold `o + h` elements.
#[inline(always)]
unsafe fn gate_input<E: Float, S: Simd<E = E>, const FULL: bool>(
    ln: &LayerNorm<'_, E>,
    bias: Option<&[E]>,
    sx_hat: *const E,
    sh_hat: *const E,
    o: usize,
    u: usize,
    h: usize,
) -> S {
    let zero = S::splat(E::ZERO);
    let one = S::splat(E::ONE);
    // SAFETY: forwarded from the caller.
    unsafe {
        let x = ld::<S, FULL>(sx_hat.add(o), u, h).mul(param::<S, FULL>(ln.w_ih, o, u, h, one));
        let x = x.add(param::<S, FULL>(ln.b_ih, o, u, h, zero));
        let y = ld::<S, FULL>(sh_hat.add(o), u, h).mul(param::<S, FULL>(ln.w_hh, o, u, h, one));
        let y = y.add(param::<S, FULL>(ln.b_hh, o, u, h, zero));
        x.add(param::<S, FULL>(bias, o, u, h, zero)).add(y)
    }
}

/// `z` clipped to [−c, c] with a clip c.
#[inline(always)]
fn clip<E: Float, S: Simd<E = E>>(z: S, c: Option<E>) -> S {
    match c {
        Some(c) => z.clamp(S::splat(E::ZERO - c), S::splat(c)),
        None => z,
    }
}

impl<E: Float> GateMath<'_, E> {
    /// Writes the activated gates i, f, g, o to `gates` (4H) and, when not
    /// null, the pre-activations z (peepholes added, before clip) to `pre`
    /// (4H), from the row's `sx_hat`, `sh_hat` (4H), `c_prev`, `c_new` (H).
    /// With peepholes and a null `c_new` (the forward, which computes c_t
    /// from these gates), o's block of `gates` (and of `pre`) holds z_o
    /// without its peephole term instead: [`GateMath::out_gate`] finishes
    /// it once c_t is known.
    ///
    /// # Safety
    /// Every pointer addresses its width of elements; `gates` and `pre` may
    /// be written (and may alias nothing read here).
    #[inline(always)]
    unsafe fn run<S: Simd<E = E>, const PLAIN: bool, const FULL: bool>(
        &self,
        sx_hat: *const E,
        sh_hat: *const E,
        c_prev: *const E,
        c_new: *const E,
        gates: *mut E,
        pre: *mut E,
    ) {
        let (v, ln, h) = (&self.v.gate_math_for::<PLAIN>(), &self.ln, self.hidden);
        let one = S::splat(E::ONE);
        let pp = v.peepholes.unwrap_or(&[]).as_ptr();
        let defer_o = v.peepholes.is_some() && c_new.is_null();
        // SAFETY: forwarded from the caller; the parameters hold 4H (H for
        // the peepholes' blocks) elements.
        unsafe {
            let mut u = 0;
            while u < h {
                // Not a closure: see `gate_input`.
                let mut z_i = gate_input::<E, S, FULL>(ln, self.bias, sx_hat, sh_hat, 0, u, h);
                let mut z_f = gate_input::<E, S, FULL>(ln, self.bias, sx_hat, sh_hat, h, u, h);
                let z_g = gate_input::<E, S, FULL>(ln, self.bias, sx_hat, sh_hat, 2 * h, u, h);
                let z_o = gate_input::<E, S, FULL>(ln, self.bias, sx_hat, sh_hat, 3 * h, u, h);
                if v.peepholes.is_some() {
                    let c_p = ld::<S, FULL>(c_prev, u, h);
                    z_i = z_i.add(ld::<S, FULL>(pp, u, h).mul(c_p));
                    z_f = z_f.add(ld::<S, FULL>(pp.add(2 * h), u, h).mul(c_p));
                }
                let ig = v.f.apply(clip(z_i, v.clip));
                let fg = if !v.forget_gate {
                    one
                } else if v.input_forget {
                    one.sub(ig)
                } else {
                    v.f.apply(clip(z_f, v.clip))
                };
                let gg = v.g.apply(clip(z_g, v.clip));
                let (z_o, og) = if defer_o {
                    (z_o, z_o)
                } else {
                    self.out_gate::<S, PLAIN, FULL>(z_o, c_new, u)
                };
                if !pre.is_null() {
                    st::<S, FULL>(z_i, pre, u, h);
                    st::<S, FULL>(z_f, pre.add(h), u, h);
                    st::<S, FULL>(z_g, pre.add(2 * h), u, h);
                    st::<S, FULL>(z_o, pre.add(3 * h), u, h);
                }
                st::<S, FULL>(ig, gates, u, h);
                st::<S, FULL>(fg, gates.add(h), u, h);
                st::<S, FULL>(gg, gates.add(2 * h), u, h);
                st::<S, FULL>(og, gates.add(3 * h), u, h);
                u += S::LANES;
            }
        }
    }

    /// o's pre-activation `z_o` (units u..) with its peephole term on c_t
    /// added, and o: (z_o, σ(clip(z_o))).
    ///
    /// # Safety
    /// With peepholes, `c_new` addresses H elements.
    #[inline(always)]
    unsafe fn out_gate<S: Simd<E = E>, const PLAIN: bool, const FULL: bool>(
        &self,
        z_o: S,
        c_new: *const E,
        u: usize,
    ) -> (S, S) {
        let (v, h) = (&self.v.gate_math_for::<PLAIN>(), self.hidden);
        let z_o = match v.peepholes {
            // SAFETY: forwarded from the caller; the peepholes hold 3H.
            Some(p) => unsafe {
                z_o.add(ld::<S, FULL>(p.as_ptr().add(h), u, h).mul(ld::<S, FULL>(c_new, u, h)))
            },
            None => z_o,
        };
        (z_o, v.f.apply(clip(z_o, v.clip)))
    }
}

// ---------------------------------------------------------------------------
// Backward

/// What the rows of one backward step read and write (as [`ForwardStep`]).
struct BackwardStep<'a, E> {
    v: Variant<'a, E>,
    ln: LayerNorm<'a, E>,
    hidden: usize,
    cache: LnCacheRef<'a, E>,
    /// c_{t−1} of each slot j (n, H): the previous step's cell or c0.
    c_prev: *const E,
    /// dm of each slot j (n, H).
    dm: *const E,
    /// The state dc (B, H): dL/dc_t in, dL/dc_{t−1} out (dL/dc_t of the
    /// state after zoneout). `hp`: the zoneout mask's row stride.
    dc: SharedMut<E>,
    hp: usize,
    /// dz (n, 4H) and dn (n, H) of each slot j, which the step's sums read
    /// while they are in cache ([`StepSums`]); ds_x (R, 4H) by row, the
    /// gradient through the normalisation of s_x (here, from the row's dz
    /// still in cache, rather than in a pass over every row after the
    /// loop); ds_h of each slot j (n, 4H): the step buffer, or the step's rows
    /// of the ds_h kept for dW_hh in place, `dsh_stride` apart.
    dz: SharedMut<E>,
    dn: SharedMut<E>,
    dsx: SharedMut<E>,
    dsh: SharedMut<E>,
    /// Elements from slot j's ds_h to slot j + 1's: 4H in the step buffer,
    /// more where the slots are the step's rows of `dsh_all` in place.
    dsh_stride: usize,
    /// ĉ_t of each slot j (n, H), rebuilt from c_t and its moments
    /// ([`renormalise`]) for the step's row kernel and sums.
    c_hat: SharedMut<E>,
    /// The gates' arithmetic, to rebuild each row's gates.
    gate_math: GateMath<'a, E>,
    /// m_t (R, H) by row, with a projection (else null).
    m: SharedMut<E>,
    /// ‖dc_t‖ of each slot j, with the flow (else null).
    flow_c: SharedMut<E>,
}

// SAFETY: as for `ForwardStep`.
unsafe impl<E: Send> Send for BackwardStep<'_, E> {}
// SAFETY: as above.
unsafe impl<E: Sync> Sync for BackwardStep<'_, E> {}

struct BackwardRow<'a, 'b, E> {
    step: &'b BackwardStep<'a, E>,
    j: usize,
    b: usize,
    row: usize,
}

impl<E: Float> Kernel<E> for BackwardRow<'_, '_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        let (v, hidden) = (self.step.v, self.step.hidden);
        run_row::<E, S, _>(self, &v, hidden);
    }
}

impl<E: Float> RowBody<E> for BackwardRow<'_, '_, E> {
    #[inline(always)]
    fn body<S: Simd<E = E>, const PLAIN: bool, const FULL: bool>(self) {
        let sp = self.step;
        let (h, g4) = (sp.hidden, 4 * sp.hidden);
        let (j, b, row) = (self.j, self.b, self.row);
        let v = &sp.v.gate_math_for::<PLAIN>();
        let ln = &sp.ln;
        let cache = &sp.cache;
        let zero = S::splat(E::ZERO);
        let one = S::splat(E::ONE);
        let through = |d: S, z: S| match v.clip {
            Some(c) => S::splat(c).select_lt(z.abs(), zero, d),
            None => d,
        };
        // SAFETY: as in `ForwardRow`: row `row` of the R-row buffers, slot `j`
        // of the step's, batch row `b` of the state, each written by this row
        // alone; the cache's lengths were checked.
        unsafe {
            // The gates, in dz's row, and for the variants whose backward
            // needs them the pre-activations, in ds_x's row, rebuilt as
            // forward computed them: each place is read (below) before it
            // is written with what it is for.
            let dz = sp.dz.0.add(j * g4);
            let dsx = sp.dsx.0.add(row * g4);
            let c_prev = sp.c_prev.add(j * h);
            let pre: *mut E = if v.caches_pre() {
                dsx
            } else {
                std::ptr::null_mut()
            };
            sp.gate_math.run::<S, PLAIN, FULL>(
                cache.sx_hat.as_ptr().add(row * g4),
                cache.sh_hat.as_ptr().add(row * g4),
                c_prev,
                cache.cells.as_ptr().add(row * h),
                dz,
                pre,
            );
            let gates = dz.cast_const();
            let kept = cache.moments.as_ptr().add(row * MOMENTS);
            let (r_x, r_h, r_c, mu_c) = (*kept, *kept.add(1), *kept.add(2), *kept.add(3));
            // ĉ_t, the bits forward computed (`normalise`).
            let c_hat = sp.c_hat.0.add(j * h);
            renormalise::<S>(
                std::slice::from_raw_parts(cache.cells.as_ptr().add(row * h), h),
                std::slice::from_raw_parts_mut(c_hat, h),
                mu_c,
                r_c,
            );
            let c_hat = c_hat.cast_const();
            let dm = sp.dm.add(j * h);
            let dn = sp.dn.0.add(j * h);
            // dn = σ_h'(n)·(dm ⊙ o), its gain's gradient on, for the
            // normalisation of c_t; m_t for dW_hr; and dz_o, which needs
            // σ_h(n) too, in place of o in dz's row (o is not read again).
            let z = |k: usize, u: usize| {
                if pre.is_null() {
                    zero // never read: the activations need no input (caches_pre)
                } else {
                    ld::<S, FULL>(pre.add(k * h), u, h)
                }
            };
            let mut u = 0;
            while u < h {
                let n = ld::<S, FULL>(c_hat, u, h).mul(param::<S, FULL>(ln.w_c, 0, u, h, one));
                let n = n.add(param::<S, FULL>(ln.b_c, 0, u, h, zero));
                let hn = v.h.apply(n);
                let og = ld::<S, FULL>(gates.add(3 * h), u, h);
                let d = ld::<S, FULL>(dm, u, h);
                st::<S, FULL>(v.h.backprop(d.mul(og), n, hn), dn, u, h);
                if !sp.m.0.is_null() {
                    st::<S, FULL>(og.mul(hn), sp.m.0.add(row * h), u, h);
                }
                let z_o = z(3, u);
                let dz_o = through(v.f.backprop(d.mul(hn), clip(z_o, v.clip), og), z_o);
                st::<S, FULL>(dz_o, dz.add(3 * h), u, h);
                u += S::LANES;
            }
            // The gradient reaching c_t through its normalisation, in dsh's
            // first H as scratch.
            let scratch = sp.dsh.0.add(j * sp.dsh_stride);
            let (dn_row, c_hat_row) = (
                std::slice::from_raw_parts(dn, h),
                std::slice::from_raw_parts(c_hat, h),
            );
            normalise_grad::<S>(dn_row, ln.w_c, c_hat_row, scratch, r_c);
            // The gate derivatives (docs/variants.md, 'Backward').
            let pp = v.peepholes.unwrap_or(&[]).as_ptr();
            let dc = sp.dc.0.add(b * h);
            let mut sq = 0.0f64;
            let mut u = 0;
            while u < h {
                let z = |k: usize| z(k, u);
                let gate = |k: usize| ld::<S, FULL>(gates.add(k * h), u, h);
                let (ig, fg, gg) = (gate(0), gate(1), gate(2));
                let cp = ld::<S, FULL>(c_prev, u, h);
                // Zoneout of c: dL/dc_t splits into the share of c_{t−1}
                // (added to dc_prev below) and that of the candidate c̃_t.
                let (dc_kept, dc_next) = v.zoneout_c.split(row, sp.hp, u, ld::<S, FULL>(dc, u, h));
                let mut dcv = dc_next.add(ld::<S, FULL>(scratch, u, h));
                if v.peepholes.is_some() {
                    let dz_o = ld::<S, FULL>(dz.add(3 * h), u, h);
                    dcv = dcv.add(dz_o.mul(ld::<S, FULL>(pp.add(h), u, h)));
                }
                if !sp.flow_c.0.is_null() {
                    let mut lanes = [E::ZERO; 16];
                    store_n::<S>(dcv, lanes.as_mut_ptr(), h - u);
                    for x in &lanes[..S::LANES.min(h - u)] {
                        sq += x.to_f64() * x.to_f64();
                    }
                }
                let mut di = dcv.mul(gg);
                if v.input_forget {
                    di = di.sub(dcv.mul(cp));
                }
                let z_i = z(0);
                let dz_i = through(v.f.backprop(di, clip(z_i, v.clip), ig), z_i);
                let z_g = z(2);
                let dz_g = through(v.g.backprop(dcv.mul(ig), clip(z_g, v.clip), gg), z_g);
                let dz_f = if v.forget_gate && !v.input_forget {
                    let z_f = z(1);
                    through(v.f.backprop(dcv.mul(cp), clip(z_f, v.clip), fg), z_f)
                } else {
                    zero
                };
                let mut dc_prev = dcv.mul(fg);
                if v.peepholes.is_some() {
                    dc_prev = dc_prev
                        .add(dz_i.mul(ld::<S, FULL>(pp, u, h)))
                        .add(dz_f.mul(ld::<S, FULL>(pp.add(2 * h), u, h)));
                }
                if v.zoneout_c.is_on() {
                    dc_prev = dc_prev.add(dc_kept);
                }
                st::<S, FULL>(dc_prev, dc, u, h);
                st::<S, FULL>(dz_i, dz, u, h);
                st::<S, FULL>(dz_f, dz.add(h), u, h);
                st::<S, FULL>(dz_g, dz.add(2 * h), u, h);
                u += S::LANES;
            }
            if !sp.flow_c.0.is_null() {
                *sp.flow_c.0.add(j) = E::from_f64(sq.sqrt());
            }
            // ds_h and ds_x, the gradients through the normalisations of s_h
            // and s_x, from dz and each one's gain.
            let dz_row = std::slice::from_raw_parts(dz.cast_const(), g4);
            let sh_hat = std::slice::from_raw_parts(cache.sh_hat.as_ptr().add(row * g4), g4);
            normalise_grad::<S>(
                dz_row,
                ln.w_hh,
                sh_hat,
                sp.dsh.0.add(j * sp.dsh_stride),
                r_h,
            );
            let sx_hat = std::slice::from_raw_parts(cache.sx_hat.as_ptr().add(row * g4), g4);
            normalise_grad::<S>(dz_row, ln.w_ih, sx_hat, dsx, r_x);
        }
    }
}

/// The sums over (step, row) of the bias, gain and peephole gradients (None
/// or null: not wanted), continued by each step's rows right after the
/// step's row kernels, while their dz, dn, ĉ and cache rows are in cache: `db`
/// = Σ dz, `dw_ln_ih` = Σ dz ⊙ ŝ_x, `dw_ln_hh` = Σ dz ⊙ ŝ_h (4H each),
/// `dw_ln_c` = Σ dn ⊙ ĉ, `db_ln_c` = Σ dn (H each) and the peepholes' (3H,
/// as `lstm::peephole_terms`). The steps come last to first and their rows
/// by ascending batch row: `lstm.rs`'s `processing_order`, that of every
/// sum over (step, row), which a checkpointed pass's segments continue.
/// Columns in blocks over the pool's threads, each column one chain on one
/// thread: the same bits for any thread count.
struct StepSums<'a, E> {
    isa: Isa,
    hidden: usize,
    db: SharedMut<E>,
    dw_ln_ih: SharedMut<E>,
    dw_ln_hh: SharedMut<E>,
    dw_ln_c: SharedMut<E>,
    db_ln_c: SharedMut<E>,
    dpeepholes: SharedMut<E>,
    cache: LnCacheRef<'a, E>,
}

// SAFETY: each column of the sums is written by one task alone (`add`); the
// rest is read.
unsafe impl<E: Send> Send for StepSums<'_, E> {}
// SAFETY: as above.
unsafe impl<E: Sync> Sync for StepSums<'_, E> {}

/// `len` elements of a sum at `k0`, or None where it is not wanted (null).
///
/// # Safety
/// A non-null `p` addresses at least `k0 + len` elements that no one else
/// reads or writes meanwhile.
unsafe fn sum_columns<'s, E>(p: &SharedMut<E>, k0: usize, len: usize) -> Option<&'s mut [E]> {
    // SAFETY: forwarded from the caller.
    (!p.0.is_null()).then(|| unsafe { std::slice::from_raw_parts_mut(p.0.add(k0), len) })
}

/// `sum[k] += a[k]` (with `b`: `a[k] · b[k]`), as `lstm::ordered_column_sums`
/// adds one row.
#[inline(always)]
fn add_row<E: Float>(sum: &mut [E], a: &[E], b: Option<&[E]>) {
    match b {
        Some(b) => {
            for ((s, &x), &y) in sum.iter_mut().zip(a).zip(b) {
                *s = *s + x * y;
            }
        }
        None => {
            for (s, &x) in sum.iter_mut().zip(a) {
                *s = *s + x;
            }
        }
    }
}

/// One block of columns of a step's sums ([`StepSums::add`]): compiled for
/// the dispatched ISA, so that its loops run a vector at a time (the same
/// operations, a multiply then an add, element by element: the same bits on
/// every ISA).
struct StepSumBlock<'s, 'a, E> {
    sums: &'s StepSums<'a, E>,
    blk: usize,
    active: &'s [(usize, usize)],
    dz: &'s [E],
    dn: &'s [E],
    c_prev: &'s [E],
    c_hat: &'s [E],
}

impl<E: Float> Kernel<E> for StepSumBlock<'_, '_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        self.sums.add_block(
            self.blk,
            self.active,
            self.dz,
            self.dn,
            self.c_prev,
            self.c_hat,
        );
    }
}

impl<E: Float> StepSums<'_, E> {
    /// Adds the terms of a step's rows: `active[j]` = (batch row, layout
    /// row) of slot j, by ascending batch row; `dz` (n, 4H), `dn` (n, H),
    /// `c_prev` and `c_hat` (n, H) by slot.
    fn add(&self, active: &[(usize, usize)], dz: &[E], dn: &[E], c_prev: &[E], c_hat: &[E]) {
        let (h, g4) = (self.hidden, 4 * self.hidden);
        let blocks = g4.div_ceil(DB_COLUMN_BLOCK) + h.div_ceil(DB_COLUMN_BLOCK);
        // Each row: 3 sums over 4H, 2 over H.
        each(blocks, active.len() * 14 * h, |blk| {
            let block = StepSumBlock {
                sums: self,
                blk,
                active,
                dz,
                dn,
                c_prev,
                c_hat,
            };
            dispatch::<E, _>(self.isa, block);
        });
    }

    /// [`StepSums::add`] for block `blk` of the columns: the blocks of the
    /// 4H-wide sums, then those of the H-wide ones.
    #[inline(always)]
    fn add_block(
        &self,
        blk: usize,
        active: &[(usize, usize)],
        dz: &[E],
        dn: &[E],
        c_prev: &[E],
        c_hat: &[E],
    ) {
        let (h, g4) = (self.hidden, 4 * self.hidden);
        let wide = g4.div_ceil(DB_COLUMN_BLOCK);
        let cache = &self.cache;
        if blk < wide {
            let k0 = blk * DB_COLUMN_BLOCK;
            let len = DB_COLUMN_BLOCK.min(g4 - k0);
            // SAFETY: columns k0.. of this block, this task's alone; the
            // sums given hold 4H elements.
            let (mut db, mut ih, mut hh) = unsafe {
                (
                    sum_columns(&self.db, k0, len),
                    sum_columns(&self.dw_ln_ih, k0, len),
                    sum_columns(&self.dw_ln_hh, k0, len),
                )
            };
            for (j, &(_, row)) in active.iter().enumerate() {
                let d = &dz[j * g4 + k0..][..len];
                let at = row * g4 + k0;
                if let Some(db) = db.as_deref_mut() {
                    add_row(db, d, None);
                }
                if let Some(ih) = ih.as_deref_mut() {
                    add_row(ih, d, Some(&cache.sx_hat[at..][..len]));
                }
                if let Some(hh) = hh.as_deref_mut() {
                    add_row(hh, d, Some(&cache.sh_hat[at..][..len]));
                }
            }
        } else {
            let k0 = (blk - wide) * DB_COLUMN_BLOCK;
            let len = DB_COLUMN_BLOCK.min(h - k0);
            // SAFETY: as above; the c gains' sums hold H elements, the
            // peepholes' 3H (p_i, p_o, p_f), their columns k0.. of each.
            let (mut wc, mut bc, mut dp) = unsafe {
                (
                    sum_columns(&self.dw_ln_c, k0, len),
                    sum_columns(&self.db_ln_c, k0, len),
                    (!self.dpeepholes.0.is_null()).then(|| {
                        [0, 1, 2].map(|k| {
                            std::slice::from_raw_parts_mut(self.dpeepholes.0.add(k * h + k0), len)
                        })
                    }),
                )
            };
            for (j, &(_, row)) in active.iter().enumerate() {
                let d = &dn[j * h + k0..][..len];
                if let Some(wc) = wc.as_deref_mut() {
                    add_row(wc, d, Some(&c_hat[j * h + k0..][..len]));
                }
                if let Some(bc) = bc.as_deref_mut() {
                    add_row(bc, d, None);
                }
                if let Some([dp_i, dp_o, dp_f]) = dp.as_mut() {
                    // dp_i += dz_i ⊙ c_{t−1}, dp_f += dz_f ⊙ c_{t−1},
                    // dp_o += dz_o ⊙ c_t.
                    let z = &dz[j * g4 + k0..];
                    let cp = &c_prev[j * h + k0..][..len];
                    let c = &cache.cells[row * h + k0..][..len];
                    for u in 0..len {
                        dp_i[u] = dp_i[u] + z[u] * cp[u];
                        dp_f[u] = dp_f[u] + z[h + u] * cp[u];
                        dp_o[u] = dp_o[u] + z[3 * h + u] * c[u];
                    }
                }
            }
        }
    }
}

/// Backward pass (BPTT) of a [`forward`] with `cache`; the seeds None are
/// zeros. Once `cancel` is set, returns [`Error::Interrupted`] at the next
/// step.
pub fn backward<E: Float>(
    seq: &Sequence<'_, E>,
    ln: &LayerNorm<'_, E>,
    cache: LnCacheRef<'_, E>,
    seeds: Seeds<'_, E>,
    grads: LnGrads<'_, E>,
    cancel: &Cancel,
) -> Result<()> {
    let rows = check_grads(seq, ln, &seeds, &grads)?;
    check_cache(seq, rows, cache.lens())?;
    if !seq.runs() {
        return backward_without_steps(seeds, grads);
    }
    backward_pass(seq, ln, cache, seeds, grads, rows, false, cancel)
}

/// One row's [`GateMath`] on the dispatched ISA (pointers as it takes them).
struct GateRow<'a, 'b, E> {
    math: &'b GateMath<'a, E>,
    sx_hat: *const E,
    sh_hat: *const E,
    c_prev: *const E,
    c_new: *const E,
    gates: *mut E,
    pre: *mut E,
}

impl<E: Float> Kernel<E> for GateRow<'_, '_, E> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        let (v, hidden) = (self.math.v, self.math.hidden);
        run_row::<E, S, _>(self, &v, hidden);
    }
}

impl<E: Float> RowBody<E> for GateRow<'_, '_, E> {
    #[inline(always)]
    fn body<S: Simd<E = E>, const PLAIN: bool, const FULL: bool>(self) {
        // SAFETY: `gates` made the pointers from rows of checked lengths.
        unsafe {
            self.math.run::<S, PLAIN, FULL>(
                self.sx_hat,
                self.sh_hat,
                self.c_prev,
                self.c_new,
                self.gates,
                self.pre,
            );
        }
    }
}

/// The activated gates (R, 4H, blocks i, f, g, o) and, with `pre`, the
/// pre-activations (R, 4H; peepholes added, before clip) of a [`forward`]
/// with `cache`, rebuilt from it with the forward's arithmetic ([`GateMath`],
/// the forward's bits): the cache does not keep them. With `block` k (0..4:
/// i, f, g, o), `gates` is that gate alone (R, H), and `pre` must be None.
/// Rows of padded steps are zero.
pub fn gates<E: Float>(
    seq: &Sequence<'_, E>,
    ln: &LayerNorm<'_, E>,
    cache: LnCacheRef<'_, E>,
    gates: &mut [E],
    pre: Option<&mut [E]>,
    block: Option<usize>,
) -> Result<()> {
    seq.check()?;
    let rows = seq.rows()?;
    ln.check(seq.dims.hidden)?;
    check_cache(seq, rows, cache.lens())?;
    let Dims { batch, hidden, .. } = seq.dims;
    let g4 = 4 * hidden;
    let width = match block {
        None => g4,
        Some(k) if k < 4 && pre.is_none() => hidden,
        Some(k) => {
            return Err(Error::Value(format!(
                "block: expected a gate block 0..4 without pre, got {k}"
            )))
        }
    };
    expect("gates", gates.len(), rows * width)?;
    // With a block, each row's four gates go here first.
    let mut row_gates =
        alloc::zeroed::<E>(&[if block.is_some() { g4 } else { 0 }], "a row's gates")?;
    let mut pre = pre;
    expect_opt("pre", pre.as_ref().map(|p| p.len()), rows * g4)?;
    gates.fill(E::ZERO);
    if let Some(p) = pre.as_mut() {
        p.fill(E::ZERO);
    }
    // c_{t−1} of a step: the state after zoneout with zoneout of c.
    let states = if seq.variant.zoneout_c.is_on() {
        cache.c_state.unwrap_or(&[])
    } else {
        cache.cells
    };
    let zeros = alloc::zeroed::<E>(&[hidden], "a zero state c")?;
    let isa = Isa::active();
    let math = GateMath {
        v: seq.variant,
        ln: *ln,
        bias: seq.bias,
        hidden,
    };
    for b in 0..batch {
        for s in 0..seq.length(b) {
            let row = row_of(seq, time_of(seq, s, b), b);
            let c_prev: &[E] = if s == 0 {
                seq.c0.map_or(&zeros[..], |c0| &c0[b * hidden..][..hidden])
            } else {
                &states[row_of(seq, time_of(seq, s - 1, b), b) * hidden..][..hidden]
            };
            let pre_row = match pre.as_mut() {
                Some(p) => p[row * g4..][..g4].as_mut_ptr(),
                None => std::ptr::null_mut(),
            };
            let out = match block {
                Some(_) => &mut row_gates[..],
                None => &mut gates[row * g4..][..g4],
            };
            dispatch::<E, _>(
                isa,
                GateRow {
                    math: &math,
                    sx_hat: cache.sx_hat[row * g4..][..g4].as_ptr(),
                    sh_hat: cache.sh_hat[row * g4..][..g4].as_ptr(),
                    c_prev: c_prev.as_ptr(),
                    c_new: cache.cells[row * hidden..][..hidden].as_ptr(),
                    gates: out.as_mut_ptr(),
                    pre: pre_row,
                },
            );
            if let Some(k) = block {
                gates[row * hidden..][..hidden].copy_from_slice(&row_gates[k * hidden..][..hidden]);
            }
        }
    }
    Ok(())
}

/// The checks of [`backward`]'s arguments but the cache: the sequence, the
/// normalisations, the seeds and the gradients' sizes. Returns the rows, T·B.
pub(crate) fn check_grads<E: Float>(
    seq: &Sequence<'_, E>,
    ln: &LayerNorm<'_, E>,
    seeds: &Seeds<'_, E>,
    grads: &LnGrads<'_, E>,
) -> Result<usize> {
    let Dims {
        batch,
        input,
        hidden,
        ..
    } = seq.dims;
    let state = seq.state();
    let g4 = 4 * hidden;
    seq.check()?;
    let rows = seq.rows()?;
    ln.check(hidden)?;
    if let Some(kept) = seq.panels {
        kept.check_not_bf16()?;
    }
    expect_opt("dy", seeds.dy.map(<[E]>::len), rows * state)?;
    expect_opt("dh_n", seeds.dh_n.map(<[E]>::len), batch * state)?;
    expect_opt("dc_n", seeds.dc_n.map(<[E]>::len), batch * hidden)?;
    expect("dx", grads.dx.len(), rows * input)?;
    expect("dh0", grads.dh0.len(), batch * state)?;
    expect("dc0", grads.dc0.len(), batch * hidden)?;
    expect("dw_ih", grads.dw_ih.len(), g4 * input)?;
    expect("dw_hh", grads.dw_hh.len(), g4 * state)?;
    expect_opt("db", grads.db.as_ref().map(|d| d.len()), g4)?;
    expect_opt(
        "dpeepholes",
        grads.dpeepholes.as_ref().map(|d| d.len()),
        3 * hidden,
    )?;
    if grads.dpeepholes.is_some() != seq.variant.peepholes.is_some() {
        return Err(Error::Value(
            "dpeepholes: wanted exactly with peepholes".into(),
        ));
    }
    expect_opt(
        "dw_hr",
        grads.dw_hr.as_ref().map(|d| d.len()),
        state * hidden,
    )?;
    if grads.dw_hr.is_some() != seq.variant.w_hr.is_some() {
        return Err(Error::Value(
            "dw_hr: wanted exactly with a projection".into(),
        ));
    }
    if let Some([fh, fc]) = &grads.flow {
        expect("flow (dh)", fh.len(), rows)?;
        expect("flow (dc)", fc.len(), rows)?;
    }
    if let Some([dz, dsh]) = &grads.scratch {
        expect("scratch (dz)", dz.len(), rows * g4)?;
        expect("scratch (ds_h)", dsh.len(), rows * g4)?;
    }
    expect_opt("dw_ln_ih", grads.dw_ln_ih.as_ref().map(|d| d.len()), g4)?;
    expect_opt("dw_ln_hh", grads.dw_ln_hh.as_ref().map(|d| d.len()), g4)?;
    expect_opt("dw_ln_c", grads.dw_ln_c.as_ref().map(|d| d.len()), hidden)?;
    expect_opt("db_ln_c", grads.db_ln_c.as_ref().map(|d| d.len()), hidden)?;
    Ok(rows)
}

/// [`backward`] of a checked call in which no row has a step to run: the
/// gradients of the initial states are the seeds, every other gradient is
/// zero.
pub(crate) fn backward_without_steps<E: Float>(
    seeds: Seeds<'_, E>,
    grads: LnGrads<'_, E>,
) -> Result<()> {
    let LnGrads {
        dx,
        dh0,
        dc0,
        dw_ih,
        dw_hh,
        db,
        dpeepholes,
        dw_hr,
        flow,
        dw_ln_ih,
        dw_ln_hh,
        dw_ln_c,
        db_ln_c,
        ..
    } = grads;
    copy_or_zero(dh0, seeds.dh_n);
    copy_or_zero(dc0, seeds.dc_n);
    let [fh, fc] = flow.unwrap_or_default();
    for d in [dx, dw_ih, dw_hh, fh, fc] {
        d.fill(E::ZERO);
    }
    for d in [db, dpeepholes, dw_hr, dw_ln_ih, dw_ln_hh, dw_ln_c, db_ln_c]
        .into_iter()
        .flatten()
    {
        d.fill(E::ZERO);
    }
    Ok(())
}

/// [`backward`] of a checked call in which some row runs, over `rows`
/// (T·B) rows. With `accumulate` the weight, bias, gain and peephole
/// gradients continue the sums already in `grads` (a later segment of the
/// same sequence, `checkpoint.rs`) instead of starting from zero; every other
/// gradient is written afresh.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_pass<E: Float>(
    seq: &Sequence<'_, E>,
    ln: &LayerNorm<'_, E>,
    cache: LnCacheRef<'_, E>,
    seeds: Seeds<'_, E>,
    grads: LnGrads<'_, E>,
    rows: usize,
    accumulate: bool,
    cancel: &Cancel,
) -> Result<()> {
    let Dims {
        steps,
        batch,
        input,
        hidden,
    } = seq.dims;
    let state = seq.state();
    let g4 = 4 * hidden;
    let LnGrads {
        dx,
        dh0,
        dc0,
        dw_ih,
        dw_hh,
        db,
        dpeepholes,
        mut dw_hr,
        mut flow,
        scratch,
        dw_ln_ih,
        dw_ln_hh,
        dw_ln_c,
        db_ln_c,
    } = grads;
    copy_or_zero(dh0, seeds.dh_n);
    copy_or_zero(dc0, seeds.dc_n);
    if let Some([fh, fc]) = flow.as_mut() {
        fh.fill(E::ZERO);
        fc.fill(E::ZERO);
    }
    let isa = Isa::active();
    let workers = pool::workers()?;
    let (_, _claim) = claim(&workers, Split::Batch, cancel)?;
    let projects = seq.variant.w_hr.is_some();
    let (hp, pp) = (hidden_pad::<E>(hidden), hidden_pad::<E>(state));
    // c_{t−1} of a step: the state after zoneout with zoneout of c.
    let states = if seq.variant.zoneout_c.is_on() {
        cache.c_state.unwrap_or(&[])
    } else {
        cache.cells
    };

    let body = || -> Result<()> {
        // By row: ds_x (in `scratch`'s dz), ds_h; with a projection dh_t and
        // m_t. Rows of padded steps stay zero.
        let (mut own_dz, mut own_dsh);
        let (dsx, dsh_all): (&mut [E], &mut [E]) = match scratch {
            Some([dz, dsh]) => {
                // Only the padded steps' rows keep what they held: zero them.
                for b in 0..batch {
                    for t in seq.length(b)..steps {
                        let row = row_of(seq, t, b);
                        dz[row * g4..][..g4].fill(E::ZERO);
                        dsh[row * g4..][..g4].fill(E::ZERO);
                    }
                }
                (dz, dsh)
            }
            None => {
                own_dz = alloc::zeroed::<E>(&[rows, g4], "the gate gradients")?;
                own_dsh = alloc::zeroed::<E>(&[rows, g4], "the recurrent products' gradients")?;
                (&mut own_dz, &mut own_dsh)
            }
        };
        let pr = if projects { rows } else { 0 };
        let mut dh_steps = alloc::zeroed::<E>(&[pr, state], "the dh of every step")?;
        let mut m_all = alloc::zeroed::<E>(&[pr, hidden], "the m of every step")?;
        // Step buffers of the running rows, and the state.
        let mut dh_t = alloc::zeroed::<E>(&[batch, state], "dh_t of a step")?;
        let zone_h = seq.variant.zoneout_h.is_on();
        let mut dh_kept = alloc::zeroed::<E>(
            &[if zone_h { batch } else { 0 }, state],
            "the zoneout share of dh_{t-1}",
        )?;
        let mut dm = alloc::zeroed::<E>(&[batch, hidden], "dm of a step")?;
        let mut dsh = alloc::zeroed::<E>(&[batch, g4], "ds_h of a step")?;
        let mut dz = alloc::zeroed::<E>(&[batch, g4], "dz of a step")?;
        let mut dn = alloc::zeroed::<E>(&[batch, hidden], "the normalised cells' gradients")?;
        let mut dh_back = alloc::zeroed::<E>(&[batch, state], "dh_{t-1} of a step")?;
        let mut c_prev = alloc::zeroed::<E>(&[batch, hidden], "c_{t-1} of a step")?;
        let mut c_hat = alloc::zeroed::<E>(&[batch, hidden], "the normalised cells of a step")?;
        let mut flow_c = alloc::zeroed::<E>(&[batch], "the flow of a step")?;
        let mut dh = alloc::zeroed::<E>(&[batch, state], "the state dh")?;
        dh.copy_from_slice(dh0);
        let mut dc = alloc::zeroed::<E>(&[batch, hidden], "the state dc")?;
        dc.copy_from_slice(dc0);
        // w_hh packed once for dh_{t−1} = ds_h·W_hh over the dense 4H (gate
        // rows unpadded, like ds_h), and the projection's for dm = dh_t·W_hr;
        // kept by prepared weights where their layout is the same.
        let lanes = isa.lanes::<E>();
        let hh_panels: Panels<E> = match seq.panels {
            Some(kept) if hidden == hp => kept.backward(seq.w_hh, hidden, hp, state, lanes)?,
            _ => pack::backward_panels(seq.w_hh, hidden, hidden, state, lanes)?.into(),
        };
        let proj_panels: Panels<E> = match (seq.variant.w_hr, seq.panels) {
            (None, _) => Panels::default(),
            (Some(w_hr), Some(kept)) => kept.projection_backward(w_hr, state, hidden, lanes)?,
            (Some(w_hr), None) => {
                pack::projection_backward_panels(w_hr, state, hidden, lanes)?.into()
            }
        };
        let mut scratch =
            ProductScratch::for_threads::<E>(threads_here(), batch, g4.max(state), lanes)?;
        // The sums over (step, row), continued step by step.
        let mut sums = [db, dw_ln_ih, dw_ln_hh, dw_ln_c, db_ln_c, dpeepholes];
        if !accumulate {
            for d in sums.iter_mut().flatten() {
                d.fill(E::ZERO);
            }
        }
        let [db, dw_ln_ih, dw_ln_hh, dw_ln_c, db_ln_c, dpeepholes] =
            sums.map(|d| d.map_or(SharedMut::null(), |d| SharedMut(d.as_mut_ptr())));
        let step_sums = StepSums {
            isa,
            hidden,
            db,
            dw_ln_ih,
            dw_ln_hh,
            dw_ln_c,
            db_ln_c,
            dpeepholes,
            cache,
        };
        let mut active: Vec<(usize, usize)> = alloc::with_capacity(batch, "the running rows")?;
        for s in (0..steps).rev() {
            cancel.check()?;
            active.clear();
            active.extend(
                (0..batch)
                    .filter(|&b| seq.length(b) > s)
                    .map(|b| (b, row_of(seq, time_of(seq, s, b), b))),
            );
            let n = active.len();
            for (j, &(b, row)) in active.iter().enumerate() {
                let d = &mut dh_t[j * state..][..state];
                d.copy_from_slice(&dh[b * state..][..state]);
                if let Some(dy) = seeds.dy {
                    for (x, &y) in d.iter_mut().zip(&dy[row * state..][..state]) {
                        *x = *x + y;
                    }
                }
                if let Some([fh, _]) = flow.as_mut() {
                    // ‖dL/dh_t‖ of the state, before the zoneout split.
                    let t = time_of(seq, s, b);
                    // SAFETY: the scalar path runs on every CPU.
                    let (_, sq) = unsafe { pair_sums::<E::Scalar>(Rows::of(d), E::ZERO) };
                    fh[t * batch + b] = E::from_f64(sq.to_f64().sqrt());
                }
                if zone_h {
                    let kept = &mut dh_kept[j * state..][..state];
                    zone_split(seq.variant.zoneout_h, row, pp, d, kept);
                }
                if projects {
                    dh_steps[row * state..][..state].copy_from_slice(d);
                }
                let cp = &mut c_prev[j * hidden..][..hidden];
                if s == 0 {
                    match seq.c0 {
                        Some(c0) => cp.copy_from_slice(&c0[b * hidden..][..hidden]),
                        None => cp.fill(E::ZERO),
                    }
                } else {
                    let before = row_of(seq, time_of(seq, s - 1, b), b);
                    cp.copy_from_slice(&states[before * hidden..][..hidden]);
                }
            }
            if projects {
                panel_product(
                    isa,
                    PanelProduct {
                        rows: n,
                        a: &dh_t,
                        lda: state,
                        depth: state,
                        panels: &proj_panels[..],
                        tiles: hidden.next_multiple_of(E::PAD).div_ceil(4 * lanes),
                        columns: Columns::Outputs { outputs: hidden },
                        c: &mut dm,
                        ldc: hidden,
                    },
                    &mut scratch,
                );
            } else {
                dm[..n * hidden].copy_from_slice(&dh_t[..n * hidden]);
            }
            // The step's rows evenly spaced by row (every batch row of a step
            // of equal lengths): its ds_h goes straight to its rows of
            // `dsh_all`, which the product reads in place (no copy).
            let even = even_rows(&active);
            let (dsh_ptr, dsh_stride) = match even {
                Some((first, stride)) => {
                    // The row kernels write these rows through a pointer:
                    // the last must be one of dsh_all's.
                    assert!((first + (n - 1) * stride + 1) * g4 <= dsh_all.len());
                    (dsh_all[first * g4..].as_mut_ptr(), stride * g4)
                }
                None => (dsh.as_mut_ptr(), g4),
            };
            let step = BackwardStep {
                v: seq.variant,
                ln: *ln,
                hidden,
                cache,
                c_prev: c_prev.as_ptr(),
                dm: dm.as_ptr(),
                dc: SharedMut(dc.as_mut_ptr()),
                hp,
                dz: SharedMut(dz.as_mut_ptr()),
                dn: SharedMut(dn.as_mut_ptr()),
                dsx: SharedMut(dsx.as_mut_ptr()),
                dsh: SharedMut(dsh_ptr),
                dsh_stride,
                c_hat: SharedMut(c_hat.as_mut_ptr()),
                gate_math: GateMath {
                    v: seq.variant,
                    ln: *ln,
                    bias: seq.bias,
                    hidden,
                },
                m: if projects {
                    SharedMut(m_all.as_mut_ptr())
                } else {
                    SharedMut::null()
                },
                flow_c: if flow.is_some() {
                    SharedMut(flow_c.as_mut_ptr())
                } else {
                    SharedMut::null()
                },
            };
            let act = &active;
            // Each row: the gradients of its two normalisations, c and h.
            each(n, n * 12 * hidden, |j| {
                let (b, row) = act[j];
                dispatch::<E, _>(
                    isa,
                    BackwardRow {
                        step: &step,
                        j,
                        b,
                        row,
                    },
                )
            });
            step_sums.add(active.as_slice(), &dz, &dn, &c_prev, &c_hat);
            panel_product(
                isa,
                PanelProduct {
                    rows: n,
                    a: match even {
                        Some((first, _)) => &dsh_all[first * g4..],
                        None => &dsh,
                    },
                    lda: dsh_stride,
                    depth: g4,
                    panels: &hh_panels[..],
                    tiles: state.next_multiple_of(E::PAD).div_ceil(4 * lanes),
                    columns: Columns::Outputs { outputs: state },
                    c: &mut dh_back,
                    ldc: state,
                },
                &mut scratch,
            );
            for (j, &(b, row)) in active.iter().enumerate() {
                if even.is_none() {
                    dsh_all[row * g4..][..g4].copy_from_slice(&dsh[j * g4..][..g4]);
                }
                let src = &dh_back[j * state..][..state];
                let dst = &mut dh[b * state..][..state];
                match seq.variant.recurrent_keep {
                    Some(keep) => {
                        for ((d, &x), &k) in dst.iter_mut().zip(src).zip(&keep[b * state..]) {
                            *d = x * k;
                        }
                    }
                    None => dst.copy_from_slice(src),
                }
                if zone_h {
                    for (d, &k) in dst.iter_mut().zip(&dh_kept[j * state..][..state]) {
                        *d = *d + k;
                    }
                }
                if let Some([_, fc]) = flow.as_mut() {
                    let t = time_of(seq, s, b);
                    fc[t * batch + b] = flow_c[j];
                }
            }
        }
        dh0.copy_from_slice(&dh);
        dc0.copy_from_slice(&dc);
        cancel.check()?;
        let dsx = &*dsx;
        gemm(
            Mat::rows(dsx, rows, g4, g4),
            Mat::rows(seq.w_ih, g4, input, input),
            dx,
            input,
            false,
        );
        // A padded step has no gradient: exactly zero (whatever the signs of
        // the zeros its normalisation's gradient gave), as in a segment.
        for b in 0..batch {
            for t in seq.length(b)..steps {
                dx[row_of(seq, t, b) * input..][..input].fill(E::ZERO);
            }
        }
        // dW_ih = Σ ds_xᵀ x, dW_hh = Σ ds_hᵀ (h ⊙ r), dW_hr = Σ dhᵀ m: a
        // block of rows at a time in processing order, each product
        // continuing the chains (`lstm.rs`, `ordered_blocks`), its rows read
        // in place where the order visits them at constant strides (every
        // row of the full length: `lstm::in_place_order`), else gathered in
        // it; the packed operands, and so the bits, are the same either way.
        let block = ordered_block_rows(seq);
        let what = "the gathered rows of the weight gradients";
        // Allocated for the first block that is not read in place.
        let (mut dsx_blk, mut x_blk, mut dsh_blk, mut h_blk) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut dh_blk, mut m_blk) = (Vec::new(), Vec::new());
        let mut rows_blk = alloc::zeroed::<usize>(&[block], what)?;
        let mut done = 0;
        let gather = |dst: &mut [E], n: usize, src: &[E], row: usize, width: usize| {
            dst[n * width..][..width].copy_from_slice(&src[row * width..][..width]);
        };
        ordered_blocks(seq, accumulate, cancel, |order, more| {
            let n = order.len();
            for (k, &(_, _, row)) in order.iter().enumerate() {
                rows_blk[k] = row;
            }
            let in_place = in_place_order(seq, &rows_blk[..n], done);
            done += n;
            if in_place.is_none() {
                if dsx_blk.is_empty() {
                    dsx_blk = alloc::zeroed::<E>(&[block, g4], what)?;
                    x_blk = alloc::zeroed::<E>(&[block, input], what)?;
                    dsh_blk = alloc::zeroed::<E>(&[block, g4], what)?;
                    h_blk = alloc::zeroed::<E>(&[block, state], what)?;
                    if projects {
                        dh_blk = alloc::zeroed::<E>(&[block, state], what)?;
                        m_blk = alloc::zeroed::<E>(&[block, hidden], what)?;
                    }
                }
                for (k, &row) in rows_blk[..n].iter().enumerate() {
                    gather(&mut dsx_blk, k, dsx, row, g4);
                    gather(&mut x_blk, k, seq.x, row, input);
                    gather(&mut dsh_blk, k, dsh_all, row, g4);
                    gather(&mut h_blk, k, cache.h_prev, row, state);
                    if projects {
                        gather(&mut dh_blk, k, &dh_steps, row, state);
                        gather(&mut m_blk, k, &m_all, row, hidden);
                    }
                }
            }
            // C (+)= A·B over the block's k = n rows, in place or gathered.
            let product = |a: Mat<'_, E>, b: Mat<'_, E>, c: &mut [E], ldc: usize| match in_place {
                Some(order) => gemm_in_order(a, b, order, c, ldc, more),
                None => gemm(a, b, c, ldc, more),
            };
            let (dsx_k, x_k, dsh_k, h_k, dh_k, m_k) = match in_place {
                Some(_) => (
                    dsx,
                    seq.x,
                    &dsh_all[..],
                    cache.h_prev,
                    &dh_steps[..],
                    &m_all[..],
                ),
                None => (
                    &dsx_blk[..],
                    &x_blk[..],
                    &dsh_blk[..],
                    &h_blk[..],
                    &dh_blk[..],
                    &m_blk[..],
                ),
            };
            product(
                gathered_t(dsx_k, n, g4, g4),
                Mat::rows(x_k, n, input, input),
                dw_ih,
                input,
            );
            product(
                gathered_t(dsh_k, n, g4, g4),
                Mat::rows(h_k, n, state, state),
                dw_hh,
                state,
            );
            if let Some(dw_hr) = dw_hr.as_deref_mut() {
                product(
                    gathered_t(dh_k, n, state, state),
                    Mat::rows(m_k, n, hidden, hidden),
                    dw_hr,
                    hidden,
                );
            }
            Ok(())
        })
    };
    workers.run(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Moments<'a> {
        v: &'a [f32],
    }

    impl Kernel<f32> for Moments<'_> {
        type Output = (f32, f32);
        #[inline(always)]
        fn run<S: Simd<E = f32>>(self) -> (f32, f32) {
            // SAFETY: `dispatch` runs this for S on a CPU that has S's ISA.
            unsafe { moments::<S>(self.v, 1e-5) }
        }
    }

    /// The float32 moments against two passes in f64, on rows whose mean is
    /// up to 10^6 times their spread (where one pass of unshifted sums of
    /// squares would lose every bit of the variance), and a constant row.
    /// The bounds: float32's rounding of the result (2^-24 relative), each
    /// sum's rounding over its 32 + 5 additions (about 37·2^-24 of the
    /// magnitudes summed), halved by the square root for r.
    #[test]
    fn two_pass_moments_keep_their_precision_far_from_zero() {
        let unit = 2f64.powi(-24);
        for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
            for (mean, spread) in [
                (0.0, 1.0),
                (3.0, 1e-3),
                (1e4, 1e-2),
                (-2e5, 0.5),
                (7.0, 0.0),
            ] {
                let v: Vec<f32> = (0..1024)
                    .map(|i| (mean + spread * ((i * 7919 % 1024) as f64 / 512.0 - 1.0)) as f32)
                    .collect();
                let n = v.len() as f64;
                let mu = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
                let var = v.iter().map(|&x| (f64::from(x) - mu).powi(2)).sum::<f64>() / n;
                let r = 1.0 / (var + 1e-5).sqrt();
                let (got_mu, got_r) = dispatch(isa, Moments { v: &v });
                let (got_mu, got_r) = (f64::from(got_mu), f64::from(got_r));
                assert!(
                    (got_mu - mu).abs() <= unit * mu.abs() + 40.0 * unit * spread,
                    "{isa:?} {mean} {got_mu} {mu}"
                );
                assert!(
                    (got_r - r).abs() <= 24.0 * unit * r,
                    "{isa:?} {mean} {spread} {got_r} {r}"
                );
            }
        }
    }

    #[test]
    fn even_rows_are_the_evenly_spaced_increasing_ones() {
        assert_eq!(even_rows(&[]), None);
        assert_eq!(even_rows(&[(3, 7)]), Some((7, 1)));
        // Time-major (row = t·B + b) and batch-first (row = b·T + t).
        assert_eq!(even_rows(&[(0, 8), (1, 9), (2, 10)]), Some((8, 1)));
        assert_eq!(even_rows(&[(0, 2), (1, 7), (2, 12)]), Some((2, 5)));
        // Lengths: a row missing, rows at different times, reversed order.
        assert_eq!(even_rows(&[(0, 8), (2, 10)]), Some((8, 2)));
        assert_eq!(even_rows(&[(0, 2), (1, 7), (2, 11)]), None);
        assert_eq!(even_rows(&[(0, 9), (1, 8)]), None);
        assert_eq!(even_rows(&[(0, 9), (1, 9)]), None);
    }

    struct Normalised<'a> {
        v: &'a [f32],
        out: &'a mut [f32],
    }

    impl Kernel<f32> for Normalised<'_> {
        type Output = f32;
        #[inline(always)]
        fn run<S: Simd<E = f32>>(self) -> f32 {
            // SAFETY: as for `Moments`.
            unsafe { normalise::<S>(self.v, self.out, 1e-5).1 }
        }
    }

    /// A row with an infinity or a NaN anywhere normalises to NaN in every
    /// element, as two passes (and the NumPy reference) give: a NaN
    /// variance is not clamped to zero, which would give a finite 1/σ.
    #[test]
    fn non_finite_rows_normalise_to_nan() {
        let inf = f32::INFINITY;
        for isa in Isa::ALL.into_iter().filter(|i| i.is_supported()) {
            for (at, bad) in [
                (0, inf),
                (37, inf),
                (37, -inf),
                (5, f32::NAN),
                (0, f32::NAN),
            ] {
                for width in [64, 100] {
                    let mut v: Vec<f32> = (0..width).map(|i| (i as f32).sin()).collect();
                    v[at] = bad;
                    let mut out = vec![0.0f32; width];
                    dispatch(
                        isa,
                        Normalised {
                            v: &v,
                            out: &mut out,
                        },
                    );
                    assert!(
                        out.iter().all(|x| x.is_nan()),
                        "{isa:?} {at} {bad}: {out:?}"
                    );
                }
            }
            // +inf and -inf in one row.
            let mut v = vec![1.0f32; 48];
            (v[3], v[40]) = (inf, -inf);
            let mut out = vec![0.0f32; 48];
            dispatch(
                isa,
                Normalised {
                    v: &v,
                    out: &mut out,
                },
            );
            assert!(out.iter().all(|x| x.is_nan()), "{isa:?}: {out:?}");
        }
    }
}

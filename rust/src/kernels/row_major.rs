//! Batch 1 without packing: a short forward of one row that reads `w_ih` and
//! `w_hh` as the caller holds them (row-major, 4H × depth) instead of packing
//! them into panels first.
//!
//! Packing is a pass over the weights that writes as many bytes as it reads;
//! a forward of one step at batch 1 reads each weight once, so packing made it
//! cost about three steps (`cell_forward`, a one-step `forward` from raw
//! weights), and a layer that keeps its packed copy has to prove that copy
//! current at every call, a read of both copies (`LSTM.step`). Read in place,
//! the weights need neither.
//!
//! The product keeps the bits of the packed path: every output is one FMA
//! chain in k order from zero, as the panel kernels compute it
//! (`microkernel.rs`). To vectorise that chain over outputs from row-major
//! weights, 16 rows (AVX-512; 8 on AVX2) × 16 depths are loaded and transposed
//! in registers, so each vector holds one depth of 16 outputs; the gate math
//! is `forward_step.rs`'s, operation for operation. Only f32 on the FMA ISAs
//! take this path (the scalar path computes without FMA, f64 is not where
//! per-call cost matters); [`applies`] says when.

use std::ops::Range;

use crate::alloc;
use crate::cancel::Cancel;
use crate::error::Result;
use crate::float::Float;
use crate::kernels::layout::{Geometry, SharedMut};
use crate::kernels::pack;
use crate::parallel::barrier::end_of_step;
use crate::parallel::pool;
use crate::parallel::split::{
    self, choose_split, claim, forced_split, run_split, ForcedSplit, Split,
};
use crate::sequence::{hidden_pad, Cache, Outputs, Sequence};
use crate::simd::{self, store_n, Isa, Kernel, Simd, SimdElement};
use crate::tuning::{ROW_MAJOR_MAX_STEPS, ROW_MAJOR_TEAM_BYTES};

/// Whether [`forward`] runs `seq` on `isa`: f32 on an FMA ISA, one row of
/// full length, at most [`ROW_MAJOR_MAX_STEPS`] steps, the plain cell, and no
/// packed weights given (with them the packed path has nothing left to pay).
pub fn applies<E: Float>(seq: &Sequence<'_, E>, isa: Isa) -> bool {
    std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>()
        && matches!(isa, Isa::Avx2 | Isa::Avx512 | Isa::Avx512Bf16)
        && seq.dims.batch == 1
        && seq.dims.steps <= ROW_MAJOR_MAX_STEPS
        && seq.lengths.is_none()
        && seq.panels.is_none()
        && seq.variant.is_plain()
        && seq.variant.recurrent_keep.is_none()
}

/// `crate::forward` of a `seq` that [`applies`] (arguments checked, at least
/// one step). An inference pass over weights of [`ROW_MAJOR_TEAM_BYTES`] or
/// more is run by a team of the pool's threads, each computing its tiles of
/// hidden units from its slice of the rows (a barrier after every step),
/// which no output's chain notices; anything else runs on the calling thread.
/// Not a training pass: the pool's threads spin for a while after a call, and
/// on a machine of two cores that slowed the copies a cache keeps of the
/// weights, made right after (`cell_forward` at H = 256: 98 µs alone, 120–210
/// with a team). Once `cancel` is set, returns
/// [`Error::Interrupted`](crate::Error::Interrupted) at the next step.
pub fn forward<E: Float>(
    seq: &Sequence<'_, E>,
    out: Outputs<'_, E>,
    cache: Option<Cache<'_, E>>,
    cancel: &Cancel,
) -> Result<()> {
    let isa = Isa::active();
    assert!(
        applies(seq, isa),
        "the row-major forward runs f32 at batch 1 only"
    );
    let (input, hidden) = (seq.dims.input, seq.dims.hidden);
    let hp = hidden_pad::<E>(hidden);
    let lanes = isa.lanes::<E>();
    let tiles = hp / lanes;
    let workers = pool::workers()?;
    let threads = workers.pool.current_num_threads();
    let bytes = 4 * hidden * (input + hidden) * size_of::<E>();
    let alone = bytes < ROW_MAJOR_TEAM_BYTES || cache.is_some();
    let wanted = if alone && forced_split() != ForcedSplit::Hidden {
        Split::Batch
    } else {
        choose_split(1, tiles, threads, seq.dims.work())
    };
    let (split, _claim) = claim(&workers, wanted, cancel)?;
    let bias = pack::pad_bias(seq.bias, hidden, hp)?;
    // The state: h twice (a step reads one and writes the other) and c, Hp
    // each, padded units 0.
    let mut state: Vec<E> = alloc::zeroed(&[3, hp], "the state of a step")?;
    if let Some(h0) = seq.h0 {
        state[..hidden].copy_from_slice(&h0[..hidden]);
    }
    if let Some(c0) = seq.c0 {
        state[2 * hp..][..hidden].copy_from_slice(&c0[..hidden]);
    }
    // Per member: the two products of its units, gate-major (x_t·w_ihᵀ, then
    // h·w_hhᵀ), padded units 0 (the packed path's zero weights give +0 too).
    let mut scratch = alloc::try_collect(
        split::members(split, 1, tiles).map(|(_, tiles)| {
            alloc::zeroed::<E>(&[2, 4, tiles.len() * lanes], "the products of a step")
        }),
        "the members' scratch",
    )?;
    let (gates, cells, h_prev) = match cache {
        Some(c) => (
            SharedMut(c.gates.as_mut_ptr()),
            SharedMut(c.cells.as_mut_ptr()),
            SharedMut(c.h_prev.as_mut_ptr()),
        ),
        None => (SharedMut::null(), SharedMut::null(), SharedMut::null()),
    };
    let shared = Shared {
        geo: seq.geometry(),
        x: seq.x,
        input,
        w_ih: seq.w_ih,
        w_hh: seq.w_hh,
        bias: &bias,
        state: SharedMut(state.as_mut_ptr()),
        y: SharedMut(out.y.as_mut_ptr()),
        gates,
        cells,
        h_prev,
    };
    let mut run = || {
        run_split(
            split,
            1,
            tiles,
            &mut scratch,
            &|_, tiles, products, barrier| {
                for s in 0..seq.dims.steps {
                    let step = Step {
                        shared: &shared,
                        s,
                        tiles: tiles.clone(),
                        products,
                    };
                    simd::dispatch(isa, step);
                    if end_of_step(barrier, cancel) {
                        return;
                    }
                }
            },
        )
    };
    if split == Split::Batch {
        run();
    } else {
        workers.pool.install(run);
    }
    // A cancelled pass stops here (its members have stopped at a step).
    cancel.check()?;
    let last = seq.dims.steps % 2;
    out.h_n.copy_from_slice(&state[last * hp..][..hidden]);
    out.c_n.copy_from_slice(&state[2 * hp..][..hidden]);
    Ok(())
}

/// What every member of [`forward`] reads, and the outputs they write (each
/// member its own units).
struct Shared<'a, E> {
    geo: Geometry,
    x: &'a [E],
    input: usize,
    w_ih: &'a [E],
    w_hh: &'a [E],
    /// 4Hp, b_ih + b_hh padded.
    bias: &'a [E],
    /// 3 × Hp: h after even steps, h after odd steps, c.
    state: SharedMut<E>,
    /// T × H; and null without a cache, else T × 4Hp, T × Hp, T × Hp.
    y: SharedMut<E>,
    gates: SharedMut<E>,
    cells: SharedMut<E>,
    h_prev: SharedMut<E>,
}

/// Step `s` of one member: the two products of its units, then the gate math
/// of its tiles, h written to the state's other buffer.
struct Step<'a, 'b, E> {
    shared: &'a Shared<'b, E>,
    s: usize,
    tiles: Range<usize>,
    /// 2 × 4 × (this member's units).
    products: &'a mut [E],
}

impl<E: Float> Kernel<E> for Step<'_, '_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        let sh = self.shared;
        let geo = sh.geo;
        let (hidden, hp, w) = (geo.hidden, geo.hidden_pad, S::LANES);
        let row = geo.row(geo.pos(self.s, geo.steps), 0);
        let x = &sh.x[row * sh.input..][..sh.input];
        let units = self.tiles.start * w..self.tiles.end * w;
        let n = units.len();
        assert!(units.end <= hp && self.products.len() == 8 * n);
        // SAFETY: the state holds 3 × Hp; this member only reads h here (the
        // others write the other buffer until the barrier).
        let cur = unsafe { std::slice::from_raw_parts(sh.state.0.add(self.s % 2 * hp), hp) };
        let next = sh.state.0.wrapping_add((self.s + 1) % 2 * hp);
        let (xw, hh) = self.products.split_at_mut(4 * n);
        let real = units.start.min(hidden)..units.end.min(hidden);
        for gate in 0..4 {
            let rows = gate * hidden + real.start..gate * hidden + real.end;
            let at = gate * n..gate * n + real.len();
            gate_product::<S>(sh.w_ih, sh.input, rows.clone(), x, &mut xw[at.clone()]);
            gate_product::<S>(sh.w_hh, hidden, rows, &cur[..hidden], &mut hh[at]);
        }
        for u0 in units.step_by(w) {
            let i = u0 - self.tiles.start * w;
            // SAFETY: u0 + w ≤ hp (hp is a multiple of every ISA's lanes) and i
            // + w ≤ n: every access is inside the products (4n each), bias
            // (4Hp), the state (Hp per buffer), the cache's row (4Hp, Hp, Hp:
            // P = H on the plain cell) and y's row (H, its real lanes). Only
            // this member writes units u0..u0 + w.
            unsafe {
                let pre = |g: usize| {
                    S::load(hh.as_ptr().add(g * n + i))
                        .add(S::load(xw.as_ptr().add(g * n + i)))
                        .add(S::load(sh.bias.as_ptr().add(g * hp + u0)))
                };
                // `forward_step.rs`'s plain gate math, operation for operation.
                let ig = simd::sigmoid(pre(0));
                let fg = simd::sigmoid(pre(1));
                let gg = simd::tanh(pre(2));
                let og = simd::sigmoid(pre(3));
                let c_ptr = sh.state.0.add(2 * hp + u0);
                let c_new = fg.mul_add(S::load(c_ptr), ig.mul(gg));
                let h_new = og.mul(simd::tanh(c_new));
                if !sh.gates.0.is_null() {
                    let gp = sh.gates.0.add(row * 4 * hp + u0);
                    for (g, v) in [ig, fg, gg, og].into_iter().enumerate() {
                        v.store(gp.add(g * hp));
                    }
                    c_new.store(sh.cells.0.add(row * hp + u0));
                    S::load(cur.as_ptr().add(u0)).store(sh.h_prev.0.add(row * hp + u0));
                }
                c_new.store(c_ptr);
                h_new.store(next.add(u0));
                store_n(
                    h_new,
                    sh.y.0.add(row * hidden + u0.min(hidden)),
                    hidden.saturating_sub(u0).min(w),
                );
            }
        }
    }
}

/// `out[r] = Σ_k w[row·depth + k]·v[k]` for the `rows` of `w` (row-major,
/// `depth` wide): one FMA chain per output in k order from zero, the bits of
/// the panel kernels. `S` is the ISA's vector: its own transposes where it has
/// them (f32), else the chain one output at a time.
#[inline(always)]
fn gate_product<S: Simd>(
    w: &[S::E],
    depth: usize,
    rows: std::ops::Range<usize>,
    v: &[S::E],
    out: &mut [S::E],
) {
    assert!(rows.end * depth <= w.len() && v.len() == depth && out.len() == rows.len());
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<S::E>() == std::any::TypeId::of::<f32>() && S::LANES >= 8 {
        let cast = |p: *const S::E| p.cast::<f32>();
        let w = cast(w[rows.start * depth..].as_ptr());
        let (v, out) = (cast(v.as_ptr()), out.as_mut_ptr().cast::<f32>());
        // SAFETY: S::E is f32 (the same TypeId) and S a vector of 8 or 16
        // lanes, so this runs inside `dispatch`'s AVX2 or AVX-512 entry point
        // (the CPU has the features); `w` holds rows.len() rows of `depth`
        // from its start, `v` depth elements, `out` rows.len() (asserted).
        unsafe {
            if S::LANES == 16 {
                product_avx512(w, depth, rows.len(), v, out);
            } else {
                product_avx2(w, depth, rows.len(), v, out);
            }
        }
        return;
    }
    for (o, r) in out.iter_mut().zip(rows) {
        let mut acc = S::splat(S::E::from_f64(0.0));
        for (k, &vk) in v.iter().enumerate() {
            // SAFETY: r < rows.end and k < depth (asserted above).
            let wk = unsafe { *w.get_unchecked(r * depth + k) };
            acc = S::splat(wk).mul_add(S::splat(vk), acc);
        }
        let mut lane = [S::E::from_f64(0.0); 16];
        // SAFETY: a vector has at most 16 lanes; lane 0 holds the chain.
        unsafe { acc.store(lane.as_mut_ptr()) };
        *o = lane[0];
    }
}

/// Row blocks whose chains one pass over a block of depths runs at once: the
/// FMA latency is hidden behind the other blocks' transposes.
const BLOCKS: usize = 4;

/// [`gate_product`] on AVX-512: `rows` rows of `depth` f32 from `w`, 16 rows ×
/// 16 depths transposed in registers per FMA group, [`BLOCKS`] groups of 16
/// rows at a time. Every loop over lanes, rows or blocks has a constant trip
/// count (the partial ones test their bound inside), so that the blocks stay
/// in registers.
///
/// # Safety
/// The CPU has avx512f; `w` holds `rows` × `depth`, `v` depth, `out` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn product_avx512(w: *const f32, depth: usize, rows: usize, v: *const f32, out: *mut f32) {
    use std::arch::x86_64::*;
    const L: usize = 16;
    let mut r0 = 0;
    while r0 < rows {
        // Rows of each block (0 past the last).
        let n: [usize; BLOCKS] = std::array::from_fn(|b| rows.saturating_sub(r0 + b * L).min(L));
        let mut acc = [_mm512_setzero_ps(); BLOCKS];
        for k0 in (0..depth).step_by(L) {
            let kd = (depth - k0).min(L);
            let mask: __mmask16 = if kd == L { !0 } else { (1 << kd) - 1 };
            for b in 0..BLOCKS {
                if n[b] == 0 {
                    continue;
                }
                // SAFETY: rows r0 + b·L + u < rows (u < n[b]), depths k0 + j
                // < depth (masked past kd); v[k0 + j] for j < kd.
                unsafe {
                    let first = w.add((r0 + b * L) * depth + k0);
                    let r: [__m512; L] = std::array::from_fn(|u| {
                        if u < n[b] {
                            _mm512_maskz_loadu_ps(mask, first.add(u * depth))
                        } else {
                            _mm512_setzero_ps()
                        }
                    });
                    let t = pack::transpose_16x16(r);
                    for (j, t) in t.iter().enumerate() {
                        if j < kd {
                            acc[b] = _mm512_fmadd_ps(*t, _mm512_set1_ps(*v.add(k0 + j)), acc[b]);
                        }
                    }
                }
            }
        }
        for b in 0..BLOCKS {
            let mask: __mmask16 = if n[b] == L { !0 } else { (1 << n[b]) - 1 };
            // SAFETY: outputs r0 + b·L + u < rows for u < n[b] (masked).
            unsafe { _mm512_mask_storeu_ps(out.add((r0 + b * L).min(rows)), mask, acc[b]) };
        }
        r0 += BLOCKS * L;
    }
}

/// [`gate_product`] on AVX2: as [`product_avx512`], with 8 × 8 blocks.
///
/// # Safety
/// The CPU has avx2 and fma; `w` holds `rows` × `depth`, `v` depth, `out` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product_avx2(w: *const f32, depth: usize, rows: usize, v: *const f32, out: *mut f32) {
    use std::arch::x86_64::*;
    const L: usize = 8;
    let mut r0 = 0;
    while r0 < rows {
        let n: [usize; BLOCKS] = std::array::from_fn(|b| rows.saturating_sub(r0 + b * L).min(L));
        let mut acc = [_mm256_setzero_ps(); BLOCKS];
        for k0 in (0..depth).step_by(L) {
            let kd = (depth - k0).min(L);
            let lanes: [i32; L] = std::array::from_fn(|j| if j < kd { -1 } else { 0 });
            // SAFETY: reads 8 i32 from an array of 8.
            let mask = unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) };
            for b in 0..BLOCKS {
                if n[b] == 0 {
                    continue;
                }
                // SAFETY: as in `product_avx512`.
                unsafe {
                    let first = w.add((r0 + b * L) * depth + k0);
                    let r: [__m256; L] = std::array::from_fn(|u| {
                        if u >= n[b] {
                            _mm256_setzero_ps()
                        } else if kd == L {
                            _mm256_loadu_ps(first.add(u * depth))
                        } else {
                            _mm256_maskload_ps(first.add(u * depth), mask)
                        }
                    });
                    let t = transpose_8x8(r);
                    for (j, t) in t.iter().enumerate() {
                        if j < kd {
                            acc[b] = _mm256_fmadd_ps(*t, _mm256_set1_ps(*v.add(k0 + j)), acc[b]);
                        }
                    }
                }
            }
        }
        for b in 0..BLOCKS {
            let mut lanes = [0f32; L];
            // SAFETY: stores 8 f32 into an array of 8; outputs r0 + b·L + u <
            // rows for u < n[b].
            unsafe {
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[b]);
                let at = (r0 + b * L).min(rows);
                std::ptr::copy_nonoverlapping(lanes.as_ptr(), out.add(at), n[b]);
            }
        }
        r0 += BLOCKS * L;
    }
}

/// The transpose of an 8 × 8 block of f32: row j of the result holds element
/// j of every input row, in row order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_8x8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    // SAFETY: register shuffles only; the caller runs with avx2.
    unsafe {
        // Pairs of rows interleaved by element, then by pairs of elements,
        // then the 128-bit halves of rows 4 apart.
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let q = i / 4 * 4;
            let (a, b) = (t[q + i % 4 / 2], t[q + i % 4 / 2 + 2]);
            if i % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(a, b)
            } else {
                _mm256_shuffle_ps::<0xee>(a, b)
            }
        });
        std::array::from_fn(|i| {
            let (a, b) = (u[i % 4], u[i % 4 + 4]);
            if i < 4 {
                _mm256_permute2f128_ps::<0x20>(a, b)
            } else {
                _mm256_permute2f128_ps::<0x31>(a, b)
            }
        })
    }
}

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
//! weights, blocks of rows × depths are loaded and transposed in registers,
//! so that each vector holds one depth of 16 outputs (8 on AVX2); the gate
//! math is `forward_step.rs`'s, operation for operation. Only f32 on the FMA ISAs
//! take this path (the scalar path computes without FMA, f64 is not where
//! per-call cost matters); [`applies`] says when.

use std::ops::Range;

use crate::alloc;
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::layout::{Geometry, SharedMut};
use crate::kernels::pack;
use crate::parallel::barrier::end_of_step;
use crate::parallel::pool;
use crate::parallel::split::{
    self, choose_split, claim, forced_split, run_team_here, ForcedSplit, Split,
};
use crate::sequence::{hidden_pad, Cache, Outputs, Sequence};
use crate::simd::{self, store_n, Isa, Kernel, Simd, SimdElement};
use crate::tuning::{
    ROW_MAJOR_MAX_INFERENCE_STEPS, ROW_MAJOR_MAX_PACKED_STEPS, ROW_MAJOR_MAX_STEPS,
    ROW_MAJOR_TEAM_BYTES, TEAM_WEIGHT_BYTES,
};

/// Whether [`forward`] runs `seq` on `isa`, with a cache (`cached`) or
/// without: f32 on an FMA ISA, one row of full length, the plain cell, and
/// at most [`ROW_MAJOR_MAX_STEPS`] steps with a cache, at most
/// [`ROW_MAJOR_MAX_INFERENCE_STEPS`] without. With packed weights given
/// (prepared: `seq.w_ih` and `seq.w_hh` are the copies they were packed
/// from), only [`ROW_MAJOR_MAX_PACKED_STEPS`] steps without a cache over
/// weights of [`TEAM_WEIGHT_BYTES`] or more (below, the packed step runs on
/// the calling thread and beats the transposes), and not from bfloat16
/// panels (whose rounded weights the row-major arrays are not).
pub fn applies<E: Float>(seq: &Sequence<'_, E>, isa: Isa, cached: bool) -> bool {
    let max_steps = match (seq.panels, cached) {
        (None, true) => ROW_MAJOR_MAX_STEPS,
        (None, false) => ROW_MAJOR_MAX_INFERENCE_STEPS,
        (Some(panels), false) if !panels.bf16() && seq.weight_bytes() >= TEAM_WEIGHT_BYTES => {
            ROW_MAJOR_MAX_PACKED_STEPS
        }
        (Some(_), _) => 0,
    };
    std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>()
        && matches!(isa, Isa::Avx2 | Isa::Avx512 | Isa::Avx512Bf16)
        && seq.dims.batch == 1
        && seq.dims.steps <= max_steps
        && seq.lengths.is_none()
        && seq.variant.is_plain()
        && seq.variant.recurrent_keep.is_none()
}

/// `crate::forward` of a `seq` that [`applies`] on `isa` (arguments checked,
/// at least one step). An inference pass over weights of
/// [`ROW_MAJOR_TEAM_BYTES`] or more is run by a team, the calling thread and
/// the pool's threads (`split::run_team_here`), each computing its tiles of
/// hidden units from its slice of the rows (a barrier after every step),
/// which no output's chain notices; anything else runs on the calling thread.
/// Not a training pass: on a machine of two cores the team slowed the copies
/// a cache keeps of the weights, made right after (`cell_forward` at H = 256:
/// medians 103 µs alone, 130 with a team). Once `cancel` is set, returns
/// [`Error::Interrupted`](Error::Interrupted) at the next step.
pub fn forward<E: Float>(
    isa: Isa,
    seq: &Sequence<'_, E>,
    out: Outputs<'_, E>,
    cache: Option<Cache<'_, E>>,
    cancel: &Cancel,
) -> Result<()> {
    if !applies(seq, isa, cache.is_some()) {
        return Err(Error::Value(
            "the row-major forward runs one row of f32 on an FMA ISA".into(),
        ));
    }
    let (input, hidden) = (seq.dims.input, seq.dims.hidden);
    let hp = hidden_pad::<E>(hidden);
    let lanes = isa.lanes::<E>();
    let tiles = hp / lanes;
    let workers = pool::workers()?;
    let threads = workers.pool.current_num_threads();
    let bytes = seq.weight_bytes();
    let alone = bytes < ROW_MAJOR_TEAM_BYTES || cache.is_some();
    let wanted = if alone && forced_split() != ForcedSplit::Hidden {
        Split::Batch
    } else {
        choose_split(1, tiles, threads, seq.dims.work(), true)
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
    let member = |_: usize, tiles: Range<usize>, products: &mut Vec<E>, barrier: Option<&_>| {
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
    };
    match split {
        Split::Hidden(n) => run_team_here(&workers, n, tiles, &mut scratch, &member),
        Split::Batch => member(0, 0..tiles, &mut scratch[0], None),
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

/// [`gate_product`] on AVX-512: `rows` rows of `depth` f32 from `w`.
///
/// An FMA waits for the one before it in its chain, so one chain at a time
/// leaves the FMA latency exposed (measured on Zen 5, 1024 rows × depth 256
/// in L2: 16 µs). Two blocks of 16 rows therefore run at once, 8 depths at a
/// time, each block's 16 × 8 transposed in registers from 256-bit loads
/// ([`transpose_16x8`]): 11.6 µs. Four blocks of 16 × 16 did not fit the
/// registers (18 µs). The rows past the last pair of blocks, and the depths
/// past the last 8, run 16 × 16 blocks ([`block_16x16`]), the same chains.
///
/// # Safety
/// The CPU has avx512f; `w` holds `rows` × `depth`, `v` depth, `out` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn product_avx512(w: *const f32, depth: usize, rows: usize, v: *const f32, out: *mut f32) {
    use std::arch::x86_64::*;
    const L: usize = 16;
    let full = depth / 8 * 8;
    let mut r0 = 0;
    // SAFETY (every block below): rows r0 + u < rows, depths k0 + j < depth
    // (masked past the depth's end), v[k0 + j] for the same j.
    while r0 + 2 * L <= rows {
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for k0 in (0..full).step_by(8) {
            // SAFETY: as above.
            unsafe {
                let ta = transpose_16x8(w.add(r0 * depth + k0), depth);
                let tb = transpose_16x8(w.add((r0 + L) * depth + k0), depth);
                for j in 0..8 {
                    let vj = _mm512_set1_ps(*v.add(k0 + j));
                    a0 = _mm512_fmadd_ps(ta[j], vj, a0);
                    a1 = _mm512_fmadd_ps(tb[j], vj, a1);
                }
            }
        }
        if full < depth {
            let kd = depth - full;
            // SAFETY: as above.
            unsafe {
                let v = v.add(full);
                a0 = block_16x16(w.add(r0 * depth + full), depth, L, kd, v, a0);
                a1 = block_16x16(w.add((r0 + L) * depth + full), depth, L, kd, v, a1);
            }
        }
        // SAFETY: as above.
        unsafe {
            _mm512_storeu_ps(out.add(r0), a0);
            _mm512_storeu_ps(out.add(r0 + L), a1);
        }
        r0 += 2 * L;
    }
    while r0 < rows {
        let n = (rows - r0).min(L);
        let mut acc = _mm512_setzero_ps();
        for k0 in (0..depth).step_by(L) {
            let kd = (depth - k0).min(L);
            // SAFETY: as above.
            unsafe { acc = block_16x16(w.add(r0 * depth + k0), depth, n, kd, v.add(k0), acc) };
        }
        let mask: __mmask16 = if n == L { !0 } else { (1 << n) - 1 };
        // SAFETY: as above (masked past n).
        unsafe { _mm512_mask_storeu_ps(out.add(r0), mask, acc) };
        r0 += L;
    }
}

/// `acc` + the product of `n` ≤ 16 rows (`depth` apart from `first`) by the
/// `kd` ≤ 16 depths of `v`, one FMA per depth in order: the rows' 16 depths
/// loaded (masked past kd, rows past n zero) and transposed in registers.
///
/// # Safety
/// The CPU has avx512f; rows u < n hold kd elements from `first` + u·depth,
/// `v` holds kd.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_16x16(
    first: *const f32,
    depth: usize,
    n: usize,
    kd: usize,
    v: *const f32,
    mut acc: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let mask: __mmask16 = if kd >= 16 { !0 } else { (1 << kd) - 1 };
    // SAFETY: the caller's bounds; avx512f.
    unsafe {
        let r: [__m512; 16] = std::array::from_fn(|u| {
            if u < n {
                _mm512_maskz_loadu_ps(mask, first.add(u * depth))
            } else {
                _mm512_setzero_ps()
            }
        });
        let t = pack::transpose_16x16(r);
        for (j, t) in t.iter().enumerate() {
            if j < kd {
                acc = _mm512_fmadd_ps(*t, _mm512_set1_ps(*v.add(j)), acc);
            }
        }
    }
    acc
}

/// 16 rows × 8 depths (`depth` apart from `first`), transposed: vector j holds
/// depth j of the 16 rows. Rows u and u + 8 share a vector (its two halves),
/// so that the in-lane 4 × 4 transposes and one exchange of 128-bit lanes
/// finish it: 32 operations per 128 elements, as the 16 × 16 transpose.
///
/// # Safety
/// The CPU has avx512f; rows 0..16 hold 8 elements from `first` + u·depth.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_16x8(first: *const f32, depth: usize) -> [std::arch::x86_64::__m512; 8] {
    use std::arch::x86_64::*;
    // SAFETY: the caller's bounds; avx512f.
    unsafe {
        let z: [__m512; 8] = std::array::from_fn(|u| {
            let lo = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(
                first.add(u * depth),
            )));
            let hi = _mm256_castps_pd(_mm256_loadu_ps(first.add((u + 8) * depth)));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, hi))
        });
        // Pairs of rows interleaved by element, then by pairs of elements:
        // 128-bit lane l of u[i] holds depth i % 4 (+ 4 in lanes 1, 3) of
        // rows 4·(i / 4)... (+ 8 in lanes 2, 3).
        let t: [__m512; 8] = std::array::from_fn(|i| {
            let (a, b) = (z[i / 2 * 2], z[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        let u: [__m512; 8] = std::array::from_fn(|i| {
            let q = i / 4 * 4;
            let (a, b) = (t[q + i % 4 / 2], t[q + i % 4 / 2 + 2]);
            if i % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(a, b)
            } else {
                _mm512_shuffle_ps::<0xee>(a, b)
            }
        });
        // Then rows 0–3 and 8–11 (u[j]) meet rows 4–7 and 12–15 (u[j + 4]).
        std::array::from_fn(|j| {
            let (a, b) = (u[j % 4], u[j % 4 + 4]);
            if j < 4 {
                _mm512_mask_shuffle_f32x4::<0xa0>(a, 0xf0f0, b, b)
            } else {
                _mm512_mask_shuffle_f32x4::<0x31>(b, 0x0f0f, a, a)
            }
        })
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
    for r0 in (0..rows).step_by(L) {
        let n = (rows - r0).min(L);
        let mut acc = _mm256_setzero_ps();
        for k0 in (0..depth).step_by(L) {
            let kd = (depth - k0).min(L);
            let lanes: [i32; L] = std::array::from_fn(|j| if j < kd { -1 } else { 0 });
            // SAFETY: reads 8 i32 from an array of 8; then as in
            // `product_avx512`.
            unsafe {
                let mask = _mm256_loadu_si256(lanes.as_ptr().cast());
                let first = w.add(r0 * depth + k0);
                let r: [__m256; L] = std::array::from_fn(|u| {
                    if u >= n {
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
                        acc = _mm256_fmadd_ps(*t, _mm256_set1_ps(*v.add(k0 + j)), acc);
                    }
                }
            }
        }
        let mut lanes = [0f32; L];
        // SAFETY: stores 8 f32 into an array of 8; outputs r0 + u < rows for
        // u < n.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), out.add(r0), n);
        }
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

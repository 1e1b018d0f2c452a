//! bf16 inference's recurrent product on CPUs with AVX-512 BF16 (the
//! `avx512bf16` ISA): h·w_hhᵀ as `vdpbf16ps` dot products of bfloat16 pairs,
//! two multiply-adds per lane and instruction where an FMA does one.
//!
//! The instruction multiplies bfloat16 by bfloat16, so h, the product's
//! other operand, is rounded to bfloat16 each step (by the CPU's conversion:
//! to nearest, ties to even, subnormals to zero); the state itself, the gate
//! math and the sums stay in f32. Each output is one chain of `vdpbf16ps` in
//! k order (pair k, k + 1 at a time), whatever the rows, the tiles or the
//! thread that computes it, so results are the same bits for any thread
//! count and split, as on the other paths; they are not the bits of the other
//! ISAs' bf16 inference, which widens the weights and keeps h in f32
//! (`simd/bf16.rs`), and their difference is bounded in docs/api.md.
//!
//! Layouts: a panel (one tile of 16 hidden units, its 4 gate blocks as 4
//! vectors of 16 columns) stores for each pair of depths (k, k + 1) and each
//! column the two weights side by side, so that one 32-bit lane holds what a
//! lane of `vdpbf16ps` multiplies; a row of h is stored as its bfloat16 values
//! in order, whose 32-bit words are the same pairs, broadcast one at a time.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::float::Float;
use crate::simd::Bf16;

/// Columns of a panel: 4 gate vectors of 16 f32 lanes.
pub const PANEL_COLUMNS: usize = 64;
/// Lanes of one vector.
const LANES: usize = 16;

/// Pairs of depths of a row of `depth` values (the last pair padded with a
/// zero when `depth` is odd).
#[inline(always)]
pub fn pairs(depth: usize) -> usize {
    depth.div_ceil(2)
}

/// bfloat16 values of one panel of `depth`.
#[inline(always)]
pub fn panel_len(depth: usize) -> usize {
    pairs(depth) * 2 * PANEL_COLUMNS
}

/// The dot-product panels of `panels`, the forward panels of `w_hh`
/// (`pack::forward_panels` for 16 lanes: per tile, `depth` rows of
/// [`PANEL_COLUMNS`]), rounded to bfloat16: per tile, per pair of depths, per
/// column, the weights at k and k + 1.
pub fn pair_panels<E: Float>(panels: &[E], depth: usize, out: &mut [Bf16]) {
    if depth == 0 {
        // No input (I = 0): no product, empty panels.
        assert!(out.is_empty(), "pair panels' size");
        return;
    }
    let tile_len = depth * PANEL_COLUMNS;
    assert!(panels.len().is_multiple_of(tile_len));
    let tiles = panels.len() / tile_len;
    assert_eq!(out.len(), tiles * panel_len(depth), "pair panels' size");
    for (src, dst) in panels
        .chunks_exact(tile_len)
        .zip(out.chunks_exact_mut(panel_len(depth)))
    {
        for (kp, pair) in dst.chunks_exact_mut(2 * PANEL_COLUMNS).enumerate() {
            for col in 0..PANEL_COLUMNS {
                for half in 0..2 {
                    let k = 2 * kp + half;
                    let w = if k < depth {
                        src[k * PANEL_COLUMNS + col].to_f64() as f32
                    } else {
                        0.0
                    };
                    pair[2 * col + half] = Bf16::round(w);
                }
            }
        }
    }
}

/// Writes `rows` rows of h (`row(r)`: `depth` f32 values) into `out` as
/// bfloat16 pairs, [`pairs`]`(depth)` words per row, rounded by the CPU's
/// conversion (see the module).
///
/// # Safety
/// The CPU supports avx512f and avx512bf16; each `row(r)` is readable for
/// `depth` values; `out` writable for `rows · pairs(depth)` words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx2")]
pub unsafe fn pack_rows(
    rows: usize,
    row: impl Fn(usize) -> *const f32,
    depth: usize,
    out: *mut u32,
) {
    let words = pairs(depth);
    for r in 0..rows {
        let src = row(r);
        // SAFETY: the caller's region: words per row.
        let dst = unsafe { out.add(r * words) }.cast::<u16>();
        let mut k = 0;
        while k < depth {
            let n = (depth - k).min(LANES);
            // SAFETY: n ≤ 16 values read from the row (masked beyond them);
            // the bfloat16s written are the row's n, plus a zero partner
            // for an odd last value, inside its `words` words.
            unsafe {
                let mask: __mmask16 = if n == LANES { !0 } else { (1u16 << n) - 1 };
                let v = _mm512_maskz_loadu_ps(mask, src.add(k));
                let half: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                if n == LANES {
                    _mm256_storeu_si256(dst.add(k).cast(), half);
                } else {
                    let mut tmp = [0u16; LANES];
                    _mm256_storeu_si256(tmp.as_mut_ptr().cast(), half);
                    // The masked lanes converted zeros: copy the pair-padded
                    // count.
                    let padded = n.next_multiple_of(2);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst.add(k), padded);
                }
            }
            k += LANES;
        }
    }
}

/// The 4 accumulators of row `r`'s tile, as f32 lanes.
#[cfg(target_arch = "x86_64")]
type Tile = [__m512; 4];

/// One pair step of `MR` rows against a panel's 4 vectors at pair `kp`.
///
/// # Safety
/// Inside an avx512f + avx512bf16 function; `a` readable at `r · a_stride +
/// kp` for r < MR, `panel` for 128 bfloat16 values at pair `kp`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_step<const MR: usize>(
    acc: &mut [Tile; MR],
    a: *const u32,
    a_stride: usize,
    panel: *const Bf16,
    kp: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let p = panel.add(kp * 2 * PANEL_COLUMNS).cast::<__m512i>();
        let b: [__m512bh; 4] =
            std::array::from_fn(|v| std::mem::transmute(_mm512_loadu_si512(p.add(v))));
        for (r, tile) in acc.iter_mut().enumerate() {
            let pair: __m512bh =
                std::mem::transmute(_mm512_set1_epi32(*a.add(r * a_stride + kp) as i32));
            for (t, b) in tile.iter_mut().zip(b) {
                *t = _mm512_dpbf16_ps(*t, pair, b);
            }
        }
    }
}

/// `MR` rows of pairs against one panel: the 4 vectors of each row's tile
/// into `out` (64 f32 per row, rows `out_stride` apart).
///
/// # Safety
/// As for [`rows_product`], for MR rows.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows_tile<const MR: usize>(
    a: *const u32,
    a_stride: usize,
    words: usize,
    panel: *const Bf16,
    out: *mut f32,
    out_stride: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 4]; MR];
        for kp in 0..words {
            pair_step::<MR>(&mut acc, a, a_stride, panel, kp);
        }
        for (r, tile) in acc.iter().enumerate() {
            for (v, t) in tile.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * out_stride + v * LANES), *t);
            }
        }
    }
}

/// Rows a tile of the batched product runs at once: 6 rows × 4 vectors = 24
/// accumulators, 4 panel vectors and a broadcast in 29 of the 32 registers
/// (the shape of the f32 tile, `MR_32_REGISTERS`).
#[cfg(target_arch = "x86_64")]
const MR: usize = 6;

/// `rows` rows of h as pairs (`a`, `words` words per row) times one panel:
/// row r's 4 accumulators (gates i, f, g, o of the panel's 16 units) to
/// `out[r · 64 ..]`.
///
/// # Safety
/// The CPU supports avx512f and avx512bf16; `a` readable for `rows · words`
/// words, `panel` for [`panel_len`] of depth ≤ 2 · words, `out` writable for
/// `rows · 64` f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx2")]
pub unsafe fn rows_product(
    rows: usize,
    a: *const u32,
    words: usize,
    panel: *const Bf16,
    out: *mut f32,
) {
    let mut r = 0;
    // SAFETY: every call covers rows r .. r + n ≤ rows, inside the regions.
    unsafe {
        while r < rows {
            let n = (rows - r).min(MR);
            let (a_r, out_r) = (a.add(r * words), out.add(r * PANEL_COLUMNS));
            match n {
                6 => rows_tile::<6>(a_r, words, words, panel, out_r, PANEL_COLUMNS),
                5 => rows_tile::<5>(a_r, words, words, panel, out_r, PANEL_COLUMNS),
                4 => rows_tile::<4>(a_r, words, words, panel, out_r, PANEL_COLUMNS),
                3 => rows_tile::<3>(a_r, words, words, panel, out_r, PANEL_COLUMNS),
                2 => rows_tile::<2>(a_r, words, words, panel, out_r, PANEL_COLUMNS),
                _ => rows_tile::<1>(a_r, words, words, panel, out_r, PANEL_COLUMNS),
            }
            r += n;
        }
    }
}

/// One row of pairs (`a`, `words` words) times `P` panels at once (batch 1:
/// 4·P independent chains hide the instruction's latency): panel i's 4
/// accumulators to `out[i · 64 ..]`. The same chains as [`rows_product`].
///
/// # Safety
/// As for [`rows_product`] with one row, for each of the P panels; `out`
/// writable for `P · 64` f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx2")]
pub unsafe fn row_product<const P: usize>(
    a: *const u32,
    words: usize,
    panels: [*const Bf16; P],
    out: *mut f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 4]; P];
        for kp in 0..words {
            let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(kp) as i32));
            for (tile, panel) in acc.iter_mut().zip(panels) {
                let p = panel.add(kp * 2 * PANEL_COLUMNS).cast::<__m512i>();
                for (v, t) in tile.iter_mut().enumerate() {
                    let b: __m512bh = std::mem::transmute(_mm512_loadu_si512(p.add(v)));
                    *t = _mm512_dpbf16_ps(*t, pair, b);
                }
            }
        }
        for (i, tile) in acc.iter().enumerate() {
            for (v, t) in tile.iter().enumerate() {
                _mm512_storeu_ps(out.add(i * PANEL_COLUMNS + v * LANES), *t);
            }
        }
    }
}

/// The single-core peak of `vdpbf16ps` in GFLOP/s, counting its two
/// multiply-adds per f32 lane as 4 flops: the yardstick of bf16 inference's
/// products on the `avx512bf16` ISA (as `simd/peak.rs`'s FMA peak is of the
/// others'), the fastest round run during `seconds` (at least one). None on
/// a CPU without AVX-512 BF16.
pub fn dot_peak(seconds: f64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::Avx512Bf16.is_supported() {
        // SAFETY: the CPU has avx512f and avx512bf16 (checked).
        return Some(unsafe { dot_peak_avx512bf16(seconds) });
    }
    let _ = seconds;
    None
}

/// [`dot_peak`]'s loop: `BF16_DOT_PEAK_CHAINS` independent chains on
/// registers only, multiplying zeros (the rate does not depend on the values,
/// and the chains stay zero however long they run).
///
/// # Safety
/// The CPU supports avx512f and avx512bf16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx2")]
unsafe fn dot_peak_avx512bf16(seconds: f64) -> f64 {
    use crate::simd::peak::{deadline, fastest_round, ROUND};
    use crate::tuning::BF16_DOT_PEAK_CHAINS;
    let until = deadline(seconds);
    // SAFETY: register-only intrinsics of the features this function enables.
    let b: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(std::hint::black_box(0))) };
    let mut acc = [_mm512_setzero_ps(); BF16_DOT_PEAK_CHAINS];
    let best = fastest_round(until, || {
        for _ in 0..ROUND {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, b, b);
            }
        }
        // Keeps the chains alive (their results are otherwise unused).
        std::hint::black_box(&mut acc);
    });
    (4 * LANES * BF16_DOT_PEAK_CHAINS * ROUND) as f64 / best / 1e9
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// What `vdpbf16ps` computes, by Intel's definition: per lane, the odd
    /// product added, then the even one, each rounded (the products of two
    /// bfloat16 are exact in f32, so each addition is an FMA).
    fn dot_reference(a: &[f32], w: &[f32]) -> f32 {
        let mut acc = 0.0f32;
        for k in (0..a.len()).step_by(2) {
            let (a1, w1) = (
                a.get(k + 1).copied().unwrap_or(0.0),
                w.get(k + 1).copied().unwrap_or(0.0),
            );
            acc = a1.mul_add(w1, acc);
            acc = a[k].mul_add(w[k], acc);
        }
        acc
    }

    #[test]
    fn pair_panels_put_depths_k_and_k_plus_1_side_by_side() {
        // Every value exact in bfloat16 (at most 8 significant bits).
        let value = |q: usize, k: usize, col: usize| ((k * PANEL_COLUMNS + col) * (q + 1)) as f32;
        for depth in [0usize, 1, 2, 3] {
            let tiles = 2;
            let panels: Vec<f32> = (0..tiles)
                .flat_map(|q| (0..depth * PANEL_COLUMNS).map(move |i| (q, i)))
                .map(|(q, i)| value(q, i / PANEL_COLUMNS, i % PANEL_COLUMNS))
                .collect();
            let mut out = vec![Bf16(1); tiles * panel_len(depth)];
            pair_panels(&panels, depth, &mut out);
            for q in 0..tiles {
                for kp in 0..pairs(depth) {
                    for col in 0..PANEL_COLUMNS {
                        for half in 0..2 {
                            let k = 2 * kp + half;
                            let want = if k < depth { value(q, k, col) } else { 0.0 };
                            let got =
                                out[q * panel_len(depth) + kp * 2 * PANEL_COLUMNS + 2 * col + half];
                            assert_eq!(
                                got.to_f32(),
                                want,
                                "depth {depth} tile {q} k {k} col {col}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn products_match_the_pair_definition_for_every_row_count_and_split() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")) {
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for depth in [1usize, 2, 7, 16, 33, 64, 70] {
            let tiles = 3;
            let panels: Vec<f32> = (0..tiles * depth * PANEL_COLUMNS)
                .map(|_| crate::simd::bf16::round_f32(uniform()))
                .collect();
            let mut paired = vec![Bf16(0); tiles * panel_len(depth)];
            pair_panels(&panels, depth, &mut paired);
            for rows in [1usize, 2, 5, 6, 7, 13] {
                let h: Vec<f32> = (0..rows * depth).map(|_| uniform()).collect();
                let words = pairs(depth);
                let mut a = vec![0u32; rows * words];
                // SAFETY: checked features; regions sized above.
                unsafe { pack_rows(rows, |r| h[r * depth..].as_ptr(), depth, a.as_mut_ptr()) };
                let rounded: Vec<f32> =
                    h.iter().map(|&x| crate::simd::bf16::round_f32(x)).collect();
                for q in 0..tiles {
                    let panel = paired[q * panel_len(depth)..].as_ptr();
                    let mut out = vec![0f32; rows * PANEL_COLUMNS];
                    // SAFETY: as above.
                    unsafe { rows_product(rows, a.as_ptr(), words, panel, out.as_mut_ptr()) };
                    for r in 0..rows {
                        for col in 0..PANEL_COLUMNS {
                            let w: Vec<f32> = (0..depth)
                                .map(|k| {
                                    panels[q * depth * PANEL_COLUMNS + k * PANEL_COLUMNS + col]
                                })
                                .collect();
                            let want = dot_reference(&rounded[r * depth..][..depth], &w);
                            let got = out[r * PANEL_COLUMNS + col];
                            assert!(
                                got.to_bits() == want.to_bits(),
                                "depth {depth} rows {rows} r {r} col {col}: {got} vs {want}"
                            );
                        }
                    }
                    if rows == 1 {
                        // Batch 1's product: the same bits.
                        let mut one = vec![0f32; PANEL_COLUMNS];
                        // SAFETY: as above.
                        unsafe { row_product::<1>(a.as_ptr(), words, [panel], one.as_mut_ptr()) };
                        assert_eq!(one, out[..PANEL_COLUMNS]);
                    }
                }
                if rows == 1 {
                    let mut three = vec![0f32; 3 * PANEL_COLUMNS];
                    let ps: [*const Bf16; 3] =
                        std::array::from_fn(|q| paired[q * panel_len(depth)..].as_ptr());
                    // SAFETY: as above.
                    unsafe { row_product::<3>(a.as_ptr(), words, ps, three.as_mut_ptr()) };
                    for (q, p) in ps.iter().enumerate() {
                        let mut one = vec![0f32; PANEL_COLUMNS];
                        // SAFETY: as above.
                        unsafe { rows_product(1, a.as_ptr(), words, *p, one.as_mut_ptr()) };
                        assert_eq!(one, three[q * PANEL_COLUMNS..][..PANEL_COLUMNS]);
                    }
                }
            }
        }
    }
}

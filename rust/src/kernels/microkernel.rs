//! The register tiles every recurrent product runs on, named by shape the way
//! BLIS names its kernels (`mrx4v`: MR rows of A by 4 vectors of B): rows of A
//! broadcast one element at a time against one packed panel of B, four vectors
//! wide, accumulated in registers. Written once over [`Simd`].
//!
//! Each output is one FMA chain in k order, whatever the shape, so grouping
//! rows or blocking depth differently (other chunks, other thread counts) never
//! changes a result.

use crate::alloc::{self, Zeroable};
use crate::error::Result;
use crate::simd::{Simd, SimdElement};
use crate::tuning::{
    L1_PANEL_BYTES, MIN_PANEL_DEPTH, MR_16_REGISTERS, MR_32_REGISTERS, ROW_PREFETCH_DISTANCE,
};

/// Runs `body::<MR>(first_slot)` over `count` slots in groups of the largest MR
/// the ISA's register file holds (see `tuning.rs`), then 1.
macro_rules! for_row_groups {
    ($S:ty, $count:expr, |$r:ident, $mr:ident| $body:expr) => {{
        let count = $count;
        let mut $r = 0;
        // 64-byte vectors: AVX-512, with 32 vector registers.
        if std::mem::size_of::<$S>() >= 64 {
            while $r + MR_32_REGISTERS <= count {
                const $mr: usize = MR_32_REGISTERS;
                $body;
                $r += MR_32_REGISTERS;
            }
        }
        while $r + MR_16_REGISTERS <= count {
            const $mr: usize = MR_16_REGISTERS;
            $body;
            $r += MR_16_REGISTERS;
        }
        while $r < count {
            const $mr: usize = 1;
            $body;
            $r += 1;
        }
    }};
}

/// MR × 4v, accumulating: `acc[r][v] += Σ_k a[r][k·a_cs] · panel[k][v·LANES..]`
/// for MR rows and 4 vectors, continuing each output's FMA chain in k order.
///
/// A chain split over several calls (depth blocks, accumulators stored in
/// between) gives the same bits as one call.
///
/// # Safety
/// `a[r]` readable at every multiple of `a_cs` below `depth · a_cs`; `panel`
/// readable for `depth · 4 · LANES` elements.
#[inline(always)]
pub unsafe fn mrx4v_accumulate<S: Simd, const MR: usize>(
    acc: &mut [[S; 4]; MR],
    a: [*const S::E; MR],
    a_cs: usize,
    depth: usize,
    panel: *const S::E,
) {
    let w = S::LANES;
    let mut local = *acc;
    for k in 0..depth {
        // SAFETY: k < depth, so all four vectors of panel row k and a[r][k] are
        // inside the regions the caller vouched for.
        unsafe {
            let p = panel.add(k * 4 * w);
            let b = [
                S::load(p),
                S::load(p.add(w)),
                S::load(p.add(2 * w)),
                S::load(p.add(3 * w)),
            ];
            for r in 0..MR {
                let x = S::splat(*a[r].add(k * a_cs));
                for v in 0..4 {
                    local[r][v] = x.mul_add(b[v], local[r][v]);
                }
            }
        }
    }
    *acc = local;
}

/// MR × 4v from zero: [`mrx4v_accumulate`] into fresh accumulators.
///
/// # Safety
/// As for [`mrx4v_accumulate`].
#[inline(always)]
pub unsafe fn mrx4v<S: Simd, const MR: usize>(
    a: [*const S::E; MR],
    a_cs: usize,
    depth: usize,
    panel: *const S::E,
) -> [[S; 4]; MR] {
    let mut acc = [[S::splat(S::E::ZERO); 4]; MR];
    // SAFETY: forwarded from the caller.
    unsafe { mrx4v_accumulate(&mut acc, a, a_cs, depth, panel) };
    acc
}

/// Depth of a panel slice (4 vectors wide) that fits [`L1_PANEL_BYTES`].
#[inline(always)]
pub fn l1_depth<S: Simd>() -> usize {
    (L1_PANEL_BYTES / (4 * S::LANES * std::mem::size_of::<S::E>())).max(MIN_PANEL_DEPTH)
}

/// `rows` × 4v, depth-blocked: the products of `rows` contiguous rows of A
/// with one panel, in blocks of [`l1_depth`] so the panel slice is read from L2
/// once per block rather than once per row group; row r's result goes to
/// `out[r]` (4 vectors each).
///
/// # Safety
/// `row_ptr(r)` readable for `depth` elements (column stride 1) for r < rows;
/// `panel` for `depth · 4 · LANES`; `out` holds at least `rows` entries.
#[inline(always)]
pub unsafe fn rows_x4v_kblocked<S: Simd>(
    rows: usize,
    row_ptr: impl Fn(usize) -> *const S::E,
    depth: usize,
    panel: *const S::E,
    out: &mut [[S; 4]],
) {
    let w = S::LANES;
    let kc = l1_depth::<S>();
    let zero = [S::splat(S::E::ZERO); 4];
    out[..rows].fill(zero);
    for k0 in (0..depth).step_by(kc) {
        let kd = kc.min(depth - k0);
        for_row_groups!(S, rows, |r, MR| {
            let mut acc: [[S; 4]; MR] = std::array::from_fn(|i| out[r + i]);
            let a: [*const S::E; MR] = std::array::from_fn(|i| row_ptr(r + i).wrapping_add(k0));
            // SAFETY: rows r..r+MR < rows and k0 + kd ≤ depth: inside the
            // caller's regions.
            unsafe { mrx4v_accumulate::<S, MR>(&mut acc, a, 1, kd, panel.add(k0 * 4 * w)) };
            out[r..r + MR].copy_from_slice(&acc);
        });
    }
}

/// 64 bytes aligned like the widest vector: the unit in which callers allocate
/// the results of [`rows_x4v_kblocked`] ([`accumulator_room`]) before the
/// threads start (a refused allocation is then an error of the call, not a
/// panic on a pool thread), without naming the vector type; the kernel sees
/// them as `[S; 4]` through [`accumulators`].
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct VectorRoom([u8; 64]);

// SAFETY: plain bytes.
unsafe impl Zeroable for VectorRoom {}

/// Room for the results of `rows` rows (four vectors of `lanes` elements of
/// `E` each), or the error naming `what`.
pub fn accumulator_room<E>(rows: usize, lanes: usize, what: &str) -> Result<Vec<VectorRoom>> {
    let bytes = rows.saturating_mul(4 * lanes * size_of::<E>());
    alloc::zeroed(&[bytes.div_ceil(size_of::<VectorRoom>())], what)
}

/// `room` as results of `S`: as many as fit (at least the rows it was made for
/// by [`accumulator_room`] with `S`'s lanes).
#[inline(always)]
pub fn accumulators<S: Simd>(room: &mut [VectorRoom]) -> &mut [[S; 4]] {
    const {
        let (room, vectors) = (size_of::<VectorRoom>(), size_of::<[S; 4]>());
        assert!(align_of::<S>() <= align_of::<VectorRoom>());
        assert!(room % vectors == 0 || vectors % room == 0);
    };
    let len = size_of_val(room) / size_of::<[S; 4]>();
    // SAFETY: `len` entries of `[S; 4]` fit in the bytes of `room`, whose
    // alignment (64) is a multiple of S's (asserted above); those bytes are
    // initialised (zeroed when allocated, then written only as `S`), and every
    // bit pattern is a valid `S`, a plain vector of floats (simd/vector.rs). The
    // new slice takes over the exclusive borrow of `room`.
    unsafe { std::slice::from_raw_parts_mut(room.as_mut_ptr().cast::<[S; 4]>(), len) }
}

/// 1 × 8v: one row against two panels at once, eight independent FMA chains
/// instead of four, enough to hide FMA latency when a step has a single row
/// (batch 1). Each output is the same chain as in [`mrx4v`], so results are
/// bitwise those of two `mrx4v::<S, 1>` calls.
///
/// # Safety
/// As for [`mrx4v`], for both panels.
#[inline(always)]
pub unsafe fn row_x8v<S: Simd>(
    a: *const S::E,
    a_cs: usize,
    depth: usize,
    panels: [*const S::E; 2],
) -> [[S; 4]; 2] {
    let w = S::LANES;
    let mut acc = [[S::splat(S::E::ZERO); 4]; 2];
    // Bytes of one panel row (4 vectors), and how far ahead to prefetch.
    let row_bytes = 4 * w * size_of::<S::E>();
    for k in 0..depth {
        // SAFETY: k < depth: inside both panels and the row (caller's contract).
        unsafe {
            let x = S::splat(*a.add(k * a_cs));
            for (acc, panel) in acc.iter_mut().zip(panels) {
                let p = panel.add(k * 4 * w);
                prefetch_ahead(p.cast::<u8>(), row_bytes);
                for (v, acc_v) in acc.iter_mut().enumerate() {
                    *acc_v = x.mul_add(S::load(p.add(v * w)), *acc_v);
                }
            }
        }
    }
    acc
}

/// Asks for the cache lines `ROW_PREFETCH_DISTANCE` panel rows past `row` (of
/// `row_bytes`) to come into L1: at batch 1 the panels stream from L2 with no
/// reuse, and the hardware prefetcher alone leaves the loads waiting.
/// A prefetch never faults, so addresses past the panel are harmless.
#[inline(always)]
fn prefetch_ahead(row: *const u8, row_bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let ahead = row.wrapping_add(ROW_PREFETCH_DISTANCE * row_bytes);
        for line in (0..row_bytes).step_by(64) {
            // SAFETY: prefetching is a hint: it reads nothing the program sees
            // and cannot fault, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast::<i8>()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (row, row_bytes);
}

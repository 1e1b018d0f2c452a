//! The micro-kernel every product runs on: MR rows of A times one packed panel
//! of B four vectors wide, accumulated in registers; plus the partial loads and
//! stores for the ragged edges. Written once over `Simd`.

use crate::float::Float;
use crate::simd::Simd;

/// Runs `body::<MR>(first_slot)` over `count` slots in groups of the largest MR
/// the ISA's register file holds (4 with 32 vector registers, else 2), then 1.
macro_rules! for_row_groups {
    ($S:ty, $count:expr, |$r:ident, $mr:ident| $body:expr) => {{
        let count = $count;
        let mut $r = 0;
        if std::mem::size_of::<$S>() >= 64 {
            while $r + 4 <= count {
                const $mr: usize = 4;
                $body;
                $r += 4;
            }
        }
        while $r + 2 <= count {
            const $mr: usize = 2;
            $body;
            $r += 2;
        }
        while $r < count {
            const $mr: usize = 1;
            $body;
            $r += 1;
        }
    }};
}

// ---------------------------------------------------------------------------

/// `acc[r][v] += Σ_k a[r][k·a_cs] · panel[k][v·LANES..]` for MR rows and 4
/// vectors, continuing each output's FMA chain in k order.
///
/// Each output is one FMA chain in k order, whatever MR is, and a chain split
/// over several calls (depth blocks, accumulators stored in between) gives the
/// same bits as one call: grouping rows or blocking depth differently (other
/// chunks, other thread counts) never changes a result.
///
/// # Safety
/// `a[r]` readable at every multiple of `a_cs` below `depth · a_cs`; `panel`
/// readable for `depth · 4 · LANES` elements.
#[inline(always)]
pub unsafe fn tile_into<S: Simd, const MR: usize>(
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

/// [`tile_into`] from zero.
///
/// # Safety
/// As for [`tile_into`].
#[inline(always)]
pub unsafe fn tile<S: Simd, const MR: usize>(
    a: [*const S::E; MR],
    a_cs: usize,
    depth: usize,
    panel: *const S::E,
) -> [[S; 4]; MR] {
    let mut acc = [[S::splat(S::E::ZERO); 4]; MR];
    // SAFETY: forwarded from the caller.
    unsafe { tile_into(&mut acc, a, a_cs, depth, panel) };
    acc
}

/// Depth of a panel slice that stays in L1 (24 KiB: half of L1d, the rest for
/// the rows of A and the accumulators) while every row group runs over it.
#[inline(always)]
pub fn l1_depth<S: Simd>() -> usize {
    (24 * 1024 / (4 * S::LANES * std::mem::size_of::<S::E>())).max(16)
}

/// Products of `rows` rows of A with one panel, depth-blocked so the panel slice
/// is read from L2 once per block rather than once per row group; results go
/// to `out[row]` (4 vectors each).
///
/// # Safety
/// `row_ptr(r)` readable for `depth` elements (column stride 1) for r < rows;
/// `panel` for `depth · 4 · LANES`; `out` holds at least `rows` entries.
#[inline(always)]
pub unsafe fn panel_product<S: Simd>(
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
            unsafe { tile_into::<S, MR>(&mut acc, a, 1, kd, panel.add(k0 * 4 * w)) };
            out[r..r + MR].copy_from_slice(&acc);
        });
    }
}

/// Loads `n` (≤ LANES) elements, zero-filling the rest.
///
/// # Safety
/// `p` readable for `min(n, LANES)` elements.
#[inline(always)]
pub unsafe fn load_n<S: Simd>(p: *const S::E, n: usize) -> S {
    if n >= S::LANES {
        // SAFETY: n ≥ LANES elements are readable.
        unsafe { S::load(p) }
    } else {
        let mut tmp = [S::E::ZERO; 16];
        // SAFETY: n < LANES ≤ 16 elements are readable at p and fit in tmp.
        unsafe {
            std::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), n);
            S::load(tmp.as_ptr())
        }
    }
}

/// Stores the first `n` (≤ LANES) lanes.
///
/// # Safety
/// `p` writable for `min(n, LANES)` elements.
#[inline(always)]
pub unsafe fn store_n<S: Simd>(v: S, p: *mut S::E, n: usize) {
    if n >= S::LANES {
        // SAFETY: n ≥ LANES elements are writable.
        unsafe { v.store(p) }
    } else if n > 0 {
        let mut tmp = [S::E::ZERO; 16];
        // SAFETY: LANES ≤ 16 fit in tmp; n < LANES elements are writable at p.
        unsafe {
            v.store(tmp.as_mut_ptr());
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), p, n);
        }
    }
}

/// [`tile`] for one row against two panels at once: eight independent FMA
/// chains instead of four, enough to hide FMA latency when a step has a single
/// row (batch 1). Each output is the same chain as in `tile`, so results are
/// bitwise those of two `tile::<S, 1>` calls.
///
/// # Safety
/// As for [`tile`], for both panels.
#[inline(always)]
pub unsafe fn tile_pair<S: Simd>(
    a: *const S::E,
    a_cs: usize,
    depth: usize,
    panels: [*const S::E; 2],
) -> [[S; 4]; 2] {
    let w = S::LANES;
    let mut acc = [[S::splat(S::E::ZERO); 4]; 2];
    for k in 0..depth {
        // SAFETY: k < depth: inside both panels and the row (caller's contract).
        unsafe {
            let x = S::splat(*a.add(k * a_cs));
            for (acc, panel) in acc.iter_mut().zip(panels) {
                let p = panel.add(k * 4 * w);
                for (v, acc_v) in acc.iter_mut().enumerate() {
                    *acc_v = x.mul_add(S::load(p.add(v * w)), *acc_v);
                }
            }
        }
    }
    acc
}

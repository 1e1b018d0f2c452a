//! The micro-kernel every product runs on: MR rows of A times one packed panel
//! of B four vectors wide, accumulated in registers; plus the partial loads and
//! stores for the ragged edges. Written once over `Simd`.

use crate::float::Float;
use crate::simd::Simd;

// ---------------------------------------------------------------------------

/// `acc[r][v] = Σ_k a[r][k·a_cs] · panel[k][v·LANES..]` for MR rows and 4 vectors.
///
/// Each output is one FMA chain in k order, whatever MR is: grouping rows
/// differently (other chunks, other thread counts) gives the same bits.
///
/// # Safety
/// `a[r]` readable at every multiple of `a_cs` below `depth · a_cs`; `panel`
/// readable for `depth · 4 · LANES` elements.
#[inline(always)]
pub unsafe fn tile<S: Simd, const MR: usize>(
    a: [*const S::E; MR],
    a_cs: usize,
    depth: usize,
    panel: *const S::E,
) -> [[S; 4]; MR] {
    let w = S::LANES;
    let mut acc = [[S::splat(S::E::ZERO); 4]; MR];
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
                    acc[r][v] = x.mul_add(b[v], acc[r][v]);
                }
            }
        }
    }
    acc
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
pub(crate) use for_row_groups;

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

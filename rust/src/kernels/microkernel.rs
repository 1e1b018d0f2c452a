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
use crate::simd::{Bf16, Simd, SimdElement};
use crate::tuning::{
    CACHE_LINE, L1_PANEL_BYTES, MIN_PANEL_DEPTH, MR_16_REGISTERS, MR_32_REGISTERS, NV_16_REGISTERS,
    NV_32_REGISTERS, REMAINDER_FULL_WIDTH_ROWS, ROW_PREFETCH_DISTANCE,
};

/// What the panels of B hold: elements (`f32`, `f64`), or [`Bf16`] for
/// bf16 inference's recurrent weights, widened to elements as they are
/// loaded. Either way a product sees the same values in the same FMA chain,
/// so bf16 panels give the bits of element panels of the rounded weights.
///
/// Loads go by pairs of vectors (v, v + 1, v even: every tile is an even
/// number of vectors wide), which bf16 panels store interleaved
/// ([`Simd::load_bf16_pair`]; `pack::PanelCache::forward_bf16`).
pub trait PanelWeight<E>: Copy + Send + Sync + 'static {
    /// Vectors v and v + 1 of a panel row, from `p`, the start of vector v.
    ///
    /// # Safety
    /// `p` readable for `2 · S::LANES` weights.
    unsafe fn load_pair<S: Simd<E = E>>(p: *const Self) -> [S; 2];
}

impl<E: SimdElement> PanelWeight<E> for E {
    #[inline(always)]
    unsafe fn load_pair<S: Simd<E = E>>(p: *const E) -> [S; 2] {
        // SAFETY: forwarded from the caller.
        unsafe { [S::load(p), S::load(p.add(S::LANES))] }
    }
}

impl<E: SimdElement> PanelWeight<E> for Bf16 {
    #[inline(always)]
    unsafe fn load_pair<S: Simd<E = E>>(p: *const Bf16) -> [S; 2] {
        // SAFETY: forwarded from the caller.
        unsafe { S::load_bf16_pair(p) }
    }
}

/// The NV (even) vectors of a panel row from `p`, loaded by pairs.
///
/// # Safety
/// `p` readable for `NV · S::LANES` weights.
#[inline(always)]
unsafe fn load_row<S: Simd, W: PanelWeight<S::E>, const NV: usize>(p: *const W) -> [S; NV] {
    const { assert!(NV.is_multiple_of(2), "panel loads go by pairs") };
    let mut b = [S::splat(S::E::ZERO); NV];
    for j in 0..NV / 2 {
        // SAFETY: vectors 2j, 2j + 1 < NV are inside the caller's region.
        let [lo, hi] = unsafe { W::load_pair::<S>(p.add(2 * j * S::LANES)) };
        b[2 * j] = lo;
        b[2 * j + 1] = hi;
    }
    b
}

/// MR × NV, accumulating: `acc[r][v] += Σ_k a[r][k·a_cs] · panel[k·ps + v·LANES..]`
/// for MR rows and NV vectors of a panel whose rows are `ps` elements apart,
/// continuing each output's FMA chain in k order.
///
/// A chain split over several calls (depth blocks, accumulators stored in
/// between) gives the same bits as one call, and so does any MR or NV: each
/// output sees the same FMAs in the same order.
///
/// # Safety
/// `a[r]` readable at every multiple of `a_cs` below `depth · a_cs`; `panel`
/// readable for NV vectors at every multiple of `ps` below `depth · ps`.
#[inline(always)]
pub unsafe fn mrxnv_accumulate<S: Simd, const MR: usize, const NV: usize>(
    acc: &mut [[S; NV]; MR],
    a: [*const S::E; MR],
    a_cs: usize,
    depth: usize,
    panel: *const S::E,
    ps: usize,
) {
    // SAFETY: forwarded.
    unsafe {
        mrxnv_chain::<S, S::E, MR, NV, false>(acc, a, a_cs, depth, panel, ps, std::ptr::null(), 0)
    }
}

/// [`mrxnv_accumulate`], prefetching into L1, at each k below `pf_rows`, the
/// panel row (ps elements) at `pf` + k·ps: the next depth block's rows come in
/// while the last row group of this block runs, rather than on demand when
/// the next block's first group asks for them (a line from L3 costs more than
/// the FMAs of a row). `pf` may point anywhere: a prefetch never faults.
///
/// # Safety
/// As for [`mrxnv_accumulate`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn mrxnv_accumulate_prefetching<
    S: Simd,
    W: PanelWeight<S::E>,
    const MR: usize,
    const NV: usize,
>(
    acc: &mut [[S; NV]; MR],
    a: [*const S::E; MR],
    a_cs: usize,
    depth: usize,
    panel: *const W,
    ps: usize,
    pf: *const W,
    pf_rows: usize,
) {
    // SAFETY: forwarded.
    unsafe { mrxnv_chain::<S, W, MR, NV, true>(acc, a, a_cs, depth, panel, ps, pf, pf_rows) }
}

/// The body of [`mrxnv_accumulate`] and [`mrxnv_accumulate_prefetching`]:
/// `PF` chooses at compile time whether the loop prefetches.
///
/// # Safety
/// As for [`mrxnv_accumulate`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn mrxnv_chain<
    S: Simd,
    W: PanelWeight<S::E>,
    const MR: usize,
    const NV: usize,
    const PF: bool,
>(
    acc: &mut [[S; NV]; MR],
    a: [*const S::E; MR],
    a_cs: usize,
    depth: usize,
    panel: *const W,
    ps: usize,
    pf: *const W,
    pf_rows: usize,
) {
    let mut local = *acc;
    for k in 0..depth {
        if PF && k < pf_rows {
            prefetch_l1(pf.wrapping_add(k * ps).cast::<u8>(), ps * size_of::<W>());
        }
        // SAFETY: k < depth, so the NV vectors of panel row k and a[r][k] are
        // inside the regions the caller vouched for.
        unsafe {
            let p = panel.add(k * ps);
            let b: [S; NV] = load_row::<S, W, NV>(p);
            for r in 0..MR {
                let x = S::splat(*a[r].add(k * a_cs));
                for v in 0..NV {
                    local[r][v] = x.mul_add(b[v], local[r][v]);
                }
            }
        }
    }
    *acc = local;
}

/// MR × 4v, accumulating: [`mrxnv_accumulate`] over a whole panel (4 vectors
/// per row of k).
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
    // SAFETY: forwarded from the caller; 4 vectors per panel row.
    unsafe { mrxnv_accumulate::<S, MR, 4>(acc, a, a_cs, depth, panel, 4 * S::LANES) }
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
    l1_depth_of::<S, S::E>()
}

/// [`l1_depth`] for a panel of `W` (bf16 panels: twice as deep).
#[inline(always)]
pub fn l1_depth_of<S: Simd, W>() -> usize {
    (L1_PANEL_BYTES / (4 * S::LANES * std::mem::size_of::<W>())).max(MIN_PANEL_DEPTH)
}

/// Where the step kernels read the rows of A: each row where the caller keeps
/// it ([`Rows`]: the products of the time loops, since [`pack_rows`] copies
/// one element at a time and cost more than one broadcast stream gains), or
/// all of them packed once per step ([`PackedRows`]: rows that recurrent
/// dropout scales, or a projection's m).
pub trait RowSource<E>: Copy {
    /// Element k0 of row r0 + i, in the group of `group` rows starting at r0,
    /// and the distance between consecutive k of that row.
    fn at(&self, r0: usize, group: usize, i: usize, k0: usize) -> (*const E, usize);
}

/// Rows where the caller keeps them: row r at `row_ptr(r)`, column stride 1.
#[derive(Clone, Copy)]
pub struct Rows<F>(pub F);

impl<E, F: Fn(usize) -> *const E + Copy> RowSource<E> for Rows<F> {
    #[inline(always)]
    fn at(&self, r0: usize, _group: usize, i: usize, k0: usize) -> (*const E, usize) {
        ((self.0)(r0 + i).wrapping_add(k0), 1)
    }
}

/// Rows packed by [`pack_rows`] for the ISA's MR: each group of rows k-major,
/// so a tile's broadcasts read one sequential stream instead of MR.
#[derive(Clone, Copy)]
pub struct PackedRows<E> {
    pub data: *const E,
    pub depth: usize,
}

impl<E: Copy> RowSource<E> for PackedRows<E> {
    #[inline(always)]
    fn at(&self, r0: usize, group: usize, i: usize, k0: usize) -> (*const E, usize) {
        (
            self.data.wrapping_add(r0 * self.depth + k0 * group + i),
            group,
        )
    }
}

/// Rows per group of the step kernels' tiles for `S` (the tile's MR).
#[inline(always)]
pub fn rows_per_group<S: Simd>() -> usize {
    if size_of::<S>() >= 64 {
        MR_32_REGISTERS
    } else {
        MR_16_REGISTERS
    }
}

/// The row groups of `rows` rows for a tile of at most `mr` rows: group i
/// starts at row `start(i)` and holds `len(i)` rows. Where MR groups would
/// leave a remainder of more than [`REMAINDER_FULL_WIDTH_ROWS`] rows, the rows
/// are dealt out evenly over the same number of groups instead (16 = 6 + 5 + 5
/// rather than 6 + 6 + 4): a short tile has fewer FMA chains than FMA latency
/// × ports needs (4 rows × 2 vectors = 8 on AVX2, the bare minimum) and runs
/// below the full tiles' rate, while 5 rows give 10. A smaller remainder stays
/// apart and runs over the whole panel width at once.
///
/// [`pack_rows`] and the tiles (`rows_tiled`) both follow it, so a group's
/// packed rows are where its tile reads them; which rows share a group never
/// changes a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGroups {
    /// Groups.
    pub count: usize,
    /// Rows in all, rows of each of the first `long` groups; the later ones
    /// hold one fewer (the last one: what is left).
    rows: usize,
    size: usize,
    long: usize,
}

impl RowGroups {
    /// The groups of `rows` rows for tiles of `mr` rows.
    #[inline(always)]
    pub fn new(rows: usize, mr: usize) -> Self {
        let count = rows.div_ceil(mr);
        if rows % mr <= REMAINDER_FULL_WIDTH_ROWS {
            // Full groups, then the remainder (none, or up to
            // REMAINDER_FULL_WIDTH_ROWS rows) as a last, short group.
            RowGroups {
                count,
                rows,
                size: mr,
                long: rows / mr,
            }
        } else {
            // Dealt out evenly: `long` groups of ⌈rows / count⌉ rows, the
            // others one fewer.
            let size = rows.div_ceil(count);
            RowGroups {
                count,
                rows,
                size,
                long: rows - (size - 1) * count,
            }
        }
    }

    /// First row of group `i` (≤ count; `start(count)` = rows).
    #[inline(always)]
    pub fn start(&self, i: usize) -> usize {
        (i * self.size - i.saturating_sub(self.long)).min(self.rows)
    }

    /// Rows of group `i` (< count).
    #[inline(always)]
    pub fn len(&self, i: usize) -> usize {
        self.start(i + 1) - self.start(i)
    }
}

/// Packs `rows` rows of `depth` elements (row r at `row_ptr(r)`, unit column
/// stride) into `out` for [`PackedRows`]: rows in the groups of [`RowGroups`]
/// for the ISA's MR ([`rows_per_group`]), each group k-major.
///
/// # Safety
/// `row_ptr(r)` readable for `depth` elements for r < rows.
#[inline(always)]
pub unsafe fn pack_rows<S: Simd>(
    rows: usize,
    row_ptr: impl Fn(usize) -> *const S::E,
    depth: usize,
    out: &mut [S::E],
) {
    let groups = RowGroups::new(rows, rows_per_group::<S>());
    let out = &mut out[..rows * depth];
    for g in 0..groups.count {
        let (r0, group) = (groups.start(g), groups.len(g));
        let dst = &mut out[r0 * depth..][..group * depth];
        for i in 0..group {
            // SAFETY: row r0 + i < rows holds `depth` readable elements.
            let src = unsafe { std::slice::from_raw_parts(row_ptr(r0 + i), depth) };
            for (k, &x) in src.iter().enumerate() {
                dst[k * group + i] = x;
            }
        }
    }
}

/// One MR × NV tile of [`rows_x4v_kblocked`]: rows `r..r + MR` (of a group of
/// `group` rows starting at `g0`), vectors `v0..v0 + NV` of the panel, depth
/// `k0..k0 + kd`, continuing the chains kept in `out` (from zero at k0 = 0). A non-zero
/// `prefetch_rows` also brings that many panel rows from depth k0 + kd on
/// into L1 (addresses past the panel are harmless: a prefetch never faults).
///
/// # Safety
/// As for [`rows_x4v_kblocked`], with r + MR ≤ rows, v0 + NV ≤ 4 and
/// k0 + kd ≤ depth.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<S: Simd, W: PanelWeight<S::E>, const MR: usize, const NV: usize>(
    r: usize,
    v0: usize,
    a: impl RowSource<S::E>,
    k0: usize,
    kd: usize,
    panel: *const W,
    out: &mut [[S; 4]],
    prefetch_rows: usize,
) {
    let w = S::LANES;
    // The first depth block starts the chains from zero in registers (the
    // same +0.0 a zeroed `out` would give), later ones from `out`: no pass
    // zeroes the results first (measured: 2 % of the M forward was that fill).
    let mut acc: [[S; NV]; MR] = if k0 == 0 {
        [[S::splat(S::E::ZERO); NV]; MR]
    } else {
        std::array::from_fn(|i| std::array::from_fn(|v| out[r + i][v0 + v]))
    };
    let a_cs = a.at(r, MR, 0, k0).1;
    let rows: [*const S::E; MR] = std::array::from_fn(|i| a.at(r, MR, i, k0).0);
    // SAFETY: rows r..r+MR < rows, vectors v0..v0+NV ≤ 4 and k0 + kd ≤ depth:
    // inside the caller's regions.
    unsafe {
        if prefetch_rows > 0 {
            mrxnv_accumulate_prefetching::<S, W, MR, NV>(
                &mut acc,
                rows,
                a_cs,
                kd,
                panel.add(k0 * 4 * w + v0 * w),
                4 * w,
                panel.wrapping_add((k0 + kd) * 4 * w),
                prefetch_rows,
            )
        } else {
            mrxnv_chain::<S, W, MR, NV, false>(
                &mut acc,
                rows,
                a_cs,
                kd,
                panel.add(k0 * 4 * w + v0 * w),
                4 * w,
                std::ptr::null(),
                0,
            )
        }
    };
    for (i, acc) in acc.iter().enumerate() {
        out[r + i][v0..v0 + NV].copy_from_slice(acc);
    }
}

/// [`tile`] for a row count known only at run time (a group of
/// [`RowGroups`]): one instantiation per count.
///
/// # Safety
/// As for [`tile`], with `n` ≤ 6 rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_n<S: Simd, W: PanelWeight<S::E>, const NV: usize>(
    n: usize,
    r: usize,
    v0: usize,
    a: impl RowSource<S::E>,
    k0: usize,
    kd: usize,
    panel: *const W,
    out: &mut [[S; 4]],
    prefetch_rows: usize,
) {
    let pf = prefetch_rows;
    // SAFETY: forwarded from the caller.
    unsafe {
        match n {
            0 => {}
            1 => tile::<S, W, 1, NV>(r, v0, a, k0, kd, panel, out, pf),
            2 => tile::<S, W, 2, NV>(r, v0, a, k0, kd, panel, out, pf),
            3 => tile::<S, W, 3, NV>(r, v0, a, k0, kd, panel, out, pf),
            4 => tile::<S, W, 4, NV>(r, v0, a, k0, kd, panel, out, pf),
            5 => tile::<S, W, 5, NV>(r, v0, a, k0, kd, panel, out, pf),
            6 => tile::<S, W, 6, NV>(r, v0, a, k0, kd, panel, out, pf),
            _ => unreachable!("tile_n: at most 6 rows"),
        }
    }
}

/// [`rows_x4v_kblocked`] with register tiles of at most MR × NV: for each
/// depth block, the panel in 4 / NV passes of NV vectors, each pass over the
/// row groups of [`RowGroups`]; a short last group (at most
/// [`REMAINDER_FULL_WIDTH_ROWS`] rows) runs over the whole width at once
/// after the passes.
///
/// # Safety
/// As for [`rows_x4v_kblocked`].
#[inline(always)]
unsafe fn rows_tiled<S: Simd, W: PanelWeight<S::E>, const MR: usize, const NV: usize>(
    rows: usize,
    a: impl RowSource<S::E>,
    depth: usize,
    panel: *const W,
    out: &mut [[S; 4]],
) {
    const { assert!(MR <= 6 && 4 % NV == 0) };
    let kc = l1_depth_of::<S, W>();
    let groups = RowGroups::new(rows, MR);
    // Groups run in the passes; a last one of at most
    // REMAINDER_FULL_WIDTH_ROWS rows (fewer than MR) over the whole width.
    let last_short = groups.count > 0 && {
        let n = groups.len(groups.count - 1);
        n <= REMAINDER_FULL_WIDTH_ROWS && n < MR
    };
    let passed = groups.count - usize::from(last_short);
    for k0 in (0..depth).step_by(kc) {
        let kd = kc.min(depth - k0);
        // SAFETY (all tiles): rows below `rows`, vectors below 4, depth below
        // k0 + kd ≤ depth: inside the caller's regions.
        unsafe {
            for v0 in (0..4).step_by(NV) {
                for g in 0..passed {
                    let (r, n) = (groups.start(g), groups.len(g));
                    // The last group of the last pass brings in the next
                    // depth block (after the last, the next panel's first:
                    // panels lie one after another).
                    let pf = if v0 + NV == 4 && g + 1 == passed {
                        kc
                    } else {
                        0
                    };
                    if n == MR {
                        tile::<S, W, MR, NV>(r, v0, a, k0, kd, panel, out, pf);
                    } else {
                        tile_n::<S, W, NV>(n, r, v0, a, k0, kd, panel, out, pf);
                    }
                }
            }
            if last_short {
                let g = groups.count - 1;
                let (r, n) = (groups.start(g), groups.len(g));
                tile_n::<S, W, 4>(n, r, 0, a, k0, kd, panel, out, 0);
            }
        }
    }
}

/// `rows` × 4v, depth-blocked: the products of `rows` rows of A with one
/// panel, in blocks of [`l1_depth`] so the panel slice is read from L2 once per
/// block rather than once per row group; row r's result goes to `out[r]` (4
/// vectors each). The register tile is the ISA's (`tuning.rs`); every output
/// is one FMA chain in k order whatever the tile or the row source, so the
/// rows grouped with a row never change its result.
///
/// # Safety
/// `a` addresses `rows` rows of `depth` readable elements (for [`PackedRows`],
/// as [`pack_rows`] wrote them for this `S`); `panel` readable for
/// `depth · 4 · LANES`; `out` holds at least `rows` entries.
#[inline(always)]
pub unsafe fn rows_x4v_kblocked<S: Simd>(
    rows: usize,
    a: impl RowSource<S::E>,
    depth: usize,
    panel: *const S::E,
    out: &mut [[S; 4]],
) {
    // SAFETY: forwarded from the caller.
    unsafe { rows_x4v_kblocked_of::<S, S::E>(rows, a, depth, panel, out) }
}

/// [`rows_x4v_kblocked`] over a panel of any [`PanelWeight`] (bf16 panels
/// included): the same chains over the weights' values.
///
/// # Safety
/// As for [`rows_x4v_kblocked`], `panel` readable for `depth · 4 · LANES`
/// weights.
#[inline(always)]
pub unsafe fn rows_x4v_kblocked_of<S: Simd, W: PanelWeight<S::E>>(
    rows: usize,
    a: impl RowSource<S::E>,
    depth: usize,
    panel: *const W,
    out: &mut [[S; 4]],
) {
    if depth == 0 {
        // No depth block runs: the products are zero.
        out[..rows].fill([S::splat(S::E::ZERO); 4]);
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        // 64-byte vectors: AVX-512, with 32 vector registers.
        if size_of::<S>() >= 64 {
            rows_tiled::<S, W, MR_32_REGISTERS, NV_32_REGISTERS>(rows, a, depth, panel, out);
        } else {
            rows_tiled::<S, W, MR_16_REGISTERS, NV_16_REGISTERS>(rows, a, depth, panel, out);
        }
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

/// Room for `len` elements of `E` (the rows [`pack_rows`] writes), or the
/// error naming `what`, without naming `E`'s vector type (as
/// [`accumulator_room`]); seen as elements through [`elements`].
pub fn packed_room<E>(len: usize, what: &str) -> Result<Vec<VectorRoom>> {
    let bytes = len.saturating_mul(size_of::<E>());
    alloc::zeroed(&[bytes.div_ceil(size_of::<VectorRoom>())], what)
}

/// `room` as elements of `E`: as many as fit.
#[inline(always)]
pub fn elements<E: SimdElement>(room: &mut [VectorRoom]) -> &mut [E] {
    const { assert!(align_of::<E>() <= align_of::<VectorRoom>()) };
    let len = size_of_val(room) / size_of::<E>();
    // SAFETY: `len` elements of E fit in the bytes of `room`, aligned for E
    // (asserted); the bytes are initialised (zeroed when allocated, then
    // written only as f32 or f64: a kept room serves both), and every bit
    // pattern is a valid f32 or f64 (the only `SimdElement`s). The new slice
    // takes over the exclusive borrow.
    unsafe { std::slice::from_raw_parts_mut(room.as_mut_ptr().cast::<E>(), len) }
}

/// 1 × 4Pv: one row against P panels at once, 4·P independent FMA chains
/// instead of four, enough to hide FMA latency when a step has a single row
/// (batch 1), and P sequential streams of panel rows, each prefetched a few
/// rows ahead. Each output is the same chain as in [`mrx4v`], so results are
/// bitwise those of P `mrx4v::<S, 1>` calls.
///
/// # Safety
/// As for [`mrx4v`], for every panel.
#[inline(always)]
pub unsafe fn row_x4pv<S: Simd, const P: usize>(
    a: *const S::E,
    a_cs: usize,
    depth: usize,
    panels: [*const S::E; P],
) -> [[S; 4]; P] {
    // SAFETY: forwarded from the caller.
    unsafe { row_x4pv_of::<S, S::E, P>(a, a_cs, depth, panels) }
}

/// [`row_x4pv`] over panels of any [`PanelWeight`] (bf16 panels included).
///
/// # Safety
/// As for [`row_x4pv`], each panel readable for `depth · 4 · LANES` weights.
#[inline(always)]
pub unsafe fn row_x4pv_of<S: Simd, W: PanelWeight<S::E>, const P: usize>(
    a: *const S::E,
    a_cs: usize,
    depth: usize,
    panels: [*const W; P],
) -> [[S; 4]; P] {
    // SAFETY: forwarded from the caller.
    unsafe { row_x4pv_with::<S, W, P, true>(a, a_cs, depth, panels) }
}

/// [`row_x4pv_of`] with the prefetch of rows ahead chosen at compile time
/// (`PF`): it pays where the panels stream from L3, and costs where they sit
/// in L2, whose hardware prefetcher keeps up with P sequential streams by
/// itself (the forward's choice: `tuning::BATCH1_PREFETCH_BYTES`). The
/// prefetch is only a hint: both give the same bits.
///
/// # Safety
/// As for [`row_x4pv_of`].
#[inline(always)]
pub unsafe fn row_x4pv_with<S: Simd, W: PanelWeight<S::E>, const P: usize, const PF: bool>(
    a: *const S::E,
    a_cs: usize,
    depth: usize,
    panels: [*const W; P],
) -> [[S; 4]; P] {
    let w = S::LANES;
    let mut acc = [[S::splat(S::E::ZERO); 4]; P];
    // Bytes of one panel row (4 vectors), and how far ahead to prefetch.
    let row_bytes = 4 * w * size_of::<W>();
    for k in 0..depth {
        // SAFETY: k < depth: inside every panel and the row (caller's contract).
        unsafe {
            let x = S::splat(*a.add(k * a_cs));
            for (acc, panel) in acc.iter_mut().zip(panels) {
                let p = panel.add(k * 4 * w);
                if PF {
                    prefetch_ahead(p.cast::<u8>(), row_bytes);
                }
                let b = load_row::<S, W, 4>(p);
                for (acc_v, b_v) in acc.iter_mut().zip(b) {
                    *acc_v = x.mul_add(b_v, *acc_v);
                }
            }
        }
    }
    acc
}

/// Asks for the `bytes` from `start` to come into L1.
#[inline(always)]
pub(crate) fn prefetch_l1(start: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for line in (0..bytes).step_by(CACHE_LINE) {
            // SAFETY: prefetching is a hint: it reads nothing the program sees
            // and cannot fault, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line).cast::<i8>()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}

/// Asks for the cache lines `ROW_PREFETCH_DISTANCE` panel rows past `row` (of
/// `row_bytes`) to come into L1: at batch 1 the panels stream from L2 with no
/// reuse, and the hardware prefetcher alone leaves the loads waiting.
/// A prefetch never faults, so addresses past the panel are harmless.
#[inline(always)]
fn prefetch_ahead(row: *const u8, row_bytes: usize) {
    prefetch_l1(
        row.wrapping_add(ROW_PREFETCH_DISTANCE * row_bytes),
        row_bytes,
    );
}

#[cfg(test)]
mod tests {
    use super::{
        accumulator_room, accumulators, pack_rows, rows_per_group, rows_x4v_kblocked, PackedRows,
        RowGroups, Rows,
    };
    use crate::simd::{dispatch, Isa, Kernel, Simd};
    use crate::tuning::REMAINDER_FULL_WIDTH_ROWS;

    #[test]
    fn row_groups_cover_the_rows_evenly() {
        let lens = |rows: usize, mr: usize| {
            let g = RowGroups::new(rows, mr);
            (0..g.count).map(|i| g.len(i)).collect::<Vec<_>>()
        };
        assert_eq!(lens(16, 6), [6, 5, 5]);
        assert_eq!(lens(10, 6), [5, 5]);
        assert_eq!(lens(12, 6), [6, 6]);
        assert_eq!(lens(14, 6), [6, 6, 2]);
        assert_eq!(lens(1, 6), [1]);
        assert_eq!(lens(0, 6), Vec::<usize>::new());
        for mr in 1..=6 {
            for rows in 0..200 {
                let g = RowGroups::new(rows, mr);
                assert_eq!(g.count, rows.div_ceil(mr), "{rows} rows, MR {mr}");
                let mut next = 0;
                for i in 0..g.count {
                    assert_eq!(g.start(i), next, "{rows} rows, MR {mr}, group {i}");
                    let n = g.len(i);
                    assert!(
                        (1..=mr).contains(&n),
                        "{rows} rows, MR {mr}, group {i}: {n}"
                    );
                    // Groups differ by at most one row, but for a short last
                    // group that runs apart.
                    if i + 1 < g.count {
                        let m = g.len(i + 1);
                        assert!(
                            n == m
                                || n == m + 1
                                || (i + 2 == g.count && m <= REMAINDER_FULL_WIDTH_ROWS)
                        );
                    }
                    next += n;
                }
                assert_eq!(next, rows, "{rows} rows, MR {mr}");
            }
        }
    }

    /// The products of packed rows (every grouping `pack_rows` and the tiles
    /// make) against the same rows in place and against each row's product
    /// alone, bit for bit.
    struct PackedSameAsInPlace;

    impl Kernel<f32> for PackedSameAsInPlace {
        type Output = ();
        fn run<S: Simd<E = f32>>(self) {
            let w = S::LANES;
            let depth = 300; // more than one depth block
            let mut seed = 7_u32;
            let mut next = || {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
            };
            let panel: Vec<f32> = (0..depth * 4 * w).map(|_| next()).collect();
            let bits = |acc: &[S; 4]| {
                let mut out = [0.0f32; 64];
                for (v, acc) in acc.iter().enumerate() {
                    // SAFETY: 4·w ≤ 64 elements written.
                    unsafe { acc.store(out.as_mut_ptr().add(v * w)) };
                }
                out[..4 * w].iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            for rows in 1..=3 * rows_per_group::<S>() + 2 {
                let a: Vec<f32> = (0..rows * depth).map(|_| next()).collect();
                let mut packed = vec![0.0; rows * depth];
                let row = |r: usize| a[r * depth..].as_ptr();
                let mut room = [
                    accumulator_room::<f32>(rows, w, "test").unwrap(),
                    accumulator_room::<f32>(rows, w, "test").unwrap(),
                    accumulator_room::<f32>(1, w, "test").unwrap(),
                ];
                let [in_place, from_packed, alone] = &mut room;
                let (in_place, from_packed, alone) = (
                    accumulators::<S>(in_place),
                    accumulators::<S>(from_packed),
                    accumulators::<S>(alone),
                );
                // SAFETY: `rows` rows of `depth` in `a`, `packed` holds them
                // all, the panel holds depth rows of 4·w, outputs `rows`.
                unsafe {
                    pack_rows::<S>(rows, row, depth, &mut packed);
                    rows_x4v_kblocked::<S>(rows, Rows(row), depth, panel.as_ptr(), in_place);
                    let packed = PackedRows {
                        data: packed.as_ptr(),
                        depth,
                    };
                    rows_x4v_kblocked::<S>(rows, packed, depth, panel.as_ptr(), from_packed);
                }
                for r in 0..rows {
                    // SAFETY: row r holds `depth` elements; one output.
                    unsafe {
                        let one = |_: usize| row(r);
                        rows_x4v_kblocked::<S>(1, Rows(one), depth, panel.as_ptr(), alone);
                    }
                    let want = bits(&alone[0]);
                    assert_eq!(bits(&in_place[r]), want, "{rows} rows, row {r}");
                    assert_eq!(bits(&from_packed[r]), want, "{rows} rows, row {r}");
                }
            }
        }
    }

    #[test]
    fn packed_rows_give_the_bits_of_rows_in_place() {
        for isa in Isa::available() {
            dispatch(isa, PackedSameAsInPlace);
        }
    }
}

//! One task's share of a large product, BLIS-style: B packed into panels of
//! NR columns in read order, A packed into slivers of MR rows, and an MR × NR
//! register tile (MR rows by NV vectors) over them, written once over
//! [`Simd`]. The tile and block sizes of each ISA are one table,
//! [`GEMM_SHAPES`](crate::tuning::GEMM_SHAPES).
//!
//! The loops are BLIS's five: columns of C in blocks of NC (B's packed block,
//! KC × NC, read from L3), depth in blocks of KC, rows in blocks of MC (A's
//! packed block, MC × KC, kept in L2), then every B micro-panel (KC × NR)
//! against every sliver of A's block (the tuning table says where each lives
//! per ISA, and why). The tasks of a product share each packed block of B
//! ([`pack_b_panels`] packs a share of its panels, [`rows_over_packed_b`]
//! runs a task's rows over all of it); [`gemm_task`] runs a task alone.
//!
//! Every element of C is one FMA chain in k order: it starts from zero (or
//! from C's value with `accumulate`), and between depth blocks the tile is
//! stored to C and loaded back, which rounds nothing. So neither the blocking,
//! nor the rows a task gets, nor which rows share a tile changes a bit; only
//! the ISA does (the portable path does not fuse).

use crate::simd::{Simd, SimdElement};
use crate::tuning::{GemmShape, GEMM_SHAPES, PACK_GROUP};

/// Elements of the largest register tile (MR · NR) of any ISA and type, the
/// size of the scratch tile that ragged edges go through.
const MAX_TILE: usize = 8 * 64;

/// Depth of a block when packing buffers could not be allocated and the
/// product runs on buffers on the stack (see [`StackBuffers`]).
pub const STACK_KC: usize = 64;
/// Elements of B's stack buffer: STACK_KC rows of the widest micro-panel.
const STACK_B: usize = STACK_KC * 64;
/// Elements of A's stack buffer: STACK_KC columns of the tallest sliver.
const STACK_A: usize = STACK_KC * 8;

/// Columns of A (transposed) that packing prefetches ahead of the one it
/// copies.
const PACK_AHEAD: usize = 8;

/// The shape of the register file `S` belongs to: AVX-512 (64-byte vectors,
/// 32 registers), AVX2 (32-byte vectors, 16 registers), or the portable path.
#[inline(always)]
pub const fn shape_index<S: Simd>() -> usize {
    if size_of::<S>() >= 64 {
        2
    } else if size_of::<S>() >= 32 {
        1
    } else {
        0
    }
}

/// The table row of `S`'s ISA.
#[inline(always)]
pub const fn shape<S: Simd>() -> GemmShape {
    GEMM_SHAPES[shape_index::<S>()]
}

/// Block sizes of one product on one ISA, in elements: depth `kc`, rows `mc`
/// (a multiple of MR), columns `nc` (a multiple of NR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocks {
    pub mr: usize,
    pub nr: usize,
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
}

impl Blocks {
    /// The table's blocks for `S`, shrunk to a product of `rows` (per task)
    /// × `k` × `n`, so that small products allocate small buffers.
    #[inline(always)]
    pub fn for_product<S: Simd>(rows: usize, k: usize, n: usize) -> Blocks {
        let s = shape::<S>();
        let size = size_of::<S::E>();
        let (mr, nr) = (s.mr, s.nv * S::LANES);
        // Depth blocks of equal size (at most KC): a short last block would
        // cost a round trip of C for little work.
        let kc = k.div_ceil(k.div_ceil(s.kc).max(1)).max(1);
        let mc = (s.a_block_bytes / (kc * size) / mr).max(1) * mr;
        let nc = (s.b_block_bytes / (kc * size) / nr).max(1) * nr;
        Blocks {
            mr,
            nr,
            kc,
            mc: mc.min(rows.next_multiple_of(mr)).max(mr),
            nc: nc.min(n.next_multiple_of(nr)).max(nr),
        }
    }

    /// The blocks of the stack buffers, for `S`.
    #[inline(always)]
    pub fn on_stack<S: Simd>() -> Blocks {
        let s = shape::<S>();
        let (mr, nr) = (s.mr, s.nv * S::LANES);
        const { assert!(shape::<S>().mr <= STACK_A / STACK_KC) };
        assert!(
            nr <= STACK_B / STACK_KC,
            "the stack buffer holds the widest micro-panel"
        );
        Blocks {
            mr,
            nr,
            kc: STACK_KC,
            mc: mr,
            nc: nr,
        }
    }

    /// The blocks of B that a product of depth `k` and width `n` runs over,
    /// in the order its chains need: columns in blocks of NC and, within
    /// each, depth in blocks of KC from the first.
    pub fn b_blocks(&self, k: usize, n: usize) -> impl Iterator<Item = BBlock> {
        let (kc, nc) = (self.kc, self.nc);
        (0..n).step_by(nc).flat_map(move |jc| {
            (0..k).step_by(kc).map(move |pc| BBlock {
                jc,
                nb: nc.min(n - jc),
                pc,
                kd: kc.min(k - pc),
            })
        })
    }

    /// Elements of A's packed block (MC × KC).
    pub fn a_len(&self) -> usize {
        self.mc * self.kc
    }

    /// Elements of B's packed block (KC × NC).
    pub fn b_len(&self) -> usize {
        self.kc * self.nc
    }
}

/// Packing buffers small enough for a thread's stack: the product runs on
/// them, slower (one panel of B at a time, A packed again for each), when the
/// heap refused the full-size ones. Same blocks of depth or not, same bits.
pub struct StackBuffers<E> {
    pub a: [E; STACK_A],
    pub b: [E; STACK_B],
}

impl<E: SimdElement> Default for StackBuffers<E> {
    fn default() -> Self {
        StackBuffers {
            a: [E::ZERO; STACK_A],
            b: [E::ZERO; STACK_B],
        }
    }
}

/// A strided read-only operand: element (i, j) at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct View<E> {
    pub ptr: *const E,
    pub rs: usize,
    pub cs: usize,
    /// With `Some`, the shared dimension k (A's columns, B's rows) is read in
    /// these runs rather than `cs` (A) or `rs` (B) apart: offsets in units of
    /// that stride.
    pub runs: Option<Runs>,
}

/// An order of the shared dimension k read in place: index k is element
/// v = k + `skip` of a sequence of runs of `len`, element r of run q lying
/// r·`inner` + q·`outer` strides from element 0 of run 0 (`outer` < 0 for
/// runs that go backwards in memory, as backward's steps do), offsets taken
/// from index 0's. The weight sums read the rows of a block of (step, row)
/// pairs this way instead of gathering them (`lstm.rs`, `weight_grads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runs {
    pub skip: usize,
    pub len: usize,
    pub inner: isize,
    pub outer: isize,
}

impl Runs {
    /// Where index k lies, in strides from index 0.
    #[inline(always)]
    pub fn offset(&self, k: usize) -> isize {
        let at =
            |v: usize| (v % self.len) as isize * self.inner + (v / self.len) as isize * self.outer;
        at(k + self.skip) - at(self.skip)
    }
}

impl<E> View<E> {
    /// Element (i, k) of A, for k at `at` strides along k (a [`KWalk`]
    /// position).
    #[inline(always)]
    fn a_at(&self, i: usize, at: isize) -> *const E {
        self.ptr
            .wrapping_add(i * self.rs)
            .wrapping_offset(at * self.cs as isize)
    }

    /// Element (k, j) of B, for k at `at` strides along k.
    #[inline(always)]
    fn b_at(&self, at: isize, j: usize) -> *const E {
        self.ptr
            .wrapping_add(j * self.cs)
            .wrapping_offset(at * self.rs as isize)
    }
}

/// Where k, k + 1, … lie along the k axis of a [`View`], in units of its
/// stride there: k itself without runs, else [`Runs::offset`], one step at a
/// time (the packing visits every k of a block in turn, and a division per
/// k cost as much as the copy it addressed).
#[derive(Clone, Copy)]
struct KWalk {
    /// The position of the next k.
    at: isize,
    /// Its index within its run, and the run length (`usize::MAX` without
    /// runs: never reached).
    r: usize,
    len: usize,
    /// The step within a run, and from a run's last element to the next
    /// run's first.
    inner: isize,
    jump: isize,
}

impl KWalk {
    #[inline(always)]
    fn new(runs: Option<Runs>, k: usize) -> KWalk {
        match runs {
            None => KWalk {
                at: k as isize,
                r: 0,
                len: usize::MAX,
                inner: 1,
                jump: 1,
            },
            Some(runs) => KWalk {
                at: runs.offset(k),
                r: (k + runs.skip) % runs.len,
                len: runs.len,
                inner: runs.inner,
                jump: runs.outer - (runs.len as isize - 1) * runs.inner,
            },
        }
    }

    /// The position of the current k; moves on to the next.
    #[inline(always)]
    fn step(&mut self) -> isize {
        let at = self.at;
        self.r += 1;
        if self.r == self.len {
            self.r = 0;
            self.at += self.jump;
        } else {
            self.at += self.inner;
        }
        at
    }
}

/// `$f::<S, MR, NV>(args)` with the register tile of `S`'s table row.
macro_rules! on_tile {
    ($f:ident::<$s:ident>($($arg:expr),* $(,)?)) => {
        match shape_index::<$s>() {
            2 => $f::<$s, { GEMM_SHAPES[2].mr }, { GEMM_SHAPES[2].nv }>($($arg),*),
            1 => $f::<$s, { GEMM_SHAPES[1].mr }, { GEMM_SHAPES[1].nv }>($($arg),*),
            _ => $f::<$s, { GEMM_SHAPES[0].mr }, { GEMM_SHAPES[0].nv }>($($arg),*),
        }
    };
}

/// One thread's product: `C = A·B` (or `C += A·B` with `accumulate`) for A
/// `m × k`, B `k × n`, C row-major with rows `ldc` apart, `k ≥ 1`, with the
/// register tile of `S`'s table row and the given blocks, packing into `a_buf`
/// (at least `blocks.a_len()` elements) and `b_buf` (`blocks.b_len()`).
///
/// # Safety
/// `a` addresses an m × k matrix and `b` a k × n matrix of readable elements;
/// `c` addresses m rows of n writable elements, rows `ldc ≥ n` apart, and
/// overlaps neither A nor B; `blocks` comes from [`Blocks`] for this `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_task<S: Simd>(
    m: usize,
    k: usize,
    n: usize,
    a: View<S::E>,
    b: View<S::E>,
    c: *mut S::E,
    ldc: usize,
    accumulate: bool,
    blocks: Blocks,
    a_buf: &mut [S::E],
    b_buf: &mut [S::E],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        on_tile!(blocked::<S>(
            m, k, n, a, b, c, ldc, accumulate, blocks, a_buf, b_buf
        ))
    }
}

/// [`gemm_task`] with an MR × NV tile.
///
/// # Safety
/// As for [`gemm_task`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn blocked<S: Simd, const MR: usize, const NV: usize>(
    m: usize,
    k: usize,
    n: usize,
    a: View<S::E>,
    b: View<S::E>,
    c: *mut S::E,
    ldc: usize,
    accumulate: bool,
    blocks: Blocks,
    a_buf: &mut [S::E],
    b_buf: &mut [S::E],
) {
    let nr = NV * S::LANES;
    debug_assert!(blocks.mr == MR && blocks.nr == nr);
    let Blocks { kc, mc, nc, .. } = blocks;
    assert!(a_buf.len() >= mc * kc && b_buf.len() >= kc * nc && mc % MR == 0 && nc % nr == 0);
    for block in blocks.b_blocks(k, n) {
        // SAFETY: rows pc..pc+kd < k and columns jc..jc+nb ≤ n of B; the
        // buffer holds kc × nc ≥ kd × nb (rounded up to panels).
        unsafe { pack_b_panels(b, block, nr, 0, b_buf) };
        // SAFETY: the caller's operands; B's block packed just above.
        unsafe { rows_over::<S, MR, NV>(m, a, c, ldc, accumulate, block, mc, b_buf, a_buf) };
    }
}

/// One block of B: columns `jc..jc + nb` by depth `pc..pc + kd`.
#[derive(Clone, Copy, Debug)]
pub struct BBlock {
    pub jc: usize,
    pub nb: usize,
    pub pc: usize,
    pub kd: usize,
}

/// Packs panels `first..` of `block` of B (NR = `nr` columns each, `kd × nr`
/// elements, the last padded with zeros) into `dst`, as many panels as it
/// holds whole (up to the block's last): a part of the packed block that
/// [`rows_over_packed_b`] reads, so that threads can share the packing.
///
/// # Safety
/// `b` addresses a matrix holding the block's kd × nb elements.
#[inline(always)]
pub unsafe fn pack_b_panels<E: SimdElement>(
    b: View<E>,
    block: BBlock,
    nr: usize,
    first: usize,
    dst: &mut [E],
) {
    let BBlock { jc, nb, pc, kd } = block;
    assert!(first * nr < nb, "gemm: packing past the block's last panel");
    let panels = (dst.len() / (kd * nr)).min(nb.div_ceil(nr) - first);
    let col = jc + first * nr;
    let cols = (nb - first * nr).min(panels * nr);
    // SAFETY: rows pc..pc+kd and columns col..col+cols ≤ jc+nb of B (the
    // caller's contract).
    unsafe {
        pack_b(
            kd,
            cols,
            nr,
            KWalk::new(b.runs, pc),
            |at| b.b_at(at, col),
            b.cs,
            dst,
        )
    };
}

/// `C (+)= A·B` over one packed block of B (`b_buf`, every panel of `block`
/// as [`pack_b_panels`] writes them) for `m` rows of A and C: the rows of a
/// product that one task runs while the block is shared. Continues C's chain
/// from C with `accumulate` or after the first depth block, as [`gemm_task`]
/// does, so the results are its bits.
///
/// # Safety
/// `a` addresses an m × (pc + kd) matrix and `c` m rows of at least
/// `jc + nb` elements (from column 0), rows `ldc` apart, overlapping neither
/// A nor `b_buf`; `a_buf` holds `blocks.a_len()` elements; `blocks` comes
/// from [`Blocks`] for `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn rows_over_packed_b<S: Simd>(
    m: usize,
    a: View<S::E>,
    c: *mut S::E,
    ldc: usize,
    accumulate: bool,
    block: BBlock,
    blocks: Blocks,
    b_buf: &[S::E],
    a_buf: &mut [S::E],
) {
    let mc = blocks.mc;
    debug_assert!(blocks.mr == shape::<S>().mr && blocks.nr == shape::<S>().nv * S::LANES);
    assert!(
        a_buf.len() >= mc * block.kd
            && b_buf.len() >= block.nb.div_ceil(blocks.nr) * blocks.nr * block.kd
    );
    // SAFETY: forwarded from the caller; the buffers' sizes checked above.
    unsafe {
        on_tile!(rows_over::<S>(
            m, a, c, ldc, accumulate, block, mc, b_buf, a_buf
        ))
    }
}

/// [`rows_over_packed_b`] with an MR × NV tile: rows in blocks of `mc`, each
/// packed into `a_buf`, then every panel of B against every sliver.
///
/// # Safety
/// As for [`rows_over_packed_b`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_over<S: Simd, const MR: usize, const NV: usize>(
    m: usize,
    a: View<S::E>,
    c: *mut S::E,
    ldc: usize,
    accumulate: bool,
    block: BBlock,
    mc: usize,
    b_buf: &[S::E],
    a_buf: &mut [S::E],
) {
    let nr = NV * S::LANES;
    debug_assert!(mc.is_multiple_of(MR));
    let BBlock { jc, nb, pc, kd } = block;
    let panels = nb.div_ceil(nr);
    // Runs of k are read column by column of A (`pack_a`'s transposed path).
    assert!(
        a.runs.is_none() || a.rs == 1,
        "gemm: runs of k need A transposed"
    );
    // The chain continues from C after the first depth block (and from the
    // first with `accumulate`); C is never read otherwise.
    let load = accumulate || pc > 0;
    for ic in (0..m).step_by(mc) {
        let mb = mc.min(m - ic);
        let slivers = mb.div_ceil(MR);
        // SAFETY: rows ic..ic+mb < m and columns pc..pc+kd ≤ k of A.
        unsafe {
            pack_a::<S::E, MR>(
                mb,
                kd,
                KWalk::new(a.runs, pc),
                |at| a.a_at(ic, at),
                a.rs,
                a.cs,
                a_buf,
            )
        };
        for jr in 0..panels {
            let nn = nr.min(nb - jr * nr);
            let bp = b_buf[jr * kd * nr..].as_ptr();
            for s in 0..slivers {
                let ir = s * MR;
                let mm = MR.min(mb - ir);
                let col = jc + jr * nr;
                let ap = a_buf[ir * kd..].as_ptr();
                // SAFETY: rows ic+ir..ic+ir+mm < m and columns
                // col..col+nn ≤ n of C; the packed operands hold
                // kd × MR and kd × NR elements there.
                unsafe {
                    let cp = c.add((ic + ir) * ldc + col);
                    // The next tile's C: the next sliver's rows, or
                    // the first rows of this block in the next panel.
                    let next = if s + 1 < slivers {
                        cp.wrapping_add(MR * ldc)
                    } else {
                        c.wrapping_add(ic * ldc + col + nr)
                    };
                    if mm == MR && nn == nr {
                        tile::<S, MR, NV>(kd, ap, bp, cp, ldc, load, next);
                    } else {
                        edge_tile::<S, MR, NV>(kd, ap, bp, cp, ldc, load, mm, nn);
                    }
                }
            }
        }
    }
}

/// The register tile: `C[r][0..NR] (+)= Σ_k a[k·MR + r] · b[k·NR..]` for
/// the MR rows, each output one FMA chain in k order, starting from C's value
/// when `load`, else from zero. Asks for the next tile's rows of C
/// (`next`) to come into cache meanwhile.
///
/// # Safety
/// `a` readable for kc · MR elements, `b` for kc · NR; `c` readable (when
/// `load`) and writable for NR elements at each of MR rows `ldc` apart.
#[inline(always)]
unsafe fn tile<S: Simd, const MR: usize, const NV: usize>(
    kc: usize,
    a: *const S::E,
    b: *const S::E,
    c: *mut S::E,
    ldc: usize,
    load: bool,
    next: *const S::E,
) {
    let w = S::LANES;
    let nr = NV * w;
    let mut acc = [[S::splat(S::E::ZERO); NV]; MR];
    for r in 0..MR {
        prefetch(next.wrapping_add(r * ldc), nr * size_of::<S::E>());
    }
    if load {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row r < MR, vector v < NV of C (caller's contract).
                *acc = unsafe { S::load(c.add(r * ldc + v * w)) };
            }
        }
    }
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        // SAFETY: kc rows of MR (A) and NR (B) elements (caller's contract).
        unsafe {
            let bv: [S; NV] = std::array::from_fn(|v| S::load(b.add(v * w)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = S::splat(*a.add(r));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = x.mul_add(bv, *acc);
                }
            }
            a = a.add(MR);
            b = b.add(nr);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, acc) in acc.iter().enumerate() {
            // SAFETY: as for the loads.
            unsafe { acc.store(c.add(r * ldc + v * w)) };
        }
    }
}

/// [`tile`] for the `mm ≤ MR` rows and `nn ≤ NR` columns at a ragged edge:
/// through a scratch tile, so nothing outside them is read or written.
///
/// # Safety
/// As for [`tile`], for the mm × nn elements of C.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn edge_tile<S: Simd, const MR: usize, const NV: usize>(
    kc: usize,
    a: *const S::E,
    b: *const S::E,
    c: *mut S::E,
    ldc: usize,
    load: bool,
    mm: usize,
    nn: usize,
) {
    let nr = NV * S::LANES;
    const { assert!(MR * NV <= 64) };
    assert!(MR * nr <= MAX_TILE);
    let mut scratch = [S::E::ZERO; MAX_TILE];
    if load {
        for r in 0..mm {
            // SAFETY: nn elements of row r < mm of C (caller's contract).
            let row = unsafe { std::slice::from_raw_parts(c.add(r * ldc), nn) };
            scratch[r * nr..][..nn].copy_from_slice(row);
        }
    }
    let t = scratch.as_mut_ptr();
    // SAFETY: the scratch tile holds MR rows of NR; the operands are the
    // caller's.
    unsafe { tile::<S, MR, NV>(kc, a, b, t, nr, load, t) };
    for r in 0..mm {
        // SAFETY: as above.
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), nn) };
        row.copy_from_slice(&scratch[r * nr..][..nn]);
    }
}

/// Packs `kd` rows and `nb` columns of B (row k from `row(at)`, `at` the
/// k-th position of `walk`; columns `cs` apart) into panels of `nr` columns,
/// each `kd × nr` row-major, the last padded with zeros.
///
/// # Safety
/// The kd × nb elements readable.
#[inline(always)]
unsafe fn pack_b<E: SimdElement>(
    kd: usize,
    nb: usize,
    nr: usize,
    walk: KWalk,
    row: impl Fn(isize) -> *const E,
    cs: usize,
    dst: &mut [E],
) {
    let panels = nb.div_ceil(nr);
    let dst = &mut dst[..panels * kd * nr];
    // Panel by panel, each written in order: panels are KC·NR elements
    // apart, often a multiple of 4 KiB, so writing one row of every panel
    // in turn would pile all the lines written onto one set of L1.
    for (j, panel) in dst.chunks_exact_mut(kd * nr).enumerate() {
        let cols = nr.min(nb - j * nr);
        let mut walk = walk;
        for out in panel.chunks_exact_mut(nr) {
            let src = row(walk.step());
            if cs == 1 {
                // SAFETY: row k < kd, columns j·nr.. + cols ≤ nb.
                let row = unsafe { std::slice::from_raw_parts(src.add(j * nr), cols) };
                out[..cols].copy_from_slice(row);
            } else {
                for (i, o) in out[..cols].iter_mut().enumerate() {
                    // SAFETY: as above.
                    *o = unsafe { *src.add((j * nr + i) * cs) };
                }
            }
            out[cols..].fill(E::ZERO);
        }
    }
}

/// Packs `mb` rows and `kd` columns of A (column k from `col(at)`, `at` the
/// k-th position of `walk`: rows `rs` apart, columns `cs` apart unless A is
/// transposed and read in runs) into slivers of MR rows, each k-major (`MR`
/// elements per k), the last padded with zero rows. A usually comes from L3
/// or memory and is read once per block, so the reads are prefetched a
/// little ahead.
///
/// # Safety
/// The mb × kd elements readable; `col` any address for k ≥ kd (prefetched
/// only).
#[inline(always)]
unsafe fn pack_a<E: SimdElement, const MR: usize>(
    mb: usize,
    kd: usize,
    walk: KWalk,
    col: impl Fn(isize) -> *const E,
    rs: usize,
    cs: usize,
    dst: &mut [E],
) {
    let slivers = mb.div_ceil(MR);
    let dst = &mut dst[..slivers * MR * kd];
    let full = mb / MR;
    if rs == 1 {
        // A transposed (columns contiguous, as daᵀ): one contiguous run of mb
        // elements per k, MR of them to each sliver. The slivers are kd·MR
        // elements apart, often a multiple of 4 KiB, so giving one k to every
        // sliver in turn would pile the lines written onto one set of L1
        // (on AVX-512, 42 slivers of a 512 KiB block 12 KiB apart, against 12
        // ways), each line evicted before it is whole. So k goes in groups of
        // PACK_GROUP columns (few enough to stay in L1 together), each sliver
        // getting the group's MR·PACK_GROUP elements as one run of whole lines.
        let (mut walk, mut ahead) = (walk, walk);
        for _ in 0..PACK_AHEAD {
            ahead.step();
        }
        let rest = mb - full * MR;
        for k0 in (0..kd).step_by(PACK_GROUP) {
            let group = PACK_GROUP.min(kd - k0);
            let cols: [&[E]; PACK_GROUP] = std::array::from_fn(|j| {
                if j < group {
                    prefetch(col(ahead.step()), mb * size_of::<E>());
                    // SAFETY: column k0 + j < kd, rows 0..mb.
                    unsafe { std::slice::from_raw_parts(col(walk.step()), mb) }
                } else {
                    &[]
                }
            });
            let cols = &cols[..group];
            for s in 0..full {
                let out = &mut dst[(s * kd + k0) * MR..][..group * MR];
                for (out, col) in out.chunks_exact_mut(MR).zip(cols) {
                    out.copy_from_slice(&col[s * MR..][..MR]);
                }
            }
            if rest > 0 {
                let out = &mut dst[(full * kd + k0) * MR..][..group * MR];
                for (out, col) in out.chunks_exact_mut(MR).zip(cols) {
                    out[..rest].copy_from_slice(&col[full * MR..]);
                    out[rest..].fill(E::ZERO);
                }
            }
        }
        return;
    }
    // Rows of A in place: k at stride `cs` (no runs, asserted by `rows_over`).
    let src = col(walk.at);
    for s in 0..slivers {
        let rows = MR.min(mb - s * MR);
        let out = &mut dst[s * MR * kd..][..MR * kd];
        if s + 1 < slivers {
            for r in (s + 1) * MR..mb.min((s + 2) * MR) {
                prefetch(src.wrapping_add(r * rs), kd * cs * size_of::<E>());
            }
        }
        if rows == MR {
            let row: [*const E; MR] = std::array::from_fn(|r| src.wrapping_add((s * MR + r) * rs));
            for (k, out) in out.chunks_exact_mut(MR).enumerate() {
                for (o, row) in out.iter_mut().zip(row) {
                    // SAFETY: row s·MR + r < mb, column k < kd.
                    *o = unsafe { *row.add(k * cs) };
                }
            }
        } else {
            for (k, out) in out.chunks_exact_mut(MR).enumerate() {
                for (r, o) in out.iter_mut().enumerate() {
                    *o = if r < rows {
                        // SAFETY: row s·MR + r < mb, column k < kd.
                        unsafe { *src.add((s * MR + r) * rs + k * cs) }
                    } else {
                        E::ZERO
                    };
                }
            }
        }
    }
}

/// Asks for the cache lines of `bytes` from `p` to come into L1. A prefetch
/// never faults, so any address is harmless.
#[inline(always)]
fn prefetch<E>(p: *const E, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = p.cast::<i8>();
        for line in (0..bytes).step_by(64) {
            // SAFETY: prefetching is a hint: it reads nothing the program sees
            // and cannot fault, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

//! Matrix products over strided slices, split across the current rayon pool by
//! rows of the output only, on the engine's own BLIS-style kernel
//! (`gemm_kernel.rs`: packed panels of B, packed slivers of A, a register
//! tile per ISA from `tuning::GEMM_SHAPES`).
//!
//! Splitting only the rows of C keeps every output element's sum in the same
//! order whatever the thread count: each element is one FMA chain in k order,
//! whatever rows a task gets, whatever the blocking (`gemm_kernel.rs`), which
//! is what makes results bitwise independent of threads. The tasks of a
//! product share each block of B, each packing a share of its panels, then
//! each running its rows over all of it (BLIS's threads in the loop over
//! rows): B is packed once, not once per task.

use std::sync::{Mutex, TryLockError};

use rayon::prelude::*;

use crate::alloc;
use crate::float::Float;
pub use crate::kernels::gemm_kernel::Runs;
use crate::kernels::gemm_kernel::{
    gemm_task, pack_b_panels, rows_over_packed_b, BBlock, Blocks, StackBuffers, View,
};
use crate::kernels::microkernel::{elements, VectorRoom};
use crate::parallel::pool::threads_here;
use crate::simd::{dispatch, Isa, Kernel, Simd};
use crate::tuning::{GEMM_MIN_ROWS_PER_TASK, KEPT_ROOM_MAX_BYTES};

/// A read-only strided matrix view.
#[derive(Clone, Copy)]
pub struct Mat<'a, E> {
    pub data: &'a [E],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, E> Mat<'a, E> {
    /// A row-major matrix whose rows are `row_stride` apart.
    pub fn rows(data: &'a [E], rows: usize, cols: usize, row_stride: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// The tasks a product of `rows` rows of C is shared among on `threads`
/// threads: a task per `GEMM_MIN_ROWS_PER_TASK` rows at most, at least one.
pub fn gemm_tasks(threads: usize, rows: usize) -> usize {
    threads.min(rows.div_ceil(GEMM_MIN_ROWS_PER_TASK)).max(1)
}

/// `C = A·B`, or `C += A·B` with `accumulate`; C is row-major with rows `ldc`
/// apart. Inside a rayon pool (`ThreadPool::install`) the rows are shared among
/// its threads; outside one it runs on the calling thread alone. Runs on the
/// active ISA ([`Isa::active`]).
///
/// Without `accumulate`, C's old contents are never read (a NaN there does not
/// leak). Each element of C is one FMA chain over k in order (starting from
/// zero, or from C's value with `accumulate`), so results are bitwise the same
/// for any thread count.
///
/// The tasks pack into one room the process keeps between calls
/// (`with_kept_room`; a call that finds it busy gets its own), each task its
/// A block, all of them sharing each B block. The room grows fallibly and the
/// product never fails: when it is refused each task runs on small buffers on
/// its own stack instead (a few times slower; the same bits), so the callers
/// need no error path for a buffer that is a fraction of the operands they
/// already hold.
///
/// Panics if a view does not fit its slice (an engine bug, not a user error).
pub fn gemm<E: Float>(a: Mat<'_, E>, b: Mat<'_, E>, c: &mut [E], ldc: usize, accumulate: bool) {
    gemm_on(Isa::active(), a, b, c, ldc, accumulate, false);
}

/// Where the shared dimension k of [`gemm_in_order`] lies: index k at row
/// (A: column) `origin + runs.offset(k)` of the operands' k axes.
#[derive(Clone, Copy, Debug)]
pub struct KOrder {
    pub origin: usize,
    pub runs: Runs,
}

impl KOrder {
    /// The first and last row (A: column) that the k indices 0..k visit;
    /// None when one would lie before row 0.
    fn span(&self, k: usize) -> Option<(usize, usize)> {
        let (mut lo, mut hi) = (0isize, 0isize);
        for i in 0..k {
            let at = self.runs.offset(i);
            (lo, hi) = (lo.min(at), hi.max(at));
        }
        let first = usize::try_from(self.origin as isize + lo).ok()?;
        Some((first, self.origin + hi as usize))
    }
}

/// [`gemm`] with the shared dimension in `order`: A's k columns and B's k
/// rows are read in place where `order` puts them (`a.cols` = `b.rows` = k,
/// A transposed: `a.row_stride` = 1), so a sum over rows kept out of order
/// in memory needs no gathered copy; each element of C is still one FMA
/// chain over k = 0, 1, … in order.
pub fn gemm_in_order<E: Float>(
    a: Mat<'_, E>,
    b: Mat<'_, E>,
    order: KOrder,
    c: &mut [E],
    ldc: usize,
    accumulate: bool,
) {
    product(Isa::active(), a, b, Some(order), c, ldc, accumulate, false);
}

/// [`gemm`] on `isa` (which must be supported), on the stack buffers when
/// `stack_buffers` (as after a refused allocation; for tests).
#[allow(clippy::too_many_arguments)]
pub fn gemm_on<E: Float>(
    isa: Isa,
    a: Mat<'_, E>,
    b: Mat<'_, E>,
    c: &mut [E],
    ldc: usize,
    accumulate: bool,
    stack_buffers: bool,
) {
    product(isa, a, b, None, c, ldc, accumulate, stack_buffers);
}

/// [`gemm_on`], with k in `order` when given (then A's and B's views start
/// at row and column 0 of their k axes, and `order.origin` says where k = 0
/// lies).
#[allow(clippy::too_many_arguments)]
fn product<E: Float>(
    isa: Isa,
    a: Mat<'_, E>,
    b: Mat<'_, E>,
    order: Option<KOrder>,
    c: &mut [E],
    ldc: usize,
    accumulate: bool,
    stack_buffers: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    let (a_origin, b_origin) = match order {
        None => {
            assert!(a.fits() && b.fits(), "gemm: operand view exceeds its slice");
            (0, 0)
        }
        Some(order) => {
            assert!(a.row_stride == 1, "gemm: an order of k needs A transposed");
            if m > 0 && n > 0 && k > 0 {
                // The views as plain ones over the span of k they visit.
                let (_, last) = order.span(k).expect("gemm: order of k before row 0");
                let a_span = Mat {
                    cols: last + 1,
                    ..a
                };
                let b_span = Mat {
                    rows: last + 1,
                    ..b
                };
                assert!(
                    a_span.fits() && b_span.fits(),
                    "gemm: operand view exceeds its slice"
                );
            }
            (order.origin * a.col_stride, order.origin * b.row_stride)
        }
    };
    assert!(
        m == 0 || n == 0 || (m - 1) * ldc + n <= c.len(),
        "gemm: C too small"
    );
    assert!(n <= ldc || m <= 1, "gemm: C rows overlap");
    assert!(isa.is_supported(), "gemm: ISA {isa:?} not supported");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(E::ZERO);
            }
        }
        return;
    }
    let tasks = gemm_tasks(threads_here(), m);
    // Each task's rows a multiple of MR, so no task but the last ends in a
    // partial sliver.
    let mr = dispatch::<E, _>(isa, Plan { rows: 1, k, n }).mr;
    let rows_per_task = m.div_ceil(tasks).next_multiple_of(mr);
    let tasks = m.div_ceil(rows_per_task);
    let blocks = dispatch::<E, _>(
        isa,
        Plan {
            rows: rows_per_task,
            k,
            n,
        },
    );
    // A's block per task and one B block, each starting on a 64-byte
    // boundary.
    let unit = 64 / size_of::<E>();
    let (a_len, b_len) = (
        blocks.a_len().next_multiple_of(unit),
        blocks.b_len().next_multiple_of(unit),
    );
    let c = &mut c[..(m - 1) * ldc + n];
    // Task t's rows of A (from row r0 = t · rows_per_task) and all of B.
    let views = |r0: usize| {
        let runs = order.map(|o| o.runs);
        (
            // Row r0 of A: `fits` checked that rows r0..r0+rows (k columns)
            // lie inside `a.data`.
            View {
                ptr: a.data[r0 * a.row_stride + a_origin..].as_ptr(),
                rs: a.row_stride,
                cs: a.col_stride,
                runs,
            },
            View {
                ptr: b.data[b_origin..].as_ptr(),
                rs: b.row_stride,
                cs: b.col_stride,
                runs,
            },
        )
    };
    // Task t's rows of C, alone: packing its own B blocks into `buffers`
    // (`a_len` + `b_len` elements), or into small ones on its stack.
    let alone = |t: usize, c_rows: &mut [E], buffers: Option<(&mut [E], &mut [E])>| {
        let r0 = t * rows_per_task;
        let (a, b) = views(r0);
        dispatch::<E, _>(
            isa,
            Task {
                rows: rows_per_task.min(m - r0),
                k,
                n,
                a,
                b,
                c: c_rows,
                ldc,
                accumulate,
                blocks,
                buffers,
            },
        )
    };
    // Every task alone, on its stack. One task runs on the calling thread
    // (outside a pool, rayon would hand it to its global pool and wait).
    let on_stack = |c: &mut [E]| {
        if tasks == 1 {
            alone(0, c, None)
        } else {
            c.par_chunks_mut(rows_per_task * ldc)
                .enumerate()
                .for_each(|(t, c_rows)| alone(t, c_rows, None))
        }
    };
    if stack_buffers {
        return on_stack(c);
    }
    with_kept_room::<E, _>(b_len + tasks * a_len, |room| {
        let Some(room) = room else {
            return on_stack(c);
        };
        let (b_buf, a_bufs) = elements::<E>(room).split_at_mut(b_len);
        if tasks == 1 {
            return alone(0, c, Some((&mut a_bufs[..a_len], b_buf)));
        }
        // The tasks share each block of B: packed once, a share of its
        // panels per task, then every task's rows run over it (BLIS's
        // threads in the loop over rows). Each element of C is the same
        // chain as in `alone`, so the bits are the same.
        let nr = blocks.nr;
        for block in blocks.b_blocks(k, n) {
            let kd = block.kd;
            let panels = block.nb.div_ceil(nr);
            let per_task = panels.div_ceil(tasks) * kd * nr;
            let packed = &mut b_buf[..panels * kd * nr];
            packed
                .par_chunks_mut(per_task)
                .enumerate()
                .for_each(|(t, dst)| {
                    let (_, b) = views(0);
                    let first = t * per_task / (kd * nr);
                    dispatch::<E, _>(
                        isa,
                        PackB {
                            b,
                            block,
                            nr,
                            first,
                            dst,
                        },
                    )
                });
            let packed = &*packed;
            c.par_chunks_mut(rows_per_task * ldc)
                .zip(a_bufs.par_chunks_mut(a_len))
                .enumerate()
                .for_each(|(t, (c_rows, a_buf))| {
                    let r0 = t * rows_per_task;
                    let (a, _) = views(r0);
                    dispatch::<E, _>(
                        isa,
                        Rows {
                            rows: rows_per_task.min(m - r0),
                            a,
                            c: c_rows,
                            ldc,
                            accumulate,
                            block,
                            blocks,
                            packed,
                            a_buf,
                        },
                    )
                });
        }
    });
}

/// The packing room of the large products, kept from one product to the
/// next ([`with_kept_room`]).
static KEPT_ROOM: Mutex<Vec<VectorRoom>> = Mutex::new(Vec::new());

/// Runs `f` on room for `len` elements of `E` that the process keeps from one
/// product to the next, grown (never shrunk) when a product needs more, up to
/// `KEPT_ROOM_MAX_BYTES`; on `None` when growing it is refused (the room kept
/// so far is given back first: its contents need not survive). A product that
/// finds the room in use (another call's, or its own thread's through rayon's
/// work stealing) or needs more than the bound gets room of its own for the
/// call, given back after it.
///
/// Why: the large products packed into blocks allocated per call, an A and a
/// B block per task (`GEMM_SHAPES`: up to 4.5 MiB a task). With 16 tasks that
/// came to some 40 MiB, beyond glibc's largest mmap threshold (32 MiB), so
/// every product mapped fresh pages, faulted each one in on first touch and
/// unmapped them again: measured at XL (B = 128, T = 50, I = H = 1024) with 16
/// threads, some 140,000 page faults per backward, which on a 16-core
/// Sapphire Rapids left the backward slower on 16 threads than on 8.
fn with_kept_room<E, R>(len: usize, f: impl FnOnce(Option<&mut [VectorRoom]>) -> R) -> R {
    let units = len
        .saturating_mul(size_of::<E>())
        .div_ceil(size_of::<VectorRoom>());
    let mut kept = if units > KEPT_ROOM_MAX_BYTES / size_of::<VectorRoom>() {
        None
    } else {
        match KEPT_ROOM.try_lock() {
            Ok(room) => Some(room),
            // A product that panicked left only scratch bytes behind.
            Err(TryLockError::Poisoned(poisoned)) => {
                KEPT_ROOM.clear_poison();
                Some(poisoned.into_inner())
            }
            Err(TryLockError::WouldBlock) => None,
        }
    };
    let mut own = Vec::new();
    let room = kept.as_deref_mut().unwrap_or(&mut own);
    if room.len() < units {
        *room = Vec::new();
        match alloc::zeroed(&[units], "the packing buffers of a product") {
            Ok(fresh) => *room = fresh,
            Err(_) => return f(None),
        }
    }
    f(Some(&mut room[..units]))
}

/// The blocks of a product whose tasks get `rows` rows, on the dispatched ISA.
struct Plan {
    rows: usize,
    k: usize,
    n: usize,
}

impl<E: Float> Kernel<E> for Plan {
    type Output = Blocks;
    #[inline(always)]
    fn run<S: Simd<E = E>>(self) -> Blocks {
        Blocks::for_product::<S>(self.rows, self.k, self.n)
    }
}

/// One task's rows of C: the product on the dispatched ISA, on the given
/// packing buffers or, without them, on buffers on the stack.
struct Task<'a, E> {
    rows: usize,
    k: usize,
    n: usize,
    a: View<E>,
    b: View<E>,
    c: &'a mut [E],
    ldc: usize,
    accumulate: bool,
    blocks: Blocks,
    buffers: Option<(&'a mut [E], &'a mut [E])>,
}

impl<E: Float> Kernel<E> for Task<'_, E> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        let c = self.c.as_mut_ptr();
        // SAFETY: `product` checked that A's rows r0.. of this task and all of
        // B lie inside their slices (`a` and `b` start there), and that C's
        // rows are `ldc ≥ n` apart; `c` holds this task's rows of C, the
        // last of which may end right after its n-th element, and, being a
        // `&mut` slice, overlaps neither A nor B. `blocks` and the buffers
        // (a_len(), b_len() elements, or the stack's) come from `Blocks` for
        // this ISA.
        unsafe {
            match self.buffers {
                Some((a_buf, b_buf)) => gemm_task::<S>(
                    self.rows,
                    self.k,
                    self.n,
                    self.a,
                    self.b,
                    c,
                    self.ldc,
                    self.accumulate,
                    self.blocks,
                    a_buf,
                    b_buf,
                ),
                None => {
                    let mut stack = StackBuffers::<E>::default();
                    gemm_task::<S>(
                        self.rows,
                        self.k,
                        self.n,
                        self.a,
                        self.b,
                        c,
                        self.ldc,
                        self.accumulate,
                        Blocks::on_stack::<S>(),
                        &mut stack.a,
                        &mut stack.b,
                    )
                }
            }
        }
    }
}

/// A share of the panels of a block of B (from panel `first`, as many as
/// `dst` holds), packed in code compiled for the dispatched ISA, as the
/// tasks' own packing is.
struct PackB<'a, E> {
    b: View<E>,
    block: BBlock,
    nr: usize,
    first: usize,
    dst: &'a mut [E],
}

impl<E: Float> Kernel<E> for PackB<'_, E> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        // SAFETY: `product` checked (`fits`, or the order's span) that B's
        // k × n elements lie inside its slice, which `b` starts; the block
        // is a part of them.
        unsafe { pack_b_panels(self.b, self.block, self.nr, self.first, self.dst) }
    }
}

/// One task's rows of C over a block of B that the tasks share, packed.
struct Rows<'a, E> {
    rows: usize,
    a: View<E>,
    c: &'a mut [E],
    ldc: usize,
    accumulate: bool,
    block: BBlock,
    blocks: Blocks,
    packed: &'a [E],
    a_buf: &'a mut [E],
}

impl<E: Float> Kernel<E> for Rows<'_, E> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        // SAFETY: `product` checked that A's rows of this task (k columns)
        // lie inside its slice (`a` starts at the first), and that C's rows
        // are `ldc ≥ n` apart; `c` holds this task's rows of C, the last of
        // which may end right after its n-th element, and, being a `&mut`
        // slice, overlaps neither A nor the packed block; `blocks` comes
        // from `Blocks` for this ISA and `a_buf` holds its `a_len()`.
        unsafe {
            rows_over_packed_b::<S>(
                self.rows,
                self.a,
                self.c.as_mut_ptr(),
                self.ldc,
                self.accumulate,
                self.block,
                self.blocks,
                self.packed,
                self.a_buf,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{gemm_on, product, KOrder, Mat, Runs};
    use crate::float::Float;
    use crate::simd::Isa;

    /// Values in [-1, 1) from a small deterministic generator (xorshift).
    fn values<E: Float>(seed: u64, len: usize) -> Vec<E> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                E::from_f64((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
            })
            .collect()
    }

    /// An m × k view of `data` laid out row-major or transposed (columns
    /// contiguous), with `pad` unused elements after each row (or column).
    fn view<E>(data: &[E], rows: usize, cols: usize, transposed: bool, pad: usize) -> Mat<'_, E> {
        if transposed {
            Mat {
                data,
                rows,
                cols,
                row_stride: 1,
                col_stride: rows + pad,
            }
        } else {
            Mat {
                data,
                rows,
                cols,
                row_stride: cols + pad,
                col_stride: 1,
            }
        }
    }

    fn storage(rows: usize, cols: usize, transposed: bool, pad: usize) -> usize {
        let (outer, inner) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        outer * (inner + pad)
    }

    /// C (+)= A·B in f64 by the triple loop.
    fn naive<E: Float>(a: Mat<'_, E>, b: Mat<'_, E>, c: &[E], ldc: usize, acc: bool) -> Vec<f64> {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = if acc { c[i * ldc + j].to_f64() } else { 0.0 };
                for p in 0..k {
                    s += a.data[i * a.row_stride + p * a.col_stride].to_f64()
                        * b.data[p * b.row_stride + j * b.col_stride].to_f64();
                }
                out[i * n + j] = s;
            }
        }
        out
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// Every ISA, both layouts of A and B, accumulate or not, heap or stack
    /// buffers, 1 to 3 threads: within rounding of the f64 triple loop, and
    /// bitwise the same for every thread count and buffer choice; elements of
    /// C outside the product untouched.
    fn check_sizes<E: Float>(eps: f64, sizes: &[(usize, usize, usize)]) {
        let pools = [pool(1), pool(2), pool(3)];
        for isa in Isa::available() {
            for &(m, k, n) in sizes {
                for (ta, tb, acc) in (0..8).map(|i| (i & 1 != 0, i & 2 != 0, i & 4 != 0)) {
                    let a_data = values::<E>(1 + m as u64, storage(m, k, ta, 3));
                    let b_data = values::<E>(2 + n as u64, storage(k, n, tb, 1));
                    let (a, b) = (view(&a_data, m, k, ta, 3), view(&b_data, k, n, tb, 1));
                    let ldc = n + 2;
                    let c0 = values::<E>(3, m * ldc);
                    let want = naive(a, b, &c0, ldc, acc);
                    let mut first: Option<Vec<E>> = None;
                    for (p, stack) in [(0, false), (1, false), (2, false), (1, true)] {
                        let mut c = c0.clone();
                        pools[p].install(|| gemm_on(isa, a, b, &mut c, ldc, acc, stack));
                        let what = format!(
                            "{isa:?} m={m} k={k} n={n} ta={ta} tb={tb} acc={acc} threads={} stack={stack}",
                            p + 1
                        );
                        for i in 0..m {
                            for j in 0..ldc {
                                let (got, old) =
                                    (c[i * ldc + j].to_f64(), c0[i * ldc + j].to_f64());
                                if j >= n {
                                    assert_eq!(
                                        got.to_bits(),
                                        old.to_bits(),
                                        "{what}: padding written"
                                    );
                                    continue;
                                }
                                let w = want[i * n + j];
                                assert!(
                                    (got - w).abs() <= eps * (k as f64 + 1.0),
                                    "{what}: C[{i}][{j}] = {got}, want {w}"
                                );
                            }
                        }
                        match &first {
                            None => first = Some(c),
                            Some(f) => assert!(
                                f.iter()
                                    .zip(&c)
                                    .all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits()),
                                "{what}: bits differ from 1 thread"
                            ),
                        }
                    }
                }
            }
        }
    }

    const SIZES: [(usize, usize, usize); 14] = [
        (0, 5, 3),
        (4, 0, 3),
        (5, 3, 0),
        (1, 1, 1),
        (5, 17, 31),
        (17, 31, 5),
        (31, 5, 17),
        (64, 64, 64),
        (7, 300, 65),
        (200, 17, 33),
        (37, 513, 19),
        (200, 31, 200),
        (13, 1, 130),
        (97, 260, 129),
    ];

    /// `product` with k in runs (forwards and backwards in memory, starting
    /// inside a run, k past one depth block) gives bitwise what `gemm_on`
    /// gives on the same rows gathered into k order, on every ISA, 1 to 3
    /// threads, accumulating or not.
    #[test]
    fn product_in_order_is_the_gathered_product() {
        let pools = [pool(1), pool(2), pool(3)];
        // (m, n, runs of len, how many, skip, step order backwards, inner stride)
        let cases = [
            (5, 7, 3, 4, 1, true, 1),
            (33, 20, 16, 90, 5, true, 1),
            (17, 9, 4, 300, 3, false, 1),
            (9, 40, 5, 11, 0, true, 7),
            (4, 3, 1, 40, 0, true, 1),
        ];
        for isa in Isa::available() {
            for &(m, n, len, count, skip, backwards, inner) in &cases {
                // Storage rows: run q element r at q·len·inner + r·inner
                // (forwards) or from the end (backwards).
                let rows_total = count * len * inner;
                let at = |v: usize| {
                    let (q, r) = (v / len, v % len);
                    let q = if backwards { count - 1 - q } else { q };
                    q * len * inner + r * inner
                };
                let k = count * len - skip - len / 2;
                let depth = m + 3;
                let (a_all, b_all) = (
                    values::<f32>(7, rows_total * depth),
                    values::<f32>(8, rows_total * (n + 1)),
                );
                let (mut a_g, mut b_g) = (vec![0f32; k * depth], vec![0f32; k * (n + 1)]);
                for i in 0..k {
                    let row = at(i + skip);
                    a_g[i * depth..][..depth].copy_from_slice(&a_all[row * depth..][..depth]);
                    b_g[i * (n + 1)..][..n + 1].copy_from_slice(&b_all[row * (n + 1)..][..n + 1]);
                }
                let step = (len * inner) as isize;
                let order = KOrder {
                    origin: at(skip),
                    runs: Runs {
                        skip,
                        len,
                        inner: inner as isize,
                        outer: if backwards { -step } else { step },
                    },
                };
                let a_t = |data| Mat {
                    data,
                    rows: m,
                    cols: k,
                    row_stride: 1,
                    col_stride: depth,
                };
                for acc in [false, true] {
                    let c0 = values::<f32>(9, m * n);
                    let mut want = c0.clone();
                    gemm_on(
                        isa,
                        a_t(&a_g),
                        Mat::rows(&b_g, k, n, n + 1),
                        &mut want,
                        n,
                        acc,
                        false,
                    );
                    for p in &pools {
                        let mut got = c0.clone();
                        p.install(|| {
                            product(
                                isa,
                                a_t(&a_all),
                                Mat::rows(&b_all, k, n, n + 1),
                                Some(order),
                                &mut got,
                                n,
                                acc,
                                false,
                            )
                        });
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{isa:?} m={m} n={n} len={len} skip={skip} acc={acc}");
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_matches_the_triple_loop_f32() {
        check_sizes::<f32>(1e-6, &SIZES);
    }

    #[test]
    fn gemm_matches_the_triple_loop_f64() {
        check_sizes::<f64>(1e-14, &SIZES);
    }

    /// Several depth blocks, row blocks and column blocks per task (KC, MC
    /// and NC of every ISA in `tuning::GEMM_SHAPES` are exceeded).
    #[test]
    fn gemm_matches_the_triple_loop_over_many_blocks() {
        // Many depth blocks; then many column blocks (NC is 1024 to 2048
        // columns at k = 512), each shared by 3 tasks at 3 threads.
        check_sizes::<f32>(1e-6, &[(70, 2100, 530), (70, 512, 2100)]);
        check_sizes::<f64>(1e-14, &[(40, 1100, 300)]);
    }

    /// Without `accumulate`, C's old contents never reach the result (NaN and
    /// inf there leave no trace); NaN and inf in A or B reach exactly the
    /// elements whose sums contain them.
    #[test]
    fn gemm_propagates_nan_and_inf_and_never_reads_c_unless_accumulating() {
        let (m, k, n) = (13, 300, 37);
        for isa in Isa::available() {
            for stack in [false, true] {
                let mut a = values::<f32>(5, m * k);
                let mut b = values::<f32>(6, k * n);
                let (av, bv) = (Mat::rows(&a, m, k, k), Mat::rows(&b, k, n, n));
                let mut c = vec![f32::NAN; m * n];
                c[3] = f32::INFINITY;
                gemm_on(isa, av, bv, &mut c, n, false, stack);
                assert!(c.iter().all(|x| x.is_finite()), "{isa:?}: old C leaked");

                a[2 * k + 290] = f32::NAN; // row 2 of C
                b[7 * n + 11] = f32::INFINITY; // column 11 of C
                let (av, bv) = (Mat::rows(&a, m, k, k), Mat::rows(&b, k, n, n));
                let mut c = vec![f32::NAN; m * n];
                gemm_on(isa, av, bv, &mut c, n, false, stack);
                for i in 0..m {
                    for j in 0..n {
                        let x = c[i * n + j];
                        if i == 2 {
                            assert!(x.is_nan(), "{isa:?}: NaN lost at ({i}, {j})");
                        } else if j == 11 {
                            assert!(x.is_infinite(), "{isa:?}: inf lost at ({i}, {j}): {x}");
                        } else {
                            assert!(x.is_finite(), "{isa:?}: ({i}, {j}) = {x}");
                        }
                    }
                }

                // With accumulate, C's own NaN stays where it was.
                let (a, b) = (values::<f32>(7, m * k), values::<f32>(8, k * n));
                let mut c = vec![0.5f32; m * n];
                c[5 * n + 6] = f32::NAN;
                gemm_on(
                    isa,
                    Mat::rows(&a, m, k, k),
                    Mat::rows(&b, k, n, n),
                    &mut c,
                    n,
                    true,
                    stack,
                );
                for (i, x) in c.iter().enumerate() {
                    assert_eq!(x.is_nan(), i == 5 * n + 6, "{isa:?}: element {i} = {x}");
                }
            }
        }
    }

    /// k = 0: C = 0 (without accumulate) or unchanged.
    #[test]
    fn gemm_with_empty_depth_zeroes_or_keeps_c() {
        let (a, b) = (vec![0.0f64; 0], vec![0.0f64; 0]);
        for isa in Isa::available() {
            let mut c = vec![f64::NAN; 3 * 5];
            gemm_on(
                isa,
                Mat::rows(&a, 3, 0, 0),
                Mat::rows(&b, 0, 4, 4),
                &mut c,
                5,
                true,
                false,
            );
            assert!(c.iter().all(|x| x.is_nan()));
            gemm_on(
                isa,
                Mat::rows(&a, 3, 0, 0),
                Mat::rows(&b, 0, 4, 4),
                &mut c,
                5,
                false,
                false,
            );
            for (i, x) in c.iter().enumerate() {
                assert_eq!(x.is_nan(), i % 5 == 4 || i >= 14, "element {i} = {x}");
            }
        }
    }
}

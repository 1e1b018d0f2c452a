//! Matrix products over strided slices, split across the current rayon pool by
//! rows of the output only.
//!
//! Splitting only the rows of C keeps every output element's sum in the same
//! order whatever the thread count (matrixmultiply's depth blocking does not
//! depend on how many rows it is given), which is what makes results bitwise
//! independent of threads.

use rayon::prelude::*;

use crate::float::Float;
use crate::parallel::pool::in_pool;
use crate::tuning::{GEMM_MIN_ROWS_PER_TASK, GEMM_ROW_MULTIPLE};

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

/// `C = A·B`, or `C += A·B` with `accumulate`; C is row-major with rows `ldc`
/// apart. Inside a rayon pool (`ThreadPool::install`) the rows are shared among
/// its threads; outside one it runs on the calling thread alone.
///
/// Panics if a view does not fit its slice (an engine bug, not a user error).
pub fn gemm<E: Float>(a: Mat<'_, E>, b: Mat<'_, E>, c: &mut [E], ldc: usize, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    assert!(a.fits() && b.fits(), "gemm: operand view exceeds its slice");
    assert!(
        m == 0 || n == 0 || (m - 1) * ldc + n <= c.len(),
        "gemm: C too small"
    );
    assert!(n <= ldc || m <= 1, "gemm: C rows overlap");
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
    let beta = if accumulate { E::ONE } else { E::ZERO };
    let threads = if in_pool() {
        rayon::current_num_threads()
    } else {
        1
    };
    let tasks = threads.min(m.div_ceil(GEMM_MIN_ROWS_PER_TASK)).max(1);
    let rows_per_task = m.div_ceil(tasks).next_multiple_of(GEMM_ROW_MULTIPLE);
    let c = &mut c[..(m - 1) * ldc + n];
    c.par_chunks_mut(rows_per_task * ldc)
        .enumerate()
        .for_each(|(task, c_rows)| {
            let r0 = task * rows_per_task;
            let rows = rows_per_task.min(m - r0);
            // SAFETY: `fits` checked that rows r0..r0+rows of A (k columns) lie inside
            // `a.data`, and all of B inside `b.data`; `c_rows` holds rows r0.. of C
            // with stride ldc ≥ n (the last chunk may end right after its last
            // element, which is all `(rows - 1) * ldc + n` needs); C is a `&mut`
            // slice, so it overlaps neither A nor B.
            unsafe {
                (E::GEMM)(
                    rows,
                    k,
                    n,
                    E::ONE,
                    a.data.as_ptr().add(r0 * a.row_stride),
                    a.row_stride as isize,
                    a.col_stride as isize,
                    b.data.as_ptr(),
                    b.row_stride as isize,
                    b.col_stride as isize,
                    beta,
                    c_rows.as_mut_ptr(),
                    ldc as isize,
                    1,
                );
            }
        });
}

//! The two element types the engine computes in: what the vector code needs
//! ([`SimdElement`]: activation constants, the vector of each ISA) plus what the
//! rest of the engine needs (the cache padding and the matrix product).

use crate::alloc::Zeroable;
use crate::simd::SimdElement;

/// The signature of matrixmultiply's `sgemm`/`dgemm`:
/// (m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc).
pub type Gemm<E> = unsafe fn(
    usize,
    usize,
    usize,
    E,
    *const E,
    isize,
    isize,
    *const E,
    isize,
    isize,
    E,
    *mut E,
    isize,
    isize,
);

/// `f32` or `f64`: everything the engine needs to know about an element type.
pub trait Float: SimdElement + Zeroable {
    /// Hidden sizes are padded to a multiple of this inside the engine, so every
    /// ISA's vector (at most 64 bytes) tiles a row without a remainder and a cache
    /// made under one ISA can be consumed under another.
    const PAD: usize;

    /// matrixmultiply's `sgemm`/`dgemm`: C = alpha·A·B + beta·C over raw
    /// strided pointers. The engine passes alpha = 1 and beta ∈ {0, 1}.
    ///
    /// Calling it is unsafe: the pointers with their strides must address valid
    /// m×k, k×n and m×n matrices, and C must not overlap A or B.
    const GEMM: Gemm<Self>;
}

impl Float for f32 {
    const PAD: usize = 16;
    const GEMM: Gemm<Self> = matrixmultiply::sgemm;
}

impl Float for f64 {
    const PAD: usize = 8;
    const GEMM: Gemm<Self> = matrixmultiply::dgemm;
}

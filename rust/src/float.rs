//! The two element types the engine computes in, and the constants each needs.

use std::fmt::Debug;
use std::ops::{Add, Mul, Sub};

use crate::simd;

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
///
/// The associated SIMD types tie each element type to its vector of each ISA, so
/// one generic kernel body serves every (type, ISA) pair.
pub trait Float:
    Copy
    + Send
    + Sync
    + Debug
    + PartialOrd
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// Hidden sizes are padded to a multiple of this inside the engine, so every
    /// ISA's vector (at most 64 bytes) tiles a row without a remainder and a cache
    /// made under one ISA can be consumed under another.
    const PAD: usize;

    // exp(x) = 2^n · p(r), r = x − n·ln2 (ln2 split so n·LN2_HI is exact).
    const LOG2E: Self;
    const LN2_HI: Self;
    const LN2_LO: Self;
    /// Clamp for exp's argument: beyond it the result is ±inf-saturated anyway,
    /// and inside it both halves of the split 2^n stay normal numbers.
    const EXP_LO: Self;
    const EXP_HI: Self;
    /// Taylor coefficients 1/k! for k = 2.. (p(r) = 1 + r + r²·Σ c_k r^(k−2)).
    const EXP_POLY: &'static [Self];
    /// 1.5·2^(mantissa bits): adding and subtracting it rounds to an integer.
    const ROUND_MAGIC: Self;
    /// Below this |x|, tanh uses its odd Taylor series; above, (1−e)/(1+e) with
    /// e = exp(−2|x|), whose cancellation is harmless there (e ≤ 0.55).
    const TANH_SMALL: Self;
    /// Taylor coefficients of tanh for x³, x⁵, ... (tanh x = x·(1 + x²·P(x²))).
    const TANH_POLY: &'static [Self];

    type Scalar: simd::Simd<E = Self>;
    #[cfg(target_arch = "x86_64")]
    type Avx2: simd::Simd<E = Self>;
    #[cfg(target_arch = "x86_64")]
    type Avx512: simd::Simd<E = Self>;

    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;

    /// matrixmultiply's `sgemm`/`dgemm`: C = alpha·A·B + beta·C over raw
    /// strided pointers. The engine passes alpha = 1 and beta ∈ {0, 1}.
    ///
    /// Calling it is unsafe: the pointers with their strides must address valid
    /// m×k, k×n and m×n matrices, and C must not overlap A or B.
    const GEMM: Gemm<Self>;
}

const TANH_POLY_F64: [f64; 13] = [
    -0.3333333333333333,
    0.13333333333333333,
    -0.05396825396825397,
    0.021869488536155203,
    -0.008863235529902197,
    0.003592128036572481,
    -0.0014558343870513183,
    0.000590027440945586,
    -0.00023912911424355248,
    9.691537956929451e-05,
    -3.927832388331683e-05,
    1.5918905069328964e-05,
    -6.451689215655431e-06,
];

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const PAD: usize = 16;
    const LOG2E: Self = std::f32::consts::LOG2_E;
    const LN2_HI: Self = 0.693_359_4;
    const LN2_LO: Self = -2.121_944_4e-4;
    const EXP_LO: Self = -104.0;
    const EXP_HI: Self = 89.0;
    const EXP_POLY: &'static [Self] = &[
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
    ];
    const ROUND_MAGIC: Self = 12_582_912.0;
    const TANH_SMALL: Self = 0.3;
    const TANH_POLY: &'static [Self] = &[
        -0.333_333_34,
        0.133_333_33,
        -0.053_968_254,
        0.021_869_488,
        -0.008_863_236,
    ];

    const GEMM: Gemm<Self> = matrixmultiply::sgemm;

    type Scalar = simd::scalar::Scalar<f32>;
    #[cfg(target_arch = "x86_64")]
    type Avx2 = simd::avx2::F32x8;
    #[cfg(target_arch = "x86_64")]
    type Avx512 = simd::avx512::F32x16;

    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const PAD: usize = 8;
    const LOG2E: Self = std::f64::consts::LOG2_E;
    const LN2_HI: Self = f64::from_bits(0x3FE6_2E42_FEE0_0000); // fdlibm's ln2_hi
    const LN2_LO: Self = f64::from_bits(0x3DEA_39EF_3579_3C76); // fdlibm's ln2_lo
    const EXP_LO: Self = -746.0;
    const EXP_HI: Self = 710.0;
    const EXP_POLY: &'static [Self] = &[
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
        1.0 / 362880.0,
        1.0 / 3628800.0,
        1.0 / 39916800.0,
        1.0 / 479001600.0,
        1.0 / 6227020800.0,
    ];
    const ROUND_MAGIC: Self = 6_755_399_441_055_744.0;
    const TANH_SMALL: Self = 0.3;
    const TANH_POLY: &'static [Self] = &TANH_POLY_F64;

    const GEMM: Gemm<Self> = matrixmultiply::dgemm;

    type Scalar = simd::scalar::Scalar<f64>;
    #[cfg(target_arch = "x86_64")]
    type Avx2 = simd::avx2::F64x4;
    #[cfg(target_arch = "x86_64")]
    type Avx512 = simd::avx512::F64x8;

    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

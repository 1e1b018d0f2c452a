//! `f32` and `f64` as vector elements: the constants of exp and tanh for each,
//! and the vector type each ISA uses for it. (The [`SimdElement`] trait itself is
//! declared with [`Simd`](super::vector::Simd) in `vector.rs`.)

use super::scalar::Scalar;
use super::vector::SimdElement;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

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

impl SimdElement for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
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

    type Scalar = Scalar<f32>;
    #[cfg(target_arch = "x86_64")]
    type Avx2 = avx2::F32x8;
    #[cfg(target_arch = "x86_64")]
    type Avx512 = avx512::F32x16;

    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl SimdElement for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
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

    type Scalar = Scalar<f64>;
    #[cfg(target_arch = "x86_64")]
    type Avx2 = avx2::F64x4;
    #[cfg(target_arch = "x86_64")]
    type Avx512 = avx512::F64x8;

    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

//! What a vector is: the [`Simd`] trait every ISA implements, the [`SimdElement`]
//! trait of what it holds (`f32` or `f64`), and the partial loads and stores
//! for the ragged edges of a row.
//!
//! The two traits name each other (a vector has an element type; an element
//! type has a vector per ISA), so they are declared together here; `f32` and
//! `f64` implement [`SimdElement`] in `element.rs`.

use std::fmt::Debug;
use std::ops::{Add, Mul, Sub};

use super::bf16::Bf16;

/// `f32` or `f64` as the vector code sees it: the constants of the activation
/// functions and the vector type of each ISA.
///
/// The associated vector types tie each element type to its vector of each
/// ISA, so one generic kernel body serves every (type, ISA) pair.
pub trait SimdElement:
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

    type Scalar: Simd<E = Self>;
    #[cfg(target_arch = "x86_64")]
    type Avx2: Simd<E = Self>;
    #[cfg(target_arch = "x86_64")]
    type Avx512: Simd<E = Self>;

    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

/// A vector of `LANES` elements of type `E`.
///
/// Every implementation is a plain vector of `E` and nothing else, so any bit
/// pattern is a valid value (`kernels/microkernel.rs` relies on it to see
/// bytes allocated without knowing the ISA as vectors).
///
/// All methods are `#[inline(always)]` in every implementation; they are only
/// sound to call from code compiled with the implementation's target features,
/// which [`dispatch`](super::isa::dispatch) guarantees.
pub trait Simd: Copy {
    type E: SimdElement;
    const LANES: usize;

    fn splat(v: Self::E) -> Self;
    /// # Safety
    /// `p` must be valid for reading `LANES` elements (no alignment needed).
    unsafe fn load(p: *const Self::E) -> Self;
    /// Two vectors from `2·LANES` bfloat16 values stored interleaved, widened
    /// to elements (exactly: every bfloat16 is an f32): lane j of the first
    /// is value 2j, lane j of the second value 2j + 1. Interleaved, the pair
    /// is one load of whole 32-bit words, each holding a value of each vector:
    /// a shift widens the low halves and a mask the high ones (no per-value
    /// widening instruction). The ISAs override it for f32; this default,
    /// one element at a time, serves the others.
    ///
    /// # Safety
    /// `p` must be valid for reading `2·LANES` bfloat16 values (no alignment
    /// needed).
    #[inline(always)]
    unsafe fn load_bf16_pair(p: *const Bf16) -> [Self; 2] {
        let mut tmp = [[Self::E::ZERO; 16]; 2];
        for j in 0..Self::LANES {
            for (half, t) in tmp.iter_mut().enumerate() {
                // SAFETY: 2j + half < 2·LANES values are readable at p.
                let v = unsafe { p.add(2 * j + half).read_unaligned() };
                t[j] = Self::E::from_f64(f64::from(v.to_f32()));
            }
        }
        // SAFETY: LANES ≤ 16 elements of each are initialised.
        unsafe { [Self::load(tmp[0].as_ptr()), Self::load(tmp[1].as_ptr())] }
    }
    /// # Safety
    /// `p` must be valid for writing `LANES` elements (no alignment needed).
    unsafe fn store(self, p: *mut Self::E);
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    /// `self * b + c`, fused where the ISA has FMA.
    fn mul_add(self, b: Self, c: Self) -> Self;
    fn abs(self) -> Self;
    /// Clamp into [lo, hi]; a NaN lane stays NaN.
    fn clamp(self, lo: Self, hi: Self) -> Self;
    /// Per lane: `then` where `self < bound`, else `other` (false for NaN).
    fn select_lt(self, bound: Self, then: Self, other: Self) -> Self;
    /// 2^n for lanes holding integers n in the normal exponent range.
    fn pow2i(self) -> Self;
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

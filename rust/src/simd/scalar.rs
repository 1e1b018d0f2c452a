//! The portable path: one element per "vector", plain IEEE arithmetic (no FMA,
//! which would be a slow libm call on CPUs without it).

use std::marker::PhantomData;

use super::vector::Simd;

/// A single `f32` or `f64` posing as a one-lane vector.
#[derive(Clone, Copy, Debug)]
pub struct Scalar<E>(E, PhantomData<E>);

macro_rules! scalar_impl {
    ($e:ty, $bits:ty, $mant:expr, $bias:expr) => {
        impl Simd for Scalar<$e> {
            type E = $e;
            const LANES: usize = 1;

            #[inline(always)]
            fn splat(v: $e) -> Self {
                Scalar(v, PhantomData)
            }
            #[inline(always)]
            unsafe fn load(p: *const $e) -> Self {
                // SAFETY: the caller guarantees `p` is readable for one element.
                Scalar(unsafe { p.read_unaligned() }, PhantomData)
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut $e) {
                // SAFETY: the caller guarantees `p` is writable for one element.
                unsafe { p.write_unaligned(self.0) }
            }
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                Self::splat(self.0 + o.0)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                Self::splat(self.0 - o.0)
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                Self::splat(self.0 * o.0)
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                Self::splat(self.0 / o.0)
            }
            #[inline(always)]
            fn mul_add(self, b: Self, c: Self) -> Self {
                Self::splat(self.0 * b.0 + c.0)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                Self::splat(self.0.abs())
            }
            #[inline(always)]
            fn clamp(self, lo: Self, hi: Self) -> Self {
                // Comparisons are false for NaN, so NaN passes through.
                let v = self.0;
                Self::splat(if v < lo.0 {
                    lo.0
                } else if v > hi.0 {
                    hi.0
                } else {
                    v
                })
            }
            #[inline(always)]
            fn select_lt(self, bound: Self, then: Self, other: Self) -> Self {
                if self.0 < bound.0 {
                    then
                } else {
                    other
                }
            }
            #[inline(always)]
            fn pow2i(self) -> Self {
                let biased = (self.0 as i64 + $bias) as $bits;
                Self::splat(<$e>::from_bits(biased << $mant))
            }
        }
    };
}

scalar_impl!(f32, u32, 23, 127);
scalar_impl!(f64, u64, 52, 1023);

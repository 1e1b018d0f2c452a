//! bfloat16, the weight format of bf16 inference: the upper half of an f32
//! (sign, the same 8 exponent bits, 7 mantissa bits). Weights are rounded to
//! it once, when they are packed ([`Bf16::round`]); the kernels widen each
//! element back to f32 in registers ([`Simd::load_bf16`](super::vector::Simd::load_bf16)),
//! exactly, so a product over bf16 panels is bit for bit the f32 product over
//! the rounded weights, and half the bytes stream through the caches.

use crate::alloc::Zeroable;

/// One bfloat16, as its 16 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

// SAFETY: sixteen plain bits; all zero is +0.0.
unsafe impl Zeroable for Bf16 {}

impl Bf16 {
    /// `x` rounded to the nearest bfloat16, ties to even (IEEE's default
    /// rounding, what `torch.Tensor.bfloat16()` does): ±inf stays ±inf, a
    /// finite value beyond the largest bfloat16 (by half an ulp or more)
    /// becomes ±inf, subnormals round like any other value, and a NaN stays
    /// a NaN (quiet, sign and upper payload kept).
    #[inline]
    pub fn round(x: f32) -> Bf16 {
        let bits = x.to_bits();
        if x.is_nan() {
            // Truncating could clear every payload bit left (an inf); set
            // the quiet bit instead.
            return Bf16(((bits >> 16) | 0x0040) as u16);
        }
        // Adding 0x7fff plus the lowest kept bit rounds the dropped half to
        // nearest, ties to even; a carry into the exponent is the right
        // result (the next binade, or inf past the largest finite value).
        let lsb = (bits >> 16) & 1;
        Bf16((bits.wrapping_add(0x7fff + lsb) >> 16) as u16)
    }

    /// The exact f32 value of this bfloat16.
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
}

/// `x` rounded to bfloat16 and widened back: the f32 value bf16 inference
/// computes with in place of `x`.
#[inline]
pub fn round_f32(x: f32) -> f32 {
    Bf16::round(x).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_ties_to_even() {
        // (f32 bits, bfloat16 bits)
        let cases: [(u32, u16); 12] = [
            (0x3F80_8000, 0x3F80), // tie, even below: down
            (0x3F81_8000, 0x3F82), // tie, odd below: up
            (0x3F80_8001, 0x3F81), // above the tie: up
            (0x3F80_7FFF, 0x3F80), // below the tie: down
            (0xBF81_8000, 0xBF82), // negative tie: away from zero to even
            (0x0000_8000, 0x0000), // subnormal tie: down to +0
            (0x0001_8000, 0x0002), // subnormal tie: up to even
            (0x7F7F_8000, 0x7F80), // tie past the largest finite: inf
            (0x7F7F_7FFF, 0x7F7F), // just below: the largest finite
            (0x7F80_0000, 0x7F80), // inf
            (0xFF80_0000, 0xFF80), // -inf
            (0x8000_0000, 0x8000), // -0
        ];
        for (x, want) in cases {
            assert_eq!(Bf16::round(f32::from_bits(x)).0, want, "{x:#010x}");
        }
        // NaNs stay NaN, even with their payload in the dropped half only.
        for nan in [0x7F80_0001u32, 0xFF80_0001, 0x7FC0_0000, 0x7FFF_FFFF] {
            let r = Bf16::round(f32::from_bits(nan));
            assert!(r.to_f32().is_nan(), "{nan:#010x}");
            assert_eq!(r.0 & 0x8000, (nan >> 16) as u16 & 0x8000);
        }
    }
}

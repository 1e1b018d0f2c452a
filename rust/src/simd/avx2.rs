//! AVX2 + FMA vectors: 8 × f32 or 4 × f64 in a 256-bit register.
//!
//! Every method is only called from code compiled with `avx2,fma` enabled (the
//! `dispatch` trampolines), which is what makes the intrinsic calls sound.

use std::arch::x86_64::*;

use super::bf16::Bf16;
use super::vector::Simd;

#[derive(Clone, Copy, Debug)]
pub struct F32x8(__m256);

#[derive(Clone, Copy, Debug)]
pub struct F64x4(__m256d);

impl Simd for F32x8 {
    type E = f32;
    const LANES: usize = 8;

    #[inline(always)]
    fn splat(v: f32) -> Self {
        // SAFETY (all methods): only reached inside `#[target_feature(enable =
        // "avx2,fma")]` trampolines, after the CPU was checked for both.
        unsafe { F32x8(_mm256_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 8 readable elements at `p`.
        unsafe { F32x8(_mm256_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn load_bf16_pair(p: *const Bf16) -> [Self; 2] {
        // Word j holds value 2j (low half) and 2j + 1 (high half): the low
        // half shifted up, the high half with the low one cleared.
        // SAFETY: the caller guarantees 16 readable values (32 bytes) at `p`.
        unsafe {
            let words = _mm256_loadu_si256(p.cast::<__m256i>());
            let high = _mm256_set1_epi32(0xFFFF_0000_u32 as i32);
            [
                F32x8(_mm256_castsi256_ps(_mm256_slli_epi32::<16>(words))),
                F32x8(_mm256_castsi256_ps(_mm256_and_si256(words, high))),
            ]
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 8 writable elements at `p`.
        unsafe { _mm256_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x8(_mm256_add_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x8(_mm256_sub_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x8(_mm256_mul_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x8(_mm256_div_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x8(_mm256_fmadd_ps(self.0, b.0, c.0)) }
    }
    #[inline(always)]
    fn abs(self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x8(_mm256_andnot_ps(_mm256_set1_ps(-0.0), self.0)) }
    }
    #[inline(always)]
    fn clamp(self, lo: Self, hi: Self) -> Self {
        // max/min return their second operand when either is NaN: keep x second.
        // SAFETY: see `splat`.
        unsafe { F32x8(_mm256_min_ps(hi.0, _mm256_max_ps(lo.0, self.0))) }
    }
    #[inline(always)]
    fn select_lt(self, bound: Self, then: Self, other: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe {
            let mask = _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, bound.0);
            F32x8(_mm256_blendv_ps(other.0, then.0, mask))
        }
    }
    #[inline(always)]
    fn pow2i(self) -> Self {
        // n + 2^23 + 127 puts the biased exponent in the low mantissa bits.
        // SAFETY: see `splat`.
        unsafe {
            let biased = _mm256_add_ps(self.0, _mm256_set1_ps(8_388_608.0 + 127.0));
            F32x8(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(
                _mm256_castps_si256(biased),
            )))
        }
    }
}

impl Simd for F64x4 {
    type E = f64;
    const LANES: usize = 4;

    #[inline(always)]
    fn splat(v: f64) -> Self {
        // SAFETY (all methods): see `F32x8::splat`.
        unsafe { F64x4(_mm256_set1_pd(v)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        // SAFETY: the caller guarantees 4 readable elements at `p`.
        unsafe { F64x4(_mm256_loadu_pd(p)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        // SAFETY: the caller guarantees 4 writable elements at `p`.
        unsafe { _mm256_storeu_pd(p, self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x4(_mm256_add_pd(self.0, o.0)) }
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x4(_mm256_sub_pd(self.0, o.0)) }
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x4(_mm256_mul_pd(self.0, o.0)) }
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x4(_mm256_div_pd(self.0, o.0)) }
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x4(_mm256_fmadd_pd(self.0, b.0, c.0)) }
    }
    #[inline(always)]
    fn abs(self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x4(_mm256_andnot_pd(_mm256_set1_pd(-0.0), self.0)) }
    }
    #[inline(always)]
    fn clamp(self, lo: Self, hi: Self) -> Self {
        // SAFETY: see `splat`; NaN handling as in `F32x8::clamp`.
        unsafe { F64x4(_mm256_min_pd(hi.0, _mm256_max_pd(lo.0, self.0))) }
    }
    #[inline(always)]
    fn select_lt(self, bound: Self, then: Self, other: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe {
            let mask = _mm256_cmp_pd::<_CMP_LT_OQ>(self.0, bound.0);
            F64x4(_mm256_blendv_pd(other.0, then.0, mask))
        }
    }
    #[inline(always)]
    fn pow2i(self) -> Self {
        // n + 2^52 + 1023 puts the biased exponent in the low mantissa bits.
        // SAFETY: see `splat`.
        unsafe {
            let biased = _mm256_add_pd(self.0, _mm256_set1_pd(4_503_599_627_370_496.0 + 1023.0));
            F64x4(_mm256_castsi256_pd(_mm256_slli_epi64::<52>(
                _mm256_castpd_si256(biased),
            )))
        }
    }
}

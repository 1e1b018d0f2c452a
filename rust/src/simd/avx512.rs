//! AVX-512F vectors: 16 × f32 or 8 × f64 in a 512-bit register.
//!
//! Every method is only called from code compiled with `avx512f,avx2,fma` enabled (the
//! `dispatch` trampolines), which is what makes the intrinsic calls sound.

use std::arch::x86_64::*;

use super::bf16::Bf16;
use super::vector::Simd;

#[derive(Clone, Copy, Debug)]
pub struct F32x16(__m512);

#[derive(Clone, Copy, Debug)]
pub struct F64x8(__m512d);

impl Simd for F32x16 {
    type E = f32;
    const LANES: usize = 16;

    #[inline(always)]
    fn splat(v: f32) -> Self {
        // SAFETY (all methods): only reached inside `#[target_feature(enable =
        // "avx512f,avx2,fma")]` trampolines, after the CPU was checked.
        unsafe { F32x16(_mm512_set1_ps(v)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 16 readable elements at `p`.
        unsafe { F32x16(_mm512_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn load_bf16_pair(p: *const Bf16) -> [Self; 2] {
        // As `F32x8::load_bf16_pair`: word j holds values 2j and 2j + 1.
        // SAFETY: the caller guarantees 32 readable values (64 bytes) at `p`.
        unsafe {
            let words = _mm512_loadu_si512(p.cast::<__m512i>());
            let high = _mm512_set1_epi32(0xFFFF_0000_u32 as i32);
            [
                F32x16(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(words))),
                F32x16(_mm512_castsi512_ps(_mm512_and_si512(words, high))),
            ]
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 16 writable elements at `p`.
        unsafe { _mm512_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x16(_mm512_add_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x16(_mm512_sub_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x16(_mm512_mul_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x16(_mm512_div_ps(self.0, o.0)) }
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x16(_mm512_fmadd_ps(self.0, b.0, c.0)) }
    }
    #[inline(always)]
    fn abs(self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F32x16(_mm512_abs_ps(self.0)) }
    }
    #[inline(always)]
    fn clamp(self, lo: Self, hi: Self) -> Self {
        // max/min return their second operand when either is NaN: keep x second.
        // SAFETY: see `splat`.
        unsafe { F32x16(_mm512_min_ps(hi.0, _mm512_max_ps(lo.0, self.0))) }
    }
    #[inline(always)]
    fn select_lt(self, bound: Self, then: Self, other: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe {
            let mask = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, bound.0);
            F32x16(_mm512_mask_blend_ps(mask, other.0, then.0))
        }
    }
    #[inline(always)]
    fn pow2i(self) -> Self {
        // n + 2^23 + 127 puts the biased exponent in the low mantissa bits.
        // SAFETY: see `splat`.
        unsafe {
            let biased = _mm512_add_ps(self.0, _mm512_set1_ps(8_388_608.0 + 127.0));
            F32x16(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(
                _mm512_castps_si512(biased),
            )))
        }
    }
}

impl Simd for F64x8 {
    type E = f64;
    const LANES: usize = 8;

    #[inline(always)]
    fn splat(v: f64) -> Self {
        // SAFETY (all methods): see `F32x16::splat`.
        unsafe { F64x8(_mm512_set1_pd(v)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        // SAFETY: the caller guarantees 8 readable elements at `p`.
        unsafe { F64x8(_mm512_loadu_pd(p)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        // SAFETY: the caller guarantees 8 writable elements at `p`.
        unsafe { _mm512_storeu_pd(p, self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x8(_mm512_add_pd(self.0, o.0)) }
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x8(_mm512_sub_pd(self.0, o.0)) }
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x8(_mm512_mul_pd(self.0, o.0)) }
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x8(_mm512_div_pd(self.0, o.0)) }
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x8(_mm512_fmadd_pd(self.0, b.0, c.0)) }
    }
    #[inline(always)]
    fn abs(self) -> Self {
        // SAFETY: see `splat`.
        unsafe { F64x8(_mm512_abs_pd(self.0)) }
    }
    #[inline(always)]
    fn clamp(self, lo: Self, hi: Self) -> Self {
        // SAFETY: see `splat`; NaN handling as in `F32x16::clamp`.
        unsafe { F64x8(_mm512_min_pd(hi.0, _mm512_max_pd(lo.0, self.0))) }
    }
    #[inline(always)]
    fn select_lt(self, bound: Self, then: Self, other: Self) -> Self {
        // SAFETY: see `splat`.
        unsafe {
            let mask = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(self.0, bound.0);
            F64x8(_mm512_mask_blend_pd(mask, other.0, then.0))
        }
    }
    #[inline(always)]
    fn pow2i(self) -> Self {
        // n + 2^52 + 1023 puts the biased exponent in the low mantissa bits.
        // SAFETY: see `splat`.
        unsafe {
            let biased = _mm512_add_pd(self.0, _mm512_set1_pd(4_503_599_627_370_496.0 + 1023.0));
            F64x8(_mm512_castsi512_pd(_mm512_slli_epi64::<52>(
                _mm512_castpd_si512(biased),
            )))
        }
    }
}

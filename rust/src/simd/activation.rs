//! The activation functions, written once over [`Simd`]: exp, and the sigmoid
//! and tanh built on it.

use super::vector::{Simd, SimdElement};

/// Evaluates Σ coeffs[k]·x^k by Horner's rule.
#[inline(always)]
fn horner<S: Simd>(x: S, coeffs: &[S::E]) -> S {
    let mut acc = S::splat(coeffs[coeffs.len() - 1]);
    for &c in coeffs[..coeffs.len() - 1].iter().rev() {
        acc = acc.mul_add(x, S::splat(c));
    }
    acc
}

/// exp(x) with range reduction: x = n·ln2 + r, |r| ≤ ln2/2, exp(r) by its Taylor
/// series, 2^n applied in two halves so that results down into the subnormal
/// range and up to overflow (inf) come out right without special cases.
#[inline(always)]
pub fn exp<S: Simd>(x: S) -> S {
    let e = |v: S::E| S::splat(v);
    let x = x.clamp(e(S::E::EXP_LO), e(S::E::EXP_HI));
    let magic = e(S::E::ROUND_MAGIC);
    let n = x.mul(e(S::E::LOG2E)).add(magic).sub(magic);
    let r = n.mul_add(e(S::E::ZERO - S::E::LN2_HI), x);
    let r = n.mul_add(e(S::E::ZERO - S::E::LN2_LO), r);
    let p = horner(r, S::E::EXP_POLY)
        .mul_add(r.mul(r), r)
        .add(e(S::E::ONE));
    let half = n.mul(e(S::E::from_f64(0.5))).add(magic).sub(magic);
    p.mul(half.pow2i()).mul(n.sub(half).pow2i())
}

/// σ(x) with e = exp(−|x|): 1/(1 + e) for x ≥ 0, e/(1 + e) for x < 0. One exp
/// that never overflows, relative error that of exp for every x (unlike
/// 0.5 + 0.5·tanh(x/2), which cancels for negative x), exact 0 and 1 at the
/// ends and the subnormal tail below x ≈ −87 kept.
#[inline(always)]
pub fn sigmoid<S: Simd>(x: S) -> S {
    let one = S::splat(S::E::ONE);
    let zero = S::splat(S::E::ZERO);
    let e = exp(zero.sub(x.abs()));
    x.select_lt(zero, e, one).div(one.add(e))
}

/// tanh(x): odd Taylor series near 0, (1 − e)/(1 + e) with e = exp(−2|x|) beyond.
#[inline(always)]
pub fn tanh<S: Simd>(x: S) -> S {
    let one = S::splat(S::E::ONE);
    let zero = S::splat(S::E::ZERO);
    let t = x.abs();
    let x2 = x.mul(x);
    // x·(1 + x²·P(x²)) rather than x + x·x²·P: keeps the sign of −0.
    let small = x.mul(horner(x2, S::E::TANH_POLY).mul_add(x2, one));
    let em = exp(t.mul(S::splat(S::E::from_f64(-2.0))));
    let big = one.sub(em).div(one.add(em));
    let big = x.select_lt(zero, zero.sub(big), big);
    t.select_lt(S::splat(S::E::TANH_SMALL), small, big)
}

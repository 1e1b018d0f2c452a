//! SIMD vectors behind one trait, the run-time choice of ISA, and the
//! activation functions written once over the trait.
//!
//! Every kernel is an `#[inline(always)]` generic body over [`Simd`]; each ISA
//! gets one `#[target_feature]` entry point that instantiates it (see
//! [`dispatch!`]), so the intrinsics inline into code compiled for that ISA while
//! the rest of the crate stays baseline x86-64.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::Error;
use crate::float::Float;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod scalar;

/// A vector of `LANES` elements of type `E`.
///
/// All methods are `#[inline(always)]` in every implementation; they are only
/// sound to call from code compiled with the implementation's target features,
/// which [`dispatch!`] guarantees.
pub trait Simd: Copy {
    type E: Float;
    const LANES: usize;

    fn splat(v: Self::E) -> Self;
    /// # Safety
    /// `p` must be valid for reading `LANES` elements (no alignment needed).
    unsafe fn load(p: *const Self::E) -> Self;
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

/// The instruction sets the engine has kernels for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar = 1,
    Avx2 = 2,
    Avx512 = 3,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn parse(name: &str) -> Result<Isa, Error> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == name.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::Value(format!(
                    "unknown ISA {name:?}: expected one of \"scalar\", \"avx2\", \"avx512\""
                ))
            })
    }

    /// Whether this CPU (and OS) can run the ISA's kernels.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The supported ISAs, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL
            .into_iter()
            .filter(|isa| isa.is_supported())
            .collect()
    }

    /// The ISA the kernels use (see [`active`]).
    pub fn active() -> Isa {
        active()
    }

    /// Forces one ISA for later calls (see [`set_active`]).
    pub fn set_active(self) -> Result<(), Error> {
        set_active(self)
    }

    fn best() -> Isa {
        *Isa::available().last().expect("scalar is always available")
    }
}

/// 0 = not chosen yet; otherwise `Isa as u8`.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The ISA the kernels use: `LSTM_FAST_ISA` if set (read once), else the best
/// this CPU supports. An unusable `LSTM_FAST_ISA` falls back to the best, since
/// there is no caller to report the error to at this point; `set_isa` reports.
pub fn active() -> Isa {
    match ACTIVE.load(Ordering::Relaxed) {
        1 => Isa::Scalar,
        2 => Isa::Avx2,
        3 => Isa::Avx512,
        _ => {
            let chosen = std::env::var("LSTM_FAST_ISA")
                .ok()
                .and_then(|name| Isa::parse(&name).ok())
                .filter(|isa| isa.is_supported())
                .unwrap_or_else(Isa::best);
            ACTIVE.store(chosen as u8, Ordering::Relaxed);
            chosen
        }
    }
}

/// Force one ISA (tests use it to cover every path).
pub fn set_active(isa: Isa) -> Result<(), Error> {
    if !isa.is_supported() {
        return Err(Error::Value(format!(
            "ISA {:?} is not supported by this CPU; available: {:?}",
            isa.name(),
            Isa::available()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
        )));
    }
    ACTIVE.store(isa as u8, Ordering::Relaxed);
    Ok(())
}

/// A computation written once over [`Simd`]; [`dispatch`] runs it with the
/// vector type of the chosen ISA, inside a function compiled for that ISA.
///
/// Implementations mark `run` `#[inline(always)]` so its body (and every vector
/// method it calls) is compiled inside the target-feature trampoline below.
pub trait Kernel<E: Float> {
    type Output;
    fn run<S: Simd<E = E>>(self) -> Self::Output;
}

/// Runs `kernel` on `isa` (which must be supported: `active`/`set_active`
/// guarantee that for the ISA they hand out).
pub fn dispatch<E: Float, K: Kernel<E>>(isa: Isa, kernel: K) -> K::Output {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa::Avx512` value only becomes active after `is_supported`
        // confirmed avx512f, avx2 and fma on this CPU.
        Isa::Avx512 if Isa::Avx512.is_supported() => unsafe { run_avx512::<E, K>(kernel) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for avx2 and fma.
        Isa::Avx2 if Isa::Avx2.is_supported() => unsafe { run_avx2::<E, K>(kernel) },
        _ => kernel.run::<E::Scalar>(),
    }
}

/// # Safety
/// The CPU must support avx512f, avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512<E: Float, K: Kernel<E>>(kernel: K) -> K::Output {
    kernel.run::<E::Avx512>()
}

/// # Safety
/// The CPU must support avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<E: Float, K: Kernel<E>>(kernel: K) -> K::Output {
    kernel.run::<E::Avx2>()
}

// ---------------------------------------------------------------------------
// Activations, written once over `Simd`.
// ---------------------------------------------------------------------------

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

//! Which instruction set runs: the ISAs the engine has kernels for, whether
//! this CPU has them, the one calls use, and [`dispatch`], which runs a
//! [`Kernel`] inside a function compiled for that ISA.
//!
//! Every kernel is an `#[inline(always)]` generic body over [`Simd`]; each ISA
//! gets one `#[target_feature]` entry point that instantiates it, so the
//! intrinsics inline into code compiled for that ISA while the rest of the
//! crate stays baseline x86-64.

use super::vector::{Simd, SimdElement};
use crate::error::Error;
use crate::setting::Setting;

/// The instruction sets the engine has kernels for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

/// The ISA calls use (see [`Isa::active`]).
static ACTIVE: Setting<Isa> = Setting::new(&Isa::ALL);

impl Isa {
    /// Slowest first.
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

    /// The ISA the kernels use: `LSTM_FAST_ISA` if set (read once), else the
    /// best this CPU supports. An unusable `LSTM_FAST_ISA` falls back to the
    /// best, since there is no caller to report the error to at this point;
    /// [`set_active`](Isa::set_active) reports.
    pub fn active() -> Isa {
        ACTIVE.get(|| {
            std::env::var("LSTM_FAST_ISA")
                .ok()
                .and_then(|name| Isa::parse(&name).ok())
                .filter(|isa| isa.is_supported())
                .unwrap_or_else(Isa::best)
        })
    }

    /// Forces this ISA for later calls (tests use it to cover every path).
    pub fn set_active(self) -> Result<(), Error> {
        if !self.is_supported() {
            return Err(Error::Value(format!(
                "ISA {:?} is not supported by this CPU; available: {:?}",
                self.name(),
                Isa::available()
                    .iter()
                    .map(|i| i.name())
                    .collect::<Vec<_>>()
            )));
        }
        ACTIVE.set(self);
        Ok(())
    }

    /// How many elements one vector of `E` holds on this ISA.
    pub(crate) fn lanes<E: SimdElement>(self) -> usize {
        struct Lanes;
        impl<E: SimdElement> Kernel<E> for Lanes {
            type Output = usize;
            #[inline(always)]
            fn run<S: Simd<E = E>>(self) -> usize {
                S::LANES
            }
        }
        dispatch::<E, _>(self, Lanes)
    }

    fn best() -> Isa {
        *Isa::available().last().expect("scalar is always available")
    }
}

/// A computation written once over [`Simd`]; [`dispatch`] runs it with the
/// vector type of the chosen ISA, inside a function compiled for that ISA.
///
/// Implementations mark `run` `#[inline(always)]` so its body (and every vector
/// method it calls) is compiled inside the target-feature trampoline below.
pub trait Kernel<E: SimdElement> {
    type Output;
    fn run<S: Simd<E = E>>(self) -> Self::Output;
}

/// Runs `kernel` on `isa` (which must be supported: [`Isa::active`] and
/// [`Isa::set_active`] guarantee that for the ISA they hand out).
pub fn dispatch<E: SimdElement, K: Kernel<E>>(isa: Isa, kernel: K) -> K::Output {
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
unsafe fn run_avx512<E: SimdElement, K: Kernel<E>>(kernel: K) -> K::Output {
    kernel.run::<E::Avx512>()
}

/// # Safety
/// The CPU must support avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<E: SimdElement, K: Kernel<E>>(kernel: K) -> K::Output {
    kernel.run::<E::Avx2>()
}

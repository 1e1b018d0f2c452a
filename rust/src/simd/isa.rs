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
    /// AVX-512 with the BF16 dot products: every kernel of `Avx512`, and bf16
    /// inference's recurrent product on `vdpbf16ps` (`kernels/bf16_dot.rs`).
    Avx512Bf16,
}

/// The ISA calls use (see [`Isa::active`]).
static ACTIVE: Setting<Isa> = Setting::new(&Isa::ALL);

impl Isa {
    /// Slowest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
        }
    }

    pub fn parse(name: &str) -> Result<Isa, Error> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == name.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                Error::Value(format!(
                    "unknown ISA {name:?}: expected one of \"scalar\", \"avx2\", \"avx512\", \"avx512bf16\""
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
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => Isa::Avx512.is_supported() && is_x86_feature_detected!("avx512bf16"),
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

    /// Whether bf16 inference's recurrent product runs on the BF16 dot
    /// products (`kernels/bf16_dot.rs`) rather than widening the weights.
    pub fn dot_bf16(self) -> bool {
        self == Isa::Avx512Bf16
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
        Isa::Avx512 | Isa::Avx512Bf16 if Isa::Avx512.is_supported() => unsafe {
            run_avx512::<E, K>(kernel)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for avx2 and fma.
        Isa::Avx2 if Isa::Avx2.is_supported() => unsafe { run_avx2::<E, K>(kernel) },
        _ => kernel.run::<E::Scalar>(),
    }
}

/// [`dispatch`] for kernels whose cost is 64-bit integer products (the masks'
/// hash, `masks.rs`): on AVX-512 CPUs with AVX-512DQ and VL the kernel is
/// also compiled with those, whose `vpmullq` is one such product where
/// AVX-512F alone builds each from three 32-bit ones (measured: a
/// weight-drop mask of 4H·H entries at H = 128 in 21 µs before, 10.5 after,
/// on Zen 5). Integer arithmetic gives the same bits on every path.
pub fn dispatch_dq<E: SimdElement, K: Kernel<E>>(isa: Isa, kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Avx512Bf16)
        && isa.is_supported()
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: avx512f, avx2 and fma (`is_supported`), avx512dq and
        // avx512vl were detected on this CPU.
        return unsafe { run_avx512_dq::<E, K>(kernel) };
    }
    dispatch(isa, kernel)
}

/// # Safety
/// The CPU must support avx512f, avx512dq, avx512vl, avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
unsafe fn run_avx512_dq<E: SimdElement, K: Kernel<E>>(kernel: K) -> K::Output {
    kernel.run::<E::Avx512>()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::bf16::Bf16;

    /// As many values as one `load_bf16_pair` of the widest vector widens.
    const VALUES: usize = 32;

    /// Widens `VALUES` bfloat16 values with each ISA's `load_bf16_pair`.
    struct Widen<'a>(&'a [Bf16; VALUES]);

    impl Kernel<f32> for Widen<'_> {
        type Output = [f32; VALUES];
        #[inline(always)]
        fn run<S: Simd<E = f32>>(self) -> [f32; VALUES] {
            let mut out = [0.0; VALUES];
            // Value 2j of each pair to the first vector's lane j, 2j + 1 to
            // the second's: stored back in the values' order.
            for i in (0..VALUES).step_by(2 * S::LANES) {
                // SAFETY: 2·LANES divides VALUES, so i + 2·LANES ≤ VALUES
                // values, and LANES ≤ 16 elements per stored vector.
                let pair = unsafe { S::load_bf16_pair(self.0.as_ptr().add(i)) };
                let mut lanes = [[0.0f32; 16]; 2];
                for (v, l) in pair.iter().zip(&mut lanes) {
                    // SAFETY: LANES ≤ 16 elements.
                    unsafe { v.store(l.as_mut_ptr()) };
                }
                for j in 0..S::LANES {
                    out[i + 2 * j] = lanes[0][j];
                    out[i + 2 * j + 1] = lanes[1][j];
                }
            }
            out
        }
    }

    #[test]
    fn every_isa_widens_exactly() {
        let specials: [u16; 16] = [
            0x0000, 0x8000, 0x3F80, 0xBF80, 0x7F80, 0xFF80, 0x7FC1, 0x0001, 0x8001, 0x7F7F, 0x4049,
            0xC049, 0x1234, 0xFEDC, 0x00FF, 0x3F81,
        ];
        // The specials, then each with its sign flipped: a 512-bit load
        // widens all 32 at once, a narrower one in several pairs.
        let values: [Bf16; VALUES] =
            std::array::from_fn(|i| Bf16(specials[i % 16] ^ if i < 16 { 0 } else { 0x8000 }));
        for isa in Isa::available() {
            let got = dispatch(isa, Widen(&values));
            for (g, v) in got.iter().zip(values) {
                assert_eq!(g.to_bits(), u32::from(v.0) << 16, "{isa:?}");
            }
        }
    }
}

//! The single-core FMA peak of an ISA, measured: the yardstick the products'
//! GFLOP/s are read against (BENCHMARKS.md, `scripts/fma_peak.py`).
//!
//! A loop of independent FMAs on registers only, with enough chains to cover
//! FMA latency × FMA ports on every core the engine targets (latency 4 with 2
//! ports needs 8; [`FMA_PEAK_CHAINS`] leaves room for latency 5 or 6). Nothing
//! is loaded or stored inside the loop, so the rate is the arithmetic limit.

use std::time::{Duration, Instant};

use super::isa::{dispatch, Isa, Kernel};
use super::vector::Simd;
use crate::tuning::FMA_PEAK_CHAINS;

/// FMAs per chain in one timed round: about a millisecond even on the widest
/// ISA, long next to the clock's resolution, short next to a scheduler slice
/// (also the rounds of `kernels/bf16_dot.rs`'s dot-product peak).
pub(crate) const ROUND: usize = 1 << 16;

/// When a peak measurement of `seconds` started now ends.
pub(crate) fn deadline(seconds: f64) -> Instant {
    Instant::now() + Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::ZERO)
}

/// The seconds of the fastest of the rounds `round` runs until `until` (at
/// least one), so that interruptions by other work on the machine fall out.
/// Inlined, so that `round` compiles with its caller's target features.
#[inline(always)]
pub(crate) fn fastest_round(until: Instant, mut round: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    loop {
        let start = Instant::now();
        round();
        let now = Instant::now();
        best = best.min((now - start).as_secs_f64());
        if now >= until {
            break;
        }
    }
    best
}

struct Peak {
    rounds_until: Instant,
}

impl Kernel<f32> for Peak {
    /// (flops, seconds) of the fastest round.
    type Output = (f64, f64);

    #[inline(always)]
    fn run<S: Simd<E = f32>>(self) -> (f64, f64) {
        // acc ← acc·x + y converges to y / (1 − x) = 1: no overflow and no
        // subnormals, however long it runs.
        let x = S::splat(std::hint::black_box(0.5));
        let y = S::splat(std::hint::black_box(0.5));
        let mut acc = [S::splat(0.0); FMA_PEAK_CHAINS];
        let best = fastest_round(self.rounds_until, || {
            for _ in 0..ROUND {
                for a in acc.iter_mut() {
                    *a = a.mul_add(x, y);
                }
            }
            // Keeps the chains alive (their results are otherwise unused).
            std::hint::black_box(&mut acc);
        });
        let flops = (2 * S::LANES * FMA_PEAK_CHAINS * ROUND) as f64;
        (flops, best)
    }
}

/// The single-core f32 FMA peak of `isa` in GFLOP/s: the fastest of the rounds
/// run during `seconds` on the calling thread (at least one round), so that
/// interruptions by other work on the machine fall out.
pub fn fma_peak(isa: Isa, seconds: f64) -> f64 {
    let (flops, best) = dispatch::<f32, _>(
        isa,
        Peak {
            rounds_until: deadline(seconds),
        },
    );
    flops / best / 1e9
}

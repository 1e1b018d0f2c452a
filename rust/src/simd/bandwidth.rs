//! The streaming read bandwidth of one core from a buffer of a given size,
//! measured: the limit of the batch-1 recurrence, which reads its packed
//! weights once per step (`scripts/machine_limits.py`, BENCHMARKS.md).
//!
//! A buffer sized to stay in L2 (larger than L1, smaller than L2) is read
//! whole, again and again, with vector loads summed into independent
//! accumulators (adds are cheaper than the loads, so the loads set the rate).

use std::time::{Duration, Instant};

use super::isa::{dispatch, Isa, Kernel};
use super::vector::Simd;

/// Independent sums: enough to keep two or three loads in flight per cycle.
const CHAINS: usize = 12;

struct Stream<'a> {
    data: &'a [f32],
    rounds_until: Instant,
}

impl Kernel<f32> for Stream<'_> {
    /// Seconds of the fastest read of the whole buffer.
    type Output = f64;

    #[inline(always)]
    fn run<S: Simd<E = f32>>(self) -> f64 {
        let step = CHAINS * S::LANES;
        let whole = self.data.len() / step * step;
        let mut best = f64::INFINITY;
        loop {
            let start = Instant::now();
            let mut acc = [S::splat(0.0); CHAINS];
            for block in self.data[..whole].chunks_exact(step) {
                for (c, a) in acc.iter_mut().enumerate() {
                    // SAFETY: `block` holds CHAINS·LANES elements, so LANES
                    // from c·LANES are inside it.
                    *a = a.add(unsafe { S::load(block.as_ptr().add(c * S::LANES)) });
                }
            }
            // Keeps the sums (and so the loads) alive; by value, so that the
            // sums stay in registers inside the loop.
            let total = acc.iter().fold(S::splat(0.0), |sum, &a| sum.add(a));
            std::hint::black_box(total);
            let now = Instant::now();
            best = best.min((now - start).as_secs_f64());
            if now >= self.rounds_until {
                break;
            }
        }
        best
    }
}

/// Bytes per second one core reads from a buffer of `bytes` (rounded down to
/// whole vectors) with the vectors of `isa`: the fastest of the passes made
/// during `seconds` on the calling thread (at least one, after one untimed pass
/// that brings the buffer into the cache).
pub fn read_bandwidth(isa: Isa, bytes: usize, seconds: f64) -> f64 {
    let data = vec![1.0f32; (bytes / 4).max(64)];
    let budget = Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::ZERO);
    let warm = Stream {
        data: &data,
        rounds_until: Instant::now(),
    };
    dispatch::<f32, _>(isa, warm);
    let best = dispatch::<f32, _>(
        isa,
        Stream {
            data: &data,
            rounds_until: Instant::now() + budget,
        },
    );
    (data.len() * 4) as f64 / best
}

//! What a team call of no work costs against the time its caller spends
//! between calls (the figures behind `WARM_SPAN` in `tuning.rs`).
//!
//!     cargo run --release --example team_wake -- [calls]
//!
//! For gaps of 0 to 1000 µs (the caller spins that long between calls), times
//! `calls` team calls of two members that do nothing, two ways:
//! `here`, the calling thread as first member (`split::run_team_here`, whose
//! workers stay awake after calls made close together: `parallel/warm.rs`),
//! and `pool`, two workers of the pool in `run_split`, the caller waiting.
//! Prints µs min / median / 90th / 99th percentile. The teams run without
//! the engine's claim on the pool (`split::claim`): nothing else uses it here.

use std::time::{Duration, Instant};

use lstm_fast::parallel::pool;
use lstm_fast::parallel::split::{run_split, run_team_here, Split};

fn spin(gap: Duration) {
    let start = Instant::now();
    while start.elapsed() < gap {
        std::hint::spin_loop();
    }
}

fn main() -> lstm_fast::Result<()> {
    let calls: usize = std::env::args()
        .nth(1)
        .map_or(3000, |s| s.parse().expect("calls: a count"))
        .max(1);
    let workers = pool::workers()?;
    if workers.pool.current_num_threads() < 2 {
        println!("needs 2 threads or more (LSTM_FAST_NUM_THREADS)");
        return Ok(());
    }
    let nothing = |_: usize, _: std::ops::Range<usize>, own: &mut u64, _: Option<&_>| *own += 1;
    for way in ["here", "pool"] {
        for gap_us in [0u64, 10, 20, 50, 100, 200, 1000] {
            let gap = Duration::from_micros(gap_us);
            let mut times = Vec::with_capacity(calls);
            for call in 0..calls + calls / 10 {
                spin(gap);
                let mut scratch = [0u64; 2];
                let start = Instant::now();
                match way {
                    "here" => run_team_here(&workers, 2, 2, &mut scratch, &nothing),
                    _ => workers
                        .pool
                        .install(|| run_split(Split::Hidden(2), 1, 2, &mut scratch, &nothing)),
                }
                // The first tenth warms up.
                if call >= calls / 10 {
                    times.push(start.elapsed().as_secs_f64() * 1e6);
                }
            }
            times.sort_by(f64::total_cmp);
            let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
            println!(
                "{way:4} gap {gap_us:4} µs: {:6.1} / {:6.1} / {:6.1} / {:6.1}",
                at(0.0),
                at(0.5),
                at(0.9),
                at(0.99)
            );
        }
    }
    Ok(())
}

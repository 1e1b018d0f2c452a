//! The plain forward at one shape, inference (no cache), weights packed once
//! (as the layer keeps them): for profilers (perf, callgrind) and quick timings.
//!
//!     cargo run --release --example forward_profile -- [B T I H] [calls]
//!
//! With `LAYER_NORM=1` set, the LayerNorm LSTM's forward instead (gains 1,
//! biases 0); with `PANELS=0`, the weights as given (packed per call, as the
//! functional API runs them) instead of kept panels.
//!
//! Prints the fastest and the median call of `calls` (default 50) in ms, by
//! the wall clock and by the process's CPU time (on a shared machine the
//! latter leaves out the time spent preempted; at one thread,
//! `LSTM_FAST_NUM_THREADS=1`, it is the call's own), and a hash of y so two
//! builds can be checked to give the same bits.

use std::time::Instant;

#[path = "shape.rs"]
mod shape;

use lstm_fast::layernorm::{self, LayerNorm};
use lstm_fast::{forward, Cancel, Dims, Outputs, PanelCache, Sequence, Variant};

#[path = "common/cpu_time.rs"]
mod cpu_time;
use cpu_time::process_seconds;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [b, t, i, h, calls] = shape::shape_and_calls(&args, "numbers: B T I H [calls]", 50);
    let mut state = shape::SEED;
    let mut uniform = |n: usize| shape::uniform(&mut state, n);
    let x = uniform(t * b * i);
    let w_ih = uniform(4 * h * i);
    let w_hh = uniform(4 * h * h);
    let bias = uniform(4 * h);
    let panels = PanelCache::new(&w_ih, &w_hh, None);
    let seq = Sequence {
        dims: Dims {
            steps: t,
            batch: b,
            input: i,
            hidden: h,
        },
        batch_first: false,
        reverse: false,
        lengths: None,
        x: &x,
        w_ih: &w_ih,
        w_hh: &w_hh,
        bias: Some(&bias),
        h0: None,
        c0: None,
        panels: (std::env::var("PANELS").as_deref() != Ok("0")).then_some(&panels),
        variant: Variant::default(),
    };
    let (mut y, mut h_n, mut c_n) = (vec![0f32; t * b * h], vec![0f32; b * h], vec![0f32; b * h]);
    let cancel = Cancel::default();
    let layer_norm = std::env::var("LAYER_NORM").as_deref() == Ok("1");
    let ln = LayerNorm {
        w_ih: None,
        b_ih: None,
        w_hh: None,
        b_hh: None,
        w_c: None,
        b_c: None,
        eps: 1e-5,
    };
    let mut times = Vec::with_capacity(calls);
    let mut cpu_times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        let cpu_start = process_seconds();
        let out = Outputs {
            y: &mut y,
            h_n: &mut h_n,
            c_n: &mut c_n,
        };
        if layer_norm {
            layernorm::forward(&seq, &ln, out, None, &cancel)
        } else {
            forward(&seq, out, None, &cancel)
        }
        .expect("forward");
        times.push(start.elapsed().as_secs_f64() * 1e3);
        cpu_times.push((process_seconds() - cpu_start) * 1e3);
    }
    times.sort_by(f64::total_cmp);
    cpu_times.sort_by(f64::total_cmp);
    let hash = y.iter().fold(0xcbf2_9ce4_8422_2325_u64, |acc, v| {
        (acc ^ u64::from(v.to_bits())).wrapping_mul(0x100_0000_01b3)
    });
    println!(
        "B={b} T={t} I={i} H={h}: min {:.3} ms, median {:.3} ms over {calls} calls \
         (CPU time: min {:.3} ms, median {:.3} ms); y hash {hash:016x}",
        times[0],
        times[times.len() / 2],
        cpu_times[0],
        cpu_times[cpu_times.len() / 2]
    );
}

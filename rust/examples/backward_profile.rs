//! The plain training pass at one shape: forward with the cache, then
//! backward, weights packed once (as the layer keeps them), the gate
//! gradients' scratch given (as the Python side gives it): for profilers
//! (perf, callgrind) and quick timings of each half.
//!
//!     cargo run --release --example backward_profile -- [B T I H] [calls] [which]
//!
//! `which` is `both` (default), `forward` (the forward with its cache only)
//! or `backward` (backward only, from one forward's cache): a profile of one
//! half then holds nothing of the other. Prints the fastest and the median
//! call of `calls` (default 30) of each half in ms, and a hash of the
//! gradients so two builds can be checked to give the same bits.

use std::time::Instant;

#[path = "shape.rs"]
mod shape;

use lstm_fast::{
    backward, forward, hidden_pad, Cache, CacheRef, Cancel, Dims, Grads, Outputs, PanelCache,
    Seeds, Sequence, Variant,
};

/// The fastest and the median of `times` (ms), sorted in place.
fn summary(times: &mut [f64]) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2])
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let which = match args.last().map(String::as_str) {
        Some(w @ ("both" | "forward" | "backward")) => {
            let w = w.to_string();
            args.pop();
            w
        }
        _ => "both".to_string(),
    };
    let [b, t, i, h, calls] = shape::shape_and_calls(
        &args,
        "numbers: B T I H [calls] [both|forward|backward]",
        30,
    );
    let mut state = shape::SEED;
    let mut uniform = |n: usize| shape::uniform(&mut state, n);
    let x = uniform(t * b * i);
    let w_ih = uniform(4 * h * i);
    let w_hh = uniform(4 * h * h);
    let bias = uniform(4 * h);
    let dy = uniform(t * b * h);
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
        panels: Some(&panels),
        variant: Variant::default(),
    };
    let hp = hidden_pad::<f32>(h);
    let rows = t * b;
    let (mut y, mut h_n, mut c_n) = (vec![0f32; rows * h], vec![0f32; b * h], vec![0f32; b * h]);
    let (mut gates, mut cells, mut h_prev) = (
        vec![0f32; rows * 4 * hp],
        vec![0f32; rows * hp],
        vec![0f32; rows * hp],
    );
    let (mut dx, mut dh0, mut dc0) = (vec![0f32; rows * i], vec![0f32; b * h], vec![0f32; b * h]);
    let (mut dw_ih, mut dw_hh, mut db) = (
        vec![0f32; 4 * h * i],
        vec![0f32; 4 * h * h],
        vec![0f32; 4 * h],
    );
    let mut scratch = vec![0f32; rows * 4 * hp];
    let cancel = Cancel::default();
    let (mut fwd_times, mut bwd_times) = (Vec::new(), Vec::new());
    for call in 0..calls {
        if which != "backward" || call == 0 {
            let start = Instant::now();
            forward(
                &seq,
                Outputs {
                    y: &mut y,
                    h_n: &mut h_n,
                    c_n: &mut c_n,
                },
                Some(Cache {
                    gates: &mut gates,
                    cells: &mut cells,
                    h_prev: &mut h_prev,
                    pre: None,
                }),
                &cancel,
            )
            .expect("forward");
            fwd_times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        if which != "forward" {
            let start = Instant::now();
            backward(
                &seq,
                CacheRef {
                    gates: &gates,
                    cells: &cells,
                    h_prev: &h_prev,
                    pre: None,
                },
                Seeds {
                    dy: Some(&dy),
                    dh_n: None,
                    dc_n: None,
                },
                Grads {
                    dx: &mut dx,
                    dh0: &mut dh0,
                    dc0: &mut dc0,
                    dw_ih: &mut dw_ih,
                    dw_hh: &mut dw_hh,
                    db: Some(&mut db),
                    scratch: Some(&mut scratch),
                    dpeepholes: None,
                    dw_hr: None,
                    flow: None,
                },
                &cancel,
            )
            .expect("backward");
            bwd_times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let hash = [&dx, &dh0, &dc0, &dw_ih, &dw_hh, &db]
        .into_iter()
        .flatten()
        .fold(0xcbf2_9ce4_8422_2325_u64, |acc, v| {
            (acc ^ u64::from(v.to_bits())).wrapping_mul(0x100_0000_01b3)
        });
    let (f_min, f_med) = summary(&mut fwd_times);
    print!("B={b} T={t} I={i} H={h}: forward+cache min {f_min:.3} med {f_med:.3} ms");
    if !bwd_times.is_empty() {
        let (b_min, b_med) = summary(&mut bwd_times);
        print!(", backward min {b_min:.3} med {b_med:.3} ms; gradients hash {hash:016x}");
    }
    println!(" ({} calls)", calls);
}

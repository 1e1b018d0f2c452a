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
//!
//!     cargo run --release --example backward_profile -- blocks [B T I H] [seconds]
//!
//! times the large products after backward's loop at that shape (dx = da·w_ih,
//! and one block of `ORDERED_BLOCK_ROWS` rows of the weight sums, daᵀ·x) on
//! one thread and the active ISA (`LSTM_FAST_ISA`), through the kernel itself
//! with each of several depth blocks (KC) and A blocks (MC) in turn, so that
//! `tuning::GEMM_SHAPES` can be chosen per machine by measurement (the tile,
//! MR × NR, is the ISA's). Each element is one FMA chain in k order whatever
//! the blocks: all give the same bits (checked).

use std::time::Instant;

#[path = "shape.rs"]
mod shape;

use lstm_fast::kernels::gemm_kernel::{gemm_task, shape as gemm_shape, Blocks, View};
use lstm_fast::simd::{dispatch, Isa, Kernel, Simd};
use lstm_fast::tuning::ORDERED_BLOCK_ROWS;
use lstm_fast::{
    backward, forward, hidden_pad, Cache, CacheRef, Cancel, Dims, Grads, Outputs, PanelCache,
    Seeds, Sequence, Variant,
};

#[path = "common/cpu_time.rs"]
mod cpu_time;
use cpu_time::thread_seconds;

/// The fastest and the median of `times` (ms), sorted in place.
fn summary(times: &mut [f64]) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2])
}

/// One product `C = A·B` (A m × k with rows `a_rs` and columns `a_cs`
/// apart, B k × n row-major, C m × n) through the kernel with depth blocks
/// of `kc` and A blocks of `a_bytes`, timed: the fastest of the repeats run
/// during `seconds`, in s.
struct Timed<'a> {
    m: usize,
    k: usize,
    n: usize,
    a: &'a [f32],
    a_rs: usize,
    a_cs: usize,
    b: &'a [f32],
    c: &'a mut [f32],
    kc: usize,
    a_bytes: usize,
    seconds: f64,
}

impl Kernel<f32> for Timed<'_> {
    type Output = f64;
    #[inline(always)]
    fn run<S: Simd<E = f32>>(self) -> f64 {
        let s = gemm_shape::<S>();
        let (mr, nr) = (s.mr, s.nv * S::LANES);
        let kc = self.kc.min(self.k);
        // Depth blocks of equal size, as `Blocks::for_product` makes them.
        let kc = self.k.div_ceil(self.k.div_ceil(kc));
        let mc = ((self.a_bytes / (kc * 4) / mr).max(1) * mr).min(self.m.next_multiple_of(mr));
        let nc = ((s.b_block_bytes / (kc * 4) / nr).max(1) * nr).min(self.n.next_multiple_of(nr));
        let blocks = Blocks { mr, nr, kc, mc, nc };
        let (mut a_buf, mut b_buf) = (vec![0f32; blocks.a_len()], vec![0f32; blocks.b_len()]);
        let (a, b) = (
            View {
                ptr: self.a.as_ptr(),
                rs: self.a_rs,
                cs: self.a_cs,
                runs: None,
            },
            View {
                ptr: self.b.as_ptr(),
                rs: self.n,
                cs: 1,
                runs: None,
            },
        );
        assert!((self.m - 1) * self.a_rs + (self.k - 1) * self.a_cs < self.a.len());
        assert!(self.k * self.n <= self.b.len() && self.m * self.n <= self.c.len());
        let mut best = f64::INFINITY;
        let until = Instant::now() + std::time::Duration::from_secs_f64(self.seconds);
        let mut rep = 0;
        while rep < 3 || Instant::now() < until {
            let t0 = thread_seconds();
            // SAFETY: A and B lie inside their slices (asserted above), C
            // holds m rows of n, and the blocks and buffers are this ISA's.
            unsafe {
                gemm_task::<S>(
                    self.m,
                    self.k,
                    self.n,
                    a,
                    b,
                    self.c.as_mut_ptr(),
                    self.n,
                    false,
                    blocks,
                    &mut a_buf,
                    &mut b_buf,
                )
            };
            best = best.min(thread_seconds() - t0);
            rep += 1;
        }
        best
    }
}

/// The `blocks` mode (see the module's documentation).
fn blocks_main(args: &[String]) {
    let numbers: Vec<f64> = args.iter().map(|a| a.parse().expect("numbers")).collect();
    let [b, t, i, h] = match numbers.as_slice() {
        [b, t, i, h, ..] => [*b, *t, *i, *h].map(|v| v as usize),
        _ => [64, 100, 512, 512],
    };
    let seconds = numbers.get(4).copied().unwrap_or(0.5);
    let isa = Isa::active();
    let (rows, g4) = (t * b, 4 * h);
    let ordered = ORDERED_BLOCK_ROWS.min(rows);
    let mut state = shape::SEED;
    let mut uniform = |n: usize| shape::uniform(&mut state, n);
    let (da, w_ih, x) = (uniform(rows * g4), uniform(g4 * i), uniform(rows * i));
    println!(
        "ISA {} B={b} T={t} I={i} H={h}, 1 thread, GFLOP/s",
        isa.name()
    );
    // (name, m, k, n, A's row and column strides, B)
    type Product<'a> = (&'a str, [usize; 5], &'a [f32]);
    let products: [Product<'_>; 2] = [
        // dx = da·w_ih: A row-major (rows × 4H), k = 4H.
        ("dx", [rows, g4, i, g4, 1], &w_ih),
        // One block of the weight sums daᵀ·x: A transposed, k = rows.
        ("dw_ih", [g4, ordered, i, 1, g4], &x),
    ];
    for (what, [m, k, n, a_rs, a_cs], b_data) in products {
        let mut want: Option<Vec<f32>> = None;
        println!("{what} {m}x{k}x{n}");
        for a_bytes in [256 * 1024, 512 * 1024, 1024 * 1024] {
            let mut line = format!("  A block {:4} KiB:", a_bytes / 1024);
            for kc in [128, 192, 256, 384, 512, 768, 1024] {
                let mut c = vec![0f32; m * n];
                let best = dispatch(
                    isa,
                    Timed {
                        m,
                        k,
                        n,
                        a: &da,
                        a_rs,
                        a_cs,
                        b: b_data,
                        c: &mut c,
                        kc,
                        a_bytes,
                        seconds,
                    },
                );
                match &want {
                    None => want = Some(c),
                    Some(w) => assert!(
                        w.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{what}: KC {kc} gave other bits"
                    ),
                }
                line += &format!(" KC {kc} {:6.1}", 2.0 * (m * k * n) as f64 / best / 1e9);
            }
            println!("{line}");
        }
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "blocks") {
        return blocks_main(&args[1..]);
    }
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

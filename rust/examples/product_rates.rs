//! GFLOP/s of each product of the engine, alone, against the measured FMA peak
//! (the figures behind BENCHMARKS.md's "Where the time goes").
//!
//!     cargo run --release --example product_rates -- [B H I T] [seconds]
//!
//! Per shape: the recurrent step products (forward h·w_hh over the forward
//! panels, backward da·w_hh over the backward panels, through the same kernel
//! entry the time loops call), and the large products through `gemm` (the input
//! projection of a block of steps, dx, dw_ih, dw_hh), on 1 thread and on 2
//! (the step products as the batch split runs them: half the rows each, at
//! once; `gemm` split by rows in a pool of 2). The fastest of the repeats run
//! during `seconds` is reported.
//!
//! `cargo run --release --example product_rates -- gemm [seconds] [T scale]`
//! times only the three large products after backward's loop (dx = da·w_ih,
//! dw_ih = daᵀ·x, dw_hh = daᵀ·h_prev) at the standard shapes M, L and XL (T
//! scaled by the given factor, default 1), f32, on 1 and 2 threads: the
//! engine's `gemm` against matrixmultiply's `sgemm` split the same way (as
//! `gemm` ran before), timed in turns in one process, fastest of the repeats.
//!
//! `cargo run --release --example product_rates -- engine [seconds] [M,L,XL,wide_in|all] [1] [T scale]`
//! times the large products as the engine calls them (the input projection
//! x·w_ihᵀ with w_ih read in place, dx, and the weight sums in backward's
//! order through `gemm_in_order`, in blocks of `ORDERED_BLOCK_ROWS`) at M, L,
//! XL and the wide-input case (B 64, T 20, I 512, H 128), on 1 and 2 threads
//! (on 1 only with a last argument `1`).
//!
//! Each step product is given three ways, timed in turns in the same process:
//! `old`, the 2 × 4-vector tile of before issue 8 (4 × 4 on AVX-512), on the
//! rows in place; `new`, the ISA's tile (`tuning.rs`) on the rows in place;
//! `packed`, the ISA's tile on rows packed once per step, packing included
//! (what the time loops run). All three give the same bits. By default each
//! panel's call is timed alone and the fastest of each is summed; with
//! `WHOLE_PASS=1` set, the fastest pass over all panels is reported instead
//! (panels streaming from L3 as in a time step). `SAME_ROW=1` makes every row
//! of A the same row (A then stays in L1), to tell A's traffic from the tile's.

use std::time::Instant;

use lstm_fast::kernels::gemm::{gemm, gemm_in_order, KOrder, Mat, Runs};
use lstm_fast::kernels::microkernel::{
    accumulator_room, accumulators, l1_depth, mrx4v_accumulate, pack_rows, rows_x4v_kblocked,
    PackedRows, Rows,
};
use lstm_fast::simd::peak::fma_peak;
use lstm_fast::simd::{dispatch, Isa, Kernel, Simd};
use lstm_fast::tuning::PROJECTION_ROWS;

#[path = "common/cpu_time.rs"]
mod cpu_time;
use cpu_time::thread_seconds;

/// The step kernel before issue 8 (2 × 4v tiles on AVX2, 4 × 4v on AVX-512),
/// kept here for an A/B in one process; same results bit for bit.
///
/// # Safety
/// As for `rows_x4v_kblocked`.
#[inline(always)]
unsafe fn old_rows_x4v_kblocked<S: Simd<E = f32>>(
    rows: usize,
    row_ptr: impl Fn(usize) -> *const f32,
    depth: usize,
    panel: *const f32,
    out: &mut [[S; 4]],
) {
    #[inline(always)]
    unsafe fn group<S: Simd<E = f32>, const MR: usize>(
        r: usize,
        row_ptr: &impl Fn(usize) -> *const f32,
        k0: usize,
        kd: usize,
        panel: *const f32,
        out: &mut [[S; 4]],
    ) {
        let mut acc: [[S; 4]; MR] = std::array::from_fn(|i| out[r + i]);
        let a: [*const f32; MR] = std::array::from_fn(|i| row_ptr(r + i).wrapping_add(k0));
        // SAFETY: forwarded from the caller.
        unsafe { mrx4v_accumulate::<S, MR>(&mut acc, a, 1, kd, panel.add(k0 * 4 * S::LANES)) };
        out[r..r + MR].copy_from_slice(&acc);
    }
    let kc = l1_depth::<S>();
    out[..rows].fill([S::splat(0.0); 4]);
    for k0 in (0..depth).step_by(kc) {
        let kd = kc.min(depth - k0);
        let mut r = 0;
        // SAFETY: rows below `rows`, depth below k0 + kd ≤ depth.
        unsafe {
            if size_of::<S>() >= 64 {
                while r + 4 <= rows {
                    group::<S, 4>(r, &row_ptr, k0, kd, panel, out);
                    r += 4;
                }
            }
            while r + 2 <= rows {
                group::<S, 2>(r, &row_ptr, k0, kd, panel, out);
                r += 2;
            }
            while r < rows {
                group::<S, 1>(r, &row_ptr, k0, kd, panel, out);
                r += 1;
            }
        }
    }
}

/// One step's recurrent product for `rows` rows: every panel of depth `depth`.
struct Step<'a> {
    rows: usize,
    depth: usize,
    a: &'a [f32],
    panels: &'a [f32],
    tiles: usize,
    seconds: f64,
    same_row: bool,
}

impl Kernel<f32> for Step<'_> {
    /// Seconds of the old kernel, the new on the rows in place, and the new
    /// on rows packed once per step (the packing included).
    type Output = [f64; 3];
    #[inline(always)]
    fn run<S: Simd<E = f32>>(self) -> [f64; 3] {
        let stride = self.depth * 4 * S::LANES;
        assert!(self.panels.len() >= self.tiles * stride);
        assert!(self.a.len() >= self.rows * self.depth);
        let mut room = accumulator_room::<f32>(self.rows, S::LANES, "bench").unwrap();
        let out = accumulators::<S>(&mut room);
        let mut sink = S::splat(0.0);
        let row_stride = if self.same_row { 0 } else { self.depth };
        // Each panel's call is timed on its own (tens of microseconds), old
        // and new kernel in turns, and the fastest of each is kept: on a
        // shared machine, short rounds are the ones that run undisturbed. The
        // timing loop is written out here, not in a closure: a closure is
        // compiled outside the dispatch trampoline's target features.
        let until = Instant::now() + std::time::Duration::from_secs_f64(self.seconds);
        let mut best = vec![[f64::INFINITY; 3]; self.tiles];
        let mut packed = vec![0.0f32; self.rows * self.depth];
        let mut pack_best = f64::INFINITY;
        let mut pass_best = [f64::INFINITY; 3];
        let mut n = 0;
        while n < 4 || Instant::now() < until {
            let t = Instant::now();
            // SAFETY: rows of `depth` inside `a`.
            unsafe {
                pack_rows::<S>(
                    self.rows,
                    |r| self.a.as_ptr().add(r * row_stride),
                    self.depth,
                    &mut packed,
                )
            };
            if n > 0 {
                pack_best = pack_best.min(t.elapsed().as_secs_f64());
            }
            for (which, pass) in pass_best.iter_mut().enumerate() {
                let t = Instant::now();
                for p in 0..self.tiles {
                    // SAFETY: as below.
                    unsafe {
                        let row = |r: usize| self.a.as_ptr().add(r * row_stride);
                        let panel = self.panels.as_ptr().add(p * stride);
                        match which {
                            0 => old_rows_x4v_kblocked::<S>(self.rows, row, self.depth, panel, out),
                            1 => {
                                rows_x4v_kblocked::<S>(self.rows, Rows(row), self.depth, panel, out)
                            }
                            _ => {
                                if p == 0 {
                                    pack_rows::<S>(self.rows, row, self.depth, &mut packed);
                                }
                                rows_x4v_kblocked::<S>(
                                    self.rows,
                                    PackedRows {
                                        data: packed.as_ptr(),
                                        depth: self.depth,
                                    },
                                    self.depth,
                                    panel,
                                    out,
                                )
                            }
                        }
                    }
                    sink = sink.add(out[0][0]);
                }
                *pass = pass.min(t.elapsed().as_secs_f64());
            }
            for (p, best) in best.iter_mut().enumerate() {
                for (which, best) in best.iter_mut().enumerate() {
                    let t = Instant::now();
                    // SAFETY: rows of `depth` inside `a`, panels inside
                    // `panels` (asserted above).
                    unsafe {
                        let row = |r: usize| self.a.as_ptr().add(r * row_stride);
                        let panel = self.panels.as_ptr().add(p * stride);
                        match which {
                            0 => old_rows_x4v_kblocked::<S>(self.rows, row, self.depth, panel, out),
                            1 => {
                                rows_x4v_kblocked::<S>(self.rows, Rows(row), self.depth, panel, out)
                            }
                            _ => rows_x4v_kblocked::<S>(
                                self.rows,
                                PackedRows {
                                    data: packed.as_ptr(),
                                    depth: self.depth,
                                },
                                self.depth,
                                panel,
                                out,
                            ),
                        }
                    }
                    sink = sink.add(out[0][0]);
                    if n > 0 {
                        *best = best.min(t.elapsed().as_secs_f64());
                    }
                }
            }
            std::hint::black_box(&sink);
            n += 1;
        }
        [0, 1, 2]
            .map(|i| best.iter().map(|b| b[i]).sum::<f64>() + if i == 2 { pack_best } else { 0.0 })
    }
}

fn step_rate(
    isa: Isa,
    threads: usize,
    b: usize,
    depth: usize,
    out_units: usize,
    s: f64,
) -> [f64; 3] {
    let lanes = match isa {
        Isa::Avx512 | Isa::Avx512Bf16 => 16,
        Isa::Avx2 => 8,
        Isa::Scalar => 1,
    };
    let tiles = out_units / lanes; // forward: H/w tiles of 4 gates; backward: 4H/(4w)
    let rows = b / threads;
    let a: Vec<f32> = (0..rows * depth).map(|i| (i % 7) as f32 * 0.1).collect();
    let panels: Vec<f32> = (0..tiles * depth * 4 * lanes)
        .map(|i| (i % 5) as f32 * 0.01)
        .collect();
    let seconds = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (a, panels) = (a.clone(), panels.clone());
                sc.spawn(move || {
                    dispatch::<f32, _>(
                        isa,
                        Step {
                            rows,
                            depth,
                            a: &a,
                            panels: &panels,
                            tiles,
                            seconds: s,
                            same_row: std::env::var_os("SAME_ROW").is_some(),
                        },
                    )
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .fold([0.0f64; 3], |m, t| std::array::from_fn(|i| m[i].max(t[i])))
    });
    let flops = 2.0 * (rows * threads) as f64 * depth as f64 * (tiles * 4 * lanes) as f64;
    seconds.map(|t| flops / t / 1e9)
}

/// GFLOP/s of `gemm` (matrixmultiply, split by rows) with A m×k (row-major,
/// or transposed: columns `m` apart), B k×n row-major, in a pool of `threads`.
fn gemm_rate(threads: usize, m: usize, k: usize, n: usize, a_transposed: bool, s: f64) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.01).collect();
    let mut c = vec![0.0f32; m * n];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let a_mat = if a_transposed {
        Mat {
            data: &a,
            rows: m,
            cols: k,
            row_stride: 1,
            col_stride: m,
        }
    } else {
        Mat::rows(&a, m, k, k)
    };
    let b_mat = Mat::rows(&b, k, n, n);
    let mut best = f64::INFINITY;
    pool.install(|| {
        let until = Instant::now() + std::time::Duration::from_secs_f64(s);
        let mut i = 0;
        while i < 4 || Instant::now() < until {
            let t = Instant::now();
            gemm(a_mat, b_mat, &mut c, n, false);
            if i > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
            i += 1;
        }
    });
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// matrixmultiply's `sgemm` split by rows over the current pool as `gemm` did
/// before issue 8 (tasks of at least 32 rows, a multiple of its MR, 8).
fn mm_gemm(a: Mat<'_, f32>, b: Mat<'_, f32>, c: &mut [f32], ldc: usize) {
    use rayon::prelude::*;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let tasks = rayon::current_num_threads().min(m.div_ceil(32)).max(1);
    let rows_per_task = m.div_ceil(tasks).next_multiple_of(8);
    c[..(m - 1) * ldc + n]
        .par_chunks_mut(rows_per_task * ldc)
        .enumerate()
        .for_each(|(task, c_rows)| {
            let r0 = task * rows_per_task;
            let rows = rows_per_task.min(m - r0);
            // SAFETY: the views fit their slices (built below), C's rows of
            // this task are `c_rows`.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    k,
                    n,
                    1.0,
                    a.data.as_ptr().add(r0 * a.row_stride),
                    a.row_stride as isize,
                    a.col_stride as isize,
                    b.data.as_ptr(),
                    b.row_stride as isize,
                    b.col_stride as isize,
                    0.0,
                    c_rows.as_mut_ptr(),
                    ldc as isize,
                    1,
                )
            }
        });
}

/// The three large products of a backward pass at T, B, I, H (H a multiple of
/// 16, so Hp = H and one product serves all four gates), ours against
/// matrixmultiply, on 1 and 2 threads.
fn backward_products(name: &str, [t, b, i, h]: [usize; 4], peak: f64, seconds: f64) {
    let rows = t * b;
    let depth = 4 * h;
    let da: Vec<f32> = (0..rows * depth)
        .map(|j| ((j % 13) as f32 - 6.0) * 0.01)
        .collect();
    let w_ih: Vec<f32> = (0..depth * i)
        .map(|j| ((j % 7) as f32 - 3.0) * 0.1)
        .collect();
    let x: Vec<f32> = (0..rows * i)
        .map(|j| ((j % 5) as f32 - 2.0) * 0.1)
        .collect();
    let h_prev: Vec<f32> = (0..rows * h)
        .map(|j| ((j % 11) as f32 - 5.0) * 0.1)
        .collect();
    let da_t = Mat {
        data: &da,
        rows: depth,
        cols: rows,
        row_stride: 1,
        col_stride: depth,
    };
    let products: [(String, Mat<f32>, Mat<f32>); 3] = [
        (
            format!("dx {rows}x{depth}x{i}"),
            Mat::rows(&da, rows, depth, depth),
            Mat::rows(&w_ih, depth, i, i),
        ),
        (
            format!("dw_ih {depth}x{rows}x{i}"),
            da_t,
            Mat::rows(&x, rows, i, i),
        ),
        (
            format!("dw_hh {depth}x{rows}x{h}"),
            da_t,
            Mat::rows(&h_prev, rows, h, h),
        ),
    ];
    for (what, a, b) in products {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let flops = 2.0 * (m * k * n) as f64;
        let mut c = vec![0.0f32; m * n];
        let mut c_mm = vec![0.0f32; m * n];
        let mut rates = [[0.0; 2]; 2];
        for (th, threads) in [1, 2].into_iter().enumerate() {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut best = [f64::INFINITY; 2];
            let epoch = Instant::now();
            pool.install(|| {
                let until = Instant::now() + std::time::Duration::from_secs_f64(seconds);
                let mut rep = 0;
                // One thread: its CPU time (the pool's one worker runs
                // everything); two: wall-clock time.
                let clock = || {
                    if threads == 1 {
                        thread_seconds()
                    } else {
                        epoch.elapsed().as_secs_f64()
                    }
                };
                while rep < 3 || Instant::now() < until {
                    let t0 = clock();
                    gemm(a, b, &mut c, n, false);
                    let t1 = clock();
                    mm_gemm(a, b, &mut c_mm, n);
                    let t2 = clock();
                    best[0] = best[0].min(t1 - t0);
                    best[1] = best[1].min(t2 - t1);
                    rep += 1;
                }
            });
            rates[th] = best.map(|s| flops / s / 1e9);
        }
        let worst = c
            .iter()
            .zip(&c_mm)
            .map(|(x, y)| ((x - y).abs() / (1.0 + y.abs())) as f64)
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-3,
            "{what}: ours and matrixmultiply differ by {worst}"
        );
        let [[o1, m1], [o2, m2]] = rates;
        println!(
            "{name:3} {what:22} {o1:7.1} {:5.1}% {m1:7.1} {:5.1}% | {o2:7.1} {:5.1}% {m2:7.1} {:5.1}%",
            100.0 * o1 / peak,
            100.0 * m1 / peak,
            50.0 * o2 / peak,
            50.0 * m2 / peak,
        );
    }
}

fn gemm_main(args: &[String]) {
    let seconds: f64 = args.first().map_or(2.0, |a| a.parse().unwrap());
    let scale: f64 = args.get(1).map_or(1.0, |a| a.parse().unwrap());
    let isa = Isa::active();
    let peak = fma_peak(isa, 0.5);
    println!(
        "ISA {}  FMA peak {peak:.1} GFLOP/s per core (f32)",
        isa.name()
    );
    println!(
        "{:3} {:22} {:>7} {:>6} {:>7} {:>6} | {:>7} {:>6} {:>7} {:>6}",
        "",
        "product (MxKxN)",
        "ours 1T",
        "%peak",
        "mm 1T",
        "%peak",
        "ours 2T",
        "%2pk",
        "mm 2T",
        "%2pk"
    );
    for (name, [t, b, i, h]) in [
        ("M", [100, 16, 256, 256]),
        ("L", [100, 64, 512, 512]),
        ("XL", [50, 128, 1024, 1024]),
    ] {
        let t = ((t as f64 * scale).round() as usize).max(1);
        backward_products(name, [t, b, i, h], peak, seconds);
    }
}

/// One of the engine's large products as the engine calls it: `C = A·B`
/// through `gemm`, or, for the weight sums, through `gemm_in_order` over
/// blocks of `ORDERED_BLOCK_ROWS` (step, row) pairs in backward's order
/// (steps last to first), each block continuing the chains of the last.
struct EngineProduct<'a> {
    what: String,
    a: Mat<'a, f32>,
    b: Mat<'a, f32>,
    /// With `Some((steps, batch))`, k runs over (step, row) pairs in
    /// backward's order, A (transposed) and B in time-major layout.
    ordered: Option<(usize, usize)>,
}

impl EngineProduct<'_> {
    fn run(&self, c: &mut [f32]) {
        let n = self.b.cols;
        let Some((steps, batch)) = self.ordered else {
            gemm(self.a, self.b, c, n, false);
            return;
        };
        let rows = steps * batch;
        let block = lstm_fast::tuning::ORDERED_BLOCK_ROWS.min(rows);
        for done in (0..rows).step_by(block) {
            let k = block.min(rows - done);
            // Pair `done` of backward's order: step T-1-done/B, row done%B.
            let (s, r) = (steps - 1 - done / batch, done % batch);
            let order = KOrder {
                origin: s * batch + r,
                runs: Runs {
                    skip: r,
                    len: batch,
                    inner: 1,
                    outer: -(batch as isize),
                },
            };
            let a = Mat { cols: k, ..self.a };
            let b = Mat { rows: k, ..self.b };
            gemm_in_order(a, b, order, c, n, done > 0);
        }
    }
}

/// The engine's large products at the standard shapes and the wide-input
/// case, as the engine calls them, on 1 thread (CPU time) and 2 (wall
/// clock): the input projection x·w_ihᵀ (w_ih read transposed in place, as
/// the LayerNorm LSTM calls it), dx = da·w_ih, and the weight sums
/// dw_ih = daᵀ·x and dw_hh = daᵀ·h_prev in backward's order.
fn engine_main(args: &[String]) {
    let seconds: f64 = args.first().map_or(1.0, |a| a.parse().unwrap());
    let only: Option<&str> = args.get(1).map(String::as_str).filter(|o| *o != "all");
    let one_thread = args.get(2).is_some_and(|a| a == "1");
    // T scaled (short rounds fit between other work on a shared machine).
    let scale: f64 = args.get(3).map_or(1.0, |a| a.parse().unwrap());
    let isa = Isa::active();
    let peak = fma_peak(isa, 0.5);
    println!(
        "ISA {}  FMA peak {peak:.1} GFLOP/s per core (f32)",
        isa.name()
    );
    println!(
        "{:8} {:26} {:>7} {:>6} {:>7} {:>6}",
        "shape", "product (MxKxN)", "1T", "%peak", "2T", "%2pk"
    );
    for (name, [t, b, i, h]) in [
        ("M", [100, 16, 256, 256]),
        ("L", [100, 64, 512, 512]),
        ("XL", [50, 128, 1024, 1024]),
        ("wide_in", [20, 64, 512, 128]),
    ] {
        if only.is_some_and(|o| !o.split(',').any(|o| o == name)) {
            continue;
        }
        let t = ((t as f64 * scale).round() as usize).max(1);
        let (rows, g4) = (t * b, 4 * h);
        let fill = |len: usize, m: usize| -> Vec<f32> {
            (0..len)
                .map(|j| ((j % m) as f32 - (m / 2) as f32) * 0.01)
                .collect()
        };
        let (x, w_ih, da, h_prev) = (
            fill(rows * i, 5),
            fill(g4 * i, 7),
            fill(rows * g4, 13),
            fill(rows * h, 11),
        );
        let da_t = Mat {
            data: &da,
            rows: g4,
            cols: rows,
            row_stride: 1,
            col_stride: g4,
        };
        let products = [
            EngineProduct {
                what: format!("projection {rows}x{i}x{g4}"),
                a: Mat::rows(&x, rows, i, i),
                b: Mat {
                    data: &w_ih,
                    rows: i,
                    cols: g4,
                    row_stride: 1,
                    col_stride: i,
                },
                ordered: None,
            },
            EngineProduct {
                what: format!("dx {rows}x{g4}x{i}"),
                a: Mat::rows(&da, rows, g4, g4),
                b: Mat::rows(&w_ih, g4, i, i),
                ordered: None,
            },
            EngineProduct {
                what: format!("dw_ih {g4}x{rows}x{i}"),
                a: da_t,
                b: Mat::rows(&x, rows, i, i),
                ordered: Some((t, b)),
            },
            EngineProduct {
                what: format!("dw_hh {g4}x{rows}x{h}"),
                a: da_t,
                b: Mat::rows(&h_prev, rows, h, h),
                ordered: Some((t, b)),
            },
        ];
        for p in &products {
            let (m, k, n) = (p.a.rows, p.a.cols, p.b.cols);
            let flops = 2.0 * (m * k * n) as f64;
            let mut c = vec![0.0f32; m * n];
            let rates = [1, 2].map(|threads| {
                if threads > 1 && one_thread {
                    return f64::NAN;
                }
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let epoch = Instant::now();
                let clock = || {
                    if threads == 1 {
                        thread_seconds()
                    } else {
                        epoch.elapsed().as_secs_f64()
                    }
                };
                let mut best = f64::INFINITY;
                pool.install(|| {
                    let until = Instant::now() + std::time::Duration::from_secs_f64(seconds);
                    let mut rep = 0;
                    while rep < 3 || Instant::now() < until {
                        let t0 = clock();
                        p.run(&mut c);
                        best = best.min(clock() - t0);
                        rep += 1;
                    }
                });
                flops / best / 1e9
            });
            println!(
                "{name:8} {:26} {:7.1} {:5.1}% {:7.1} {:5.1}%",
                p.what,
                rates[0],
                100.0 * rates[0] / peak,
                rates[1],
                50.0 * rates[1] / peak,
            );
        }
    }
}

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("gemm") {
        gemm_main(&raw[1..]);
        return;
    }
    if raw.first().map(String::as_str) == Some("engine") {
        engine_main(&raw[1..]);
        return;
    }
    let args: Vec<f64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let seconds = args.get(4).copied().unwrap_or(0.5);
    let shapes: Vec<(&str, [usize; 4])> = if args.len() >= 4 {
        vec![(
            "custom",
            [
                args[0] as usize,
                args[1] as usize,
                args[2] as usize,
                args[3] as usize,
            ],
        )]
    } else {
        vec![
            // T only sets the depth of dw_ih/dw_hh and the rows of dx: short
            // enough that a round fits between other work on a shared machine.
            ("L", [64, 512, 1, 8]),
            ("XL", [128, 1024, 1, 4]),
            ("L I=512", [64, 512, 512, 8]),
            ("XL I=1024", [128, 1024, 1024, 4]),
            ("wide H=64", [64, 64, 1024, 16]),
            ("wide H=128", [64, 128, 1024, 16]),
        ]
    };
    let isa = Isa::active();
    let peak = fma_peak(isa, 0.3);
    println!("ISA {}  FMA peak {peak:.1} GFLOP/s per core", isa.name());
    println!(
        "{:12} {:22} {:>9} {:>7} {:>9} {:>7}",
        "shape", "product", "1T GF/s", "%peak", "2T GF/s", "%2peak"
    );
    for (name, [b, h, i, t]) in shapes {
        let mut rows: Vec<(String, [f64; 2])> = Vec::new();
        if i <= 1 {
            for (what, depth) in [("fwd step h·w_hh", h), ("bwd step da·w_hh", 4 * h)] {
                let [[old1, new1, pk1], [old2, new2, pk2]] =
                    [1, 2].map(|th| step_rate(isa, th, b, depth, h, seconds));
                rows.push((format!("{what} old"), [old1, old2]));
                rows.push((format!("{what} new"), [new1, new2]));
                rows.push((format!("{what} packed"), [pk1, pk2]));
            }
        }
        let mut gemm_rows = |what: String, m, k, n, tr| {
            rows.push((what, [1, 2].map(|th| gemm_rate(th, m, k, n, tr, seconds))));
        };
        let tb = t * b;
        if i > 1 {
            // The projection: a block of about PROJECTION_ROWS (step, row)
            // pairs against one gate's w_ih (transposed) at a time.
            let m = (PROJECTION_ROWS / b).max(1) * b;
            gemm_rows(format!("projection {m}x{i}x{h}"), m, i, h, false);
            gemm_rows(format!("dx {tb}x{}x{i}", 4 * h), tb, 4 * h, i, false);
            gemm_rows(format!("dw_ih {}x{tb}x{i}", 4 * h), 4 * h, tb, i, true);
        }
        gemm_rows(format!("dw_hh {}x{tb}x{h}", 4 * h), 4 * h, tb, h, true);
        for (what, [one, two]) in rows {
            println!(
                "{name:12} {what:22} {one:9.1} {:6.1}% {two:9.1} {:6.1}%",
                100.0 * one / peak,
                50.0 * two / peak
            );
        }
    }
}

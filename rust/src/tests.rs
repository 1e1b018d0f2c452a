//! Engine tests: every ISA path against a plain scalar implementation, the
//! activations' error over the float32 range, thread-count independence and
//! argument checks.

use crate::simd::{self, Isa, Kernel, Simd};
use crate::ForcedSplit;
use crate::{
    backward, backward_checkpointed, checkpoint_len, forward, forward_checkpointed, hidden_pad,
    Cache, CacheRef, Cancel, Dims, Float, Grads, Outputs, Seeds, Sequence,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tests that switch the global ISA or thread count must not interleave.
static GLOBAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small deterministic generator (xorshift), values in [-scale, scale).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

// ---------------------------------------------------------------------------
// The oracle: the equations of docs/api.md, "The math", as plain loops in f64.
// ---------------------------------------------------------------------------

struct Problem {
    dims: Dims,
    batch_first: bool,
    reverse: bool,
    lengths: Option<Vec<usize>>,
    x: Vec<f64>,
    w_ih: Vec<f64>,
    w_hh: Vec<f64>,
    bias: Option<Vec<f64>>,
    h0: Option<Vec<f64>>,
    c0: Option<Vec<f64>>,
    dy: Vec<f64>,
    dh_n: Vec<f64>,
    dc_n: Vec<f64>,
}

#[derive(Debug, Default)]
struct Results {
    y: Vec<f64>,
    h_n: Vec<f64>,
    c_n: Vec<f64>,
    dx: Vec<f64>,
    dh0: Vec<f64>,
    dc0: Vec<f64>,
    dw_ih: Vec<f64>,
    dw_hh: Vec<f64>,
    db: Vec<f64>,
}

impl Problem {
    fn new(
        seed: u64,
        dims: Dims,
        batch_first: bool,
        reverse: bool,
        with_lengths: bool,
        with_state: bool,
    ) -> Self {
        let Dims {
            steps,
            batch,
            input,
            hidden,
        } = dims;
        let mut r = Rng(seed * 2654435761 + 1);
        let lengths = with_lengths.then(|| {
            (0..batch)
                .map(|_| ((r.next() + 1.0) * 0.5 * (steps + 1) as f64) as usize % (steps + 1))
                .collect()
        });
        Problem {
            dims,
            batch_first,
            reverse,
            lengths,
            x: r.vec(steps * batch * input, 1.0),
            w_ih: r.vec(4 * hidden * input, 0.6),
            w_hh: r.vec(4 * hidden * hidden, 0.6),
            bias: with_state.then(|| r.vec(4 * hidden, 0.5)),
            h0: with_state.then(|| r.vec(batch * hidden, 1.0)),
            c0: with_state.then(|| r.vec(batch * hidden, 1.0)),
            dy: r.vec(steps * batch * hidden, 1.0),
            dh_n: r.vec(batch * hidden, 1.0),
            dc_n: r.vec(batch * hidden, 1.0),
        }
    }

    fn row(&self, pos: usize, b: usize) -> usize {
        if self.batch_first {
            b * self.dims.steps + pos
        } else {
            pos * self.dims.batch + b
        }
    }

    #[allow(clippy::needless_range_loop)] // index form mirrors the equations
    fn oracle(&self) -> Results {
        let Dims {
            steps,
            batch,
            input: ni,
            hidden: nh,
        } = self.dims;
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut res = Results {
            y: vec![0.0; steps * batch * nh],
            dx: vec![0.0; steps * batch * ni],
            dw_ih: vec![0.0; 4 * nh * ni],
            dw_hh: vec![0.0; 4 * nh * nh],
            db: vec![0.0; 4 * nh],
            ..Default::default()
        };
        for b in 0..batch {
            let len = self.lengths.as_ref().map_or(steps, |l| l[b]);
            let positions: Vec<usize> = if self.reverse {
                (0..len).rev().collect()
            } else {
                (0..len).collect()
            };
            let mut h: Vec<f64> = self
                .h0
                .as_ref()
                .map_or(vec![0.0; nh], |v| v[b * nh..][..nh].to_vec());
            let mut c: Vec<f64> = self
                .c0
                .as_ref()
                .map_or(vec![0.0; nh], |v| v[b * nh..][..nh].to_vec());
            // (h_prev, c_prev, gates i f g o, c_new) per visited step.
            let mut tape = Vec::new();
            for &pos in &positions {
                let row = self.row(pos, b);
                let xr = &self.x[row * ni..][..ni];
                let mut a = vec![0.0; 4 * nh];
                for (j, aj) in a.iter_mut().enumerate() {
                    *aj = self.bias.as_ref().map_or(0.0, |bb| bb[j])
                        + (0..ni).map(|k| self.w_ih[j * ni + k] * xr[k]).sum::<f64>()
                        + (0..nh).map(|k| self.w_hh[j * nh + k] * h[k]).sum::<f64>();
                }
                let gates: Vec<[f64; 4]> = (0..nh)
                    .map(|u| {
                        [
                            sig(a[u]),
                            sig(a[nh + u]),
                            a[2 * nh + u].tanh(),
                            sig(a[3 * nh + u]),
                        ]
                    })
                    .collect();
                let c_new: Vec<f64> = (0..nh)
                    .map(|u| gates[u][1] * c[u] + gates[u][0] * gates[u][2])
                    .collect();
                let h_new: Vec<f64> = (0..nh).map(|u| gates[u][3] * c_new[u].tanh()).collect();
                res.y[row * nh..][..nh].copy_from_slice(&h_new);
                tape.push((h.clone(), c.clone(), gates, c_new.clone()));
                h = h_new;
                c = c_new;
            }
            res.h_n.extend_from_slice(&h);
            res.c_n.extend_from_slice(&c);
            let mut dh_next = self.dh_n[b * nh..][..nh].to_vec();
            let mut dc_next = self.dc_n[b * nh..][..nh].to_vec();
            for (&pos, (h_prev, c_prev, gates, c_new)) in positions.iter().zip(&tape).rev() {
                let row = self.row(pos, b);
                let mut da = vec![0.0; 4 * nh];
                for u in 0..nh {
                    let [i, f, g, o] = gates[u];
                    let dh = self.dy[row * nh + u] + dh_next[u];
                    let tc = c_new[u].tanh();
                    let dc = dc_next[u] + dh * o * (1.0 - tc * tc);
                    da[u] = dc * g * i * (1.0 - i);
                    da[nh + u] = dc * c_prev[u] * f * (1.0 - f);
                    da[2 * nh + u] = dc * i * (1.0 - g * g);
                    da[3 * nh + u] = dh * tc * o * (1.0 - o);
                    dc_next[u] = dc * f;
                }
                let xr = &self.x[row * ni..][..ni];
                for (j, &d) in da.iter().enumerate() {
                    res.db[j] += d;
                    for k in 0..ni {
                        res.dw_ih[j * ni + k] += d * xr[k];
                        res.dx[row * ni + k] += d * self.w_ih[j * ni + k];
                    }
                    for k in 0..nh {
                        res.dw_hh[j * nh + k] += d * h_prev[k];
                    }
                }
                dh_next = (0..nh)
                    .map(|k| (0..4 * nh).map(|j| da[j] * self.w_hh[j * nh + k]).sum())
                    .collect();
            }
            res.dh0.extend_from_slice(&dh_next);
            res.dc0.extend_from_slice(&dc_next);
        }
        res
    }

    fn engine<E: Float>(&self) -> Results {
        self.run::<E>(&Cancel::new(), &Cancel::new()).unwrap()
    }

    /// Forward with `cancel_forward`, then backward with `cancel_backward`.
    fn run<E: Float>(
        &self,
        cancel_forward: &Cancel,
        cancel_backward: &Cancel,
    ) -> crate::Result<Results> {
        self.run_with::<E>(cancel_forward, cancel_backward, None)
    }

    /// [`Problem::run`], with `checkpoint` Some(k) through the checkpointed
    /// passes (the state every k iterations, backward recomputing).
    fn run_with<E: Float>(
        &self,
        cancel_forward: &Cancel,
        cancel_backward: &Cancel,
        checkpoint: Option<usize>,
    ) -> crate::Result<Results> {
        let conv = |v: &[f64]| v.iter().map(|&a| E::from_f64(a)).collect::<Vec<E>>();
        let back = |v: &[E]| v.iter().map(|a| a.to_f64()).collect::<Vec<f64>>();
        let (x, w_ih, w_hh) = (conv(&self.x), conv(&self.w_ih), conv(&self.w_hh));
        let bias = self.bias.as_deref().map(conv);
        let h0 = self.h0.as_deref().map(conv);
        let c0 = self.c0.as_deref().map(conv);
        let Dims {
            steps,
            batch,
            input,
            hidden,
        } = self.dims;
        let seq = Sequence {
            dims: self.dims,
            batch_first: self.batch_first,
            reverse: self.reverse,
            lengths: self.lengths.as_deref(),
            x: &x,
            w_ih: &w_ih,
            w_hh: &w_hh,
            bias: bias.as_deref(),
            h0: h0.as_deref(),
            c0: c0.as_deref(),
            panels: None,
            variant: Default::default(),
        };
        let rows = steps * batch;
        let hp = hidden_pad::<E>(hidden);
        let (mut y, mut h_n, mut c_n) = (
            vec![E::ZERO; rows * hidden],
            vec![E::ZERO; batch * hidden],
            vec![E::ZERO; batch * hidden],
        );
        let (mut gates, mut cells, mut h_prev) = (
            vec![E::ZERO; rows * 4 * hp],
            vec![E::ZERO; rows * hp],
            vec![E::ZERO; rows * hp],
        );
        let out = Outputs {
            y: &mut y,
            h_n: &mut h_n,
            c_n: &mut c_n,
        };
        let mut states = vec![E::ZERO; checkpoint.map_or(0, |k| checkpoint_len(&seq, k))];
        match checkpoint {
            Some(k) => forward_checkpointed(
                &seq,
                out,
                k,
                &mut states,
                Default::default(),
                cancel_forward,
            )?,
            None => forward(
                &seq,
                out,
                Some(Cache {
                    gates: &mut gates,
                    cells: &mut cells,
                    h_prev: &mut h_prev,
                    pre: None,
                }),
                cancel_forward,
            )?,
        }
        let (dy, dh_n, dc_n) = (conv(&self.dy), conv(&self.dh_n), conv(&self.dc_n));
        let mut g = [
            rows * input,
            batch * hidden,
            batch * hidden,
            4 * hidden * input,
            4 * hidden * hidden,
            4 * hidden,
        ]
        .map(|n| vec![E::ZERO; n]);
        let [dx, dh0, dc0, dw_ih, dw_hh, db] = &mut g;
        let mut scratch = vec![E::from_f64(f64::NAN); rows * 4 * hp];
        let seeds = Seeds {
            dy: Some(&dy),
            dh_n: Some(&dh_n),
            dc_n: Some(&dc_n),
        };
        let grads = Grads {
            dx,
            dh0,
            dc0,
            dw_ih,
            dw_hh,
            db: Some(db),
            // NaN everywhere: backward must not depend on the contents.
            scratch: Some(&mut scratch),
            dpeepholes: None,
            dw_hr: None,
            flow: None,
        };
        match checkpoint {
            Some(k) => backward_checkpointed(
                &seq,
                k,
                &states,
                Default::default(),
                seeds,
                grads,
                cancel_backward,
            )?,
            None => {
                let cache = CacheRef {
                    gates: &gates,
                    cells: &cells,
                    h_prev: &h_prev,
                    pre: None,
                };
                backward(&seq, cache, seeds, grads, cancel_backward)?
            }
        }
        Ok(Results {
            y: back(&y),
            h_n: back(&h_n),
            c_n: back(&c_n),
            dx: back(&g[0]),
            dh0: back(&g[1]),
            dc0: back(&g[2]),
            dw_ih: back(&g[3]),
            dw_hh: back(&g[4]),
            db: back(&g[5]),
        })
    }
}

/// Largest |a − b| / (1 + max|b|) over every output, with the output's name.
fn worst(a: &Results, b: &Results) -> (f64, &'static str) {
    let pairs: [(&str, &Vec<f64>, &Vec<f64>); 9] = [
        ("y", &a.y, &b.y),
        ("h_n", &a.h_n, &b.h_n),
        ("c_n", &a.c_n, &b.c_n),
        ("dx", &a.dx, &b.dx),
        ("dh0", &a.dh0, &b.dh0),
        ("dc0", &a.dc0, &b.dc0),
        ("dw_ih", &a.dw_ih, &b.dw_ih),
        ("dw_hh", &a.dw_hh, &b.dw_hh),
        ("db", &a.db, &b.db),
    ];
    let mut out = (0.0, "");
    for (name, x, y) in pairs {
        assert_eq!(x.len(), y.len(), "{name}: length");
        let scale = 1.0 + y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = x
            .iter()
            .zip(y)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs() / scale));
        assert!(!err.is_nan(), "{name}: NaN");
        if err > out.0 {
            out = (err, name);
        }
    }
    out
}

const SHAPES: [(usize, usize, usize, usize); 10] = [
    (1, 1, 1, 1),
    (5, 3, 4, 7),
    (6, 9, 3, 17),
    (4, 17, 8, 33),
    (3, 2, 5, 70),
    (4, 6, 5, 32),
    (3, 11, 7, 16),
    // Deeper than one L1 panel slice on every ISA: depth blocking.
    (2, 5, 3, 200),
    (0, 3, 2, 5),
    (3, 0, 2, 5),
];

/// Every ISA this CPU runs, each with the split chosen per call and with a
/// forced team, made active in turn as the iterator reaches it.
fn isas_and_splits() -> impl Iterator<Item = (Isa, ForcedSplit)> {
    Isa::available()
        .into_iter()
        .flat_map(|isa| [(isa, ForcedSplit::Choose), (isa, ForcedSplit::Hidden)])
        .inspect(|&(isa, split)| {
            isa.set_active().unwrap();
            crate::force_split(split);
        })
}

#[test]
fn engine_matches_oracle_on_every_isa() {
    let _g = lock();
    let mut seed = 0;
    crate::set_num_threads(2).unwrap();
    for (isa, _) in isas_and_splits() {
        for &(steps, batch, input, hidden) in &SHAPES {
            for variant in 0..16u32 {
                seed += 1;
                let [batch_first, reverse, with_lengths, with_state] =
                    std::array::from_fn(|i| variant >> i & 1 == 1);
                let p = Problem::new(
                    seed,
                    Dims {
                        steps,
                        batch,
                        input,
                        hidden,
                    },
                    batch_first,
                    reverse,
                    with_lengths,
                    with_state,
                );
                let want = p.oracle();
                // f64: only rounding differs (summation order, exp/tanh ≤ a few ULP).
                let (e64, at64) = worst(&p.engine::<f64>(), &want);
                // f32: products of a few hundred terms in single precision.
                let (e32, at32) = worst(&p.engine::<f32>(), &want);
                let case = format!(
                    "{isa:?} T={steps} B={batch} I={input} H={hidden} variant={variant:04b}"
                );
                assert!(e64 < 1e-12, "{case}: f64 error {e64:e} in {at64}");
                assert!(e32 < 2e-5, "{case}: f32 error {e32:e} in {at32}");
            }
        }
    }
    Isa::available().last().unwrap().set_active().unwrap();
    crate::force_split(ForcedSplit::Choose);
}

#[test]
fn checkpointed_passes_give_the_full_cache_bits() {
    let _g = lock();
    let bits = |r: &Results| {
        [
            &r.y, &r.h_n, &r.c_n, &r.dx, &r.dh0, &r.dc0, &r.dw_ih, &r.dw_hh, &r.db,
        ]
        .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
    };
    let (c, n) = (Cancel::new(), Cancel::new());
    for (seed, &(steps, batch, input, hidden)) in SHAPES.iter().enumerate() {
        for variant in 0..16u32 {
            let [batch_first, reverse, with_lengths, with_state] =
                std::array::from_fn(|i| variant >> i & 1 == 1);
            let dims = Dims {
                steps,
                batch,
                input,
                hidden,
            };
            let p = Problem::new(
                seed as u64 + 99,
                dims,
                batch_first,
                reverse,
                with_lengths,
                with_state,
            );
            let full = bits(&p.run_with::<f32>(&c, &n, None).unwrap());
            for k in [1, 2, 3, steps.saturating_sub(1).max(1), steps + 1] {
                let ck = bits(&p.run_with::<f32>(&c, &n, Some(k)).unwrap());
                assert!(
                    ck == full,
                    "T={steps} B={batch} H={hidden} variant={variant:04b} k={k}"
                );
            }
        }
    }
    let p = Problem::new(
        1,
        Dims {
            steps: 3,
            batch: 2,
            input: 2,
            hidden: 3,
        },
        false,
        false,
        false,
        false,
    );
    let err = p.run_with::<f64>(&c, &n, Some(0)).unwrap_err();
    assert!(err.to_string().contains("checkpoint"), "{err}");
}

#[test]
fn split_rule_is_unchanged_on_two_threads_and_gives_many_cores_teams() {
    use crate::parallel::split::{preferred_split, Split};
    // On 2 threads: a team for fewer than 64 rows and 4 tiles or more, as it
    // always was, whatever the batch split's chunks (1 or 2).
    for batch in 1..=130 {
        for tiles in 1..=40 {
            for chunks in [1, 2] {
                let before = if tiles < 4 || batch >= 64 {
                    Split::Batch
                } else {
                    Split::Hidden(2)
                };
                assert_eq!(
                    preferred_split(batch, tiles, 2, chunks),
                    before,
                    "batch {batch}, tiles {tiles}, chunks {chunks}"
                );
            }
        }
    }
    // 16 threads: M (16 rows) on AVX-512 (16 tiles) and AVX2 (32): 16 members.
    assert_eq!(preferred_split(16, 16, 16, 16), Split::Hidden(16));
    assert_eq!(preferred_split(16, 32, 16, 16), Split::Hidden(16));
    // S on AVX-512 (8 tiles): one tile each; fewer tiles: two each at least.
    assert_eq!(preferred_split(1, 8, 16, 1), Split::Hidden(8));
    assert_eq!(preferred_split(1, 7, 16, 1), Split::Hidden(3));
    // Rows enough for every thread: batch.
    assert_eq!(preferred_split(512, 64, 16, 16), Split::Batch);
    // A team smaller than the batch chunks: batch (M's backward on 16
    // threads, 4 tiles: one-row chunks, not a team of 2).
    assert_eq!(preferred_split(16, 4, 16, 16), Split::Batch);
    assert_eq!(preferred_split(16, 4, 16, 2), Split::Hidden(2));
}

/// A team needs two members' worth of work, or weights too big for one
/// core's cache; the standard shapes all have the work. Through the
/// sequence's own measures (`Dims::work`, `Sequence::weight_bytes`, with
/// I ≠ H and in f64) and through `choose_split`, which follows it unless a
/// split is forced.
#[test]
fn short_calls_over_small_weights_run_without_a_team() {
    use crate::parallel::split::{choose_split, team_pays, Split};
    use crate::tuning::{MIN_CHUNK_WORK, TEAM_WEIGHT_BYTES};
    fn pays<E: Float>(steps: usize, batch: usize, input: usize, hidden: usize) -> bool {
        let dims = Dims {
            steps,
            batch,
            input,
            hidden,
        };
        let w_ih = vec![E::ZERO; 4 * hidden * input];
        let w_hh = vec![E::ZERO; 4 * hidden * hidden];
        let seq = Sequence {
            dims,
            batch_first: false,
            reverse: false,
            lengths: None,
            x: &[],
            w_ih: &w_ih,
            w_hh: &w_hh,
            bias: None,
            h0: None,
            c0: None,
            panels: None,
            variant: Default::default(),
        };
        assert_eq!(
            seq.weight_bytes(),
            (w_ih.len() + w_hh.len()) * size_of::<E>()
        );
        team_pays(dims.work(), seq.weight_bytes())
    }
    for (t, b, i, h, want) in [
        (1, 1, 64, 64, false),
        (16, 1, 128, 128, false),
        (1, 1, 256, 256, true),    // 2 MiB of weights
        (1, 1, 512, 128, true),    // 1.25 MiB, most of it w_ih
        (1, 1, 512, 64, false),    // 576 KiB
        (100, 1, 128, 128, true),  // S
        (100, 16, 256, 256, true), // M
    ] {
        assert_eq!(pays::<f32>(t, b, i, h), want, "f32 T={t} B={b} I={i} H={h}");
    }
    // The same call in f64 reads twice the bytes (I = H = 128: 512 KiB in
    // f32, 1 MiB in f64).
    assert!(!pays::<f32>(1, 1, 128, 128));
    assert!(pays::<f64>(1, 1, 128, 128));
    assert!(!pays::<f64>(1, 1, 100, 100));
    assert!(!team_pays(2 * MIN_CHUNK_WORK - 1, TEAM_WEIGHT_BYTES - 1));
    assert!(team_pays(2 * MIN_CHUNK_WORK, 0));
    assert!(team_pays(0, TEAM_WEIGHT_BYTES));

    let _g = lock();
    // A batch of one row, 8 tiles, 2 threads: a team when it pays, else not
    // (whatever the penalty, which only ever takes a team away); forced, a
    // team either way.
    assert_eq!(choose_split(1, 8, 2, 1, false), Split::Batch);
    crate::force_split(ForcedSplit::Hidden);
    assert_eq!(choose_split(1, 8, 2, 1, false), Split::Hidden(2));
    crate::force_split(ForcedSplit::Choose);
}

#[test]
fn batch_chunks_follow_threads_rows_and_work() {
    use crate::parallel::split::chunk_rows;
    use crate::tuning::MIN_CHUNK_WORK;
    let plenty = usize::MAX;
    // (count, rows of each): one per thread, the rows dealt evenly.
    assert_eq!(chunk_rows(16, 16, plenty), (16, 1));
    assert_eq!(chunk_rows(20, 16, plenty), (10, 2));
    assert_eq!(chunk_rows(64, 2, plenty), (2, 32));
    assert_eq!(chunk_rows(3, 16, plenty), (3, 1));
    assert_eq!(chunk_rows(0, 4, plenty), (0, 1));
    // A small call stays one chunk (on the calling thread); more work, more.
    assert_eq!(chunk_rows(8, 2, MIN_CHUNK_WORK - 1), (1, 8));
    assert_eq!(chunk_rows(8, 2, 2 * MIN_CHUNK_WORK), (2, 4));
    assert_eq!(chunk_rows(16, 16, 4 * MIN_CHUNK_WORK), (4, 4));
}

#[test]
fn results_do_not_depend_on_thread_count_or_split() {
    let _g = lock();
    let bits = |r: &Results| {
        [
            &r.y, &r.h_n, &r.c_n, &r.dx, &r.dh0, &r.dc0, &r.dw_ih, &r.dw_hh, &r.db,
        ]
        .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
    };
    for (batch, hidden) in [(37, 40), (3, 70), (1, 130)] {
        let p = Problem::new(
            7,
            Dims {
                steps: 6,
                batch,
                input: 12,
                hidden,
            },
            false,
            true,
            true,
            true,
        );
        crate::set_num_threads(1).unwrap();
        let one = bits(&p.engine::<f32>());
        for split in [ForcedSplit::Batch, ForcedSplit::Hidden, ForcedSplit::Choose] {
            crate::force_split(split);
            for n in [2, 3, 5] {
                crate::set_num_threads(n).unwrap();
                assert!(
                    bits(&p.engine::<f32>()) == one,
                    "B={batch} H={hidden}: split {split:?} on {n} threads differs from 1 thread"
                );
            }
        }
    }
    crate::set_num_threads(2).unwrap();
}

#[test]
fn cancelled_passes_stop_and_leave_the_engine_usable() {
    let _g = lock();
    // Enough tiles for teams of 3 in both passes on every ISA (forward tiles
    // are LANES units, backward tiles 4·LANES).
    let p = Problem::new(
        11,
        Dims {
            steps: 400,
            batch: 2,
            input: 4,
            hidden: 256,
        },
        false,
        false,
        false,
        true,
    );
    crate::set_num_threads(1).unwrap();
    let want = p.engine::<f32>();
    let p = Arc::new(p);
    let (cancelled, never) = (Cancel::new(), Cancel::new());
    cancelled.cancel();
    for split in [ForcedSplit::Batch, ForcedSplit::Hidden] {
        crate::force_split(split);
        for n in [1, 2, 3] {
            crate::set_num_threads(n).unwrap();
            let case = format!("split {split:?} on {n} threads");
            // Cancelled before the call: each pass stops after its first step.
            let err = p.run::<f32>(&cancelled, &never).unwrap_err();
            assert_eq!(err, crate::Error::Interrupted, "{case}: forward");
            let err = p.run::<f32>(&never, &cancelled).unwrap_err();
            assert_eq!(err, crate::Error::Interrupted, "{case}: backward");
            // Cancelled while running, at different steps: a team must agree on
            // the step at which it stops (a member going on alone would wait for
            // the others forever), and the call must return soon after. The call
            // runs on a thread of its own, so that a hang fails the test.
            for delay in [100, 1_000, 5_000, 20_000] {
                let cancel = Arc::new(Cancel::new());
                let (done, finished) = std::sync::mpsc::channel();
                let (p, c) = (p.clone(), cancel.clone());
                std::thread::spawn(move || {
                    // Fails only when the test has already failed (timed out).
                    let _ = done.send(p.run::<f32>(&c, &c));
                });
                std::thread::sleep(Duration::from_micros(delay));
                cancel.cancel();
                let at = Instant::now();
                let result = finished
                    .recv_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|_| panic!("{case}: {delay} µs: the call did not return"));
                let late = at.elapsed();
                match result {
                    Err(e) => assert_eq!(e, crate::Error::Interrupted, "{case}: {delay} µs"),
                    // Finished before the cancel: complete results.
                    Ok(got) => assert_eq!(worst(&got, &want).0, 0.0, "{case}: {delay} µs"),
                }
                assert!(late.as_secs_f64() < 1.0, "{case}: stopped {late:?} late");
            }
            // The next call gives the same bits as one never cancelled.
            assert_eq!(worst(&p.engine::<f32>(), &want).0, 0.0, "{case}: after");
        }
    }
    crate::force_split(ForcedSplit::Choose);
    crate::set_num_threads(2).unwrap();
}

#[test]
fn a_cancelled_call_stops_waiting_for_another_calls_team() {
    let _g = lock();
    crate::set_num_threads(2).unwrap();
    crate::force_split(ForcedSplit::Hidden);
    // Long enough to be running still when the test ends it (outputs are
    // zeroed on demand: only the steps run are touched).
    let dims = Dims {
        steps: 1_000_000,
        batch: 1,
        input: 1,
        hidden: 64,
    };
    let x = vec![0.5f32; dims.steps];
    let (w_ih, w_hh) = (vec![0.1f32; 4 * 64], vec![0.01f32; 4 * 64 * 64]);
    let seq = Sequence {
        dims,
        batch_first: false,
        reverse: false,
        lengths: None,
        x: &x,
        w_ih: &w_ih,
        w_hh: &w_hh,
        bias: None,
        h0: None,
        c0: None,
        panels: None,
        variant: Default::default(),
    };
    let run = |cancel: &Cancel| {
        let (mut y, mut h_n, mut c_n) =
            (vec![0f32; dims.steps * 64], vec![0f32; 64], vec![0f32; 64]);
        let out = Outputs {
            y: &mut y,
            h_n: &mut h_n,
            c_n: &mut c_n,
        };
        forward(&seq, out, None, cancel)
    };
    let (team, waiting) = (Cancel::new(), Cancel::new());
    std::thread::scope(|s| {
        // The first call takes the pool for its team; the second, finding it
        // taken, waits to take it shared.
        let first = s.spawn(|| run(&team));
        std::thread::sleep(Duration::from_millis(50));
        let second = s.spawn(|| run(&waiting));
        std::thread::sleep(Duration::from_millis(50));
        waiting.cancel();
        let at = Instant::now();
        assert_eq!(second.join().unwrap(), Err(crate::Error::Interrupted));
        let late = at.elapsed();
        let first_running = !first.is_finished();
        team.cancel();
        assert_eq!(first.join().unwrap(), Err(crate::Error::Interrupted));
        assert!(first_running, "the cancelled call waited for the other one");
        assert!(late.as_secs_f64() < 1.0, "stopped waiting {late:?} late");
    });
    crate::force_split(ForcedSplit::Choose);
}

// ---------------------------------------------------------------------------
// Activations: error over the whole float32 range.
// ---------------------------------------------------------------------------

struct Apply<'a> {
    xs: &'a [f32],
    out: &'a mut [f32],
    tanh: bool,
}

impl Kernel<f32> for Apply<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd<E = f32>>(self) {
        let w = S::LANES;
        for (x, o) in self.xs.chunks_exact(w).zip(self.out.chunks_exact_mut(w)) {
            // SAFETY: both chunks hold exactly LANES elements.
            unsafe {
                let v = S::load(x.as_ptr());
                let r = if self.tanh {
                    simd::tanh(v)
                } else {
                    simd::sigmoid(v)
                };
                r.store(o.as_mut_ptr());
            }
        }
    }
}

/// Distance in units in the last place between `got` and the exact `want`.
fn ulps(got: f32, want: f64) -> f64 {
    let w = want as f32;
    if got == w {
        return 0.0;
    }
    let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
    ((got as f64) - want).abs() / ulp.max(f32::from_bits(1) as f64)
}

/// Every 97th float32 bit pattern (about 44 million values, both signs,
/// subnormals and infinities included), each ISA: sigmoid and tanh within 2.5
/// ULP of the exact result (measured: 2.28 and 2.04).
#[test]
fn activations_are_accurate_over_the_float32_range() {
    let xs: Vec<f32> = (0..u32::MAX / 97)
        .map(|i| f32::from_bits(i * 97))
        .filter(|x| !x.is_nan())
        .collect();
    let mut out = vec![0.0f32; xs.len()];
    let n = xs.len() / 16 * 16;
    for isa in Isa::available() {
        for tanh in [false, true] {
            simd::dispatch(
                isa,
                Apply {
                    xs: &xs[..n],
                    out: &mut out[..n],
                    tanh,
                },
            );
            let mut worst = (0.0f64, 0.0f32);
            for (&x, &y) in xs[..n].iter().zip(&out[..n]) {
                let exact = if tanh {
                    (x as f64).tanh()
                } else {
                    1.0 / (1.0 + (-(x as f64)).exp())
                };
                let e = ulps(y, exact);
                if e > worst.0 {
                    worst = (e, x);
                }
            }
            let (name, bound) = if tanh {
                ("tanh", 2.5)
            } else {
                ("sigmoid", 2.5)
            };
            eprintln!(
                "{isa:?} {name}: max {:.2} ULP at x = {:e}",
                worst.0, worst.1
            );
            assert!(
                worst.0 <= bound,
                "{isa:?} {name}: {:.2} ULP at x = {:e}",
                worst.0,
                worst.1
            );
        }
    }
}

#[test]
fn activations_saturate_and_propagate_nan() {
    for isa in Isa::available() {
        let xs = [
            1e30f32,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::NAN,
            88.7,
            -88.7,
            1e-30,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ];
        let mut s = [0.0f32; 16];
        let mut t = [0.0f32; 16];
        simd::dispatch(
            isa,
            Apply {
                xs: &xs,
                out: &mut s,
                tanh: false,
            },
        );
        simd::dispatch(
            isa,
            Apply {
                xs: &xs,
                out: &mut t,
                tanh: true,
            },
        );
        assert_eq!(&s[..6], &[1.0, 0.0, 1.0, 0.0, 0.5, 0.5], "{isa:?} sigmoid");
        assert_eq!(&t[..6], &[1.0, -1.0, 1.0, -1.0, 0.0, -0.0], "{isa:?} tanh");
        assert!(t[5].is_sign_negative(), "{isa:?} tanh(-0) keeps its sign");
        assert!(s[6].is_nan() && t[6].is_nan(), "{isa:?} NaN propagates");
        assert_eq!(t[9], 1e-30, "{isa:?} tanh is exact for tiny x");
    }
}

// ---------------------------------------------------------------------------
// Argument checks
// ---------------------------------------------------------------------------

#[test]
fn wrong_sizes_are_errors_not_panics() {
    let p = Problem::new(
        3,
        Dims {
            steps: 2,
            batch: 2,
            input: 3,
            hidden: 4,
        },
        false,
        false,
        false,
        true,
    );
    let short = &p.w_hh[1..];
    // Forward into correctly sized outputs: only `seq` is wrong.
    let run = |seq: &Sequence<'_, f64>| {
        let (mut y, mut h_n, mut c_n) = (vec![0.0; 16], vec![0.0; 8], vec![0.0; 8]);
        let out = Outputs {
            y: &mut y,
            h_n: &mut h_n,
            c_n: &mut c_n,
        };
        forward(seq, out, None, &Cancel::new()).unwrap_err()
    };
    let mut seq = Sequence {
        dims: p.dims,
        batch_first: false,
        reverse: false,
        lengths: None,
        x: &p.x,
        w_ih: &p.w_ih,
        w_hh: short,
        bias: None,
        h0: None,
        c0: None,
        panels: None,
        variant: Default::default(),
    };
    let err = run(&seq);
    assert!(err.to_string().contains("w_hh"), "{err}");
    seq.w_hh = &p.w_hh;
    let lengths = [1, 3];
    seq.lengths = Some(&lengths);
    let err = run(&seq);
    assert!(err.to_string().contains("lengths[1] = 3"), "{err}");
    seq.lengths = None;
    seq.dims.steps = usize::MAX / 2;
    assert!(matches!(run(&seq), crate::Error::TooLarge(_)));
}

/// `Candidates` is public: slices whose lengths do not fit are an
/// `Error::Value` naming the slice on every ISA, never a panic, and nothing is
/// written; lengths that fit give f ⊙ c_{t−1} + i ⊙ g. (The Python binding
/// cannot reach these errors: `lstm::candidates` checks the cache and `out`
/// against the sequence first.)
#[test]
fn candidate_rows_of_wrong_lengths_are_errors_naming_the_slice() {
    use crate::kernels::candidate::Candidates;
    let hp = hidden_pad::<f32>(3);
    let rows = 2;
    // Gates i, f, g, o of row r: 1 + r, 2 + r, 3 + r, 9; c_prev 0.5.
    let gates: Vec<f32> = (0..rows)
        .flat_map(|r| {
            let r = r as f32;
            [1.0 + r, 2.0 + r, 3.0 + r, 9.0]
        })
        .flat_map(|v| std::iter::repeat_n(v, hp))
        .collect();
    let c_prev = vec![0.5f32; rows * hp];
    for isa in Isa::available() {
        let run = |hidden_pad: usize, gates: &[f32], c_prev: &[f32], out: &mut [f32]| {
            simd::dispatch(
                isa,
                Candidates {
                    hidden_pad,
                    gates,
                    c_prev,
                    out,
                },
            )
        };
        for (name, g, c, n) in [
            ("gates", &gates[1..], &c_prev[..], rows * hp),
            ("c_prev", &gates[..], &c_prev[hp..], rows * hp),
            ("out", &gates[..], &c_prev[..], rows * hp - 1),
        ] {
            let mut out = vec![-1.0f32; n];
            let err = run(hp, g, c, &mut out).unwrap_err();
            assert!(
                matches!(&err, crate::Error::Value(m) if m.starts_with(name)),
                "{isa:?} {name}: {err}"
            );
            assert!(out.iter().all(|&v| v == -1.0), "{isa:?} {name}: wrote");
        }
        // Not a multiple of the lanes (every width is, on the scalar path).
        let bad_pads = if isa == Isa::Scalar {
            vec![0]
        } else {
            vec![0, hp + 1]
        };
        for bad_pad in bad_pads {
            let err = run(bad_pad, &gates, &c_prev, &mut [0.0; 8]).unwrap_err();
            assert!(err.to_string().starts_with("hidden_pad"), "{isa:?}: {err}");
        }
        let mut out = vec![0.0f32; rows * hp];
        run(hp, &gates, &c_prev, &mut out).unwrap();
        for r in 0..rows {
            let (i, f, g) = (1.0 + r as f32, 2.0 + r as f32, 3.0 + r as f32);
            let want = f * 0.5 + i * g;
            assert!(out[r * hp..][..hp].iter().all(|&v| v == want), "{isa:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Resources: refused allocations, the thread count.
// ---------------------------------------------------------------------------

#[test]
fn refused_allocations_are_errors_naming_the_buffer() {
    use crate::alloc;
    use crate::Error;
    // A size that overflows, and one no system grants (2^61 bytes).
    let overflow = alloc::zeroed::<f64>(&[1 << 40, 1 << 30], "the overflowing buffer");
    assert!(
        matches!(&overflow, Err(Error::OutOfMemory(m)) if m.contains("the overflowing buffer")),
        "{overflow:?}"
    );
    let huge = alloc::zeroed::<f64>(&[1 << 58], "the huge buffer");
    assert!(
        matches!(&huge, Err(Error::OutOfMemory(m))
            if m.contains("the huge buffer") && m.contains("2305843009213693952 bytes")),
        "{huge:?}"
    );
    let huge = alloc::with_capacity::<u64>(1 << 58, "the huge list");
    assert!(
        matches!(&huge, Err(Error::OutOfMemory(m)) if m.contains("the huge list")),
        "{huge:?}"
    );
    // What is granted holds zeros, whatever the shape.
    assert!(alloc::zeroed::<f32>(&[3, 0, 5], "empty")
        .unwrap()
        .is_empty());
    assert_eq!(alloc::zeroed::<f64>(&[2, 3], "six").unwrap(), [0.0; 6]);
    assert_eq!(alloc::collect(0..4usize, "four").unwrap(), [0, 1, 2, 3]);
}

#[test]
fn thread_counts_are_bounded() {
    let _g = lock();
    let before = crate::num_threads();
    let max = crate::tuning::MAX_THREADS;
    for n in [0, max + 1, usize::MAX] {
        let err = crate::set_num_threads(n).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, crate::Error::Value(_)) && text.contains(&format!("[1, {max}]")),
            "{text}"
        );
        assert!(text.ends_with(&format!("got {n}")), "{text}");
        assert_eq!(crate::num_threads(), before);
    }
}

/// The forward panels hold `w_hh[gate·H + p·lanes + u][k]` at `[p][k][gate·lanes + u]`
/// and zeros for padded units; a [`PanelCache`] packs each layout once per lane count,
/// and refuses a `w_hh` other than its own.
#[test]
fn panel_cache_packs_once_and_only_its_own_w_hh() {
    use crate::kernels::pack;
    use crate::{Error, PanelCache};

    let hidden = 20;
    let hp = hidden_pad::<f32>(hidden);
    let w: Vec<f32> = (0..4 * hidden * hidden).map(|i| i as f32 + 0.5).collect();
    for lanes in [4, 8, 16] {
        let panels = pack::forward_panels(&w, "w_hh", hidden, hp, hidden, lanes).unwrap();
        let width = 4 * lanes;
        for p in 0..hp / lanes {
            for k in 0..hidden {
                for gate in 0..4 {
                    for u in 0..lanes {
                        let unit = p * lanes + u;
                        let want = if unit < hidden {
                            w[(gate * hidden + unit) * hidden + k]
                        } else {
                            0.0
                        };
                        let got = panels[(p * hidden + k) * width + gate * lanes + u];
                        assert_eq!(got, want, "lanes {lanes} p {p} k {k} gate {gate} u {u}");
                    }
                }
            }
        }
    }

    let w_ih: Vec<f32> = (0..4 * hidden * 3).map(|i| i as f32 - 0.5).collect();
    let cache = PanelCache::new(&w_ih, &w, None);
    let input = cache.input(&w_ih, hidden, hp, 3, 8).unwrap();
    assert_eq!(
        *input,
        pack::forward_panels(&w_ih, "w_ih", hidden, hp, 3, 8).unwrap()
    );
    assert!(matches!(
        cache.input(&w, hidden, hp, 3, 8),
        Err(Error::Value(_))
    ));
    let a = cache.forward(&w, hidden, hp, hidden, 8).unwrap();
    assert!(Arc::ptr_eq(
        &a,
        &cache.forward(&w, hidden, hp, hidden, 8).unwrap()
    ));
    assert_eq!(
        *a,
        pack::forward_panels(&w, "w_hh", hidden, hp, hidden, 8).unwrap()
    );
    let wide = cache.forward(&w, hidden, hp, hidden, 16).unwrap();
    assert_eq!(
        *wide,
        pack::forward_panels(&w, "w_hh", hidden, hp, hidden, 16).unwrap()
    );
    let back = cache.backward(&w, hidden, hp, hidden, 8).unwrap();
    assert!(Arc::ptr_eq(
        &back,
        &cache.backward(&w, hidden, hp, hidden, 8).unwrap()
    ));
    assert_eq!(
        *back,
        pack::backward_panels(&w, hidden, hp, hidden, 8).unwrap()
    );

    let copy = w.clone();
    assert!(matches!(
        cache.forward(&copy, hidden, hp, hidden, 8),
        Err(Error::Value(_))
    ));
    assert!(matches!(
        cache.backward(&w[..w.len() - 1], hidden, hp, hidden, 8),
        Err(Error::Value(_))
    ));
}

// ---------------------------------------------------------------------------
// Projection (w_hr, P × H): forward and backward against plain loops in f64.
// ---------------------------------------------------------------------------

/// One projected LSTM pass and its gradients, written as the equations of
/// docs/variants.md ('Projection', 'Backward through time') in plain loops:
/// (y, h_n, c_n, dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr), time-major x,
/// `lengths`, forward direction, zero h0 and c0.
#[allow(clippy::needless_range_loop, clippy::type_complexity)]
fn projection_oracle(
    [steps, batch, ni, nh, np]: [usize; 5],
    lengths: &[usize],
    [x, w_ih, w_hh, w_hr, dy]: [&[f64]; 5],
) -> [Vec<f64>; 10] {
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let mut y = vec![0.0; steps * batch * np];
    let (mut h_n, mut c_n) = (vec![0.0; batch * np], vec![0.0; batch * nh]);
    let mut dx = vec![0.0; steps * batch * ni];
    let (mut dh0, mut dc0) = (vec![0.0; batch * np], vec![0.0; batch * nh]);
    let (mut dw_ih, mut dw_hh) = (vec![0.0; 4 * nh * ni], vec![0.0; 4 * nh * np]);
    let (mut db, mut dw_hr) = (vec![0.0; 4 * nh], vec![0.0; np * nh]);
    for b in 0..batch {
        let (mut h, mut c) = (vec![0.0; np], vec![0.0; nh]);
        let mut tape = Vec::new();
        for t in 0..lengths[b] {
            let row = t * batch + b;
            let xr = &x[row * ni..][..ni];
            let a: Vec<f64> = (0..4 * nh)
                .map(|j| {
                    (0..ni).map(|k| w_ih[j * ni + k] * xr[k]).sum::<f64>()
                        + (0..np).map(|k| w_hh[j * np + k] * h[k]).sum::<f64>()
                })
                .collect();
            let g: Vec<[f64; 4]> = (0..nh)
                .map(|u| {
                    [
                        sig(a[u]),
                        sig(a[nh + u]),
                        a[2 * nh + u].tanh(),
                        sig(a[3 * nh + u]),
                    ]
                })
                .collect();
            let c_new: Vec<f64> = (0..nh)
                .map(|u| g[u][1] * c[u] + g[u][0] * g[u][2])
                .collect();
            let m: Vec<f64> = (0..nh).map(|u| g[u][3] * c_new[u].tanh()).collect();
            let h_new: Vec<f64> = (0..np)
                .map(|p| (0..nh).map(|u| w_hr[p * nh + u] * m[u]).sum())
                .collect();
            y[row * np..][..np].copy_from_slice(&h_new);
            tape.push((h.clone(), c.clone(), g, c_new.clone(), m));
            (h, c) = (h_new, c_new);
        }
        h_n[b * np..][..np].copy_from_slice(&h);
        c_n[b * nh..][..nh].copy_from_slice(&c);
        let (mut dh_next, mut dc_next) = (vec![0.0; np], vec![0.0; nh]);
        for (t, (h_prev, c_prev, g, c_new, m)) in tape.iter().enumerate().rev() {
            let row = t * batch + b;
            let dh: Vec<f64> = (0..np).map(|p| dy[row * np + p] + dh_next[p]).collect();
            for p in 0..np {
                for u in 0..nh {
                    dw_hr[p * nh + u] += dh[p] * m[u];
                }
            }
            let mut da = vec![0.0; 4 * nh];
            for u in 0..nh {
                let [i, f, gg, o] = g[u];
                let dm: f64 = (0..np).map(|p| dh[p] * w_hr[p * nh + u]).sum();
                let tc = c_new[u].tanh();
                let dc = dc_next[u] + dm * o * (1.0 - tc * tc);
                da[u] = dc * gg * i * (1.0 - i);
                da[nh + u] = dc * c_prev[u] * f * (1.0 - f);
                da[2 * nh + u] = dc * i * (1.0 - gg * gg);
                da[3 * nh + u] = dm * tc * o * (1.0 - o);
                dc_next[u] = dc * f;
            }
            let xr = &x[row * ni..][..ni];
            for (j, &d) in da.iter().enumerate() {
                db[j] += d;
                for k in 0..ni {
                    dw_ih[j * ni + k] += d * xr[k];
                    dx[row * ni + k] += d * w_ih[j * ni + k];
                }
                for k in 0..np {
                    dw_hh[j * np + k] += d * h_prev[k];
                }
            }
            dh_next = (0..np)
                .map(|k| (0..4 * nh).map(|j| da[j] * w_hh[j * np + k]).sum())
                .collect();
        }
        dh0[b * np..][..np].copy_from_slice(&dh_next);
        dc0[b * nh..][..nh].copy_from_slice(&dc_next);
    }
    [y, h_n, c_n, dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr]
}

/// The engine's projected pass in `E` (same arguments as the oracle).
fn projection_engine<E: Float>(
    [steps, batch, ni, nh, np]: [usize; 5],
    lengths: &[usize],
    arrays: [&[f64]; 5],
) -> [Vec<f64>; 10] {
    let [x, w_ih, w_hh, w_hr, dy] =
        arrays.map(|v| v.iter().map(|&a| E::from_f64(a)).collect::<Vec<E>>());
    let seq = Sequence {
        dims: Dims {
            steps,
            batch,
            input: ni,
            hidden: nh,
        },
        batch_first: false,
        reverse: false,
        lengths: Some(lengths),
        x: &x,
        w_ih: &w_ih,
        w_hh: &w_hh,
        bias: None,
        h0: None,
        c0: None,
        panels: None,
        variant: crate::Variant {
            w_hr: Some(&w_hr),
            ..Default::default()
        },
    };
    let (hp, pp, rows) = (hidden_pad::<E>(nh), hidden_pad::<E>(np), steps * batch);
    let z = |n: usize| vec![E::ZERO; n];
    let (mut y, mut h_n, mut c_n) = (z(rows * np), z(batch * np), z(batch * nh));
    let (mut gates, mut cells, mut h_prev) = (z(rows * 4 * hp), z(rows * hp), z(rows * pp));
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
        &Cancel::new(),
    )
    .unwrap();
    let (mut dx, mut dh0, mut dc0) = (z(rows * ni), z(batch * np), z(batch * nh));
    let (mut dw_ih, mut dw_hh) = (z(4 * nh * ni), z(4 * nh * np));
    let (mut db, mut dw_hr) = (z(4 * nh), z(np * nh));
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
            ..Default::default()
        },
        Grads {
            dx: &mut dx,
            dh0: &mut dh0,
            dc0: &mut dc0,
            dw_ih: &mut dw_ih,
            dw_hh: &mut dw_hh,
            db: Some(&mut db),
            scratch: None,
            dpeepholes: None,
            dw_hr: Some(&mut dw_hr),
            flow: None,
        },
        &Cancel::new(),
    )
    .unwrap();
    [y, h_n, c_n, dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr]
        .map(|v| v.iter().map(|a| a.to_f64()).collect())
}

#[test]
fn projection_matches_oracle_on_every_isa() {
    let _g = lock();
    crate::set_num_threads(2).unwrap();
    let names = [
        "y", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "db", "dw_hr",
    ];
    // (T, B, I, H, P): P < H, P = 1, P > H, and enough rows for two chunks.
    for (seed, dims) in [
        [4, 3, 3, 7, 3],
        [3, 1, 2, 17, 1],
        [3, 2, 2, 5, 40],
        [3, 20, 2, 9, 4],
    ]
    .into_iter()
    .enumerate()
    {
        let [steps, batch, ni, nh, np] = dims;
        let mut r = Rng(seed as u64 * 7919 + 3);
        let lengths: Vec<usize> = (0..batch).map(|b| (steps + b) % (steps + 1)).collect();
        let owned = [
            r.vec(steps * batch * ni, 1.0),
            r.vec(4 * nh * ni, 0.6),
            r.vec(4 * nh * np, 0.6),
            r.vec(np * nh, 0.6),
            r.vec(steps * batch * np, 1.0),
        ];
        let arrays = owned.each_ref().map(Vec::as_slice);
        let want = projection_oracle(dims, &lengths, arrays);
        for isa in Isa::available() {
            isa.set_active().unwrap();
            for (tol, got) in [
                (1e-12, projection_engine::<f64>(dims, &lengths, arrays)),
                (2e-5, projection_engine::<f32>(dims, &lengths, arrays)),
            ] {
                for ((name, got), want) in names.iter().zip(&got).zip(&want) {
                    let scale = 1.0 + want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    let err = got
                        .iter()
                        .zip(want)
                        .fold(0.0f64, |m, (p, q)| m.max((p - q).abs() / scale));
                    assert!(err < tol, "{isa:?} {dims:?} {name}: error {err:e}");
                }
            }
        }
    }
    Isa::available().last().unwrap().set_active().unwrap();
}

/// The LayerNorm LSTM's gates rebuilt from its cache (`layernorm::gates`,
/// which backward uses too) are bit for bit the gates its forward computed,
/// for the variants that change the gate math (peepholes, with o's term on
/// c_t; clip; f = 1 − i; no forget gate; zoneout of c; a projection; the
/// gains and biases), on every ISA, with ragged lengths.
#[test]
fn layer_norm_rebuilt_gates_are_the_forwards_bits() {
    use crate::layernorm::{self, LayerNorm, LnCache, LnCacheRef};
    use crate::variant::{Variant, Zone};
    let _g = lock();
    let (steps, batch, input, hidden, proj) = (5, 3, 6, 13, 7);
    let g4 = 4 * hidden;
    let rows = steps * batch;
    let hp = hidden_pad::<f32>(hidden);
    let mut rng = Rng(0x5eed_1a7e);
    let f32s = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
    let x = f32s(rng.vec(rows * input, 1.0));
    let w_ih = f32s(rng.vec(g4 * input, 0.5));
    let bias = f32s(rng.vec(g4, 0.3));
    let peepholes = f32s(rng.vec(3 * hidden, 0.8));
    let w_hr = f32s(rng.vec(proj * hidden, 0.4));
    let gains: Vec<Vec<f32>> = [g4, g4, hidden]
        .iter()
        .map(|&n| f32s(rng.vec(n, 0.5)).iter().map(|g| 1.0 + g).collect())
        .collect();
    let shifts: Vec<Vec<f32>> = [g4, g4, hidden]
        .iter()
        .map(|&n| f32s(rng.vec(n, 0.2)))
        .collect();
    // Zoneout of c's keep mask, (T·B) × Hp: about a third of the units kept.
    let keep: Vec<f32> = (0..rows * hp)
        .map(|i| f32::from(i % hp < hidden && rng.next() < -0.33))
        .collect();
    let lengths = [5usize, 2, 4];
    for isa in Isa::available() {
        isa.set_active().unwrap();
        for case in 0..7 {
            let mut v: Variant<'_, f32> = Default::default();
            match case {
                1 => {
                    v.peepholes = Some(&peepholes);
                    v.clip = Some(0.7);
                }
                2 => {
                    v.peepholes = Some(&peepholes);
                    v.input_forget = true;
                }
                3 => v.forget_gate = false,
                4 => {
                    v.peepholes = Some(&peepholes);
                    v.zoneout_c = Zone::Keep(&keep);
                }
                5 => v.w_hr = Some(&w_hr),
                6 => {
                    v.peepholes = Some(&peepholes);
                    v.clip = Some(0.4);
                    v.zoneout_c = Zone::Rate(0.3);
                }
                _ => {}
            }
            let state = if v.w_hr.is_some() { proj } else { hidden };
            let w_hh = f32s(Rng(case as u64 + 7).vec(g4 * state, 0.5));
            let h0 = f32s(Rng(case as u64 + 99).vec(batch * state, 0.5));
            let c0 = f32s(Rng(case as u64 + 199).vec(batch * hidden, 0.5));
            let with_params = case % 2 == 0;
            let p = |k: usize, of: &'static str| -> Option<&[f32]> {
                with_params.then(|| {
                    if of == "w" {
                        &gains[k][..]
                    } else {
                        &shifts[k][..]
                    }
                })
            };
            let ln = LayerNorm {
                w_ih: p(0, "w"),
                b_ih: p(0, "b"),
                w_hh: p(1, "w"),
                b_hh: p(1, "b"),
                w_c: p(2, "w"),
                b_c: p(2, "b"),
                eps: 1e-5,
            };
            let seq = Sequence {
                dims: Dims {
                    steps,
                    batch,
                    input,
                    hidden,
                },
                batch_first: case == 3,
                reverse: case == 5,
                lengths: Some(&lengths),
                x: &x,
                w_ih: &w_ih,
                w_hh: &w_hh,
                bias: (case != 2).then_some(&bias[..]),
                h0: Some(&h0),
                c0: Some(&c0),
                panels: None,
                variant: v,
            };
            let (mut y, mut h_n, mut c_n) = (
                vec![0f32; rows * state],
                vec![0f32; batch * state],
                vec![0f32; batch * hidden],
            );
            let mut cells = vec![0f32; rows * hidden];
            let mut h_prev = vec![0f32; rows * state];
            let mut sx_hat = vec![0f32; rows * g4];
            let mut sh_hat = vec![0f32; rows * g4];
            let mut moments = vec![0f32; rows * 4];
            let mut c_state = vec![0f32; rows * hidden];
            let zoned = v.zoneout_c.is_on();
            let mut recorded = vec![f32::NAN; rows * g4];
            layernorm::forward_recording(
                &seq,
                &ln,
                Outputs {
                    y: &mut y,
                    h_n: &mut h_n,
                    c_n: &mut c_n,
                },
                LnCache {
                    cells: &mut cells,
                    h_prev: &mut h_prev,
                    sx_hat: &mut sx_hat,
                    sh_hat: &mut sh_hat,
                    moments: &mut moments,
                    c_state: zoned.then_some(&mut c_state[..]),
                },
                &mut recorded,
            )
            .unwrap();
            let mut rebuilt = vec![0f32; rows * g4];
            let mut pre = vec![0f32; rows * g4];
            let cache = LnCacheRef {
                cells: &cells,
                h_prev: &h_prev,
                sx_hat: &sx_hat,
                sh_hat: &sh_hat,
                moments: &moments,
                c_state: zoned.then_some(&c_state[..]),
            };
            layernorm::gates(&seq, &ln, cache, &mut rebuilt, Some(&mut pre), None).unwrap();
            // Each block alone: the same bits.
            let blocks: Vec<Vec<f32>> = (0..4)
                .map(|k| {
                    let mut one = vec![f32::NAN; rows * hidden];
                    layernorm::gates(&seq, &ln, cache, &mut one, None, Some(k)).unwrap();
                    one
                })
                .collect();
            let mut running = 0;
            for row in 0..rows {
                let (t, b) = if seq.batch_first {
                    (row % steps, row / steps)
                } else {
                    (row / batch, row % batch)
                };
                if t >= lengths[b] {
                    continue;
                }
                running += 1;
                for k in 0..g4 {
                    let block = blocks[k / hidden][row * hidden + k % hidden];
                    assert!(
                        block.to_bits() == rebuilt[row * g4 + k].to_bits(),
                        "case {case}"
                    );
                    let (got, want) = (rebuilt[row * g4 + k], recorded[row * g4 + k]);
                    assert!(
                        got.to_bits() == want.to_bits(),
                        "{isa:?} case {case} row {row} gate {} unit {}: rebuilt {got:e}, forward {want:e}",
                        k / hidden,
                        k % hidden
                    );
                }
            }
            assert_eq!(running, lengths.iter().sum::<usize>(), "case {case}");
        }
    }
    Isa::available().last().unwrap().set_active().unwrap();
}

/// The row-major forward of one row (`kernels/row_major.rs`, what a forward
/// from raw weights runs at batch 1 for a few steps) gives the packed path's
/// bits, outputs and cache, on every FMA ISA: its product is the panel
/// kernels' FMA chain, its gate math theirs.
#[test]
fn row_major_forward_gives_the_packed_bits() {
    use crate::kernels::row_major;
    use crate::PanelCache;
    let _g = lock();
    let mut seed = 7000;
    crate::set_num_threads(2).unwrap();
    // Hidden: a team of two at every size (on its own the path takes a team
    // for large weights only).
    for (isa, split) in isas_and_splits() {
        for &(steps, input, hidden) in &[
            (1, 1, 1),
            (1, 3, 5),
            (2, 16, 16),
            (1, 17, 33),
            (3, 40, 24),
            (4, 9, 70),
            (8, 5, 20),
            (1, 256, 256),
        ] {
            for variant in 0..16u32 {
                seed += 1;
                let [batch_first, reverse, with_state, with_cache] =
                    std::array::from_fn(|i| variant >> i & 1 == 1);
                let dims = Dims {
                    steps,
                    batch: 1,
                    input,
                    hidden,
                };
                let p = Problem::new(seed, dims, batch_first, reverse, false, with_state);
                let conv = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
                let (x, w_ih, w_hh) = (conv(&p.x), conv(&p.w_ih), conv(&p.w_hh));
                let bias = p.bias.as_deref().map(conv);
                let (h0, c0) = (p.h0.as_deref().map(conv), p.c0.as_deref().map(conv));
                let panels = PanelCache::new(&w_ih, &w_hh, None);
                let hp = hidden_pad::<f32>(hidden);
                let run = |packed: bool| {
                    let seq = Sequence {
                        dims,
                        batch_first,
                        reverse,
                        lengths: None,
                        x: &x,
                        w_ih: &w_ih,
                        w_hh: &w_hh,
                        bias: bias.as_deref(),
                        h0: h0.as_deref(),
                        c0: c0.as_deref(),
                        panels: packed.then_some(&panels),
                        variant: Default::default(),
                    };
                    let fma = matches!(isa, Isa::Avx2 | Isa::Avx512 | Isa::Avx512Bf16);
                    // Prepared panels (`packed`): one step without a cache
                    // over 1 MiB of weights or more (I = H = 256 here), which
                    // then runs here on both sides; the packed path's one step
                    // is compared with a cache (same arithmetic).
                    let most = match (packed, with_cache) {
                        (false, true) => crate::tuning::ROW_MAJOR_MAX_STEPS,
                        (false, false) => crate::tuning::ROW_MAJOR_MAX_INFERENCE_STEPS,
                        (true, false)
                            if 4 * hidden * (input + hidden) * 4
                                >= crate::tuning::TEAM_WEIGHT_BYTES =>
                        {
                            crate::tuning::ROW_MAJOR_MAX_PACKED_STEPS
                        }
                        (true, false) => 0,
                        (true, true) => 0,
                    };
                    let in_place = fma && steps <= most;
                    assert_eq!(row_major::applies(&seq, isa, with_cache), in_place);
                    let mut outs = [steps * hidden, hidden, hidden, steps * 4 * hp, steps * hp]
                        .map(|n| vec![f32::NAN; n]);
                    let mut h_prev = vec![f32::NAN; steps * hp];
                    let [y, h_n, c_n, gates, cells] = &mut outs;
                    // Without a cache (inference), the cache's buffers stay NaN.
                    let cache = with_cache.then_some(Cache {
                        gates,
                        cells,
                        h_prev: &mut h_prev,
                        pre: None,
                    });
                    forward(&seq, Outputs { y, h_n, c_n }, cache, &Cancel::new()).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<u32>>();
                    (outs.map(|v| bits(&v)), bits(&h_prev))
                };
                assert_eq!(
                    run(false),
                    run(true),
                    "{isa:?} {split:?} T={steps} I={input} H={hidden} variant={variant:04b}"
                );
            }
        }
    }
    Isa::available().last().unwrap().set_active().unwrap();
    crate::force_split(ForcedSplit::Choose);
}

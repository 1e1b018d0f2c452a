//! The product of a step's few rows with a weight matrix packed once per call
//! into the step kernels' panels (`pack.rs`), written as dense rows: what the
//! LayerNorm LSTM runs at every step (`layernorm.rs`), whose normalisation
//! needs each row's whole product before any gate math, so it cannot use the
//! fused step kernels' per-tile gate math, but can use their panels and
//! register tiles instead of the general product (which would pack the
//! weights again at every step).
//!
//! The panels are those of `pack.rs` (`forward_panels`: four gate vectors of
//! the same units; `backward_panels`, `projection_panels`,
//! `projection_backward_panels`: 4·LANES consecutive outputs), of elements or
//! of bfloat16 ([`PanelWeight`]). The panels are split over the pool's
//! threads, each running the same register tiles as one thread would: every
//! output is one FMA chain in k order from zero whatever the split or the
//! rows grouped with it (`microkernel.rs`), so the bits never depend on the
//! thread count.

use std::ops::Range;

use rayon::prelude::*;

use super::layout::SharedMut;
use super::microkernel::{
    accumulator_room, accumulators, elements, pack_rows, packed_room, row_x4pv_of,
    rows_x4v_kblocked_of, PackedRows, PanelWeight, VectorRoom,
};
use crate::error::Result;
use crate::float::Float;
use crate::parallel::pool::in_pool;
use crate::simd::{dispatch, store_n, Isa, Kernel, Simd};
use crate::tuning::{BATCH1_PANELS, PANEL_TASK_MIN_WORK};

/// Where each panel's four vectors go in a dense output row.
#[derive(Clone, Copy, Debug)]
pub enum Columns {
    /// [`forward_panels`](super::pack::forward_panels) of a (4H × depth)
    /// matrix: vector g of panel p holds gate g of units p·LANES.., at
    /// columns g·H + p·LANES.. (units below H).
    Gates { hidden: usize },
    /// Panels of consecutive outputs (`backward_panels`, the projection's):
    /// vector v of panel q holds outputs q·4·LANES + v·LANES.. (below
    /// `outputs`).
    Outputs { outputs: usize },
}

impl Columns {
    /// The first column and the number of real lanes of vector `v` of panel
    /// `tile` (`lanes` wide).
    #[inline(always)]
    fn at(self, tile: usize, v: usize, lanes: usize) -> (usize, usize) {
        match self {
            Columns::Gates { hidden } => {
                let u = tile * lanes;
                (
                    v * hidden + u.min(hidden),
                    hidden.saturating_sub(u).min(lanes),
                )
            }
            Columns::Outputs { outputs } => {
                let o = (4 * tile + v) * lanes;
                (o.min(outputs), outputs.saturating_sub(o).min(lanes))
            }
        }
    }

    /// The width of an output row (the columns past the last are never
    /// written).
    fn width(self) -> usize {
        match self {
            Columns::Gates { hidden } => 4 * hidden,
            Columns::Outputs { outputs } => outputs,
        }
    }
}

/// One thread's room: its copy of the rows packed for the register tile, and
/// the tile's results for every row. Made before the time loop (a refused
/// allocation is an error of the call, not a panic on a pool thread).
pub struct ProductScratch {
    packed: Vec<VectorRoom>,
    products: Vec<VectorRoom>,
}

impl ProductScratch {
    /// Room for products of up to `rows` rows of depth up to `depth`, for
    /// `threads` threads, on an ISA of `lanes` lanes of `E`.
    pub fn for_threads<E>(
        threads: usize,
        rows: usize,
        depth: usize,
        lanes: usize,
    ) -> Result<Vec<ProductScratch>> {
        (0..threads.max(1))
            .map(|_| {
                Ok(ProductScratch {
                    packed: packed_room::<E>(rows.saturating_mul(depth), "the rows of a step")?,
                    products: accumulator_room::<E>(rows, lanes, "the products of a step")?,
                })
            })
            .collect()
    }
}

/// A product `C = A·B` of `rows` rows of A (each `depth` elements, `lda`
/// apart) with the `tiles` panels of B, each `depth` panel rows of 4·LANES
/// weights; row r of C at `c[r·ldc..]`, its columns as `columns` says.
pub struct PanelProduct<'a, E, W> {
    pub rows: usize,
    pub a: &'a [E],
    pub lda: usize,
    pub depth: usize,
    pub panels: &'a [W],
    pub tiles: usize,
    pub columns: Columns,
    pub c: &'a mut [E],
    pub ldc: usize,
}

/// Runs `p` on `isa` (supported), its panels split over the pool's threads
/// when called inside the pool, one [`ProductScratch`] per task (as many
/// tasks as `scratch` has entries at most).
///
/// Panics if an operand is too small for the shapes given (an engine bug).
pub fn panel_product<E: Float, W: PanelWeight<E>>(
    isa: Isa,
    p: PanelProduct<'_, E, W>,
    scratch: &mut [ProductScratch],
) {
    if p.rows == 0 || p.tiles == 0 {
        return;
    }
    let lanes = isa.lanes::<E>();
    let stride = p.depth * 4 * lanes;
    assert!(p.panels.len() >= p.tiles * stride, "panels too small");
    assert!(p.lda >= p.depth && p.a.len() >= (p.rows - 1) * p.lda + p.depth);
    let width = p.columns.width();
    assert!(p.ldc >= width && p.c.len() >= (p.rows - 1) * p.ldc + width);
    assert!(!scratch.is_empty());
    for s in scratch.iter_mut() {
        assert!(
            elements::<E>(&mut s.packed).len() >= p.rows * p.depth
                && s.products.len() * size_of::<VectorRoom>()
                    >= p.rows * 4 * lanes * size_of::<E>(),
            "product scratch too small"
        );
    }
    // Tasks only for a product that can pay for handing them out.
    let work = p.rows * p.depth * p.tiles * 4 * lanes;
    let tasks = if in_pool() {
        scratch
            .len()
            .min(p.tiles)
            .min(work / PANEL_TASK_MIN_WORK)
            .max(1)
    } else {
        1
    };
    let per_task = p.tiles.div_ceil(tasks);
    let c = SharedMut(p.c.as_mut_ptr());
    let task = |t: usize, room: &mut ProductScratch| {
        let tiles = t * per_task..((t + 1) * per_task).min(p.tiles);
        dispatch::<E, _>(
            isa,
            Task {
                rows: p.rows,
                a: p.a.as_ptr(),
                lda: p.lda,
                depth: p.depth,
                panels: p.panels.as_ptr(),
                tiles,
                columns: p.columns,
                c,
                ldc: p.ldc,
                room,
            },
        )
    };
    if tasks == 1 {
        task(0, &mut scratch[0]);
    } else {
        scratch[..tasks]
            .par_iter_mut()
            .enumerate()
            .for_each(|(t, room)| task(t, room));
    }
}

/// One task's panels of a [`PanelProduct`] on the dispatched ISA.
struct Task<'a, E, W> {
    rows: usize,
    a: *const E,
    lda: usize,
    depth: usize,
    panels: *const W,
    tiles: Range<usize>,
    columns: Columns,
    c: SharedMut<E>,
    ldc: usize,
    room: &'a mut ProductScratch,
}

/// Stores the four vectors `acc` of panel `tile` in row `r` of C (`ldc`
/// apart), at the columns `columns` gives.
///
/// # Safety
/// As checked by `panel_product`: row r < rows of C, columns inside the row;
/// no other task writes the columns of this panel.
#[inline(always)]
unsafe fn store<S: Simd>(
    c: SharedMut<S::E>,
    ldc: usize,
    columns: Columns,
    r: usize,
    tile: usize,
    acc: [S; 4],
) {
    for (v, acc) in acc.into_iter().enumerate() {
        let (col, n) = columns.at(tile, v, S::LANES);
        // SAFETY: forwarded from the caller (n real lanes from col).
        unsafe { store_n(acc, c.0.add(r * ldc + col), n) };
    }
}

impl<E: Float, W: PanelWeight<E>> Kernel<E> for Task<'_, E, W> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        let (rows, depth) = (self.rows, self.depth);
        let (c, ldc, columns) = (self.c, self.ldc, self.columns);
        let room = self.room;
        // Stores go through `store` itself, not a closure: a closure is a
        // function of its own, compiled without the ISA's target features,
        // so its vector stores would not inline (measured: an out-of-line
        // call per vector stored).
        let stride = depth * 4 * S::LANES; // one panel
        let panel = |q: usize| self.panels.wrapping_add(q * stride);
        // SAFETY (the whole body): `panel_product` checked that A holds
        // `rows` rows of `depth`, every panel below `tiles` lies inside the
        // panels, C's rows hold every column written, and the room fits
        // `rows` rows of `depth` and their results; tasks get disjoint
        // panels, so disjoint columns of C.
        unsafe {
            if rows == 1 {
                // One row: latency-bound, so several panels at a time
                // (BATCH1_PANELS, 4 chains each), as the fused kernels do.
                let mut q = self.tiles.start;
                while q < self.tiles.end {
                    if q + BATCH1_PANELS <= self.tiles.end {
                        let panels = std::array::from_fn(|i| panel(q + i));
                        let acc = row_x4pv_of::<S, W, BATCH1_PANELS>(self.a, 1, depth, panels);
                        for (i, acc) in acc.into_iter().enumerate() {
                            store::<S>(c, ldc, columns, 0, q + i, acc);
                        }
                        q += BATCH1_PANELS;
                    } else if q + 1 < self.tiles.end {
                        let [acc0, acc1] =
                            row_x4pv_of::<S, W, 2>(self.a, 1, depth, [panel(q), panel(q + 1)]);
                        store::<S>(c, ldc, columns, 0, q, acc0);
                        store::<S>(c, ldc, columns, 0, q + 1, acc1);
                        q += 2;
                    } else {
                        let [acc] = row_x4pv_of::<S, W, 1>(self.a, 1, depth, [panel(q)]);
                        store::<S>(c, ldc, columns, 0, q, acc);
                        q += 1;
                    }
                }
                return;
            }
            let (a, lda) = (self.a, self.lda);
            let packed = elements::<E>(&mut room.packed);
            pack_rows::<S>(rows, |r| a.add(r * lda), depth, packed);
            let a = PackedRows {
                data: packed.as_ptr(),
                depth,
            };
            let products = accumulators::<S>(&mut room.products);
            for q in self.tiles.clone() {
                rows_x4v_kblocked_of::<S, W>(rows, a, depth, panel(q), products);
                for (r, &acc) in products[..rows].iter().enumerate() {
                    store::<S>(c, ldc, columns, r, q, acc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{panel_product, Columns, PanelProduct, ProductScratch};
    use crate::float::Float;
    use crate::kernels::gemm::{gemm_on, Mat};
    use crate::kernels::pack;
    use crate::simd::Isa;

    /// Values in [-1, 1) from a small deterministic generator (xorshift).
    fn values<E: Float>(seed: u64, len: usize) -> Vec<E> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                E::from_f64((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
            })
            .collect()
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// `rows` rows of A (`lda` apart) times B, on `threads` threads: C with
    /// one row of padding after each (which must stay untouched).
    #[allow(clippy::too_many_arguments)]
    fn run<E: Float>(
        isa: Isa,
        threads: usize,
        rows: usize,
        a: &[E],
        lda: usize,
        depth: usize,
        panels: &[E],
        tiles: usize,
        columns: Columns,
        width: usize,
    ) -> Vec<E> {
        let ldc = width + 3;
        let mut c = vec![E::from_f64(7.0); rows.max(1) * ldc];
        let lanes = isa.lanes::<E>();
        let mut scratch = ProductScratch::for_threads::<E>(threads, rows, depth, lanes).unwrap();
        pool(threads).install(|| {
            panel_product(
                isa,
                PanelProduct {
                    rows,
                    a,
                    lda,
                    depth,
                    panels,
                    tiles,
                    columns,
                    c: &mut c,
                    ldc,
                },
                &mut scratch,
            )
        });
        for row in c.chunks(ldc) {
            assert!(
                row[width..].iter().all(|x| x.to_f64() == 7.0),
                "padding written"
            );
        }
        c
    }

    /// The reference: the general product, one FMA chain per output in k
    /// order from zero, like the panels' tiles: the same bits.
    fn want<E: Float>(isa: Isa, a: Mat<'_, E>, b: Mat<'_, E>, width: usize) -> Vec<E> {
        let ldc = width + 3;
        let mut c = vec![E::from_f64(7.0); a.rows.max(1) * ldc];
        gemm_on(isa, a, b, &mut c, ldc, false, false);
        c
    }

    fn same_bits<E: Float>(got: &[E], want: &[E], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(
                g.to_f64().to_bits(),
                w.to_f64().to_bits(),
                "{what}: element {i}: {} != {}",
                g.to_f64(),
                w.to_f64()
            );
        }
    }

    /// Every ISA, 1 to 3 threads, row counts around the tile's MR (1: the
    /// batch-1 path), hidden sizes that are not a multiple of the lanes:
    /// s = h·W_hhᵀ on forward panels (gate columns), d = ds·W_hh on dense
    /// backward panels and both projection products (output columns),
    /// bitwise those of the general product.
    fn check<E: Float>() {
        for isa in Isa::available() {
            let lanes = isa.lanes::<E>();
            for &(hidden, state) in &[(5usize, 5usize), (19, 19), (33, 12), (40, 40)] {
                let hp = hidden.next_multiple_of(E::PAD);
                let g4 = 4 * hidden;
                let w_hh = values::<E>(1 + hidden as u64, g4 * state);
                let w_hr = values::<E>(2 + state as u64, state * hidden);
                let fwd = pack::forward_panels(&w_hh, "w_hh", hidden, hp, state, lanes).unwrap();
                let bwd = pack::backward_panels(&w_hh, hidden, hidden, state, lanes).unwrap();
                let proj = pack::projection_panels(&w_hr, state, hidden, lanes).unwrap();
                let proj_b = pack::projection_backward_panels(&w_hr, state, hidden, lanes).unwrap();
                let state_tiles = state.next_multiple_of(E::PAD).div_ceil(4 * lanes);
                let hidden_tiles = hidden.next_multiple_of(E::PAD).div_ceil(4 * lanes);
                for rows in [1usize, 2, 3, 6, 7, 13] {
                    let lda = g4 + 2;
                    let a = values::<E>(3 + rows as u64, rows * lda);
                    for threads in 1..=3 {
                        let what =
                            format!("{isa:?} H={hidden} P={state} rows={rows} threads={threads}");
                        // s = h·W_hhᵀ: depth P, 4H gate columns.
                        let got = run(
                            isa,
                            threads,
                            rows,
                            &a,
                            lda,
                            state,
                            &fwd,
                            hp / lanes,
                            Columns::Gates { hidden },
                            g4,
                        );
                        let w_t = Mat {
                            data: &w_hh,
                            rows: state,
                            cols: g4,
                            row_stride: 1,
                            col_stride: state,
                        };
                        same_bits(
                            &got,
                            &want(isa, Mat::rows(&a, rows, state, lda), w_t, g4),
                            &what,
                        );
                        // d = ds·W_hh: depth 4H, P columns.
                        let got = run(
                            isa,
                            threads,
                            rows,
                            &a,
                            lda,
                            g4,
                            &bwd,
                            state_tiles,
                            Columns::Outputs { outputs: state },
                            state,
                        );
                        let w = Mat::rows(&w_hh, g4, state, state);
                        same_bits(
                            &got,
                            &want(isa, Mat::rows(&a, rows, g4, lda), w, state),
                            &what,
                        );
                        // h = m·W_hrᵀ: depth H, P columns.
                        let got = run(
                            isa,
                            threads,
                            rows,
                            &a,
                            lda,
                            hidden,
                            &proj,
                            state_tiles,
                            Columns::Outputs { outputs: state },
                            state,
                        );
                        let w_t = Mat {
                            data: &w_hr,
                            rows: hidden,
                            cols: state,
                            row_stride: 1,
                            col_stride: hidden,
                        };
                        same_bits(
                            &got,
                            &want(isa, Mat::rows(&a, rows, hidden, lda), w_t, state),
                            &what,
                        );
                        // dm = dh·W_hr: depth P, H columns.
                        let got = run(
                            isa,
                            threads,
                            rows,
                            &a,
                            lda,
                            state,
                            &proj_b,
                            hidden_tiles,
                            Columns::Outputs { outputs: hidden },
                            hidden,
                        );
                        let w = Mat::rows(&w_hr, state, hidden, hidden);
                        same_bits(
                            &got,
                            &want(isa, Mat::rows(&a, rows, state, lda), w, hidden),
                            &what,
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn panel_products_match_the_general_product_f32() {
        check::<f32>();
    }

    #[test]
    fn panel_products_match_the_general_product_f64() {
        check::<f64>();
    }
}

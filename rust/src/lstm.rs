//! One layer, one direction, a whole sequence: the forward and backward
//! passes. Each checks its arguments, packs the weights, splits the time loop
//! over threads (`parallel/split.rs`), runs one chunk kernel per team member
//! (`kernels/forward_step.rs`, `kernels/backward_step.rs`; the input projection
//! runs inside the forward loop, a block of steps at a time) and, for
//! backward, the large products after the loop.

use rayon::prelude::*;

use crate::check;
use crate::error::Result;
use crate::float::Float;
use crate::kernels::backward_step::{BackwardChunk, BackwardState};
use crate::kernels::forward_step::{ForwardChunk, ForwardOut, ForwardState};
use crate::kernels::gemm::{gemm, Mat};
use crate::kernels::layout::{SharedMut, Slots};
use crate::kernels::pack;
use crate::parallel::pool::{self, in_pool};
use crate::parallel::split::{self, choose_split, claim, run_split, Chunk, Split};
use crate::sequence::{hidden_pad, Cache, CacheRef, Dims, Grads, Outputs, Seeds, Sequence};
use crate::simd::{dispatch, Isa};
use crate::tuning::DB_COLUMN_BLOCK;

/// Forward pass over the whole sequence. With `cache`, also records what
/// [`backward`] needs (sizes: see [`Cache`]).
pub fn forward<E: Float>(
    seq: &Sequence<'_, E>,
    out: Outputs<'_, E>,
    cache: Option<Cache<'_, E>>,
) -> Result<()> {
    check::forward_args(seq, &out, cache.as_ref())?;
    let Dims {
        batch,
        input,
        hidden,
        ..
    } = seq.dims;
    let hp = hidden_pad::<E>(hidden);
    let isa = Isa::active();
    let workers = pool::workers()?;
    let pool = &workers.pool;
    let geo = seq.geometry();
    let lanes = isa.lanes::<E>();
    let tiles = hp / lanes;
    let threads = pool.current_num_threads();
    let (split, _claim) = claim(&workers, choose_split(batch, tiles, threads));
    let chunks = split::chunks(split, threads, batch, |b| seq.length(b));
    // One batch chunk has nothing to share: run it on the calling thread and
    // skip the hand-off to the pool (microseconds, which small calls notice).
    let inline = split == Split::Batch && chunks.len() <= 1;

    let body = || {
        let bias = pack::pad_bias(seq.bias, hidden, hp);
        let panels = pack::forward_panels(seq.w_hh, hidden, hp, lanes);

        let mut cache = cache;
        for row in seq.padded_rows() {
            out.y[row * hidden..][..hidden].fill(E::ZERO);
            if let Some(c) = cache.as_mut() {
                c.gates[row * 4 * hp..][..4 * hp].fill(E::ZERO);
                c.cells[row * hp..][..hp].fill(E::ZERO);
                c.h_prev[row * hp..][..hp].fill(E::ZERO);
            }
        }
        let (gates, cells, h_prev) = match cache {
            Some(c) => (
                SharedMut(c.gates.as_mut_ptr()),
                SharedMut(c.cells.as_mut_ptr()),
                SharedMut(c.h_prev.as_mut_ptr()),
            ),
            None => (SharedMut::null(), SharedMut::null(), SharedMut::null()),
        };
        let shared = ForwardOut {
            y: SharedMut(out.y.as_mut_ptr()),
            gates,
            cells,
            h_prev,
        };

        // Per chunk: its state (h twice, c), h0/c0 copied in.
        let mut states = chunk_states(&chunks, hidden, [seq.h0, None, seq.c0]);
        let state_ptrs: Vec<ForwardState<E>> = states
            .iter_mut()
            .map(|[h0, h1, c]| ForwardState {
                h: [SharedMut(h0.as_mut_ptr()), SharedMut(h1.as_mut_ptr())],
                c: SharedMut(c.as_mut_ptr()),
            })
            .collect();
        // Chunks own disjoint batch rows and write only those rows of the shared
        // outputs (sizes checked above); members of a chunk write disjoint units.
        run_split(split, chunks.len(), tiles, &|chunk, tile_range, barrier| {
            let (rows, lens) = &chunks[chunk];
            let kernel = ForwardChunk {
                geo,
                slots: Slots { rows, lens },
                x: seq.x,
                input,
                w_ih: seq.w_ih,
                bias: &bias,
                panels: &panels,
                state: state_ptrs[chunk],
                out: shared,
                tiles: tile_range,
                barrier,
            };
            dispatch(isa, kernel);
        });

        // A row of length L last wrote h into buffer L % 2 (h0 sits in 0).
        for ((slot_rows, slot_lens), st) in chunks.iter().zip(&states) {
            for (slot, (&b, &len)) in slot_rows.iter().zip(slot_lens).enumerate() {
                out.h_n[b * hidden..][..hidden]
                    .copy_from_slice(&st[len % 2][slot * hp..][..hidden]);
                out.c_n[b * hidden..][..hidden].copy_from_slice(&st[2][slot * hp..][..hidden]);
            }
        }
    };
    if inline {
        body();
    } else {
        pool.install(body);
    }
    Ok(())
}

/// Backpropagation through time over the whole sequence, from the cache that
/// [`forward`] filled for the same `seq`.
pub fn backward<E: Float>(
    seq: &Sequence<'_, E>,
    cache: CacheRef<'_, E>,
    seeds: Seeds<'_, E>,
    grads: Grads<'_, E>,
) -> Result<()> {
    let rows = check::backward_args(seq, &cache, &seeds, &grads)?;
    let Dims {
        batch,
        input,
        hidden,
        ..
    } = seq.dims;
    let hp = hidden_pad::<E>(hidden);
    let isa = Isa::active();
    let workers = pool::workers()?;
    let pool = &workers.pool;
    let geo = seq.geometry();
    let depth = 4 * hp;
    let lanes = isa.lanes::<E>();
    let tiles = hp.div_ceil(4 * lanes);
    let threads = pool.current_num_threads();
    let (split, _claim) = claim(&workers, choose_split(batch, tiles, threads));
    let chunks = split::chunks(split, threads, batch, |b| seq.length(b));

    let mut owned = Vec::new();
    let da: &mut [E] = match grads.scratch {
        Some(scratch) => scratch,
        None => {
            owned.resize(rows * depth, E::ZERO);
            &mut owned
        }
    };
    let body = || {
        let panels = pack::backward_panels(seq.w_hh, hidden, hp, lanes);
        // The kernels write every visited (step, row) in full; padded steps
        // must hold zeros so the products below ignore them.
        for row in seq.padded_rows() {
            da[row * depth..][..depth].fill(E::ZERO);
        }
        let (da_ptr, dh0) = (
            SharedMut(da.as_mut_ptr()),
            SharedMut(grads.dh0.as_mut_ptr()),
        );

        // Per chunk: its state (dh_n seed, dc, c0), copied in.
        let mut states = chunk_states(&chunks, hidden, [seeds.dh_n, seeds.dc_n, seq.c0]);
        let state_ptrs: Vec<BackwardState<E>> = states
            .iter_mut()
            .map(|[dh, dc, c0]| BackwardState {
                dh_seed: SharedMut(dh.as_mut_ptr()),
                dc: SharedMut(dc.as_mut_ptr()),
                c_first: SharedMut(c0.as_mut_ptr()),
            })
            .collect();
        // Chunks own disjoint batch rows and write only their rows of da and dh0
        // (sizes checked above); members of a chunk write disjoint units.
        run_split(split, chunks.len(), tiles, &|chunk, tile_range, barrier| {
            let (slot_rows, slot_lens) = &chunks[chunk];
            let kernel = BackwardChunk {
                geo,
                slots: Slots {
                    rows: slot_rows,
                    lens: slot_lens,
                },
                gates: cache.gates,
                cells: cache.cells,
                panels: &panels,
                dy: seeds.dy,
                state: state_ptrs[chunk],
                da: da_ptr,
                dh0,
                tiles: tile_range,
                barrier,
            };
            dispatch(isa, kernel);
        });
        for ((slot_rows, _), st) in chunks.iter().zip(&states) {
            for (slot, &b) in slot_rows.iter().enumerate() {
                grads.dc0[b * hidden..][..hidden].copy_from_slice(&st[1][slot * hp..][..hidden]);
            }
        }

        // The non-recurrent gradients: one product each over all T·B rows. When
        // H is already a multiple of the padding, da's gate blocks are exactly
        // w_ih's and one product serves all four gates.
        let w_ih = if hidden == hp {
            std::borrow::Cow::Borrowed(seq.w_ih)
        } else {
            pack::pad_gate_rows(seq.w_ih, hidden, hp, input).into()
        };
        gemm(
            Mat::rows(da, rows, depth, depth),
            Mat::rows(&w_ih, depth, input, input),
            grads.dx,
            input,
            false,
        );
        // (first da column, first output row, rows) per product.
        let blocks: Vec<(usize, usize, usize)> = if hidden == hp {
            vec![(0, 0, 4 * hidden)]
        } else {
            (0..4).map(|g| (g * hp, g * hidden, hidden)).collect()
        };
        for (col, out_row, n) in blocks {
            // da's columns of these gate rows, transposed: (n, T·B).
            let da_t = Mat {
                data: &da[col.min(da.len())..],
                rows: n,
                cols: rows,
                row_stride: 1,
                col_stride: depth,
            };
            gemm(
                da_t,
                Mat::rows(seq.x, rows, input, input),
                &mut grads.dw_ih[out_row * input..][..n * input],
                input,
                false,
            );
            let h_prev = Mat::rows(cache.h_prev, rows, hidden, hp);
            gemm(
                da_t,
                h_prev,
                &mut grads.dw_hh[out_row * hidden..][..n * hidden],
                hidden,
                false,
            );
        }
        if let Some(db) = grads.db {
            // Column blocks in parallel, each summed over rows in order: the
            // same bits for any thread count.
            let mut sum = vec![E::ZERO; depth];
            let column_block = |(blk, sum): (usize, &mut [E])| {
                for da_row in da.chunks_exact(depth) {
                    for (s, &d) in sum.iter_mut().zip(&da_row[blk * DB_COLUMN_BLOCK..]) {
                        *s = *s + d;
                    }
                }
            };
            if in_pool() {
                sum.par_chunks_mut(DB_COLUMN_BLOCK)
                    .enumerate()
                    .for_each(column_block);
            } else {
                sum.chunks_mut(DB_COLUMN_BLOCK)
                    .enumerate()
                    .for_each(column_block);
            }
            for gate in 0..4 {
                db[gate * hidden..][..hidden].copy_from_slice(&sum[gate * hp..][..hidden]);
            }
        }
    };
    // Unlike forward, even one batch chunk shares work: the products after the
    // loop split their rows over the pool. Only a one-thread pool stays here.
    if threads == 1 {
        body();
    } else {
        pool.install(body);
    }
    Ok(())
}

/// Per chunk, three state buffers of slots × Hp: buffer k holds `sources[k]`
/// (B × H, zeros when None) for each slot's batch row, zeros in padded units.
fn chunk_states<E: Float>(
    chunks: &[Chunk],
    hidden: usize,
    sources: [Option<&[E]>; 3],
) -> Vec<[Vec<E>; 3]> {
    let hp = hidden_pad::<E>(hidden);
    chunks
        .iter()
        .map(|(slot_rows, _)| {
            let mut st = [(); 3].map(|_| vec![E::ZERO; slot_rows.len() * hp]);
            for (r, &b) in slot_rows.iter().enumerate() {
                for (src, dst) in sources.iter().zip(&mut st) {
                    if let Some(src) = src {
                        dst[r * hp..][..hidden].copy_from_slice(&src[b * hidden..][..hidden]);
                    }
                }
            }
            st
        })
        .collect()
}

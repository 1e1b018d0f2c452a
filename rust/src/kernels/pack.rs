//! Weights repacked once per call into the layouts the kernels stream.
//!
//! Hidden units are padded from H to `Hp` (a multiple of `Float::PAD`) with
//! zero weights, so every tile is whole. Padded units never reach real ones:
//! forward products run over the H real units only, and backward zeroes the
//! padded units' gate gradients (they can be NaN, 0·inf, when h holds an
//! infinity) before the products that sum over all Hp.
//!
//! Each layout is allocated here, fallibly ([`crate::alloc`]).

use crate::alloc;
use crate::error::Result;
use crate::float::Float;

/// `w_ih` (4H × I) with each gate block padded to Hp rows: (4Hp × I).
pub fn pad_gate_rows<E: Float>(
    w: &[E],
    hidden: usize,
    hidden_pad: usize,
    cols: usize,
) -> Result<Vec<E>> {
    let mut out = alloc::zeroed(&[4, hidden_pad, cols], "w_ih padded to 4·Hp rows")?;
    for gate in 0..4 {
        let src = &w[gate * hidden * cols..(gate + 1) * hidden * cols];
        out[gate * hidden_pad * cols..][..hidden * cols].copy_from_slice(src);
    }
    Ok(out)
}

/// A bias (4H), or zeros, laid out as 4 gate blocks of Hp.
pub fn pad_bias<E: Float>(bias: Option<&[E]>, hidden: usize, hidden_pad: usize) -> Result<Vec<E>> {
    let mut out = alloc::zeroed(&[4, hidden_pad], "the padded bias")?;
    if let Some(b) = bias {
        for gate in 0..4 {
            out[gate * hidden_pad..][..hidden].copy_from_slice(&b[gate * hidden..][..hidden]);
        }
    }
    Ok(out)
}

/// Forward panels of `w_hh` (4H × H): panel p holds, for k = 0..H, the
/// 4·`lanes` weights that feed hidden units p·lanes.. of gates i, f, g, o:
/// `panel[p][k][gate·lanes + u] = w_hh[gate·H + p·lanes + u][k]`.
/// One micro-kernel tile then yields all four gates of the same units.
pub fn forward_panels<E: Float>(
    w_hh: &[E],
    hidden: usize,
    hidden_pad: usize,
    lanes: usize,
) -> Result<Vec<E>> {
    let tiles = hidden_pad / lanes;
    let width = 4 * lanes;
    let mut out = alloc::zeroed(&[tiles, hidden, width], "the forward panels of w_hh")?;
    // Writes in order; the reads, 4·lanes rows at a time, stay in L1.
    for (p, panel) in out
        .chunks_exact_mut((hidden * width).max(1))
        .enumerate()
        .take(tiles)
    {
        let units = hidden.saturating_sub(p * lanes).min(lanes);
        for (k, dst) in panel.chunks_exact_mut(width).enumerate() {
            for gate in 0..4 {
                for u in 0..units {
                    dst[gate * lanes + u] = w_hh[(gate * hidden + p * lanes + u) * hidden + k];
                }
            }
        }
    }
    Ok(out)
}

/// Backward panels of `w_hh` for `dh_prev = da · w_hh`: panel q holds, for each
/// padded gate row j = gate·Hp + unit, the 4·`lanes` weights of hidden units
/// q·4·lanes..: `panel[q][j][v] = w_hh[gate·H + unit][q·4·lanes + v]`.
pub fn backward_panels<E: Float>(
    w_hh: &[E],
    hidden: usize,
    hidden_pad: usize,
    lanes: usize,
) -> Result<Vec<E>> {
    let width = 4 * lanes;
    let tiles = hidden_pad.div_ceil(width);
    let depth = 4 * hidden_pad;
    let mut out = alloc::zeroed(&[tiles, depth, width], "the backward panels of w_hh")?;
    for q in 0..tiles {
        let panel = &mut out[q * depth * width..][..depth * width];
        let k0 = q * width;
        let cols = hidden.saturating_sub(k0).min(width);
        if cols == 0 {
            continue;
        }
        for gate in 0..4 {
            for unit in 0..hidden {
                let src = &w_hh[(gate * hidden + unit) * hidden + k0..][..cols];
                panel[(gate * hidden_pad + unit) * width..][..cols].copy_from_slice(src);
            }
        }
    }
    Ok(out)
}

//! The masks of the regularised LSTM (docs/variants.md, 'Masks'): a
//! counter-based hash of each entry's coordinates, bit-identical to
//! `python/lstm_fast/masks.py`. An entry is a pure function of (seed, stream,
//! layer, direction, coordinates): never of a thread, a layout or the order of
//! evaluation, so a run is the same for any thread count and ISA.
//!
//! ```text
//! mix(z)       = SplitMix64's finaliser
//! absorb(h, w) = mix((h ^ w) + 0x9E3779B97F4A7C15)
//! key          = absorb(absorb(absorb(seed, stream), layer), direction)
//! hash         = absorb(... absorb(key, c_0) ..., c_{n-1})
//! event        = hash >> 11 < ceil(p · 2^53)        (the same as u < p)
//! ```

use crate::float::Float;
use crate::simd::{Kernel, Simd};

/// Stream ids (the first word after the seed).
pub const ZONEOUT_H: u64 = 1;
pub const ZONEOUT_C: u64 = 2;
pub const RECURRENT_DROPOUT: u64 = 3;
pub const WEIGHT_DROP: u64 = 4;
pub const DROPOUT: u64 = 5;

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser (a bijection of u64).
#[inline(always)]
pub fn mix(mut z: u64) -> u64 {
    z ^= z >> 30;
    z = z.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^= z >> 27;
    z = z.wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One word absorbed into the running hash.
#[inline(always)]
pub fn absorb(h: u64, w: u64) -> u64 {
    mix((h ^ w).wrapping_add(GAMMA))
}

/// The key of one mask.
pub fn key(seed: u64, stream: u64, layer: u64, direction: u64) -> u64 {
    absorb(absorb(absorb(seed, stream), layer), direction)
}

/// The hash of one entry: the key with its coordinates absorbed in order.
pub fn hash(key: u64, coordinates: &[u64]) -> u64 {
    coordinates.iter().fold(key, |h, &c| absorb(h, c))
}

/// The integer threshold of probability `p` in [0, 1): the event is
/// `hash >> 11 < threshold(p)`, exactly `u < p` with u = (hash >> 11)·2^-53.
pub fn threshold(p: f64) -> u64 {
    assert!((0.0..1.0).contains(&p), "a probability in [0, 1)");
    // p·2^53 is exact (a power-of-two scaling of a finite double below 1).
    (p * (1u64 << 53) as f64).ceil() as u64
}

/// Whether the event happens for an entry's hash.
#[inline(always)]
pub fn event(hash: u64, threshold: u64) -> bool {
    (hash >> 11) < threshold
}

/// The scale 1/(1 − p) of an inverted dropout, computed in f64 and rounded once.
pub fn scale<E: Float>(p: f64) -> E {
    E::from_f64(1.0 / (1.0 - p))
}

/// A two-coordinate dropout mask into `out` (rows of `cols` entries,
/// row-major): 0 where the event happens, `scale(p)` elsewhere; entry (a, b)
/// hashes (a, b) after `key`.
///
/// Inlined into [`ScaledKeepDraw`], which `simd::dispatch_dq` compiles with
/// the ISA's target features: there the 64-bit products of the hash
/// vectorise (a weight-drop mask is 4H·H entries per call, the cost of a
/// short pass).
#[inline(always)]
pub fn scaled_keep_into<E: Float>(key: u64, cols: usize, p: f64, out: &mut [E]) {
    assert!(cols > 0 && out.len().is_multiple_of(cols));
    let (thr, keep) = (threshold(p), scale::<E>(p));
    for (a, row) in out.chunks_exact_mut(cols).enumerate() {
        let ha = absorb(key, a as u64);
        // Branch-free: the events are random, a branch would mispredict.
        for (b, d) in row.iter_mut().enumerate() {
            *d = [keep, E::ZERO][usize::from(event(absorb(ha, b as u64), thr))];
        }
    }
}

/// [`scaled_keep_into`] as a kernel for `simd::dispatch_dq`; the same bits
/// on every ISA.
pub struct ScaledKeepDraw<'a, E> {
    pub key: u64,
    pub cols: usize,
    pub p: f64,
    pub out: &'a mut [E],
}

impl<E: Float> Kernel<E> for ScaledKeepDraw<'_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        scaled_keep_into(self.key, self.cols, self.p, self.out);
    }
}

/// A zoneout mask (docs/variants.md, 'Zoneout') in the layout of the caches:
/// `out` holds T·B rows of `width_pad` elements, row (t, b) at `t·B + b`, or
/// `b·T + t` when `batch_major`; entry (t, b, u) for u < `width` is 1 where
/// the unit keeps its previous value (the event, hashing (t, b, u) after
/// `key`), else 0; padded units are 0. t is the real time index, so the mask
/// does not depend on the layout, `reverse` or the lengths.
///
/// Inlined into [`ZoneoutDraw`], which `simd::dispatch_dq` compiles with the
/// ISA's target features: there the 64-bit products of the hash vectorise.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn zoneout_keep<E: Float>(
    key: u64,
    steps: usize,
    batch: usize,
    width: usize,
    width_pad: usize,
    batch_major: bool,
    p: f64,
    out: &mut [E],
) {
    assert!(width <= width_pad && out.len() == steps * batch * width_pad);
    let thr = threshold(p);
    for t in 0..steps {
        for b in 0..batch {
            let row = if batch_major {
                b * steps + t
            } else {
                t * batch + b
            };
            zoneout_row(
                key,
                t,
                b,
                width,
                thr,
                &mut out[row * width_pad..][..width_pad],
            );
        }
    }
}

/// Row (t, b) of a [`zoneout_keep`] mask into `dst` (its `width_pad`
/// elements): 1 where unit u < `width` keeps its previous value (the event of
/// `threshold` for the hash of (t, b, u) after `key`), else 0; padded units
/// 0. t is the real time index.
#[inline(always)]
pub fn zoneout_row<E: Float>(
    key: u64,
    t: usize,
    b: usize,
    width: usize,
    threshold: u64,
    dst: &mut [E],
) {
    let hb = absorb(absorb(key, t as u64), b as u64);
    // Branch-free: the events are random, a branch would mispredict.
    for (u, d) in dst[..width].iter_mut().enumerate() {
        let keep = event(absorb(hb, u as u64), threshold);
        *d = [E::ZERO, E::ONE][usize::from(keep)];
    }
    dst[width..].fill(E::ZERO);
}

/// The training masks of zoneout (h, c), each drawn where it is needed from
/// its key and probability (a pass that keeps only some rows of them at a
/// time: `checkpoint.rs`) instead of given whole; None: no mask to draw.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ZoneoutDraws {
    pub h: Option<Draw>,
    pub c: Option<Draw>,
}

/// One zoneout mask to draw: its [`key`] (stream [`ZONEOUT_H`] or
/// [`ZONEOUT_C`]) and the probability `p` in [0, 1) that a unit keeps its
/// previous value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    pub key: u64,
    pub p: f64,
}

impl ZoneoutDraws {
    /// The draws of the call (seed, layer, direction) with probabilities
    /// `z_h`, `z_c` (0: none).
    pub fn new(seed: u64, layer: u64, direction: u64, z_h: f64, z_c: f64) -> Self {
        let draw = |stream, p: f64| {
            (p != 0.0).then(|| Draw {
                key: key(seed, stream, layer, direction),
                p,
            })
        };
        ZoneoutDraws {
            h: draw(ZONEOUT_H, z_h),
            c: draw(ZONEOUT_C, z_c),
        }
    }
}

/// [`zoneout_keep`] as a kernel for `simd::dispatch_dq` (which compiles it
/// with the ISA's target features); the same bits on every ISA.
pub struct ZoneoutDraw<'a, E> {
    pub key: u64,
    pub steps: usize,
    pub batch: usize,
    pub width: usize,
    pub width_pad: usize,
    pub batch_major: bool,
    pub p: f64,
    pub out: &'a mut [E],
}

impl<E: Float> Kernel<E> for ZoneoutDraw<'_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        zoneout_keep(
            self.key,
            self.steps,
            self.batch,
            self.width,
            self.width_pad,
            self.batch_major,
            self.p,
            self.out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(mix(GAMMA), 0xE220_A839_7B1D_CDAF);
        assert_eq!(mix(0), 0);
        // (seed, stream, layer, direction, coordinates, hash)
        type Case = (u64, u64, u64, u64, &'static [u64], u64);
        let cases: [Case; 4] = [
            (0, ZONEOUT_H, 0, 0, &[0, 0, 0], 0xFC1F_9D47_C1A5_266C),
            (42, ZONEOUT_C, 1, 1, &[5, 2, 7], 0xDD02_D702_0C2A_6D6E),
            (u64::MAX, WEIGHT_DROP, 3, 0, &[11, 4], 0x804D_B5A9_33C9_37BA),
            (
                12345,
                RECURRENT_DROPOUT,
                0,
                1,
                &[3, 9],
                0x6513_794D_EA3C_0E8B,
            ),
        ];
        for (seed, stream, layer, dir, coords, want) in cases {
            assert_eq!(hash(key(seed, stream, layer, dir), coords), want);
        }
    }

    #[test]
    fn threshold_is_u_less_than_p() {
        for p in [0.0, 1e-300, 0.1, 0.25, 0.5, 0.999_999] {
            let t = threshold(p);
            for h in [
                0u64,
                1 << 11,
                (t.saturating_sub(1)) << 11,
                t << 11,
                u64::MAX,
            ] {
                let u = (h >> 11) as f64 * 2f64.powi(-53);
                assert_eq!(event(h, t), u < p, "p={p} h={h:#x}");
            }
        }
    }

    #[test]
    fn zoneout_keep_matches_hash() {
        let k = key(5, ZONEOUT_C, 2, 1);
        let (steps, batch, width, pad) = (3, 4, 5, 8);
        for batch_major in [false, true] {
            let mut m = vec![7.0f32; steps * batch * pad];
            zoneout_keep(k, steps, batch, width, pad, batch_major, 0.3, &mut m);
            for t in 0..steps {
                for b in 0..batch {
                    let row = if batch_major {
                        b * steps + t
                    } else {
                        t * batch + b
                    };
                    for u in 0..pad {
                        let want = u < width
                            && event(hash(k, &[t as u64, b as u64, u as u64]), threshold(0.3));
                        assert_eq!(m[row * pad + u], if want { 1.0 } else { 0.0 });
                    }
                }
            }
        }
    }

    #[test]
    fn scaled_keep_matches_hash() {
        let k = key(7, WEIGHT_DROP, 0, 0);
        let mut m = vec![7.0f64; 5 * 3];
        scaled_keep_into(k, 3, 0.4, &mut m);
        for a in 0..5 {
            for b in 0..3 {
                let e = event(hash(k, &[a, b]), threshold(0.4));
                assert_eq!(
                    m[a as usize * 3 + b as usize],
                    if e { 0.0 } else { 1.0 / 0.6 }
                );
            }
        }
    }
}

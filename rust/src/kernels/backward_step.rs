//! The backward recurrence of one chunk of batch rows over all time steps,
//! last step first: per step, the product of the next step's gate gradients
//! with the packed `w_hh` (dh) fused with the gate derivatives, tile by tile;
//! then dh0.
//!
//! One member of the chunk's team runs it over its range of tiles, meeting the
//! others at a [`SpinBarrier`] after every step when there are others (see
//! `mod.rs`).
//!
//! With a projection (`w_hr`, P × H) a step has two products: dh_t =
//! dy_t + da_{t+1}·w_hh (P wide, depth 4Hp), kept for dW_hr, then dm =
//! dh_t·w_hr (H wide, depth P), which the gate derivatives take as their dh.
//! The second needs all of the first, so a chunk with a projection runs alone
//! (a batch split, `lstm.rs`); see `run_projected`.

use std::ops::Range;

use super::candidate::candidate;
use super::layout::{Geometry, SharedMut, Slots};
use super::microkernel::{
    accumulator_room, accumulators, mrx4v, prefetch_l1, row_x4pv, rows_x4v_kblocked, Rows,
    VectorRoom,
};
use crate::cancel::Cancel;
use crate::error::Result;
use crate::float::Float;
use crate::parallel::barrier::{end_of_step, SpinBarrier};
use crate::simd::{self, load_n, store_n, Kernel, Simd};
use crate::tuning::{BATCH1_PANELS, CACHE_LINE};
use crate::variant::Variant;

/// `d` with the lanes past the real units zeroed: `real` holds each lane's
/// index and the number of real lanes (None: every lane is real).
#[inline(always)]
fn only_real<E: Float, S: Simd<E = E>>(real: Option<(S, S)>, d: S) -> S {
    match real {
        Some((lane, real)) => lane.select_lt(real, d, S::splat(E::ZERO)),
        None => d,
    }
}

/// A chunk's backward state, shared by its team: for each slot of length > 0
/// (a prefix of the slots): the dh_n seed of the row's last step (Pp), the
/// running dc and c0 (c_prev of a first step), Hp each; with zoneout of h,
/// the share of dL/dh_t that goes to h_{t−1} (d ⊙ dL/dh_t, Pp; written at
/// step t, added to the incoming dh at step t − 1 and to dh0; zeros until
/// the row's last step has run), else null.
#[derive(Clone, Copy)]
pub struct BackwardState<E> {
    pub dh_seed: SharedMut<E>,
    pub dc: SharedMut<E>,
    pub c_first: SharedMut<E>,
    pub dh_carry: SharedMut<E>,
}

/// One member's share of a chunk's backward recurrence.
///
/// Two compile-time choices, made once per call: `VARIANT`, the plain LSTM's
/// derivatives (false) or the general ones that read `variant` (zoneout, a
/// mask around either, both apply); `FLOW`, whether each tile also writes the
/// sums of squares of dL/dh_t and dL/dc_t over its units into `flow` (the
/// gradient-flow norms; without it the loop has no trace of them).
pub struct BackwardChunk<'a, E, const VARIANT: bool, const FLOW: bool> {
    pub geo: Geometry,
    pub slots: Slots<'a>,
    /// The forward cache, (T·B) × 4Hp and (T·B) × Hp, caller's layout:
    /// `cells` holds the states c_t (after zoneout with zoneout of c: the
    /// next step's c_{t−1}; the candidate c̃_t is rebuilt from the gates and
    /// c_{t−1}, `kernels/candidate.rs`).
    pub gates: &'a [E],
    pub cells: &'a [E],
    /// `pack::backward_panels` for this ISA's lane count (P outputs).
    pub panels: &'a [E],
    /// `pack::projection_backward_panels` of `w_hr` for this ISA's lane
    /// count, or empty without a projection. Only with `VARIANT`.
    pub proj_panels: &'a [E],
    /// With a projection (else null): dh_t of every (step, row), (T·B) × Pp,
    /// and m_t = o_t ⊙ σ_h(c_t), (T·B) × Hp, for dW_hr after the loop
    /// (written; this chunk's rows).
    pub dh: SharedMut<E>,
    pub m: SharedMut<E>,
    /// (T·B) × P, caller's layout, or None for zeros.
    pub dy: Option<&'a [E]>,
    pub state: BackwardState<E>,
    /// (T·B) × 4Hp gate gradients (written; this chunk's rows, member's units).
    pub da: SharedMut<E>,
    /// B × P (written; this chunk's rows, member's units).
    pub dh0: SharedMut<E>,
    /// Tiles (of 4·LANES hidden units) this member computes.
    pub tiles: Range<usize>,
    /// This member's scratch, made by [`BackwardScratch::new`] for its chunk.
    pub scratch: BackwardScratch,
    pub barrier: Option<&'a SpinBarrier>,
    /// Read once per step: once set, the member stops (with its team) and
    /// leaves dh0 unwritten.
    pub cancel: &'a Cancel,
    /// The variant, peepholes padded to 3·Hp (blocks p_i, p_o, p_f).
    pub variant: Variant<'a, E>,
    /// The cached pre-activations, (T·B) × 4Hp, or empty when the variant
    /// needs none (`Variant::caches_pre`).
    pub pre: &'a [E],
    /// With `FLOW`: (T·B) × tiles × 2 (tiles of 4·LANES units; as many as
    /// the wider of Hp and Pp has), per row and tile the sums of squares of
    /// dh (over P) and dc (over H) over the tile's real units (written; this
    /// chunk's rows, member's tiles; tiles past a width stay 0). `lstm.rs`
    /// adds the tiles in order, so the norms do not depend on how members
    /// share the tiles.
    pub flow: SharedMut<E>,
}

/// One member's scratch: the accumulators of its tiles. The caller allocates
/// it before the threads start (a refused allocation is then an error of the
/// call, not a panic on a pool thread); rows of length 0 get none.
#[derive(Default)]
pub struct BackwardScratch {
    products: Vec<VectorRoom>,
}

impl BackwardScratch {
    /// For a member of the chunk `slots`, with vectors of `lanes` elements of
    /// `E`.
    pub fn new<E>(slots: &Slots<'_>, lanes: usize) -> Result<Self> {
        let what = "the tile accumulators of a chunk";
        let running = slots.active(0);
        Ok(BackwardScratch {
            products: accumulator_room::<E>(running, lanes, what)?,
        })
    }
}

impl<E: Float, const VARIANT: bool, const FLOW: bool> BackwardChunk<'_, E, VARIANT, FLOW> {
    /// Whether h is projected (known at compile time to be false for the
    /// plain LSTM).
    #[inline(always)]
    fn projects(&self) -> bool {
        VARIANT && !self.proj_panels.is_empty()
    }

    /// Recurrent dropout: `acc` (da_{t+1}·W_hh over the state units u0 +
    /// v·LANES) times the keep mask r of batch row `b`, for units below Pp
    /// (docs/variants.md: dh_{t−1} = (dz W_hh) ⊙ r). Unchanged without it.
    #[inline(always)]
    fn drop_recurrent<S: Simd<E = E>>(&self, b: usize, u0: usize, mut acc: [S; 4]) -> [S; 4] {
        let Some(r) = self.variant.recurrent_keep else {
            return acc;
        };
        let pp = self.geo.state_pad;
        let r = &r[b * pp..][..pp];
        for (v, a) in acc.iter_mut().enumerate() {
            let u = u0 + v * S::LANES;
            if u >= pp {
                break;
            }
            // SAFETY: u + LANES ≤ pp inside the mask row.
            *a = a.mul(unsafe { S::load(r.as_ptr().add(u)) });
        }
        acc
    }

    /// Tiles per row of the flow sums: those of the wider of Hp and Pp.
    #[inline(always)]
    fn flow_tiles(&self, w: usize) -> usize {
        self.geo.hidden_pad.max(self.geo.state_pad).div_ceil(4 * w)
    }

    /// dh flowing into iteration `s` for one slot and tile: da_{s+1}·w_hh for
    /// rows that ran at s + 1, else the slot's dh_n seed.
    ///
    /// # Safety
    /// As for `finish`; `panel` is tile `tile`'s panel.
    #[inline(always)]
    unsafe fn seed<S: Simd<E = E>>(&self, slot: usize, tile: usize) -> [S; 4] {
        let hp = self.geo.hidden_pad;
        let u0 = tile * 4 * S::LANES;
        std::array::from_fn(|v| {
            // Lanes past hp are never used (the epilogue stops there).
            let u = (u0 + v * S::LANES).min(hp - S::LANES);
            // SAFETY: u + LANES ≤ hp inside this slot's seed.
            unsafe { S::load(self.state.dh_seed.0.add(slot * hp + u)) }
        })
    }

    /// Asks for what `finish` reads of iteration `s` for tile `tile` of the
    /// first `active` slots (the cached gates, c_t and c_{t−1}, dy, and the da
    /// lines it writes) to come
    /// into the cache: issued before the tile's product, whose panel stream
    /// takes far longer than the lines need to arrive, so that the gate math
    /// after it finds them in L1 or L2 instead of waiting on rows that no
    /// hardware prefetcher predicts (each slot's rows lie 4·Hp apart, a
    /// different stride per cache array). A prefetch never faults; it reads
    /// nothing the program sees, so the bits are unchanged.
    #[inline(always)]
    fn prefetch_finish<S: Simd<E = E>>(&self, s: usize, active: usize, tile: usize) {
        let geo = self.geo;
        let (h, hp, w) = (geo.hidden, geo.hidden_pad, S::LANES);
        let u0 = tile * 4 * w;
        // The tile's units, and the lines they may straddle.
        let bytes = 4 * w * size_of::<E>() + CACHE_LINE - 1;
        for slot in 0..active {
            let (b, len) = (self.slots.rows[slot], self.slots.lens[slot]);
            let row = geo.row(geo.pos(s, len), b);
            let gates = self.gates.as_ptr().wrapping_add(row * 4 * hp + u0);
            for g in 0..4 {
                prefetch_l1(gates.wrapping_add(g * hp).cast(), bytes);
            }
            prefetch_l1(
                self.cells.as_ptr().wrapping_add(row * hp + u0).cast(),
                bytes,
            );
            if s > 0 {
                let prev = geo.row(geo.pos(s - 1, len), b);
                prefetch_l1(
                    self.cells.as_ptr().wrapping_add(prev * hp + u0).cast(),
                    bytes,
                );
            }
            if let Some(dy) = self.dy {
                prefetch_l1(dy.as_ptr().wrapping_add(row * h + u0).cast(), bytes);
            }
            // The da lines `finish` writes: owned before the stores reach them.
            let da = self.da.0.wrapping_add(row * 4 * hp + u0);
            for g in 0..4 {
                prefetch_l1(da.wrapping_add(g * hp).cast_const().cast(), bytes);
            }
        }
    }

    /// Gate derivatives for one slot and tile from the incoming `dh`, writing
    /// da for iteration `s` and updating dc. With a projection `acc` is dm,
    /// dy already in it (`run_projected`), and m is written for dW_hr.
    ///
    /// # Safety
    /// `slot` < slots; `tile` < tiles; no other thread touches this slot's units
    /// of this tile.
    #[inline(always)]
    unsafe fn finish<S: Simd<E = E>>(&self, s: usize, slot: usize, tile: usize, acc: [S; 4]) {
        let geo = self.geo;
        let (h, hp, w) = (geo.hidden, geo.hidden_pad, S::LANES);
        let depth = 4 * hp;
        let one = S::splat(E::ONE);
        let b = self.slots.rows[slot];
        let len = self.slots.lens[slot];
        let row = geo.row(geo.pos(s, len), b);
        let prev_row = (s > 0).then(|| geo.row(geo.pos(s - 1, len), b));
        let mut squares = [S::splat(E::ZERO); 2];
        for (v, &acc_v) in acc.iter().enumerate() {
            let u = tile * 4 * w + v * w;
            if u >= hp {
                break;
            }
            // SAFETY: row, prev_row < T·B and u + w ≤ hp: all cache, da, state
            // (the dh carry too, Pp = Hp here) and zoneout mask accesses are in
            // bounds; dy gets only its real lanes. These units of this slot
            // belong to this member alone.
            unsafe {
                let mut dh = acc_v;
                // Zoneout of h without a projection (with one, `run_projected`
                // splits dh_t): what step t + 1 passed to h_t directly, then
                // the split of the whole dL/dh_t.
                let zone_h = !self.projects() && self.variant.zoneout_h.is_on();
                let carry = self.state.dh_carry.0.wrapping_add(slot * hp + u);
                if zone_h {
                    dh = dh.add(S::load(carry));
                }
                if let (false, Some(dy)) = (self.projects(), self.dy) {
                    dh = dh.add(load_n(
                        dy.as_ptr().add(row * h + u.min(h)),
                        h.saturating_sub(u).min(w),
                    ));
                }
                let dh_whole = dh;
                if zone_h {
                    let (kept, new) = self.variant.zoneout_h.split(row, hp, u, dh);
                    kept.store(carry);
                    dh = new;
                }
                let gp = self.gates.as_ptr().add(row * depth + u);
                let (ig, fg, gg, og) = (
                    S::load(gp),
                    S::load(gp.add(hp)),
                    S::load(gp.add(2 * hp)),
                    S::load(gp.add(3 * hp)),
                );
                // The state c_{t−1} (after zoneout when there is zoneout of c).
                let c_prev = match prev_row {
                    Some(pr) => S::load(self.cells.as_ptr().add(pr * hp + u)),
                    None => S::load(self.state.c_first.0.add(slot * hp + u)),
                };
                // The cell the step computed: with zoneout of c the candidate
                // c̃_t, rebuilt with the forward's own operation (the same
                // bits); else the cached c_t.
                let c = if self.variant.zoneout_c.is_on() {
                    candidate(ig, fg, gg, c_prev)
                } else {
                    S::load(self.cells.as_ptr().add(row * hp + u))
                };
                let dc_ptr = self.state.dc.0.add(slot * hp + u);
                let (da_i, da_f, da_g, da_o, dc) = if VARIANT {
                    let gates = [ig, fg, gg, og];
                    self.variant_derivatives(dh, gates, c, c_prev, dc_ptr, row, u)
                } else {
                    let tc = simd::tanh(c);
                    // Zoneout of c: what came back to c_t splits into the
                    // share of c_{t−1} and that of the candidate c̃_t.
                    let zone_c = self.variant.zoneout_c;
                    let (dc_kept, dc_next) = zone_c.split(row, hp, u, S::load(dc_ptr));
                    // dc = dc_next + dh·o·(1 − tanh²c)
                    let dc = dh.mul(og).mul(one.sub(tc.mul(tc))).add(dc_next);
                    let da_o = dh.mul(tc).mul(og).mul(one.sub(og));
                    let da_i = dc.mul(gg).mul(ig).mul(one.sub(ig));
                    let da_g = dc.mul(ig).mul(one.sub(gg.mul(gg)));
                    let da_f = dc.mul(c_prev).mul(fg).mul(one.sub(fg));
                    let dc_prev = dc.mul(fg);
                    let dc_prev = if zone_c.is_on() {
                        dc_prev.add(dc_kept)
                    } else {
                        dc_prev
                    };
                    dc_prev.store(dc_ptr);
                    (da_i, da_f, da_g, da_o, dc)
                };
                // Padded units carry no weight, but their gates see 0·inf = NaN
                // when h holds an infinity; their da must be exactly zero so
                // that nothing reaches the real units through the products.
                let real = (u + w > h).then(|| {
                    let real = S::splat(E::from_f64(h.saturating_sub(u) as f64));
                    let index: [E; 16] = std::array::from_fn(|i| E::from_f64(i as f64));
                    (S::load(index.as_ptr()), real)
                });
                // A function, not a closure mapped over an array: a closure is
                // compiled without the ISA's target features, so its vector
                // operations would not inline (measured: out-of-line calls at
                // every tile).
                let (da_i, da_f, da_g, da_o) = (
                    only_real(real, da_i),
                    only_real(real, da_f),
                    only_real(real, da_g),
                    only_real(real, da_o),
                );
                let dp = self.da.0.add(row * depth + u);
                da_i.store(dp);
                da_f.store(dp.add(hp));
                da_g.store(dp.add(2 * hp));
                da_o.store(dp.add(3 * hp));
                if FLOW {
                    let (dh, dc) = (only_real(real, dh_whole), only_real(real, dc));
                    squares[0] = dh.mul_add(dh, squares[0]);
                    squares[1] = dc.mul_add(dc, squares[1]);
                }
            }
        }
        if FLOW {
            // Lanes added in order: the tile's sums are the same whichever
            // member computes it. With a projection dh's sums are over P
            // (`run_projected`), not over this tile's H units.
            let tiles = self.flow_tiles(w);
            let first = usize::from(self.projects());
            for (k, sq) in squares.into_iter().enumerate().skip(first) {
                let mut lanes = [E::ZERO; 16];
                // SAFETY: LANES ≤ 16; the flow buffer holds (T·B) × tiles × 2
                // and this member alone writes this row's entry of this tile.
                unsafe {
                    sq.store(lanes.as_mut_ptr());
                    let sum = lanes[..w].iter().fold(E::ZERO, |a, &b| a + b);
                    *self.flow.0.add((row * tiles + tile) * 2 + k) = sum;
                }
            }
        }
    }

    /// The general derivatives (docs/variants.md, 'Backward through time')
    /// for one vector of units: returns da_i, da_f, da_g, da_o and dc (the
    /// whole dL/dc_t) and stores what goes back to c_{t−1} at `dc_ptr`.
    ///
    /// # Safety
    /// As for `finish`; `dc_ptr` is this slot's dc at unit `u`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn variant_derivatives<S: Simd<E = E>>(
        &self,
        dh: S,
        [ig, fg, gg, og]: [S; 4],
        c: S,
        c_prev: S,
        dc_ptr: *mut E,
        row: usize,
        u: usize,
    ) -> (S, S, S, S, S) {
        let v = &self.variant;
        let hp = self.geo.hidden_pad;
        let zero = S::splat(E::ZERO);
        let clamp = |z: S| match v.clip {
            Some(c) => z.clamp(S::splat(E::ZERO - c), S::splat(c)),
            None => z,
        };
        // The gradient through the clamp: zero where |z| > clip.
        let through = |d: S, z: S| match v.clip {
            Some(c) => S::splat(c).select_lt(z.abs(), zero, d),
            None => d,
        };
        // SAFETY: row < T·B and u + LANES ≤ hp: inside the pre-activation
        // cache (when kept), the padded peepholes, the zoneout mask of c (when
        // drawn) and this slot's dc.
        unsafe {
            let z = |k: usize| {
                if self.pre.is_empty() {
                    zero // never read: the activations need no input (caches_pre)
                } else {
                    S::load(self.pre.as_ptr().add(row * 4 * hp + k * hp + u))
                }
            };
            let pp = v.peepholes.unwrap_or(&[]).as_ptr();
            let peep = |k: usize| S::load(pp.add(k * hp + u));
            let hc = v.h.apply(c);
            if !self.m.0.is_null() {
                // m_t = o_t ⊙ σ_h(c_t), as forward computed it, for dW_hr.
                og.mul(hc).store(self.m.0.add(row * hp + u));
            }
            let z_o = z(3);
            let da_o = through(v.f.backprop(dh.mul(hc), clamp(z_o), og), z_o);
            // Zoneout of c: what came back to c_t splits into the share of
            // c_{t−1} (added below) and that of the candidate c̃_t.
            let (dc_kept, dc_next) = v.zoneout_c.split(row, hp, u, S::load(dc_ptr));
            let mut dc = v.h.backprop(dh.mul(og), c, hc).add(dc_next);
            if v.peepholes.is_some() {
                dc = dc.add(da_o.mul(peep(1)));
            }
            let mut di = dc.mul(gg);
            if v.input_forget {
                di = di.sub(dc.mul(c_prev));
            }
            let z_i = z(0);
            let da_i = through(v.f.backprop(di, clamp(z_i), ig), z_i);
            let z_g = z(2);
            let da_g = through(v.g.backprop(dc.mul(ig), clamp(z_g), gg), z_g);
            let da_f = if v.forget_gate && !v.input_forget {
                let z_f = z(1);
                through(v.f.backprop(dc.mul(c_prev), clamp(z_f), fg), z_f)
            } else {
                zero // f does not depend on its rows of the weights
            };
            let mut dc_prev = dc.mul(fg);
            if v.peepholes.is_some() {
                dc_prev = dc_prev.add(da_i.mul(peep(0))).add(da_f.mul(peep(2)));
            }
            if v.zoneout_c.is_on() {
                dc_prev = dc_prev.add(dc_kept);
            }
            dc_prev.store(dc_ptr);
            (da_i, da_f, da_g, da_o, dc)
        }
    }
}

impl<E: Float, const VARIANT: bool, const FLOW: bool> Kernel<E>
    for BackwardChunk<'_, E, VARIANT, FLOW>
{
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(mut self) {
        if self.projects() {
            return self.run_projected::<S>();
        }
        let geo = self.geo;
        let (h, hp, w) = (geo.hidden, geo.hidden_pad, S::LANES);
        let width = 4 * w;
        let depth = 4 * hp;
        let stride = depth * width; // one panel
        let n_tiles = hp.div_ceil(width);
        assert_eq!(
            self.panels.len(),
            n_tiles * stride,
            "backward panels packed for another ISA"
        );
        assert!(self.tiles.end <= n_tiles);
        let rows_total = geo.steps * geo.batch;
        assert!(self.gates.len() >= rows_total * depth && self.cells.len() >= rows_total * hp);
        let da_row = |slot: usize, s: usize| -> *const E {
            let row = geo.row(geo.pos(s, self.slots.lens[slot]), self.slots.rows[slot]);
            // SAFETY: row < T·B; da holds (T·B) × depth elements.
            unsafe { self.da.0.add(row * depth) }
        };
        let panel = |q: usize| self.panels[q * stride..].as_ptr();
        let mut scratch = std::mem::take(&mut self.scratch);
        let products = accumulators::<S>(&mut scratch.products);
        assert!(products.len() >= self.slots.active(0));

        let mut prev_active = 0; // slots that ran at iteration s + 1
        for s in (0..geo.steps).rev() {
            let active = self.slots.active(s);
            if active == 1 && prev_active == 1 {
                // One row: latency-bound, so several panels at a time
                // (BATCH1_PANELS, 4 chains each).
                let b0 = self.slots.rows[0];
                let mut q = self.tiles.start;
                while q < self.tiles.end {
                    // SAFETY: slot 0's da row of iteration s + 1 is whole and
                    // was finished before the barrier; panels hold depth ×
                    // width (asserted); `finish` gets slot 0 and our tiles.
                    unsafe {
                        let da = da_row(0, s + 1);
                        if q + BATCH1_PANELS <= self.tiles.end {
                            let panels = std::array::from_fn(|i| panel(q + i));
                            let acc = row_x4pv::<S, BATCH1_PANELS>(da, 1, depth, panels);
                            for (i, acc) in acc.into_iter().enumerate() {
                                let acc = self.drop_recurrent(b0, (q + i) * width, acc);
                                self.finish::<S>(s, 0, q + i, acc);
                            }
                            q += BATCH1_PANELS;
                        } else if q + 1 < self.tiles.end {
                            let [acc0, acc1] =
                                row_x4pv::<S, 2>(da, 1, depth, [panel(q), panel(q + 1)]);
                            let acc0 = self.drop_recurrent(b0, q * width, acc0);
                            let acc1 = self.drop_recurrent(b0, (q + 1) * width, acc1);
                            self.finish::<S>(s, 0, q, acc0);
                            self.finish::<S>(s, 0, q + 1, acc1);
                            q += 2;
                        } else {
                            let [acc] = row_x4pv::<S, 1>(da, 1, depth, [panel(q)]);
                            let acc = self.drop_recurrent(b0, q * width, acc);
                            self.finish::<S>(s, 0, q, acc);
                            q += 1;
                        }
                    }
                }
            } else {
                // The da rows in place: a copy made one element at a time
                // (to give the tiles' broadcasts one stream instead of MR)
                // cost more than it gained.
                let a = Rows(move |r| da_row(r, s + 1));
                for q in self.tiles.clone() {
                    self.prefetch_finish::<S>(s, active, q);
                    // SAFETY: `a` gives the whole da rows (depth each) of the
                    // slots that ran at s + 1, finished before the barrier;
                    // the others start from
                    // their dh_n seed; `finish` gets running slots and our tiles.
                    unsafe {
                        rows_x4v_kblocked::<S>(prev_active, a, depth, panel(q), products);
                        for (slot, &product) in products[..active].iter().enumerate() {
                            let acc = if slot < prev_active {
                                self.drop_recurrent(self.slots.rows[slot], q * width, product)
                            } else {
                                self.seed::<S>(slot, q)
                            };
                            self.finish::<S>(s, slot, q, acc);
                        }
                    }
                }
            }
            if end_of_step(self.barrier, self.cancel) {
                return;
            }
            prev_active = active;
        }

        // dh0 = da of each row's first step · w_hh. Rows of length 0 are the
        // caller's (their dh0 is their dh_n seed).
        let running = self.slots.active(0);
        for (slot, &b) in self.slots.rows[..running].iter().enumerate() {
            for t in self.tiles.clone() {
                let u0 = t * width;
                // SAFETY: dh0 is B × H; this member writes only its units of row
                // b, whose chunk is this one; the da row and panel are whole;
                // the dh carry is read below hp only.
                unsafe {
                    let acc = mrx4v::<S, 1>([da_row(slot, 0)], 1, depth, panel(t))[0];
                    let acc = self.drop_recurrent(b, u0, acc);
                    for (v, acc_v) in acc.into_iter().enumerate() {
                        let u = u0 + v * w;
                        let acc_v = if self.variant.zoneout_h.is_on() && u < hp {
                            // Zoneout: step 0's share of h0.
                            acc_v.add(S::load(self.state.dh_carry.0.add(slot * hp + u)))
                        } else {
                            acc_v
                        };
                        store_n(
                            acc_v,
                            self.dh0.0.add(b * h + u.min(h)),
                            h.saturating_sub(u).min(w),
                        );
                    }
                }
            }
        }
    }
}

impl<E: Float, const VARIANT: bool, const FLOW: bool> BackwardChunk<'_, E, VARIANT, FLOW> {
    /// The chunk's time loop with a projection (one member, all tiles): per
    /// step, dh_t = da_{t+1}·w_hh (or the dh_n seed) + dy_t over the P state
    /// units, stored for dW_hr with its flow sums; then dm = dh_t·w_hr over
    /// the H units, which `finish` takes as its dh. Then dh0 = da_0·w_hh.
    ///
    /// Inlined into `run`: only there is the code compiled with the ISA's
    /// target features (otherwise every intrinsic becomes a call).
    #[inline(always)]
    fn run_projected<S: Simd<E = E>>(mut self) {
        let geo = self.geo;
        let (hp, p, pp, w) = (geo.hidden_pad, geo.state, geo.state_pad, S::LANES);
        let width = 4 * w;
        let depth = 4 * hp;
        let stride = depth * width; // one panel of w_hh
        let p_tiles = pp.div_ceil(width);
        let h_tiles = hp.div_ceil(width);
        let proj_stride = p * width; // one panel of w_hr
        assert_eq!(
            self.panels.len(),
            p_tiles * stride,
            "backward panels packed for another ISA"
        );
        assert_eq!(
            self.proj_panels.len(),
            h_tiles * proj_stride,
            "projection panels packed for another ISA"
        );
        assert!(
            self.tiles == (0..h_tiles) && self.barrier.is_none(),
            "a chunk with a projection runs alone"
        );
        assert!(!self.dh.0.is_null() && !self.m.0.is_null());
        let rows_total = geo.steps * geo.batch;
        assert!(self.gates.len() >= rows_total * depth && self.cells.len() >= rows_total * hp);
        assert!(self.dy.is_none_or(|dy| dy.len() == rows_total * p));
        let flow_tiles = self.flow_tiles(w);
        let row_of = |slot: usize, s: usize| {
            geo.row(geo.pos(s, self.slots.lens[slot]), self.slots.rows[slot])
        };
        let panel = |q: usize| self.panels[q * stride..].as_ptr();
        let proj_panel = |q: usize| self.proj_panels[q * proj_stride..].as_ptr();
        let mut scratch = std::mem::take(&mut self.scratch);
        let products = accumulators::<S>(&mut scratch.products);
        let running = self.slots.active(0);
        assert!(products.len() >= running);
        // Lanes of a vector at unit u that are real state units (< P).
        let index: [E; 16] = std::array::from_fn(|i| E::from_f64(i as f64));
        let only_real = |d: S, u: usize| {
            if u + w > p {
                let real = S::splat(E::from_f64(p.saturating_sub(u) as f64));
                // SAFETY: LANES ≤ 16 elements of `index`.
                let lane = unsafe { S::load(index.as_ptr()) };
                lane.select_lt(real, d, S::splat(E::ZERO))
            } else {
                d
            }
        };

        let mut prev_active = 0; // slots that ran at iteration s + 1
        for s in (0..geo.steps).rev() {
            let active = self.slots.active(s);
            let da = self.da.0 as *const E;
            let a = Rows(move |r| da.wrapping_add(row_of(r, s + 1) * depth));
            for q in 0..p_tiles {
                // SAFETY: rows that ran at s + 1 have whole da rows (depth
                // each), written by this member at the previous iteration;
                // panel q holds depth rows of 4·w (asserted).
                unsafe { rows_x4v_kblocked::<S>(prev_active, a, depth, panel(q), products) };
                for (slot, product) in products[..active].iter().enumerate() {
                    let row = row_of(slot, s);
                    let product = &self.drop_recurrent(self.slots.rows[slot], q * width, *product);
                    let mut squares = S::splat(E::ZERO);
                    for (v, &product_v) in product.iter().enumerate() {
                        let u = q * width + v * w;
                        if u >= pp {
                            break;
                        }
                        // SAFETY: u + w ≤ pp inside the slot's seed, its dh
                        // carry, the zoneout mask's row and the dh row (row <
                        // T·B, this chunk's); dy gets only its real lanes of
                        // its row.
                        unsafe {
                            let mut dh = if slot < prev_active {
                                product_v
                            } else {
                                S::load(self.state.dh_seed.0.add(slot * pp + u))
                            };
                            let zone_h = self.variant.zoneout_h;
                            let carry = self.state.dh_carry.0.wrapping_add(slot * pp + u);
                            if zone_h.is_on() {
                                // What step t + 1 passed to h_t directly.
                                dh = dh.add(S::load(carry));
                            }
                            if let Some(dy) = self.dy {
                                dh = dh.add(load_n(
                                    dy.as_ptr().add(row * p + u.min(p)),
                                    p.saturating_sub(u).min(w),
                                ));
                            }
                            // Zoneout of h: the candidate's share goes on to
                            // dm and dW_hr, the rest to h_{t−1}.
                            let mut dh_step = dh;
                            if zone_h.is_on() {
                                let (kept, new) = zone_h.split(row, pp, u, dh);
                                kept.store(carry);
                                dh_step = new;
                            }
                            dh_step.store(self.dh.0.add(row * pp + u));
                            if FLOW {
                                let d = only_real(dh, u);
                                squares = d.mul_add(d, squares);
                            }
                        }
                    }
                    if FLOW {
                        let mut lanes = [E::ZERO; 16];
                        // SAFETY: LANES ≤ 16; the flow buffer holds (T·B) ×
                        // flow_tiles × 2, q < flow_tiles, and this chunk alone
                        // writes this row.
                        unsafe {
                            squares.store(lanes.as_mut_ptr());
                            let sum = lanes[..w].iter().fold(E::ZERO, |a, &b| a + b);
                            *self.flow.0.add((row * flow_tiles + q) * 2) = sum;
                        }
                    }
                }
            }
            // dm = dh_t·w_hr, into the gate derivatives.
            let dh = self.dh.0 as *const E;
            let a = Rows(move |r| dh.wrapping_add(row_of(r, s) * pp));
            for q in 0..h_tiles {
                // SAFETY: the running slots' dh rows (pp ≥ p each) were written
                // just above; panel q holds p rows of 4·w (asserted); `finish`
                // gets running slots and this member's (all) tiles.
                unsafe {
                    rows_x4v_kblocked::<S>(active, a, p, proj_panel(q), products);
                    for (slot, &acc) in products[..active].iter().enumerate() {
                        self.finish::<S>(s, slot, q, acc);
                    }
                }
            }
            if end_of_step(None, self.cancel) {
                return;
            }
            prev_active = active;
        }

        // dh0 = da of each row's first step · w_hh, P wide. Rows of length 0
        // are the caller's (their dh0 is their dh_n seed).
        for (slot, &b) in self.slots.rows[..running].iter().enumerate() {
            for q in 0..p_tiles {
                let u0 = q * width;
                // SAFETY: dh0 is B × P; this chunk alone writes row b; the da
                // row and panel are whole; the dh carry is read below pp only.
                unsafe {
                    let da = self.da.0.add(row_of(slot, 0) * depth) as *const E;
                    let acc = mrx4v::<S, 1>([da], 1, depth, panel(q))[0];
                    let acc = self.drop_recurrent(b, u0, acc);
                    for (v, acc_v) in acc.into_iter().enumerate() {
                        let u = u0 + v * w;
                        let acc_v = if self.variant.zoneout_h.is_on() && u < pp {
                            // Zoneout: step 0's share of h0.
                            acc_v.add(S::load(self.state.dh_carry.0.add(slot * pp + u)))
                        } else {
                            acc_v
                        };
                        store_n(
                            acc_v,
                            self.dh0.0.add(b * p + u.min(p)),
                            p.saturating_sub(u).min(w),
                        );
                    }
                }
            }
        }
    }
}

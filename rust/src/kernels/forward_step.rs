//! The forward recurrence of one chunk of batch rows over all time steps: per
//! step, the product of h with the packed `w_hh` fused with the gate math and
//! the c/h update, tile by tile, so each tile of gates is finished while it is
//! still in registers. The input projection `x·w_ihᵀ` runs inside the loop, a
//! block of steps at a time.
//!
//! One member of the chunk's team runs it over its range of tiles, meeting the
//! others at a [`SpinBarrier`] after every step when there are others (see
//! `mod.rs`).
//!
//! With a projection (`w_hr`, P × H), the tiles write m = o ⊙ σ_h(c) (H wide)
//! instead of h, and after the tiles of a step h_t = m_t·W_hrᵀ (P wide, depth
//! H) runs on the same register tile over panels of `w_hr`, one FMA chain per
//! output in k order: the same bits for any grouping of rows. That product
//! needs every tile's m, so a chunk with a projection runs alone (`lstm.rs`
//! gives such a pass a batch split: teams of one, no barrier).

use std::ops::Range;

use super::bf16_dot;
use super::candidate::candidate;
use super::layout::{Geometry, SharedMut, Slots};
use super::microkernel::{
    accumulator_room, accumulators, pack_rows, row_x4pv_with, rows_per_group, rows_x4v_kblocked,
    rows_x4v_kblocked_of, PackedRows, PanelWeight, RowGroups, Rows, VectorRoom,
};
use crate::alloc;
use crate::cancel::Cancel;
use crate::error::Result;
use crate::float::Float;
use crate::parallel::barrier::{end_of_step, SpinBarrier};
use crate::simd::{self, store_n, Bf16, Kernel, Simd, SimdElement};
use crate::tuning::{BATCH1_PANELS, BATCH1_PREFETCH_BYTES, PROJECTION_ROWS};
use crate::variant::Variant;

/// Outputs of the forward pass for the whole batch (chunks write their rows).
#[derive(Clone, Copy)]
pub struct ForwardOut<E> {
    /// (T·B) × P in the caller's layout.
    pub y: SharedMut<E>,
    /// Null without a cache; else (T·B) × 4Hp, × Hp, × Pp in the caller's
    /// layout. `cells` holds the state c_t, after zoneout with zoneout of c
    /// (backward rebuilds the candidate c̃_t: `kernels/candidate.rs`).
    pub gates: SharedMut<E>,
    pub cells: SharedMut<E>,
    pub h_prev: SharedMut<E>,
    /// Null unless the cache holds pre-activations (`Variant::caches_pre`);
    /// else (T·B) × 4Hp, z of the gates i, f, g, o (peepholes added, before
    /// clip).
    pub pre: SharedMut<E>,
}

/// A chunk's running state, shared by the chunk's team: for each slot of
/// length > 0 (a prefix of the slots): two h buffers of Pp (every tile reads
/// the old h while the new one is written), c of Hp, and with a projection m
/// of Hp (this step's o ⊙ σ_h(c), the input of the projection; null without).
/// Slot r's h after iteration s is in `h[(s + 1) % 2]`; h0 goes in `h[0]`.
#[derive(Clone, Copy)]
pub struct ForwardState<E> {
    pub h: [SharedMut<E>; 2],
    pub c: SharedMut<E>,
    pub m: SharedMut<E>,
}

/// One member's share of a chunk's forward recurrence: its tiles of hidden
/// units, for every slot and step.
///
/// `VARIANT` chooses the gate math at compile time: false, the plain LSTM's
/// (`variant` is then the default but for `recurrent_keep` and zoneout, masks
/// around the gate math that both bodies apply, read once per tile); true,
/// the general body
/// that reads `variant` (see `variant.rs`). `W` is what the panels of `w_hh`
/// hold: elements, or bfloat16 for bf16 inference (`simd/bf16.rs`).
pub struct ForwardChunk<'a, E, const VARIANT: bool, W = E> {
    pub geo: Geometry,
    pub slots: Slots<'a>,
    /// (T·B) × I in the caller's layout, and `pack::forward_panels` of `w_ih`
    /// (4H × I) for this ISA's lane count: each member projects its own units,
    /// a block of steps at a time (see `run`), with the recurrence's register
    /// tile, so a row's projection is the same FMA chain however many rows a
    /// block has.
    pub x: &'a [E],
    pub input: usize,
    pub ih_panels: &'a [E],
    /// With `bf16_dot`, `PanelCache::forward_bf16_pairs` of `w_ih` in place
    /// of `ih_panels` (empty then); empty otherwise.
    pub ih_pairs: &'a [Bf16],
    /// 4Hp.
    pub bias: &'a [E],
    /// `pack::forward_panels` of `w_hh` (depth P) for this ISA's lane count
    /// (in bfloat16: `PanelCache::forward_bf16`, or with `bf16_dot`
    /// `PanelCache::forward_bf16_pairs`).
    pub panels: &'a [W],
    /// Whether the recurrent product runs on the BF16 dot products
    /// (`kernels/bf16_dot.rs`; bf16 inference on the `avx512bf16` ISA): then
    /// `W` is [`Bf16`], `E` f32, the panels are pairs of depths, and h is
    /// rounded to bfloat16 as the product's operand.
    pub bf16_dot: bool,
    /// `pack::projection_panels` of `w_hr` for this ISA's lane count, or
    /// empty without a projection. Only with `VARIANT`.
    pub proj_panels: &'a [E],
    pub state: ForwardState<E>,
    pub out: ForwardOut<E>,
    /// Tiles (of LANES hidden units) this member computes.
    pub tiles: Range<usize>,
    /// This member's scratch, made by [`ForwardScratch::new`] for its tiles.
    pub scratch: ForwardScratch<E>,
    /// Met after every step when the team has more than one member.
    pub barrier: Option<&'a SpinBarrier>,
    /// Read once per step: once set, the member stops (with its team).
    pub cancel: &'a Cancel,
    /// The variant, peepholes padded to 3·Hp (blocks p_i, p_o, p_f).
    pub variant: Variant<'a, E>,
}

impl<E: Float, const VARIANT: bool, W> ForwardChunk<'_, E, VARIANT, W> {
    /// Whether h is projected (known at compile time to be false for the
    /// plain LSTM).
    #[inline(always)]
    fn projects(&self) -> bool {
        VARIANT && !self.proj_panels.is_empty()
    }

    /// Recurrent dropout's keep mask of batch row `b` (Pp wide), or None.
    #[inline(always)]
    fn recurrent_keep(&self, b: usize) -> Option<*const E> {
        let pp = self.geo.state_pad;
        self.variant
            .recurrent_keep
            .map(|r| r[b * pp..][..pp].as_ptr())
    }

    /// The training cache's entries of one slot's tile, when a cache is kept:
    /// the gates i, f, g, o, c and, with `h_prev`, h_{t−1} (with recurrent
    /// dropout h_{t−1} ⊙ r, the recurrent product's operand and dW_hh's).
    ///
    /// # Safety
    /// `slot` < slots, `row` < T·B, `u0` + LANES ≤ Hp, `cur` the state's h_{t−1}.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn cache_tile<S: Simd<E = E>>(
        &self,
        [ig, fg, gg, og]: [S; 4],
        c: S,
        slot: usize,
        row: usize,
        u0: usize,
        cur: *const E,
        h_prev: bool,
    ) {
        let (out, hp) = (self.out, self.geo.hidden_pad);
        if out.gates.0.is_null() {
            return;
        }
        // SAFETY: row < T·B and u0 + LANES ≤ Hp (the caller's contract): inside
        // the caches ((T·B) × 4Hp and (T·B) × Hp), the state (slots × Hp) and
        // the dropout masks (B × Pp).
        unsafe {
            let gp = out.gates.0.add(row * 4 * hp + u0);
            ig.store(gp);
            fg.store(gp.add(hp));
            gg.store(gp.add(2 * hp));
            og.store(gp.add(3 * hp));
            c.store(out.cells.0.add(row * hp + u0));
            if h_prev {
                let mut h_prev = S::load(cur.add(slot * hp + u0));
                if let Some(r) = self.recurrent_keep(self.slots.rows[slot]) {
                    h_prev = h_prev.mul(S::load(r.add(u0)));
                }
                h_prev.store(out.h_prev.0.add(row * hp + u0));
            }
        }
    }

    /// Gate math, c/h update and stores for one slot and one tile, given the
    /// tile's recurrent products `acc` (gates i, f, g, o). With a projection
    /// the tile's m goes to the state's m, and h is made by `project_state`.
    ///
    /// # Safety
    /// `slot` < slots, `tile` < Hp / LANES, the state and output pointers as
    /// documented on their types, and no other thread touching this slot's
    /// units of this tile.
    #[inline(always)]
    unsafe fn finish<S: Simd<E = E>>(
        &self,
        s: usize,
        slot: usize,
        tile: usize,
        acc: [S; 4],
        xw: &Projection<E>,
    ) {
        let geo = self.geo;
        let (h, hp, w) = (geo.hidden, geo.hidden_pad, S::LANES);
        let u0 = tile * w;
        let b = self.slots.rows[slot];
        let row = geo.row(geo.pos(s, self.slots.lens[slot]), b);
        let (cur, next) = (self.state.h[s % 2].0, self.state.h[(s + 1) % 2].0);
        let out = self.out;
        // SAFETY: row < T·B and u0 + w ≤ hp: every padded access is inside the
        // projection block, bias, the state (slots × Hp), the caches and the
        // zoneout masks ((T·B) × Hp, Pp = Hp without a projection); y gets
        // only its real lanes. This slot's units of this tile are written by
        // this member only.
        unsafe {
            let (xw, xw_stride) = (xw.at(s, slot, u0), xw.lanes);
            let bias = self.bias.as_ptr().add(u0);
            let pre = |g: usize| {
                acc[g]
                    .add(S::load(xw.add(g * xw_stride)))
                    .add(S::load(bias.add(g * hp)))
            };
            let c_ptr = self.state.c.0.add(slot * hp + u0);
            let (ig, fg, gg, og, c_new, h_new) = if VARIANT {
                self.variant_gates(pre, c_ptr, row, u0)
            } else {
                let ig = simd::sigmoid(pre(0));
                let fg = simd::sigmoid(pre(1));
                let gg = simd::tanh(pre(2));
                let og = simd::sigmoid(pre(3));
                let c_new = fg.mul_add(S::load(c_ptr), ig.mul(gg));
                let h_new = og.mul(simd::tanh(c_new));
                (ig, fg, gg, og, c_new, h_new)
            };
            // Zoneout: the state keeps c_{t−1} where the mask says so. The
            // cache keeps the state; backward rebuilds the candidate `c_new`
            // from it and the gates (`kernels/candidate.rs`).
            let c_state = if self.variant.zoneout_c.is_on() {
                self.variant
                    .zoneout_c
                    .mix(row, hp, u0, S::load(c_ptr), c_new)
            } else {
                c_new
            };
            c_state.store(c_ptr);
            let projects = self.projects();
            if projects {
                // m, the projection's input (`h_new` is o ⊙ σ_h(c) here).
                h_new.store(self.state.m.0.add(slot * hp + u0));
            } else {
                let h_new = if self.variant.zoneout_h.is_on() {
                    let h_prev = S::load(cur.add(slot * hp + u0));
                    self.variant.zoneout_h.mix(row, hp, u0, h_prev, h_new)
                } else {
                    h_new
                };
                h_new.store(next.add(slot * hp + u0));
                store_n(
                    h_new,
                    out.y.0.add(row * h + u0.min(h)),
                    h.saturating_sub(u0).min(w),
                );
            }
            // With a projection h_{t−1} is cached by `project_state`.
            self.cache_tile([ig, fg, gg, og], c_state, slot, row, u0, cur, !projects);
        }
    }

    /// The plain LSTM's `finish` for N (slot, tile) pairs at once: the gate
    /// math runs on [`Wide`] vectors, each operation on the N pairs in turn,
    /// so N independent dependency chains (exp, division, tanh of c) overlap
    /// instead of each pair's running on its own at the chain's latency (batch
    /// 1's tiles; more rows run `finish_staged`). The same operations on every
    /// element as `finish`: the same bits.
    ///
    /// # Safety
    /// As for `finish`, for every pair; the pairs are distinct.
    #[inline(always)]
    unsafe fn finish_plain<S: Simd<E = E>, const N: usize>(
        &self,
        s: usize,
        at: [(usize, usize); N],
        acc: [[S; 4]; N],
        xw: &Projection<E>,
    ) {
        let geo = self.geo;
        let (h, hp, w) = (geo.hidden, geo.hidden_pad, S::LANES);
        let (cur, next) = (self.state.h[s % 2].0, self.state.h[(s + 1) % 2].0);
        let out = self.out;
        // Plain loops, not `array::map` (see `Wide`).
        let (mut u0, mut rows) = ([0; N], [0; N]);
        for i in 0..N {
            let (slot, tile) = at[i];
            u0[i] = tile * w;
            rows[i] = geo.row(geo.pos(s, self.slots.lens[slot]), self.slots.rows[slot]);
        }
        // SAFETY: as in `finish`, for each pair (row < T·B, u0 + w ≤ hp).
        unsafe {
            let zero = S::splat(E::ZERO);
            let mut pre = [Wide([zero; N]); 4];
            let mut c_prev = Wide([zero; N]);
            for i in 0..N {
                let xw_at = xw.at(s, at[i].0, u0[i]);
                let bias = self.bias.as_ptr().add(u0[i]);
                for (g, pre) in pre.iter_mut().enumerate() {
                    pre.0[i] = acc[i][g]
                        .add(S::load(xw_at.add(g * xw.lanes)))
                        .add(S::load(bias.add(g * hp)));
                }
                c_prev.0[i] = S::load(self.state.c.0.add(at[i].0 * hp + u0[i]));
            }
            let pre = |g: usize| pre[g];
            let ig = simd::sigmoid(pre(0));
            let fg = simd::sigmoid(pre(1));
            let gg = simd::tanh(pre(2));
            let og = simd::sigmoid(pre(3));
            let c_new = fg.mul_add(c_prev, ig.mul(gg));
            let h_new = og.mul(simd::tanh(c_new));
            let zone = &self.variant;
            for i in 0..N {
                let (slot, row, u0) = (at[i].0, rows[i], u0[i]);
                let (c_state, mut h_state) = (c_new.0[i], h_new.0[i]);
                let c_state = if zone.zoneout_c.is_on() {
                    zone.zoneout_c.mix(row, hp, u0, c_prev.0[i], c_state)
                } else {
                    c_state
                };
                if zone.zoneout_h.is_on() {
                    let h_prev = S::load(cur.add(slot * hp + u0));
                    h_state = zone.zoneout_h.mix(row, hp, u0, h_prev, h_state);
                }
                c_state.store(self.state.c.0.add(slot * hp + u0));
                h_state.store(next.add(slot * hp + u0));
                store_n(
                    h_state,
                    out.y.0.add(row * h + u0.min(h)),
                    h.saturating_sub(u0).min(w),
                );
                let gates = [ig.0[i], fg.0[i], gg.0[i], og.0[i]];
                self.cache_tile(gates, c_state, slot, row, u0, cur, true);
            }
        }
    }

    /// The plain LSTM's `finish` for every running slot of one tile, in two
    /// passes over the slots: first the four gates and the new c of each slot
    /// (o kept in `acc`, c in the state), then h = o ⊙ tanh(c) of each. A
    /// slot's math is one long dependency chain (exp, a division, then tanh of
    /// the c they make); split in two short ones per slot, each pass's
    /// iterations are independent and the out-of-order window overlaps
    /// several slots' chains at once, with no more live registers than one
    /// slot's. The same operations on every element as `finish`: the same
    /// bits.
    ///
    /// # Safety
    /// As for `finish`, for every slot below `acc.len()` (the running slots).
    #[inline(always)]
    unsafe fn finish_staged<S: Simd<E = E>>(
        &self,
        s: usize,
        tile: usize,
        acc: &mut [[S; 4]],
        xw: &Projection<E>,
    ) {
        // Zoneout's selects and extra row arithmetic compiled in only where
        // it runs (tested per slot they slowed B = 4, H = 64 by 8 %).
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if self.variant.zoneout_c.is_on() || self.variant.zoneout_h.is_on() {
                self.staged::<S, true>(s, tile, acc, xw);
            } else {
                self.staged::<S, false>(s, tile, acc, xw);
            }
        }
    }

    /// `finish_staged`'s body; `ZONED`: whether zoneout may be on.
    ///
    /// # Safety
    /// As for `finish_staged`.
    #[inline(always)]
    unsafe fn staged<S: Simd<E = E>, const ZONED: bool>(
        &self,
        s: usize,
        tile: usize,
        acc: &mut [[S; 4]],
        xw: &Projection<E>,
    ) {
        let geo = self.geo;
        let (h, hp, w) = (geo.hidden, geo.hidden_pad, S::LANES);
        let u0 = tile * w;
        let (cur, next) = (self.state.h[s % 2].0, self.state.h[(s + 1) % 2].0);
        let out = self.out;
        let (zone_c, zone_h) = (self.variant.zoneout_c, self.variant.zoneout_h);
        // SAFETY: as in `finish`, for each running slot (row < T·B, u0 + w ≤
        // hp).
        unsafe {
            let bias = self.bias.as_ptr().add(u0);
            for (slot, acc) in acc.iter_mut().enumerate() {
                let xw_at = xw.at(s, slot, u0);
                let pre = |g: usize| {
                    acc[g]
                        .add(S::load(xw_at.add(g * xw.lanes)))
                        .add(S::load(bias.add(g * hp)))
                };
                let ig = simd::sigmoid(pre(0));
                let fg = simd::sigmoid(pre(1));
                let gg = simd::tanh(pre(2));
                let og = simd::sigmoid(pre(3));
                let c_ptr = self.state.c.0.add(slot * hp + u0);
                let c_prev = S::load(c_ptr);
                let c_new = fg.mul_add(c_prev, ig.mul(gg));
                let row = || geo.row(geo.pos(s, self.slots.lens[slot]), self.slots.rows[slot]);
                // Zoneout of c: the state is the mix, h is made from the
                // candidate, kept for the second pass in `acc[0]`.
                let c_state = if ZONED && zone_c.is_on() {
                    acc[0] = c_new;
                    zone_c.mix(row(), hp, u0, c_prev, c_new)
                } else {
                    c_new
                };
                c_state.store(c_ptr);
                acc[3] = og;
                if !out.gates.0.is_null() {
                    self.cache_tile([ig, fg, gg, og], c_state, slot, row(), u0, cur, true);
                }
            }
            for (slot, acc) in acc.iter().enumerate() {
                let c_new = if ZONED && zone_c.is_on() {
                    acc[0]
                } else {
                    S::load(self.state.c.0.add(slot * hp + u0))
                };
                let mut h_new = acc[3].mul(simd::tanh(c_new));
                let row = geo.row(geo.pos(s, self.slots.lens[slot]), self.slots.rows[slot]);
                if ZONED && zone_h.is_on() {
                    let h_prev = S::load(cur.add(slot * hp + u0));
                    h_new = zone_h.mix(row, hp, u0, h_prev, h_new);
                }
                h_new.store(next.add(slot * hp + u0));
                store_n(
                    h_new,
                    out.y.0.add(row * h + u0.min(h)),
                    h.saturating_sub(u0).min(w),
                );
            }
        }
    }

    /// The general gate math (docs/variants.md, 'The cell') for one tile:
    /// peepholes, clip, coupled or absent forget gate, any activations.
    /// Returns i, f, g, o, c_t, h_t; writes z to the cache when it keeps it.
    ///
    /// # Safety
    /// As for `finish`; `c_ptr` is this slot's c of this tile.
    #[inline(always)]
    unsafe fn variant_gates<S: Simd<E = E>>(
        &self,
        pre: impl Fn(usize) -> S,
        c_ptr: *mut E,
        row: usize,
        u0: usize,
    ) -> (S, S, S, S, S, S) {
        let v = &self.variant;
        let hp = self.geo.hidden_pad;
        let one = S::splat(E::ONE);
        let clamp = |z: S| match v.clip {
            Some(c) => z.clamp(S::splat(E::ZERO - c), S::splat(c)),
            None => z,
        };
        // SAFETY: c_ptr and u0 + LANES ≤ hp inside this slot's state, the
        // padded peepholes (3·Hp) and the pre-activation cache row.
        unsafe {
            let c_prev = S::load(c_ptr);
            // Read only when there are peepholes.
            let pp = v.peepholes.unwrap_or(&[]).as_ptr();
            let peep = |k: usize| S::load(pp.add(k * hp + u0));
            let (mut z_i, mut z_f, z_g) = (pre(0), pre(1), pre(2));
            if v.peepholes.is_some() {
                z_i = z_i.add(peep(0).mul(c_prev));
                z_f = z_f.add(peep(2).mul(c_prev));
            }
            let ig = v.f.apply(clamp(z_i));
            let fg = if !v.forget_gate {
                one
            } else if v.input_forget {
                one.sub(ig)
            } else {
                v.f.apply(clamp(z_f))
            };
            let gg = v.g.apply(clamp(z_g));
            // The one operation backward's rebuild repeats (zoneout of c).
            let c_new = candidate(ig, fg, gg, c_prev);
            let mut z_o = pre(3);
            if v.peepholes.is_some() {
                z_o = z_o.add(peep(1).mul(c_new));
            }
            let og = v.f.apply(clamp(z_o));
            let h_new = og.mul(v.h.apply(c_new));
            let zp = self.out.pre.0;
            if !zp.is_null() {
                let zp = zp.add(row * 4 * hp + u0);
                z_i.store(zp);
                z_f.store(zp.add(hp));
                z_g.store(zp.add(2 * hp));
                z_o.store(zp.add(3 * hp));
            }
            (ig, fg, gg, og, c_new, h_new)
        }
    }
}

/// One member's scratch: the input projection of a block of steps and the
/// accumulators of its tiles. The caller allocates it before the threads start
/// (a refused allocation is then an error of the call, not a panic on a pool
/// thread); rows of length 0 get none.
#[derive(Default)]
pub struct ForwardScratch<E> {
    projection: Projection<E>,
    products: Vec<VectorRoom>,
    /// A copy of the running slots' h (P wide) where recurrent dropout scales
    /// it (`pack_rows`; otherwise the tiles read h in place); with a
    /// projection also their m (H wide) for its product.
    packed: Vec<E>,
}

impl<E: Float> ForwardScratch<E> {
    /// For a member computing hidden units `units` (`lanes` per tile) of the
    /// chunk `slots`, over the steps of `geo`, with `input` inputs; `bf16_dot`:
    /// whether the projection runs on the BF16 dot products (which read a copy
    /// of the input rows).
    pub fn new(
        geo: Geometry,
        slots: &Slots<'_>,
        input: usize,
        units: Range<usize>,
        lanes: usize,
        bf16_dot: bool,
    ) -> Result<Self> {
        // Steps per block: about PROJECTION_ROWS (step, slot) pairs.
        let block = (PROJECTION_ROWS / slots.rows.len().max(1)).clamp(1, geo.steps.max(1));
        let running = slots.active(0);
        Ok(ForwardScratch {
            projection: Projection::new(block, running, input, units, lanes, bf16_dot)?,
            products: accumulator_room::<E>(running, lanes, "the tile accumulators of a chunk")?,
            packed: alloc::zeroed(
                &[running, geo.state.max(geo.hidden)],
                "the packed h of a chunk",
            )?,
        })
    }
}

/// A member's input projection for a block of steps: `x·w_ihᵀ` for its own
/// hidden units only, tile by tile, each tile's rows (step in block, slot) as
/// the register tile leaves them (4 gate vectors of LANES units per row), so
/// the product writes its results in place and a step's gate math reads one
/// contiguous run of rows per tile.
#[derive(Default)]
struct Projection<E> {
    /// (tiles of the member) × (steps · slots) rows × 4 vectors.
    data: Vec<VectorRoom>,
    /// The input rows of the block, (steps in block · slots) × I, as the
    /// BF16 dot products read them (`dot_project`; the f32 tiles read x in
    /// place), and where each comes from in x.
    rows: Vec<E>,
    sources: Vec<usize>,
    /// First step of the block, steps per block, slots, units of the member,
    /// the ISA's lanes (units per tile, and the distance between gates).
    s0: usize,
    steps: usize,
    slots: usize,
    first_unit: usize,
    units: usize,
    lanes: usize,
}

impl<E: Float> Projection<E> {
    fn new(
        steps: usize,
        slots: usize,
        input: usize,
        units: Range<usize>,
        lanes: usize,
        bf16_dot: bool,
    ) -> Result<Self> {
        let n = units.len();
        let copied = if bf16_dot { input } else { 0 };
        Ok(Projection {
            data: accumulator_room::<E>(
                steps.saturating_mul(slots).saturating_mul(n / lanes.max(1)),
                lanes,
                "the input projection of a block",
            )?,
            rows: alloc::zeroed(&[steps, slots, copied], "the input rows of a block")?,
            sources: alloc::zeroed(&[steps, slots], "the input rows of a block")?,
            s0: 0,
            steps,
            slots,
            first_unit: units.start,
            units: n,
            lanes,
        })
    }

    /// Where gate i of hidden unit `unit` (the first of its tile) starts for
    /// (s, slot); gates are `lanes` apart.
    #[inline(always)]
    fn at(&self, s: usize, slot: usize, unit: usize) -> *const E {
        let row = (s - self.s0) * self.slots + slot;
        let unit = unit - self.first_unit;
        let (tile, lane) = (unit / self.lanes, unit % self.lanes);
        let at = ((tile * self.steps * self.slots + row) * 4) * self.lanes + lane;
        assert!(at + 4 * self.lanes <= size_of_val(&self.data[..]) / size_of::<E>());
        self.data.as_ptr().cast::<E>().wrapping_add(at)
    }
}

impl<E: Float, const VARIANT: bool, W> ForwardChunk<'_, E, VARIANT, W> {
    /// Fills `p` with the projection of steps s0.. for this member's units: the
    /// input rows the running slots visit are gathered, then each tile's
    /// product with its panel of `w_ih`. Units past H get zero weights.
    #[inline(always)]
    fn project<S: Simd<E = E>>(&self, p: &mut Projection<E>, s0: usize) {
        let (geo, input, w) = (self.geo, self.input, S::LANES);
        p.s0 = s0;
        let s1 = (s0 + p.steps).min(geo.steps);
        let m = (s1 - s0) * p.slots;
        // Slots that have stopped read x's first row: computed, never used.
        p.sources[..m].fill(0);
        for s in s0..s1 {
            for slot in 0..self.slots.active(s) {
                let row = geo.row(geo.pos(s, self.slots.lens[slot]), self.slots.rows[slot]);
                p.sources[(s - s0) * p.slots + slot] = row * input;
            }
        }
        assert!(p.sources[..m].iter().all(|&at| at + input <= self.x.len()));
        let (x, sources) = (self.x.as_ptr(), &p.sources);
        if self.bf16_dot {
            let sources = std::mem::take(&mut p.sources);
            // SAFETY: every source row lies inside x (asserted).
            unsafe { self.dot_project::<S>(p, m, |j| x.add(sources[j])) };
            p.sources = sources;
            return;
        }
        let stride = input * 4 * w; // one panel
        let rows_per_tile = p.steps * p.slots;
        assert!(m <= rows_per_tile);
        assert!(self.ih_panels.len() >= self.tiles.end * stride);
        assert!(p.units == self.tiles.len() * w && p.lanes == w);
        let results = accumulators::<S>(&mut p.data);
        assert!(results.len() >= self.tiles.len() * rows_per_tile);
        for (t, tile) in self.tiles.clone().enumerate() {
            let out = &mut results[t * rows_per_tile..][..m];
            // SAFETY: the m rows are rows of x (`input` each, asserted above),
            // read in place: a copy made one element at a time cost more than
            // the tiles' broadcasts gained from one stream instead of MR. The
            // tile's panel lies inside `ih_panels`, and `out` holds m results
            // (asserted above).
            unsafe {
                let rows = Rows(|j| x.add(sources[j]));
                let panel = self.ih_panels.as_ptr().add(tile * stride);
                rows_x4v_kblocked::<S>(m, rows, input, panel, out);
            }
        }
    }
}

impl<E: Float, const VARIANT: bool, W: PanelWeight<E>> Kernel<E>
    for ForwardChunk<'_, E, VARIANT, W>
{
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(mut self) {
        let geo = self.geo;
        // The recurrent product runs over the P real units of h (P = H
        // without a projection), whose rows in the state are Pp apart.
        let (h, hp, w) = (geo.state, geo.state_pad, S::LANES);
        let tiles = geo.hidden_pad / w;
        let stride = h * 4 * w; // one panel
        let panel_len = if self.bf16_dot {
            // The dot kernels' instructions: checked here, once per chunk, so
            // that no caller can reach them on a CPU without them.
            assert!(
                simd::Isa::Avx512Bf16.is_supported(),
                "the BF16 dot products need a CPU with AVX-512 BF16"
            );
            bf16_dot::panel_len(h)
        } else {
            stride
        };
        assert_eq!(
            self.panels.len(),
            tiles * panel_len,
            "forward panels packed for another ISA"
        );
        assert!(self.tiles.end <= tiles && self.bias.len() == 4 * geo.hidden_pad);
        assert!(self.x.len() == geo.steps * geo.batch * self.input);
        let mut scratch = std::mem::take(&mut self.scratch);
        let ForwardScratch {
            projection: xw,
            products,
            packed,
        } = &mut scratch;
        assert!(
            xw.slots >= self.slots.active(0)
                && xw.first_unit == self.tiles.start * w
                && xw.units == self.tiles.len() * w
                && xw.lanes == w,
            "forward scratch made for another member"
        );
        let block = xw.steps;
        let products = accumulators::<S>(products);
        assert!(products.len() >= self.slots.active(0));
        assert!(packed.len() >= self.slots.active(0) * h.max(geo.hidden));
        if self.projects() {
            assert!(
                self.tiles == (0..tiles) && self.barrier.is_none(),
                "a chunk with a projection runs alone"
            );
        }

        for s in 0..geo.steps {
            let active = self.slots.active(s);
            if active == 0 {
                break;
            }
            if s % block == 0 {
                self.project::<S>(xw, s);
            }
            let mut cur = self.state.h[s % 2].0 as *const E;
            let panel = |q: usize| self.panels[q * stride..].as_ptr();
            if self.bf16_dot {
                // SAFETY: the running slots' state rows hold hp ≥ h elements,
                // `packed` active · h (asserted); the panels are pairs of
                // depths (asserted by length), the CPU has AVX-512 BF16
                // (asserted); tiles of this member.
                unsafe { self.dot_step::<S>(s, active, cur, packed, products, xw) };
            } else if active == 1 {
                let prefetch = self.tiles.len() * stride * size_of::<W>() > BATCH1_PREFETCH_BYTES;
                if let Some(r) = self.recurrent_keep(self.slots.rows[0]) {
                    // Recurrent dropout: the product's operand is h ⊙ r.
                    for (k, dst) in packed[..h].iter_mut().enumerate() {
                        // SAFETY: slot 0's state row and its mask row hold
                        // Pp ≥ h elements.
                        *dst = unsafe { *cur.add(k) * *r.add(k) };
                    }
                    cur = packed.as_ptr();
                }
                // One row: latency-bound, so several panels at a time
                // (BATCH1_PANELS, 4 chains each), and never one panel alone
                // where two pairs can run instead (its 4 chains would leave
                // half the FMA latency exposed).
                let mut p = self.tiles.start;
                while p < self.tiles.end {
                    let left = self.tiles.end - p;
                    // SAFETY: slot 0's state row holds hp ≥ h elements; panels
                    // hold h rows of 4·w (asserted); `finish` gets slot 0 and
                    // tiles of this member.
                    unsafe {
                        if left >= BATCH1_PANELS && left != BATCH1_PANELS + 1 {
                            let panels = std::array::from_fn(|i| panel(p + i));
                            let acc =
                                batch1_product::<S, W, BATCH1_PANELS>(prefetch, cur, h, panels);
                            if VARIANT {
                                for (i, acc) in acc.into_iter().enumerate() {
                                    self.finish::<S>(s, 0, p + i, acc, xw);
                                }
                            } else {
                                let at = std::array::from_fn(|i| (0, p + i));
                                self.finish_plain::<S, BATCH1_PANELS>(s, at, acc, xw);
                            }
                            p += BATCH1_PANELS;
                        } else if left > 1 {
                            let panels = [panel(p), panel(p + 1)];
                            let acc = batch1_product::<S, W, 2>(prefetch, cur, h, panels);
                            if VARIANT {
                                self.finish::<S>(s, 0, p, acc[0], xw);
                                self.finish::<S>(s, 0, p + 1, acc[1], xw);
                            } else {
                                self.finish_plain::<S, 2>(s, [(0, p), (0, p + 1)], acc, xw);
                            }
                            p += 2;
                        } else {
                            let [acc] = batch1_product::<S, W, 1>(prefetch, cur, h, [panel(p)]);
                            self.finish::<S>(s, 0, p, acc, xw);
                            p += 1;
                        }
                    }
                }
            } else {
                // The tiles over the rows `a` of h (`RowSource`).
                macro_rules! tiles {
                    ($a:expr) => {
                        for p in self.tiles.clone() {
                            // SAFETY: `a` holds the running slots' rows of h
                            // (h elements each); panels hold h rows of 4·w
                            // (asserted); `finish` gets running slots and
                            // tiles of this member.
                            unsafe {
                                rows_x4v_kblocked_of::<S, W>(active, $a, h, panel(p), products);
                                if VARIANT {
                                    for (slot, &acc) in products[..active].iter().enumerate() {
                                        self.finish::<S>(s, slot, p, acc, xw);
                                    }
                                } else {
                                    self.finish_staged::<S>(s, p, &mut products[..active], xw);
                                }
                            }
                        }
                    };
                }
                if self.variant.recurrent_keep.is_some() {
                    // Recurrent dropout: the rows times their mask rows,
                    // packed (`pack_rows`) and scaled in the copy.
                    // SAFETY: the running slots' state rows hold hp ≥ h
                    // elements; `packed` holds active · h (asserted).
                    unsafe { pack_rows::<S>(active, |r| cur.add(r * hp), h, packed) };
                    let rows = &self.slots.rows;
                    scale_packed::<S>(active, h, packed, |r| {
                        self.recurrent_keep(rows[r]).unwrap_or(std::ptr::null())
                    });
                    tiles!(PackedRows {
                        data: packed.as_ptr(),
                        depth: h,
                    });
                } else {
                    // The state rows in place: packing them (one element at
                    // a time) cost more than the tiles' broadcasts gain from
                    // reading one stream instead of MR.
                    tiles!(Rows(move |r| cur.add(r * hp)));
                }
            }
            if self.projects() {
                self.project_state::<S>(s, active, packed, products);
            }
            if end_of_step(self.barrier, self.cancel) {
                return;
            }
        }
    }
}

impl<E: Float, const VARIANT: bool, W> ForwardChunk<'_, E, VARIANT, W> {
    /// Step `s`'s recurrent products on the BF16 dot products (`bf16_dot.rs`)
    /// for the `active` running slots (h_{t−1} rows at `cur`, Pp apart), each
    /// tile finished as on the other paths. Batch 1 runs `BATCH1_PANELS`
    /// panels at once, as `batch1_product` does; more rows run the 6-row tile.
    ///
    /// # Safety
    /// The CPU has AVX-512 BF16 (`run` asserts it); the running slots' rows
    /// at `cur` hold h elements; `packed` holds active · h elements and
    /// `products` active entries; `self.panels` are
    /// `PanelCache::forward_bf16_pairs` (W = Bf16, E = f32, 16 lanes).
    #[inline(always)]
    #[allow(unused_variables)]
    unsafe fn dot_step<S: Simd<E = E>>(
        &self,
        s: usize,
        active: usize,
        cur: *const E,
        packed: &mut [E],
        products: &mut [[S; 4]],
        xw: &Projection<E>,
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: see each block.
        unsafe {
            use bf16_dot::{pack_rows, row_product, rows_product, PANEL_COLUMNS};
            assert!(
                size_of::<E>() == 4
                    && size_of::<W>() == size_of::<Bf16>()
                    && 4 * S::LANES == PANEL_COLUMNS
                    && self.variant.recurrent_keep.is_none(),
                "the BF16 dot products run bf16 inference in f32 on AVX-512"
            );
            let (h, hp) = (self.geo.state, self.geo.state_pad);
            let words = bf16_dot::pairs(h);
            let stride = bf16_dot::panel_len(h);
            let panel = |q: usize| self.panels[q * stride..].as_ptr().cast::<Bf16>();
            // `packed` (active · h elements of 4 bytes) holds the rows' pairs
            // (active · ⌈h/2⌉ words). SAFETY: rows of h f32 at `cur`, Pp apart.
            let a = packed.as_mut_ptr().cast::<u32>();
            pack_rows(active, |r| cur.add(r * hp).cast::<f32>(), h, a);
            // Tile `i` of results at `out` (64 f32) as the 4 gate vectors.
            let tile = |out: *const f32, i: usize| -> [S; 4] {
                std::array::from_fn(|v| S::load(out.add(i * PANEL_COLUMNS + v * S::LANES).cast()))
            };
            if active == 1 {
                let mut out = [0f32; BATCH1_PANELS * PANEL_COLUMNS];
                let out = out.as_mut_ptr();
                let mut p = self.tiles.start;
                while p < self.tiles.end {
                    let left = self.tiles.end - p;
                    macro_rules! panels {
                        ($n:literal) => {{
                            row_product::<$n>(a, words, std::array::from_fn(|i| panel(p + i)), out);
                            let acc: [[S; 4]; $n] = std::array::from_fn(|i| tile(out, i));
                            if VARIANT {
                                for (i, acc) in acc.into_iter().enumerate() {
                                    self.finish::<S>(s, 0, p + i, acc, xw);
                                }
                            } else {
                                let at = std::array::from_fn(|i| (0, p + i));
                                self.finish_plain::<S, $n>(s, at, acc, xw);
                            }
                            p += $n;
                        }};
                    }
                    // As `run`'s batch-1 loop: never one panel alone where
                    // two pairs can run.
                    if left >= BATCH1_PANELS && left != BATCH1_PANELS + 1 {
                        const { assert!(BATCH1_PANELS == 3) };
                        panels!(3)
                    } else if left > 1 {
                        panels!(2)
                    } else {
                        panels!(1)
                    }
                }
            } else {
                for p in self.tiles.clone() {
                    let out = products.as_mut_ptr().cast::<f32>();
                    rows_product(active, a, words, panel(p), out);
                    // Read back as vectors (written as f32 lanes above).
                    for acc in &mut products[..active] {
                        *acc = tile(std::ptr::from_ref(acc).cast::<f32>(), 0);
                    }
                    if VARIANT {
                        for (slot, &acc) in products[..active].iter().enumerate() {
                            self.finish::<S>(s, slot, p, acc, xw);
                        }
                    } else {
                        self.finish_staged::<S>(s, p, &mut products[..active], xw);
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the BF16 dot products exist on x86-64 only");
    }

    /// `project`'s products on the BF16 dot products: the `m` input rows
    /// (`source(j)`, I elements each) rounded to bfloat16 pairs, times each
    /// tile's panel of `ih_pairs`.
    ///
    /// # Safety
    /// The CPU has AVX-512 BF16 (`run` asserts it); each `source(j)`, j < m,
    /// is readable for I elements; `p` is this member's projection scratch
    /// (its sizes are asserted here).
    #[inline(always)]
    #[allow(unused_variables)]
    unsafe fn dot_project<S: Simd<E = E>>(
        &self,
        p: &mut Projection<E>,
        m: usize,
        source: impl Fn(usize) -> *const E,
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: see each statement.
        unsafe {
            use bf16_dot::{pack_rows, rows_product, PANEL_COLUMNS};
            let input = self.input;
            let words = bf16_dot::pairs(input);
            let stride = bf16_dot::panel_len(input);
            let rows_per_tile = p.steps * p.slots;
            assert!(size_of::<E>() == 4 && 4 * S::LANES == PANEL_COLUMNS);
            // m · ⌈I/2⌉ words fit in the m · I elements of `rows`.
            assert!(p.rows.len() >= m * input && m <= rows_per_tile);
            assert!(self.ih_pairs.len() >= self.tiles.end * stride);
            let a = p.rows.as_mut_ptr().cast::<u32>();
            // SAFETY: the caller's rows.
            pack_rows(m, |j| source(j).cast::<f32>(), input, a);
            let results = accumulators::<S>(&mut p.data);
            assert!(results.len() >= self.tiles.len() * rows_per_tile);
            for (t, tile) in self.tiles.clone().enumerate() {
                let out = &mut results[t * rows_per_tile..][..m];
                let panel = self.ih_pairs[tile * stride..].as_ptr();
                // SAFETY: m rows of pairs in `a`, the tile's panel inside
                // `ih_pairs`, m results of 4 vectors (= 64 f32) in `out`.
                rows_product(m, a, words, panel, out.as_mut_ptr().cast::<f32>());
                for acc in out.iter_mut() {
                    // Read back as vectors (written as f32 lanes above).
                    *acc = std::array::from_fn(|v| {
                        S::load(std::ptr::from_ref(acc).cast::<E>().add(v * S::LANES))
                    });
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the BF16 dot products exist on x86-64 only");
    }
}

/// The batch-1 product of `P` panels ([`row_x4pv_with`]), prefetching rows
/// ahead or not (`prefetch`: whether the member's panels exceed
/// `BATCH1_PREFETCH_BYTES`); the same bits either way.
///
/// # Safety
/// As for [`row_x4pv_with`] with `a_cs` = 1.
#[inline(always)]
unsafe fn batch1_product<S: Simd, W: PanelWeight<S::E>, const P: usize>(
    prefetch: bool,
    a: *const S::E,
    depth: usize,
    panels: [*const W; P],
) -> [[S; 4]; P] {
    // SAFETY: forwarded from the caller.
    unsafe {
        if prefetch {
            row_x4pv_with::<S, W, P, true>(a, 1, depth, panels)
        } else {
            row_x4pv_with::<S, W, P, false>(a, 1, depth, panels)
        }
    }
}

impl<E: Float, const VARIANT: bool, W> ForwardChunk<'_, E, VARIANT, W> {
    /// The projection of step `s` for the `active` running slots, after every
    /// tile has written its m: h_t = m_t·W_hrᵀ (P outputs, depth H) into the
    /// next h state and y; the h the step started from into the h_prev cache.
    ///
    /// Inlined into `run`: only there is the code compiled with the ISA's
    /// target features (otherwise every intrinsic becomes a call).
    #[inline(always)]
    fn project_state<S: Simd<E = E>>(
        &self,
        s: usize,
        active: usize,
        packed: &mut [E],
        products: &mut [[S; 4]],
    ) {
        let geo = self.geo;
        let (h, hp, p, pp, w) = (
            geo.hidden,
            geo.hidden_pad,
            geo.state,
            geo.state_pad,
            S::LANES,
        );
        let width = 4 * w;
        let stride = h * width; // one panel
        let tiles = pp.div_ceil(width);
        assert_eq!(
            self.proj_panels.len(),
            tiles * stride,
            "projection panels packed for another ISA"
        );
        assert!(packed.len() >= active * h && products.len() >= active);
        let (cur, next) = (self.state.h[s % 2].0, self.state.h[(s + 1) % 2].0);
        let m = self.state.m.0 as *const E;
        // SAFETY: the running slots' m rows hold hp ≥ h elements, written by
        // this step's tiles (this member computes all of them).
        unsafe { pack_rows::<S>(active, |r| m.add(r * hp), h, packed) };
        let a = PackedRows {
            data: packed.as_ptr(),
            depth: h,
        };
        let out = self.out;
        for q in 0..tiles {
            // SAFETY: `a` holds `active` rows of depth h as `pack_rows` wrote
            // them; panel q holds h rows of 4·w (asserted).
            unsafe {
                let panel = self.proj_panels.as_ptr().add(q * stride);
                rows_x4v_kblocked::<S>(active, a, h, panel, products);
            }
            for (slot, acc) in products[..active].iter().enumerate() {
                let row = geo.row(geo.pos(s, self.slots.lens[slot]), self.slots.rows[slot]);
                for (v, acc_v) in acc.iter().enumerate() {
                    let u = q * width + v * w;
                    if u >= pp {
                        break;
                    }
                    // SAFETY: u + w ≤ pp inside this slot's state row and the
                    // zoneout mask's row; y (T·B × P) gets only its real lanes
                    // of row < T·B. This chunk alone owns these rows.
                    unsafe {
                        // Zoneout of h: the state keeps h_{t−1} where the mask
                        // says so (the candidate is h̃_t = m_t·W_hrᵀ).
                        let h_prev = S::load(cur.add(slot * pp + u));
                        let acc_v = &self.variant.zoneout_h.mix(row, pp, u, h_prev, *acc_v);
                        acc_v.store(next.add(slot * pp + u));
                        store_n(
                            *acc_v,
                            out.y.0.add(row * p + u.min(p)),
                            p.saturating_sub(u).min(w),
                        );
                    }
                }
            }
        }
        if !out.h_prev.0.is_null() {
            for slot in 0..active {
                let row = geo.row(geo.pos(s, self.slots.lens[slot]), self.slots.rows[slot]);
                // SAFETY: the slot's state row and the cache row (row < T·B)
                // both hold pp elements; the cache row is this chunk's.
                unsafe {
                    match self.recurrent_keep(self.slots.rows[slot]) {
                        None => std::ptr::copy_nonoverlapping(
                            cur.add(slot * pp),
                            out.h_prev.0.add(row * pp),
                            pp,
                        ),
                        // h_{t−1} ⊙ r, the operand of the recurrent product.
                        Some(r) => {
                            for k in 0..pp {
                                *out.h_prev.0.add(row * pp + k) =
                                    *cur.add(slot * pp + k) * *r.add(k);
                            }
                        }
                    }
                };
            }
        }
    }
}

/// Multiplies each of the `rows` rows that `pack_rows` packed into `out`
/// (depth `depth`, the rows of each of its `RowGroups` interleaved) by its own
/// vector `scale(r)` (depth elements, non-null), element by element: recurrent
/// dropout's h ⊙ r, the same product per element as the reference's.
fn scale_packed<S: Simd>(
    rows: usize,
    depth: usize,
    out: &mut [S::E],
    scale: impl Fn(usize) -> *const S::E,
) {
    let groups = RowGroups::new(rows, rows_per_group::<S>());
    let out = &mut out[..rows * depth];
    for g in 0..groups.count {
        let (r0, group) = (groups.start(g), groups.len(g));
        let dst = &mut out[r0 * depth..][..group * depth];
        for i in 0..group {
            let sc = scale(r0 + i);
            assert!(!sc.is_null());
            // SAFETY: the caller's scale rows hold `depth` readable elements.
            let sc = unsafe { std::slice::from_raw_parts(sc, depth) };
            for (k, &m) in sc.iter().enumerate() {
                dst[k * group + i] = dst[k * group + i] * m;
            }
        }
    }
}

/// N vectors of `S` as one vector of N·LANES lanes: every operation applies to
/// each part in turn. The plain gate math runs on it (`finish_plain`) so that
/// the N parts' long dependency chains interleave; each lane sees exactly the
/// operations of `S`, so the results are those of N separate calls.
///
/// Plain loops only: `array::map` and `from_fn` are functions of their own,
/// compiled without the ISA's target features, so the intrinsics inside their
/// closures would become calls.
#[derive(Clone, Copy)]
struct Wide<S, const N: usize>([S; N]);

impl<S: Simd, const N: usize> Simd for Wide<S, N> {
    type E = S::E;
    const LANES: usize = N * S::LANES;

    #[inline(always)]
    fn splat(v: S::E) -> Self {
        Wide([S::splat(v); N])
    }
    #[inline(always)]
    unsafe fn load(p: *const S::E) -> Self {
        let mut out = [S::splat(S::E::ZERO); N];
        for (i, v) in out.iter_mut().enumerate() {
            // SAFETY: the caller guarantees N·LANES readable elements at `p`.
            *v = unsafe { S::load(p.add(i * S::LANES)) };
        }
        Wide(out)
    }
    #[inline(always)]
    unsafe fn load_bf16_pair(p: *const Bf16) -> [Self; 2] {
        // Part i of each is S's pair from the 2·LANES values at 2i·LANES.
        let (mut a, mut b) = ([S::splat(S::E::ZERO); N], [S::splat(S::E::ZERO); N]);
        for i in 0..N {
            // SAFETY: the caller guarantees 2·N·LANES readable values at `p`.
            [a[i], b[i]] = unsafe { S::load_bf16_pair(p.add(2 * i * S::LANES)) };
        }
        [Wide(a), Wide(b)]
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut S::E) {
        for i in 0..N {
            // SAFETY: the caller guarantees N·LANES writable elements at `p`.
            unsafe { self.0[i].store(p.add(i * S::LANES)) }
        }
    }
    #[inline(always)]
    fn add(mut self, o: Self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i].add(o.0[i]);
        }
        self
    }
    #[inline(always)]
    fn sub(mut self, o: Self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i].sub(o.0[i]);
        }
        self
    }
    #[inline(always)]
    fn mul(mut self, o: Self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i].mul(o.0[i]);
        }
        self
    }
    #[inline(always)]
    fn div(mut self, o: Self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i].div(o.0[i]);
        }
        self
    }
    #[inline(always)]
    fn mul_add(mut self, b: Self, c: Self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i].mul_add(b.0[i], c.0[i]);
        }
        self
    }
    #[inline(always)]
    fn abs(mut self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i].abs();
        }
        self
    }
    #[inline(always)]
    fn clamp(mut self, lo: Self, hi: Self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i].clamp(lo.0[i], hi.0[i]);
        }
        self
    }
    #[inline(always)]
    fn select_lt(mut self, bound: Self, then: Self, other: Self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i].select_lt(bound.0[i], then.0[i], other.0[i]);
        }
        self
    }
    #[inline(always)]
    fn pow2i(mut self) -> Self {
        for i in 0..N {
            self.0[i] = self.0[i].pow2i();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::Wide;
    use crate::simd::{self, dispatch, Isa, Kernel, Simd, SimdElement};

    /// The gate math on `Wide<S, 3>` against each of its parts on `S` alone,
    /// bit for bit: `finish_plain` relies on it.
    struct SameBits<'a, E>(&'a [E]);

    impl<E: SimdElement> Kernel<E> for SameBits<'_, E> {
        type Output = bool;
        fn run<S: Simd<E = E>>(self) -> bool {
            let w = S::LANES;
            let mut same = true;
            for chunk in self.0.chunks_exact(3 * w) {
                // SAFETY: the chunk holds 3·LANES elements.
                let wide = unsafe { Wide::<S, 3>::load(chunk.as_ptr()) };
                let gate = |x: Wide<S, 3>| {
                    let c = simd::sigmoid(x).mul_add(x, simd::tanh(x).mul(x.abs()));
                    simd::sigmoid(x).mul(simd::tanh(c))
                };
                let part = |x: S| {
                    let c = simd::sigmoid(x).mul_add(x, simd::tanh(x).mul(x.abs()));
                    simd::sigmoid(x).mul(simd::tanh(c))
                };
                let mut together = [E::ZERO; 48];
                let mut apart = [E::ZERO; 48];
                // SAFETY: 3·LANES ≤ 48 elements are written in each.
                unsafe {
                    gate(wide).store(together.as_mut_ptr());
                    for i in 0..3 {
                        part(S::load(chunk.as_ptr().add(i * w)))
                            .store(apart.as_mut_ptr().add(i * w));
                    }
                }
                same &= together[..3 * w]
                    .iter()
                    .zip(&apart[..3 * w])
                    .all(|(a, b)| format!("{a:?}") == format!("{b:?}"));
            }
            same
        }
    }

    #[test]
    fn wide_gate_math_is_bitwise_that_of_its_parts() {
        let mut x: Vec<f32> = vec![
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            0.3,
            -0.3,
            5.0,
            -5.0,
            40.0,
            -40.0,
            100.0,
            -100.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-45,
        ];
        let mut v = 0.123_f32;
        while x.len() < 3 * 16 * 4 {
            v = (v * 7.31 + 0.77).fract();
            x.push((v - 0.5) * 20.0);
        }
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        for isa in Isa::available() {
            assert!(dispatch(isa, SameBits(&x)), "f32 on {isa:?}");
            assert!(dispatch(isa, SameBits(&x64)), "f64 on {isa:?}");
        }
    }
}

//! The recurrent part of a sequence, for one chunk of batch rows over all time
//! steps: per step, the product with the packed `w_hh` fused with the gate math
//! (forward) or with the gate derivatives (backward), tile by tile, so each tile
//! of gates is finished while it is still in registers.
//!
//! Rows of a chunk are ordered by length, longest first ("slots"), so the rows
//! still running at step s are always a prefix and padded steps cost nothing.
//!
//! A chunk is run by a team: one member (the batch is split across threads,
//! nobody waits) or several that split the hidden units and meet at a
//! [`SpinBarrier`] after every step. Every output element is computed by the
//! same instructions either way, so the split never changes a bit.

use crate::float::Float;
use std::ops::Range;

use crate::kernel::{load_n, panel_product, store_n, tile, tile_pair};
use crate::simd::{self, Kernel, Simd};
use crate::threads::SpinBarrier;

/// Where row (pos, b) lives in every per-(step, row) buffer: the caller's layout.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub steps: usize,
    pub batch: usize,
    pub hidden: usize,
    pub hidden_pad: usize,
    pub batch_major: bool,
    pub reverse: bool,
}

impl Geometry {
    /// Index of the (pos, b) row among the T·B rows of x, y and the caches.
    #[inline(always)]
    pub fn row(&self, pos: usize, b: usize) -> usize {
        if self.batch_major {
            b * self.steps + pos
        } else {
            pos * self.batch + b
        }
    }

    /// The time position a row of length `len` visits at iteration `s`.
    #[inline(always)]
    pub fn pos(&self, s: usize, len: usize) -> usize {
        if self.reverse {
            len - 1 - s
        } else {
            s
        }
    }
}

/// A raw pointer that may cross into rayon tasks.
///
/// Chunks of rows write disjoint rows of shared outputs whose rows interleave in
/// memory, which slices cannot express; each use says why it stays disjoint.
#[derive(Clone, Copy)]
pub struct SharedMut<E>(pub *mut E);
// SAFETY: only used to write rows that exactly one task owns (see each use).
unsafe impl<E: Send> Send for SharedMut<E> {}
// SAFETY: as above.
unsafe impl<E: Send> Sync for SharedMut<E> {}

impl<E> SharedMut<E> {
    pub fn null() -> Self {
        SharedMut(std::ptr::null_mut())
    }
}

/// A chunk's rows: batch indices and lengths, longest first.
pub struct Slots<'a> {
    pub rows: &'a [usize],
    pub lens: &'a [usize],
}

impl Slots<'_> {
    /// How many slots are still running at iteration `s` (a prefix).
    #[inline(always)]
    fn active(&self, s: usize) -> usize {
        self.lens.partition_point(|&len| len > s)
    }
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

/// Outputs of the forward pass for the whole batch (chunks write their rows).
#[derive(Clone, Copy)]
pub struct ForwardOut<E> {
    /// (T·B) × H in the caller's layout.
    pub y: SharedMut<E>,
    /// Null without a cache; else (T·B) × 4Hp, × Hp, × Hp in the caller's layout.
    pub gates: SharedMut<E>,
    pub cells: SharedMut<E>,
    pub h_prev: SharedMut<E>,
}

/// A chunk's running state, slots × Hp each, shared by the chunk's team: two h
/// buffers (every tile reads the old h while the new one is written) and c.
/// Slot r's h after iteration s is in `h[(s + 1) % 2]`; h0 goes in `h[0]`.
#[derive(Clone, Copy)]
pub struct ForwardState<E> {
    pub h: [SharedMut<E>; 2],
    pub c: SharedMut<E>,
}

/// One member's share of a chunk's forward recurrence: its tiles of hidden
/// units, for every slot and step.
pub struct ForwardChunk<'a, E> {
    pub geo: Geometry,
    pub slots: Slots<'a>,
    /// (T·B) × I in the caller's layout, and `w_ih` (4H × I): each member
    /// projects its own units, a block of steps at a time (see `run`).
    pub x: &'a [E],
    pub input: usize,
    pub w_ih: &'a [E],
    /// 4Hp.
    pub bias: &'a [E],
    /// `pack::forward_panels` for this ISA's lane count.
    pub panels: &'a [E],
    pub state: ForwardState<E>,
    pub out: ForwardOut<E>,
    /// Tiles (of LANES hidden units) this member computes.
    pub tiles: Range<usize>,
    /// Met after every step when the team has more than one member.
    pub barrier: Option<&'a SpinBarrier>,
}

impl<E: Float> ForwardChunk<'_, E> {
    /// Gate math, c/h update and stores for one slot and one tile, given the
    /// tile's recurrent products `acc` (gates i, f, g, o).
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
        // projection block, bias, the state (slots × Hp) and the caches; y gets
        // only its real lanes. This slot's units of this tile are written by
        // this member only.
        unsafe {
            let (xw, xw_stride) = (xw.at(s, slot, u0), xw.units);
            let bias = self.bias.as_ptr().add(u0);
            let pre = |g: usize| {
                acc[g]
                    .add(S::load(xw.add(g * xw_stride)))
                    .add(S::load(bias.add(g * hp)))
            };
            let ig = simd::sigmoid(pre(0));
            let fg = simd::sigmoid(pre(1));
            let gg = simd::tanh(pre(2));
            let og = simd::sigmoid(pre(3));
            let c_ptr = self.state.c.0.add(slot * hp + u0);
            let c_new = fg.mul_add(S::load(c_ptr), ig.mul(gg));
            let h_new = og.mul(simd::tanh(c_new));
            c_new.store(c_ptr);
            h_new.store(next.add(slot * hp + u0));
            store_n(
                h_new,
                out.y.0.add(row * h + u0.min(h)),
                h.saturating_sub(u0).min(w),
            );
            if !out.gates.0.is_null() {
                let gp = out.gates.0.add(row * 4 * hp + u0);
                ig.store(gp);
                fg.store(gp.add(hp));
                gg.store(gp.add(2 * hp));
                og.store(gp.add(3 * hp));
                c_new.store(out.cells.0.add(row * hp + u0));
                S::load(cur.add(slot * hp + u0)).store(out.h_prev.0.add(row * hp + u0));
            }
        }
    }
}

/// A member's input projection for a block of steps: `x·w_ihᵀ` for its own
/// hidden units only, rows (step in block, slot), columns (gate, unit).
struct Projection<E> {
    data: Vec<E>,
    /// Gathered input rows, (steps in block · slots) × I.
    rows: Vec<E>,
    /// First step of the block, steps per block, slots, units of the member.
    s0: usize,
    steps: usize,
    slots: usize,
    first_unit: usize,
    units: usize,
}

impl<E: Float> Projection<E> {
    fn new(steps: usize, slots: usize, input: usize, units: std::ops::Range<usize>) -> Self {
        let n = units.len();
        Projection {
            data: vec![E::ZERO; steps * slots * 4 * n],
            rows: vec![E::ZERO; steps * slots * input],
            s0: 0,
            steps,
            slots,
            first_unit: units.start,
            units: n,
        }
    }

    /// Where gate i of hidden unit `unit` starts for (s, slot); gates are
    /// `units` apart.
    #[inline(always)]
    fn at(&self, s: usize, slot: usize, unit: usize) -> *const E {
        let row = (s - self.s0) * self.slots + slot;
        self.data[row * 4 * self.units + unit - self.first_unit..].as_ptr()
    }
}

impl<E: Float> ForwardChunk<'_, E> {
    /// Fills `p` with the projection of steps s0.. for this member's units: the
    /// input rows the running slots visit are gathered, then one product per
    /// gate. Units past H stay zero.
    fn project(&self, p: &mut Projection<E>, s0: usize) {
        let (geo, input, h) = (self.geo, self.input, self.geo.hidden);
        p.s0 = s0;
        let s1 = (s0 + p.steps).min(geo.steps);
        for s in s0..s1 {
            for slot in 0..self.slots.active(s) {
                let row = geo.row(geo.pos(s, self.slots.lens[slot]), self.slots.rows[slot]);
                let j = (s - s0) * p.slots + slot;
                p.rows[j * input..][..input].copy_from_slice(&self.x[row * input..][..input]);
            }
        }
        let real = p.first_unit..(p.first_unit + p.units).min(h);
        if real.is_empty() {
            return;
        }
        let m = (s1 - s0) * p.slots;
        for gate in 0..4 {
            let w = &self.w_ih[(gate * h + real.start) * input..][..real.len() * input];
            let c = &mut p.data[gate * p.units + real.start - p.first_unit..];
            assert!(m == 0 || (m - 1) * 4 * p.units + real.len() <= c.len());
            // SAFETY: A is m rows of `input` in `rows` (m · input ≤ its length);
            // B = the gate's w_ih rows of the real units, transposed (I × n),
            // inside `w`; C rows are 4·units apart with n ≤ units columns, inside
            // `c` (asserted); C is a separate allocation from A and B.
            unsafe {
                (E::GEMM)(
                    m,
                    input,
                    real.len(),
                    E::ONE,
                    p.rows.as_ptr(),
                    input as isize,
                    1,
                    w.as_ptr(),
                    1,
                    input as isize,
                    E::ZERO,
                    c.as_mut_ptr(),
                    (4 * p.units) as isize,
                    1,
                );
            }
        }
    }
}

/// Rows per projection block: enough for an efficient product, few enough
/// that the block stays in cache (scratch is O(B·H), independent of T).
const PROJECTION_ROWS: usize = 256;

impl<E: Float> Kernel<E> for ForwardChunk<'_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        let geo = self.geo;
        let (h, hp, w) = (geo.hidden, geo.hidden_pad, S::LANES);
        let stride = h * 4 * w; // one panel
        assert_eq!(
            self.panels.len(),
            hp / w * stride,
            "forward panels packed for another ISA"
        );
        assert!(self.tiles.end <= hp / w && self.bias.len() == 4 * hp);
        assert!(
            self.x.len() == geo.steps * geo.batch * self.input
                && self.w_ih.len() == 4 * h * self.input
        );
        let n_slots = self.slots.rows.len();
        let block = (PROJECTION_ROWS / n_slots.max(1)).clamp(1, geo.steps.max(1));
        let mut xw = Projection::new(
            block,
            n_slots,
            self.input,
            self.tiles.start * w..self.tiles.end * w,
        );
        let mut products = vec![[S::splat(E::ZERO); 4]; n_slots];

        for s in 0..geo.steps {
            let active = self.slots.active(s);
            if active == 0 {
                break;
            }
            if s % block == 0 {
                self.project(&mut xw, s);
            }
            let cur = self.state.h[s % 2].0 as *const E;
            let panel = |q: usize| self.panels[q * stride..].as_ptr();
            if active == 1 {
                // One row: latency-bound, so two panels at a time (8 chains).
                let mut p = self.tiles.start;
                while p < self.tiles.end {
                    // SAFETY: slot 0's state row holds hp ≥ h elements; panels
                    // hold h rows of 4·w (asserted); `finish` gets slot 0 and
                    // tiles of this member.
                    unsafe {
                        if p + 1 < self.tiles.end {
                            let [acc0, acc1] = tile_pair::<S>(cur, 1, h, [panel(p), panel(p + 1)]);
                            self.finish::<S>(s, 0, p, acc0, &xw);
                            self.finish::<S>(s, 0, p + 1, acc1, &xw);
                            p += 2;
                        } else {
                            self.finish::<S>(s, 0, p, tile::<S, 1>([cur], 1, h, panel(p))[0], &xw);
                            p += 1;
                        }
                    }
                }
            } else {
                for p in self.tiles.clone() {
                    // SAFETY: as above, for every running slot.
                    unsafe {
                        panel_product::<S>(active, |r| cur.add(r * hp), h, panel(p), &mut products);
                        for (slot, &acc) in products[..active].iter().enumerate() {
                            self.finish::<S>(s, slot, p, acc, &xw);
                        }
                    }
                }
            }
            if let Some(barrier) = self.barrier {
                barrier.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

/// A chunk's backward state, slots × Hp each, shared by its team: the dh_n seed
/// of each row's last step, the running dc, and c0 (c_prev of a first step).
#[derive(Clone, Copy)]
pub struct BackwardState<E> {
    pub dh_seed: SharedMut<E>,
    pub dc: SharedMut<E>,
    pub c_first: SharedMut<E>,
}

/// One member's share of a chunk's backward recurrence.
pub struct BackwardChunk<'a, E> {
    pub geo: Geometry,
    pub slots: Slots<'a>,
    /// The forward cache, (T·B) × 4Hp and (T·B) × Hp, caller's layout.
    pub gates: &'a [E],
    pub cells: &'a [E],
    /// `pack::backward_panels` for this ISA's lane count.
    pub panels: &'a [E],
    /// (T·B) × H, caller's layout, or None for zeros.
    pub dy: Option<&'a [E]>,
    pub state: BackwardState<E>,
    /// (T·B) × 4Hp gate gradients (written; this chunk's rows, member's units).
    pub da: SharedMut<E>,
    /// B × H (written; this chunk's rows, member's units).
    pub dh0: SharedMut<E>,
    /// Tiles (of 4·LANES hidden units) this member computes.
    pub tiles: Range<usize>,
    pub barrier: Option<&'a SpinBarrier>,
}

impl<E: Float> BackwardChunk<'_, E> {
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

    /// Gate derivatives for one slot and tile from the incoming `dh`, writing
    /// da for iteration `s` and updating dc.
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
        for (v, &acc_v) in acc.iter().enumerate() {
            let u = tile * 4 * w + v * w;
            if u >= hp {
                break;
            }
            // SAFETY: row, prev_row < T·B and u + w ≤ hp: all cache, da and state
            // accesses are in bounds; dy gets only its real lanes. These units
            // of this slot belong to this member alone.
            unsafe {
                let mut dh = acc_v;
                if let Some(dy) = self.dy {
                    dh = dh.add(load_n(
                        dy.as_ptr().add(row * h + u.min(h)),
                        h.saturating_sub(u).min(w),
                    ));
                }
                let gp = self.gates.as_ptr().add(row * depth + u);
                let (ig, fg, gg, og) = (
                    S::load(gp),
                    S::load(gp.add(hp)),
                    S::load(gp.add(2 * hp)),
                    S::load(gp.add(3 * hp)),
                );
                let c = S::load(self.cells.as_ptr().add(row * hp + u));
                let c_prev = match prev_row {
                    Some(pr) => S::load(self.cells.as_ptr().add(pr * hp + u)),
                    None => S::load(self.state.c_first.0.add(slot * hp + u)),
                };
                let tc = simd::tanh(c);
                let dc_ptr = self.state.dc.0.add(slot * hp + u);
                // dc = dc_next + dh·o·(1 − tanh²c)
                let dc = dh.mul(og).mul(one.sub(tc.mul(tc))).add(S::load(dc_ptr));
                let da_o = dh.mul(tc).mul(og).mul(one.sub(og));
                let da_i = dc.mul(gg).mul(ig).mul(one.sub(ig));
                let da_g = dc.mul(ig).mul(one.sub(gg.mul(gg)));
                let da_f = dc.mul(c_prev).mul(fg).mul(one.sub(fg));
                dc.mul(fg).store(dc_ptr);
                // Padded units carry no weight, but their gates see 0·inf = NaN
                // when h holds an infinity; their da must be exactly zero so
                // that nothing reaches the real units through the products.
                let [da_i, da_f, da_g, da_o] = if u + w > h {
                    let real = S::splat(E::from_f64(h.saturating_sub(u) as f64));
                    let index: [E; 16] = std::array::from_fn(|i| E::from_f64(i as f64));
                    let lane = S::load(index.as_ptr());
                    [da_i, da_f, da_g, da_o].map(|d| lane.select_lt(real, d, S::splat(E::ZERO)))
                } else {
                    [da_i, da_f, da_g, da_o]
                };
                let dp = self.da.0.add(row * depth + u);
                da_i.store(dp);
                da_f.store(dp.add(hp));
                da_g.store(dp.add(2 * hp));
                da_o.store(dp.add(3 * hp));
            }
        }
    }
}

impl<E: Float> Kernel<E> for BackwardChunk<'_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
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
        let mut products = vec![[S::splat(E::ZERO); 4]; self.slots.rows.len()];

        let mut prev_active = 0; // slots that ran at iteration s + 1
        for s in (0..geo.steps).rev() {
            let active = self.slots.active(s);
            if active == 1 && prev_active == 1 {
                // One row: latency-bound, so two panels at a time (8 chains).
                let mut q = self.tiles.start;
                while q < self.tiles.end {
                    // SAFETY: slot 0's da row of iteration s + 1 is whole and
                    // was finished before the barrier; panels hold depth ×
                    // width (asserted); `finish` gets slot 0 and our tiles.
                    unsafe {
                        if q + 1 < self.tiles.end {
                            let [acc0, acc1] = tile_pair::<S>(
                                da_row(0, s + 1),
                                1,
                                depth,
                                [panel(q), panel(q + 1)],
                            );
                            self.finish::<S>(s, 0, q, acc0);
                            self.finish::<S>(s, 0, q + 1, acc1);
                            q += 2;
                        } else {
                            self.finish::<S>(
                                s,
                                0,
                                q,
                                tile::<S, 1>([da_row(0, s + 1)], 1, depth, panel(q))[0],
                            );
                            q += 1;
                        }
                    }
                }
            } else {
                for q in self.tiles.clone() {
                    // SAFETY: rows that ran at s + 1 have whole da rows,
                    // finished before the barrier; the others start from their
                    // dh_n seed; `finish` gets running slots and our tiles.
                    unsafe {
                        panel_product::<S>(
                            prev_active,
                            |r| da_row(r, s + 1),
                            depth,
                            panel(q),
                            &mut products,
                        );
                        for (slot, &product) in products[..active].iter().enumerate() {
                            let acc = if slot < prev_active {
                                product
                            } else {
                                self.seed::<S>(slot, q)
                            };
                            self.finish::<S>(s, slot, q, acc);
                        }
                    }
                }
            }
            if let Some(barrier) = self.barrier {
                barrier.wait();
            }
            prev_active = active;
        }

        // dh0 = da of each row's first step · w_hh; the dh_n seed for empty rows.
        for (slot, (&b, &len)) in self.slots.rows.iter().zip(self.slots.lens).enumerate() {
            for t in self.tiles.clone() {
                let u0 = t * width;
                // SAFETY: dh0 is B × H; this member writes only its units of row
                // b, whose chunk is this one; the da row and panel are whole.
                unsafe {
                    let acc = if len == 0 {
                        self.seed::<S>(slot, t)
                    } else {
                        tile::<S, 1>([da_row(slot, 0)], 1, depth, panel(t))[0]
                    };
                    for (v, acc_v) in acc.into_iter().enumerate() {
                        let u = u0 + v * w;
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

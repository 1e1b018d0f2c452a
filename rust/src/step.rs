//! The recurrent part of a sequence, for one chunk of batch rows over all time
//! steps: per step, the product with the packed `w_hh` fused with the gate math
//! (forward) or with the gate derivatives (backward), tile by tile, so each tile
//! of gates is finished while it is still in registers.
//!
//! Rows of a chunk are ordered by length, longest first ("slots"), so the rows
//! still running at step s are always a prefix and padded steps cost nothing.

use crate::float::Float;
use crate::kernel::{for_row_groups, load_n, store_n, tile};
use crate::simd::{self, Kernel, Simd};

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
    /// B × H.
    pub h_n: SharedMut<E>,
    pub c_n: SharedMut<E>,
    /// Null without a cache; else (T·B) × 4Hp, × Hp, × Hp in the caller's layout.
    pub gates: SharedMut<E>,
    pub cells: SharedMut<E>,
    pub h_prev: SharedMut<E>,
}

/// One chunk's whole forward recurrence.
pub struct ForwardChunk<'a, E> {
    pub geo: Geometry,
    pub slots: Slots<'a>,
    /// (T·B) × 4Hp: x·w_ihᵀ for every row, caller's layout.
    pub xw: &'a [E],
    /// 4Hp.
    pub bias: &'a [E],
    /// `pack::forward_panels` for this ISA's lane count.
    pub panels: &'a [E],
    /// B × H each, or None for zeros.
    pub h0: Option<&'a [E]>,
    pub c0: Option<&'a [E]>,
    pub out: ForwardOut<E>,
}

impl<E: Float> Kernel<E> for ForwardChunk<'_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        let geo = self.geo;
        let (h, hp) = (geo.hidden, geo.hidden_pad);
        let w = S::LANES;
        let n_slots = self.slots.rows.len();
        let tiles = hp / w;
        assert_eq!(
            self.panels.len(),
            tiles * h * 4 * w,
            "forward panels packed for another ISA"
        );
        assert!(self.xw.len() >= geo.steps * geo.batch * 4 * hp && self.bias.len() == 4 * hp);

        // Two h buffers (all tiles read the old h while writing the new), one c.
        let mut h_bufs = [vec![E::ZERO; n_slots * hp], vec![E::ZERO; n_slots * hp]];
        let mut c_state = vec![E::ZERO; n_slots * hp];
        for (r, &b) in self.slots.rows.iter().enumerate() {
            if let Some(h0) = self.h0 {
                h_bufs[0][r * hp..][..h].copy_from_slice(&h0[b * h..][..h]);
            }
            if let Some(c0) = self.c0 {
                c_state[r * hp..][..h].copy_from_slice(&c0[b * h..][..h]);
            }
        }
        let out = self.out;
        let cache = !out.gates.0.is_null();

        for s in 0..geo.steps {
            let active = self.slots.active(s);
            if active == 0 {
                break;
            }
            let (cur, next) = {
                let (a, b) = h_bufs.split_at_mut(1);
                if s % 2 == 0 {
                    (&a[0], &mut b[0])
                } else {
                    (&b[0], &mut a[0])
                }
            };
            for p in 0..tiles {
                let u0 = p * w;
                let panel = self.panels[p * h * 4 * w..].as_ptr();
                for_row_groups!(S, active, |r, MR| {
                    let a: [*const E; MR] = std::array::from_fn(|i| cur[(r + i) * hp..].as_ptr());
                    // SAFETY: each a[i] has hp ≥ h readable elements; the panel
                    // slice holds h rows of 4·w (length asserted above).
                    let acc = unsafe { tile::<S, MR>(a, 1, h, panel) };
                    for (i, acc) in acc.iter().enumerate() {
                        let slot = r + i;
                        let b = self.slots.rows[slot];
                        let pos = geo.pos(s, self.slots.lens[slot]);
                        let row = geo.row(pos, b);
                        // SAFETY: row < T·B and u0 + w ≤ hp, so every padded
                        // access is inside xw (asserted), bias, the state
                        // buffers and the caches (sized (T·B) × 4Hp / Hp by the
                        // caller); y gets only its min(w, h − u0) real lanes.
                        // Row b belongs to this chunk alone, so its rows of the
                        // shared outputs are written by no other task.
                        unsafe {
                            let xw = self.xw.as_ptr().add(row * 4 * hp + u0);
                            let bias = self.bias.as_ptr().add(u0);
                            let pre = |g: usize| {
                                acc[g]
                                    .add(S::load(xw.add(g * hp)))
                                    .add(S::load(bias.add(g * hp)))
                            };
                            let ig = simd::sigmoid(pre(0));
                            let fg = simd::sigmoid(pre(1));
                            let gg = simd::tanh(pre(2));
                            let og = simd::sigmoid(pre(3));
                            let c_ptr = c_state.as_mut_ptr().add(slot * hp + u0);
                            let c_new = fg.mul_add(S::load(c_ptr), ig.mul(gg));
                            let h_new = og.mul(simd::tanh(c_new));
                            c_new.store(c_ptr);
                            h_new.store(next.as_mut_ptr().add(slot * hp + u0));
                            let real = h.saturating_sub(u0).min(w);
                            store_n(h_new, out.y.0.add(row * h + u0), real);
                            if cache {
                                let gp = out.gates.0.add(row * 4 * hp + u0);
                                ig.store(gp);
                                fg.store(gp.add(hp));
                                gg.store(gp.add(2 * hp));
                                og.store(gp.add(3 * hp));
                                c_new.store(out.cells.0.add(row * hp + u0));
                                S::load(cur.as_ptr().add(slot * hp + u0))
                                    .store(out.h_prev.0.add(row * hp + u0));
                            }
                        }
                    }
                });
            }
        }

        // A row of length L last wrote h into h_bufs[L % 2] (h0 sits in [0]).
        for (slot, (&b, &len)) in self.slots.rows.iter().zip(self.slots.lens).enumerate() {
            let h_fin = &h_bufs[len % 2][slot * hp..][..h];
            let c_fin = &c_state[slot * hp..][..h];
            // SAFETY: h_n and c_n are B × H; row b belongs to this chunk alone.
            unsafe {
                std::ptr::copy_nonoverlapping(h_fin.as_ptr(), out.h_n.0.add(b * h), h);
                std::ptr::copy_nonoverlapping(c_fin.as_ptr(), out.c_n.0.add(b * h), h);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

/// Inputs of one chunk's backward recurrence.
pub struct BackwardChunk<'a, E> {
    pub geo: Geometry,
    pub slots: Slots<'a>,
    /// The forward cache, (T·B) × 4Hp and (T·B) × Hp, caller's layout.
    pub gates: &'a [E],
    pub cells: &'a [E],
    /// `pack::backward_panels` for this ISA's lane count.
    pub panels: &'a [E],
    /// B × H, or None for zeros.
    pub c0: Option<&'a [E]>,
    /// (T·B) × H, caller's layout; B × H; B × H. None means zeros.
    pub dy: Option<&'a [E]>,
    pub dh_n: Option<&'a [E]>,
    pub dc_n: Option<&'a [E]>,
    /// (T·B) × 4Hp gate gradients (written; rows of this chunk only).
    pub da: SharedMut<E>,
    /// B × H each (written; rows of this chunk only).
    pub dh0: SharedMut<E>,
    pub dc0: SharedMut<E>,
}

impl<E: Float> Kernel<E> for BackwardChunk<'_, E> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) {
        let geo = self.geo;
        let (h, hp) = (geo.hidden, geo.hidden_pad);
        let w = S::LANES;
        let width = 4 * w;
        let n_slots = self.slots.rows.len();
        let tiles = hp.div_ceil(width);
        let depth = 4 * hp;
        assert_eq!(
            self.panels.len(),
            tiles * depth * width,
            "backward panels packed for another ISA"
        );
        let rows_total = geo.steps * geo.batch;
        assert!(self.gates.len() >= rows_total * 4 * hp && self.cells.len() >= rows_total * hp);

        // Per slot, padded to Hp: dh_n (the seed of a row's last step), the
        // running dc, and c0 (the c_prev of a row's first step).
        let mut dh_seed = vec![E::ZERO; n_slots * hp];
        let mut dc_state = vec![E::ZERO; n_slots * hp];
        let mut c_first = vec![E::ZERO; n_slots * hp];
        for (r, &b) in self.slots.rows.iter().enumerate() {
            for (src, dst) in [
                (self.dh_n, &mut dh_seed),
                (self.dc_n, &mut dc_state),
                (self.c0, &mut c_first),
            ] {
                if let Some(src) = src {
                    dst[r * hp..][..h].copy_from_slice(&src[b * h..][..h]);
                }
            }
        }
        let one = S::splat(E::ONE);
        let da = self.da;

        let mut prev_active = 0; // slots that ran at iteration s + 1
        for s in (0..geo.steps).rev() {
            let active = self.slots.active(s);
            for q in 0..tiles {
                let u0 = q * width;
                let panel = self.panels[q * depth * width..].as_ptr();
                for_row_groups!(S, active, |r, MR| {
                    // dh flowing back from step s + 1: da_{s+1} · w_hh, or the
                    // dh_n seed for rows whose last step is s.
                    let acc: [[S; 4]; MR] = if r + MR <= prev_active {
                        let a: [*const E; MR] = std::array::from_fn(|i| {
                            let slot = r + i;
                            let pos = geo.pos(s + 1, self.slots.lens[slot]);
                            // SAFETY: row < T·B; da has (T·B) × 4Hp elements.
                            unsafe {
                                da.0.add(geo.row(pos, self.slots.rows[slot]) * depth) as *const E
                            }
                        });
                        // SAFETY: each a[i] is a whole da row (depth elements),
                        // written at iteration s + 1 by this chunk; the panel holds
                        // depth × width (asserted).
                        unsafe { tile::<S, MR>(a, 1, depth, panel) }
                    } else {
                        std::array::from_fn(|i| {
                            let slot = r + i;
                            if slot < prev_active {
                                let pos = geo.pos(s + 1, self.slots.lens[slot]);
                                let row = geo.row(pos, self.slots.rows[slot]);
                                // SAFETY: as in the grouped case, for one row.
                                unsafe {
                                    tile::<S, 1>([da.0.add(row * depth) as *const E], 1, depth, panel)
                                        [0]
                                }
                            } else {
                                std::array::from_fn(|v| {
                                    // Lanes past hp are never used (the epilogue stops there).
                                    let u = (u0 + v * w).min(hp - w);
                                    // SAFETY: u + w ≤ hp inside this slot's seed.
                                    unsafe { S::load(dh_seed.as_ptr().add(slot * hp + u)) }
                                })
                            }
                        })
                    };
                    for (i, acc) in acc.iter().enumerate() {
                        let slot = r + i;
                        let b = self.slots.rows[slot];
                        let len = self.slots.lens[slot];
                        let row = geo.row(geo.pos(s, len), b);
                        let prev_row = (s > 0).then(|| geo.row(geo.pos(s - 1, len), b));
                        for (v, &acc_v) in acc.iter().enumerate() {
                            let u = u0 + v * w;
                            if u >= hp {
                                break;
                            }
                            // SAFETY: row, prev_row < T·B and u + w ≤ hp, so all
                            // cache, da and state accesses are in bounds; dy gets
                            // only its real lanes. Rows of batch row b belong to
                            // this chunk alone.
                            unsafe {
                                let mut dh = acc_v;
                                if let Some(dy) = self.dy {
                                    let real = h.saturating_sub(u).min(w);
                                    dh = dh.add(load_n(dy.as_ptr().add(row * h + u), real));
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
                                    None => S::load(c_first.as_ptr().add(slot * hp + u)),
                                };
                                let tc = simd::tanh(c);
                                let dc_ptr = dc_state.as_mut_ptr().add(slot * hp + u);
                                // dc = dc_next + dh·o·(1 − tanh²c)
                                let dc = dh.mul(og).mul(one.sub(tc.mul(tc))).add(S::load(dc_ptr));
                                let da_o = dh.mul(tc).mul(og).mul(one.sub(og));
                                let da_i = dc.mul(gg).mul(ig).mul(one.sub(ig));
                                let da_g = dc.mul(ig).mul(one.sub(gg.mul(gg)));
                                let da_f = dc.mul(c_prev).mul(fg).mul(one.sub(fg));
                                dc.mul(fg).store(dc_ptr);
                                let dp = da.0.add(row * depth + u);
                                da_i.store(dp);
                                da_f.store(dp.add(hp));
                                da_g.store(dp.add(2 * hp));
                                da_o.store(dp.add(3 * hp));
                            }
                        }
                    }
                });
            }
            prev_active = active;
        }

        // dh0 = da_first · w_hh for rows that ran; the dh_n seed for empty rows.
        for (slot, (&b, &len)) in self.slots.rows.iter().zip(self.slots.lens).enumerate() {
            // SAFETY: dh0/dc0 are B × H and row b belongs to this chunk alone;
            // the da row and the panels are whole (see above); u0 + 4w lanes of
            // the tile are stored only up to h.
            unsafe {
                if len == 0 {
                    std::ptr::copy_nonoverlapping(
                        dh_seed.as_ptr().add(slot * hp),
                        self.dh0.0.add(b * h),
                        h,
                    );
                } else {
                    let row = geo.row(geo.pos(0, len), b);
                    for q in 0..tiles {
                        let u0 = q * width;
                        let panel = self.panels[q * depth * width..].as_ptr();
                        let acc =
                            tile::<S, 1>([da.0.add(row * depth) as *const E], 1, depth, panel)[0];
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
                std::ptr::copy_nonoverlapping(
                    dc_state.as_ptr().add(slot * hp),
                    self.dc0.0.add(b * h),
                    h,
                );
            }
        }
    }
}

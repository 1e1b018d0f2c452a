//! Zoneout's candidate cell c̃_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t, written once.
//!
//! With zoneout of c the cache keeps what the plain LSTM keeps: the gates and
//! the state c_t (after zoneout, the next step's c_{t−1}), not the candidate
//! c̃_t that σ_h and the output peephole saw. Backward rebuilds c̃_t from the
//! cached gates and the cached c_{t−1} with [`candidate`], the very operation
//! the forward's gate math ran (one multiply, one fused multiply-add of this
//! ISA's vectors, `Simd::mul_add`: unfused on the scalar path), so the rebuilt
//! value is the forward's bits on every ISA. [`Candidates`] runs it over rows
//! outside the kernels (the peephole sums, `Cache.c` in Python).

use crate::check::expect_len;
use crate::error::{Error, Result};
use crate::simd::{Kernel, Simd, SimdElement};

/// The cell the gate math computes from the activated gates and the state
/// c_{t−1}: f ⊙ c_{t−1} + i ⊙ g, as `fg.mul_add(c_prev, ig.mul(gg))`. The
/// forward's general gate body computes its c̃_t with this function, and
/// every rebuild of c̃_t calls it too: keep it the one place of this
/// operation order.
#[inline(always)]
pub fn candidate<S: Simd>(ig: S, fg: S, gg: S, c_prev: S) -> S {
    fg.mul_add(c_prev, ig.mul(gg))
}

/// [`candidate`] over `n` rows: `out` row r (Hp elements) from row r of the
/// gates (4·Hp, blocks i, f, g, o) and of `c_prev` (Hp), with Hp a multiple of
/// every ISA's lane count (`hidden_pad`). Dispatch it with the ISA that ran
/// the forward (`Isa::active`): the bits are that ISA's. Lengths that do not
/// fit are `Error::Value` naming the slice (`check::expect_len`).
pub struct Candidates<'a, E> {
    pub hidden_pad: usize,
    pub gates: &'a [E],
    pub c_prev: &'a [E],
    pub out: &'a mut [E],
}

impl<E: SimdElement> Kernel<E> for Candidates<'_, E> {
    /// `Error::Value` naming the slice whose length does not fit the others
    /// (checked before anything is written): the type is public API, so a
    /// wrong call is an error, never a panic.
    type Output = Result<()>;

    #[inline(always)]
    fn run<S: Simd<E = E>>(self) -> Result<()> {
        let hp = self.hidden_pad;
        if hp == 0 || !hp.is_multiple_of(S::LANES) {
            return Err(Error::Value(format!(
                "hidden_pad: expected a positive multiple of {} (the lanes of this ISA), got {hp}",
                S::LANES
            )));
        }
        let rows = self.out.len() / hp;
        expect_len("out", self.out.len(), rows * hp)?;
        expect_len("c_prev", self.c_prev.len(), rows * hp)?;
        expect_len("gates", self.gates.len(), rows * 4 * hp)?;
        for r in 0..rows {
            let gp = self.gates[r * 4 * hp..].as_ptr();
            let cp = self.c_prev[r * hp..].as_ptr();
            let op = self.out[r * hp..].as_mut_ptr();
            for u in (0..hp).step_by(S::LANES) {
                // SAFETY: u + LANES ≤ hp (hp a multiple of LANES) inside row
                // r of each array (lengths checked above).
                unsafe {
                    let (ig, fg, gg) = (
                        S::load(gp.add(u)),
                        S::load(gp.add(hp + u)),
                        S::load(gp.add(2 * hp + u)),
                    );
                    candidate(ig, fg, gg, S::load(cp.add(u))).store(op.add(u));
                }
            }
        }
        Ok(())
    }
}

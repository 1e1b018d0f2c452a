//! The checks of every argument of a pass, all made before any work starts:
//! sizes that overflow the address space are `Error::TooLarge`, every other
//! mismatch `Error::Value`, each naming the argument (docs/api.md, "Bad input").

use crate::error::{Error, Result};
use crate::float::Float;
use crate::sequence::{hidden_pad, Cache, CacheRef, Dims, Grads, Outputs, Seeds, Sequence};
use crate::variant::Zone;

fn product(name: &str, factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .filter(|&n| n <= isize::MAX as usize / 8)
        .ok_or_else(|| {
            Error::TooLarge(format!(
                "{name}: size {factors:?} overflows the address space"
            ))
        })
}

pub(crate) fn expect_len(name: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Value(format!(
            "{name}: expected {want} elements, got {got}"
        )));
    }
    Ok(())
}

fn expect_opt(name: &str, got: Option<usize>, want: usize) -> Result<()> {
    got.map_or(Ok(()), |got| expect_len(name, got, want))
}

impl<E: Float> Sequence<'_, E> {
    pub(crate) fn rows(&self) -> Result<usize> {
        product("x", &[self.dims.steps, self.dims.batch])
    }

    pub(crate) fn check(&self) -> Result<()> {
        let Dims {
            steps,
            batch,
            input,
            hidden,
        } = self.dims;
        if hidden == 0 {
            return Err(Error::Value("hidden_size must be at least 1".into()));
        }
        // The projection first: it gives P, the width of h.
        if let Some(w_hr) = self.variant.w_hr {
            if w_hr.is_empty() || w_hr.len() % hidden != 0 {
                return Err(Error::Value(format!(
                    "w_hr: expected proj_size × hidden_size elements with proj_size ≥ 1 and \
                     hidden_size = {hidden}, got {}",
                    w_hr.len()
                )));
            }
        }
        let state = self.state();
        // w_hh next: it bounds H and P before they are padded.
        expect_len(
            "w_hh",
            self.w_hh.len(),
            product("w_hh", &[4, hidden, state])?,
        )?;
        let hp = hidden_pad::<E>(hidden);
        let pp = hidden_pad::<E>(state);
        let rows = self.rows()?;
        // The buffers the passes allocate besides their arguments: the cache
        // and backward's scratch (T·B × 4Hp, and with a projection the dh and m
        // of every step, T·B × (Pp + Hp)); per batch row, four states of at
        // most Hp + Pp and the accumulators of a tile (four vectors, at most
        // 32 elements); w_hh's panels (at most 4Hp × (max(Hp, Pp) + 64)), the
        // projection's (at most (Hp + 64) × (Pp + 64) twice); w_ih padded to
        // 4Hp rows.
        product("cache", &[rows, 4, hp])?;
        product("cache", &[rows, pp + hp])?;
        product("the state of the batch rows", &[batch, 4 * (hp + pp) + 32])?;
        product("w_hh packed in panels", &[4 * hp, hp.max(pp) + 64])?;
        product("w_hr packed in panels", &[2 * (hp + 64), pp + 64])?;
        product("w_ih padded to 4·Hp rows", &[4 * hp, input])?;
        expect_len("x", self.x.len(), product("x", &[rows, input])?)?;
        expect_len(
            "w_ih",
            self.w_ih.len(),
            product("w_ih", &[4, hidden, input])?,
        )?;
        expect_opt("bias", self.bias.map(<[E]>::len), 4 * hidden)?;
        expect_opt(
            "h0",
            self.h0.map(<[E]>::len),
            product("h0", &[batch, state])?,
        )?;
        expect_opt(
            "c0",
            self.c0.map(<[E]>::len),
            product("c0", &[batch, hidden])?,
        )?;
        self.variant.check()?;
        expect_opt(
            "peepholes",
            self.variant.peepholes.map(<[E]>::len),
            3 * hidden,
        )?;
        expect_opt(
            "recurrent dropout mask",
            self.variant.recurrent_keep.map(<[E]>::len),
            product("recurrent dropout mask", &[batch, state])?,
        )?;
        for (name, zone, width_pad) in [
            ("zoneout mask of h", self.variant.zoneout_h, pp),
            ("zoneout mask of c", self.variant.zoneout_c, hp),
        ] {
            if let Zone::Keep(d) = zone {
                expect_len(name, d.len(), product(name, &[rows, width_pad])?)?;
            }
        }
        if let Some(lengths) = self.lengths {
            expect_len("lengths", lengths.len(), batch)?;
            if let Some((b, &len)) = lengths.iter().enumerate().find(|&(_, &len)| len > steps) {
                return Err(Error::Value(format!(
                    "lengths[{b}] = {len} is out of range: lengths must lie in [0, T] = [0, {steps}]"
                )));
            }
        }
        Ok(())
    }
}

/// The cache of `rows` rows: lengths of (gates, cells, h_prev) and of the
/// pre-activations, which the variants that need them must have. Zoneout
/// needs no other array (`cells` holds the states after zoneout; backward
/// rebuilds the candidates from them and the gates).
fn expect_cache<E: Float>(
    seq: &Sequence<'_, E>,
    rows: usize,
    [gates, cells, h_prev]: [usize; 3],
    pre: Option<usize>,
) -> Result<()> {
    let hp = hidden_pad::<E>(seq.dims.hidden);
    expect_len("cache gates", gates, rows * 4 * hp)?;
    expect_len("cache cells", cells, rows * hp)?;
    expect_len("cache h_prev", h_prev, rows * hidden_pad::<E>(seq.state()))?;
    if seq.variant.caches_pre() {
        let pre = pre.ok_or_else(|| {
            Error::Value("cache pre: this variant needs its pre-activations cached".into())
        })?;
        expect_len("cache pre", pre, rows * 4 * hp)?;
    }
    Ok(())
}

/// Checks the arguments of `forward`; returns the number of rows, T·B.
pub fn forward_args<E: Float>(
    seq: &Sequence<'_, E>,
    out: &Outputs<'_, E>,
    cache: Option<&Cache<'_, E>>,
) -> Result<usize> {
    seq.check()?;
    let Dims { batch, hidden, .. } = seq.dims;
    let state = seq.state();
    let rows = seq.rows()?;
    expect_len("y", out.y.len(), rows * state)?;
    expect_len("h_n", out.h_n.len(), batch * state)?;
    expect_len("c_n", out.c_n.len(), batch * hidden)?;
    if let Some(c) = cache {
        let lens = [c.gates.len(), c.cells.len(), c.h_prev.len()];
        let pre = c.pre.as_ref().map(|p| p.len());
        expect_cache(seq, rows, lens, pre)?;
    }
    Ok(rows)
}

/// Checks the arguments of `backward`; returns the number of rows, T·B.
pub fn backward_args<E: Float>(
    seq: &Sequence<'_, E>,
    cache: &CacheRef<'_, E>,
    seeds: &Seeds<'_, E>,
    grads: &Grads<'_, E>,
) -> Result<usize> {
    cache_ref(seq, cache)?;
    backward_seeds_grads(seq, seeds, grads)
}

/// Checks a cache that [`forward_args`]'s cache filled for `seq` (the
/// arrays named: gates, cells, h_prev, pre); returns the number of rows, T·B.
pub fn cache_ref<E: Float>(seq: &Sequence<'_, E>, cache: &CacheRef<'_, E>) -> Result<usize> {
    seq.check()?;
    let rows = seq.rows()?;
    let lens = [cache.gates.len(), cache.cells.len(), cache.h_prev.len()];
    expect_cache(seq, rows, lens, cache.pre.map(<[E]>::len))?;
    Ok(rows)
}

/// The seeds and gradients of a backward pass over `seq` (its cache aside:
/// [`backward_args`] checks that, a checkpointed pass its kept states).
/// Returns the number of rows, T·B.
pub fn backward_seeds_grads<E: Float>(
    seq: &Sequence<'_, E>,
    seeds: &Seeds<'_, E>,
    grads: &Grads<'_, E>,
) -> Result<usize> {
    seq.check()?;
    let Dims {
        batch,
        input,
        hidden,
        ..
    } = seq.dims;
    let rows = seq.rows()?;
    let hp = hidden_pad::<E>(hidden);
    let state = seq.state();
    expect_opt("dy", seeds.dy.map(<[E]>::len), rows * state)?;
    expect_opt("dh_n", seeds.dh_n.map(<[E]>::len), batch * state)?;
    expect_opt("dc_n", seeds.dc_n.map(<[E]>::len), batch * hidden)?;
    expect_len("dx", grads.dx.len(), rows * input)?;
    expect_len("dh0", grads.dh0.len(), batch * state)?;
    expect_len("dc0", grads.dc0.len(), batch * hidden)?;
    expect_len("dw_ih", grads.dw_ih.len(), 4 * hidden * input)?;
    expect_len("dw_hh", grads.dw_hh.len(), 4 * hidden * state)?;
    let dw_hr = grads.dw_hr.as_ref().map(|d| d.len());
    if !seq.projects() && dw_hr.is_some() {
        return Err(Error::Value(
            "dw_hr: given for a layer without a projection".into(),
        ));
    }
    expect_opt("dw_hr", dw_hr, state * hidden)?;
    expect_opt("db", grads.db.as_ref().map(|d| d.len()), 4 * hidden)?;
    expect_opt(
        "scratch",
        grads.scratch.as_ref().map(|s| s.len()),
        rows * 4 * hp,
    )?;
    let peepholes = seq.variant.peepholes.map(<[E]>::len);
    let dpeepholes = grads.dpeepholes.as_ref().map(|d| d.len());
    if peepholes.is_none() && dpeepholes.is_some() {
        return Err(Error::Value(
            "dpeepholes: given for a layer without peepholes".into(),
        ));
    }
    expect_opt("dpeepholes", dpeepholes, 3 * hidden)?;
    if let Some([dh, dc]) = &grads.flow {
        expect_len("flow dh", dh.len(), rows)?;
        expect_len("flow dc", dc.len(), rows)?;
    }
    Ok(rows)
}

//! What one sequence pass takes and gives: the sizes ([`Dims`]), the inputs
//! ([`Sequence`]), the outputs, the cache forward leaves for backward, the
//! gradients backward is seeded with and returns, and the padded hidden size
//! of the cache layout ([`hidden_pad`]). The passes themselves are in
//! `lstm.rs`; the checks of these arguments in `check.rs`.

use crate::float::Float;
use crate::kernels::layout::Geometry;
use crate::kernels::pack::PanelCache;
use crate::variant::Variant;

/// T, B, I, H.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub steps: usize,
    pub batch: usize,
    pub input: usize,
    pub hidden: usize,
}

impl Dims {
    /// Multiply-adds of a forward over these dimensions, T·B·4H·(I+H) (the
    /// measure of a call's size; a backward does about twice as many),
    /// saturating.
    pub fn work(&self) -> usize {
        [
            self.steps,
            self.batch,
            4 * self.hidden,
            self.input + self.hidden,
        ]
        .into_iter()
        .fold(1, usize::saturating_mul)
    }
}

/// Everything that defines one sequence pass. Arrays are dense row-major:
/// `x` (T, B, I), or (B, T, I) when `batch_first`; `w_ih` (4H, I); `w_hh`
/// (4H, P); `bias` (4H,) = b_ih + b_hh; `h0` (B, P), `c0` (B, H); `lengths`
/// (B,); `variant` the gate math and the projection (the default: the plain
/// LSTM). P, the width of the state h, is the projection's `proj_size` (the
/// rows of `variant.w_hr`), H without one ([`Sequence::state`]).
#[derive(Clone, Copy)]
pub struct Sequence<'a, E> {
    pub dims: Dims,
    pub batch_first: bool,
    pub reverse: bool,
    pub lengths: Option<&'a [usize]>,
    pub x: &'a [E],
    pub w_ih: &'a [E],
    pub w_hh: &'a [E],
    pub bias: Option<&'a [E]>,
    pub h0: Option<&'a [E]>,
    pub c0: Option<&'a [E]>,
    pub panels: Option<&'a PanelCache<E>>,
    pub variant: Variant<'a, E>,
}

/// What backward needs from forward, in the sequence's layout (rows ordered
/// like x): activated gates (T·B, 4·Hp) in blocks i, f, g, o; cell states
/// (T·B, Hp) and the h each step started from, (T·B, Pp). Hp and Pp are H and
/// P padded ([`hidden_pad`]). That is 5·Hp + Pp per (row, step) (6·Hp without
/// a projection); `pre`, the pre-activations (T·B, 4·Hp), only for the
/// variants whose derivatives need them ([`Variant::caches_pre`]: 4·Hp
/// more), else None. With zoneout of c `cells` holds the states c_t after
/// zoneout (the next step's c_{t−1}), as the plain LSTM's: the cell each step
/// computed, c̃_t = f ⊙ c_{t−1} + i ⊙ g, is rebuilt from the gates and
/// c_{t−1} with the forward's operation (`kernels/candidate.rs`), so zoneout
/// keeps no more than the plain cache (its training masks aside).
pub struct Cache<'a, E> {
    pub gates: &'a mut [E],
    pub cells: &'a mut [E],
    pub h_prev: &'a mut [E],
    pub pre: Option<&'a mut [E]>,
}

/// Read-only view of a [`Cache`].
#[derive(Clone, Copy)]
pub struct CacheRef<'a, E> {
    pub gates: &'a [E],
    pub cells: &'a [E],
    pub h_prev: &'a [E],
    pub pre: Option<&'a [E]>,
}

/// Outputs of forward: `y` like x with last dimension P; `h_n` (B, P), `c_n`
/// (B, H).
pub struct Outputs<'a, E> {
    pub y: &'a mut [E],
    pub h_n: &'a mut [E],
    pub c_n: &'a mut [E],
}

/// Gradients of the outputs (None = zeros): `dy` like y, `dh_n` (B, P), `dc_n`
/// (B, H).
#[derive(Clone, Copy, Default)]
pub struct Seeds<'a, E> {
    pub dy: Option<&'a [E]>,
    pub dh_n: Option<&'a [E]>,
    pub dc_n: Option<&'a [E]>,
}

/// Gradients, each shaped like its variable; `db` (4H,) is the gradient of
/// both b_ih and b_hh (None: not wanted). `scratch`, when given, holds the gate
/// gradients (T·B × 4Hp, any contents): callers that allocate large arrays
/// better (NumPy asks for huge pages) pass it; otherwise it is allocated here.
/// `dpeepholes` (3H,), [p_i, p_o, p_f], is wanted with peepholes. `flow`,
/// when given, gets the gradient-flow norms ‖dL/dh_t‖ and ‖dL/dc_t‖ of every
/// (t, b), each (T, B) time-major by real time, 0 past a row's length.
/// `dh0` is (B, P), `dw_hh` (4H, P); `dw_hr` (P, H) is wanted with a
/// projection (None: not computed).
pub struct Grads<'a, E> {
    pub dx: &'a mut [E],
    pub dh0: &'a mut [E],
    pub dc0: &'a mut [E],
    pub dw_ih: &'a mut [E],
    pub dw_hh: &'a mut [E],
    pub db: Option<&'a mut [E]>,
    pub scratch: Option<&'a mut [E]>,
    pub dpeepholes: Option<&'a mut [E]>,
    pub dw_hr: Option<&'a mut [E]>,
    pub flow: Option<[&'a mut [E]; 2]>,
}

/// The padded hidden size Hp of the cache layout for element type `E`.
pub fn hidden_pad<E: Float>(hidden: usize) -> usize {
    hidden.next_multiple_of(E::PAD)
}

impl<E: Float> Sequence<'_, E> {
    /// Where every (step, row) of this sequence lives in the per-row buffers.
    pub(crate) fn geometry(&self) -> Geometry {
        Geometry {
            steps: self.dims.steps,
            batch: self.dims.batch,
            hidden: self.dims.hidden,
            hidden_pad: hidden_pad::<E>(self.dims.hidden),
            state: self.state(),
            state_pad: hidden_pad::<E>(self.state()),
            batch_major: self.batch_first,
            reverse: self.reverse,
        }
    }

    /// P, the width of the state h: the rows of the projection `w_hr` (P × H),
    /// H without one. (`check` has made sure that `w_hr` is a whole number of
    /// rows.)
    pub fn state(&self) -> usize {
        match self.variant.w_hr {
            Some(w) => w.len() / self.dims.hidden.max(1),
            None => self.dims.hidden,
        }
    }

    /// Bytes of `w_ih` and `w_hh` (4H × I and 4H × P) in the element type:
    /// what each step of a batch-1 forward reads (half of it in bf16
    /// inference, which this does not count).
    pub(crate) fn weight_bytes(&self) -> usize {
        4 * self.dims.hidden * (self.dims.input + self.state()) * size_of::<E>()
    }

    /// Whether the pass has a projection.
    pub(crate) fn projects(&self) -> bool {
        self.variant.w_hr.is_some()
    }

    /// The length of batch row `b` (T without `lengths`).
    pub(crate) fn length(&self, b: usize) -> usize {
        self.lengths.map_or(self.dims.steps, |l| l[b])
    }

    /// Whether any row has a step to run (not so for T = 0, B = 0 or every
    /// length 0: such a call needs no state, no packed weights, no threads).
    pub(crate) fn runs(&self) -> bool {
        self.dims.steps > 0 && (0..self.dims.batch).any(|b| self.length(b) > 0)
    }

    /// Rows (in the layout) of padded steps, which the kernels never visit.
    pub(crate) fn padded_rows(&self) -> impl Iterator<Item = usize> + '_ {
        let geo = self.geometry();
        (0..self.dims.batch)
            .flat_map(move |b| (self.length(b)..self.dims.steps).map(move |pos| geo.row(pos, b)))
    }
}

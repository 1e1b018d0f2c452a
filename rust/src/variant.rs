//! What makes an LSTM other than the plain one (docs/variants.md): peepholes,
//! clip, coupled input and forget gates, no forget gate, and ONNX's
//! activations for the gates (σ_f), the cell candidate (σ_g) and the output
//! (σ_h). [`Variant::default`] is the plain LSTM.
//!
//! The kernels take the variant as a compile-time parameter: the plain LSTM
//! runs its own gate math with no test of any option in its inner loop, every
//! other variant one general gate body that reads these options (a `match`
//! on each activation per vector, which costs little next to the products).
//! `lstm.rs` picks one of the two once per call.
//!
//! A projection (`w_hr`, PyTorch's `proj_size`) runs in the general body
//! too: it changes what a step does after the gate math (h_t = m_t·W_hrᵀ,
//! a product per step) rather than the gate math itself, so the kernels test
//! it once per step, never per vector (`kernels/forward_step.rs`,
//! `backward_step.rs`).
//!
//! Backward needs, besides the plain cache (activated gates, cells, h_prev:
//! 6·Hp per (row, step)), the pre-activations z (4·Hp more, 10·Hp in all)
//! when it cannot get a derivative from the activation's output alone: with
//! `clip` (the clamp's gradient tests |z|) or when σ_f or σ_g is one of Relu,
//! LeakyRelu, ThresholdedRelu, ScaledTanh, Elu, Softsign, Softplus
//! ([`Variant::caches_pre`]). σ_h's derivative is taken at c_t, which the
//! cache holds anyway. Peepholes, input_forget and no forget gate need
//! nothing more.
//!
//! Zoneout ([`Zone`], docs/variants.md 'Zoneout') runs in the general body
//! too: it changes what a step keeps of its state, after the gate math. The
//! cache is the plain one: `cells` holds the state c_t after zoneout (the
//! next step's c_{t−1}), and backward rebuilds the cell the step computed
//! (c̃_t, for σ_h's derivative and the output peephole) from the gates and
//! c_{t−1} with the forward's operation (`kernels/candidate.rs`). The
//! training masks are the caller's ((T·B) × Pp and × Hp), kept for backward.

use crate::error::{Error, Result};
use crate::simd::{self, Simd, SimdElement};

/// One of ONNX's activations with its alpha and beta (docs/variants.md,
/// 'Activations'; the parameters are the model's, defaults filled in by the
/// caller).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Sigmoid,
    Tanh,
    Relu,
    /// min(max(α a + β, 0), 1)
    HardSigmoid(f64, f64),
    /// α a + β
    Affine(f64, f64),
    /// a if a ≥ 0 else α a
    LeakyRelu(f64),
    /// a if a > α else 0
    ThresholdedRelu(f64),
    /// α tanh(β a)
    ScaledTanh(f64, f64),
    /// a if a ≥ 0 else α (e^a − 1)
    Elu(f64),
    /// a / (1 + |a|)
    Softsign,
    /// log(1 + e^a)
    Softplus,
}

/// `f` applied to each lane in f64 (the functions the vector code has no
/// routine for: log1p, expm1), rounded back to the element type.
#[inline(always)]
fn per_lane<S: Simd>(v: S, f: impl Fn(f64) -> f64) -> S {
    let mut lanes = [S::E::ZERO; 16];
    // SAFETY: LANES ≤ 16 elements fit in `lanes`, for the store and the load.
    unsafe {
        v.store(lanes.as_mut_ptr());
        for x in &mut lanes[..S::LANES] {
            *x = S::E::from_f64(f(x.to_f64()));
        }
        S::load(lanes.as_ptr())
    }
}

impl Activation {
    /// ONNX's name (any case) with the parameters it takes; None for one it
    /// does not take. A missing parameter or an extra one is an error naming
    /// the activation (the Python layer fills ONNX's defaults in first).
    pub fn parse(name: &str, alpha: Option<f64>, beta: Option<f64>) -> Result<Self> {
        let need = |p: Option<f64>, what: &str| {
            p.ok_or_else(|| Error::Value(format!("activations: {name} needs its {what}")))
        };
        let none = |p: Option<f64>, what: &str| match p {
            Some(v) => Err(Error::Value(format!(
                "activations: {name} takes no {what}, got {v}"
            ))),
            None => Ok(()),
        };
        let lower = name.to_ascii_lowercase();
        let two = |make: fn(f64, f64) -> Self| Ok(make(need(alpha, "alpha")?, need(beta, "beta")?));
        let one = |make: fn(f64) -> Self| {
            none(beta, "beta")?;
            Ok(make(need(alpha, "alpha")?))
        };
        let zero = |act: Self| {
            none(alpha, "alpha")?;
            none(beta, "beta")?;
            Ok(act)
        };
        match lower.as_str() {
            "sigmoid" => zero(Activation::Sigmoid),
            "tanh" => zero(Activation::Tanh),
            "relu" => zero(Activation::Relu),
            "softsign" => zero(Activation::Softsign),
            "softplus" => zero(Activation::Softplus),
            "hardsigmoid" => two(Activation::HardSigmoid),
            "affine" => two(Activation::Affine),
            "scaledtanh" => two(Activation::ScaledTanh),
            "leakyrelu" => one(Activation::LeakyRelu),
            "thresholdedrelu" => one(Activation::ThresholdedRelu),
            "elu" => one(Activation::Elu),
            _ => Err(Error::Value(format!(
                "activations: unknown activation {name:?}; known: Sigmoid, Tanh, Relu, \
                 HardSigmoid, Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, Elu, \
                 Softsign, Softplus"
            ))),
        }
    }

    /// Whether the derivative needs the pre-activation a, not only y = act(a).
    pub fn needs_input(self) -> bool {
        !matches!(
            self,
            Activation::Sigmoid
                | Activation::Tanh
                | Activation::HardSigmoid(..)
                | Activation::Affine(..)
        )
    }

    /// act(a), lane by lane.
    #[inline(always)]
    pub fn apply<S: Simd>(self, a: S) -> S {
        let k = |v: f64| S::splat(S::E::from_f64(v));
        let zero = S::splat(S::E::ZERO);
        let one = S::splat(S::E::ONE);
        match self {
            Activation::Sigmoid => simd::sigmoid(a),
            Activation::Tanh => simd::tanh(a),
            // NaN < 0 is false: a NaN stays NaN, as with np.maximum.
            Activation::Relu => a.select_lt(zero, zero, a),
            Activation::HardSigmoid(al, be) => a.mul(k(al)).add(k(be)).clamp(zero, one),
            Activation::Affine(al, be) => a.mul(k(al)).add(k(be)),
            Activation::LeakyRelu(al) => a.select_lt(zero, a.mul(k(al)), a),
            Activation::ThresholdedRelu(al) => k(al).select_lt(a, a, zero),
            Activation::ScaledTanh(al, be) => simd::tanh(a.mul(k(be))).mul(k(al)),
            Activation::Elu(al) => {
                // expm1 of min(a, 0): the branch not taken must not overflow.
                let m = per_lane(a.select_lt(zero, a, zero), f64::exp_m1);
                a.select_lt(zero, m.mul(k(al)), a)
            }
            Activation::Softsign => a.div(one.add(a.abs())),
            // log(1 + e^a) = max(a, 0) + log1p(e^−|a|): never overflows.
            Activation::Softplus => per_lane(a, |x| x.max(0.0) + (-x.abs()).exp().ln_1p()),
        }
    }

    /// d · act'(a), with y = act(a) (docs/variants.md's table; where the
    /// derivative jumps, the branch that holds the point gives it).
    #[inline(always)]
    pub fn backprop<S: Simd>(self, d: S, a: S, y: S) -> S {
        let k = |v: f64| S::splat(S::E::from_f64(v));
        let zero = S::splat(S::E::ZERO);
        let one = S::splat(S::E::ONE);
        match self {
            Activation::Sigmoid => d.mul(y).mul(one.sub(y)),
            Activation::Tanh => d.mul(one.sub(y.mul(y))),
            Activation::Relu => zero.select_lt(a, d, zero),
            Activation::HardSigmoid(al, _) => {
                // α where 0 < y < 1, else 0.
                let inside = zero.select_lt(y, y.select_lt(one, one, zero), zero);
                inside.select_lt(one, zero, d.mul(k(al)))
            }
            Activation::Affine(al, _) => d.mul(k(al)),
            Activation::LeakyRelu(al) => a.select_lt(zero, d.mul(k(al)), d),
            Activation::ThresholdedRelu(al) => k(al).select_lt(a, d, zero),
            Activation::ScaledTanh(al, be) => {
                let t = simd::tanh(a.mul(k(be)));
                d.mul(k(al).mul(k(be)).mul(one.sub(t.mul(t))))
            }
            Activation::Elu(al) => a.select_lt(zero, d.mul(y.add(k(al))), d),
            Activation::Softsign => {
                let q = one.add(a.abs());
                d.div(q.mul(q))
            }
            Activation::Softplus => d.mul(simd::sigmoid(a)),
        }
    }
}

/// The options of a layer that change its gate math. The default is the
/// plain LSTM. `peepholes` is (3H,) in ONNX's order p_i, p_o, p_f as the
/// caller gives it; the kernels see it padded to 3·Hp (each block Hp,
/// zeros in padded units).
#[derive(Clone, Copy, Debug)]
pub struct Variant<'a, E> {
    pub peepholes: Option<&'a [E]>,
    /// The projection W_hr, (P, H) row-major as the caller gives it: the state
    /// h is then P wide (h_t = m_t·W_hrᵀ, m_t = o_t ⊙ σ_h(c_t)). None: h = m.
    pub w_hr: Option<&'a [E]>,
    /// Pre-activations clamped to [−clip, clip]; > 0.
    pub clip: Option<E>,
    /// f = 1 − i.
    pub input_forget: bool,
    /// false: f ≡ 1.
    pub forget_gate: bool,
    /// σ_f (gates i, f, o), σ_g (cell candidate), σ_h (output).
    pub f: Activation,
    pub g: Activation,
    pub h: Activation,
    /// Recurrent dropout's keep mask r (docs/variants.md, 'Recurrent dropout'),
    /// entries 1/(1−p) or 0: the recurrent product's operand is h_{t−1} ⊙ r.
    /// (B, P) as the caller gives it; the kernels see it padded to B × Pp
    /// (`lstm.rs`). None: no recurrent dropout. The forward kernels cache
    /// h_{t−1} ⊙ r as h_prev (the operand of dW_hh, so the cache stays 6·Hp
    /// per (row, step)); backward multiplies da_{t+1}·W_hh by r. Not part of
    /// the gate math: both kernel bodies read it, once per tile.
    pub recurrent_keep: Option<&'a [E]>,
    /// Zoneout of h (P wide) and of c (H wide); [`Zone::Off`] without.
    pub zoneout_h: Zone<'a, E>,
    pub zoneout_c: Zone<'a, E>,
}

/// Zoneout of one state (docs/variants.md, 'Zoneout').
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Zone<'a, E> {
    /// No zoneout: the state is the step's candidate.
    Off,
    /// Training: the mask d, (T·B) × Wp (W = P for h, H for c, padded like
    /// the caches) in the sequence's layout (rows ordered like x), 1 where the
    /// unit keeps its previous value, else 0 (0 in padded units). The
    /// state is a select: `d ? prev : new`.
    Keep(&'a [E]),
    /// Inference: the expectation `z·prev + (1 − z)·new`, with z (and 1 − z)
    /// in the compute dtype.
    Rate(E),
}

impl<E: SimdElement> Zone<'_, E> {
    /// Whether this state zones out at all.
    #[inline(always)]
    pub fn is_on(&self) -> bool {
        !matches!(self, Zone::Off)
    }

    /// The state after a step, at unit `u` of row `row` (rows `width_pad`
    /// apart in the mask): from the previous state and the step's candidate.
    ///
    /// # Safety
    /// With a mask, `row · width_pad + u + LANES` lies inside it.
    #[inline(always)]
    pub unsafe fn mix<S: Simd<E = E>>(
        self,
        row: usize,
        width_pad: usize,
        u: usize,
        prev: S,
        new: S,
    ) -> S {
        match self {
            Zone::Off => new,
            Zone::Keep(d) => {
                // SAFETY: the caller's bound.
                let d = unsafe { S::load(d.as_ptr().add(row * width_pad + u)) };
                d.select_lt(S::splat(E::from_f64(0.5)), new, prev)
            }
            // The reference's order: z·prev + (1 − z)·new, no fused multiply-add.
            Zone::Rate(z) => S::splat(z).mul(prev).add(S::splat(E::ONE - z).mul(new)),
        }
    }

    /// The gradient `g` of the state after a step split into (what goes to
    /// the previous state, what goes to the candidate): d ⊙ g and (1 − d) ⊙ g
    /// (selects in training, z·g and (1 − z)·g at inference).
    ///
    /// # Safety
    /// As for [`Zone::mix`].
    #[inline(always)]
    pub unsafe fn split<S: Simd<E = E>>(
        self,
        row: usize,
        width_pad: usize,
        u: usize,
        g: S,
    ) -> (S, S) {
        let zero = S::splat(E::ZERO);
        match self {
            Zone::Off => (zero, g),
            Zone::Keep(d) => {
                // SAFETY: the caller's bound.
                let d = unsafe { S::load(d.as_ptr().add(row * width_pad + u)) };
                let half = S::splat(E::from_f64(0.5));
                (d.select_lt(half, zero, g), d.select_lt(half, g, zero))
            }
            Zone::Rate(z) => (S::splat(z).mul(g), S::splat(E::ONE - z).mul(g)),
        }
    }
}

impl<E> Default for Variant<'_, E> {
    fn default() -> Self {
        Variant {
            peepholes: None,
            w_hr: None,
            clip: None,
            input_forget: false,
            forget_gate: true,
            f: Activation::Sigmoid,
            g: Activation::Tanh,
            h: Activation::Tanh,
            recurrent_keep: None,
            zoneout_h: Zone::Off,
            zoneout_c: Zone::Off,
        }
    }
}

impl<E: SimdElement> Variant<'_, E> {
    /// Whether this is the plain LSTM: its gate math, and no zoneout.
    pub fn is_plain(&self) -> bool {
        self.plain_gates() && !self.zoneout_h.is_on() && !self.zoneout_c.is_on()
    }

    /// Whether the gate math is the plain LSTM's (the time loops' fast body):
    /// [`Variant::plain_gate_math`] and no projection. Zoneout and recurrent
    /// dropout are masks applied around that math, which the fast body
    /// applies too.
    pub fn plain_gates(&self) -> bool {
        self.w_hr.is_none() && self.plain_gate_math()
    }

    /// Whether the arithmetic from pre-activations to m_t is the plain
    /// LSTM's: no peepholes, clip, coupled or absent forget gate, and the
    /// default activations (a projection may follow).
    pub fn plain_gate_math(&self) -> bool {
        self.peepholes.is_none()
            && self.clip.is_none()
            && !self.input_forget
            && self.forget_gate
            && self.f == Activation::Sigmoid
            && self.g == Activation::Tanh
            && self.h == Activation::Tanh
    }

    /// This variant, with `PLAIN` (where [`Variant::plain_gate_math`] holds)
    /// its gate math written as constants: a kernel body compiled for
    /// `PLAIN` then holds no test or branch of the general gate math, whose
    /// code, kept in the loop, left its registers spilled. The same values,
    /// so the same bits.
    /// The plain gate math is the default variant's; what is not gate math
    /// (the projection and the masks) is this one's.
    #[inline(always)]
    pub fn gate_math_for<const PLAIN: bool>(self) -> Self {
        if PLAIN {
            Variant {
                w_hr: self.w_hr,
                recurrent_keep: self.recurrent_keep,
                zoneout_h: self.zoneout_h,
                zoneout_c: self.zoneout_c,
                ..Variant::default()
            }
        } else {
            self
        }
    }

    /// Whether backward needs the pre-activations z in the cache (see the
    /// module's doc).
    pub fn caches_pre(&self) -> bool {
        self.clip.is_some() || self.f.needs_input() || self.g.needs_input()
    }

    /// The options that make no sense, as an error naming them.
    pub fn check(&self) -> Result<()> {
        if let Some(clip) = self.clip {
            // NaN fails this too.
            if clip.partial_cmp(&E::ZERO) != Some(std::cmp::Ordering::Greater) {
                return Err(Error::Value(format!(
                    "clip must be > 0 (or None for no clip), got {clip:?}"
                )));
            }
        }
        if self.input_forget && !self.forget_gate {
            return Err(Error::Value(
                "input_forget=True couples the forget gate to the input gate (f = 1 - i), \
                 forget_gate=False removes it (f = 1): give one or the other"
                    .into(),
            ));
        }
        for (name, zone) in [
            ("zoneout of h", self.zoneout_h),
            ("zoneout of c", self.zoneout_c),
        ] {
            if let Zone::Rate(z) = zone {
                // NaN fails this too. (A rate in (0, 1) may round to 0 or 1
                // in float32: the expectation is still defined.)
                if !(z >= E::ZERO && z <= E::ONE) {
                    return Err(Error::Value(format!(
                        "{name}: the rate must lie in [0, 1), got {z:?}"
                    )));
                }
            }
        }
        Ok(())
    }
}

"""The NumPy reference: the math of docs/api.md ('The math') and of every LSTM
variant of docs/variants.md, written plainly.

This module is the oracle of the test suite and the floor of the benchmarks. It
has the same functional API as :mod:`lstm_fast` (``forward``, ``backward``,
``cell_forward``, ``cell_backward``), with the same rules for dtypes, ``lengths``
and array arguments (the shared ``_checks``), and aims to be read, not to be
fast: one Python loop over time steps, one NumPy expression per line of the math.

Gate blocks are stacked i, f, g, o (PyTorch's order). Every array in a cache is
time-major, (T, B, H) for a sequence and (B, H) for a single cell step.

``lengths`` follows PyTorch's PackedSequence: row ``b`` is only valid for its
first ``lengths[b]`` steps. The loop below runs over *processing* steps
``s = 0 .. T-1``; row ``b`` works on time index ``s`` (forward direction) or
``lengths[b] - 1 - s`` (``reverse=True``) and does nothing once
``s >= lengths[b]``.

The variants (keyword-only options of ``forward`` and ``cell_forward``; their
defaults are the plain LSTM, computed with the same operations in the same
order, so bit for bit as before):

- ``w_hr`` (P, H): a projection (PyTorch's ``proj_size``), ``h_t = w_hr @ m_t``
  with ``m_t = o_t * h(c_t)``; the state h, ``h0``, ``y`` and the columns of
  ``w_hh`` then have P entries.
- ``peepholes`` (3H,): ONNX's ``P``, blocks in ONNX's order ``[p_i, p_o, p_f]``.
- ``clip``: the pre-activations of the four gates clamped to [-clip, clip].
- ``input_forget``: coupled gates, ``f = 1 - i``.
- ``forget_gate=False``: no forget gate, ``f = 1``.
- ``activations``: ONNX's three activations (f for the gates i, f, o; g for the
  cell candidate; h for the cell state in the output), see :class:`Activation`.

- ``layer_norm=True``: the LayerNorm LSTM (haste's LayerNormLSTM, Ba et al.
  2016): layer normalisation of x W_ih^T and of h W_hh^T over their 4H entries and
  of c_t (over H) before the output activation, with gains ``w_ln_ih``,
  ``w_ln_hh`` (4H,), ``w_ln_c`` (H,) and biases ``b_ln_ih``, ``b_ln_hh``,
  ``b_ln_c`` (absent: a gain of 1, a bias of 0, gradient ``None``) and
  ``layer_norm_eps`` (1e-5, haste's and torch's); see :class:`LayerNormGradients`.
- Regularisation, training only, masks from ``seed`` (:mod:`.masks`): ``zoneout``
  on h and c (Krueger et al. 2016), ``recurrent_dropout`` (one mask per sequence
  on h_{t-1} in the recurrent product: Gal & Ghahramani's, Keras's), and
  ``weight_drop`` (DropConnect on w_hh, AWD-LSTM); ``training=False`` computes
  the expectation. :func:`dropout` is PyTorch's dropout between stacked layers.

``backward(..., flow=True)`` also returns the norms of dL/dh_t and dL/dc_t of
each step (:class:`GradientFlow`).

The engine's other two options of ``forward`` (and of the prepared weights):
``weight_dtype="bfloat16"`` is bf16 inference (README, 'bf16 inference'): the
float32 LSTM on the weight matrices ``w_ih``, ``w_hh``, ``w_hr`` rounded to
bfloat16 (:func:`bfloat16_round`), with the engine's restrictions (float32
inputs, no cache, no zoneout, no layer norm, no dropout in training);
``checkpoint=k`` is checked and changes nothing here (recompute gives the same
numbers as the full cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from . import _checks, masks
from ._types import (
    Cell,
    CellGradients,
    CellLayerNormGradients,
    CellVariantGradients,
    Forward,
    GradientFlow,
    Gradients,
    LayerNormGradients,
    VariantGradients,
)

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Cache",
    "CellCache",
    "CellLayerNormGradients",
    "CellVariantGradients",
    "GradientFlow",
    "LAYER_NORM_EPS",
    "LayerNormGradients",
    "PreparedWeights",
    "Regularisation",
    "Variant",
    "VariantGradients",
    "backward",
    "bfloat16_round",
    "cell_backward",
    "cell_forward",
    "compute_dtype",
    "dropout",
    "forward",
    "prepare_weights",
]


def compute_dtype(*arrays) -> np.dtype:
    """The dtype the computation runs in (docs/api.md, 'Dtypes').

    ``np.result_type`` of the floating inputs; float16 computes in float32; if
    no input is floating (integers or bools only) the computation is float64.
    ``None`` entries are ignored; complex, object or string inputs are a
    ``TypeError``.
    """
    return _checks.compute_dtype(
        _checks.real_array(f"argument {k}", a).dtype for k, a in enumerate(arrays) if a is not None
    )


def _arguments(
    raw: dict[str, Any],
    *,
    batch_first: bool = False,
    names: dict[str, str] | None = None,
    w_hr: Any = None,
    peepholes: Any = None,
    norms: dict[str, Any] | None = None,
) -> tuple[list[Any], np.dtype]:
    """The arguments x, w_ih, w_hh, b_ih, b_hh, h0, c0 as arrays (``None`` stays
    ``None``), checked as the functional API checks them, then ``w_hr``,
    ``peepholes`` and the layer-norm gains and biases of ``norms`` (in its order),
    and the compute dtype of them all."""
    names = names or {}
    if w_hr is None:
        arrays, (_, _, _, H) = _checks.pass_arguments(raw, batch_first=batch_first, names=names)
    else:
        arrays, H = _projected_arguments(raw, w_hr, batch_first=batch_first, names=names)
    if peepholes is not None:
        arrays["peepholes"] = _checks.shaped_array(
            "peepholes", peepholes, "(3*hidden_size,)", (3 * H,)
        )
    arrays.update(_checks.layer_norm_arrays(norms or {}, H))
    dtype = _checks.compute_dtype(a.dtype for a in arrays.values())
    return [arrays.get(k) for k in (*raw, "w_hr", "peepholes", *(norms or {}))], dtype


def _projected_arguments(
    raw: dict[str, Any], w_hr: Any, *, batch_first: bool, names: dict[str, str]
) -> tuple[dict[str, np.ndarray], int]:
    """``_checks.projected_arguments`` (the rules the engine's functional API
    applies too), with hidden_size."""
    arrays, (_, _, _, H) = _checks.projected_arguments(
        raw, w_hr, batch_first=batch_first, names=names
    )
    return arrays, H


def _seed(
    name: str, value: Any, symbols: str, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """A gradient from the caller, in the cache's dtype; None means zeros."""
    if value is None:
        return np.zeros(shape, dtype)
    return _checks.shaped_array(name, value, symbols, shape).astype(dtype)


def _copy(a: Any, dtype: np.dtype) -> np.ndarray | None:
    return None if a is None else np.array(a, dtype=dtype)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    # exp(-a) overflows to inf for a < -709 (float64) / -88 (float32) and then
    # 1 / (1 + inf) = 0 exactly, which is the right answer: only the warning
    # is silenced. NaN stays NaN.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-a))


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------
# Activations: ONNX's list (docs/variants.md, 'Activations')
#
# Each is a function of the pre-activation ``a`` with parameters alpha and beta,
# and its derivative applied to an incoming gradient: ``backprop(grad, a, y)``
# returns grad * act'(a), where y = act(a) is at hand (the derivatives of
# sigmoid and tanh are written with y, as the plain LSTM always was). Where the
# derivative jumps (Relu at 0, ...) the branch that holds the point in the
# function's definition gives it; ThresholdedRelu follows ONNX Runtime (and the
# ThresholdedRelu operator): x > alpha, not the LSTM operator's x >= alpha.


def _elu(a, alpha, beta):
    # expm1 of min(a, 0): the branch not taken must not overflow.
    return np.where(a >= 0, a, alpha * np.expm1(np.minimum(a, 0)))


def _softplus(a, alpha, beta):
    return np.logaddexp(0, a)  # log(1 + e^a) without overflow


class _Kind(NamedTuple):
    """One row of the activation table."""

    function: Callable[..., np.ndarray]  # (a, alpha, beta) -> y
    backprop: Callable[..., np.ndarray]  # (grad, a, y, alpha, beta) -> grad * act'(a)
    defaults: tuple[float | None, ...]  # ONNX's defaults of (alpha, beta) it takes; None: required


# fmt: off
ACTIVATIONS: dict[str, _Kind] = {
    "Sigmoid": _Kind(lambda a, al, be: _sigmoid(a),
                     lambda d, a, y, al, be: d * y * (1 - y), ()),
    "Tanh": _Kind(lambda a, al, be: np.tanh(a),
                  lambda d, a, y, al, be: d * (1 - y**2), ()),
    "Relu": _Kind(lambda a, al, be: np.maximum(a, 0),
                  lambda d, a, y, al, be: d * (a > 0), ()),
    "HardSigmoid": _Kind(lambda a, al, be: np.minimum(np.maximum(al * a + be, 0), 1),
                         lambda d, a, y, al, be: np.where((y > 0) & (y < 1), d * al, 0),
                         (0.2, 0.5)),
    "Affine": _Kind(lambda a, al, be: al * a + be,
                    lambda d, a, y, al, be: d * al, (None, None)),
    "LeakyRelu": _Kind(lambda a, al, be: np.where(a >= 0, a, al * a),
                       lambda d, a, y, al, be: np.where(a >= 0, d, d * al), (0.01,)),
    "ThresholdedRelu": _Kind(lambda a, al, be: np.where(a > al, a, 0),
                             lambda d, a, y, al, be: d * (a > al), (1.0,)),
    "ScaledTanh": _Kind(lambda a, al, be: al * np.tanh(be * a),
                        lambda d, a, y, al, be: d * (al * be * (1 - np.tanh(be * a) ** 2)),
                        (None, None)),
    "Elu": _Kind(_elu, lambda d, a, y, al, be: d * np.where(a >= 0, 1, y + al), (1.0,)),
    "Softsign": _Kind(lambda a, al, be: a / (1 + np.abs(a)),
                      lambda d, a, y, al, be: d / (1 + np.abs(a)) ** 2, ()),
    "Softplus": _Kind(_softplus, lambda d, a, y, al, be: d * _sigmoid(a), ()),
}
# fmt: on


@dataclass(frozen=True)
class Activation:
    """One of ONNX's activations with its parameters, e.g. ``Activation("Tanh")``,
    ``Activation("HardSigmoid", 0.2, 0.5)``, ``Activation("LeakyRelu", 0.1)``.

    ``name`` is matched without regard to case (ONNX Runtime does the same) and kept
    in ONNX's spelling. ``alpha`` and ``beta`` are used only by the activations that
    take them (HardSigmoid, Affine, ScaledTanh: both; LeakyRelu, ThresholdedRelu,
    Elu: alpha) and default to ONNX's values; Affine and ScaledTanh have none, so
    theirs must be given. Keras's ``hard_sigmoid`` (Keras 3: relu6(x + 3) / 6) is
    ``Activation("HardSigmoid", 1/6, 0.5)``.
    """

    name: str
    alpha: float | None = None
    beta: float | None = None

    def __post_init__(self):
        # The rules are the functional API's (_checks.activation_spec).
        name, alpha, beta = _checks.activation_spec(self.name, self.alpha, self.beta)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "beta", beta)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return ACTIVATIONS[self.name].function(a, self.alpha, self.beta)

    def backprop(self, grad: np.ndarray, a: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``grad * act'(a)``; ``y`` is ``self(a)``."""
        return ACTIVATIONS[self.name].backprop(grad, a, y, self.alpha, self.beta)


SIGMOID = Activation("Sigmoid")
TANH = Activation("Tanh")


def _activation(value: Any) -> Activation:
    """An entry of ``activations``: an Activation, a name, or (name, alpha[, beta])."""
    if isinstance(value, Activation):
        return value
    return Activation(*_checks.activation_entry(value))


@dataclass(frozen=True)
class Variant:
    """The options of a variant that are not arrays (docs/variants.md); the
    defaults are the plain LSTM."""

    clip: float | None = None
    input_forget: bool = False
    forget_gate: bool = True
    f: Activation = SIGMOID  # the gates i, f, o
    g: Activation = TANH  # the cell candidate
    h: Activation = TANH  # the cell state in the output

    @classmethod
    def of(cls, *, clip=None, input_forget=False, forget_gate=True, activations=None) -> Variant:
        """The options as ``forward`` takes them, checked (``_checks.variant_options``)."""
        clip, input_forget, forget_gate, specs = _checks.variant_options(
            clip=clip, input_forget=input_forget, forget_gate=forget_gate, activations=activations
        )
        if activations is None:
            return cls(clip, input_forget, forget_gate)
        f, g, h = (Activation(*spec) for spec in specs)
        return cls(clip, input_forget, forget_gate, f, g, h)

    def clamp(self, z: np.ndarray) -> np.ndarray:
        """The pre-activation the activation sees."""
        return z if self.clip is None else np.clip(z, -self.clip, self.clip)

    def clamp_grad(self, grad: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The gradient through :meth:`clamp`: zero where ``z`` was clamped
        (|z| > clip; at |z| = clip it passes, as torch.clamp's does)."""
        return grad if self.clip is None else np.where(np.abs(z) <= self.clip, grad, 0)


# --------------------------------------------------------------------------
# LayerNorm LSTM (docs/variants.md, 'LayerNorm LSTM')

#: haste's epsilon (and torch.nn.LayerNorm's default), added to the variance.
LAYER_NORM_EPS = _checks.LAYER_NORM_EPS
#: The gains and biases of the three normalisations, in their argument order.
LAYER_NORM_NAMES = _checks.LAYER_NORM_NAMES


@dataclass(frozen=True, eq=False)
class _LayerNorm:
    """The three normalisations' gains ``w_*`` and biases ``b_*`` (``None``: a gain
    of 1, a bias of 0) and ``eps``."""

    w_ih: np.ndarray | None
    b_ih: np.ndarray | None
    w_hh: np.ndarray | None
    b_hh: np.ndarray | None
    w_c: np.ndarray | None
    b_c: np.ndarray | None
    eps: float


class _Normalised(NamedTuple):
    """What backward needs of the normalisations of a pass: the parameters, the
    normalised x W_ih^T and h W_hh^T (before gain and bias) and c, and their
    1 / sqrt(var + eps) (width 1 in the last axis)."""

    norm: _LayerNorm
    sx_hat: np.ndarray
    sx_rstd: np.ndarray
    sh_hat: np.ndarray
    sh_rstd: np.ndarray
    c_hat: np.ndarray
    c_rstd: np.ndarray


def _layer_norm_arrays(layer_norm: Any, arrays: dict[str, Any]) -> bool:
    """``layer_norm`` checked; a gain or bias without it is a ``ValueError``
    (``_checks.layer_norm_flag``, the rule the engine's API shares)."""
    return _checks.layer_norm_flag(layer_norm, arrays)


def _layer_norm(arrays: list[Any], eps: Any, dtype: np.dtype) -> _LayerNorm:
    """The normalisations from the six checked arrays (``LAYER_NORM_NAMES``) and
    ``layer_norm_eps`` (a number > 0, finite)."""
    eps = _checks.layer_norm_eps(eps)
    w_ih, b_ih, w_hh, b_hh, w_c, b_c = (_copy(a, dtype) for a in arrays)
    return _LayerNorm(w_ih, b_ih, w_hh, b_hh, w_c, b_c, eps)


def _normalise(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Layer normalisation over the last axis without gain and bias: returns
    x_hat = (x - mean) * rstd and rstd = 1 / sqrt(var + eps), var the biased
    variance (divided by the width, as haste and torch compute it)."""
    mean = x.mean(axis=-1, keepdims=True)
    d = x - mean
    rstd = 1 / np.sqrt((d * d).mean(axis=-1, keepdims=True) + eps)
    return d * rstd, rstd


def _normalise_grad(dx_hat: np.ndarray, x_hat: np.ndarray, rstd: np.ndarray) -> np.ndarray:
    """The gradient through :func:`_normalise`: dL/dx from dL/dx_hat."""
    mean_d = dx_hat.mean(axis=-1, keepdims=True)
    mean_dx = (dx_hat * x_hat).mean(axis=-1, keepdims=True)
    return rstd * (dx_hat - mean_d - x_hat * mean_dx)


def _scale_shift(x_hat: np.ndarray, w: np.ndarray | None, b: np.ndarray | None) -> np.ndarray:
    """x_hat * w + b, either left out when absent."""
    out = x_hat if w is None else x_hat * w
    return out if b is None else out + b


def _gain(grad: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """The gradient through the gain: dL/dx_hat from dL/d(x_hat * w + b)."""
    return grad if w is None else grad * w


def _norm_grads(norm: _LayerNorm, dz, sx_hat, sh_hat, dn, c_hat, db) -> tuple:
    """The six gain and bias gradients from rows of dz (N, 4H), the normalised
    projections (N, 4H), dn (N, H), the gradient reaching the normalised cell's
    output, and c_hat (N, H); ``db`` is Σ dz."""
    return (
        None if norm.w_ih is None else (dz * sx_hat).sum(axis=0),
        None if norm.b_ih is None else db.copy(),
        None if norm.w_hh is None else (dz * sh_hat).sum(axis=0),
        None if norm.b_hh is None else db.copy(),
        None if norm.w_c is None else (dn * c_hat).sum(axis=0),
        None if norm.b_c is None else dn.sum(axis=0),
    )


# --------------------------------------------------------------------------
# Regularisation: zoneout, recurrent dropout, weight drop (docs/variants.md)


def _probability(name: str, value: Any) -> float:
    """A probability of the regularisation, in [0, 1)."""
    return _checks.probability(name, value)


@dataclass(frozen=True)
class Regularisation:
    """The training-only options of :func:`forward` (the defaults do nothing).

    ``zoneout_h``, ``zoneout_c``: the probability that a unit of h (of c) keeps its
    previous value at a step; ``recurrent_dropout``: the probability that a unit
    of h_{t-1} is dropped from the recurrent product (one mask per sequence);
    ``weight_drop``: that an entry of w_hh is dropped (one mask per call).
    ``seed`` (an integer in [0, 2**64)) and ``layer`` key the masks
    (:mod:`lstm_fast.masks`); ``training=False`` computes the expectation.
    """

    zoneout_h: float = 0.0
    zoneout_c: float = 0.0
    recurrent_dropout: float = 0.0
    weight_drop: float = 0.0
    seed: int | None = None
    layer: int = 0
    training: bool = True

    @classmethod
    def of(
        cls, *, zoneout=0.0, recurrent_dropout=0.0, weight_drop=0.0, seed=None, layer=0,
        training=True,
    ) -> Regularisation:  # fmt: skip
        """The options as :func:`forward` takes them, checked. ``zoneout`` is one
        probability for both states or a pair ``(zoneout_h, zoneout_c)``."""
        return cls(*_checks.regularisation(
            zoneout=zoneout, recurrent_dropout=recurrent_dropout, weight_drop=weight_drop,
            seed=seed, layer=layer, training=training,
        ))  # fmt: skip

    @property
    def masked(self) -> bool:
        """Whether the pass draws masks (training with some probability > 0)."""
        rates = (self.zoneout_h, self.zoneout_c, self.recurrent_dropout, self.weight_drop)
        return self.training and any(rates)


class _Zoneout:
    """Zoneout of one state (B, W) at each processing step: in training, ``keep``
    (T, B, W) bool, in processing order, says where the state keeps its previous
    value; at inference the state is the expectation with weight ``rate``."""

    def __init__(self, keep: np.ndarray | None, rate: Any):
        self.keep = keep
        self.rate = rate

    @classmethod
    def of(cls, keep_by_time, rate: float, reg: Regularisation, t_of, dtype) -> _Zoneout | None:
        """None without zoneout; ``keep_by_time`` is the mask indexed by real time."""
        if rate == 0:
            return None
        if reg.training:
            return cls(_to_steps(keep_by_time, t_of), None)
        return cls(None, dtype.type(rate))

    def mix(self, s: int, prev: np.ndarray, new: np.ndarray) -> np.ndarray:
        """The state after step s from the previous one and the step's candidate."""
        if self.keep is not None:
            return np.where(self.keep[s], prev, new)
        return self.rate * prev + (1 - self.rate) * new

    def split(self, s: int, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The gradient of the state after step s, split into (to the previous
        state, to the candidate)."""
        if self.keep is not None:
            return np.where(self.keep[s], grad, 0), np.where(self.keep[s], 0, grad)
        return self.rate * grad, (1 - self.rate) * grad


class _Masks(NamedTuple):
    """The masks of one pass: zoneout of h (T, B, P) and of c (T, B, H), bool,
    indexed by real time; the scaled keep masks of recurrent dropout (B, P) and of
    weight drop (4H, P). ``None`` where not drawn."""

    zoneout_h: np.ndarray | None
    zoneout_c: np.ndarray | None
    h_keep: np.ndarray | None
    w_hh_keep: np.ndarray | None


def _draw_masks(reg: Regularisation, direction: int, T, B, H, P, dtype) -> _Masks:
    """The masks of one training pass (all ``None`` at inference)."""
    if not reg.masked:
        return _Masks(None, None, None, None)
    seed, layer = reg.seed, reg.layer
    assert seed is not None  # Regularisation.of requires one for a masked pass
    zh = zc = h_keep = w_keep = None
    if reg.zoneout_h:
        zh = masks.events(seed, masks.ZONEOUT_H, layer, direction, (T, B, P), reg.zoneout_h)
    if reg.zoneout_c:
        zc = masks.events(seed, masks.ZONEOUT_C, layer, direction, (T, B, H), reg.zoneout_c)
    if reg.recurrent_dropout:
        h_keep = masks.scaled_keep(
            seed, masks.RECURRENT_DROPOUT, layer, direction, (B, P), reg.recurrent_dropout, dtype
        )
    if reg.weight_drop:
        w_keep = masks.scaled_keep(
            seed, masks.WEIGHT_DROP, layer, direction, (4 * H, P), reg.weight_drop, dtype
        )
    return _Masks(zh, zc, h_keep, w_keep)


def dropout(y, p, *, seed=None, layer: int = 0, batch_first: bool = False, training: bool = True):
    """PyTorch's ``dropout`` between stacked layers: layer ``layer``'s output ``y``
    (T, B, D*P), or (B, T, D*P) with ``batch_first``, times a scaled keep mask
    (1/(1-p) or 0) of stream ``masks.DROPOUT``, coordinates (t, b, u) whatever the
    layout. Identity at inference or with p = 0. It is linear, so the gradient of
    the input is ``dropout(dy, p, ...)`` with the same arguments."""
    p = _probability("p", p)
    batch_first = _checks.flag("batch_first", batch_first)
    training = _checks.flag("training", training)
    layer = _checks.integer("layer", layer)
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    y = _checks.real_array("y", y)
    if y.ndim != 3:
        raise ValueError(f"y must be 3-D (seq_len, batch, features), got shape {y.shape}")
    y = y.astype(_checks.compute_dtype([y.dtype]))
    if not training or p == 0:
        return y
    if seed is None:
        raise ValueError("seed must be given (an integer in [0, 2**64)) for dropout in training")
    seed = _checks.integer("seed", seed)
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    T, B, F = (y.shape[1], y.shape[0], y.shape[2]) if batch_first else y.shape
    keep = masks.scaled_keep(seed, masks.DROPOUT, layer, 0, (T, B, F), p, y.dtype)
    return y * (keep.transpose(1, 0, 2) if batch_first else keep)


# --------------------------------------------------------------------------
# bf16 inference (README, 'bf16 inference')


def bfloat16_round(a) -> np.ndarray:
    """``a`` in float32, rounded to bfloat16 (the upper 16 bits of a float32) to
    nearest, ties to even, and widened back: :func:`lstm_fast.bfloat16_round`
    written out. A value past bfloat16's largest finite one becomes +-inf; a NaN
    stays a NaN (quiet, its sign and upper payload kept)."""
    bits = np.array(a, dtype=np.float32).view(np.uint32)
    # Adding 0x7FFF plus the lowest kept bit rounds the dropped half to nearest,
    # ties to even; a carry into the exponent is the next binade (or inf).
    lowest_kept = (bits >> np.uint32(16)) & np.uint32(1)
    rounded = (bits + np.uint32(0x7FFF) + lowest_kept) & np.uint32(0xFFFF0000)
    # Truncating a NaN could leave no payload bit (an inf): set the quiet bit.
    quiet = (bits & np.uint32(0xFFFF0000)) | np.uint32(0x00400000)
    return np.where(np.isnan(bits.view(np.float32)), quiet, rounded).view(np.float32)


def _bfloat16_arguments(raw: dict[str, Any], w_hr, peepholes, *, need_cache, reg):
    """The arguments of a bf16 inference pass: refuses what the engine refuses,
    then returns ``raw``, ``w_hr`` and ``peepholes`` in float32 with the weight
    matrices (``w_ih``, ``w_hh``, ``w_hr``) rounded to bfloat16."""
    if reg.training and (
        reg.zoneout_h or reg.zoneout_c or reg.recurrent_dropout or reg.weight_drop
    ):
        raise ValueError(
            "weight_dtype='bfloat16' is for inference: zoneout, recurrent_dropout and "
            "weight_drop need training=False (or 0)"
        )
    if need_cache:
        raise ValueError(
            "need_cache=True: weights in bfloat16 are for inference only (pass "
            "need_cache=False; no cache, no backward); use float32 weights to train"
        )
    arrays = {k: None if v is None else _checks.real_array(k, v) for k, v in raw.items()}
    for name in ("x", "h0", "c0"):  # the state and the sums are float32
        array = arrays[name]
        given = getattr(raw[name], "dtype", None) is not None  # a list is cast
        if given and array is not None and array.dtype == np.float64:
            raise TypeError(
                f"{name} is float64: weights prepared in bfloat16 compute in float32 "
                f"(pass float32 arrays)"
            )
    f32 = np.dtype(np.float32)
    rounded = {"w_ih", "w_hh"}
    arrays = {
        k: None if v is None else bfloat16_round(v) if k in rounded else _copy(v, f32)
        for k, v in arrays.items()
    }
    w_hr = None if w_hr is None else bfloat16_round(_checks.real_array("w_hr", w_hr))
    peepholes = (
        None if peepholes is None else _copy(_checks.real_array("peepholes", peepholes), f32)
    )
    return arrays, w_hr, peepholes


# --------------------------------------------------------------------------
# One step, forward and backward


class _Step(NamedTuple):
    z: np.ndarray  # (B, 4H) pre-activations i, f, g, o, peepholes added, before clip
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    c: np.ndarray  # c_t
    h: np.ndarray  # h_t, (B, P) with a projection
    c_hat: np.ndarray | None = None  # with layer norm: c_t normalised, before gain and bias
    c_rstd: np.ndarray | None = None  # (B, 1): its 1 / sqrt(var + eps)


def _cell(a, c_prev, w_hr, peepholes, v: Variant, norm: _LayerNorm | None = None) -> _Step:
    """One step from the pre-activations ``a`` = x W_ih^T + h W_hh^T + b, (B, 4H)
    (their normalisations with ``norm``, which also normalises c_t for σ_h)."""
    H = c_prev.shape[1]
    z_i, z_f, z_g, z_o = a[:, 0:H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H : 4 * H]
    if peepholes is not None:
        p_i, p_o, p_f = peepholes[0:H], peepholes[H : 2 * H], peepholes[2 * H : 3 * H]
        z_i = z_i + p_i * c_prev
        z_f = z_f + p_f * c_prev
    i = v.f(v.clamp(z_i))
    if not v.forget_gate:
        f = np.ones_like(i)
    elif v.input_forget:
        f = 1 - i
    else:
        f = v.f(v.clamp(z_f))
    g = v.g(v.clamp(z_g))
    c = f * c_prev + i * g
    if peepholes is not None:
        z_o = z_o + p_o * c
    o = v.f(v.clamp(z_o))
    c_hat = c_rstd = None
    if norm is None:
        n = c  # what σ_h sees
    else:
        c_hat, c_rstd = _normalise(c, norm.eps)
        n = _scale_shift(c_hat, norm.w_c, norm.b_c)
    m = o * v.h(n)
    h = m if w_hr is None else m @ w_hr.T
    z = np.concatenate([z_i, z_f, z_g, z_o], axis=1)
    return _Step(z, i, f, g, o, c, h, c_hat, c_rstd)


def _cell_grads(
    dh, dc_next, z, i, f, g, o, c, c_prev, w_hr, peepholes, v: Variant,
    norm: _LayerNorm | None = None, c_hat=None, c_rstd=None,
):  # fmt: skip
    """One step of backpropagation through time: returns (dz (B, 4H), dc, dc_prev,
    dn).

    ``dh`` already holds ``dy`` of this step plus what flowed back from the next,
    ``dc_next`` what flowed back to c_t from the next step; ``dc`` is the whole
    dL/dc_t, ``dz`` the gradient of the pre-activations (that of ``a`` too), ``dn``
    that of n, what σ_h sees (c_t, or its normalisation with ``norm``: then
    ``c_hat`` and ``c_rstd`` are the step's).
    """
    H = c.shape[1]
    z_i, z_f, z_g, z_o = (z[:, k * H : (k + 1) * H] for k in range(4))
    dm = dh if w_hr is None else dh @ w_hr  # gradient of m = o * h(n)
    n = c if norm is None else _scale_shift(c_hat, norm.w_c, norm.b_c)
    h_n = v.h(n)
    do = dm * h_n
    dz_o = v.clamp_grad(v.f.backprop(do, v.clamp(z_o), o), z_o)
    dn = v.h.backprop(dm * o, n, h_n)
    if norm is None:
        dc = dc_next + dn
    else:
        dc = dc_next + _normalise_grad(_gain(dn, norm.w_c), c_hat, c_rstd)
    if peepholes is not None:
        dc = dc + dz_o * peepholes[H : 2 * H]  # o saw c_t through p_o
    di = dc * g
    if v.input_forget:
        di = di - dc * c_prev  # f = 1 - i
    dz_i = v.clamp_grad(v.f.backprop(di, v.clamp(z_i), i), z_i)
    dz_g = v.clamp_grad(v.g.backprop(dc * i, v.clamp(z_g), g), z_g)
    if v.forget_gate and not v.input_forget:
        dz_f = v.clamp_grad(v.f.backprop(dc * c_prev, v.clamp(z_f), f), z_f)
    else:
        dz_f = np.zeros_like(dz_i)  # f does not depend on its rows of the weights
    dc_prev = dc * f
    if peepholes is not None:  # i and f saw c_{t-1} through p_i and p_f
        dc_prev = dc_prev + dz_i * peepholes[0:H] + dz_f * peepholes[2 * H : 3 * H]
    return np.concatenate([dz_i, dz_f, dz_g, dz_o], axis=1), dc, dc_prev, dn


def _peephole_grads(dz, c_prev, c) -> np.ndarray:
    """d peepholes [p_i, p_o, p_f] from dz (N, 4H) and the cells (N, H) of the same rows."""
    H = c.shape[1]
    dp_i = (dz[:, 0:H] * c_prev).sum(axis=0)
    dp_f = (dz[:, H : 2 * H] * c_prev).sum(axis=0)
    dp_o = (dz[:, 3 * H :] * c).sum(axis=0)
    return np.concatenate([dp_i, dp_o, dp_f])


# --------------------------------------------------------------------------
# Scheduling of rows with lengths


def _schedule(lengths: np.ndarray, steps: int, reverse: bool):
    """Which time index each row works on at each processing step.

    Returns ``valid`` (T, B) bool, whether row b does real work at step s, and
    ``t_of`` (T, B), the time index it works on then (0 where not valid):
    ``s`` in the forward direction, ``lengths[b] - 1 - s`` with ``reverse``.
    """
    s = np.arange(steps)[:, None]
    valid = s < lengths[None, :]
    t_of = np.where(valid, lengths[None, :] - 1 - s if reverse else s, 0)
    return valid, t_of


def _to_steps(by_time: np.ndarray, t_of: np.ndarray) -> np.ndarray:
    """Reorder a (T, B, ...) array from real time to processing order."""
    rows = np.arange(by_time.shape[1])
    return by_time[t_of, rows]


def _to_time(by_step: np.ndarray, valid: np.ndarray, t_of: np.ndarray) -> np.ndarray:
    """Reorder a (T, B, ...) array from processing order to real time; padding is 0."""
    out = np.zeros_like(by_step)
    s, b = np.nonzero(valid)
    out[t_of[s, b], b] = by_step[s, b]
    return out


# --------------------------------------------------------------------------
# Results and caches


@dataclass(eq=False)
class Cache:
    """What :func:`backward` needs from a :func:`forward` call (private copies).

    ``i, f, g, o, c`` are the post-activation gates and cell states, (T, B, H),
    time-major, indexed by real time (also for ``reverse=True``); entries of
    padded steps are zero. ``z`` (T, B, 4H) holds the pre-activations (peepholes
    added, before ``clip``). With zoneout ``c`` is the cell the step computed,
    before zoneout mixed it with c_{t-1}; ``h_prev`` and ``c_prev`` are always
    the states themselves.

    With ``layer_norm``, ``ln`` holds the gains, biases and eps, ``sx_hat``,
    ``sh_hat`` (T, B, 4H), the normalised x W_ih^T and h W_hh^T (before gain and
    bias), and ``sx_rstd``, ``sh_rstd`` (T, B, 1), their 1 / sqrt(var + eps);
    ``c_hat``, ``c_rstd`` likewise for c. With regularisation: ``regularisation``
    the options and ``masks`` those drawn (training); ``w_hh`` is then the
    weight-dropped matrix the pass used.
    """

    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    c: np.ndarray
    x: np.ndarray  # (T, B, I), time-major
    w_ih: np.ndarray
    w_hh: np.ndarray
    has_b_ih: bool
    has_b_hh: bool
    lengths: np.ndarray  # (B,) int64
    reverse: bool
    h_prev: np.ndarray  # (T, B, P): the state h each step started from (real time)
    c_prev: np.ndarray  # (T, B, H): the state c each step started from (real time)
    batch_first: bool
    z: np.ndarray  # (T, B, 4H)
    w_hr: np.ndarray | None = None
    peepholes: np.ndarray | None = None
    variant: Variant = Variant()
    ln: _Normalised | None = None
    regularisation: Regularisation = Regularisation()
    masks: _Masks = _Masks(None, None, None, None)

    def __repr__(self) -> str:
        T, B, H = self.c.shape
        return f"reference.Cache(steps={T}, batch={B}, hidden={H}, dtype={self.c.dtype})"


@dataclass(eq=False)
class CellCache:
    """What :func:`cell_backward` needs: gates ``i, f, g, o`` and ``c``, (B, H);
    with ``layer_norm`` the normalised projections and cell as in :class:`Cache`."""

    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    c: np.ndarray
    x: np.ndarray
    h_prev: np.ndarray
    c_prev: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    has_b_ih: bool
    has_b_hh: bool
    z: np.ndarray  # (B, 4H)
    w_hr: np.ndarray | None = None
    peepholes: np.ndarray | None = None
    variant: Variant = Variant()
    ln: _Normalised | None = None

    def __repr__(self) -> str:
        B, H = self.c.shape
        return f"reference.CellCache(batch={B}, hidden={H}, dtype={self.c.dtype})"


# --------------------------------------------------------------------------
# The functional API


def forward(
    x,
    w_ih,
    w_hh,
    b_ih=None,
    b_hh=None,
    h0=None,
    c0=None,
    *,
    batch_first: bool = False,
    lengths=None,
    reverse: bool = False,
    need_cache: bool = True,
    w_hr=None,
    peepholes=None,
    clip=None,
    input_forget=False,
    forget_gate=True,
    activations=None,
    layer_norm=False,
    w_ln_ih=None,
    b_ln_ih=None,
    w_ln_hh=None,
    b_ln_hh=None,
    w_ln_c=None,
    b_ln_c=None,
    layer_norm_eps=LAYER_NORM_EPS,
    zoneout=0.0,
    recurrent_dropout=0.0,
    weight_drop=0.0,
    seed=None,
    layer=0,
    training=True,
    weight_dtype=None,
    checkpoint=None,
) -> Forward:
    """One LSTM layer over a sequence; see docs/api.md, 'Functional API', and
    docs/variants.md for ``w_hr``, ``peepholes``, ``clip``, ``input_forget``,
    ``forget_gate``, ``activations``, the LayerNorm LSTM (``layer_norm`` and the
    ``*_ln_*`` gains and biases, ``layer_norm_eps``) and the regularisation
    (``zoneout``, ``recurrent_dropout``, ``weight_drop``, ``seed``, ``layer``,
    ``training``). ``weight_dtype="bfloat16"``: bf16 inference, the weight
    matrices rounded by :func:`bfloat16_round`; ``checkpoint`` (an int >= 1 or
    None) is checked and gives the same result as the full cache."""
    raw = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "h0": h0, "c0": c0}
    norms = dict(zip(LAYER_NORM_NAMES, (w_ln_ih, b_ln_ih, w_ln_hh, b_ln_hh, w_ln_c, b_ln_c)))
    batch_first = _checks.flag("batch_first", batch_first)
    reverse = _checks.flag("reverse", reverse)
    need_cache = _checks.flag("need_cache", need_cache)
    variant = Variant.of(
        clip=clip, input_forget=input_forget, forget_gate=forget_gate, activations=activations
    )
    layer_norm = _layer_norm_arrays(layer_norm, norms)
    reg = Regularisation.of(
        zoneout=zoneout, recurrent_dropout=recurrent_dropout, weight_drop=weight_drop,
        seed=seed, layer=layer, training=training,
    )  # fmt: skip
    if checkpoint is not None:
        # Recompute (the engine's checkpoint=k) changes no number: nothing to do here.
        _checks.positive_int("checkpoint", checkpoint)
    if _checks.bfloat16_weights(weight_dtype):
        raw, w_hr, peepholes = _bfloat16_arguments(
            raw, w_hr, peepholes, need_cache=need_cache, reg=reg
        )
    (x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, peepholes, *norm_arrays), dtype = _arguments(
        raw, batch_first=batch_first, w_hr=w_hr, peepholes=peepholes, norms=norms
    )
    norm = _layer_norm(norm_arrays, layer_norm_eps, dtype) if layer_norm else None
    x = x.astype(dtype)
    if batch_first:
        x = x.transpose(1, 0, 2)
    x = np.ascontiguousarray(x)
    T, B, I = x.shape  # noqa: E741
    w_ih = np.array(w_ih, dtype=dtype)
    w_hh = np.array(w_hh, dtype=dtype)
    w_hr = _copy(w_hr, dtype)
    peepholes = _copy(peepholes, dtype)
    H = w_hh.shape[0] // 4
    P = H if w_hr is None else w_hr.shape[0]  # the size of the state h
    bias = np.zeros(4 * H, dtype)
    if b_ih is not None:
        bias = bias + np.asarray(b_ih, dtype)
    if b_hh is not None:
        bias = bias + np.asarray(b_hh, dtype)
    h = np.zeros((B, P), dtype) if h0 is None else np.array(h0, dtype=dtype)
    c = np.zeros((B, H), dtype) if c0 is None else np.array(c0, dtype=dtype)
    if lengths is None:
        lengths = np.full(B, T, dtype=np.int64)
    else:
        lengths = _checks.check_lengths(lengths, B, T, own=True)

    valid, t_of = _schedule(lengths, T, reverse)

    # The masks (training), keyed by real time, row and unit: the same whatever
    # the layout, the lengths or the order of evaluation.
    drawn = _draw_masks(reg, int(reverse), T, B, H, P, dtype)
    zone_h = _Zoneout.of(drawn.zoneout_h, reg.zoneout_h, reg, t_of, dtype)
    zone_c = _Zoneout.of(drawn.zoneout_c, reg.zoneout_c, reg, t_of, dtype)
    if drawn.w_hh_keep is not None:
        w_hh = w_hh * drawn.w_hh_keep  # DropConnect: the pass uses the dropped matrix

    # The input projection of every step at once, one big matrix product (as a
    # 2-D product: NumPy's stacked 3-D matmul is several times slower), put in
    # processing order so that the loop reads step s as a plain slice.
    if norm is None:
        x_proj = (x.reshape(T * B, I) @ w_ih.T + bias).reshape(T, B, 4 * H)
    else:
        sx_hat, sx_rstd = _normalise((x.reshape(T * B, I) @ w_ih.T).reshape(T, B, 4 * H), norm.eps)
        x_proj = _scale_shift(sx_hat, norm.w_ih, norm.b_ih) + bias
    x_proj = _to_steps(x_proj, t_of)

    # Everything the loop produces, in processing order; rows past their length
    # compute garbage that is masked here and dropped by _to_time below.
    i_s, f_s, g_s, o_s, c_s, c_prev = (np.zeros((T, B, H), dtype) for _ in range(6))
    y, h_prev = np.zeros((T, B, P), dtype), np.zeros((T, B, P), dtype)
    z_s = np.zeros((T, B, 4 * H), dtype)
    if norm is not None:
        sh_hat, c_hat = np.zeros((T, B, 4 * H), dtype), np.zeros((T, B, H), dtype)
        sh_rstd, c_rstd = np.zeros((T, B, 1), dtype), np.zeros((T, B, 1), dtype)
    for s in range(T):
        h_in = h if drawn.h_keep is None else h * drawn.h_keep  # recurrent dropout
        if norm is None:
            a = x_proj[s] + h_in @ w_hh.T
        else:
            sh_hat[s], sh_rstd[s] = _normalise(h_in @ w_hh.T, norm.eps)
            a = x_proj[s] + _scale_shift(sh_hat[s], norm.w_hh, norm.b_hh)
        step = _cell(a, c, w_hr, peepholes, variant, norm)
        h_prev[s], c_prev[s] = h, c
        h_new = step.h if zone_h is None else zone_h.mix(s, h, step.h)
        c_new = step.c if zone_c is None else zone_c.mix(s, c, step.c)
        y[s], z_s[s], c_s[s] = h_new, step.z, step.c
        i_s[s], f_s[s], g_s[s], o_s[s] = step.i, step.f, step.g, step.o
        if norm is not None:
            c_hat[s], c_rstd[s] = step.c_hat, step.c_rstd
        ok = valid[s][:, None]  # finished rows keep their last state
        h = np.where(ok, h_new, h)
        c = np.where(ok, c_new, c)

    cache = None
    if need_cache:
        cache = Cache(
            i=_readonly(_to_time(i_s, valid, t_of)),
            f=_readonly(_to_time(f_s, valid, t_of)),
            g=_readonly(_to_time(g_s, valid, t_of)),
            o=_readonly(_to_time(o_s, valid, t_of)),
            c=_readonly(_to_time(c_s, valid, t_of)),
            x=x,
            w_ih=w_ih,
            w_hh=w_hh,
            has_b_ih=b_ih is not None,
            has_b_hh=b_hh is not None,
            lengths=lengths,
            reverse=reverse,
            h_prev=_to_time(h_prev, valid, t_of),
            c_prev=_to_time(c_prev, valid, t_of),
            batch_first=batch_first,
            z=_readonly(_to_time(z_s, valid, t_of)),
            w_hr=w_hr,
            peepholes=peepholes,
            variant=variant,
            regularisation=reg,
            masks=drawn,
        )
        if norm is not None:
            cache.ln = _Normalised(
                norm,
                _readonly(sx_hat),  # already by real time
                _readonly(sx_rstd),
                *(_readonly(_to_time(a, valid, t_of)) for a in (sh_hat, sh_rstd, c_hat, c_rstd)),
            )
    y = _to_time(y, valid, t_of)
    if batch_first:
        y = np.ascontiguousarray(y.transpose(1, 0, 2))
    return Forward(y, h, c, cache)


def backward(
    cache: Cache, dy=None, dh_n=None, dc_n=None, *, flow: bool = False
) -> Gradients | VariantGradients | LayerNormGradients:
    """Backpropagation through time for one :func:`forward` call, with the masks
    that forward drew.

    Returns ``Gradients`` for a forward without ``w_hr``, ``peepholes`` and
    ``layer_norm`` and ``flow=False`` (other options change values, not fields);
    :class:`LayerNormGradients` after a forward with ``layer_norm=True``; else
    :class:`VariantGradients`, whose first seven fields are those of ``Gradients``.
    """
    if not isinstance(cache, Cache):
        raise TypeError(f"cache must be a reference.Cache, got {type(cache).__name__}")
    flow = _checks.flag("flow", flow)
    T, B, H = cache.c.shape
    I = cache.x.shape[2]  # noqa: E741
    P = cache.h_prev.shape[2]
    p = "hidden_size" if cache.w_hr is None else "proj_size"
    dtype = cache.c.dtype
    ln, reg, drawn = cache.ln, cache.regularisation, cache.masks
    norm = None if ln is None else ln.norm
    if cache.batch_first:
        dy = _seed("dy", dy, f"(batch, seq_len, {p})", (B, T, P), dtype).transpose(1, 0, 2)
    else:
        dy = _seed("dy", dy, f"(seq_len, batch, {p})", (T, B, P), dtype)
    dh = _seed("dh_n", dh_n, f"(batch, {p})", (B, P), dtype)
    dc = _seed("dc_n", dc_n, "(batch, hidden_size)", (B, H), dtype)

    # The loop runs the processing steps backwards, on arrays in processing order.
    valid, t_of = _schedule(cache.lengths, T, cache.reverse)
    dy, z, i, f, g, o, c, c_prev = (
        _to_steps(a, t_of)
        for a in (dy, cache.z, cache.i, cache.f, cache.g, cache.o, cache.c, cache.c_prev)
    )
    zone_h = _Zoneout.of(drawn.zoneout_h, reg.zoneout_h, reg, t_of, dtype)
    zone_c = _Zoneout.of(drawn.zoneout_c, reg.zoneout_c, reg, t_of, dtype)
    if ln is not None:
        sh_hat, sh_rstd, c_hat, c_rstd = (
            _to_steps(a, t_of) for a in (ln.sh_hat, ln.sh_rstd, ln.c_hat, ln.c_rstd)
        )
        dsh = np.zeros((T, B, 4 * H), dtype)  # gradient of h W_hh^T, before its normalisation
        dn = np.zeros((T, B, H), dtype)  # gradient of the normalised cell (gain and bias in)
    # Only dh and dc are sequential; dz of every step (and dh_t with a projection)
    # are kept for the big products after the loop.
    dz = np.zeros((T, B, 4 * H), dtype)
    dh_steps = np.zeros((T, B, P), dtype)
    norm_h, norm_c = np.zeros((T, B), dtype), np.zeros((T, B), dtype)
    for s in reversed(range(T)):
        ok = valid[s][:, None]
        dh_t = dh + np.where(ok, dy[s], 0)
        dh_new, dc_new = dh_t, dc  # what reaches the step's own h and c
        if zone_h is not None:
            dh_kept, dh_new = zone_h.split(s, dh_t)
        if zone_c is not None:
            dc_kept, dc_new = zone_c.split(s, dc)
        if norm is None:
            dz_s, dc_t, dc_prev, _ = _cell_grads(
                dh_new, dc_new, z[s], i[s], f[s], g[s], o[s], c[s], c_prev[s],
                cache.w_hr, cache.peepholes, cache.variant,
            )  # fmt: skip
        else:
            dz_s, dc_t, dc_prev, dn_s = _cell_grads(
                dh_new, dc_new, z[s], i[s], f[s], g[s], o[s], c[s], c_prev[s],
                cache.w_hr, cache.peepholes, cache.variant, norm, c_hat[s], c_rstd[s],
            )  # fmt: skip
            dn[s] = np.where(ok, dn_s, 0)
        dz[s] = np.where(ok, dz_s, 0)  # padded steps contribute nothing
        if cache.w_hr is not None:
            dh_steps[s] = np.where(ok, dh_new, 0)
        if flow:
            norm_h[s] = np.where(valid[s], np.linalg.norm(dh_t, axis=1), 0)
            norm_c[s] = np.where(valid[s], np.linalg.norm(dc_t, axis=1), 0)
        if norm is None:
            dh_back = dz[s] @ cache.w_hh
        else:
            dsh[s] = _normalise_grad(_gain(dz[s], norm.w_hh), sh_hat[s], sh_rstd[s])
            dh_back = dsh[s] @ cache.w_hh
        if drawn.h_keep is not None:
            dh_back = dh_back * drawn.h_keep
        if zone_h is not None:
            dh_back = dh_back + dh_kept
        if zone_c is not None:
            dc_prev = dc_prev + dc_kept
        dh = np.where(ok, dh_back, dh)
        dc = np.where(ok, dc_prev, dc)

    dz_rows = _to_time(dz, valid, t_of).reshape(T * B, 4 * H)
    if ln is None:
        dsx_rows = dsh_rows = dz_rows  # no normalisation: the products' gradients are dz
    else:
        dsx_rows = _normalise_grad(
            _gain(dz_rows, ln.norm.w_ih),
            ln.sx_hat.reshape(T * B, 4 * H),
            ln.sx_rstd.reshape(T * B, 1),
        )
        dsh_rows = _to_time(dsh, valid, t_of).reshape(T * B, 4 * H)
    h_in = cache.h_prev if drawn.h_keep is None else cache.h_prev * drawn.h_keep
    dx = (dsx_rows @ cache.w_ih).reshape(T, B, I)
    dw_ih = dsx_rows.T @ cache.x.reshape(T * B, I)
    dw_hh = dsh_rows.T @ h_in.reshape(T * B, P)
    if drawn.w_hh_keep is not None:
        dw_hh = dw_hh * drawn.w_hh_keep  # w_hh entered as w_hh * keep
    db = dz_rows.sum(axis=0)

    if cache.batch_first:
        dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
    db_ih = db.copy() if cache.has_b_ih else None
    db_hh = db.copy() if cache.has_b_hh else None
    if cache.w_hr is None and cache.peepholes is None and not flow and norm is None:
        return Gradients(dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh)

    dw_hr = dpeepholes = flows = None
    if cache.w_hr is not None:
        n = cache.c if ln is None else _scale_shift(ln.c_hat, ln.norm.w_c, ln.norm.b_c)
        m = cache.o * cache.variant.h(n)  # (T, B, H), zero at padded steps
        dh_rows = _to_time(dh_steps, valid, t_of).reshape(T * B, P)
        dw_hr = dh_rows.T @ m.reshape(T * B, H)
    if cache.peepholes is not None:
        dpeepholes = _peephole_grads(
            dz_rows, cache.c_prev.reshape(T * B, H), cache.c.reshape(T * B, H)
        )
    if flow:
        norm_h, norm_c = _to_time(norm_h, valid, t_of), _to_time(norm_c, valid, t_of)
        flows = GradientFlow(norm_h, norm_c, norm_h.sum(axis=1), norm_c.sum(axis=1))
    grads = (dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dpeepholes, flows)
    if ln is None:
        return VariantGradients(*grads)
    norm_grads = _norm_grads(
        ln.norm,
        dz_rows,
        ln.sx_hat.reshape(T * B, 4 * H),
        ln.sh_hat.reshape(T * B, 4 * H),
        _to_time(dn, valid, t_of).reshape(T * B, H),
        ln.c_hat.reshape(T * B, H),
        db,
    )
    return LayerNormGradients(*grads, *norm_grads)


def cell_forward(
    x_t,
    h,
    c,
    w_ih,
    w_hh,
    b_ih=None,
    b_hh=None,
    *,
    w_hr=None,
    peepholes=None,
    clip=None,
    input_forget=False,
    forget_gate=True,
    activations=None,
    layer_norm=False,
    w_ln_ih=None,
    b_ln_ih=None,
    w_ln_hh=None,
    b_ln_hh=None,
    w_ln_c=None,
    b_ln_c=None,
    layer_norm_eps=LAYER_NORM_EPS,
) -> Cell:
    """One LSTM step: x_t (B, I), h (B, H) (or (B, P) with ``w_hr``), c (B, H);
    the options are :func:`forward`'s (the regularisation aside)."""
    variant = Variant.of(
        clip=clip, input_forget=input_forget, forget_gate=forget_gate, activations=activations
    )
    norms = dict(zip(LAYER_NORM_NAMES, (w_ln_ih, b_ln_ih, w_ln_hh, b_ln_hh, w_ln_c, b_ln_c)))
    layer_norm = _layer_norm_arrays(layer_norm, norms)
    raw = _checks.cell_arguments(x_t, h, c, w_ih, w_hh, b_ih, b_hh)
    (x, w_ih, w_hh, b_ih, b_hh, h, c, w_hr, peepholes, *norm_arrays), dtype = _arguments(
        raw, names=_checks.CELL_NAMES, w_hr=w_hr, peepholes=peepholes, norms=norms
    )
    norm = _layer_norm(norm_arrays, layer_norm_eps, dtype) if layer_norm else None
    x_t = np.array(x[0], dtype=dtype)
    h = np.array(h, dtype=dtype)
    c = np.array(c, dtype=dtype)
    w_ih = np.array(w_ih, dtype=dtype)
    w_hh = np.array(w_hh, dtype=dtype)
    w_hr = _copy(w_hr, dtype)
    peepholes = _copy(peepholes, dtype)
    if norm is None:
        a = x_t @ w_ih.T + h @ w_hh.T
    else:
        sx_hat, sx_rstd = _normalise(x_t @ w_ih.T, norm.eps)
        sh_hat, sh_rstd = _normalise(h @ w_hh.T, norm.eps)
        a = _scale_shift(sx_hat, norm.w_ih, norm.b_ih) + _scale_shift(sh_hat, norm.w_hh, norm.b_hh)
    if b_ih is not None:
        a = a + np.asarray(b_ih, dtype)
    if b_hh is not None:
        a = a + np.asarray(b_hh, dtype)
    step = _cell(a, c, w_hr, peepholes, variant, norm)
    cache = CellCache(
        i=_readonly(step.i),
        f=_readonly(step.f),
        g=_readonly(step.g),
        o=_readonly(step.o),
        c=_readonly(step.c.copy()),
        x=x_t,
        h_prev=h,
        c_prev=c,
        w_ih=w_ih,
        w_hh=w_hh,
        has_b_ih=b_ih is not None,
        has_b_hh=b_hh is not None,
        z=_readonly(step.z),
        w_hr=w_hr,
        peepholes=peepholes,
        variant=variant,
    )
    if norm is not None:
        assert step.c_hat is not None and step.c_rstd is not None  # _cell with norm sets them
        cache.ln = _Normalised(norm, sx_hat, sx_rstd, sh_hat, sh_rstd, step.c_hat, step.c_rstd)
    return Cell(step.h, step.c, cache)


def cell_backward(
    cache: CellCache, dh_new: np.ndarray | None = None, dc_new: np.ndarray | None = None
) -> CellGradients | CellVariantGradients | CellLayerNormGradients:
    """Gradients of one :func:`cell_forward` step: ``CellGradients``, or
    :class:`CellVariantGradients` after a step with ``w_hr`` or ``peepholes``, or
    :class:`CellLayerNormGradients` after one with ``layer_norm=True``."""
    if not isinstance(cache, CellCache):
        raise TypeError(f"cache must be a reference.CellCache, got {type(cache).__name__}")
    B, H = cache.c.shape
    P = cache.h_prev.shape[1]
    p = "hidden_size" if cache.w_hr is None else "proj_size"
    dtype = cache.c.dtype
    ln = cache.ln
    norm = None if ln is None else ln.norm
    c_hat, c_rstd = (None, None) if ln is None else (ln.c_hat, ln.c_rstd)
    dh = _seed("dh_new", dh_new, f"(batch, {p})", (B, P), dtype)
    dc = _seed("dc_new", dc_new, "(batch, hidden_size)", (B, H), dtype)
    da, _, dc_prev, dn = _cell_grads(
        dh, dc, cache.z, cache.i, cache.f, cache.g, cache.o, cache.c, cache.c_prev,
        cache.w_hr, cache.peepholes, cache.variant, norm, c_hat, c_rstd,
    )  # fmt: skip
    if ln is None:
        dsx = dsh = da
    else:
        dsx = _normalise_grad(_gain(da, ln.norm.w_ih), ln.sx_hat, ln.sx_rstd)
        dsh = _normalise_grad(_gain(da, ln.norm.w_hh), ln.sh_hat, ln.sh_rstd)
    dx = dsx @ cache.w_ih
    dh_prev = dsh @ cache.w_hh
    dw_ih = dsx.T @ cache.x
    dw_hh = dsh.T @ cache.h_prev
    db = da.sum(axis=0)
    db_ih = db.copy() if cache.has_b_ih else None
    db_hh = db.copy() if cache.has_b_hh else None
    if cache.w_hr is None and cache.peepholes is None and norm is None:
        return CellGradients(dx, dh_prev, dc_prev, dw_ih, dw_hh, db_ih, db_hh)
    dw_hr = None
    if cache.w_hr is not None:
        n = cache.c if ln is None else _scale_shift(ln.c_hat, ln.norm.w_c, ln.norm.b_c)
        dw_hr = dh.T @ (cache.o * cache.variant.h(n))
    dpeepholes = None
    if cache.peepholes is not None:
        dpeepholes = _peephole_grads(da, cache.c_prev, cache.c)
    grads = (dx, dh_prev, dc_prev, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dpeepholes)
    if ln is None:
        return CellVariantGradients(*grads)
    norm_grads = _norm_grads(ln.norm, da, ln.sx_hat, ln.sh_hat, dn, ln.c_hat, db)
    return CellLayerNormGradients(*grads, *norm_grads)


class PreparedWeights:
    """Private copies of one layer's weights in ``dtype``, for many calls: the
    reference's counterpart of ``lstm_fast.prepare_weights``. There is nothing to
    pack here; calls cast their inputs to ``dtype`` and run :func:`forward`.

    ``w_hr`` (P, H), a projection, is kept with the weights for every call.
    ``weight_dtype="bfloat16"``: bf16 inference, as the engine's (float32, the
    weight matrices rounded to bfloat16 for each call, no cache)."""

    def __init__(self, w_ih, w_hh, b_ih=None, b_hh=None, *, dtype=None, w_hr=None,
                 weight_dtype=None):  # fmt: skip
        bf16 = _checks.bfloat16_weights(weight_dtype)
        #: "bfloat16" for bf16 inference's weights, else None (the compute dtype).
        self.weight_dtype = "bfloat16" if bf16 else None
        raw = {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}
        if w_hr is not None:
            raw["w_hr"] = w_hr
        given = {k: np.asarray(v) for k, v in raw.items() if v is not None}
        self.dtype = compute_dtype(*given.values()) if dtype is None else np.dtype(dtype)
        if bf16:
            if dtype is not None and self.dtype != np.float32:
                raise ValueError(
                    f"weight_dtype='bfloat16' computes in float32: dtype must be float32 "
                    f"or None, got {self.dtype}"
                )
            self.dtype = np.dtype(np.float32)
        self.weights = {k: v.astype(self.dtype, copy=True) for k, v in given.items()}

    def matches(self, w_ih, w_hh, b_ih=None, b_hh=None, *, w_hr=None) -> bool:
        """Whether the given weights, in ``dtype``, are bit for bit the kept copies."""
        raw = {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "w_hr": w_hr}
        given = {k: np.asarray(v, dtype=self.dtype) for k, v in raw.items() if v is not None}
        return given.keys() == self.weights.keys() and all(
            v.shape == self.weights[k].shape and v.tobytes() == self.weights[k].tobytes()
            for k, v in given.items()
        )

    def _cast(self, a):
        return None if a is None else np.asarray(a).astype(self.dtype)

    def _bf16_cast(self, name, a):
        """An input of a bf16 call: float64 refused (as the engine does), else
        left to :func:`forward`'s rules."""
        if self.weight_dtype is not None and getattr(a, "dtype", None) is not None:
            if _checks.real_array(name, a).dtype == np.float64:
                raise TypeError(
                    f"{name} is float64: weights prepared in bfloat16 compute in float32 "
                    f"(pass float32 arrays)"
                )
        return self._cast(a)

    def forward(self, x, h0=None, c0=None, *, checkpoint=None, **options) -> Forward:
        w = self.weights
        if "w_hr" in w:
            options["w_hr"] = w["w_hr"]
        if self.weight_dtype is not None:
            options["weight_dtype"] = self.weight_dtype
        return forward(
            self._bf16_cast("x", x), w["w_ih"], w["w_hh"], w.get("b_ih"), w.get("b_hh"),
            self._bf16_cast("h0", h0), self._bf16_cast("c0", c0), checkpoint=checkpoint,
            **options,
        )  # fmt: skip

    def cell_forward(self, x_t, h, c) -> Cell:
        w = self.weights
        if self.weight_dtype is None:
            return cell_forward(
                self._cast(x_t), self._cast(h), self._cast(c),
                w["w_ih"], w["w_hh"], w.get("b_ih"), w.get("b_hh"), w_hr=w.get("w_hr"),
            )  # fmt: skip
        # bf16 inference: the float32 step on the rounded matrices, no cache.
        out = cell_forward(
            self._bf16_cast("x_t", x_t), self._bf16_cast("h", h), self._bf16_cast("c", c),
            bfloat16_round(w["w_ih"]), bfloat16_round(w["w_hh"]), w.get("b_ih"), w.get("b_hh"),
            w_hr=None if "w_hr" not in w else bfloat16_round(w["w_hr"]),
        )  # fmt: skip
        return Cell(out.h_new, out.c_new, None)


def prepare_weights(w_ih, w_hh, b_ih=None, b_hh=None, *, dtype=None, w_hr=None,
                    weight_dtype=None) -> PreparedWeights:  # fmt: skip
    """Keep copies of one layer's weights; see :class:`PreparedWeights`."""
    return PreparedWeights(
        w_ih, w_hh, b_ih, b_hh, dtype=dtype, w_hr=w_hr, weight_dtype=weight_dtype
    )

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

``backward(..., flow=True)`` also returns the norms of dL/dh_t and dL/dc_t of
each step (:class:`GradientFlow`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from . import _checks
from ._types import (
    Cell,
    CellGradients,
    CellVariantGradients,
    Forward,
    GradientFlow,
    Gradients,
    VariantGradients,
)

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Cache",
    "CellCache",
    "CellVariantGradients",
    "GradientFlow",
    "PreparedWeights",
    "Variant",
    "VariantGradients",
    "backward",
    "cell_backward",
    "cell_forward",
    "compute_dtype",
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
) -> tuple[list[Any], np.dtype]:
    """The arguments x, w_ih, w_hh, b_ih, b_hh, h0, c0 as arrays (``None`` stays
    ``None``), checked as the functional API checks them, then ``w_hr`` and
    ``peepholes``, and the compute dtype of them all."""
    names = names or {}
    if w_hr is None:
        arrays, (_, _, _, H) = _checks.pass_arguments(raw, batch_first=batch_first, names=names)
    else:
        arrays, H = _projected_arguments(raw, w_hr, batch_first=batch_first, names=names)
    if peepholes is not None:
        arrays["peepholes"] = _checks.shaped_array(
            "peepholes", peepholes, "(3*hidden_size,)", (3 * H,)
        )
    dtype = _checks.compute_dtype(a.dtype for a in arrays.values())
    return [arrays.get(k) for k in (*raw, "w_hr", "peepholes")], dtype


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
# One step, forward and backward


class _Step(NamedTuple):
    z: np.ndarray  # (B, 4H) pre-activations i, f, g, o, peepholes added, before clip
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    c: np.ndarray  # c_t
    h: np.ndarray  # h_t, (B, P) with a projection


def _cell(a, c_prev, w_hr, peepholes, v: Variant) -> _Step:
    """One step from the pre-activations ``a`` = x W_ih^T + h W_hh^T + b, (B, 4H)."""
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
    m = o * v.h(c)
    h = m if w_hr is None else m @ w_hr.T
    return _Step(np.concatenate([z_i, z_f, z_g, z_o], axis=1), i, f, g, o, c, h)


def _cell_grads(dh, dc_next, z, i, f, g, o, c, c_prev, w_hr, peepholes, v: Variant):
    """One step of backpropagation through time: returns (dz (B, 4H), dc, dc_prev).

    ``dh`` already holds ``dy`` of this step plus what flowed back from the next,
    ``dc_next`` what flowed back to c_t from the next step; ``dc`` is the whole
    dL/dc_t, ``dz`` the gradient of the pre-activations (that of ``a`` too).
    """
    H = c.shape[1]
    z_i, z_f, z_g, z_o = (z[:, k * H : (k + 1) * H] for k in range(4))
    dm = dh if w_hr is None else dh @ w_hr  # gradient of m = o * h(c)
    h_c = v.h(c)
    do = dm * h_c
    dz_o = v.clamp_grad(v.f.backprop(do, v.clamp(z_o), o), z_o)
    dc = dc_next + v.h.backprop(dm * o, c, h_c)
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
    return np.concatenate([dz_i, dz_f, dz_g, dz_o], axis=1), dc, dc_prev


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
    added, before ``clip``).
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

    def __repr__(self) -> str:
        T, B, H = self.c.shape
        return f"reference.Cache(steps={T}, batch={B}, hidden={H}, dtype={self.c.dtype})"


@dataclass(eq=False)
class CellCache:
    """What :func:`cell_backward` needs: gates ``i, f, g, o`` and ``c``, (B, H)."""

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
) -> Forward:
    """One LSTM layer over a sequence; see docs/api.md, 'Functional API', and
    docs/variants.md for ``w_hr``, ``peepholes``, ``clip``, ``input_forget``,
    ``forget_gate`` and ``activations``."""
    raw = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "h0": h0, "c0": c0}
    batch_first = _checks.flag("batch_first", batch_first)
    reverse = _checks.flag("reverse", reverse)
    need_cache = _checks.flag("need_cache", need_cache)
    variant = Variant.of(
        clip=clip, input_forget=input_forget, forget_gate=forget_gate, activations=activations
    )
    (x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr, peepholes), dtype = _arguments(
        raw, batch_first=batch_first, w_hr=w_hr, peepholes=peepholes
    )
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

    # The input projection of every step at once, one big matrix product (as a
    # 2-D product: NumPy's stacked 3-D matmul is several times slower), put in
    # processing order so that the loop reads step s as a plain slice.
    x_proj = (x.reshape(T * B, I) @ w_ih.T + bias).reshape(T, B, 4 * H)
    x_proj = _to_steps(x_proj, t_of)

    # Everything the loop produces, in processing order; rows past their length
    # compute garbage that is masked here and dropped by _to_time below.
    i_s, f_s, g_s, o_s, c_s, c_prev = (np.zeros((T, B, H), dtype) for _ in range(6))
    y, h_prev = np.zeros((T, B, P), dtype), np.zeros((T, B, P), dtype)
    z_s = np.zeros((T, B, 4 * H), dtype)
    for s in range(T):
        a = x_proj[s] + h @ w_hh.T
        step = _cell(a, c, w_hr, peepholes, variant)
        h_prev[s], c_prev[s] = h, c
        y[s], z_s[s], c_s[s] = step.h, step.z, step.c
        i_s[s], f_s[s], g_s[s], o_s[s] = step.i, step.f, step.g, step.o
        ok = valid[s][:, None]  # finished rows keep their last state
        h = np.where(ok, step.h, h)
        c = np.where(ok, step.c, c)

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
        )
    y = _to_time(y, valid, t_of)
    if batch_first:
        y = np.ascontiguousarray(y.transpose(1, 0, 2))
    return Forward(y, h, c, cache)


def backward(
    cache: Cache, dy=None, dh_n=None, dc_n=None, *, flow: bool = False
) -> Gradients | VariantGradients:
    """Backpropagation through time for one :func:`forward` call.

    Returns ``Gradients`` for a forward without ``w_hr`` and ``peepholes`` and
    ``flow=False`` (other options change values, not fields); else
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
    # Only dh and dc are sequential; dz of every step (and dh_t with a projection)
    # are kept for the big products after the loop.
    dz = np.zeros((T, B, 4 * H), dtype)
    dh_steps = np.zeros((T, B, P), dtype)
    norm_h, norm_c = np.zeros((T, B), dtype), np.zeros((T, B), dtype)
    for s in reversed(range(T)):
        ok = valid[s][:, None]
        dh_t = dh + np.where(ok, dy[s], 0)
        dz_s, dc_t, dc_prev = _cell_grads(
            dh_t, dc, z[s], i[s], f[s], g[s], o[s], c[s], c_prev[s],
            cache.w_hr, cache.peepholes, cache.variant,
        )  # fmt: skip
        dz[s] = np.where(ok, dz_s, 0)  # padded steps contribute nothing
        if cache.w_hr is not None:
            dh_steps[s] = np.where(ok, dh_t, 0)
        if flow:
            norm_h[s] = np.where(valid[s], np.linalg.norm(dh_t, axis=1), 0)
            norm_c[s] = np.where(valid[s], np.linalg.norm(dc_t, axis=1), 0)
        dh = np.where(ok, dz[s] @ cache.w_hh, dh)
        dc = np.where(ok, dc_prev, dc)

    dz_rows = _to_time(dz, valid, t_of).reshape(T * B, 4 * H)
    dx = (dz_rows @ cache.w_ih).reshape(T, B, I)
    dw_ih = dz_rows.T @ cache.x.reshape(T * B, I)
    dw_hh = dz_rows.T @ cache.h_prev.reshape(T * B, P)
    db = dz_rows.sum(axis=0)

    if cache.batch_first:
        dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
    db_ih = db.copy() if cache.has_b_ih else None
    db_hh = db.copy() if cache.has_b_hh else None
    if cache.w_hr is None and cache.peepholes is None and not flow:
        return Gradients(dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh)

    dw_hr = dpeepholes = flows = None
    if cache.w_hr is not None:
        m = cache.o * cache.variant.h(cache.c)  # (T, B, H), zero at padded steps
        dh_rows = _to_time(dh_steps, valid, t_of).reshape(T * B, P)
        dw_hr = dh_rows.T @ m.reshape(T * B, H)
    if cache.peepholes is not None:
        dpeepholes = _peephole_grads(
            dz_rows, cache.c_prev.reshape(T * B, H), cache.c.reshape(T * B, H)
        )
    if flow:
        norm_h, norm_c = _to_time(norm_h, valid, t_of), _to_time(norm_c, valid, t_of)
        flows = GradientFlow(norm_h, norm_c, norm_h.sum(axis=1), norm_c.sum(axis=1))
    return VariantGradients(dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dpeepholes, flows)


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
) -> Cell:
    """One LSTM step: x_t (B, I), h (B, H) (or (B, P) with ``w_hr``), c (B, H);
    the options are :func:`forward`'s."""
    variant = Variant.of(
        clip=clip, input_forget=input_forget, forget_gate=forget_gate, activations=activations
    )
    raw = _checks.cell_arguments(x_t, h, c, w_ih, w_hh, b_ih, b_hh)
    (x, w_ih, w_hh, b_ih, b_hh, h, c, w_hr, peepholes), dtype = _arguments(
        raw, names=_checks.CELL_NAMES, w_hr=w_hr, peepholes=peepholes
    )
    x_t = np.array(x[0], dtype=dtype)
    h = np.array(h, dtype=dtype)
    c = np.array(c, dtype=dtype)
    w_ih = np.array(w_ih, dtype=dtype)
    w_hh = np.array(w_hh, dtype=dtype)
    w_hr = _copy(w_hr, dtype)
    peepholes = _copy(peepholes, dtype)
    a = x_t @ w_ih.T + h @ w_hh.T
    if b_ih is not None:
        a = a + np.asarray(b_ih, dtype)
    if b_hh is not None:
        a = a + np.asarray(b_hh, dtype)
    step = _cell(a, c, w_hr, peepholes, variant)
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
    return Cell(step.h, step.c, cache)


def cell_backward(
    cache: CellCache, dh_new: np.ndarray | None = None, dc_new: np.ndarray | None = None
) -> CellGradients | CellVariantGradients:
    """Gradients of one :func:`cell_forward` step: ``CellGradients``, or
    :class:`CellVariantGradients` after a step with ``w_hr`` or ``peepholes``."""
    if not isinstance(cache, CellCache):
        raise TypeError(f"cache must be a reference.CellCache, got {type(cache).__name__}")
    B, H = cache.c.shape
    P = cache.h_prev.shape[1]
    p = "hidden_size" if cache.w_hr is None else "proj_size"
    dtype = cache.c.dtype
    dh = _seed("dh_new", dh_new, f"(batch, {p})", (B, P), dtype)
    dc = _seed("dc_new", dc_new, "(batch, hidden_size)", (B, H), dtype)
    da, _, dc_prev = _cell_grads(
        dh, dc, cache.z, cache.i, cache.f, cache.g, cache.o, cache.c, cache.c_prev,
        cache.w_hr, cache.peepholes, cache.variant,
    )  # fmt: skip
    dx = da @ cache.w_ih
    dh_prev = da @ cache.w_hh
    dw_ih = da.T @ cache.x
    dw_hh = da.T @ cache.h_prev
    db = da.sum(axis=0)
    db_ih = db.copy() if cache.has_b_ih else None
    db_hh = db.copy() if cache.has_b_hh else None
    if cache.w_hr is None and cache.peepholes is None:
        return CellGradients(dx, dh_prev, dc_prev, dw_ih, dw_hh, db_ih, db_hh)
    dw_hr = None if cache.w_hr is None else dh.T @ (cache.o * cache.variant.h(cache.c))
    dpeepholes = None
    if cache.peepholes is not None:
        dpeepholes = _peephole_grads(da, cache.c_prev, cache.c)
    return CellVariantGradients(dx, dh_prev, dc_prev, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dpeepholes)


class PreparedWeights:
    """Private copies of one layer's weights in ``dtype``, for many calls: the
    reference's counterpart of ``lstm_fast.prepare_weights``. There is nothing to
    pack here; calls cast their inputs to ``dtype`` and run :func:`forward`."""

    def __init__(self, w_ih, w_hh, b_ih=None, b_hh=None, *, dtype=None):
        raw = {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}
        given = {k: np.asarray(v) for k, v in raw.items() if v is not None}
        self.dtype = compute_dtype(*given.values()) if dtype is None else np.dtype(dtype)
        self.weights = {k: v.astype(self.dtype, copy=True) for k, v in given.items()}

    def matches(self, w_ih, w_hh, b_ih=None, b_hh=None) -> bool:
        """Whether the given weights, in ``dtype``, are bit for bit the kept copies."""
        raw = {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}
        given = {k: np.asarray(v, dtype=self.dtype) for k, v in raw.items() if v is not None}
        return given.keys() == self.weights.keys() and all(
            v.shape == self.weights[k].shape and v.tobytes() == self.weights[k].tobytes()
            for k, v in given.items()
        )

    def _cast(self, a):
        return None if a is None else np.asarray(a).astype(self.dtype)

    def forward(self, x, h0=None, c0=None, **options) -> Forward:
        w = self.weights
        return forward(
            self._cast(x), w["w_ih"], w["w_hh"], w.get("b_ih"), w.get("b_hh"),
            self._cast(h0), self._cast(c0), **options,
        )  # fmt: skip

    def cell_forward(self, x_t, h, c) -> Cell:
        w = self.weights
        return cell_forward(
            self._cast(x_t), self._cast(h), self._cast(c),
            w["w_ih"], w["w_hh"], w.get("b_ih"), w.get("b_hh"),
        )  # fmt: skip


def prepare_weights(w_ih, w_hh, b_ih=None, b_hh=None, *, dtype=None) -> PreparedWeights:
    """Keep copies of one layer's weights; see :class:`PreparedWeights`."""
    return PreparedWeights(w_ih, w_hh, b_ih, b_hh, dtype=dtype)

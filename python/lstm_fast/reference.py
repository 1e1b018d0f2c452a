"""The NumPy reference: the math of docs/api.md ('The math'), written plainly.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _checks
from ._types import Cell, CellGradients, Forward, Gradients

__all__ = [
    "Cache",
    "CellCache",
    "PreparedWeights",
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
    raw: dict[str, Any], *, batch_first: bool = False, names: dict[str, str] | None = None
) -> tuple[list[Any], np.dtype]:
    """The arguments x, w_ih, w_hh, b_ih, b_hh, h0, c0 as arrays (``None`` stays
    ``None``), checked as the functional API checks them, and their compute dtype."""
    arrays, _ = _checks.pass_arguments(raw, batch_first=batch_first, names=names or {})
    dtype = _checks.compute_dtype(a.dtype for a in arrays.values())
    return [arrays.get(k) for k in raw], dtype


def _seed(
    name: str, value: Any, symbols: str, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """A gradient from the caller, in the cache's dtype; None means zeros."""
    if value is None:
        return np.zeros(shape, dtype)
    return _checks.shaped_array(name, value, symbols, shape).astype(dtype)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    # exp(-a) overflows to inf for a < -709 (float64) / -88 (float32) and then
    # 1 / (1 + inf) = 0 exactly, which is the right answer: only the warning
    # is silenced. NaN stays NaN.
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-a))


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _gates(a: np.ndarray, hidden: int):
    """Split pre-activations (B, 4H) into the activated gates i, f, g, o."""
    H = hidden
    i = _sigmoid(a[:, 0:H])
    f = _sigmoid(a[:, H : 2 * H])
    g = np.tanh(a[:, 2 * H : 3 * H])
    o = _sigmoid(a[:, 3 * H : 4 * H])
    return i, f, g, o


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


def _gate_grads(dh, dc_next, i, f, g, o, c, c_prev):
    """One step of backpropagation through time: returns (da (B, 4H), dc_prev).

    ``dh`` already holds ``dy`` of this step plus what flowed back from the next.
    """
    tanh_c = np.tanh(c)
    do = dh * tanh_c
    da_o = do * o * (1 - o)
    dc = dc_next + dh * o * (1 - tanh_c**2)
    da_i = dc * g * i * (1 - i)
    da_g = dc * i * (1 - g**2)
    da_f = dc * c_prev * f * (1 - f)
    dc_prev = dc * f
    return np.concatenate([da_i, da_f, da_g, da_o], axis=1), dc_prev


@dataclass(eq=False)
class Cache:
    """What :func:`backward` needs from a :func:`forward` call (private copies).

    ``i, f, g, o, c`` are the post-activation gates and cell states, (T, B, H),
    time-major, indexed by real time (also for ``reverse=True``); entries of
    padded steps are zero.
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
    h_prev: np.ndarray  # (T, B, H): the state h each step started from (real time)
    c_prev: np.ndarray  # (T, B, H): the state c each step started from (real time)
    batch_first: bool

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

    def __repr__(self) -> str:
        B, H = self.c.shape
        return f"reference.CellCache(batch={B}, hidden={H}, dtype={self.c.dtype})"


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
) -> Forward:
    """One LSTM layer over a sequence; see docs/api.md, 'Functional API'."""
    raw = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "h0": h0, "c0": c0}
    batch_first = _checks.flag("batch_first", batch_first)
    reverse = _checks.flag("reverse", reverse)
    need_cache = _checks.flag("need_cache", need_cache)
    (x, w_ih, w_hh, b_ih, b_hh, h0, c0), dtype = _arguments(raw, batch_first=batch_first)
    x = x.astype(dtype)
    if batch_first:
        x = x.transpose(1, 0, 2)
    x = np.ascontiguousarray(x)
    T, B, I = x.shape  # noqa: E741
    w_ih = np.array(w_ih, dtype=dtype)
    w_hh = np.array(w_hh, dtype=dtype)
    H = w_hh.shape[1]
    bias = np.zeros(4 * H, dtype)
    if b_ih is not None:
        bias = bias + np.asarray(b_ih, dtype)
    if b_hh is not None:
        bias = bias + np.asarray(b_hh, dtype)
    h = np.zeros((B, H), dtype) if h0 is None else np.array(h0, dtype=dtype)
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
    y, i_s, f_s, g_s, o_s, c_s, h_prev, c_prev = (np.zeros((T, B, H), dtype) for _ in range(8))
    for s in range(T):
        a = x_proj[s] + h @ w_hh.T
        i, f, g, o = _gates(a, H)
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        h_prev[s], c_prev[s] = h, c
        y[s], i_s[s], f_s[s], g_s[s], o_s[s], c_s[s] = h_new, i, f, g, o, c_new
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
        )
    y = _to_time(y, valid, t_of)
    if batch_first:
        y = np.ascontiguousarray(y.transpose(1, 0, 2))
    return Forward(y, h, c, cache)


def backward(cache: Cache, dy=None, dh_n=None, dc_n=None) -> Gradients:
    """Backpropagation through time for one :func:`forward` call."""
    if not isinstance(cache, Cache):
        raise TypeError(f"cache must be a reference.Cache, got {type(cache).__name__}")
    T, B, H = cache.c.shape
    I = cache.x.shape[2]  # noqa: E741
    dtype = cache.c.dtype
    if cache.batch_first:
        dy = _seed("dy", dy, "(batch, seq_len, hidden_size)", (B, T, H), dtype).transpose(1, 0, 2)
    else:
        dy = _seed("dy", dy, "(seq_len, batch, hidden_size)", (T, B, H), dtype)
    dh = _seed("dh_n", dh_n, "(batch, hidden_size)", (B, H), dtype)
    dc = _seed("dc_n", dc_n, "(batch, hidden_size)", (B, H), dtype)

    # The loop runs the processing steps backwards, on arrays in processing order.
    valid, t_of = _schedule(cache.lengths, T, cache.reverse)
    dy, i, f, g, o, c, c_prev = (
        _to_steps(a, t_of) for a in (dy, cache.i, cache.f, cache.g, cache.o, cache.c, cache.c_prev)
    )
    # Only dh and dc are sequential; da of every step is kept for the big
    # products after the loop.
    da = np.zeros((T, B, 4 * H), dtype)
    for s in reversed(range(T)):
        ok = valid[s][:, None]
        dh_t = dh + np.where(ok, dy[s], 0)
        da_s, dc_prev = _gate_grads(dh_t, dc, i[s], f[s], g[s], o[s], c[s], c_prev[s])
        da[s] = np.where(ok, da_s, 0)  # padded steps contribute nothing
        dh = np.where(ok, da[s] @ cache.w_hh, dh)
        dc = np.where(ok, dc_prev, dc)

    da_rows = _to_time(da, valid, t_of).reshape(T * B, 4 * H)
    dx = (da_rows @ cache.w_ih).reshape(T, B, I)
    dw_ih = da_rows.T @ cache.x.reshape(T * B, I)
    dw_hh = da_rows.T @ cache.h_prev.reshape(T * B, H)
    db = da_rows.sum(axis=0)

    if cache.batch_first:
        dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
    db_ih = db.copy() if cache.has_b_ih else None
    db_hh = db.copy() if cache.has_b_hh else None
    return Gradients(dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh)


def cell_forward(x_t, h, c, w_ih, w_hh, b_ih=None, b_hh=None) -> Cell:
    """One LSTM step: x_t (B, I), h and c (B, H)."""
    raw = _checks.cell_arguments(x_t, h, c, w_ih, w_hh, b_ih, b_hh)
    (x, w_ih, w_hh, b_ih, b_hh, h, c), dtype = _arguments(raw, names=_checks.CELL_NAMES)
    x_t = np.array(x[0], dtype=dtype)
    h = np.array(h, dtype=dtype)
    c = np.array(c, dtype=dtype)
    w_ih = np.array(w_ih, dtype=dtype)
    w_hh = np.array(w_hh, dtype=dtype)
    H = w_hh.shape[1]
    a = x_t @ w_ih.T + h @ w_hh.T
    if b_ih is not None:
        a = a + np.asarray(b_ih, dtype)
    if b_hh is not None:
        a = a + np.asarray(b_hh, dtype)
    i, f, g, o = _gates(a, H)
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    cache = CellCache(
        i=_readonly(i),
        f=_readonly(f),
        g=_readonly(g),
        o=_readonly(o),
        c=_readonly(c_new.copy()),
        x=x_t,
        h_prev=h,
        c_prev=c,
        w_ih=w_ih,
        w_hh=w_hh,
        has_b_ih=b_ih is not None,
        has_b_hh=b_hh is not None,
    )
    return Cell(h_new, c_new, cache)


def cell_backward(
    cache: CellCache, dh_new: np.ndarray | None = None, dc_new: np.ndarray | None = None
) -> CellGradients:
    """Gradients of one :func:`cell_forward` step."""
    if not isinstance(cache, CellCache):
        raise TypeError(f"cache must be a reference.CellCache, got {type(cache).__name__}")
    B, H = cache.c.shape
    dtype = cache.c.dtype
    dh = _seed("dh_new", dh_new, "(batch, hidden_size)", (B, H), dtype)
    dc = _seed("dc_new", dc_new, "(batch, hidden_size)", (B, H), dtype)
    da, dc_prev = _gate_grads(dh, dc, cache.i, cache.f, cache.g, cache.o, cache.c, cache.c_prev)
    dx = da @ cache.w_ih
    dh_prev = da @ cache.w_hh
    dw_ih = da.T @ cache.x
    dw_hh = da.T @ cache.h_prev
    db = da.sum(axis=0)
    db_ih = db.copy() if cache.has_b_ih else None
    db_hh = db.copy() if cache.has_b_hh else None
    return CellGradients(dx, dh_prev, dc_prev, dw_ih, dw_hh, db_ih, db_hh)


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

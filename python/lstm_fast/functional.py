"""The functional API of SPEC.md section 2, over the compiled engine.

This module checks and normalises arguments (dtype, shape, memory order) and
allocates the results; `_core` (rust/src/python.rs) borrows the arrays and runs
the engine with the GIL released.
"""

from __future__ import annotations

import operator
import sys
from typing import Any

import numpy as np

from . import _core
from ._types import Cell, CellGradients, Forward, Gradients

__all__ = [
    "Cache",
    "CellCache",
    "backward",
    "cell_backward",
    "cell_forward",
    "forward",
    "get_num_threads",
    "set_num_threads",
]

_GATES = ("i", "f", "g", "o")


# ---------------------------------------------------------------------------
# Argument normalisation
# ---------------------------------------------------------------------------


def _as_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__array__") or isinstance(value, (list, tuple, int, float, np.generic)):
        try:
            return np.asarray(value)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"{name} must be an array of numbers, got {type(value).__name__}: {e}"
            ) from None
    raise TypeError(f"{name} must be an array of numbers, got {type(value).__name__}")


def _compute_dtype(arrays: dict[str, np.ndarray]) -> np.dtype:
    for name, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise TypeError(
                f"{name} must have a real numeric dtype "
                f"(float32, float64, float16, integer or bool), got {a.dtype}"
            )
    # SPEC §4: the result type of the floating inputs; integers and bools only
    # decide (float64) when nothing else is floating.
    floating = [a.dtype for a in arrays.values() if a.dtype.kind == "f"]
    if not floating:
        return np.dtype(np.float64)
    dtype = np.result_type(*floating)
    if dtype.itemsize > 8:
        return np.dtype(np.float64)
    if dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype


def _shape_error(
    name: str, symbols: str, want: tuple[int, ...], got: tuple[int, ...]
) -> ValueError:
    return ValueError(f"{name} must have shape {symbols} = {want}, got {got}")


def _check_shape(name: str, a: np.ndarray, symbols: str, want: tuple[int, ...]) -> None:
    if a.shape != want:
        raise _shape_error(name, symbols, want, a.shape)


def _contiguous(a: np.ndarray, dtype: np.dtype, *, own: bool) -> np.ndarray:
    """C-contiguous, aligned, of `dtype`; a private copy when `own` (caches)."""
    if a.dtype == dtype and a.flags.c_contiguous and a.flags.aligned:
        return a.copy() if own else a  # the common case, without np.require's cost
    out = np.require(a, dtype=dtype, requirements=["C", "A"])
    if own and np.may_share_memory(out, a):
        out = out.copy()
    return out


def _check_size(*shapes: tuple[int, ...]) -> None:
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        if n * 8 > sys.maxsize:
            raise ValueError(f"a buffer of shape {shape} would overflow the address space")


def _lengths(value: Any, batch: int, steps: int, *, own: bool) -> np.ndarray | None:
    if value is None:
        return None
    a = _as_array("lengths", value)
    if a.dtype.kind not in "iu":
        raise TypeError(f"lengths must be an integer array, got dtype {a.dtype}")
    if a.shape != (batch,):
        raise _shape_error("lengths", "(batch,)", (batch,), a.shape)
    if a.size and (a.min() < 0 or a.max() > steps):
        bad = a[(a < 0) | (a > steps)][0]
        raise ValueError(f"lengths must lie in [0, seq_len] = [0, {steps}], got {int(bad)}")
    return _contiguous(a, np.dtype(np.int64), own=own)


class _Args:
    """Checked, normalised arguments of one sequence pass."""

    def __init__(
        self,
        x: Any,
        w_ih: Any,
        w_hh: Any,
        b_ih: Any,
        b_hh: Any,
        h0: Any,
        c0: Any,
        *,
        batch_first: bool,
        lengths: Any,
        reverse: bool,
        own: bool,
        names: dict[str, str],
    ) -> None:
        raw = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "h0": h0, "c0": c0}
        for k in ("x", "w_ih", "w_hh"):
            if raw[k] is None:
                raise TypeError(f"{names.get(k, k)} is required: expected an array, got None")
        arrays = {k: _as_array(names.get(k, k), v) for k, v in raw.items() if v is not None}
        self.dtype = _compute_dtype({names.get(k, k): v for k, v in arrays.items()})
        xa, wih, whh = arrays["x"], arrays["w_ih"], arrays["w_hh"]
        xname = names.get("x", "x")
        x_symbols = names.get(
            "x_symbols",
            "(batch, seq_len, input_size)" if batch_first else "(seq_len, batch, input_size)",
        )
        if xa.ndim != 3:
            raise ValueError(f"{xname} must have shape {x_symbols} (3 dimensions), got {xa.shape}")
        if batch_first:
            batch, steps, inp = xa.shape
        else:
            steps, batch, inp = xa.shape
        if whh.ndim != 2 or whh.shape[0] % 4 or whh.shape[0] == 0:
            raise ValueError(
                "w_hh must have shape (4*hidden_size, hidden_size) with hidden_size >= 1, "
                f"got {whh.shape}"
            )
        hidden = whh.shape[0] // 4
        _check_shape("w_hh", whh, "(4*hidden_size, hidden_size)", (4 * hidden, hidden))
        _check_shape("w_ih", wih, "(4*hidden_size, input_size)", (4 * hidden, inp))
        for k in ("b_ih", "b_hh"):
            if k in arrays:
                _check_shape(k, arrays[k], "(4*hidden_size,)", (4 * hidden,))
        for k in ("h0", "c0"):
            if k in arrays:
                _check_shape(names.get(k, k), arrays[k], "(batch, hidden_size)", (batch, hidden))
        self.steps, self.batch, self.input, self.hidden = steps, batch, inp, hidden
        self.batch_first, self.reverse = bool(batch_first), bool(reverse)
        self.hidden_pad = _core.hidden_pad(hidden, self.dtype.itemsize)
        _check_size((steps, batch, 4 * self.hidden_pad), (steps, batch, inp))
        self.lengths = _lengths(lengths, batch, steps, own=own)

        dt = self.dtype
        self.x = _contiguous(xa, dt, own=own)
        self.w_ih = _contiguous(wih, dt, own=own)
        self.w_hh = _contiguous(whh, dt, own=own)
        self.has_b_ih, self.has_b_hh = "b_ih" in arrays, "b_hh" in arrays
        biases = [arrays[k].astype(dt) for k in ("b_ih", "b_hh") if k in arrays]
        self.bias = (
            np.require(sum(biases[1:], biases[0]), requirements=["C", "A"]) if biases else None
        )
        self.h0 = _contiguous(arrays["h0"], dt, own=False) if "h0" in arrays else None
        self.c0 = _contiguous(arrays["c0"], dt, own=own) if "c0" in arrays else None

    @property
    def y_shape(self) -> tuple[int, int, int]:
        if self.batch_first:
            return (self.batch, self.steps, self.hidden)
        return (self.steps, self.batch, self.hidden)

    def layout_shape(self, last: int) -> tuple[int, int, int]:
        if self.batch_first:
            return (self.batch, self.steps, last)
        return (self.steps, self.batch, last)


# ---------------------------------------------------------------------------
# Caches
# ---------------------------------------------------------------------------


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


class Cache:
    """What :func:`backward` needs from :func:`forward` (private copies).

    ``i``, ``f``, ``g``, ``o`` (activated gates) and ``c`` (cell states) are
    read-only (T, B, H) arrays, time-major whatever the input layout; padded
    steps hold zeros.
    """

    __slots__ = ("_args", "_cells", "_gates", "_h_prev")

    def __init__(
        self, args: _Args, gates: np.ndarray, cells: np.ndarray, h_prev: np.ndarray
    ) -> None:
        for a in (gates, cells, h_prev):
            a.flags.writeable = False
        self._args, self._gates, self._cells, self._h_prev = args, gates, cells, h_prev

    def _time_major(self, a: np.ndarray) -> np.ndarray:
        return _readonly(a.swapaxes(0, 1) if self._args.batch_first else a)

    def _gate(self, k: int) -> np.ndarray:
        a = self._args
        g = self._gates.reshape(a.layout_shape(4 * a.hidden_pad))
        return self._time_major(g[..., k * a.hidden_pad : k * a.hidden_pad + a.hidden])

    @property
    def i(self) -> np.ndarray:
        return self._gate(0)

    @property
    def f(self) -> np.ndarray:
        return self._gate(1)

    @property
    def g(self) -> np.ndarray:
        return self._gate(2)

    @property
    def o(self) -> np.ndarray:
        return self._gate(3)

    @property
    def c(self) -> np.ndarray:
        a = self._args
        return self._time_major(self._cells.reshape(a.layout_shape(a.hidden_pad))[..., : a.hidden])

    @property
    def dtype(self) -> np.dtype:
        return self._args.dtype

    @property
    def nbytes(self) -> int:
        """Memory held by the cache, inputs copies included."""
        a = self._args
        arrays = [self._gates, self._cells, self._h_prev, a.x, a.w_ih, a.w_hh, a.c0, a.lengths]
        return sum(x.nbytes for x in arrays if x is not None)

    def __repr__(self) -> str:
        a = self._args
        return (
            f"<lstm_fast.Cache T={a.steps} B={a.batch} I={a.input} H={a.hidden} "
            f"dtype={a.dtype} batch_first={a.batch_first} reverse={a.reverse}>"
        )


class CellCache:
    """What :func:`cell_backward` needs; ``i, f, g, o, c`` are read-only (B, H)."""

    __slots__ = ("_seq",)

    def __init__(self, seq: Cache) -> None:
        self._seq = seq

    i = property(lambda self: self._seq.i[0])
    f = property(lambda self: self._seq.f[0])
    g = property(lambda self: self._seq.g[0])
    o = property(lambda self: self._seq.o[0])
    c = property(lambda self: self._seq.c[0])

    def __repr__(self) -> str:
        a = self._seq._args
        return f"<lstm_fast.CellCache B={a.batch} I={a.input} H={a.hidden} dtype={a.dtype}>"


# ---------------------------------------------------------------------------
# Sequence API
# ---------------------------------------------------------------------------


def _run_forward(
    args: _Args, need_cache: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Cache | None]:
    dt, rows = args.dtype, (args.steps * args.batch)
    y = np.empty(args.y_shape, dt)
    h_n = np.empty((args.batch, args.hidden), dt)
    c_n = np.empty((args.batch, args.hidden), dt)
    cache_arrays: tuple[np.ndarray, ...] = ()
    if need_cache:
        hp = args.hidden_pad
        cache_arrays = (
            np.empty((rows, 4 * hp), dt),
            np.empty((rows, hp), dt),
            np.empty((rows, hp), dt),
        )
    _core.forward(
        args.x, args.w_ih, args.w_hh, args.bias, args.h0, args.c0, args.lengths,
        args.batch_first, args.reverse, y, h_n, c_n, *cache_arrays,
    )  # fmt: skip
    cache = Cache(args, *cache_arrays) if need_cache else None
    return y, h_n, c_n, cache


def forward(
    x: Any,
    w_ih: Any,
    w_hh: Any,
    b_ih: Any = None,
    b_hh: Any = None,
    h0: Any = None,
    c0: Any = None,
    *,
    batch_first: bool = False,
    lengths: Any = None,
    reverse: bool = False,
    need_cache: bool = True,
) -> Forward:
    """Runs one LSTM layer (one direction) over a whole sequence.

    ``x`` is (T, B, I), or (B, T, I) with ``batch_first``; ``w_ih`` (4H, I) and
    ``w_hh`` (4H, H) hold the gate blocks i, f, g, o; ``b_ih``, ``b_hh`` (4H,),
    ``h0``, ``c0`` (B, H) default to zeros. ``lengths`` (B,) gives each row's
    valid steps (PyTorch PackedSequence semantics); ``reverse`` runs each row
    from its last valid step back to step 0. Returns ``Forward(y, h_n, c_n,
    cache)``; ``cache`` is None with ``need_cache=False``.
    """
    args = _Args(
        x, w_ih, w_hh, b_ih, b_hh, h0, c0,
        batch_first=batch_first, lengths=lengths, reverse=reverse, own=need_cache, names={},
    )  # fmt: skip
    return Forward(*_run_forward(args, need_cache))


def _seed(
    name: str, value: Any, symbols: str, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray | None:
    if value is None:
        return None
    a = _as_array(name, value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must have a real numeric dtype, got {a.dtype}")
    _check_shape(name, a, symbols, shape)
    return np.require(a, dtype=dtype, requirements=["C", "A"])


def _run_backward(
    cache: Cache, dy: Any, dh_n: Any, dc_n: Any, names: tuple[str, str, str]
) -> tuple[
    np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None
]:
    a = cache._args
    dt = a.dtype
    y_symbols = (
        "(batch, seq_len, hidden_size)" if a.batch_first else "(seq_len, batch, hidden_size)"
    )
    state = (a.batch, a.hidden)
    dy = _seed(names[0], dy, y_symbols, a.y_shape, dt)
    dh_n = _seed(names[1], dh_n, "(batch, hidden_size)", state, dt)
    dc_n = _seed(names[2], dc_n, "(batch, hidden_size)", state, dt)
    dx = np.empty(a.x.shape, dt)
    dh0, dc0 = np.empty(state, dt), np.empty(state, dt)
    dw_ih = np.empty((4 * a.hidden, a.input), dt)
    dw_hh = np.empty((4 * a.hidden, a.hidden), dt)
    db = np.empty(4 * a.hidden, dt) if (a.has_b_ih or a.has_b_hh) else None
    # The gate gradients: NumPy backs large arrays with huge pages, which saves
    # the engine tens of thousands of page faults per call at the large shapes.
    scratch = np.empty((a.steps * a.batch, 4 * a.hidden_pad), dt)
    _core.backward(
        a.x, a.w_ih, a.w_hh, a.c0, a.lengths, a.batch_first, a.reverse,
        cache._gates, cache._cells, cache._h_prev, dy, dh_n, dc_n,
        dx, dh0, dc0, dw_ih, dw_hh, db, scratch,
    )  # fmt: skip
    db_ih = db if a.has_b_ih else None
    # Two arrays when both biases exist, so updating one leaves the other alone.
    db_hh = None if db is None or not a.has_b_hh else (db.copy() if a.has_b_ih else db)
    return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh


def _check_cache(cache: Any, cls: type, producer: str) -> None:
    if not isinstance(cache, cls):
        raise TypeError(
            f"cache must be the cache returned by lstm_fast.{producer} (with need_cache=True), "
            f"got {type(cache).__name__}"
        )


def backward(cache: Cache, dy: Any = None, dh_n: Any = None, dc_n: Any = None) -> Gradients:
    """Backpropagation through time for a :func:`forward` call.

    ``dy`` (like ``y``), ``dh_n`` and ``dc_n`` (B, H) are the gradients of the
    loss with respect to the outputs (None means zeros). Returns
    ``Gradients(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)``; a bias that was
    None has gradient None. The cache can be used any number of times.
    """
    _check_cache(cache, Cache, "forward")
    return Gradients(*_run_backward(cache, dy, dh_n, dc_n, ("dy", "dh_n", "dc_n")))


# ---------------------------------------------------------------------------
# Cell API (one step: the sequence engine with T = 1)
# ---------------------------------------------------------------------------


def cell_forward(
    x_t: Any, h: Any, c: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None
) -> Cell:
    """One LSTM step: ``x_t`` (B, I), ``h``, ``c`` (B, H) -> ``Cell(h_new, c_new, cache)``."""
    if h is None or c is None:
        raise TypeError("cell_forward needs the state arrays h and c (use zeros for a fresh state)")
    xa = _as_array("x_t", x_t)
    if xa.ndim != 2:
        raise ValueError(f"x_t must have shape (batch, input_size) (2 dimensions), got {xa.shape}")
    names = {"x": "x_t", "h0": "h", "c0": "c", "x_symbols": "(batch, input_size)"}
    args = _Args(
        xa[None], w_ih, w_hh, b_ih, b_hh, h, c,
        batch_first=False, lengths=None, reverse=False, own=True, names=names,
    )  # fmt: skip
    _, h_new, c_new, cache = _run_forward(args, need_cache=True)
    assert cache is not None
    return Cell(h_new, c_new, CellCache(cache))


def cell_backward(cache: CellCache, dh_new: Any = None, dc_new: Any = None) -> CellGradients:
    """Gradients of one :func:`cell_forward` step from ``dh_new``, ``dc_new`` (B, H)."""
    _check_cache(cache, CellCache, "cell_forward")
    dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh = _run_backward(
        cache._seq, None, dh_new, dc_new, ("dy", "dh_new", "dc_new")
    )
    return CellGradients(dx[0], dh, dc, dw_ih, dw_hh, db_ih, db_hh)


# ---------------------------------------------------------------------------
# Threads and ISA
# ---------------------------------------------------------------------------


def set_num_threads(n: int) -> None:
    """Threads for later calls (default: ``LSTM_FAST_NUM_THREADS`` or all cores)."""
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an integer, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads calls use."""
    return int(_core.get_num_threads())

"""What the test modules share: the reference oracle, random inputs, tolerances,
memory layouts and PyTorch as a second oracle.

Test modules import these with ``from tests.helpers import ...``; fixtures and
hooks live in ``conftest.py``. Nothing here imports the compiled engine at
module level, so the reference's own tests run before the extension is built.
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "python" / "lstm_fast"


# --------------------------------------------------------------------------
# The oracle


def _load_reference() -> types.ModuleType:
    """``lstm_fast.reference``, or the same file loaded on its own.

    The package ``__init__`` imports the compiled ``_core``; when that is not
    built (or broken) the reference and its NamedTuples are still pure NumPy,
    so load them from the source folder under a private package name.
    """
    try:
        return importlib.import_module("lstm_fast.reference")
    except Exception:
        name = "_lstm_fast_reference_standalone"
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(PACKAGE_DIR)]
            sys.modules[name] = package
        return importlib.import_module(f"{name}.reference")


ref = _load_reference()


# The dtypes the engine computes in; ``@each_dtype`` runs a test once in each.
DTYPES = (np.float32, np.float64)
each_dtype = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)


# --------------------------------------------------------------------------
# Tolerances
#
# The engine and the reference compute the same formulas in a different order
# (blocked GEMMs with FMA instead of NumPy's dot, one big GEMM over all T*B rows
# for the gradients instead of a per-step sum) and with different activation
# code (the engine's sigmoid and tanh are within a few ULP: docs/design.md, 'Numerics').
# A dot product of length K = I + H accumulated in another order differs by
# about sqrt(K) * eps * sum|terms| (K * eps in the worst case); the recurrence
# carries that error through T steps, mostly damped by f < 1 and by the
# activations' slopes <= 1, and the weight gradients sum T*B such terms.
# With K <= ~70 and T <= ~12 here that is ~1e-5 of the magnitude for float32
# (eps = 1.2e-7) and ~1e-13 for float64 (eps = 2.2e-16). The bounds below leave
# a margin of 10-1000x over those estimates while still catching any real bug
# (a wrong index, a missing term or a wrong gate gives errors of order 1e-2..1).
# The absolute part is scaled by the largest |expected| so that near-zero
# entries of a large gradient (cancellation) are judged against its size.

TOLERANCES = {
    np.dtype(np.float32): (2e-4, 2e-4),
    np.dtype(np.float64): (1e-10, 1e-10),
}


def tolerance(dtype) -> tuple[float, float]:
    """(rtol, atol) for results computed in ``dtype``."""
    return TOLERANCES[np.dtype(dtype)]


def assert_close(actual, expected, dtype=None, *, what: str = "", factor: float = 1.0) -> None:
    """``actual`` (computed in ``dtype``) matches ``expected`` to that dtype's tolerance.

    ``expected`` should come from the float64 reference on the same input
    values, so only the error of ``actual`` is judged. NaN must match NaN.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    rtol, atol = tolerance(dtype if dtype is not None else actual.dtype)
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.max(np.abs(finite), initial=0.0)))
    np.testing.assert_allclose(
        actual.astype(np.float64),
        expected.astype(np.float64),
        rtol=rtol * factor,
        atol=atol * factor * scale,
        err_msg=what,
    )


def assert_same_bits(a, b, what: str = "") -> None:
    """Bitwise equality (also for NaN payloads and signed zeros), dtype and shape."""
    if a is None or b is None:
        assert a is None and b is None, what
        return
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), what


# --------------------------------------------------------------------------
# Random inputs


@dataclass(frozen=True)
class Case:
    """One functional-API call: shapes, options and the seed of its numbers."""

    T: int
    B: int
    I: int  # noqa: E741
    H: int
    dtype: Any = np.float64
    bias: str = "both"  # both | none | ih | hh
    state: str = "both"  # both | none | h0 | c0
    lengths: str = "none"  # none | random | full | zeros | mixed
    reverse: bool = False
    batch_first: bool = False
    grads: str = "all"  # all | none | dy | final  (which of dy, dh_n, dc_n are given)
    seed: int = 0
    scale: float = 1.5  # weights are uniform in +-scale/sqrt(H)

    def with_(self, **changes) -> Case:
        return replace(self, **changes)

    @property
    def id(self) -> str:
        flags = [
            f"T{self.T}B{self.B}I{self.I}H{self.H}",
            np.dtype(self.dtype).name,
            f"bias-{self.bias}",
            f"state-{self.state}",
            f"len-{self.lengths}",
            f"grads-{self.grads}",
        ]
        if self.reverse:
            flags.append("rev")
        if self.batch_first:
            flags.append("bf")
        return "-".join(flags) + f"-s{self.seed}"


def make_lengths(rng: np.random.Generator, kind: str, T: int, B: int) -> np.ndarray | None:
    if kind == "none":
        return None
    if kind == "full":
        return np.full(B, T, dtype=np.int64)
    if kind == "zeros":
        return np.zeros(B, dtype=np.int64)
    lengths = rng.integers(0, T + 1, size=B).astype(np.int64)
    if kind == "mixed" and B >= 2:
        lengths[0] = 0
        lengths[-1] = T
    return lengths


def make_arrays(case: Case) -> dict[str, Any]:
    """Every array of ``case`` (in ``case.dtype``; absent ones are ``None``).

    Keys: x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, dy, dh_n, dc_n. ``x`` and
    ``dy`` are in the call's layout (batch-first when ``case.batch_first``).
    """
    rng = np.random.default_rng(case.seed)
    T, B, I, H = case.T, case.B, case.I, case.H
    dtype = np.dtype(case.dtype)
    k = case.scale / np.sqrt(max(H, 1))

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def uniform(*shape):
        return rng.uniform(-k, k, shape).astype(dtype)

    seq = (B, T) if case.batch_first else (T, B)
    arrays: dict[str, Any] = {
        "x": normal(*seq, I),
        "w_ih": uniform(4 * H, I),
        "w_hh": uniform(4 * H, H),
        "b_ih": uniform(4 * H) if case.bias in ("both", "ih") else None,
        "b_hh": uniform(4 * H) if case.bias in ("both", "hh") else None,
        "h0": normal(B, H) * 0.5 if case.state in ("both", "h0") else None,
        "c0": normal(B, H) if case.state in ("both", "c0") else None,
        "lengths": make_lengths(rng, case.lengths, T, B),
        "dy": normal(*seq, H) if case.grads in ("all", "dy") else None,
        "dh_n": normal(B, H) if case.grads in ("all", "final") else None,
        "dc_n": normal(B, H) if case.grads in ("all", "final") else None,
    }
    return arrays


def forward_kwargs(case: Case, arrays: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``forward`` for ``case`` (everything but x, w_ih, w_hh)."""
    return {
        "b_ih": arrays["b_ih"],
        "b_hh": arrays["b_hh"],
        "h0": arrays["h0"],
        "c0": arrays["c0"],
        "batch_first": case.batch_first,
        "lengths": arrays["lengths"],
        "reverse": case.reverse,
    }


def as_float64(arrays: dict[str, Any]) -> dict[str, Any]:
    """The same values in float64 (lengths untouched): the oracle's input."""
    out = {}
    for name, value in arrays.items():
        if value is None or name == "lengths":
            out[name] = value
        else:
            out[name] = np.asarray(value, dtype=np.float64)
    return out


def run_both(module, case: Case, arrays: dict[str, Any]):
    """forward then backward of ``module`` on ``arrays``: (Forward, Gradients)."""
    out = module.forward(
        arrays["x"], arrays["w_ih"], arrays["w_hh"], **forward_kwargs(case, arrays)
    )
    grads = module.backward(out.cache, arrays["dy"], arrays["dh_n"], arrays["dc_n"])
    return out, grads


def valid_mask(case: Case, lengths: np.ndarray | None) -> np.ndarray:
    """(T, B) bool: which (time, row) entries are real steps, time-major."""
    if lengths is None:
        return np.ones((case.T, case.B), dtype=bool)
    return np.arange(case.T)[:, None] < np.asarray(lengths)[None, :]


def assert_matches_reference(case: Case, arrays, out, grads, dtype=None) -> None:
    """Engine results ``out``/``grads`` for ``case`` equal the float64 reference's."""
    dtype = np.dtype(dtype if dtype is not None else case.dtype)
    ref_out, ref_grads = run_both(ref, case, as_float64(arrays))

    for name in ("y", "h_n", "c_n"):
        got = getattr(out, name)
        assert got.dtype == dtype, f"{name} dtype {got.dtype}, expected {dtype}"
        assert_close(got, getattr(ref_out, name), dtype, what=name)

    # padded outputs are exactly zero
    mask = valid_mask(case, arrays["lengths"])
    y_tm = out.y.transpose(1, 0, 2) if case.batch_first else out.y
    assert np.all(y_tm[~mask] == 0), "y at padded steps must be 0"

    # cache: time-major (T, B, H) gates and cells; padded entries unspecified
    cache = out.cache
    for name in "ifgoc":
        got = getattr(cache, name)
        assert got.shape == (case.T, case.B, case.H), f"cache.{name} shape {got.shape}"
        assert got.dtype == dtype, f"cache.{name} dtype {got.dtype}"
        assert_close(got[mask], getattr(ref_out.cache, name)[mask], dtype, what=f"cache.{name}")

    for name in ref_grads._fields:
        got = getattr(grads, name)
        want = getattr(ref_grads, name)
        if want is None:
            assert got is None, f"{name} must be None when its bias is missing"
            continue
        assert got is not None, f"{name} is None"
        assert got.dtype == dtype, f"{name} dtype {got.dtype}, expected {dtype}"
        assert_close(got, want, dtype, what=name)


def central_difference(f, a: np.ndarray, index, step: float = 1e-6) -> float:
    """``d f() / d a[index]`` by central differences; ``a`` is changed in place
    and restored."""
    saved = a[index]
    a[index] = saved + step
    up = f()
    a[index] = saved - step
    down = f()
    a[index] = saved
    return (up - down) / (2 * step)


# --------------------------------------------------------------------------
# Memory layouts


def relayout(a: np.ndarray | None, kind: str) -> np.ndarray | None:
    """The same values as ``a`` in another memory layout (a view where possible).

    kind: "C" contiguous, "F" Fortran order, "strided" (every other element of a
    larger buffer in every dimension), "reversed" (negative strides),
    "transposed" (a transposed view of a buffer of the reversed shape),
    "swapped" (first two axes swapped, e.g. a batch-major buffer seen time-major),
    "unaligned" (data at an odd byte address).
    """
    if a is None:
        return None
    a = np.asarray(a)
    if kind == "C":
        out = np.ascontiguousarray(a)
    elif kind == "F":
        out = np.asfortranarray(a)
    elif kind == "strided":
        big = np.full(tuple(2 * n + 1 for n in a.shape), np.nan if a.dtype.kind == "f" else 7)
        big = big.astype(a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        out = view
    elif kind == "reversed":
        flipped = np.ascontiguousarray(a[tuple(slice(None, None, -1) for _ in a.shape)])
        out = flipped[tuple(slice(None, None, -1) for _ in a.shape)]
    elif kind == "transposed":
        out = np.ascontiguousarray(a.T).T
    elif kind == "swapped":
        out = np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1) if a.ndim >= 2 else a[::1]
    elif kind == "unaligned":
        raw = np.zeros(a.nbytes + 1, dtype=np.uint8)[1:]
        out = raw.view(a.dtype).reshape(a.shape)
        out[...] = a
        assert not out.flags.aligned or a.dtype.itemsize == 1 or a.size == 0
    else:
        raise ValueError(kind)
    np.testing.assert_array_equal(out, a)
    return out


LAYOUTS = ("C", "F", "strided", "reversed", "transposed", "swapped", "unaligned")


# --------------------------------------------------------------------------
# PyTorch as a second oracle


def torch_lstm(arrays: dict[str, Any], case: Case, dtype=None):
    """The same call through ``torch.nn.LSTM``.

    Returns (y, h_n, c_n, grads) as NumPy arrays, where grads is a dict with the
    keys of ``Gradients`` (``None`` for a missing bias). Rows of length 0 are
    left out of the packed call (PyTorch rejects them) and filled in by
    lstm_fast's rule for them (docs/api.md, 'Functional API'): y = 0, h_n = h0,
    dh0 = dh_n, dx = 0. ``reverse`` is the second
    direction of a bidirectional LSTM whose first direction is ignored.
    """
    import torch

    dtype = np.dtype(dtype if dtype is not None else case.dtype)
    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[dtype]
    T, B, I, H = case.T, case.B, case.I, case.H

    def tensor(a, *, grad=False):
        t = torch.tensor(np.asarray(a, dtype=dtype), dtype=tdtype)
        t.requires_grad_(grad)
        return t

    x = np.asarray(arrays["x"], dtype)
    x_tm = x.transpose(1, 0, 2) if case.batch_first else x
    lengths = arrays["lengths"]
    lengths = np.full(B, T, dtype=np.int64) if lengths is None else np.asarray(lengths)
    keep = np.flatnonzero(lengths > 0)
    zeros_bh = np.zeros((B, H), dtype)
    h0 = zeros_bh if arrays["h0"] is None else np.asarray(arrays["h0"], dtype)
    c0 = zeros_bh if arrays["c0"] is None else np.asarray(arrays["c0"], dtype)
    dy = np.zeros((T, B, H), dtype) if arrays["dy"] is None else np.asarray(arrays["dy"], dtype)
    dy_tm = dy.transpose(1, 0, 2) if (case.batch_first and arrays["dy"] is not None) else dy
    dh_n = zeros_bh if arrays["dh_n"] is None else np.asarray(arrays["dh_n"], dtype)
    dc_n = zeros_bh if arrays["dc_n"] is None else np.asarray(arrays["dc_n"], dtype)

    has_bias = arrays["b_ih"] is not None or arrays["b_hh"] is not None
    module = torch.nn.LSTM(I, H, bias=has_bias, bidirectional=case.reverse, dtype=tdtype)
    suffix = "_reverse" if case.reverse else ""
    params = {
        "w_ih": getattr(module, "weight_ih_l0" + suffix),
        "w_hh": getattr(module, "weight_hh_l0" + suffix),
    }
    if has_bias:
        params["b_ih"] = getattr(module, "bias_ih_l0" + suffix)
        params["b_hh"] = getattr(module, "bias_hh_l0" + suffix)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        for name, p in params.items():
            if arrays[name] is not None:
                p.copy_(tensor(arrays[name]))

    y = np.zeros((T, B, H), dtype)
    h_n = h0.copy()
    c_n = c0.copy()
    dx = np.zeros((T, B, I), dtype)
    dh0 = dh_n.copy()
    dc0 = dc_n.copy()
    param_grads = {name: np.zeros(p.shape, dtype) for name, p in params.items()}

    if len(keep) > 0 and T > 0:
        directions = 2 if case.reverse else 1
        x_t = tensor(x_tm[:, keep], grad=True)
        h0_t = tensor(np.stack([h0[keep]] * directions), grad=True)
        c0_t = tensor(np.stack([c0[keep]] * directions), grad=True)
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x_t, torch.tensor(lengths[keep]), enforce_sorted=False
        )
        y_packed, (hn_t, cn_t) = module(packed, (h0_t, c0_t))
        y_t, _ = torch.nn.utils.rnn.pad_packed_sequence(y_packed, total_length=T)
        y_t = y_t[..., H:] if case.reverse else y_t
        loss = (
            (y_t * tensor(dy_tm[:, keep])).sum()
            + (hn_t[-1] * tensor(dh_n[keep])).sum()
            + (cn_t[-1] * tensor(dc_n[keep])).sum()
        )
        loss.backward()
        y[:, keep] = y_t.detach().numpy()
        h_n[keep] = hn_t[-1].detach().numpy()
        c_n[keep] = cn_t[-1].detach().numpy()
        dx[:, keep] = x_t.grad.numpy()
        dh0[keep] = h0_t.grad[-1].numpy()
        dc0[keep] = c0_t.grad[-1].numpy()
        for name, p in params.items():
            param_grads[name] = p.grad.numpy().copy()

    if case.batch_first:
        y = y.transpose(1, 0, 2)
        dx = dx.transpose(1, 0, 2)
    grads = {
        "dx": dx,
        "dh0": dh0,
        "dc0": dc0,
        "dw_ih": param_grads["w_ih"],
        "dw_hh": param_grads["w_hh"],
        "db_ih": param_grads["b_ih"] if arrays["b_ih"] is not None else None,
        "db_hh": param_grads["b_hh"] if arrays["b_hh"] is not None else None,
    }
    return y, h_n, c_n, grads


# Cases for the comparisons with PyTorch, of the reference (float64) and of the
# engine (both dtypes): every option, rows of length 0, I and H of 1 and sizes
# around a SIMD width.
TORCH_CASES = [
    Case(5, 3, 4, 6),
    Case(5, 4, 3, 7, lengths="mixed"),
    Case(6, 5, 7, 9, lengths="mixed"),
    Case(5, 4, 3, 7, lengths="mixed", reverse=True),
    Case(6, 5, 7, 9, lengths="mixed", reverse=True),
    Case(6, 5, 2, 3, lengths="random", reverse=True, batch_first=True, seed=2),
    Case(7, 4, 3, 17, lengths="random", reverse=True, batch_first=True, seed=2),
    Case(4, 3, 5, 2, lengths="random", batch_first=True, seed=4),
    Case(4, 8, 33, 16, lengths="random", batch_first=True, seed=4),
    Case(3, 2, 1, 1, bias="none", state="none"),
    Case(4, 3, 3, 4, bias="ih", state="h0", grads="dy", lengths="mixed", reverse=True),
    Case(4, 3, 3, 4, bias="hh", state="c0", grads="final", lengths="full"),
    Case(7, 2, 9, 17, scale=3.0, seed=9),
    Case(8, 2, 9, 33, scale=3.0, seed=9),
    Case(3, 4, 2, 3, lengths="zeros"),
    Case(1, 1, 1, 1),
    Case(10, 16, 24, 64, lengths="random", seed=12),
]


def assert_matches_torch(case: Case, arrays, out, grads) -> None:
    """Results ``out``/``grads`` of ``case`` equal ``torch.nn.LSTM``'s on the same
    arrays, both computed in ``case.dtype``."""
    dtype = np.dtype(case.dtype)
    y, h_n, c_n, torch_grads = torch_lstm(arrays, case)
    assert_close(out.y, y, dtype, what="y")
    assert_close(out.h_n, h_n, dtype, what="h_n")
    assert_close(out.c_n, c_n, dtype, what="c_n")
    for name, want in torch_grads.items():
        got = getattr(grads, name)
        if want is None:
            assert got is None, name
        else:
            assert got.dtype == dtype, name
            assert_close(got, want, dtype, what=name)

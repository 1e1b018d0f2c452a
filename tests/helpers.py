"""What the test modules share: the reference oracle, random inputs, tolerances,
memory layouts and PyTorch as a second oracle.

Test modules import these with ``from tests.helpers import ...``; fixtures and
hooks live in ``conftest.py``. Nothing here imports the compiled engine at
module level, so the reference's own tests run before the extension is built.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
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


def digest(*arrays) -> str:
    """The SHA-256 of the arrays' bytes in order, ``None`` ones passed over."""
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# The thread counts and splits a result must not depend on, beyond 1 thread.
THREAD_SETTINGS = (
    {"LSTM_FAST_NUM_THREADS": "2"},
    # A short spin: waits that outlast 20 µs (the first of a call, and any on a
    # busy machine) sleep, so the sleeping path runs more often.
    {"LSTM_FAST_NUM_THREADS": "2", "LSTM_FAST_SPLIT": "hidden", "LSTM_FAST_SPIN_US": "20"},
    {"LSTM_FAST_NUM_THREADS": "3", "LSTM_FAST_SPLIT": "batch"},
    {"LSTM_FAST_NUM_THREADS": "3", "LSTM_FAST_SPLIT": "batch", "LSTM_FAST_CHUNK_ROWS": "4"},
)


# What a script of script_hashes starts with (and ``print(json.dumps(out))`` after
# it): the script fills ``out`` with its hashes by name.
SCRIPT_PRELUDE = """\
import hashlib, json, sys
sys.path.insert(0, {root!r})
import numpy as np
import lstm_fast
from tests.helpers import digest
out = {{}}
"""


def script_hashes(script: str, timeout: float = 300, args=(), **env) -> dict:
    """Run ``script`` (``{root}`` filled in with the checkout; SCRIPT_PRELUDE before
    it) with ``args`` in a fresh interpreter whose ``LSTM_FAST_*`` environment is
    ``env`` only: the ``out`` it fills."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_FAST_")}
    environment.update(env)
    code = (SCRIPT_PRELUDE + script).format(root=str(ROOT)) + "print(json.dumps(out))\n"
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, env=environment, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_same_hashes(
    script: str, settings=THREAD_SETTINGS, timeout: float = 300, args=()
) -> dict:
    """``script``'s hashes (:func:`script_hashes`) at 1 thread, equal under every one
    of ``settings``."""
    one = script_hashes(script, timeout, args, LSTM_FAST_NUM_THREADS="1")
    assert one
    for env in settings:
        assert script_hashes(script, timeout, args, **env) == one, env
    return one


def assert_same_bits_for_thread_counts(run, counts=(1, 2, 3)) -> None:
    """``run()`` (its arrays) at each engine thread count of ``counts``: the same
    bits (the caller restores the count: the ``threads`` fixture)."""
    import lstm_fast

    results = []
    for n in counts:
        lstm_fast.set_num_threads(n)
        results.append(run())
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_same_bits(a, b)


# --------------------------------------------------------------------------
# One functional call's problem (the engine's variant tests)

# ONNX's activations with the parameters the tests give them (not the defaults,
# so that a parameter read in the wrong place shows).
ACTIVATION_CASES = [
    ("Sigmoid",),
    ("Tanh",),
    ("Relu",),
    ("HardSigmoid", 0.3, 0.4),
    ("Affine", 0.7, 0.2),
    ("LeakyRelu", 0.1),
    ("ThresholdedRelu", 0.3),
    ("ScaledTanh", 1.3, 0.8),
    ("Elu", 0.9),
    ("Softsign",),
    ("Softplus",),
]

# The gradients of VariantGradients that are arrays (or None), in its order.
GRADIENTS = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr", "dpeepholes")


def lstm_problem(
    variant: dict, dims: tuple, dtype, seed: int = 0, *, projection: bool = False,
    layer_norm: bool = False, norms: tuple[str, ...] = (),
):  # fmt: skip
    """Arrays, options (the variant, the setting) and seeds of one forward and
    backward. ``dims`` is (T, B, I, H, P, lengths, reverse, batch_first, h0c0);
    ``projection`` draws w_hr (P, H), else P must be H; ``layer_norm`` asks for the
    LayerNorm LSTM, with the gains and biases named in ``norms`` drawn. The draws
    come in one fixed order, so a problem is the same whoever asks for it."""
    T, B, I, H, P, lengths, reverse, batch_first, h0c0 = dims  # noqa: E741
    rng = np.random.default_rng(seed)
    k = 1.2 / np.sqrt(H)
    seq = (B, T) if batch_first else (T, B)
    arrays = {
        "x": rng.standard_normal((*seq, I)),
        "w_ih": rng.uniform(-k, k, (4 * H, I)),
        "w_hh": rng.uniform(-k, k, (4 * H, P)),
        "b_ih": rng.uniform(-k, k, 4 * H),
        "b_hh": rng.uniform(-k, k, 4 * H),
        "h0": 0.5 * rng.standard_normal((B, P)) if h0c0 else None,
        "c0": rng.standard_normal((B, H)) if h0c0 else None,
    }
    arrays = {n: None if a is None else a.astype(dtype) for n, a in arrays.items()}
    options = dict(variant)
    if projection:
        options["w_hr"] = rng.uniform(-1.5 / np.sqrt(H), 1.5 / np.sqrt(H), (P, H)).astype(dtype)
    if options.pop("peepholes", False):
        options["peepholes"] = rng.uniform(-1, 1, 3 * H).astype(dtype)
    options.update(
        batch_first=batch_first,
        reverse=reverse,
        lengths=None if lengths is None else np.array(lengths),
    )
    if layer_norm:
        options["layer_norm"] = True
    for name in norms:
        width = H if name.endswith("_c") else 4 * H
        centre = 1.0 if name.startswith("w_") else 0.0
        options[name] = (centre + 0.3 * rng.standard_normal(width)).astype(dtype)
    seeds = {
        "dy": rng.standard_normal((*seq, P)).astype(dtype),
        "dh_n": rng.standard_normal((B, P)).astype(dtype),
        "dc_n": rng.standard_normal((B, H)).astype(dtype),
    }
    return arrays, options, seeds


def float64_values(d: dict) -> dict:
    """``d`` with its floating-point arrays in float64 (the oracle's input)."""
    return {
        n: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
        for n, v in d.items()
    }


def forward_backward(module, arrays, options, seeds, *, flow=True):
    """``module.forward`` on ``arrays`` and ``options``, then its backward from
    ``seeds``: (Forward, gradients)."""
    out = module.forward(*arrays.values(), **options)
    grads = module.backward(out.cache, *seeds.values(), flow=flow)
    return out, grads


def assert_engine_matches_reference(
    arrays, options, seeds, dtype, gradients=GRADIENTS, *, factor: float = 1.0
):
    """The engine's forward and backward (flow included) against the reference's
    in float64: outputs, cache gates and the ``gradients`` fields; returns the
    engine's and the reference's gradients."""
    import lstm_fast

    out, g = forward_backward(lstm_fast, arrays, options, seeds)
    r_out, r = forward_backward(
        ref, float64_values(arrays), float64_values(options), float64_values(seeds)
    )
    for field in ("y", "h_n", "c_n"):
        assert getattr(out, field).dtype == dtype
        assert_close(getattr(out, field), getattr(r_out, field), dtype, what=field, factor=factor)
    for gate in "ifgoc":
        mine, theirs = getattr(out.cache, gate), getattr(r_out.cache, gate)
        assert_close(mine, theirs, dtype, what=gate, factor=factor)
    if out.cache.z is not None:
        assert_close(out.cache.z, r_out.cache.z, dtype, what="z", factor=factor)
    for field in gradients:
        mine, theirs = getattr(g, field), getattr(r, field)
        if theirs is None:
            assert mine is None, field
            continue
        assert mine.dtype == dtype and mine.shape == theirs.shape, field
        assert_close(mine, theirs, dtype, what=field, factor=factor)
    for field in ("dh", "dc", "dh_sum", "dc_sum"):
        assert_close(
            getattr(g.flow, field), getattr(r.flow, field), dtype, what=f"flow.{field}",
            factor=factor,
        )  # fmt: skip
    return out, g, r


# The LayerNorm LSTM's bad arguments: (options, the error, what its message matches).
BAD_LAYER_NORM = [
    (dict(w_ln_ih=np.ones(16)), ValueError, "w_ln_ih.*layer_norm=True"),
    (dict(b_ln_c=np.ones(4)), ValueError, "b_ln_c.*layer_norm=True"),
    (dict(layer_norm=True, w_ln_ih=np.ones(15)), ValueError, "w_ln_ih"),
    (dict(layer_norm=True, b_ln_hh=np.ones((4, 4))), ValueError, "b_ln_hh"),
    (dict(layer_norm=True, w_ln_c=np.ones(16)), ValueError, "w_ln_c"),
    (dict(layer_norm=True, b_ln_c=np.ones(3)), ValueError, "b_ln_c"),
    (dict(layer_norm=True, w_ln_hh=np.ones(16, complex)), TypeError, "w_ln_hh"),
    (dict(layer_norm=True, w_ln_ih="gain"), TypeError, "w_ln_ih"),
    (dict(layer_norm=True, layer_norm_eps=0.0), ValueError, "layer_norm_eps"),
    (dict(layer_norm=True, layer_norm_eps=-1e-5), ValueError, "layer_norm_eps"),
    (dict(layer_norm=True, layer_norm_eps=float("nan")), ValueError, "layer_norm_eps"),
    (dict(layer_norm=True, layer_norm_eps=float("inf")), ValueError, "layer_norm_eps"),
    (dict(layer_norm=True, layer_norm_eps="1e-5"), TypeError, "layer_norm_eps"),
    (dict(layer_norm="yes"), TypeError, "layer_norm"),
]


def bad_option_id(value) -> str:
    """A test id of one of a table's (options, error, match): the options' names."""
    return str(value)[:40] if not isinstance(value, dict) else ",".join(value)


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


def loss_of(out, a) -> float:
    """sum(dy * y) + sum(dh_n * h_n) + sum(dc_n * c_n), the seeds taken from ``a``:
    its gradient is backward's."""
    return float(
        np.sum(out.y * a["dy"]) + np.sum(out.h_n * a["dh_n"]) + np.sum(out.c_n * a["dc_n"])
    )


def numeric_gradient(loss, array: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """The gradient of ``loss()`` with respect to every entry of ``array`` (changed in
    place and restored) by central differences."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        grad[index] = central_difference(loss, array, index, step)
    return grad


def check_finite_differences(a, grads, loss, names) -> None:
    """Every gradient of ``grads`` of an argument in ``a`` (named d + name; x_t's is
    dx) against central differences of ``loss``."""
    # Truncation ~ step^2 |f'''| ~ 1e-12 and rounding ~ eps |loss| / step ~ 1e-9;
    # a mistake in the math is of order 1e-2.
    for name in names:
        if a.get(name) is None:
            continue
        analytic = getattr(grads, "dx" if name == "x_t" else "d" + name)
        np.testing.assert_allclose(
            analytic, numeric_gradient(loss, a[name]), rtol=1e-6, atol=1e-6, err_msg=name
        )


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


def torch_layer_backward(t, x, h0, c0, use_hx: bool, lengths, batch_first: bool, dy, dh, dc):
    """PyTorch's ``nn.LSTM`` ``t`` over ``x`` (a PackedSequence when ``lengths``
    are given; from ``(h0, c0)`` when ``use_hx``), then backward from the seeds
    ``dy``, ``dh``, ``dc``: ``(y, h_n, c_n)`` and the leaves ``(x, h0, c0)``, their
    ``.grad`` filled in."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True)
    hxt = (h0t, c0t) if use_hx else None
    if lengths is not None:
        packed = pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
        )
        yp, (ht, ct) = t(packed, hxt)
        steps = x.shape[1] if batch_first else x.shape[0]
        yt, _ = pad_packed_sequence(yp, batch_first=batch_first, total_length=steps)
    else:
        yt, (ht, ct) = t(xt, hxt)
    loss = (
        (yt * torch.tensor(dy)).sum()
        + (ht * torch.tensor(dh)).sum()
        + (ct * torch.tensor(dc)).sum()
    )
    loss.backward()
    return (yt, ht, ct), (xt, h0t, c0t)


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


def onnx_model(graph, opset: int = 14):
    """An ONNX model of ``graph`` at ``opset``, with the lowest IR version that opset
    needs (as ``lstm_fast.export`` writes): the ``onnx`` package's default is its
    own newest IR version, which an older ONNX Runtime refuses to load."""
    from onnx import helper

    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = max(4, helper.find_min_ir_version_for(opsets))
    return model

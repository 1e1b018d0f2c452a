"""docs/api.md, 'Dtypes': dtype promotion, saturation, NaN and infinity."""

from __future__ import annotations

import lstm_fast as lf
import numpy as np
import pytest

from tests.helpers import Case, assert_close, each_dtype, forward_kwargs, make_arrays, ref

NAMES = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")


def _inputs(dtypes: dict, seed=0):
    """Inputs of a small call, each cast to its dtype in ``dtypes`` (default float64).

    Values are small integers / 8 so that every dtype (also int and bool) holds
    them meaningfully; integer inputs get integer values.
    """
    rng = np.random.default_rng(seed)
    T, B, I, H = 3, 2, 4, 5
    shapes = {"x": (T, B, I), "w_ih": (4 * H, I), "w_hh": (4 * H, H), "b_ih": (4 * H,),
              "b_hh": (4 * H,), "h0": (B, H), "c0": (B, H)}  # fmt: skip
    out = {}
    for name, shape in shapes.items():
        dtype = np.dtype(dtypes.get(name, np.float64))
        if dtype.kind == "b":
            values = rng.integers(0, 2, shape).astype(bool)
        elif dtype.kind in "iu":
            values = rng.integers(0 if dtype.kind == "u" else -2, 3, shape).astype(dtype)
        else:
            values = (rng.integers(-8, 9, shape) / 8).astype(dtype)
        out[name] = values
    return out


def _call(module, a, **options):
    return module.forward(*(a[n] for n in NAMES), **options)


def _check_promotion(a, expected_dtype):
    out = _call(lf, a, lengths=np.array([3, 1]))
    want = _call(ref, {n: np.asarray(v, np.float64) for n, v in a.items()}, lengths=[3, 1])
    for name in ("y", "h_n", "c_n"):
        got = getattr(out, name)
        assert got.dtype == expected_dtype, f"{name}: {got.dtype} != {expected_dtype}"
        assert_close(got, getattr(want, name), expected_dtype, what=name)
    for name in "ifgoc":
        assert getattr(out.cache, name).dtype == expected_dtype, name
    dy = np.ones(out.y.shape, expected_dtype)
    grads = lf.backward(out.cache, dy)
    want_grads = ref.backward(want.cache, dy.astype(np.float64))
    for name in grads._fields:
        got = getattr(grads, name)
        assert got.dtype == expected_dtype, f"{name}: {got.dtype} != {expected_dtype}"
        assert_close(got, getattr(want_grads, name), expected_dtype, what=name)


@pytest.mark.parametrize(
    "dtypes, expected",
    [
        ({n: np.float32 for n in NAMES}, np.float32),
        ({n: np.float64 for n in NAMES}, np.float64),
        ({"x": np.float32}, np.float64),  # float32 x, float64 weights
        ({n: np.float32 for n in NAMES if n != "c0"}, np.float64),  # one float64 array
        ({n: np.float32 for n in NAMES if n != "b_hh"}, np.float64),
        ({n: np.float16 for n in NAMES}, np.float32),
        ({"x": np.float16, **{n: np.float32 for n in NAMES[1:]}}, np.float32),
        ({"x": np.float16}, np.float64),  # float16 with float64
        ({n: np.int64 for n in NAMES}, np.float64),
        ({n: np.int32 for n in NAMES}, np.float64),
        ({n: np.uint8 for n in NAMES}, np.float64),
        ({n: np.bool_ for n in NAMES}, np.float64),
        ({"x": np.bool_, **{n: np.int16 for n in NAMES[1:]}}, np.float64),
    ],
    ids=[
        "f32",
        "f64",
        "f32-x",
        "f64-c0",
        "f64-b_hh",
        "f16",
        "f16-x",
        "f16-f64",
        "i64",
        "i32",
        "u8",
        "bool",
        "bool-int",
    ],  # fmt: skip
)
def test_promotion(dtypes, expected):
    _check_promotion(_inputs(dtypes), np.dtype(expected))


@pytest.mark.parametrize("int_dtype", [np.int8, np.int32, np.bool_])
def test_integers_mixed_with_float32(int_dtype):
    """The compute dtype is np.result_type of the *floating* inputs (docs/api.md, 'Dtypes').

    Integer inputs next to float32 ones do not force float64.
    """
    a = _inputs({**{n: np.float32 for n in NAMES}, "x": int_dtype})
    expected = ref.compute_dtype(*a.values())
    assert expected == np.float32
    _check_promotion(a, expected)


def test_python_floats_and_lists_are_float64():
    a = _inputs({})
    out = lf.forward(a["x"].tolist(), a["w_ih"].tolist(), a["w_hh"].tolist())
    assert out.y.dtype == np.float64


def test_cell_promotion():
    a = _inputs({"x": np.float16, "w_ih": np.float16, "w_hh": np.float32, "h0": np.float16,
                 "c0": np.float16, "b_ih": np.float32, "b_hh": np.float32})  # fmt: skip
    cell = lf.cell_forward(a["x"][0], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    assert cell.h_new.dtype == np.float32 and cell.c_new.dtype == np.float32
    cell64 = lf.cell_forward(a["x"][0], a["h0"], a["c0"].astype(np.float64), a["w_ih"], a["w_hh"])
    assert cell64.h_new.dtype == np.float64
    grads = lf.cell_backward(cell.cache, np.ones((2, 5), np.float64))
    assert grads.dw_ih.dtype == np.float32  # gradients have the compute dtype of forward


@each_dtype
def test_gradient_inputs_of_another_dtype(dtype):
    """dy/dh_n/dc_n in another dtype are converted to the cache's dtype."""
    case = Case(3, 2, 4, 5, dtype=dtype)
    a = make_arrays(case)
    out = lf.forward(a["x"], a["w_ih"], a["w_hh"], **forward_kwargs(case, a))
    other = np.float64 if dtype == np.float32 else np.float32
    same = lf.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    converted = lf.backward(
        out.cache, a["dy"].astype(other), a["dh_n"].astype(other), a["dc_n"].astype(other)
    )
    for name in same._fields:
        assert getattr(converted, name).dtype == dtype, name
        assert_close(getattr(converted, name), getattr(same, name), np.float32, what=name)


# --------------------------------------------------------------------------
# Saturation: sigmoid and tanh of huge finite numbers are exactly 0, 1, -1


@each_dtype
@pytest.mark.parametrize("magnitude", [1e30, 3e38, 1e4, 1000.0])
def test_saturation(isa, dtype, magnitude):
    """Pre-activations of +-magnitude give gates of exactly 0/1 (g: -1/1), no NaN."""
    if magnitude > np.finfo(dtype).max:
        pytest.skip("not representable")
    T, B, I, H = 2, 3, 1, 35  # H not a multiple of the SIMD width: tails saturate too
    signs = np.where(np.arange(4 * H) % 3 == 0, -1.0, 1.0)  # all four gates get both signs
    w_ih = (signs * magnitude).reshape(4 * H, I).astype(dtype)
    w_hh = np.zeros((4 * H, H), dtype)
    x = np.ones((T, B, I), dtype)
    x[:, 1] = -1.0  # row 1: every pre-activation has the other sign
    out = lf.forward(x, w_ih, w_hh)
    cache = out.cache
    sigma = np.where(signs > 0, 1.0, 0.0)
    expect = {
        "i": sigma[0:H],
        "f": sigma[H : 2 * H],
        "g": np.where(signs[2 * H : 3 * H] > 0, 1.0, -1.0),
        "o": sigma[3 * H : 4 * H],
    }
    for name, gate_row0 in expect.items():
        gate = getattr(cache, name)
        row1 = (1.0 - gate_row0) if name != "g" else -gate_row0
        for t in range(T):
            np.testing.assert_array_equal(gate[t, 0], gate_row0.astype(dtype), err_msg=name)
            np.testing.assert_array_equal(gate[t, 1], row1.astype(dtype), err_msg=name)
    for name in ("y", "h_n", "c_n"):
        assert np.all(np.isfinite(getattr(out, name))), name
    want = ref.forward(x.astype(np.float64), w_ih.astype(np.float64), w_hh.astype(np.float64))
    np.testing.assert_allclose(out.c_n, want.c_n, rtol=1e-6)
    np.testing.assert_allclose(out.y, want.y, rtol=1e-6)
    # the derivatives are exactly zero where saturated; nothing overflows to NaN
    grads = lf.backward(cache, np.ones(out.y.shape, dtype), np.ones((B, H), dtype))
    for name in grads._fields:
        g = getattr(grads, name)
        if g is not None:
            assert not np.any(np.isnan(g)), name


@each_dtype
def test_saturation_of_cell_state(isa, dtype):
    """tanh(c) for a huge cell state is exactly +-1, so h = o."""
    B, I, H = 2, 3, 17
    c = np.full((B, H), 1e30, dtype)
    c[1] = -1e30
    cell = lf.cell_forward(
        np.zeros((B, I), dtype), np.zeros((B, H), dtype), c,
        np.zeros((4 * H, I), dtype), np.zeros((4 * H, H), dtype),
    )  # fmt: skip
    # all pre-activations 0: i = f = o = 0.5, g = 0; c_new = 0.5 * c
    np.testing.assert_array_equal(cell.c_new, 0.5 * c)
    np.testing.assert_array_equal(cell.h_new[0], np.full(H, 0.5, dtype))
    np.testing.assert_array_equal(cell.h_new[1], np.full(H, -0.5, dtype))


# --------------------------------------------------------------------------
# NaN and infinity


@each_dtype
@pytest.mark.parametrize("reverse", [False, True])
def test_nan_in_x_poisons_only_its_row(isa, dtype, reverse):
    case = Case(6, 4, 5, 19, dtype=dtype, reverse=reverse, seed=4)
    a = make_arrays(case)
    t0, b0 = 2, 1
    a["x"][t0, b0, 3] = np.nan
    out = lf.forward(a["x"], a["w_ih"], a["w_hh"], **forward_kwargs(case, a))
    poisoned = np.arange(case.T) >= t0 if not reverse else np.arange(case.T) <= t0
    assert np.all(np.isnan(out.y[poisoned, b0])), "y must be NaN from the NaN step on"
    assert not np.any(np.isnan(out.y[~poisoned, b0])), "steps before the NaN are clean"
    assert np.all(np.isnan(out.h_n[b0])) and np.all(np.isnan(out.c_n[b0]))
    others = np.arange(case.B) != b0
    assert np.all(np.isfinite(out.y[:, others])), "other rows are not affected"
    assert np.all(np.isfinite(out.h_n[others])) and np.all(np.isfinite(out.c_n[others]))
    for name in "ifgoc":
        gate = getattr(out.cache, name)
        assert np.all(np.isnan(gate[poisoned, b0])), name
    # and the same as the reference, NaN for NaN
    want = ref.forward(a["x"].astype(np.float64), a["w_ih"], a["w_hh"], **forward_kwargs(case, a))
    assert_close(out.y, want.y, dtype)
    # backward: the NaN row poisons every weight gradient and all of its own dx,
    # and nothing of the other rows
    grads = lf.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    for name in ("dw_ih", "dw_hh", "db_ih", "db_hh"):
        assert np.all(np.isnan(getattr(grads, name))), name
    assert np.all(np.isnan(grads.dx[:, b0])) and np.all(np.isnan(grads.dh0[b0]))
    assert np.all(np.isfinite(grads.dx[:, others])), "other rows' dx are not affected"
    assert np.all(np.isfinite(grads.dh0[others])) and np.all(np.isfinite(grads.dc0[others]))


@each_dtype
@pytest.mark.parametrize("where", ["b_ih", "w_hh", "h0", "c0"])
def test_nan_elsewhere_propagates(isa, dtype, where):
    case = Case(3, 2, 3, 9, dtype=dtype, seed=5)
    a = make_arrays(case)
    a[where].flat[0] = np.nan
    out = lf.forward(a["x"], a["w_ih"], a["w_hh"], **forward_kwargs(case, a))
    want = ref.forward(*(a[n].astype(np.float64) for n in NAMES))
    assert np.any(np.isnan(out.y))
    np.testing.assert_array_equal(np.isnan(out.y), np.isnan(want.y))
    np.testing.assert_array_equal(np.isnan(out.h_n), np.isnan(want.h_n))
    np.testing.assert_array_equal(np.isnan(out.c_n), np.isnan(want.c_n))
    assert_close(out.y, want.y, dtype)


@each_dtype
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_infinite_pre_activations(isa, dtype, sign):
    """a = +-inf: sigmoid gives exactly 1/0, tanh +-1 (IEEE limits, not NaN)."""
    T, B, I, H = 2, 2, 2, 11
    rng = np.random.default_rng(0)
    w_ih = rng.uniform(0.5, 1.0, (4 * H, I)).astype(dtype)  # no zero: inf * 0 would be NaN
    w_hh = np.zeros((4 * H, H), dtype)
    x = np.full((T, B, I), sign * np.inf, dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype)
    out = lf.forward(x, w_ih, w_hh, c0=c0)
    gate = 1.0 if sign > 0 else 0.0
    for name in "ifo":
        np.testing.assert_array_equal(getattr(out.cache, name), np.full((T, B, H), gate, dtype))
    np.testing.assert_array_equal(out.cache.g, np.full((T, B, H), sign, dtype))
    want = ref.forward(x, w_ih, w_hh, c0=c0)
    assert np.all(np.isfinite(out.y)) and np.all(np.isfinite(out.c_n))
    assert_close(out.y, want.y, dtype)
    assert_close(out.c_n, want.c_n, dtype)


@each_dtype
def test_infinite_cell_state(isa, dtype):
    """c = +inf with f = 1, i*g finite stays inf and h = o * tanh(inf) = o."""
    B, I, H = 2, 1, 9
    c = np.full((B, H), np.inf, dtype)
    c[1] = -np.inf
    b = np.zeros(4 * H, dtype)
    b[H : 2 * H] = 1e30  # forget gate exactly 1
    cell = lf.cell_forward(
        np.zeros((B, I), dtype), np.zeros((B, H), dtype), c,
        np.zeros((4 * H, I), dtype), np.zeros((4 * H, H), dtype), b,
    )  # fmt: skip
    np.testing.assert_array_equal(cell.c_new, c)
    np.testing.assert_array_equal(cell.h_new[0], np.full(H, 0.5, dtype))
    np.testing.assert_array_equal(cell.h_new[1], np.full(H, -0.5, dtype))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@each_dtype
@pytest.mark.parametrize("hidden", [5, 16, 21])
def test_infinite_initial_state_matches_the_reference(isa, dtype, hidden):
    """An infinity in h0 saturates gates like the reference does, and padded
    hidden units (H not a multiple of the SIMD padding) leak no NaN into the
    gradients: every output and gradient equals the reference, NaN for NaN."""
    rng = np.random.default_rng(hidden)
    T, B, I, H = 3, 2, 3, hidden
    x = rng.standard_normal((T, B, I)).astype(dtype)
    w_ih = (rng.standard_normal((4 * H, I)) * 0.5).astype(dtype)
    w_hh = (rng.standard_normal((4 * H, H)) * 0.5).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    h0[0, 0] = np.inf
    c0 = rng.standard_normal((B, H)).astype(dtype)
    dy = np.ones((T, B, H), dtype)
    got = lf.forward(x, w_ih, w_hh, None, None, h0, c0)
    want = ref.forward(x, w_ih, w_hh, None, None, h0, c0)
    g_got = lf.backward(got.cache, dy)
    g_want = ref.backward(want.cache, dy)
    pairs = [("y", got.y, want.y), ("h_n", got.h_n, want.h_n), ("c_n", got.c_n, want.c_n)]
    pairs += [(k, a, b) for k, a, b in zip(g_got._fields, g_got, g_want) if a is not None]
    for name, a, b in pairs:
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"NaN pattern of {name}")
        np.testing.assert_array_equal(np.isinf(a), np.isinf(b), err_msg=f"inf pattern of {name}")
        finite = np.isfinite(b)
        tol = 2e-4 if dtype == np.float32 else 1e-10
        scale = 1 + np.abs(b[finite]).max(initial=0)
        assert np.abs(a[finite] - b[finite]).max(initial=0) <= tol * scale, name

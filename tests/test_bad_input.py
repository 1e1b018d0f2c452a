"""docs/api.md, 'Bad input': every wrong call raises the named Python exception.

ValueError for shapes, sizes, lengths and mismatched batch/hidden sizes;
TypeError for dtypes and non-array junk; the message names the argument and
the expected shape. Also the valid edge cases T = 0 and B = 0, and sizes whose
buffers would overflow (run in a subprocess, so an abort cannot take the test
session down with it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import lstm_fast as lf
import numpy as np
import pytest

from tests.helpers import each_dtype, ref

T, B, I, H = 4, 3, 5, 6


def _arrays(dtype=np.float64):
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((T, B, I)).astype(dtype),
        "w_ih": rng.uniform(-0.4, 0.4, (4 * H, I)).astype(dtype),
        "w_hh": rng.uniform(-0.4, 0.4, (4 * H, H)).astype(dtype),
        "b_ih": rng.uniform(-0.4, 0.4, 4 * H).astype(dtype),
        "b_hh": rng.uniform(-0.4, 0.4, 4 * H).astype(dtype),
        "h0": rng.standard_normal((B, H)).astype(dtype),
        "c0": rng.standard_normal((B, H)).astype(dtype),
    }


def _forward(**changes):
    a = _arrays()
    options = {k: changes.pop(k) for k in ("batch_first", "lengths", "reverse") if k in changes}
    a.update(changes)
    return lf.forward(
        a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"], **options
    )


def _expect(exc, call, *patterns):
    """``call()`` raises ``exc`` whose message matches every regex in ``patterns``."""
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    assert "panicked" not in message and "RUST_BACKTRACE" not in message, message
    return message


def _shape(*dims):
    """Regex for a shape as Python prints it: (3, 4), (24,)."""
    text = "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"
    return re.escape(text)


# --------------------------------------------------------------------------
# forward: shapes


def test_spec_example_message():
    """The message of docs/api.md, 'Bad input', word for word in its essentials."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 3))
    w_ih = rng.standard_normal((512, 3))
    w_hh = rng.standard_normal((512, 64))
    message = _expect(
        ValueError,
        lambda: lf.forward(x, w_ih, w_hh),
        r"\bw_hh\b",
        re.escape("(4*hidden_size, hidden_size)"),
        _shape(512, 128),
        _shape(512, 64),
    )
    assert message.index("(512, 128)") < message.index("(512, 64)"), message


FORWARD_SHAPE_ERRORS = [
    # (id, changes, patterns the message must match)
    ("x-2d", {"x": np.zeros((T, B))}, [r"\bx\b", _shape(T, B)]),
    ("x-4d", {"x": np.zeros((T, B, I, 1))}, [r"\bx\b", _shape(T, B, I, 1)]),
    ("x-0d", {"x": np.float64(1.0)}, [r"\bx\b"]),
    ("x-input-size", {"x": np.zeros((T, B, I + 2))}, [r"\b(x|w_ih)\b", str(I + 2)]),
    ("w_ih-1d", {"w_ih": np.zeros(4 * H * I)}, [r"\bw_ih\b"]),
    ("w_ih-3d", {"w_ih": np.zeros((4 * H, I, 1))}, [r"\bw_ih\b"]),
    ("w_ih-cols", {"w_ih": np.zeros((4 * H, I + 1))}, [r"\b(w_ih|x)\b", _shape(4 * H, I + 1)]),
    ("w_ih-rows", {"w_ih": np.zeros((4 * H + 4, I))}, [r"\b(w_ih|w_hh)\b", "4\\*hidden_size"]),
    (
        "w_ih-rows-not-4",
        {"w_ih": np.zeros((10, I)), "w_hh": np.zeros((10, 2))},
        [r"\b(w_ih|w_hh)\b", "4\\*hidden_size"],
    ),
    ("w_hh-1d", {"w_hh": np.zeros(4 * H)}, [r"\bw_hh\b"]),
    (
        "w_hh-cols",
        {"w_hh": np.zeros((4 * H, H + 1))},
        [r"\bw_hh\b", re.escape("(4*hidden_size, hidden_size)"), _shape(4 * H, H + 1)],
    ),
    ("w_hh-rows", {"w_hh": np.zeros((4 * H + 4, H))}, [r"\b(w_ih|w_hh)\b", _shape(4 * H + 4, H)]),
    ("b_ih-long", {"b_ih": np.zeros(4 * H + 1)}, [r"\bb_ih\b", _shape(4 * H), _shape(4 * H + 1)]),
    ("b_ih-2d", {"b_ih": np.zeros((1, 4 * H))}, [r"\bb_ih\b", _shape(4 * H), _shape(1, 4 * H)]),
    ("b_ih-0d", {"b_ih": np.float64(0.5)}, [r"\bb_ih\b"]),
    ("b_hh-short", {"b_hh": np.zeros(H)}, [r"\bb_hh\b", _shape(4 * H), _shape(H)]),
    ("h0-batch", {"h0": np.zeros((B + 1, H))}, [r"\bh0\b", _shape(B, H), _shape(B + 1, H)]),
    ("h0-hidden", {"h0": np.zeros((B, H + 1))}, [r"\bh0\b", _shape(B, H), _shape(B, H + 1)]),
    ("h0-1d", {"h0": np.zeros(H)}, [r"\bh0\b", _shape(B, H)]),
    ("h0-3d", {"h0": np.zeros((1, B, H))}, [r"\bh0\b", _shape(B, H), _shape(1, B, H)]),
    ("c0-batch", {"c0": np.zeros((B - 1, H))}, [r"\bc0\b", _shape(B, H), _shape(B - 1, H)]),
    ("c0-hidden", {"c0": np.zeros((B, H - 1))}, [r"\bc0\b", _shape(B, H), _shape(B, H - 1)]),
    (
        "batch-first-mismatch",
        {"batch_first": True},  # x is (T, B, I) = (4, 3, 5): batch 4 != h0's 3
        [r"\b(h0|x)\b"],
    ),
    ("lengths-long", {"lengths": np.array([1, 2, 3, 4])}, [r"\blengths\b", _shape(B)]),
    ("lengths-2d", {"lengths": np.array([[1], [2], [3]])}, [r"\blengths\b", _shape(B)]),
    ("lengths-0d", {"lengths": np.int64(2)}, [r"\blengths\b"]),
    ("lengths-negative", {"lengths": np.array([1, -1, 2])}, [r"\blengths\b"]),
    ("lengths-too-long", {"lengths": np.array([1, T + 1, 2])}, [r"\blengths\b", str(T)]),
    ("lengths-huge", {"lengths": np.array([1, 2**40, 2])}, [r"\blengths\b"]),
    ("lengths-int-min", {"lengths": np.array([1, -(2**63), 2])}, [r"\blengths\b"]),
    ("lengths-uint64-max", {"lengths": np.array([1, 2**64 - 1, 2], np.uint64)}, [r"\blengths\b"]),
]


@pytest.mark.parametrize(
    "changes, patterns",
    [c[1:] for c in FORWARD_SHAPE_ERRORS],
    ids=[c[0] for c in FORWARD_SHAPE_ERRORS],
)
def test_forward_shape_errors(changes, patterns):
    _expect(ValueError, lambda: _forward(**changes), *patterns)


def test_reverse_lengths_checked_too():
    _expect(ValueError, lambda: _forward(lengths=np.array([0, T + 1, 1]), reverse=True), "lengths")


# --------------------------------------------------------------------------
# forward: types

JUNK = {
    "complex": np.zeros((T, B, I), np.complex128),
    "object": np.zeros((T, B, I), object),
    "str": np.full((T, B, I), "a"),
    "bytes": np.full((T, B, I), b"a"),
    "datetime": np.zeros((T, B, I), "datetime64[s]"),
    "dict": {"a": 1},
    "string": "abc",
    "none": None,
    "set": {1, 2},
}


@pytest.mark.parametrize("junk", list(JUNK), ids=list(JUNK))
def test_x_type_errors(junk):
    _expect(TypeError, lambda: _forward(x=JUNK[junk]), r"\bx\b")


@pytest.mark.parametrize("name", ["w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"])
@pytest.mark.parametrize("junk", ["complex", "object", "str", "dict", "string"])
def test_other_argument_type_errors(name, junk):
    a = _arrays()
    value = JUNK[junk]
    if isinstance(value, np.ndarray):
        value = (
            np.zeros(a[name].shape, value.dtype) if junk != "str" else np.full(a[name].shape, "a")
        )
    _expect(TypeError, lambda: _forward(**{name: value}), rf"\b{name}\b")


@pytest.mark.parametrize("name", ["w_ih", "w_hh"])
def test_required_weights_not_none(name):
    _expect(TypeError, lambda: _forward(**{name: None}), rf"\b{name}\b")


@pytest.mark.parametrize(
    "lengths",
    [
        np.array([1.0, 2.0, 3.0]),
        np.array([1, 2, 3], complex),
        np.array(["1", "2", "3"]),
        "abc",
        {"a": 1},
        np.array([1, 2, 3], object),
    ],  # fmt: skip
    ids=["float", "complex", "str-array", "string", "dict", "object"],
)
def test_lengths_type_errors(lengths):
    _expect(TypeError, lambda: _forward(lengths=lengths), r"\blengths\b")


def test_lengths_accepts_any_integer_dtype():
    want = _forward(lengths=np.array([4, 0, 2]))
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.uint64):
        got = _forward(lengths=np.array([4, 0, 2], dtype))
        np.testing.assert_array_equal(got.y, want.y)
    np.testing.assert_array_equal(_forward(lengths=[4, 0, 2]).h_n, want.h_n)


def test_batch_first_and_reverse_are_keyword_only():
    a = _arrays()
    args = [a[n] for n in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")]
    with pytest.raises(TypeError):
        lf.forward(*args, True)
    with pytest.raises(TypeError):
        lf.forward(*args[:3], bogus=1)
    with pytest.raises(TypeError):
        lf.forward(a["x"], a["w_ih"])


# --------------------------------------------------------------------------
# backward


def _cache(batch_first=False):
    a = _arrays()
    x = a["x"].transpose(1, 0, 2).copy() if batch_first else a["x"]
    return lf.forward(x, a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], batch_first=batch_first).cache


def _cell_cache():
    a = _arrays()
    return lf.cell_forward(a["x"][0], a["h0"], a["c0"], a["w_ih"], a["w_hh"]).cache


def _reference_cache():
    a = _arrays()
    return ref.forward(a["x"], a["w_ih"], a["w_hh"]).cache


@pytest.mark.parametrize(
    "make", [lambda: None, dict, object, lambda: "cache", _cell_cache, _reference_cache, lambda: 3],
    ids=["none", "dict", "object", "string", "cell-cache", "reference-cache", "int"],
)  # fmt: skip
def test_backward_needs_a_forward_cache(make):
    cache = make()
    _expect(TypeError, lambda: lf.backward(cache), r"\bcache\b")


@pytest.mark.parametrize(
    "make", [lambda: None, dict, lambda: _cache(), _reference_cache],
    ids=["none", "dict", "sequence-cache", "reference-cache"],
)  # fmt: skip
def test_cell_backward_needs_a_cell_cache(make):
    cache = make()
    _expect(TypeError, lambda: lf.cell_backward(cache), r"\bcache\b")


BACKWARD_SHAPE_ERRORS = [
    (
        "dy-hidden",
        {"dy": np.zeros((T, B, H + 1))},
        [r"\bdy\b", _shape(T, B, H), _shape(T, B, H + 1)],
    ),
    ("dy-steps", {"dy": np.zeros((T + 1, B, H))}, [r"\bdy\b", _shape(T, B, H)]),
    ("dy-batch-major", {"dy": np.zeros((B, T, H))}, [r"\bdy\b", _shape(T, B, H), _shape(B, T, H)]),
    ("dy-2d", {"dy": np.zeros((T * B, H))}, [r"\bdy\b"]),
    ("dh_n-hidden", {"dh_n": np.zeros((B, H + 1))}, [r"\bdh_n\b", _shape(B, H)]),
    ("dh_n-3d", {"dh_n": np.zeros((1, B, H))}, [r"\bdh_n\b", _shape(B, H)]),
    ("dc_n-batch", {"dc_n": np.zeros((B + 1, H))}, [r"\bdc_n\b", _shape(B, H)]),
    ("dc_n-1d", {"dc_n": np.zeros(H)}, [r"\bdc_n\b", _shape(B, H)]),
]


@pytest.mark.parametrize(
    "changes, patterns",
    [c[1:] for c in BACKWARD_SHAPE_ERRORS],
    ids=[c[0] for c in BACKWARD_SHAPE_ERRORS],
)
def test_backward_shape_errors(changes, patterns):
    cache = _cache()
    _expect(ValueError, lambda: lf.backward(cache, **changes), *patterns)


def test_backward_batch_first_dy_layout():
    cache = _cache(batch_first=True)
    lf.backward(cache, np.zeros((B, T, H)))  # the call's own layout is fine
    _expect(ValueError, lambda: lf.backward(cache, np.zeros((T, B, H))), r"\bdy\b", _shape(B, T, H))


@pytest.mark.parametrize("name", ["dy", "dh_n", "dc_n"])
@pytest.mark.parametrize("junk", ["complex", "object", "string", "dict"])
def test_backward_type_errors(name, junk):
    cache = _cache()
    shape = (T, B, H) if name == "dy" else (B, H)
    value = JUNK[junk]
    if isinstance(value, np.ndarray):
        value = np.zeros(shape, value.dtype)
    _expect(TypeError, lambda: lf.backward(cache, **{name: value}), rf"\b{name}\b")


# --------------------------------------------------------------------------
# The cell API

CELL_ERRORS = [
    ("x_t-input", {"x_t": np.zeros((B, I + 1))}, [r"\b(x_t|w_ih)\b", str(I + 1)]),
    ("x_t-3d", {"x_t": np.zeros((1, B, I))}, [r"\bx_t\b"]),
    ("x_t-batch", {"x_t": np.zeros((B + 1, I))}, [r"\b(x_t|h|c)\b"]),
    ("h-batch", {"h": np.zeros((B + 1, H))}, [r"\bh\b", _shape(B, H), _shape(B + 1, H)]),
    ("h-hidden", {"h": np.zeros((B, H + 1))}, [r"\bh\b", _shape(B, H), _shape(B, H + 1)]),
    ("h-1d", {"h": np.zeros(H)}, [r"\bh\b"]),
    ("c-hidden", {"c": np.zeros((B, H - 1))}, [r"\bc\b", _shape(B, H), _shape(B, H - 1)]),
    (
        "w_hh",
        {"w_hh": np.zeros((4 * H, H + 2))},
        [r"\bw_hh\b", re.escape("(4*hidden_size, hidden_size)")],
    ),
    ("w_ih", {"w_ih": np.zeros((4 * H + 1, I))}, [r"\b(w_ih|w_hh)\b"]),
    ("b_ih", {"b_ih": np.zeros(4 * H - 1)}, [r"\bb_ih\b", _shape(4 * H)]),
    ("b_hh", {"b_hh": np.zeros((4 * H, 1))}, [r"\bb_hh\b", _shape(4 * H)]),
]


def _cell(**changes):
    a = _arrays()
    args = {"x_t": a["x"][0], "h": a["h0"], "c": a["c0"], "w_ih": a["w_ih"], "w_hh": a["w_hh"],
            "b_ih": a["b_ih"], "b_hh": a["b_hh"]}  # fmt: skip
    args.update(changes)
    return lf.cell_forward(**args)


@pytest.mark.parametrize(
    "changes, patterns", [c[1:] for c in CELL_ERRORS], ids=[c[0] for c in CELL_ERRORS]
)
def test_cell_shape_errors(changes, patterns):
    _expect(ValueError, lambda: _cell(**changes), *patterns)


@pytest.mark.parametrize("name", ["x_t", "h", "c", "w_ih", "b_hh"])
def test_cell_type_errors(name):
    a = _arrays()
    shapes = {"x_t": (B, I), "h": (B, H), "c": (B, H), "w_ih": a["w_ih"].shape, "b_hh": (4 * H,)}
    _expect(TypeError, lambda: _cell(**{name: np.zeros(shapes[name], complex)}), rf"\b{name}\b")
    _expect(TypeError, lambda: _cell(**{name: "junk"}), rf"\b{name}\b")


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"dh_new": np.zeros((B, H + 1))}, "dh_new"),
        ({"dc_new": np.zeros((B + 1, H))}, "dc_new"),
        ({"dh_new": np.zeros((1, B, H))}, "dh_new"),
    ],  # fmt: skip
)
def test_cell_backward_shape_errors(changes, name):
    cache = _cell().cache
    _expect(ValueError, lambda: lf.cell_backward(cache, **changes), rf"\b{name}\b", _shape(B, H))


def test_cell_backward_type_error():
    cache = _cell().cache
    _expect(TypeError, lambda: lf.cell_backward(cache, np.zeros((B, H), complex)), r"\bdh_new\b")


# --------------------------------------------------------------------------
# Threads


@pytest.mark.parametrize("n", [0, -1, -(2**40)])
def test_set_num_threads_below_one(threads, n):
    before = lf.get_num_threads()
    _expect(ValueError, lambda: lf.set_num_threads(n))
    assert lf.get_num_threads() == before


@pytest.mark.parametrize("n", [1.5, "2", None])
def test_set_num_threads_type(threads, n):
    with pytest.raises(TypeError):
        lf.set_num_threads(n)


def test_set_isa_unknown():
    before = lf.get_isa()
    with pytest.raises(ValueError):
        lf._set_isa("sse9")
    assert lf.get_isa() == before


# --------------------------------------------------------------------------
# Valid edge cases: T = 0, B = 0


@pytest.mark.parametrize("batch_first", [False, True])
@each_dtype
def test_zero_steps(batch_first, dtype):
    a = _arrays(dtype)
    x = np.zeros((B, 0, I) if batch_first else (0, B, I), dtype)
    out = lf.forward(
        x, a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"], batch_first=batch_first,
        lengths=np.zeros(B, np.int64),
    )  # fmt: skip
    assert out.y.shape == ((B, 0, H) if batch_first else (0, B, H))
    assert out.y.dtype == dtype
    np.testing.assert_array_equal(out.h_n, a["h0"])
    np.testing.assert_array_equal(out.c_n, a["c0"])
    assert not np.shares_memory(out.h_n, a["h0"])
    assert out.cache.i.shape == (0, B, H)
    dh_n = np.full((B, H), 2.0, dtype)
    dc_n = np.full((B, H), -3.0, dtype)
    grads = lf.backward(out.cache, None, dh_n, dc_n)
    assert grads.dx.shape == x.shape
    np.testing.assert_array_equal(grads.dh0, dh_n)
    np.testing.assert_array_equal(grads.dc0, dc_n)
    for name in ("dw_ih", "dw_hh", "db_ih", "db_hh"):
        g = getattr(grads, name)
        assert g.shape == a[name[1:]].shape and g.dtype == dtype, name
        assert not np.any(g), name
    # no h0/c0: zeros
    out = lf.forward(x, a["w_ih"], a["w_hh"], batch_first=batch_first)
    np.testing.assert_array_equal(out.h_n, np.zeros((B, H)))


@pytest.mark.parametrize("batch_first", [False, True])
def test_zero_batch(batch_first):
    a = _arrays()
    x = np.zeros((0, T, I) if batch_first else (T, 0, I))
    out = lf.forward(
        x, a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], np.zeros((0, H)), np.zeros((0, H)),
        batch_first=batch_first, lengths=np.zeros(0, np.int64),
    )  # fmt: skip
    assert out.y.shape == ((0, T, H) if batch_first else (T, 0, H))
    assert out.h_n.shape == (0, H) and out.c_n.shape == (0, H)
    grads = lf.backward(out.cache, np.zeros(out.y.shape))
    assert grads.dx.shape == x.shape
    assert grads.dh0.shape == (0, H)
    for name in ("dw_ih", "dw_hh", "db_ih", "db_hh"):
        assert not np.any(getattr(grads, name)), name
    cell = lf.cell_forward(
        np.zeros((0, I)), np.zeros((0, H)), np.zeros((0, H)), a["w_ih"], a["w_hh"]
    )
    assert cell.h_new.shape == (0, H)
    cg = lf.cell_backward(cell.cache)
    assert cg.dw_ih.shape == a["w_ih"].shape and not np.any(cg.dw_ih)


def test_zero_input_size():
    """I = 0: either rejected naming x/w_ih, or a well-defined LSTM driven by h0 and biases."""
    a = _arrays()
    x = np.zeros((T, B, 0))
    w_ih = np.zeros((4 * H, 0))
    try:
        out = lf.forward(x, w_ih, a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"])
    except ValueError as e:
        assert re.search(r"\b(x|w_ih|input_size)\b", str(e)), str(e)
        return
    want = ref.forward(x, w_ih, a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"])
    np.testing.assert_allclose(out.y, want.y, rtol=1e-10, atol=1e-10)
    grads = lf.backward(out.cache, np.ones_like(out.y))
    assert grads.dx.shape == x.shape and grads.dw_ih.shape == w_ih.shape


# --------------------------------------------------------------------------
# Sizes whose buffers would overflow

HUGE_CASES = {
    # NumPy refuses views of more than 2**63 bytes, so the inputs are int8 views
    # (computed in float64: 8 bytes per element) or stay below that. Every buffer
    # involved is either unrepresentable or terabytes, so that no machine's
    # allocator grants it and nothing gets touched.
    # x as float64 and y would need 2**65 bytes: not even representable in 64 bits.
    "steps-times-batch": "x = np.broadcast_to(np.int8(0), (2**31, 2**31, 1)); "
    "w_ih = np.zeros((32, 1)); w_hh = np.zeros((32, 8))",
    # y as float32 would need T*B*H*4 = 2**65 bytes
    "steps-times-batch-f32": "x = np.broadcast_to(np.float32(0), (2**30, 2**30, 1)); "
    "w_ih = np.zeros((32, 1), np.float32); w_hh = np.zeros((32, 8), np.float32)",
    # hidden_size = 2**30: w_hh as float64 is 2**65 bytes, w_ih 2**43 bytes
    "hidden": "x = np.zeros((1, 1, 256)); "
    "w_ih = np.broadcast_to(np.int8(0), (2**32, 256)); "
    "w_hh = np.broadcast_to(np.int8(0), (2**32, 2**30))",
    # each input is fine for NumPy but x as a copy, y and the cache need >= 2**43 bytes
    "cache": "x = np.broadcast_to(np.float64(0), (2**20, 2**20, 1)); "
    "w_ih = np.broadcast_to(np.float64(0), (2**12, 1)); "
    "w_hh = np.broadcast_to(np.float64(0), (2**12, 2**10))",
}


def _raises_in_subprocess(setup: str, call: str) -> None:
    """Run ``call`` after ``setup`` in a fresh interpreter: ValueError/MemoryError, no crash."""
    code = textwrap.dedent(
        f"""
        import numpy as np, lstm_fast as lf
        {setup}
        try:
            {call}
        except (ValueError, MemoryError) as e:
            print("RAISED", type(e).__name__, e)
        else:
            print("NO ERROR")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=100
    )
    assert result.returncode == 0, f"crashed ({result.returncode}): {result.stderr[-2000:]}"
    assert "RAISED" in result.stdout, result.stdout + result.stderr[-2000:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("need_cache", [True, False])
@pytest.mark.parametrize("name", list(HUGE_CASES))
def test_huge_sizes_raise(name, need_cache):
    _raises_in_subprocess(HUGE_CASES[name], f"lf.forward(x, w_ih, w_hh, need_cache={need_cache})")


@pytest.mark.timeout(120)
def test_huge_cell_raises():
    # batch = input_size = 2**31: x_t as float64 would be 2**65 bytes
    setup = (
        "x = np.broadcast_to(np.int8(0), (2**31, 2**31)); "
        "h = c = np.broadcast_to(np.int8(0), (2**31, 8)); "
        "w_ih = np.broadcast_to(np.int8(0), (32, 2**31)); w_hh = np.zeros((32, 8))"
    )
    _raises_in_subprocess(setup, "lf.cell_forward(x, h, c, w_ih, w_hh)")


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.skipif(not hasattr(os, "sysconf"), reason="no sysconf: the allocation decides")
@pytest.mark.parametrize("api", ["functional", "layer"])
def test_copy_beyond_memory_is_refused_before_it_is_made(api):
    """A buffer larger than the machine's memory but well inside the address space is
    refused before it is allocated, naming the argument: a system that overcommits
    (a sandbox) would grant it and kill the process when the copy touches it."""
    total = _physical_memory()
    x = np.broadcast_to(np.int8(0), (2, total // 8 + 1, 1))  # as float64: 2 x the memory
    with pytest.raises(MemoryError, match=r"^x: .* bytes of memory of this machine"):
        if api == "functional":
            lf.forward(x, np.zeros((16, 1)), np.zeros((16, 4)))
        else:
            lf.LSTM(1, 4, dtype=np.float64)(x)


@pytest.mark.skipif(not hasattr(os, "sysconf"), reason="no sysconf: the allocation decides")
def test_output_beyond_memory_is_refused_before_it_is_made():
    total = _physical_memory()
    hidden = 1024
    x = np.zeros((1, total // (8 * hidden) + 1, 1))  # y (1, B, H) in float64 exceeds it
    with pytest.raises(MemoryError, match=r"^y: .* bytes of memory of this machine"):
        lf.forward(x, np.zeros((4 * hidden, 1)), np.zeros((4 * hidden, hidden)), need_cache=False)

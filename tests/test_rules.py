"""Each argument rule, pinned for every public entry point.

The rules live in one private module (``lstm_fast._checks``); these tables check
that every entry point applies them alike (docs/api.md, 'Dtypes' and 'Bad input'):

* the compute dtype of the functional API, the reference and the converters;
* the seeds of ``backward``/``cell_backward`` follow their cache's dtype;
* the layer computes in its own dtype, whatever real dtype it is given;
* complex (torch tensors too), object, string, masked (with a masked element) and
  non-array junk is a ``TypeError`` naming the argument;
* ``lengths``: integer dtypes only (so inf and NaN too are a ``TypeError``), shape
  (batch,), values in [0, seq_len];
* the layer's sizes are integers >= 1, its flags bools, its dtype float32 or float64,
  its seed what ``numpy.random.default_rng`` takes;
* coercion: lists, views, Fortran order, byte-swapped, read-only arrays, masked
  arrays without a masked element, matrices and torch tensors (requiring grad or
  not) give the same bits as a C-contiguous NumPy array; a matrix behaves as its
  2-D array, shape errors included;
* a buffer that would overflow the address space is a ``ValueError`` naming the
  argument, before anything is allocated;
* the optimizers: dicts of real arrays, real numbers for the hyperparameters.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple

import lstm_fast as lf
import numpy as np
import pytest
from lstm_fast import LSTM, convert, optim
from lstm_fast import reference as ref

T, B, I, H = 3, 2, 4, 5
G = 4 * H  # gate rows
L = 2  # layers of the LSTM under test

f16, f32, f64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
i16, i32, i64 = np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64)
u8, u64, b1 = np.dtype(np.uint8), np.dtype(np.uint64), np.dtype(np.bool_)
longdouble = np.dtype(np.longdouble)

#: A real dtype of every kind the rules treat apart.
REAL_DTYPES = [f16, f32, f64, i64, u8, b1]


def _values(shape: tuple[int, ...], dtype: np.dtype, seed: int = 0) -> np.ndarray:
    """Small numbers every dtype holds exactly (integers for integer dtypes)."""
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind == "u":
        return rng.integers(0, 3, shape).astype(dtype)
    if dtype.kind == "i":
        return rng.integers(-2, 3, shape).astype(dtype)
    return (rng.integers(-8, 9, shape) / 8).astype(dtype)


def _arrays_of(result: Any) -> list[np.ndarray]:
    """Every ndarray of a (nested) result, in order; None and caches are skipped."""
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in _arrays_of(r)]
    return []


def _naming(name: str) -> str:
    """A regex for ``name`` as a word of a message (names such as ``state[0]`` too)."""
    return rf"(?<![\w\[]){re.escape(name)}(?![\w\]])"


def _assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype, (k, a.dtype, b.dtype)
        np.testing.assert_array_equal(a, b, err_msg=f"output {k}")


def _masked(shape: tuple[int, ...]) -> np.ndarray:
    """A masked array with one masked element."""
    mask = np.zeros(shape, bool)
    mask.flat[0] = True
    return np.ma.masked_array(np.zeros(shape), mask=mask)


def _torch_complex(shape: tuple[int, ...]) -> Any:
    torch = pytest.importorskip("torch")
    return torch.zeros(shape, dtype=torch.complex64)


JUNK: dict[str, Callable[[tuple[int, ...]], Any]] = {
    "complex": lambda shape: np.zeros(shape, np.complex128),
    "object": lambda shape: np.zeros(shape, object),
    "str-array": lambda shape: np.full(shape, "a"),
    "string": lambda shape: "abc",
    "dict": lambda shape: {"a": 1},
    "masked": _masked,
    "torch-complex": _torch_complex,
}


# --------------------------------------------------------------------------
# Entry points that apply the dtype rule: the functional API, the reference and
# the converters. Each takes its array arguments by name.


class Entry(NamedTuple):
    name: str
    shapes: dict[str, tuple[int, ...]]  # the array arguments, in signature order
    call: Callable[[dict[str, Any]], Any]


SEQ = {"x": (T, B, I), "w_ih": (G, I), "w_hh": (G, H), "b_ih": (G,), "b_hh": (G,),
       "h0": (B, H), "c0": (B, H)}  # fmt: skip
CELL = {"x_t": (B, I), "h": (B, H), "c": (B, H), "w_ih": (G, I), "w_hh": (G, H), "b_ih": (G,),
        "b_hh": (G,)}  # fmt: skip
PYTORCH = {"w_ih": (G, I), "w_hh": (G, H), "b_ih": (G,), "b_hh": (G,)}
GATES = {**{f"W_{k}": (H, I + H) for k in "ifco"}, **{f"b_{k}": (H,) for k in "ifco"}}

DTYPE_ENTRIES = [
    Entry("forward", SEQ, lambda a: lf.forward(**a)),
    Entry("cell_forward", CELL, lambda a: lf.cell_forward(**a)),
    Entry("reference.forward", SEQ, lambda a: ref.forward(**a)),
    Entry("reference.cell_forward", CELL, lambda a: ref.cell_forward(**a)),
    Entry("convert.to_keras", PYTORCH, lambda a: convert.to_keras(**a)),
    Entry("convert.to_onnx", PYTORCH, lambda a: convert.to_onnx(**a)),
    Entry("convert.to_gate_matrices", PYTORCH, lambda a: convert.to_gate_matrices(**a)),
    Entry(
        "convert.from_keras",
        {"kernel": (I, G), "recurrent_kernel": (H, G), "bias": (G,)},
        lambda a: convert.from_keras(**a),
    ),
    Entry(
        "convert.from_onnx",
        {"W": (1, G, I), "R": (1, G, H), "B": (1, 2 * G)},
        lambda a: convert.from_onnx(**a),
    ),
    Entry(
        "convert.from_gate_matrices", GATES, lambda a: convert.from_gate_matrices(**a, input_size=I)
    ),
]


def _args(shapes: dict[str, tuple[int, ...]], first: np.dtype, middle: np.dtype, last: np.dtype):
    """Arguments with the first in ``first``, the last in ``last``, the rest in ``middle``."""
    names = list(shapes)
    dtypes = [first] + [middle] * (len(names) - 2) + [last]
    return {n: _values(shapes[n], d, seed=k) for k, (n, d) in enumerate(zip(names, dtypes))}


DTYPE_CASES = [
    # (id, first argument, middle ones, last one, compute dtype)
    ("f32", f32, f32, f32, f32),
    ("f64", f64, f64, f64, f64),
    ("f16", f16, f16, f16, f32),
    ("f16+f32", f16, f32, f32, f32),
    ("f16+f64", f16, f64, f16, f64),
    ("f32+last-f64", f32, f32, f64, f64),
    ("f64+f32", f64, f32, f32, f64),
    ("longdouble+f32", longdouble, f32, f32, f64),
    ("i64+f32", i64, f32, f32, f32),
    ("f32+last-i64", f32, f32, i64, f32),
    ("u8+f32", u8, f32, f32, f32),
    ("bool+f32", b1, f32, f32, f32),
    ("i64+f16", i64, f16, f16, f32),
    ("i32", i32, i32, i32, f64),
    ("u64", u64, u64, u64, f64),
    ("bool+i16", b1, i16, i16, f64),
    ("bool", b1, b1, b1, f64),
]


@pytest.mark.parametrize("case", DTYPE_CASES, ids=[c[0] for c in DTYPE_CASES])
@pytest.mark.parametrize("entry", DTYPE_ENTRIES, ids=[e.name for e in DTYPE_ENTRIES])
def test_compute_dtype(entry, case):
    _, first, middle, last, want = case
    outputs = _arrays_of(entry.call(_args(entry.shapes, first, middle, last)))
    assert outputs
    for k, out in enumerate(outputs):
        assert out.dtype == want, f"output {k}: {out.dtype} != {want}"


@pytest.mark.parametrize("case", DTYPE_CASES, ids=[c[0] for c in DTYPE_CASES])
def test_reference_compute_dtype(case):
    _, first, middle, last, want = case
    arrays = _args(SEQ, first, middle, last)
    assert ref.compute_dtype(*arrays.values()) == want
    assert ref.compute_dtype(None, *arrays.values(), None) == want


@pytest.mark.parametrize("junk", list(JUNK))
@pytest.mark.parametrize(
    "entry, name",
    [(e, n) for e in DTYPE_ENTRIES for n in e.shapes],
    ids=[f"{e.name}-{n}" for e in DTYPE_ENTRIES for n in e.shapes],
)
def test_junk_is_a_type_error_naming_the_argument(entry, name, junk):
    args = _args(entry.shapes, f64, f64, f64)
    args[name] = JUNK[junk](entry.shapes[name])
    with pytest.raises(TypeError, match=_naming(name)):
        entry.call(args)


@pytest.mark.parametrize("entry", DTYPE_ENTRIES[:2], ids=[e.name for e in DTYPE_ENTRIES[:2]])
def test_masked_message_says_what_to_do(entry):
    name = next(iter(entry.shapes))
    args = _args(entry.shapes, f64, f64, f64)
    args[name] = _masked(entry.shapes[name])
    with pytest.raises(TypeError, match=re.escape(f"{name}.filled(0)")) as info:
        entry.call(args)
    assert "lengths" in str(info.value)


# --------------------------------------------------------------------------
# Gradient seeds follow the dtype of their cache


class SeedEntry(NamedTuple):
    name: str
    cache: Callable[[np.dtype], Any]
    shapes: dict[str, tuple[int, ...]]
    call: Callable[..., Any]


SEQ_SEEDS = {"dy": (T, B, H), "dh_n": (B, H), "dc_n": (B, H)}
CELL_SEEDS = {"dh_new": (B, H), "dc_new": (B, H)}
SEED_ENTRIES = [
    entry
    for prefix, module in (("", lf), ("reference.", ref))
    for entry in (
        SeedEntry(
            f"{prefix}backward",
            lambda dt, m=module: m.forward(**_args(SEQ, dt, dt, dt)).cache,
            SEQ_SEEDS,
            module.backward,
        ),
        SeedEntry(
            f"{prefix}cell_backward",
            lambda dt, m=module: m.cell_forward(**_args(CELL, dt, dt, dt)).cache,
            CELL_SEEDS,
            module.cell_backward,
        ),
    )
]


@pytest.mark.parametrize("seed_dtype", REAL_DTYPES, ids=str)
@pytest.mark.parametrize("cache_dtype", [f32, f64], ids=str)
@pytest.mark.parametrize("entry", SEED_ENTRIES, ids=[e.name for e in SEED_ENTRIES])
def test_seeds_take_the_dtype_of_the_cache(entry, cache_dtype, seed_dtype):
    cache = entry.cache(cache_dtype)
    seeds = {n: _values(s, seed_dtype, seed=k) for k, (n, s) in enumerate(entry.shapes.items())}
    grads = _arrays_of(entry.call(cache, **seeds))
    assert len(grads) == 7
    for k, g in enumerate(grads):
        assert g.dtype == cache_dtype, f"gradient {k}: {g.dtype} != {cache_dtype}"


@pytest.mark.parametrize("junk", list(JUNK))
@pytest.mark.parametrize(
    "entry, name",
    [(e, n) for e in SEED_ENTRIES for n in e.shapes],
    ids=[f"{e.name}-{n}" for e in SEED_ENTRIES for n in e.shapes],
)
def test_seed_junk_is_a_type_error_naming_the_seed(entry, name, junk):
    cache = entry.cache(f64)
    with pytest.raises(TypeError, match=_naming(name)):
        entry.call(cache, **{name: JUNK[junk](entry.shapes[name])})


# --------------------------------------------------------------------------
# The layer computes in its own dtype


def _layer(dtype: np.dtype = f64) -> LSTM:
    return LSTM(I, H, L, dtype=dtype, seed=0)


def _x(m: LSTM) -> np.ndarray:
    return _values((T, B, I), m.dtype, seed=10)


def _zeros(m: LSTM, shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, m.dtype)


def _backward(m: LSTM, dy: Any = None, dh_n: Any = None, dc_n: Any = None) -> list[Any]:
    m(_x(m))
    dx = m.backward(dy, dh_n, dc_n)
    assert m.hx_grad is not None
    return [dx, *m.hx_grad, *m.grads.values()]


def _load(m: LSTM, value: Any) -> list[np.ndarray]:
    state = m.state_dict()
    state["weight_ih_l0"] = value
    m.load_state_dict(state)
    return list(m.parameters.values())


class LayerEntry(NamedTuple):
    name: str  # the argument, as messages name it
    shape: tuple[int, ...]
    call: Callable[[LSTM, Any], Any]


LAYER_ENTRIES = [
    LayerEntry("x", (T, B, I), lambda m, v: m(v)),
    LayerEntry("h0", (L, B, H), lambda m, v: m(_x(m), (v, _zeros(m, (L, B, H))))),
    LayerEntry("c0", (L, B, H), lambda m, v: m(_x(m), (_zeros(m, (L, B, H)), v))),
    LayerEntry("dy", (T, B, H), lambda m, v: _backward(m, dy=v)),
    LayerEntry("dh_n", (L, B, H), lambda m, v: _backward(m, dh_n=v)),
    LayerEntry("dc_n", (L, B, H), lambda m, v: _backward(m, dc_n=v)),
    LayerEntry("x_t", (B, I), lambda m, v: m.step(v)),
    LayerEntry("state[0]", (L, B, H), lambda m, v: m.step(_x(m)[0], (v, _zeros(m, (L, B, H))))),
    LayerEntry("state[1]", (L, B, H), lambda m, v: m.step(_x(m)[0], (_zeros(m, (L, B, H)), v))),
    LayerEntry("weight_ih_l0", (G, I), _load),
]
LAYER_IDS = [
    {"x": "forward-", "h0": "forward-", "c0": "forward-", "x_t": "step-"}.get(e.name, "")
    + ("load_state_dict" if e.name.startswith("weight") else e.name)
    for e in LAYER_ENTRIES
]


@pytest.mark.parametrize("value_dtype", REAL_DTYPES, ids=str)
@pytest.mark.parametrize("layer_dtype", [f32, f64], ids=str)
@pytest.mark.parametrize("entry", LAYER_ENTRIES, ids=LAYER_IDS)
def test_layer_computes_in_its_own_dtype(entry, layer_dtype, value_dtype):
    m = _layer(layer_dtype)
    outputs = _arrays_of(entry.call(m, _values(entry.shape, value_dtype, seed=3)))
    assert outputs
    for k, out in enumerate(outputs):
        assert out.dtype == layer_dtype, f"output {k}: {out.dtype} != {layer_dtype}"


@pytest.mark.parametrize("junk", list(JUNK))
@pytest.mark.parametrize("entry", LAYER_ENTRIES, ids=LAYER_IDS)
def test_layer_junk_is_a_type_error_naming_the_argument(entry, junk):
    m = _layer()
    before = m.state_dict()
    with pytest.raises(TypeError, match=_naming(entry.name)):
        entry.call(m, JUNK[junk](entry.shape))
    for k, v in m.parameters.items():  # a refused state dict loads nothing
        np.testing.assert_array_equal(v, before[k])


# --------------------------------------------------------------------------
# The layer's constructor: sizes are integers >= 1, the dtype float32 or float64

SIZES = [
    # (id, value, exception or None when accepted)
    ("int", 3, None),
    ("np.int64", np.int64(3), None),
    ("np.uint8", np.uint8(3), None),
    ("zero", 0, ValueError),
    ("negative", -2, ValueError),
    ("whole-float", 3.0, TypeError),
    ("np.float64", np.float64(3), TypeError),
    ("bool", True, TypeError),
    ("string", "3", TypeError),
    ("none", None, TypeError),
]


def _size_calls():
    """Every entry point with a size argument: (id, name, call(value))."""
    mats = [np.ones((2, 5))] * 4
    return [
        ("LSTM-input_size", "input_size", lambda v: LSTM(v, 4)),
        ("LSTM-hidden_size", "hidden_size", lambda v: LSTM(3, v)),
        ("LSTM-num_layers", "num_layers", lambda v: LSTM(3, 4, v)),
        ("from_gate_matrices-input_size", "input_size",
         lambda v: convert.from_gate_matrices(*mats, input_size=v)),
    ]  # fmt: skip


@pytest.mark.parametrize("size", SIZES, ids=[s[0] for s in SIZES])
@pytest.mark.parametrize("call", _size_calls(), ids=[c[0] for c in _size_calls()])
def test_sizes_are_positive_integers(call, size):
    _, name, run = call
    _, value, error = size
    _accepted_or_raises(run, value, error, name)


def _accepted_or_raises(run: Callable[[Any], Any], value: Any, error: Any, name: str) -> None:
    """``run(value)`` works when ``error`` is None, else raises it naming ``name``."""
    if error is None:
        run(value)
    else:
        with pytest.raises(error, match=_naming(name)):
            run(value)


def test_set_num_threads_takes_a_positive_integer():
    before = lf.get_num_threads()
    try:
        for _, value, error in SIZES:
            if error is None:
                lf.set_num_threads(type(value)(1))  # a valid count on any machine
                assert lf.get_num_threads() == 1
            else:
                with pytest.raises(error):
                    lf.set_num_threads(value)
    finally:
        lf.set_num_threads(before)


LAYER_DTYPES = [
    # (id, dtype argument, the layer's dtype or None when refused with a TypeError)
    ("np.float32", np.float32, f32),
    ("np.float64", np.float64, f64),
    ("name", "float64", f64),
    ("dtype", np.dtype(np.float32), f32),
    ("python-float", float, f64),
    ("float16", np.float16, None),
    ("int32", np.int32, None),
    ("complex", np.complex64, None),
    ("junk-name", "junk", None),
    ("object", object, None),
]


@pytest.mark.parametrize("case", LAYER_DTYPES, ids=[c[0] for c in LAYER_DTYPES])
def test_layer_dtype(case):
    _, dtype, want = case
    if want is None:
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            LSTM(3, 4, dtype=dtype)
    else:
        m = LSTM(3, 4, dtype=dtype)
        assert m.dtype == want
        assert all(p.dtype == want for p in m.parameters.values())


@pytest.mark.parametrize("case", LAYER_DTYPES, ids=[c[0] for c in LAYER_DTYPES])
def test_export_lstm_dtype(case, tmp_path):
    pytest.importorskip("onnx")
    _, dtype, want = case
    m = LSTM(3, 4)
    if want is None:
        with pytest.raises(TypeError, match="lstm_dtype must be float32 or float64"):
            m.export_onnx(tmp_path / "m.onnx", lstm_dtype=dtype)
    else:
        m.export_onnx(tmp_path / "m.onnx", lstm_dtype=dtype)


# --------------------------------------------------------------------------
# LSTM.weights: a layer in 0..L-1 and a direction in 0..D-1, the live arrays


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_weights(bidirectional, bias):
    m = LSTM(I, H, L, bidirectional=bidirectional, bias=bias)
    directions = 2 if bidirectional else 1
    for layer in range(L):
        for direction in range(directions):
            w = m.weights(layer, direction)
            assert isinstance(w, lf.LayerWeights)
            name = f"_l{layer}" + ("_reverse" if direction else "")
            assert w.w_ih is m.parameters["weight_ih" + name]
            assert w.w_hh is m.parameters["weight_hh" + name]
            if bias:
                assert w.b_ih is m.parameters["bias_ih" + name]
                assert w.b_hh is m.parameters["bias_hh" + name]
            else:
                assert w.b_ih is None and w.b_hh is None
    assert m.weights(np.int64(L - 1)) == m.weights(L - 1, 0)
    for layer, direction in ((L, 0), (-1, 0), (0, directions), (0, -1)):
        with pytest.raises(IndexError, match="layer" if layer != 0 else "direction"):
            m.weights(layer, direction)
    with pytest.raises(TypeError):
        m.weights(0.0)


# --------------------------------------------------------------------------
# lengths: integer dtypes only, shape (batch,), values in [0, seq_len]

LENGTHS_X = _values((T, B, I), f64, seed=20)
LENGTHS_WANT = np.array([T, 1])

LENGTHS_ENTRIES = [
    ("forward", lambda x, n: lf.forward(x, *_args(PYTORCH, f64, f64, f64).values(), lengths=n)),
    ("reference.forward",
     lambda x, n: ref.forward(x, *_args(PYTORCH, f64, f64, f64).values(), lengths=n)),
    ("LSTM.forward", lambda x, n: _layer()(x, lengths=n)),
]  # fmt: skip

LENGTHS_ACCEPTED = {
    **{str(np.dtype(t)): np.array(LENGTHS_WANT, t) for t in
       (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)},
    "big-endian": LENGTHS_WANT.astype(">i8"),
    "strided": np.stack([LENGTHS_WANT, LENGTHS_WANT], axis=-1)[:, 0],
    "list": [T, 1],
    "tuple": (T, 1),
    "list-of-numpy-ints": [np.int32(T), np.uint8(1)],
    "masked-nothing": np.ma.masked_array(LENGTHS_WANT, mask=[False, False]),
}  # fmt: skip

LENGTHS_TYPE_ERRORS = {
    "float64-whole": np.array([T, 1], np.float64),
    "float32-whole": np.array([T, 1], np.float32),
    "float16-whole": np.array([T, 1], np.float16),
    "list-of-floats": [float(T), 1.0],
    "fractional": [1.5, 1],
    "bool": np.array([True, True]),
    "complex": np.array([T, 1], np.complex128),
    "object": np.array([T, 1], object),
    "str-array": np.array([str(T), "1"]),
    "string": "31",
    "dict": {"a": 1},
    "inf": [math.inf, 1.0],
    "nan": [math.nan, 1.0],
    "inf-array": np.array([math.inf, 1.0]),
    "masked": np.ma.masked_array([T, 1], mask=[False, True]),
}

LENGTHS_VALUE_ERRORS = {
    # (lengths, patterns the message must match)
    "negative": ([-1, 1], [rf"0\.\.{T}"]),
    "too-long": ([T + 1, 1], [rf"0\.\.{T}", str(T + 1)]),
    "huge": ([2**40, 1], [rf"0\.\.{T}"]),
    "int64-min": (np.array([-(2**63), 1]), [rf"0\.\.{T}"]),
    "uint64-max": (np.array([2**64 - 1, 1], np.uint64), [rf"0\.\.{T}"]),
    "short": ([T], [re.escape("(batch,)"), re.escape(f"({B},)")]),
    "long": ([T, 1, 1], [re.escape("(batch,)"), re.escape(f"({B},)")]),
    "2d": ([[T], [1]], [re.escape("(batch,)"), re.escape(f"({B},)")]),
    "0d": (np.int64(T), [re.escape("(batch,)")]),
}

LENGTHS_ENTRY_IDS = [e[0] for e in LENGTHS_ENTRIES]


@pytest.mark.parametrize("kind", list(LENGTHS_ACCEPTED))
@pytest.mark.parametrize("entry", LENGTHS_ENTRIES, ids=LENGTHS_ENTRY_IDS)
def test_lengths_accepted(entry, kind):
    _, run = entry
    _assert_same(_arrays_of(run(LENGTHS_X, LENGTHS_ACCEPTED[kind])),
                 _arrays_of(run(LENGTHS_X, LENGTHS_WANT)))  # fmt: skip


@pytest.mark.parametrize("kind", list(LENGTHS_TYPE_ERRORS))
@pytest.mark.parametrize("entry", LENGTHS_ENTRIES, ids=LENGTHS_ENTRY_IDS)
def test_lengths_type_errors(entry, kind):
    _, run = entry
    with pytest.raises(TypeError, match=_naming("lengths")):
        run(LENGTHS_X, LENGTHS_TYPE_ERRORS[kind])


@pytest.mark.parametrize("kind", list(LENGTHS_VALUE_ERRORS))
@pytest.mark.parametrize("entry", LENGTHS_ENTRIES, ids=LENGTHS_ENTRY_IDS)
def test_lengths_value_errors(entry, kind):
    _, run = entry
    lengths, patterns = LENGTHS_VALUE_ERRORS[kind]
    with pytest.raises(ValueError, match=_naming("lengths")) as info:
        run(LENGTHS_X, lengths)
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))


@pytest.mark.parametrize("entry", LENGTHS_ENTRIES, ids=LENGTHS_ENTRY_IDS)
def test_empty_lengths_list_for_an_empty_batch(entry):
    """``[]`` has no dtype of its own (NumPy reads it as float64): it means no rows."""
    _, run = entry
    x = np.zeros((T, 0, I))
    _assert_same(_arrays_of(run(x, [])), _arrays_of(run(x, np.zeros(0, np.int64))))
    with pytest.raises(TypeError, match=_naming("lengths")):
        run(x, np.zeros(0))  # an empty float *array* is still a float array


@pytest.mark.parametrize("entry", LENGTHS_ENTRIES, ids=LENGTHS_ENTRY_IDS)
def test_lengths_torch_tensors(entry):
    torch = pytest.importorskip("torch")
    _, run = entry
    want = _arrays_of(run(LENGTHS_X, LENGTHS_WANT))
    for dtype in (torch.int64, torch.int32, torch.uint8):
        _assert_same(_arrays_of(run(LENGTHS_X, torch.tensor(LENGTHS_WANT, dtype=dtype))), want)
    for dtype in (torch.float32, torch.complex64, torch.bool):
        with pytest.raises(TypeError, match=_naming("lengths")):
            run(LENGTHS_X, torch.tensor(LENGTHS_WANT, dtype=dtype))


# --------------------------------------------------------------------------
# Coercion: any layout or array-like gives the bits of a C-contiguous array


class _Subclass(np.ndarray):
    """An ndarray subclass whose operators would change the results if it got in."""

    def __add__(self, other: Any) -> Any:
        return np.asarray(self) * 0

    def __matmul__(self, other: Any) -> Any:
        return np.asarray(self) * 0


def _read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


COERCIONS: dict[str, Callable[[np.ndarray], Any]] = {
    "list": lambda a: a.tolist(),
    "fortran": np.asfortranarray,
    "strided": lambda a: np.stack([a, a], axis=-1)[..., 0],
    "negative-strides": lambda a: np.flip(np.flip(a).copy()),
    "big-endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
    "read-only": _read_only,
    "masked-nothing": lambda a: np.ma.masked_array(a, mask=np.zeros(a.shape, bool)),
    "masked-nomask": lambda a: np.ma.masked_array(a),
    "matrix": lambda a: np.asmatrix(a) if a.ndim == 2 else a,  # only 2-D arrays have one
    "memmap-like-subclass": lambda a: a.view(_Subclass),
}


class CoercionEntry(NamedTuple):
    name: str
    shapes: dict[str, tuple[int, ...]]
    call: Callable[[dict[str, Any]], list[np.ndarray]]


def _from_seeds(entry: SeedEntry) -> CoercionEntry:
    return CoercionEntry(
        entry.name, entry.shapes, lambda a: _arrays_of(entry.call(entry.cache(f64), **a))
    )


def _from_layer(entry: LayerEntry) -> CoercionEntry:
    return CoercionEntry(
        f"LSTM-{entry.name}",
        {entry.name: entry.shape},
        lambda a: _arrays_of(entry.call(_layer(), a[entry.name])),
    )


COERCION_ENTRIES = (
    [CoercionEntry(e.name, e.shapes, lambda a, e=e: _arrays_of(e.call(a))) for e in DTYPE_ENTRIES]
    + [_from_seeds(e) for e in SEED_ENTRIES]
    + [_from_layer(e) for e in LAYER_ENTRIES]
)
COERCION_IDS = [e.name for e in COERCION_ENTRIES]


def _float64_args(entry: CoercionEntry) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {n: rng.standard_normal(s) * 0.5 for n, s in entry.shapes.items()}


@pytest.mark.filterwarnings("ignore:the matrix subclass")
@pytest.mark.parametrize("coercion", list(COERCIONS))
@pytest.mark.parametrize("entry", COERCION_ENTRIES, ids=COERCION_IDS)
def test_coercion(entry, coercion):
    args = _float64_args(entry)
    want = entry.call(args)
    got = entry.call({n: COERCIONS[coercion](a) for n, a in args.items()})
    _assert_same(got, want)


@pytest.mark.parametrize("kind", ["tensor", "requires-grad", "transposed"])
@pytest.mark.parametrize("entry", COERCION_ENTRIES, ids=COERCION_IDS)
def test_coercion_of_torch_tensors(entry, kind):
    torch = pytest.importorskip("torch")
    make = {
        "tensor": torch.from_numpy,
        "requires-grad": lambda a: torch.from_numpy(a).requires_grad_(),
        "transposed": lambda a: torch.from_numpy(np.ascontiguousarray(a.T)).permute(
            *reversed(range(a.ndim))
        ),
    }[kind]
    args = _float64_args(entry)
    _assert_same(entry.call({n: make(a) for n, a in args.items()}), entry.call(args))


@pytest.mark.parametrize("torch_dtype", ["float16", "bfloat16", "float32", "float64", "int64"])
@pytest.mark.parametrize("entry", DTYPE_ENTRIES, ids=[e.name for e in DTYPE_ENTRIES])
def test_torch_tensor_dtypes(entry, torch_dtype):
    """A tensor computes like the NumPy array of its dtype; bfloat16, which NumPy
    lacks, like float32 (which holds it exactly)."""
    torch = pytest.importorskip("torch")
    numpy_dtype = np.dtype("float32" if torch_dtype == "bfloat16" else torch_dtype)
    args = _args(entry.shapes, numpy_dtype, numpy_dtype, numpy_dtype)  # exact in bfloat16 too
    tensors = {n: torch.from_numpy(a).to(getattr(torch, torch_dtype)) for n, a in args.items()}
    _assert_same(_arrays_of(entry.call(tensors)), _arrays_of(entry.call(args)))


def _reshaped_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    return (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (1, shape[0])


def _outcome(call: Callable[[], Any]) -> Any:
    """The arrays a call returns, or the type and message of its exception."""
    try:
        return _arrays_of(call())
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)


MATRIX_CASES = [
    (e.name, n, e.shapes[n], lambda a, e=e: e.call(a), lambda e=e: _args(e.shapes, f64, f64, f64))
    for e in DTYPE_ENTRIES
    for n in e.shapes
    if len(e.shapes[n]) != 2
] + [
    (f"LSTM-{e.name}", e.name, e.shape, lambda a, e=e: e.call(_layer(), a[e.name]), lambda: {})
    for e in LAYER_ENTRIES
    if len(e.shape) != 2
]


@pytest.mark.filterwarnings("ignore:the matrix subclass")
@pytest.mark.parametrize("case", MATRIX_CASES, ids=[f"{c[0]}-{c[1]}" for c in MATRIX_CASES])
def test_a_matrix_behaves_as_its_2d_array(case):
    """Never a message about a matrix's own shape rules or from the engine: the call
    goes as with the 2-D array (here usually a shape error naming the argument)."""
    _, name, shape, call, make = case
    array = _values(_reshaped_2d(shape), f64, seed=5)
    got = _outcome(lambda: call({**make(), name: np.asmatrix(array)}))
    want = _outcome(lambda: call({**make(), name: array}))
    if isinstance(want, tuple):
        assert got == want
        assert re.search(_naming(name), want[1]) or want[0] is not ValueError, want
    else:
        _assert_same(got, want)


# --------------------------------------------------------------------------
# Sizes whose buffers would overflow the address space: a ValueError naming the
# argument, before anything is allocated (the views below are int8 zeros whose
# float copies would need 2**65 bytes or more)


def _huge(*shape: int) -> np.ndarray:
    return np.broadcast_to(np.int8(0), shape)


HUGE = [
    # (id, the argument the message names, call)
    ("forward-x", "x", lambda: lf.forward(_huge(2**31, 2**31, 1), np.zeros((8, 1)),
                                          np.zeros((8, 2)))),
    ("forward-w_hh", "w_hh", lambda: lf.forward(np.zeros((1, 1, 256)), _huge(2**32, 256),
                                                _huge(2**32, 2**30))),
    ("cell_forward-x_t", "x_t", lambda: lf.cell_forward(
        _huge(2**31, 2**31), _huge(2**31, 2), _huge(2**31, 2), _huge(8, 2**31), np.zeros((8, 2)))),
    ("reference.forward-x", "x", lambda: ref.forward(_huge(2**31, 2**31, 1), np.zeros((8, 1)),
                                                     np.zeros((8, 2)))),
    ("LSTM.forward-x", "x", lambda: _layer()(_huge(2**29, 2**29, I))),
    ("LSTM.load_state_dict", "weight_ih_l0", lambda: _load(_layer(), _huge(2**60, I))),
    ("clip_grad_norm", "'w'", lambda: optim.clip_grad_norm({"w": _huge(2**31, 2**31)}, 1.0)),
    ("LSTM-hidden_size", "hidden_size", lambda: LSTM(3, 2**40)),
    ("LSTM-input_size", "input_size", lambda: LSTM(2**62, 4)),
    ("LSTM-num_layers", "num_layers", lambda: LSTM(3, 4, 2**40)),
]  # fmt: skip


@pytest.mark.parametrize("case", HUGE, ids=[c[0] for c in HUGE])
def test_huge_buffers_name_the_argument(case):
    _, name, call = case
    with pytest.raises((ValueError, MemoryError), match=_naming(name)):
        call()


# --------------------------------------------------------------------------
# Threads: a count beyond what the engine allows is a ValueError, whatever its size


@pytest.mark.parametrize("n", [2**31, 2**63 - 1, 2**63, 2**70])
def test_set_num_threads_huge(threads, n):
    before = lf.get_num_threads()
    with pytest.raises(ValueError, match=_naming("n")):
        lf.set_num_threads(n)
    assert lf.get_num_threads() == before


# --------------------------------------------------------------------------
# The layer's flags, seed and indices; the export's arguments


FLAGS = [
    # (id, value, exception or None when accepted)
    ("True", True, None), ("np.bool", np.False_, None), ("one", 1, None), ("zero", 0, None),
    ("two", 2, TypeError), ("string", "False", TypeError), ("none", None, TypeError),
    ("array", np.array([True, False]), TypeError), ("float", 1.0, TypeError),
]  # fmt: skip


def _flag_calls():
    x = _values((T, B, I), f64)
    w = _args(PYTORCH, f64, f64, f64)
    return [
        *[(f"LSTM-{n}", n, lambda v, n=n: LSTM(I, H, **{n: v}))
          for n in ("bias", "batch_first", "bidirectional")],
        *[(f"forward-{n}", n, lambda v, n=n: lf.forward(x, w["w_ih"], w["w_hh"], **{n: v}))
          for n in ("batch_first", "reverse", "need_cache")],
        ("reference.forward-reverse", "reverse",
         lambda v: ref.forward(x, w["w_ih"], w["w_hh"], reverse=v)),
        ("LSTM.forward-need_cache", "need_cache", lambda v: _layer()(x, need_cache=v)),
        ("load_state_dict-strict", "strict",
         lambda v: _layer().load_state_dict(_layer().state_dict(), strict=v)),
        ("SGD-nesterov", "nesterov",
         lambda v: optim.SGD({"w": np.zeros(3)}, 0.1, 0.9, nesterov=v)),
    ]  # fmt: skip


@pytest.mark.parametrize("flag", FLAGS, ids=[f[0] for f in FLAGS])
@pytest.mark.parametrize("call", _flag_calls(), ids=[c[0] for c in _flag_calls()])
def test_flags_are_bools(call, flag):
    """``bool("False")`` is True: a flag takes bools (and 0, 1) only."""
    _, name, run = call
    _, value, error = flag
    _accepted_or_raises(run, value, error, name)


@pytest.mark.parametrize(
    "seed, error",
    [("a", TypeError), (-1, ValueError), (1.5, TypeError), ([1.5], TypeError),
     (np.zeros(2**17, np.int64), ValueError)],
    ids=["string", "negative", "float", "float-list", "too-long"],
)  # fmt: skip
def test_layer_seed_errors_name_seed(seed, error):
    with pytest.raises(error, match=_naming("seed")):
        LSTM(3, 4, seed=seed)


@pytest.mark.filterwarnings("ignore:the matrix subclass")
@pytest.mark.parametrize(
    "seed",
    [
        0,
        2**70,
        [1, 2],
        np.int64(3),
        np.random.SeedSequence(1),
        True,
        np.array([[1, 2]]).view(np.matrix),
    ],
    ids=["0", "2**70", "list", "np.int64", "SeedSequence", "True", "matrix"],
)
def test_layer_seed_takes_what_numpy_takes(seed):
    """NumPy's own SeedSequence crashes on an np.matrix: read as its array, as
    every array argument is. What this NumPy refuses (a 2-D array, since NumPy
    2.5) is refused with the same exception, naming the argument."""
    plain = np.asarray(seed) if isinstance(seed, np.matrix) else seed
    try:
        want = np.random.default_rng(plain).uniform(-0.5, 0.5)  # bound 1/sqrt(hidden_size)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc), match=_naming("seed")):
            LSTM(3, 4, seed=seed, dtype=np.float64)
        return
    got = LSTM(3, 4, seed=seed, dtype=np.float64).parameters["weight_ih_l0"].flat[0]
    assert got == want


@pytest.mark.parametrize("name", ["layer", "direction"])
@pytest.mark.parametrize("value", [0.0, "0", None, True])
def test_layer_weights_indices(name, value):
    with pytest.raises(TypeError, match=_naming(name)):
        _layer().weights(**{"layer": 0, "direction": 0, name: value})


EXPORT_ERRORS = [
    # (id, arguments, exception, the argument named)
    ("opset-float", {"opset": 14.0}, TypeError, "opset"),
    ("opset-string", {"opset": "14"}, TypeError, "opset"),
    ("opset-bool", {"opset": True}, TypeError, "opset"),
    ("opset-huge", {"opset": 2**70}, ValueError, "opset"),
    ("opset-old", {"opset": 1}, ValueError, "opset"),
    ("path-none", {"path": None}, TypeError, "path"),
    ("path-int", {"path": 3}, TypeError, "path"),
    ("layer-none", {"layer": None}, TypeError, "layer"),
    ("layer-dict", {"layer": {}}, TypeError, "layer"),
    ("lstm_dtype-dict", {"lstm_dtype": {"names": 1}}, TypeError, "lstm_dtype"),
]


@pytest.mark.parametrize("case", EXPORT_ERRORS, ids=[c[0] for c in EXPORT_ERRORS])
def test_export_errors_name_the_argument(case, tmp_path):
    pytest.importorskip("onnx")
    from lstm_fast.export import export_onnx

    _, changes, error, name = case
    args = {"layer": _layer(), "path": tmp_path / "m.onnx", "opset": 14, **changes}
    with pytest.raises(error, match=_naming(name)):
        export_onnx(**args)
    assert not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------------
# The optimizers: dicts of real arrays, real numbers for the hyperparameters


def _optim_calls():
    p = {"w": np.zeros((2, 3)), "b": np.zeros(3)}
    g = {"w": np.ones((2, 3)), "b": np.ones(3)}
    return {
        "SGD.lr": ("lr", lambda v: optim.SGD(p, v)),
        "SGD.momentum": ("momentum", lambda v: optim.SGD(p, 0.1, v)),
        "SGD.dampening": ("dampening", lambda v: optim.SGD(p, 0.1, dampening=v)),
        "SGD.weight_decay": ("weight_decay", lambda v: optim.SGD(p, 0.1, weight_decay=v)),
        "Adam.lr": ("lr", lambda v: optim.Adam(p, v)),
        "Adam.eps": ("eps", lambda v: optim.Adam(p, eps=v)),
        "clip.max_norm": ("max_norm", lambda v: optim.clip_grad_norm(dict(g), v)),
        "clip.norm_type": ("norm_type", lambda v: optim.clip_grad_norm(dict(g), 1.0, v)),
    }


REAL_NUMBERS = [
    # (id, value, exception or None)
    ("float", 0.5, None), ("int", 1, None), ("np.float32", np.float32(0.5), None),
    ("string", "0.1", TypeError), ("none", None, TypeError), ("complex", 1j, TypeError),
    ("bool", True, TypeError), ("array", np.array([0.1]), TypeError),
    ("nan", math.nan, ValueError), ("huge-int", 10**400, ValueError),
]  # fmt: skip


@pytest.mark.parametrize("number", REAL_NUMBERS, ids=[n[0] for n in REAL_NUMBERS])
@pytest.mark.parametrize("call", list(_optim_calls()))
def test_optimizer_numbers(call, number):
    name, run = _optim_calls()[call]
    _, value, error = number
    _accepted_or_raises(run, value, error, name)


@pytest.mark.parametrize("value", [-1.0, -(10**6)])
@pytest.mark.parametrize("call", [c for c in _optim_calls() if "dampening" not in c])
def test_optimizer_numbers_below_their_bound(call, value):
    name, run = _optim_calls()[call]
    with pytest.raises(ValueError, match=_naming(name.split("[")[0])):
        run(value)


@pytest.mark.parametrize(
    "betas, error, name",
    [((0.9, "a"), TypeError, "betas[1]"), ((None, 0.9), TypeError, "betas[0]"),
     (0.9, TypeError, "betas"), ((0.9, 0.9, 0.9), TypeError, "betas"),
     ((1, 0.9), ValueError, "betas"), ((0.9, math.nan), ValueError, "betas[1]")],
)  # fmt: skip
def test_adam_betas(betas, error, name):
    with pytest.raises(error, match=_naming(name)):
        optim.Adam({"w": np.zeros(3)}, betas=betas)
    optim.Adam({"w": np.zeros(3)}, betas=[np.float32(0.5), 0])


def _step_calls():
    p = {"w": np.zeros((2, 3))}
    return {
        "SGD(params)": ("params", lambda v: optim.SGD(v, 0.1)),
        "Adam(params)": ("params", lambda v: optim.Adam(v)),
        "SGD.step": ("grads", lambda v: optim.SGD(p, 0.1).step(v)),
        "Adam.step": ("grads", lambda v: optim.Adam(p).step(v)),
        "clip_grad_norm": ("grads", lambda v: optim.clip_grad_norm(v, 1.0)),
    }


@pytest.mark.parametrize("value", [[np.zeros(3)], "ab", None, np.zeros(3), 3], ids=str)
@pytest.mark.parametrize("call", list(_step_calls()))
def test_optimizer_dicts(call, value):
    name, run = _step_calls()[call]
    with pytest.raises(TypeError, match=_naming(name)):
        run(value)


@pytest.mark.parametrize("junk", list(JUNK))
@pytest.mark.parametrize("call", ["SGD.step", "Adam.step", "clip_grad_norm"])
def test_optimizer_gradient_junk(call, junk):
    _, run = _step_calls()[call]
    with pytest.raises(TypeError, match=_naming("'w'")):
        run({"w": JUNK[junk]((2, 3))})


@pytest.mark.parametrize("call", ["SGD.step", "Adam.step", "clip_grad_norm"])
def test_optimizer_gradients_requiring_grad(call):
    """A tensor that requires grad is read as its values, as everywhere."""
    torch = pytest.importorskip("torch")
    p = {"w": np.zeros((2, 3))}
    g = np.arange(6.0).reshape(2, 3)
    runs = {
        "SGD.step": lambda v: optim.SGD(p, 0.1).step({"w": v}),
        "Adam.step": lambda v: optim.Adam(p).step({"w": v}),
        "clip_grad_norm": lambda v: optim.clip_grad_norm({"w": v}, 1.0),
    }
    runs[call](torch.from_numpy(g).requires_grad_())
    got = p["w"].copy()
    p["w"][...] = 0
    runs[call](g.copy())
    np.testing.assert_array_equal(got, p["w"])


@pytest.mark.parametrize("dtype", [np.int64, np.bool_])
def test_clip_grad_norm_does_not_truncate_integer_gradients(dtype):
    grads = {"w": np.ones(4, dtype)}
    total = optim.clip_grad_norm(grads, 0.5)
    assert total == 2.0
    np.testing.assert_allclose(grads["w"], np.full(4, 0.5 / (2.0 + 1e-6)))

"""Each argument rule, pinned for every public entry point.

The rules live in one private module (``lstm_fast._checks``); these tables check
that every entry point applies them alike (docs/api.md, 'Dtypes' and 'Bad input'):

* the compute dtype of the functional API, the reference and the converters;
* the seeds of ``backward``/``cell_backward`` follow their cache's dtype;
* the layer computes in its own dtype, whatever real dtype it is given;
* complex, object, string and non-array junk is a ``TypeError`` naming the argument;
* ``lengths``: integer dtypes only, shape (batch,), values in [0, seq_len];
* the layer's sizes are integers >= 1 and its dtype float32 or float64;
* coercion: lists, views, Fortran order, byte-swapped, read-only arrays and torch
  tensors give the same bits as a C-contiguous NumPy array.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import lstm_fast as lf
import numpy as np
import pytest
from lstm_fast import LSTM, convert
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


JUNK: dict[str, Callable[[tuple[int, ...]], Any]] = {
    "complex": lambda shape: np.zeros(shape, np.complex128),
    "object": lambda shape: np.zeros(shape, object),
    "str-array": lambda shape: np.full(shape, "a"),
    "string": lambda shape: "abc",
    "dict": lambda shape: {"a": 1},
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
    with pytest.raises(TypeError, match=_naming("lengths")):
        run(LENGTHS_X, torch.tensor(LENGTHS_WANT, dtype=torch.float32))


# --------------------------------------------------------------------------
# Coercion: any layout or array-like gives the bits of a C-contiguous array


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

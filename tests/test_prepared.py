"""Prepared weights (``lstm_fast.prepare_weights``) and the layer's kept packing.

Prepared weights must give the same bits as the plain functional calls (the same
kernels run on the same panels), keep private copies, and never be used for weights
that changed: the layer proves its packed copy current on every call.
"""

from __future__ import annotations

import lstm_fast
import numpy as np
import pytest

from tests.helpers import each_dtype


def _weights(rng, input_size, hidden, dtype, bias="both"):
    k = 1 / np.sqrt(hidden)
    w_ih = rng.uniform(-k, k, (4 * hidden, input_size)).astype(dtype)
    w_hh = rng.uniform(-k, k, (4 * hidden, hidden)).astype(dtype)
    b_ih = rng.uniform(-k, k, 4 * hidden).astype(dtype) if bias in ("both", "ih") else None
    b_hh = rng.uniform(-k, k, 4 * hidden).astype(dtype) if bias in ("both", "hh") else None
    return w_ih, w_hh, b_ih, b_hh


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@each_dtype
@pytest.mark.parametrize("bias", ["both", "none", "ih", "hh"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"batch_first": True},
        {"reverse": True, "lengths": [5, 0, 3]},
        {"lengths": [2, 5, 5], "state": True},
    ],
    ids=["plain", "batch_first", "reverse-lengths", "lengths-state"],
)
def test_prepared_equals_functional_bitwise(isa, dtype, bias, options):
    rng = np.random.default_rng(1)
    T, B, I, H = 5, 3, 7, 20
    weights = _weights(rng, I, H, dtype, bias)
    options = dict(options)
    state = options.pop("state", False)
    shape = (B, T, I) if options.get("batch_first") else (T, B, I)
    x = rng.standard_normal(shape).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype) if state else None
    c0 = rng.standard_normal((B, H)).astype(dtype) if state else None
    prepared = lstm_fast.prepare_weights(*weights)
    for _ in range(2):  # the second call reuses the panels packed by the first
        a = lstm_fast.forward(x, *weights, h0, c0, **options)
        b = prepared.forward(x, h0, c0, **options)
        for u, v in zip(a[:3], b[:3]):
            assert _same(u, v)
        dy = rng.standard_normal(a.y.shape).astype(dtype)
        ga = lstm_fast.backward(a.cache, dy, h0, c0)
        gb = lstm_fast.backward(b.cache, dy, h0, c0)
        for u, v in zip(ga, gb):
            assert _same(u, v)


@each_dtype
def test_prepared_cell_equals_cell(isa, dtype):
    rng = np.random.default_rng(2)
    B, I, H = 4, 6, 18
    weights = _weights(rng, I, H, dtype)
    x, h, c = (rng.standard_normal(s).astype(dtype) for s in ((B, I), (B, H), (B, H)))
    prepared = lstm_fast.prepare_weights(*weights)
    a = lstm_fast.cell_forward(x, h, c, *weights)
    b = prepared.cell_forward(x, h, c)
    assert _same(a.h_new, b.h_new) and _same(a.c_new, b.c_new)
    for u, v in zip(lstm_fast.cell_backward(a.cache, h), lstm_fast.cell_backward(b.cache, h)):
        assert _same(u, v)


def test_prepared_keeps_private_copies():
    rng = np.random.default_rng(3)
    weights = _weights(rng, 4, 8, np.float32)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    prepared = lstm_fast.prepare_weights(*weights)
    before = prepared.forward(x)
    for w in weights:
        w[...] = 7.0  # the caller's arrays change; the prepared copies must not
    after = prepared.forward(x)
    assert _same(before.y, after.y)
    # The cache of the first call still backpropagates through the old weights.
    g1 = lstm_fast.backward(before.cache, np.ones_like(before.y))
    g2 = lstm_fast.backward(after.cache, np.ones_like(after.y))
    for u, v in zip(g1, g2):
        assert _same(u, v)


def test_prepared_dtype_and_casts():
    rng = np.random.default_rng(4)
    weights = _weights(rng, 3, 5, np.float64)
    x = rng.standard_normal((2, 2, 3))
    prepared = lstm_fast.prepare_weights(*weights, dtype=np.float32)
    assert prepared.dtype == np.float32
    assert (prepared.input_size, prepared.hidden_size) == (3, 5)
    out = prepared.forward(x)  # float64 input, computed in float32
    want = lstm_fast.forward(x.astype(np.float32), *(w.astype(np.float32) for w in weights))
    assert out.y.dtype == np.float32 and _same(out.y, want.y)
    assert lstm_fast.prepare_weights(*weights).dtype == np.float64
    assert "hidden_size=5" in repr(prepared)


def test_matches_is_bitwise():
    rng = np.random.default_rng(5)
    w_ih, w_hh, b_ih, b_hh = _weights(rng, 3, 4, np.float32)
    w_hh[0, 0] = np.nan
    prepared = lstm_fast.prepare_weights(w_ih, w_hh, b_ih, b_hh)
    assert prepared.matches(w_ih, w_hh, b_ih, b_hh)  # NaN matches its own bits
    assert prepared.matches(w_ih.astype(np.float64), np.asfortranarray(w_hh), b_ih, b_hh)
    assert not prepared.matches(w_ih, w_hh, b_ih, None)
    assert not prepared.matches(w_ih[:, :2], w_hh, b_ih, b_hh)
    changed = w_ih.copy()
    changed[3, 2] = np.nextafter(changed[3, 2], np.float32(np.inf))
    assert not prepared.matches(changed, w_hh, b_ih, b_hh)
    zero = np.float32(0.0)
    signed = b_hh.copy()
    signed[0] = -zero if signed[0] == 0 else signed[0] + 1
    assert not prepared.matches(w_ih, w_hh, b_ih, signed)


def test_prepared_follows_the_isa(isa):
    # Panels packed under one SIMD path are not reused under another (other lanes).
    rng = np.random.default_rng(6)
    weights = _weights(rng, 5, 24, np.float32)
    x = rng.standard_normal((4, 2, 5)).astype(np.float32)
    prepared = lstm_fast.prepare_weights(*weights)
    for name in lstm_fast.available_isas():
        lstm_fast._set_isa(name)
        assert _same(prepared.forward(x).y, lstm_fast.forward(x, *weights).y)
    lstm_fast._set_isa(isa)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p, x: p.forward(x[..., :3]), ValueError, "x must have input_size = 5"),
        (lambda p, x: p.forward(x[0]), ValueError, "x must have shape"),
        (lambda p, x: p.forward(x, np.zeros((2, 9))), ValueError, "h0 must have shape"),
        (lambda p, x: p.forward(x.astype(complex)), TypeError, "x"),
        (lambda p, x: p.forward(x, need_cache="yes"), TypeError, "need_cache"),
        (lambda p, x: p.cell_forward(x[0], None, None), TypeError, "h is required"),
        (
            lambda p, x: p.cell_forward(x[0, :, :4], np.zeros((2, 6)), np.zeros((2, 6))),
            ValueError,
            "x_t must have input_size = 5",
        ),
    ],
)
def test_prepared_bad_calls(call, error, match):
    rng = np.random.default_rng(7)
    prepared = lstm_fast.prepare_weights(*_weights(rng, 5, 6, np.float32))
    x = rng.standard_normal((3, 2, 5)).astype(np.float32)
    with pytest.raises(error, match=match):
        call(prepared, x)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((None, np.zeros((8, 2))), {}, TypeError, "w_ih is required"),
        ((np.zeros((8, 3)), np.zeros((8, 3))), {}, ValueError, "w_hh must have shape"),
        ((np.zeros((4, 3)), np.zeros((8, 2))), {}, ValueError, "w_ih must have shape"),
        ((np.zeros((8, 3)), np.zeros((8, 2)), np.zeros(7)), {}, ValueError, "b_ih"),
        ((np.zeros((8, 3)), np.zeros((8, 2))), {"dtype": np.int32}, TypeError, "dtype"),
        ((np.zeros((8, 3), complex), np.zeros((8, 2))), {}, TypeError, "w_ih"),
        (("junk", np.zeros((8, 2))), {}, TypeError, "w_ih"),
    ],
)
def test_prepare_bad_weights(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        lstm_fast.prepare_weights(*args, **kwargs)


# ---------------------------------------------------------------------------
# The layer's kept packing


def _fresh_forward(m, x, **kw):
    """The layer's forward computed from scratch, with nothing kept from before."""
    twin = lstm_fast.LSTM(
        m.input_size, m.hidden_size, m.num_layers, bias=m.bias, bidirectional=m.bidirectional,
        layer_norm=m.layer_norm,
    )  # fmt: skip
    twin.load_state_dict(m.state_dict())
    return twin(x, **kw)


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("how", ["in_place", "load_state_dict", "replaced", "optimizer"])
def test_layer_never_uses_stale_packing(how, layer_norm):
    rng = np.random.default_rng(8)
    m = lstm_fast.LSTM(4, 6, num_layers=2, bidirectional=True, seed=0, layer_norm=layer_norm)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    first = m(x)[0]
    if how == "in_place":
        m.parameters["weight_hh_l1_reverse"][2, 3] += 0.5
    elif how == "load_state_dict":
        state = m.state_dict()
        state["bias_ih_l0"] = state["bias_ih_l0"] + 1
        m.load_state_dict(state)
    elif how == "replaced":
        m.parameters["weight_ih_l0"] = m.parameters["weight_ih_l0"] * 2
    else:
        m.backward(np.ones_like(first))
        lstm_fast.optim.SGD(m.parameters, lr=0.1).step(m.grads)
    second = m(x)[0]
    assert not np.array_equal(first, second)
    assert _same(second, _fresh_forward(m, x)[0])


@pytest.mark.parametrize("need_cache", [False, True])
def test_layer_norm_layer_keeps_its_packing(need_cache):
    # A LayerNorm layer packs its weights once, as the plain one does: the
    # prepared weights are kept across calls while the parameters are unchanged,
    # with the bits of a layer that packs afresh.
    m = lstm_fast.LSTM(4, 6, seed=3, layer_norm=True)
    x = np.random.default_rng(4).standard_normal((5, 2, 4)).astype(np.float32)
    first = m(x, need_cache=need_cache)[0]
    kept = m._prepared[(0, 0)]
    second = m(x, need_cache=need_cache)[0]
    assert m._prepared[(0, 0)] is kept
    assert _same(first, second)
    assert _same(second, _fresh_forward(m, x, need_cache=need_cache)[0])
    # The bits of the functional call, which packs afresh.
    w = m.weights(0, 0)
    norms = {k: m.parameters[f"{n}_l0"] for k, n in zip(
        ("w_ln_ih", "b_ln_ih", "w_ln_hh", "b_ln_hh", "w_ln_c", "b_ln_c"),
        ("weight_ln_ih", "bias_ln_ih", "weight_ln_hh", "bias_ln_hh", "weight_ln_c", "bias_ln_c"),
    )}  # fmt: skip
    plain = lstm_fast.forward(x, w.w_ih, w.w_hh, w.b_ih, w.b_hh, layer_norm=True, **norms)
    assert _same(second, plain.y)
    m.parameters["weight_ln_hh_l0"] = m.parameters["weight_ln_hh_l0"] * 2
    third = m(x, need_cache=need_cache)[0]
    assert m._prepared[(0, 0)] is kept  # the gains are given per call
    assert not np.array_equal(second, third)
    assert _same(third, _fresh_forward(m, x, need_cache=need_cache)[0])


def test_layer_norm_step_keeps_its_packing():
    # LSTM.step of a LayerNorm layer: the kept packing too, and the bits of
    # one forward over the same steps.
    m = lstm_fast.LSTM(4, 6, seed=5, layer_norm=True)
    xs = np.random.default_rng(6).standard_normal((3, 2, 4)).astype(np.float32)
    y_full = m(xs, need_cache=False)[0]
    kept = m._prepared[(0, 0)]
    state = None
    for t in range(3):
        y_t, state = m.step(xs[t], state)
        assert _same(y_t, y_full[t])
    assert m._prepared[(0, 0)] is kept


def test_layer_step_sees_updates_between_steps():
    rng = np.random.default_rng(9)
    m = lstm_fast.LSTM(3, 5, seed=1)
    xs = rng.standard_normal((4, 2, 3)).astype(np.float32)
    state = None
    for t in range(4):
        y, state = m.step(xs[t], state)
        m.parameters["weight_hh_l0"] *= 0.9  # updated after every step
    fresh = lstm_fast.LSTM(3, 5, seed=1)
    state2 = None
    for t in range(4):
        y2, state2 = fresh.step(xs[t], state2)
        fresh.parameters["weight_hh_l0"] *= 0.9
    assert _same(y, y2)


def test_layer_copies_do_not_share_packing():
    import copy
    import pickle

    m = lstm_fast.LSTM(3, 4, seed=2)
    x = np.ones((2, 1, 3), np.float32)
    m(x)
    for twin in (copy.copy(m), pickle.loads(pickle.dumps(m))):
        twin.parameters["weight_ih_l0"] = twin.parameters["weight_ih_l0"] + 1
        assert _same(twin(x)[0], _fresh_forward(twin, x)[0])
    assert _same(m(x)[0], _fresh_forward(m, x)[0])


@each_dtype
@pytest.mark.parametrize("batch", [1, 3, 40])
def test_streaming_gives_the_bits_of_one_forward(isa, dtype, batch):
    # The input projection and the recurrence are each one FMA chain per output in
    # the same order whatever the number of rows or steps in a call, so one step at
    # a time, a prefix then steps, and a single row of the batch all give the bits
    # of one forward over the whole batch.
    m = lstm_fast.LSTM(10, 20, num_layers=2, seed=0, dtype=dtype)
    seq = np.random.default_rng(1).standard_normal((30, batch, 10)).astype(dtype)
    y_full, (h_n, c_n) = m(seq)
    _, state = m(seq[:10])
    for t in range(10, 30):
        y_t, state = m.step(seq[t], state)
        assert _same(y_t, y_full[t])
    assert _same(state[0], h_n) and _same(state[1], c_n)
    assert _same(m(seq[:, -1:])[0][:, 0], y_full[:, -1])


@each_dtype
@pytest.mark.parametrize("steps,batch", [(1, 3), (85, 3), (64, 4), (86, 3), (40, 16)])
def test_layer_norm_prepared_equals_functional_bitwise(isa, dtype, steps, batch):
    # Prepared weights run a short call's input products (up to 256 rows of
    # T*B) on their kept panels of w_ih, a longer one's on the general product,
    # and the functional call always on the general product: the same bits.
    rng = np.random.default_rng(11)
    I, H = 9, 21
    weights = _weights(rng, I, H, dtype)
    norms = {
        "w_ln_ih": rng.uniform(0.5, 1.5, 4 * H).astype(dtype),
        "b_ln_hh": rng.uniform(-0.5, 0.5, 4 * H).astype(dtype),
        "w_ln_c": rng.uniform(0.5, 1.5, H).astype(dtype),
    }
    x = rng.standard_normal((steps, batch, I)).astype(dtype)
    prepared = lstm_fast.prepare_weights(*weights)
    for need_cache in (False, True):
        a = lstm_fast.forward(x, *weights, layer_norm=True, need_cache=need_cache, **norms)
        b = prepared.forward(x, layer_norm=True, need_cache=need_cache, **norms)
        for u, v in zip(a[:3], b[:3]):
            assert _same(u, v)


@pytest.mark.parametrize("weight_dtype", [None, "bfloat16"])
def test_layer_norm_short_and_long_calls_agree_bitwise(isa, weight_dtype):
    # The first steps of a long call (its input products on the general
    # product) are those of a short call over the same steps (on the kept
    # panels), bfloat16 weights included.
    rng = np.random.default_rng(12)
    I, H, B = 7, 19, 5
    weights = _weights(rng, I, H, np.float32)
    prepared = lstm_fast.prepare_weights(*weights, weight_dtype=weight_dtype)
    x = rng.standard_normal((80, B, I)).astype(np.float32)  # 400 rows
    norms = {"b_ln_ih": rng.uniform(-0.5, 0.5, 4 * H).astype(np.float32)}
    long = prepared.forward(x, layer_norm=True, need_cache=False, **norms)
    short = prepared.forward(x[:30], layer_norm=True, need_cache=False, **norms)  # 150 rows
    assert _same(long.y[:30], short.y)

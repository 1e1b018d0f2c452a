"""The reference's ``weight_dtype`` and ``checkpoint`` (the engine's other two options
of ``forward`` and of the prepared weights), and the layer run on the reference with
them.

``weight_dtype="bfloat16"`` means what README, 'bf16 inference', documents: the
float32 LSTM on the weight matrices rounded by ``bfloat16_round``, with the engine's
refusals (the same exception and words). ``checkpoint=k`` is checked as the engine
checks it and changes no bit. Without them the reference computes as before.

The engine is compared on an instruction set whose bf16 inference widens the
weights (on ``avx512bf16`` it rounds x and h to bfloat16 too:
tests/test_bf16_dot.py checks that path against the reference step by step).
"""

from __future__ import annotations

import lstm_fast
import numpy as np
import pytest
from lstm_fast import layer as layer_module
from lstm_fast.layer import LSTM

from tests.helpers import assert_close, assert_same_bits, ref

pytestmark = pytest.mark.usefixtures("bf16_widening_isa")

T, B, I, H, P = 6, 3, 4, 7, 5  # noqa: E741


def _weights(rng, proj=0, dtype=np.float32):
    k = 1 / np.sqrt(H)
    state = proj or H
    w = {
        "w_ih": rng.uniform(-k, k, (4 * H, I)),
        "w_hh": rng.uniform(-k, k, (4 * H, state)),
        "b_ih": rng.uniform(-k, k, 4 * H),
        "b_hh": rng.uniform(-k, k, 4 * H),
    }
    if proj:
        w["w_hr"] = rng.uniform(-k, k, (proj, H))
    return {name: a.astype(dtype) for name, a in w.items()}


def _positional(w):
    return w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"]


# ---------------------------------------------------------------------------
# bfloat16_round written out


def test_rounding_is_the_engines_bit_for_bit():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 50000, dtype=np.uint64).astype(np.uint32)
    specials = np.array(
        [0x7F800001, 0xFF800001, 0x7F80FFFF, 0x7FC00000, 0xFFFFFFFF, 0xFFFF8000, 0x7F7F8000,
         0x7F7F7FFF, 0x3F808000, 0x3F818000, 0x00008000, 0x80018000, 0x7F800000, 0xFF800000,
         0x00000000, 0x80000000],
        np.uint32,
    )  # fmt: skip
    values = np.concatenate([bits, specials]).view(np.float32)
    assert_same_bits(ref.bfloat16_round(values), lstm_fast.bfloat16_round(values))
    # Any real array, in any shape, is rounded from its float32 value.
    a = rng.standard_normal((3, 4))
    assert_same_bits(ref.bfloat16_round(a), lstm_fast.bfloat16_round(a.astype(np.float32)))
    assert ref.bfloat16_round(a).shape == (3, 4)


# ---------------------------------------------------------------------------
# forward(weight_dtype="bfloat16")

BF16_CASES = {
    "plain": {},
    "projection": {"proj": P},
    "peepholes": {"peepholes": True},
    "lengths-reverse-state": {"lengths": [T, 0, 3], "reverse": True, "state": True},
    "batch_first-options": {"batch_first": True, "clip": 0.5, "input_forget": True},
    # The dropouts at inference are the identity, which bf16 runs.
    "eval-dropouts": {"recurrent_dropout": 0.3, "weight_drop": 0.2, "training": False},
}


def _bf16_case(rng, options):
    options = dict(options)
    w = _weights(rng, options.pop("proj", 0))
    kwargs = {"need_cache": False}
    if options.pop("peepholes", False):
        kwargs["peepholes"] = rng.uniform(-0.5, 0.5, 3 * H).astype(np.float32)
    if "w_hr" in w:
        kwargs["w_hr"] = w["w_hr"]
    if options.pop("state", False):
        state = w["w_hh"].shape[1]
        kwargs["h0"] = rng.standard_normal((B, state)).astype(np.float32)
        kwargs["c0"] = rng.standard_normal((B, H)).astype(np.float32)
    kwargs.update(options)
    shape = (B, T, I) if kwargs.get("batch_first") else (T, B, I)
    x = rng.standard_normal(shape).astype(np.float32)
    return x, w, kwargs


@pytest.mark.parametrize("options", BF16_CASES.values(), ids=BF16_CASES.keys())
def test_bf16_forward_is_the_float32_forward_on_rounded_weights(options):
    x, w, kwargs = _bf16_case(np.random.default_rng(1), options)
    out = ref.forward(x, *_positional(w), weight_dtype="bfloat16", **kwargs)
    rounded = {k: ref.bfloat16_round(w[k]) for k in ("w_ih", "w_hh")}
    if "w_hr" in kwargs:
        kwargs["w_hr"] = ref.bfloat16_round(kwargs["w_hr"])
    want = ref.forward(x, rounded["w_ih"], rounded["w_hh"], w["b_ih"], w["b_hh"], **kwargs)
    assert out.cache is None
    for name in ("y", "h_n", "c_n"):
        got = getattr(out, name)
        assert got.dtype == np.float32, name
        assert_same_bits(got, getattr(want, name), name)
    # The rounding matters: the float32 weights give another answer.
    exact = ref.forward(x, *_positional(w), **{**kwargs, "w_hr": w.get("w_hr")})
    assert not np.array_equal(out.y, exact.y)


@pytest.mark.parametrize("options", BF16_CASES.values(), ids=BF16_CASES.keys())
def test_bf16_forward_matches_the_engine(options):
    x, w, kwargs = _bf16_case(np.random.default_rng(2), options)
    out = ref.forward(x, *_positional(w), weight_dtype="bf16", **kwargs)
    engine = lstm_fast.forward(x, *_positional(w), weight_dtype="bf16", **kwargs)
    for name in ("y", "h_n", "c_n"):
        assert_close(getattr(out, name), getattr(engine, name), np.float32, what=name)


def test_bf16_casts_float64_weights_and_biases_to_float32():
    rng = np.random.default_rng(3)
    w = _weights(rng, dtype=np.float64)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    out = ref.forward(x, *_positional(w), need_cache=False, weight_dtype="bfloat16")
    w32 = {k: v.astype(np.float32) for k, v in w.items()}
    want = ref.forward(x, *_positional(w32), need_cache=False, weight_dtype="bfloat16")
    assert out.y.dtype == np.float32
    assert_same_bits(out.y, want.y)
    engine = lstm_fast.forward(x, *_positional(w), need_cache=False, weight_dtype="bfloat16")
    assert_close(out.y, engine.y, np.float32)


def _error(call):
    with pytest.raises(Exception) as info:
        call()
    return type(info.value), str(info.value)


def _refusal_cases():
    """name -> (args, keywords, the start of the engine's message)."""
    x = np.ones((T, B, I), np.float32)
    w = _weights(np.random.default_rng(4))
    args = (x, *_positional(w))
    h0 = np.zeros((B, H))
    bf16 = {"weight_dtype": "bf16", "need_cache": False}
    return {
        "need_cache": (args, {"weight_dtype": "bf16"}, "need_cache=True: weights in bfloat16"),
        "float64-x": ((x.astype(np.float64), *args[1:]), bf16, "x is float64"),
        "float64-h0": ((*args, h0), bf16, "h0 is float64"),
        "float64-c0": ((*args, None, h0), bf16, "c0 is float64"),
        "zoneout": (args, {**bf16, "zoneout": 0.1, "seed": 1}, "weight_dtype='bfloat16' is for"),
        "recurrent_dropout": (
            args, {**bf16, "recurrent_dropout": 0.1, "seed": 1}, "weight_dtype='bfloat16' is for"
        ),
        "weight_drop": (
            args, {**bf16, "weight_drop": 0.1, "seed": 1}, "weight_dtype='bfloat16' is for"
        ),
        "weight_dtype-name": (args, {"weight_dtype": "float16"}, "weight_dtype must be None"),
        "weight_dtype-type": (args, {"weight_dtype": 16}, "weight_dtype must be None"),
        "weight_dtype-float32": (args, {"weight_dtype": np.float32}, "weight_dtype must be None"),
    }  # fmt: skip


REFUSALS = _refusal_cases()


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_bf16_refuses_what_the_engine_refuses(case):
    args, kwargs, start = case
    engine = _error(lambda: lstm_fast.forward(*args, **kwargs))
    assert engine[1].startswith(start), engine
    assert _error(lambda: ref.forward(*args, **kwargs)) == engine


def test_no_weight_dtype_changes_nothing():
    rng = np.random.default_rng(5)
    w = _weights(rng, dtype=np.float64)
    x = rng.standard_normal((T, B, I))
    plain = ref.forward(x, *_positional(w))
    for out in (ref.forward(x, *_positional(w), weight_dtype=None, checkpoint=None),
                ref.forward(x, *_positional(w), checkpoint=2)):  # fmt: skip
        for name in ("y", "h_n", "c_n"):
            assert_same_bits(getattr(out, name), getattr(plain, name), name)
        assert out.cache is not None and out.y.dtype == np.float64


# ---------------------------------------------------------------------------
# checkpoint: checked, the same numbers


@pytest.mark.parametrize("every", [1, 2, 4, T, T + 3])
def test_checkpoint_gives_the_full_caches_results(every):
    rng = np.random.default_rng(6)
    w = _weights(rng, proj=P, dtype=np.float64)
    x = rng.standard_normal((T, B, I))
    options = dict(w_hr=w["w_hr"], lengths=[T, 2, 0], reverse=True, zoneout=(0.3, 0.2),
                   recurrent_dropout=0.2, seed=3)  # fmt: skip
    full = ref.forward(x, *_positional(w), **options)
    out = ref.forward(x, *_positional(w), checkpoint=every, **options)
    for name in ("y", "h_n", "c_n"):
        assert_same_bits(getattr(out, name), getattr(full, name), name)
    dy = rng.standard_normal(full.y.shape)
    g_full, g = ref.backward(full.cache, dy), ref.backward(out.cache, dy)
    for name in g._fields:
        assert_same_bits(getattr(g, name), getattr(g_full, name), name)
    inference = ref.forward(x, *_positional(w), need_cache=False, checkpoint=every, **options)
    assert inference.cache is None
    assert_same_bits(inference.y, full.y)


@pytest.mark.parametrize("value", [0, -2, 1.5, "2", True, None.__class__], ids=str)
def test_bad_checkpoint_is_the_engines_error(value):
    w = _weights(np.random.default_rng(7))
    args = (np.ones((T, B, I), np.float32), *_positional(w))
    engine = _error(lambda: lstm_fast.forward(*args, checkpoint=value))
    assert "checkpoint" in engine[1]
    assert _error(lambda: ref.forward(*args, checkpoint=value)) == engine


# ---------------------------------------------------------------------------
# Prepared weights


@pytest.mark.parametrize("proj", [0, P])
def test_prepared_bf16_weights(proj):
    rng = np.random.default_rng(8)
    w = _weights(rng, proj)
    extra = {"w_hr": w["w_hr"]} if proj else {}
    prepared = ref.prepare_weights(*_positional(w), weight_dtype="bfloat16", **extra)
    assert prepared.weight_dtype == "bfloat16" and prepared.dtype == np.float32
    assert prepared.matches(*_positional(w), **extra)
    assert not prepared.matches(*_positional(w)) if proj else True
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    out = prepared.forward(x, need_cache=False, lengths=[3, T, 1])
    want = ref.forward(x, *_positional(w), need_cache=False, lengths=[3, T, 1],
                       weight_dtype="bfloat16", **extra)  # fmt: skip
    assert_same_bits(out.y, want.y)
    assert_same_bits(out.h_n, want.h_n)
    engine = lstm_fast.prepare_weights(*_positional(w), weight_dtype="bfloat16", **extra)
    assert_close(out.y, engine.forward(x, need_cache=False, lengths=[3, T, 1]).y, np.float32)
    # One step: the float32 step on the rounded weights, no cache (inference only).
    state = proj or H
    h, c = rng.standard_normal((B, state)), rng.standard_normal((B, H))
    h, c = h.astype(np.float32), c.astype(np.float32)
    cell = prepared.cell_forward(x[0], h, c)
    rounded = {k: ref.bfloat16_round(v) if k.startswith("w_") else v for k, v in w.items()}
    want_cell = ref.cell_forward(x[0], h, c, *_positional(rounded), w_hr=rounded.get("w_hr"))
    assert cell.cache is None
    assert_same_bits(cell.h_new, want_cell.h_new)
    assert_same_bits(cell.c_new, want_cell.c_new)
    assert_close(cell.h_new, engine.cell_forward(x[0], h, c).h_new, np.float32)
    # The engine's refusals.
    calls = (
        lambda p: p.forward(x),
        lambda p: p.forward(x.astype(np.float64), need_cache=False),
        lambda p: p.cell_forward(x[0], h.astype(np.float64), c),
    )
    for call in calls:
        assert _error(lambda: call(prepared)) == _error(lambda: call(engine))  # noqa: B023


def test_prepared_weights_keep_their_projection_and_checkpoint():
    rng = np.random.default_rng(9)
    w = _weights(rng, P, dtype=np.float64)
    prepared = ref.prepare_weights(*_positional(w), w_hr=w["w_hr"])
    assert prepared.weight_dtype is None
    x = rng.standard_normal((T, B, I))
    want = ref.forward(x, *_positional(w), w_hr=w["w_hr"])
    for out in (prepared.forward(x), prepared.forward(x, checkpoint=2)):
        assert_same_bits(out.y, want.y)
    h, c = np.zeros((B, P)), np.zeros((B, H))
    cell = prepared.cell_forward(x[0], h, c)
    assert_same_bits(
        cell.h_new, ref.cell_forward(x[0], h, c, *_positional(w), w_hr=w["w_hr"]).h_new
    )
    assert_close(cell.h_new, want.y[0], np.float64)
    # bf16 weights compute in float32: another dtype is the engine's error.
    args = _positional(_weights(rng))
    error = _error(lambda: ref.prepare_weights(*args, dtype=np.float64, weight_dtype="bf16"))
    assert error == _error(
        lambda: lstm_fast.prepare_weights(*args, dtype=np.float64, weight_dtype="bf16")
    )
    assert error[0] is ValueError and "dtype must be float32" in error[1]


# ---------------------------------------------------------------------------
# The layer on the reference: it passes both options always


@pytest.fixture(params=["engine", "reference"])
def engine(request, monkeypatch):
    if request.param == "reference":
        monkeypatch.setattr(layer_module, "_F", ref)
    return request.param


LAYER_BF16 = {
    "plain": {},
    "projection-bidirectional": {"proj_size": 3, "bidirectional": True},
    "peepholes": {"peepholes": True},
    "eval-dropouts": {"recurrent_dropout": 0.3, "weight_drop": 0.2, "dropout": 0.1},
}


@pytest.mark.parametrize("options", LAYER_BF16.values(), ids=LAYER_BF16.keys())
def test_layer_bf16_on_the_reference_is_the_engines(monkeypatch, options):
    m = LSTM(I, H, 2, seed=1, **options).eval()
    rng = np.random.default_rng(10)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    y, (h_n, c_n) = m(x, need_cache=False, weight_dtype="bfloat16")
    state, steps = None, []
    if not m.bidirectional:
        for t in range(T):
            y_t, state = m.step(x[t], state, weight_dtype="bf16")
            steps.append(y_t)
    monkeypatch.setattr(layer_module, "_F", ref)
    m._prepared = {}
    ry, (rh, rc) = m(x, need_cache=False, weight_dtype="bfloat16")
    for name, ours, theirs in (("y", y, ry), ("h_n", h_n, rh), ("c_n", c_n, rc)):
        assert_close(ours, theirs, np.float32, what=name)
    # The reference's answer is the float32 layer on the rounded weights, bit for bit.
    twin = LSTM(I, H, 2, seed=1, **options).eval()
    twin.load_state_dict({k: ref.bfloat16_round(v) if k.startswith(("weight_ih", "weight_hh",
                          "weight_hr")) else v for k, v in m.state_dict().items()})  # fmt: skip
    assert_same_bits(ry, twin(x, need_cache=False)[0])
    if steps:
        state, ref_steps = None, []
        for t in range(T):
            y_t, state = m.step(x[t], state, weight_dtype="bf16")
            ref_steps.append(y_t)
        assert_close(np.stack(steps), np.stack(ref_steps), np.float32, what="step")
        assert_same_bits(np.stack(ref_steps), ry)


def test_layer_bf16_refusals_on_both(engine):
    m = LSTM(I, H, zoneout=0.2, seed=1)  # training mode
    x = np.ones((T, B, I), np.float32)
    with pytest.raises(ValueError, match="weight_dtype='bfloat16' is for inference: zoneout"):
        m(x, need_cache=False, weight_dtype="bf16")
    with pytest.raises(ValueError, match="weight_dtype must be None or 'bfloat16'"):
        LSTM(I, H, recurrent_dropout=0.2, seed=1)(x, weight_dtype="fp8")


def test_layer_bf16_layer_norm_and_zoneout_on_both(monkeypatch):
    """Once refused with bfloat16 weights, now run in eval mode: the engine's
    layer and the reference's agree, and the reference's is the float32 layer on
    the rounded weights, bit for bit."""
    options = {"layer_norm": True, "zoneout": (0.2, 0.3)}
    m = LSTM(I, H, 2, seed=1, **options).eval()
    x = np.random.default_rng(12).standard_normal((T, B, I)).astype(np.float32)
    y = m(x, need_cache=False, weight_dtype="bf16")[0]
    monkeypatch.setattr(layer_module, "_F", ref)
    m._prepared = {}
    ry = m(x, need_cache=False, weight_dtype="bf16")[0]
    assert_close(y, ry, np.float32, what="y")
    twin = LSTM(I, H, 2, seed=1, **options).eval()
    twin.load_state_dict({k: ref.bfloat16_round(v) if k.startswith(("weight_ih", "weight_hh"))
                          else v for k, v in m.state_dict().items()})  # fmt: skip
    assert_same_bits(ry, twin(x, need_cache=False)[0])


@pytest.mark.parametrize(
    "options", [{}, {"recurrent_dropout": 0.3, "zoneout": 0.2, "dropout": 0.2, "proj_size": 3}],
    ids=["prepared", "functional"],
)  # fmt: skip
def test_layer_checkpoint_on_the_reference_is_the_full_cache(engine, options):
    m = LSTM(I, H, 2, bidirectional=True, dtype=np.float64, seed=2, **options)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((T, B, I))
    lengths = [T, 3, 0]
    y, (h_n, c_n) = m(x, lengths=lengths, seed=5)
    dy = rng.standard_normal(y.shape)
    dx = m.backward(dy)
    grads = {k: g.copy() for k, g in m.grads.items()}
    for k in (1, 4):
        y_k, (h_k, c_k) = m(x, lengths=lengths, seed=5, checkpoint=k)
        dx_k = m.backward(dy)
        for name, a, b in (("y", y_k, y), ("h_n", h_k, h_n), ("c_n", c_k, c_n), ("dx", dx_k, dx)):
            assert_same_bits(a, b, name)
        for name, g in grads.items():
            assert_same_bits(m.grads[name], g, name)

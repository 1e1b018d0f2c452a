"""Options that the engine does not combine yet: each combination is a clear
ValueError naming the option, never a result computed without it; and the
combinations once refused here, now combined."""

import lstm_fast
import numpy as np
import pytest
from lstm_fast.functional import bfloat16_round

from tests.helpers import assert_close, assert_same_bits, ref

T, B, I, H = 5, 3, 4, 6


def _arrays(dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    w_ih = rng.standard_normal((4 * H, I)).astype(dtype)
    w_hh = rng.standard_normal((4 * H, H)).astype(dtype)
    return x, w_ih, w_hh


@pytest.mark.parametrize("training", [True, False])
def test_layer_norm_with_zoneout(training):
    """Once refused, now combined: the LayerNorm LSTM with zoneout gives the
    reference's results (tests/test_layernorm_engine.py tests it in depth)."""
    x, w_ih, w_hh = _arrays(np.float64)
    options = dict(layer_norm=True, zoneout=(0.3, 0.2), seed=1, training=training)
    out = lstm_fast.forward(x, w_ih, w_hh, **options)
    want = ref.forward(x, w_ih, w_hh, **options)
    for field in ("y", "h_n", "c_n"):
        assert_close(getattr(out, field), getattr(want, field), np.float64, what=field)
    dy = np.random.default_rng(1).standard_normal(out.y.shape)
    g, r = lstm_fast.backward(out.cache, dy), ref.backward(want.cache, dy)
    for field in ("dx", "dh0", "dc0", "dw_ih", "dw_hh"):
        assert_close(getattr(g, field), getattr(r, field), np.float64, what=field)


@pytest.mark.parametrize("checkpoint", [1, 2, 100])
def test_layer_norm_with_checkpoint(checkpoint):
    """Once refused, now combined: recompute of the LayerNorm LSTM gives the
    full cache's bits (tests/test_checkpoint_layernorm.py tests it in depth)."""
    x, w_ih, w_hh = _arrays()
    dy = np.random.default_rng(1).standard_normal((T, B, H)).astype(np.float32)
    full = lstm_fast.forward(x, w_ih, w_hh, layer_norm=True)
    prepared = lstm_fast.prepare_weights(w_ih, w_hh)
    for out in (
        lstm_fast.forward(x, w_ih, w_hh, layer_norm=True, checkpoint=checkpoint),
        prepared.forward(x, layer_norm=True, checkpoint=checkpoint),
    ):
        assert_same_bits(out.y, full.y, "y")
        for a, b in zip(lstm_fast.backward(out.cache, dy), lstm_fast.backward(full.cache, dy)):
            assert_same_bits(a, b)


def test_bfloat16_with_zoneout(bf16_widening_isa):
    """Once refused, now combined at inference: bf16 weights with zoneout give the
    float32 engine's bits on the rounded weights (tests/test_bf16.py tests it in
    depth); in training, like the dropouts, a ValueError naming zoneout."""
    x, w_ih, w_hh = _arrays()
    options = dict(zoneout=(0.0, 0.2), seed=1, need_cache=False)
    out = lstm_fast.forward(x, w_ih, w_hh, training=False, weight_dtype="bfloat16", **options)
    want = lstm_fast.forward(x, bfloat16_round(w_ih), bfloat16_round(w_hh), training=False,
                             **options)  # fmt: skip
    for field in ("y", "h_n", "c_n"):
        np.testing.assert_array_equal(getattr(out, field), getattr(want, field), err_msg=field)
    with pytest.raises(ValueError, match="^weight_dtype='bfloat16' is for inference: zoneout"):
        lstm_fast.forward(x, w_ih, w_hh, training=True, weight_dtype="bfloat16", **options)


def test_bfloat16_with_layer_norm():
    """Once refused, now combined: bf16 inference of the LayerNorm LSTM is the
    float32 engine on the rounded weights (tests/test_bf16_layernorm.py tests it
    in depth); it is inference only, like any bf16 call."""
    x, w_ih, w_hh = _arrays()
    r_ih, r_hh = lstm_fast.bfloat16_round(w_ih), lstm_fast.bfloat16_round(w_hh)
    want = lstm_fast.forward(x, r_ih, r_hh, layer_norm=True, need_cache=False)
    got = lstm_fast.forward(x, w_ih, w_hh, layer_norm=True, need_cache=False,
                            weight_dtype="bfloat16")  # fmt: skip
    np.testing.assert_array_equal(got.y, want.y)
    prepared = lstm_fast.prepare_weights(w_ih, w_hh, weight_dtype="bfloat16")
    np.testing.assert_array_equal(prepared.forward(x, layer_norm=True, need_cache=False).y, want.y)
    with pytest.raises(ValueError, match="^need_cache=True"):
        prepared.forward(x, layer_norm=True)


def test_layer_with_layer_norm_and_checkpoint():
    m = lstm_fast.LSTM(I, H, 2, layer_norm=True, seed=0)
    x = _arrays()[0]
    y = m.forward(x)[0]
    for kw in ({"checkpoint": 2}, {"memory_budget": 1 << 30}, {"memory_budget": 4000}):
        assert_same_bits(m.forward(x, **kw)[0], y, "y")


def test_layer_bfloat16_with_layer_norm_and_zoneout():
    """Both once refused with bfloat16 weights: a LayerNorm layer with zoneout in
    eval mode runs them, bit for bit the float32 layer on rounded weights."""
    m = lstm_fast.LSTM(I, H, 2, seed=0, layer_norm=True, zoneout=0.2).eval()
    x = _arrays()[0]
    got = m.forward(x, need_cache=False, weight_dtype="bfloat16")
    rounded = lstm_fast.LSTM(I, H, 2, seed=0, layer_norm=True, zoneout=0.2).eval()
    for name, value in rounded.parameters.items():
        if name.startswith(("weight_ih", "weight_hh")):
            value[...] = lstm_fast.bfloat16_round(value)
    want = rounded.forward(x, need_cache=False)
    assert_same_bits(got[0], want[0], "y")
    assert_same_bits(got[1][0], want[1][0], "h_n")


def test_layer_bfloat16_with_zoneout():
    """Once refused, now combined in eval mode (tests/test_bf16.py tests it in
    depth); in training mode a ValueError naming zoneout."""
    m = lstm_fast.LSTM(I, H, 2, seed=0, zoneout=0.2)
    x = _arrays()[0]
    with pytest.raises(ValueError, match="inference: zoneout"):
        m.forward(x, need_cache=False, weight_dtype="bfloat16")
    m.eval()
    y, _ = m.forward(x, need_cache=False, weight_dtype="bfloat16")
    assert np.isfinite(y).all()

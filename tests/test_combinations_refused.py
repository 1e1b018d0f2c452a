"""Options that the engine does not combine yet: each combination is a clear
ValueError naming the option, never a result computed without it."""

import lstm_fast
import numpy as np
import pytest
from lstm_fast.functional import bfloat16_round

from tests.helpers import assert_close, ref

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
    x, w_ih, w_hh = _arrays()
    with pytest.raises(ValueError, match="^checkpoint: the LayerNorm LSTM"):
        lstm_fast.forward(x, w_ih, w_hh, layer_norm=True, checkpoint=checkpoint)
    prepared = lstm_fast.prepare_weights(w_ih, w_hh)
    with pytest.raises(ValueError, match="^checkpoint: the LayerNorm LSTM"):
        prepared.forward(x, layer_norm=True, checkpoint=checkpoint)


def test_bfloat16_with_zoneout():
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
    x, w_ih, w_hh = _arrays()
    with pytest.raises(ValueError, match="^layer_norm: weights prepared in bfloat16"):
        lstm_fast.forward(x, w_ih, w_hh, layer_norm=True, need_cache=False,
                          weight_dtype="bfloat16")  # fmt: skip
    prepared = lstm_fast.prepare_weights(w_ih, w_hh, weight_dtype="bfloat16")
    with pytest.raises(ValueError, match="^layer_norm: weights prepared in bfloat16"):
        prepared.forward(x, layer_norm=True, need_cache=False)
    with pytest.raises(ValueError, match="^layer_norm: weights prepared in bfloat16"):
        prepared.cell_forward(x[0], np.zeros((B, H), np.float32), np.zeros((B, H), np.float32),
                              layer_norm=True)  # fmt: skip


def test_layer_with_layer_norm_and_checkpoint():
    m = lstm_fast.LSTM(I, H, 2, layer_norm=True, seed=0)
    x = _arrays()[0]
    with pytest.raises(ValueError, match="^checkpoint"):
        m.forward(x, checkpoint=2)
    # A budget the full cache fits needs no checkpoint: it runs.
    y, _ = m.forward(x, memory_budget=1 << 30)
    np.testing.assert_array_equal(y, m.forward(x)[0])


def test_layer_bfloat16_refuses():
    m = lstm_fast.LSTM(I, H, 2, seed=0, layer_norm=True).eval()
    x = _arrays()[0]
    with pytest.raises(ValueError, match="layer_norm"):
        m.forward(x, need_cache=False, weight_dtype="bfloat16")


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

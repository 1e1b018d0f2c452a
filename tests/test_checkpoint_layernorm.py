"""Recompute for the LayerNorm LSTM: ``forward(..., layer_norm=True,
checkpoint=k)`` keeps the state every k steps and ``backward`` recomputes each
segment's LayerNorm cache (rust/src/checkpoint.rs).

- Outputs and every gradient (the gains' and biases', the flow norms
  included) bitwise equal to the LayerNorm LSTM's full cache for k in {1, 2,
  3, T-1, T, >T}, over the variants, the projection, zoneout and the dropouts,
  lengths (ragged, 0), reverse, batch_first, h0/c0, both dtypes and every
  ISA; the same bits for 1, 2 and 3 threads and either split.
- The layer with ``layer_norm=True`` and ``checkpoint`` / ``memory_budget``
  equal to the layer without; the cache's ``nbytes`` and ``training_memory``
  as the formulas say.
"""

from __future__ import annotations

import lstm_fast
import numpy as np
import pytest
from lstm_fast import functional as F

from tests.helpers import assert_same_bits
from tests.test_checkpoint import (
    ZONEOUTS,
    _assert_same_bits_for_threads_and_k,
    _ks,
    _without_projection,
)
from tests.test_projection import SETTINGS, VARIANTS, _problem, _run

GRADIENTS = (
    "dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr", "dpeepholes",
    "dw_ln_ih", "db_ln_ih", "dw_ln_hh", "db_ln_hh", "dw_ln_c", "db_ln_c",
)  # fmt: skip

# Which of the normalisations' gains and biases a problem gives (the others
# are absent: a gain of 1, a bias of 0).
NORMS = {
    "all": ("w_ln_ih", "b_ln_ih", "w_ln_hh", "b_ln_hh", "w_ln_c", "b_ln_c"),
    "some": ("w_ln_hh", "b_ln_c"),
    "none": (),
}


def _layer_norm(arrays, options, norms="all", seed=0, project=True):
    """`_problem`'s arrays made a LayerNorm problem: the given gains and biases,
    and without `project` the projection taken away."""
    rng = np.random.default_rng(100 + seed)
    dtype = arrays["x"].dtype
    H = arrays["w_ih"].shape[0] // 4
    options = {**options, "layer_norm": True}
    for name in NORMS[norms]:
        size = H if name.endswith("_c") else 4 * H
        low, high = (0.5, 1.5) if name.startswith("w") else (-0.3, 0.3)
        options[name] = rng.uniform(low, high, size).astype(dtype)
    return options


def _assert_checkpoint_equal(arrays, options, seeds, k):
    full, g_full = _run(lstm_fast, arrays, options, seeds)
    ck, g_ck = _run(lstm_fast, arrays, {**options, "checkpoint": k}, seeds)
    assert type(g_ck).__name__ == "LayerNormGradients"
    for field in ("y", "h_n", "c_n"):
        assert_same_bits(getattr(ck, field), getattr(full, field), field)
    for field in GRADIENTS:
        assert_same_bits(getattr(g_ck, field), getattr(g_full, field), field)
    assert_same_bits(g_ck.flow.dh, g_full.flow.dh, "flow dh")
    assert_same_bits(g_ck.flow.dc, g_full.flow.dc, "flow dc")
    steps = arrays["x"].shape[1 if options.get("batch_first") else 0]
    if k < steps:
        assert isinstance(ck.cache, F.LayerNormCheckpointCache) and ck.cache.checkpoint == k
        assert ck.cache.nbytes < full.cache.nbytes
    else:
        assert type(ck.cache) is F.LayerNormCache


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("variant", ["plain-gates", "peepholes", "everything", "peep+coupled"])
@pytest.mark.parametrize("project", [True, False])
def test_gradients_bitwise_equal_to_full_cache(project, variant, setting, dtype):
    arrays, options, seeds = _problem(VARIANTS[variant], SETTINGS[setting], dtype, seed=5)
    if not project:
        arrays, options, seeds = _without_projection(arrays, options, seeds)
    for norms in NORMS:
        ln = _layer_norm(arrays, options, norms)
        for k in _ks(SETTINGS[setting][0]):
            _assert_checkpoint_equal(arrays, ln, seeds, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", ["basic", "lengths-reverse-h0c0", "batch_first-lengths",
                                     "many-rows"])  # fmt: skip
@pytest.mark.parametrize("zoneout", list(ZONEOUTS))
@pytest.mark.parametrize("project", [True, False])
def test_with_zoneout_and_dropouts(project, zoneout, setting, dtype):
    arrays, options, seeds = _problem(VARIANTS["peepholes"], SETTINGS[setting], dtype, seed=6)
    if not project:
        arrays, options, seeds = _without_projection(arrays, options, seeds)
    ln = {**_layer_norm(arrays, options), **ZONEOUTS[zoneout]}
    for k in _ks(SETTINGS[setting][0]):
        _assert_checkpoint_equal(arrays, ln, seeds, k)


def test_every_isa(isa):
    for variant in ("plain-gates", "everything"):
        for setting in ("lengths-reverse-h0c0", "many-rows", "batch_first-lengths"):
            for dtype in (np.float32, np.float64):
                arrays, options, seeds = _problem(VARIANTS[variant], SETTINGS[setting], dtype)
                options = _layer_norm(arrays, options, seed=1)
                options.update(recurrent_dropout=0.2, seed=3)
                for k in (1, 2, 5):
                    _assert_checkpoint_equal(arrays, options, seeds, k)
                options.update(zoneout=(0.3, 0.25))
                for k in (1, 2, 5):
                    _assert_checkpoint_equal(arrays, options, seeds, k)


def test_long_sequence():
    """More steps than a block of the ordered sums (tuning::ORDERED_BLOCK_ROWS),
    ragged reverse rows, a row of length 0."""
    rng = np.random.default_rng(4)
    T, B, I, H = 150, 9, 6, 13  # noqa: E741
    lengths = rng.integers(T // 2, T + 1, B)
    lengths[0], lengths[1] = T, 0
    assert lengths.sum() > 1024
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w_ih = rng.uniform(-0.3, 0.3, (4 * H, I)).astype(np.float32)
    w_hh = rng.uniform(-0.3, 0.3, (4 * H, H)).astype(np.float32)
    b = rng.uniform(-0.2, 0.2, 4 * H).astype(np.float32)
    gain = rng.uniform(0.5, 1.5, 4 * H).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    for reverse in (False, True):
        kw = dict(lengths=lengths, reverse=reverse, peepholes=rng.uniform(-1, 1, 3 * H),
                  layer_norm=True, w_ln_ih=gain, b_ln_hh=b)  # fmt: skip
        full = F.forward(x, w_ih, w_hh, b, b, **kw)
        g_full = F.backward(full.cache, dy)
        for k in (1, 8, 9, 30, 149):
            ck = F.forward(x, w_ih, w_hh, b, b, checkpoint=k, **kw)
            g = F.backward(ck.cache, dy)
            for field in GRADIENTS:
                assert_same_bits(getattr(g, field), getattr(g_full, field), field)
            assert_same_bits(ck.y, full.y, "y")


def test_prepared_weights():
    arrays, options, seeds = _problem(VARIANTS["peepholes"], SETTINGS["basic"], np.float32)
    arrays, options, seeds = _without_projection(arrays, options, seeds)
    ln = _layer_norm(arrays, options)
    for name in ("batch_first", "reverse", "lengths"):
        ln.pop(name)
    prepared = lstm_fast.prepare_weights(
        arrays["w_ih"], arrays["w_hh"], arrays["b_ih"], arrays["b_hh"],
        peepholes=ln.pop("peepholes"),
    )  # fmt: skip
    full = prepared.forward(arrays["x"], **ln)
    g_full = F.backward(full.cache, seeds["dy"])
    for k in (1, 2, 4):
        ck = prepared.forward(arrays["x"], checkpoint=k, **ln)
        assert isinstance(ck.cache, F.LayerNormCheckpointCache)
        g = F.backward(ck.cache, seeds["dy"])
        assert_same_bits(ck.y, full.y, "y")
        for field in GRADIENTS:
            assert_same_bits(getattr(g, field), getattr(g_full, field), field)


def test_empty_and_zero_length_calls():
    rng = np.random.default_rng(2)
    w_ih, w_hh = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    h0, c0 = rng.standard_normal((2, 2)), rng.standard_normal((2, 2))
    gain = rng.uniform(0.5, 1.5, 8)
    for T, lengths in ((0, None), (4, [0, 0]), (4, [4, 0]), (4, [1, 3])):
        x = rng.standard_normal((T, 2, 3))
        kw = dict(lengths=lengths, layer_norm=True, w_ln_hh=gain)
        full = F.forward(x, w_ih, w_hh, None, None, h0, c0, **kw)
        g_full = F.backward(full.cache, np.ones_like(full.y), h0, c0)
        for k in (1, 2):
            ck = F.forward(x, w_ih, w_hh, None, None, h0, c0, checkpoint=k, **kw)
            g_ck = F.backward(ck.cache, np.ones_like(full.y), h0, c0)
            for field in GRADIENTS:
                assert_same_bits(getattr(g_ck, field), getattr(g_full, field), field)


def test_nbytes_and_training_memory():
    T, B, I, H, P = 50, 3, 4, 8, 5  # noqa: E741
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I))
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, P))
    w_hr, gain = rng.standard_normal((P, H)), rng.uniform(0.5, 1.5, 4 * H)
    kw = dict(w_hr=w_hr, layer_norm=True, w_ln_ih=gain)
    full = F.forward(x, w_ih, w_hh, **kw).cache
    inputs = x.nbytes + w_ih.nbytes + w_hh.nbytes + w_hr.nbytes + gain.nbytes
    # The full cache: 9H + P + 4 per (step, row), as training_memory counts it.
    shape = dict(steps=T, batch=B, hidden=H, proj=P, itemsize=8, layer_norm=True)
    assert full.nbytes == inputs + F.training_memory(None, **shape)
    assert F.training_memory(None, **shape) == T * B * (9 * H + P + 4) * 8
    for k in (1, 7, 10, 49):
        ck = F.forward(x, w_ih, w_hh, checkpoint=k, **kw).cache
        states = (-(-T // k) - 1) * B * (P + H) * 8
        assert ck.nbytes == inputs + states
        assert ck.nbytes < full.nbytes
        # One segment's cache and backward's scratch besides the states.
        segment = k * B * (9 * H + P + 4 + 8 * H + P + H) * 8
        assert F.training_memory(k, **shape) == states + segment
        with pytest.raises(AttributeError, match="checkpoint=None"):
            ck.i  # noqa: B018
    # Zoneout of c in training: the states after zoneout (H more per step and
    # row) and the masks (Hp).
    zoned = F.forward(x, w_ih, w_hh, zoneout=(0.0, 0.3), seed=1, **kw).cache
    assert zoned._args.zoneout_c_keep is not None
    assert zoned.nbytes == inputs + F.training_memory(None, **shape, zoneout_c=True)


# ---------------------------------------------------------------------------
# Threads and splits


def test_same_bits_for_any_thread_count_and_split():
    _assert_same_bits_for_threads_and_k("layer_norm")


# ---------------------------------------------------------------------------
# The layer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "config",
    [
        dict(num_layers=2, bidirectional=True),
        dict(num_layers=2, proj_size=3, batch_first=True, zoneout=0.2),
        dict(num_layers=2, bidirectional=True, peepholes=True, recurrent_dropout=0.2),
    ],
)
def test_layer_checkpoint_equal_to_full(config, dtype):
    T, B, I, H = 9, 4, 5, 6  # noqa: E741
    layer = lstm_fast.LSTM(I, H, dtype=dtype, seed=1, layer_norm=True, **config)
    rng = np.random.default_rng(0)
    shape = (B, T, I) if config.get("batch_first") else (T, B, I)
    x = rng.standard_normal(shape).astype(dtype)
    lengths = np.array([9, 4, 0, 7])
    y, (h_n, c_n) = layer.forward(x, lengths=lengths, seed=11)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh = rng.standard_normal(h_n.shape).astype(dtype)
    dx = layer.backward(dy, dh)
    want = {n: g.copy() for n, g in layer.grads.items()}
    for kw in (
        {"checkpoint": 1},
        {"checkpoint": 4},
        {"checkpoint": 20},
        {"memory_budget": 10**9},
        {"memory_budget": 5000 * np.dtype(dtype).itemsize},
    ):
        y2, (h2, c2) = layer.forward(x, lengths=lengths, seed=11, **kw)
        assert_same_bits(y2, y, "y")
        assert_same_bits(h2, h_n, "h_n")
        assert_same_bits(c2, c_n, "c_n")
        kept = layer._tape.caches[0][0]
        small = kw.get("memory_budget", 10**9) < 10**9 or kw.get("checkpoint", T) < T
        assert isinstance(kept, F.LayerNormCheckpointCache) == small, kw
        assert_same_bits(layer.backward(dy, dh), dx, "dx")
        for name, g in want.items():
            assert_same_bits(layer.grads[name], g, name)

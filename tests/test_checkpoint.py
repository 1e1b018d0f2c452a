"""Recompute for long sequences: ``forward(..., checkpoint=k)`` keeps the state
every k steps and ``backward`` recomputes each segment (docs/variants.md, 'In
the engine').

- Outputs and every gradient (flow norms included) bitwise equal to the full
  cache's for k in {1, 2, 3, T-1, T, >T}, over the variants, the projection, the
  regularisation, lengths (ragged, 0), reverse, batch_first, h0/c0, both dtypes
  and every ISA; the same bits for 1, 2 and 3 threads and either split.
- The layer with ``checkpoint`` and ``memory_budget`` (multi-layer,
  bidirectional) equal to the layer without; the cache's ``nbytes`` and the
  budget's choice as the formulas say; bad arguments name themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys

import lstm_fast
import numpy as np
import pytest
from lstm_fast import functional as F

from tests.helpers import assert_same_bits, assert_same_hashes
from tests.test_projection import SETTINGS, VARIANTS, _problem, _run

GRADIENTS = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr", "dpeepholes")


def _ks(steps: int) -> list[int]:
    return sorted({1, 2, 3, max(steps - 1, 1), steps, steps + 3})


def _assert_checkpoint_equal(arrays, options, seeds, k):
    full, g_full = _run(lstm_fast, arrays, options, seeds)
    ck, g_ck = _run(lstm_fast, arrays, {**options, "checkpoint": k}, seeds)
    for field in ("y", "h_n", "c_n"):
        assert_same_bits(getattr(ck, field), getattr(full, field), field)
    for field in GRADIENTS:
        assert_same_bits(getattr(g_ck, field), getattr(g_full, field), field)
    assert_same_bits(g_ck.flow.dh, g_full.flow.dh, "flow dh")
    assert_same_bits(g_ck.flow.dc, g_full.flow.dc, "flow dc")
    steps = arrays["x"].shape[1 if options.get("batch_first") else 0]
    if k < steps:
        assert isinstance(ck.cache, F.CheckpointCache) and ck.cache.checkpoint == k
        assert ck.cache.nbytes < full.cache.nbytes
    else:
        assert type(ck.cache) is F.Cache


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_bitwise_equal_to_full_cache(variant, setting, dtype):
    arrays, options, seeds = _problem(VARIANTS[variant], SETTINGS[setting], dtype)
    for k in _ks(SETTINGS[setting][0]):
        _assert_checkpoint_equal(arrays, options, seeds, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("variant", ["plain-gates", "peepholes", "everything"])
def test_without_projection_and_with_regularisation(variant, setting, dtype):
    arrays, options, seeds = _problem(VARIANTS[variant], SETTINGS[setting], dtype, seed=2)
    hidden = arrays["w_hh"].shape[0] // 4
    options.pop("w_hr")
    arrays["w_hh"] = np.resize(arrays["w_hh"], (4 * hidden, hidden)).astype(dtype)
    if arrays["h0"] is not None:
        arrays["h0"] = np.resize(arrays["h0"], (arrays["h0"].shape[0], hidden)).astype(dtype)
    seeds["dy"] = np.resize(seeds["dy"], (*seeds["dy"].shape[:2], hidden)).astype(dtype)
    seeds["dh_n"] = np.resize(seeds["dh_n"], (seeds["dh_n"].shape[0], hidden)).astype(dtype)
    for reg in ({}, {"weight_drop": 0.3, "recurrent_dropout": 0.25, "seed": 7, "layer": 1}):
        for k in _ks(SETTINGS[setting][0]):
            _assert_checkpoint_equal(arrays, {**options, **reg}, seeds, k)


# Zoneout (training masks and inference rates): the kept states are the
# states after zoneout, and each segment runs with its rows of the masks.
ZONEOUTS = {
    "h+c": {"zoneout": 0.3, "seed": 5, "layer": 2},
    "h-only": {"zoneout": (0.4, 0.0), "seed": 6},
    "c-only": {"zoneout": (0.0, 0.35), "seed": 7},
    "with-dropouts": {
        "zoneout": (0.25, 0.2), "weight_drop": 0.3, "recurrent_dropout": 0.25, "seed": 9,
    },
    "inference": {"zoneout": (0.3, 0.2), "seed": 5, "training": False},
}  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("variant", ["plain-gates", "peepholes", "everything", "peep+coupled"])
@pytest.mark.parametrize("zoneout", list(ZONEOUTS))
def test_zoneout_with_projection(zoneout, variant, setting, dtype):
    arrays, options, seeds = _problem(VARIANTS[variant], SETTINGS[setting], dtype, seed=3)
    for k in _ks(SETTINGS[setting][0]):
        _assert_checkpoint_equal(arrays, {**options, **ZONEOUTS[zoneout]}, seeds, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("variant", ["plain-gates", "peepholes", "everything"])
@pytest.mark.parametrize("zoneout", list(ZONEOUTS))
def test_zoneout_without_projection(zoneout, variant, setting, dtype):
    arrays, options, seeds = _problem(VARIANTS[variant], SETTINGS[setting], dtype, seed=4)
    hidden = arrays["w_hh"].shape[0] // 4
    options.pop("w_hr")
    arrays["w_hh"] = np.resize(arrays["w_hh"], (4 * hidden, hidden)).astype(dtype)
    if arrays["h0"] is not None:
        arrays["h0"] = np.resize(arrays["h0"], (arrays["h0"].shape[0], hidden)).astype(dtype)
    seeds["dy"] = np.resize(seeds["dy"], (*seeds["dy"].shape[:2], hidden)).astype(dtype)
    seeds["dh_n"] = np.resize(seeds["dh_n"], (seeds["dh_n"].shape[0], hidden)).astype(dtype)
    for k in _ks(SETTINGS[setting][0]):
        _assert_checkpoint_equal(arrays, {**options, **ZONEOUTS[zoneout]}, seeds, k)


def test_zoneout_masks_are_drawn_per_segment():
    """A checkpointed training pass keeps no mask of the whole sequence: each
    segment draws its rows from the seed (the results are the full cache's
    bits, tested above); the full cache keeps the masks."""
    arrays, options, seeds = _problem(VARIANTS["peepholes"], SETTINGS["many-rows"], np.float64)
    plain = F.forward(**arrays, **options, checkpoint=2).cache
    zoned = F.forward(**arrays, **options, **ZONEOUTS["h+c"], checkpoint=2).cache
    a = zoned._args
    assert a.zoneout_h_keep is None and a.zoneout_c_keep is None
    assert a.zoneout_draws == (5, 2, 0, 0.3, 0.3)
    assert zoned.nbytes == plain.nbytes
    full = F.forward(**arrays, **options, **ZONEOUTS["h+c"]).cache
    assert full._args.zoneout_h_keep is not None and full._args.zoneout_draws is None


_PEAK_SCRIPT = r"""
import json, resource, sys
import numpy as np
import lstm_fast

zoneout, layer_norm = float(sys.argv[1]), sys.argv[2] == "1"
T, B, I, H, K = 3000, 8, 16, 64, 50
rng = np.random.default_rng(0)
x = rng.standard_normal((T, B, I)).astype(np.float32)
w_ih = rng.uniform(-0.1, 0.1, (4 * H, I)).astype(np.float32)
w_hh = rng.uniform(-0.1, 0.1, (4 * H, H)).astype(np.float32)
dy = rng.standard_normal((T, B, H)).astype(np.float32)
kw = dict(checkpoint=K, layer_norm=layer_norm)
if zoneout:
    kw.update(zoneout=zoneout, seed=3)

def step(x, dy):
    out = lstm_fast.forward(x, w_ih, w_hh, **kw)
    return lstm_fast.backward(out.cache, dy)

step(x[:2 * K], dy[:2 * K])  # threads and pools started
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
step(x, dy)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": peak - before}))
"""


def _peak_kib(zoneout: float, layer_norm: bool) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(zoneout), "1" if layer_norm else "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["grew_kib"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB")
@pytest.mark.parametrize("layer_norm", [False, True])
def test_zoneout_with_checkpoint_holds_no_whole_masks(layer_norm):
    """The peak memory of a checkpointed training step (T = 3000, k = 50) with
    zoneout of h and c is the one without, give or take far less than the
    whole masks (T·B·(Pp + Hp) float32, 12 MB) that a full-mask pass holds."""
    masks_kib = 3000 * 8 * 128 * 4 // 1024
    plain, zoned = _peak_kib(0.0, layer_norm), _peak_kib(0.3, layer_norm)
    assert zoned - plain < masks_kib // 3, (plain, zoned, masks_kib)


def test_training_memory_counts_zoneout():
    shape = dict(steps=1000, batch=8, hidden=32, proj=32, itemsize=4)
    hp = lstm_fast._core.hidden_pad(32, 4)
    base = F.training_memory(None, **shape)
    assert F.training_memory(None, **shape, zoneout_h=True) == base + 1000 * 8 * hp * 4
    # Zoneout of c: its masks only (the cells are the states after zoneout).
    assert F.training_memory(None, **shape, zoneout_c=True) == base + 1000 * 8 * hp * 4
    k = 10
    ck = F.training_memory(k, **shape)
    assert F.training_memory(k, **shape, zoneout_h=True, zoneout_c=True) == ck + k * 8 * 2 * hp * 4


def test_every_isa(isa):
    for variant in ("plain-gates", "everything"):
        for setting in ("lengths-reverse-h0c0", "many-rows", "batch_first-lengths"):
            for dtype in (np.float32, np.float64):
                arrays, options, seeds = _problem(VARIANTS[variant], SETTINGS[setting], dtype)
                options.update(recurrent_dropout=0.2, seed=3)
                for k in (1, 2, 5):
                    _assert_checkpoint_equal(arrays, options, seeds, k)
                options.update(zoneout=(0.3, 0.25))
                for k in (1, 2, 5):
                    _assert_checkpoint_equal(arrays, options, seeds, k)


def test_long_sequence_with_wide_rows():
    """More steps than a block of the ordered sums (tuning::ORDERED_BLOCK_ROWS),
    H above the padding, ragged reverse rows."""
    rng = np.random.default_rng(4)
    T, B, I, H = 150, 9, 6, 37  # noqa: E741
    lengths = rng.integers(T // 2, T + 1, B)
    lengths[0], lengths[1] = T, 0
    assert lengths.sum() > 1024
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w_ih = rng.uniform(-0.2, 0.2, (4 * H, I)).astype(np.float32)
    w_hh = rng.uniform(-0.2, 0.2, (4 * H, H)).astype(np.float32)
    b = rng.uniform(-0.2, 0.2, 4 * H).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    for reverse in (False, True):
        kw = dict(lengths=lengths, reverse=reverse, peepholes=rng.uniform(-1, 1, 3 * H))
        full = F.forward(x, w_ih, w_hh, b, b, **kw)
        g_full = F.backward(full.cache, dy)
        for k in (1, 8, 9, 30, 149):
            ck = F.forward(x, w_ih, w_hh, b, b, checkpoint=k, **kw)
            g = F.backward(ck.cache, dy)
            for field in GRADIENTS:
                assert_same_bits(getattr(g, field), getattr(g_full, field), field)
            assert_same_bits(ck.y, full.y, "y")


# ---------------------------------------------------------------------------
# Threads and splits

# With the argument "layer_norm", the LayerNorm LSTM's (test_checkpoint_layernorm).
_THREAD_SCRIPT = r"""
from tests.test_projection import VARIANTS, SETTINGS, _problem, _run
from tests.test_checkpoint import _without_projection
from tests.test_checkpoint_layernorm import _layer_norm
layer_norm = sys.argv[1:] == ["layer_norm"]
for isa in lstm_fast.available_isas():
    lstm_fast._set_isa(isa)
    for name in ("plain-gates", "everything"):
        for dtype in (np.float32, np.float64):
            for setting in ("many-rows", "lengths-reverse-h0c0"):
                arrays, options, seeds = _problem(VARIANTS[name], SETTINGS[setting], dtype, seed=3)
                if layer_norm:
                    options = _layer_norm(arrays, options)
                options.update(recurrent_dropout=0.3, seed=8)
                for project in (True, False):
                    if not project:
                        arrays, options, seeds = _without_projection(arrays, options, seeds)
                    for k, z in [(k, z) for k in (None, 1, 2, 3) for z in (0.0, (0.3, 0.25))]:
                        opts = {{**options, "checkpoint": k, "zoneout": z}}
                        fwd, g = _run(lstm_fast, arrays, opts, seeds)
                        h = digest(*fwd[:3], *g[:9], *g[10:], g.flow.dh, g.flow.dc)
                        key = f"{{isa}}/{{name}}/{{np.dtype(dtype).name}}/{{setting}}/{{project}}"
                        out[f"{{key}}/{{z}}/{{k}}"] = h
"""


def _without_projection(arrays, options, seeds):
    """A problem of ``_problem`` made one without w_hr (P = H): w_hh, h0 and the
    seeds of h widened to H."""
    dtype = arrays["x"].dtype
    hidden = arrays["w_hh"].shape[0] // 4
    options = dict(options)
    options.pop("w_hr")
    arrays = dict(arrays)
    seeds = dict(seeds)

    def wide(a):
        return np.resize(a, (*a.shape[:-1], hidden)).astype(dtype)

    arrays["w_hh"] = wide(arrays["w_hh"])
    if arrays["h0"] is not None:
        arrays["h0"] = wide(arrays["h0"])
    seeds["dy"], seeds["dh_n"] = wide(seeds["dy"]), wide(seeds["dh_n"])
    return arrays, options, seeds


def _assert_same_bits_for_threads_and_k(*args):
    one = assert_same_hashes(_THREAD_SCRIPT, args=args)
    # Within a run: every k gives the full cache's bits.
    for key, value in one.items():
        assert value == one[key.rsplit("/", 1)[0] + "/None"], key


def test_same_bits_for_any_thread_count_and_split():
    _assert_same_bits_for_threads_and_k()


# ---------------------------------------------------------------------------
# The layer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "config",
    [
        dict(num_layers=2, bidirectional=True),
        dict(num_layers=3, proj_size=3, batch_first=True),
        dict(num_layers=2, bidirectional=True, peepholes=True, clip=0.8),
    ],
)
def test_layer_checkpoint_equal_to_full(config, dtype):
    T, B, I, H = 9, 4, 5, 6  # noqa: E741
    layer = lstm_fast.LSTM(I, H, dtype=dtype, seed=1, **config)
    rng = np.random.default_rng(0)
    shape = (B, T, I) if config.get("batch_first") else (T, B, I)
    x = rng.standard_normal(shape).astype(dtype)
    lengths = np.array([9, 4, 0, 7])
    y, (h_n, c_n) = layer.forward(x, lengths=lengths)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh = rng.standard_normal(h_n.shape).astype(dtype)
    dx = layer.backward(dy, dh)
    want = {n: g.copy() for n, g in layer.grads.items()}
    for kw in (
        {"checkpoint": 1},
        {"checkpoint": 4},
        {"checkpoint": 20},
        {"memory_budget": 10**9},
        {"memory_budget": 3000 * np.dtype(dtype).itemsize},
    ):
        y2, (h2, c2) = layer.forward(x, lengths=lengths, **kw)
        assert_same_bits(y2, y, "y")
        assert_same_bits(h2, h_n, "h_n")
        assert_same_bits(c2, c_n, "c_n")
        kept = layer._tape.caches[0][0]
        small = kw.get("memory_budget", 10**9) < 10**9 or kw.get("checkpoint", T) < T
        assert isinstance(kept, F.CheckpointCache) == small, kw
        assert_same_bits(layer.backward(dy, dh), dx, "dx")
        for name, g in want.items():
            assert_same_bits(layer.grads[name], g, name)


def test_memory_budget_chooses_the_largest_k_that_fits():
    shape = dict(steps=1000, batch=8, hidden=32, proj=32, itemsize=4, passes=2)
    full = F.training_memory(None, **shape)
    assert F.checkpoint_for_budget(full, **shape) is None
    k = F.checkpoint_for_budget(full - 1, **shape)
    assert k is not None and 1 <= k < 1000
    assert F.training_memory(k, **shape) <= full - 1
    assert all(F.training_memory(j, **shape) > full - 1 for j in range(k + 1, 1000))
    tight = min(F.training_memory(j, **shape) for j in range(1, 1000))
    k = F.checkpoint_for_budget(tight, **shape)
    assert F.training_memory(k, **shape) == tight
    with pytest.raises(ValueError, match="memory_budget"):
        F.checkpoint_for_budget(tight - 1, **shape)
    # The formula: kept states plus one segment's cache and gate gradients.
    hp = lstm_fast._core.hidden_pad(32, 4)
    assert F.training_memory(10, **shape) == (2 * 99 * 8 * 64 + 10 * 8 * (6 * hp + 4 * hp)) * 4


def test_nbytes_as_the_formula_says():
    T, B, I, H, P = 50, 3, 4, 8, 5  # noqa: E741
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I))
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, P))
    w_hr = rng.standard_normal((P, H))
    full = F.forward(x, w_ih, w_hh, w_hr=w_hr).cache
    inputs = x.nbytes + w_ih.nbytes + w_hh.nbytes + w_hr.nbytes
    for k in (1, 7, 10, 49):
        ck = F.forward(x, w_ih, w_hh, w_hr=w_hr, checkpoint=k).cache
        assert ck.nbytes == inputs + (-(-T // k) - 1) * B * (P + H) * 8
        assert ck.nbytes < full.nbytes
        with pytest.raises(AttributeError, match="checkpoint=None"):
            ck.i  # noqa: B018
        assert "checkpoint=" in repr(ck)


# ---------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    "value, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError),
                     ("4", TypeError)],
)  # fmt: skip
def test_bad_checkpoint(value, error):
    x = np.zeros((3, 1, 2))
    w_ih, w_hh = np.zeros((8, 2)), np.zeros((8, 2))
    with pytest.raises(error, match="checkpoint"):
        F.forward(x, w_ih, w_hh, checkpoint=value)
    layer = lstm_fast.LSTM(2, 2)
    with pytest.raises(error, match="checkpoint"):
        layer.forward(x.astype(np.float32), checkpoint=value)


def test_bad_memory_budget():
    layer = lstm_fast.LSTM(2, 3, num_layers=2)
    x = np.zeros((100, 2, 2), np.float32)
    with pytest.raises(ValueError, match="memory_budget"):
        layer.forward(x, memory_budget=10)
    with pytest.raises(TypeError, match="memory_budget"):
        layer.forward(x, memory_budget=1e6)
    with pytest.raises(ValueError, match="checkpoint and memory_budget"):
        layer.forward(x, checkpoint=3, memory_budget=10**6)


def test_empty_and_zero_length_calls():
    rng = np.random.default_rng(2)
    w_ih, w_hh = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    h0, c0 = rng.standard_normal((2, 2)), rng.standard_normal((2, 2))
    for T, lengths in ((0, None), (4, [0, 0]), (4, [4, 0])):
        x = rng.standard_normal((T, 2, 3))
        full = F.forward(x, w_ih, w_hh, None, None, h0, c0, lengths=lengths)
        ck = F.forward(x, w_ih, w_hh, None, None, h0, c0, lengths=lengths, checkpoint=1)
        g_full = F.backward(full.cache, np.ones_like(full.y), h0, c0)
        g_ck = F.backward(ck.cache, np.ones_like(full.y), h0, c0)
        for a, b in zip(g_full, g_ck):
            assert_same_bits(a, b)

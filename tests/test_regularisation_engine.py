"""The engine's regularisation (docs/variants.md, 'Regularisation', 'Masks')
against the NumPy reference.

- The generator: ``_core.scaled_keep`` (rust/src/masks.rs) is bit-identical to
  ``masks.scaled_keep`` (and so to masks.bits' known answers), both dtypes,
  every ISA (AVX-512 with DQ runs its own build of the hash).
- Weight drop and recurrent dropout, training and inference, alone, together
  and with every variant of
  tests/test_projection.py (projection, peepholes, clip, activations...) and
  every setting (lengths, reverse, batch_first, h0/c0), both dtypes, every ISA:
  y, h_n, c_n, the cache and every gradient against the reference.
- The same bits for 1, 2 and 3 threads and either split; the defaults and
  inference-only options change no bit; bad arguments raise the reference's
  errors. Zoneout: tests/test_zoneout_engine.py.
"""

from __future__ import annotations

import lstm_fast
import numpy as np
import pytest
from lstm_fast import _core, masks

from tests.helpers import assert_same_bits, assert_same_hashes, ref
from tests.test_projection import (
    SETTINGS,
    VARIANTS,
    _assert_matches_reference,
    _f64,
    _problem,
    _run,
)

# ---------------------------------------------------------------------------
# The generator


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "seed, stream, layer, direction, shape, p",
    [
        (0, masks.WEIGHT_DROP, 0, 0, (16, 5), 0.5),
        (2**64 - 1, masks.WEIGHT_DROP, 3, 1, (40, 33), 0.1),
        (12345, masks.RECURRENT_DROPOUT, 2, 1, (7, 129), 0.9),
        (42, masks.ZONEOUT_H, 1, 0, (1, 1), 0.0),
        (7, masks.DROPOUT, 0, 0, (3, 1000), 1 - 2**-53),
        (9, masks.WEIGHT_DROP, 1, 0, (512, 128), 0.25),
        (0, masks.WEIGHT_DROP, 0, 1, (0, 7), 0.5),
    ],
)
def test_engine_masks_are_the_generators(isa, dtype, seed, stream, layer, direction, shape, p):
    mine = np.empty(shape, dtype)
    _core.scaled_keep(mine, seed, stream, layer, direction, p)
    theirs = masks.scaled_keep(seed, stream, layer, direction, shape, p, dtype)
    assert_same_bits(mine, theirs)


def test_engine_masks_known_answers():
    # (12345, 3, 0, 1, (3, 9)) hashes to 0x6513794DEA3C0E8B: u = hash >> 11 · 2^-53.
    u = (0x6513794DEA3C0E8B >> 11) * 2.0**-53
    for p, dropped in ((u, False), (np.nextafter(u, 1), True)):
        out = np.empty((4, 10))
        _core.scaled_keep(out, 12345, masks.RECURRENT_DROPOUT, 0, 1, p)
        assert (out[3, 9] == 0) == dropped


def test_engine_masks_bad_p():
    out = np.empty((2, 2))
    for p in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError):
            _core.scaled_keep(out, 0, 4, 0, 0, p)


# ---------------------------------------------------------------------------
# Weight drop against the reference

REG = {
    "wd": {"weight_drop": 0.3, "seed": 11},
    "rd": {"recurrent_dropout": 0.3, "seed": 11},
    "rd-layer1": {"recurrent_dropout": 0.6, "seed": 2**63, "layer": 1},
    "rd+wd": {"recurrent_dropout": 0.25, "weight_drop": 0.45, "seed": 6, "layer": 3},
    "wd-layer2": {"weight_drop": 0.55, "seed": 2**64 - 3, "layer": 2},
    "wd-inference": {"weight_drop": 0.3, "training": False},
    "rd-inference": {"recurrent_dropout": 0.4, "training": False},
}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("reg", REG)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_engine_matches_reference(isa, dtype, reg, setting):
    arrays, options, seeds = _problem({}, SETTINGS[setting], dtype)
    options.update(REG[reg])
    _assert_matches_reference(arrays, options, seeds, dtype)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reg", ["wd", "rd", "rd+wd"])
def test_with_every_variant(isa, dtype, name, reg):
    arrays, options, seeds = _problem(VARIANTS[name], SETTINGS["lengths-reverse-h0c0"], dtype)
    options.update(REG[reg])
    _assert_matches_reference(arrays, options, seeds, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize(
    "reg", [{"weight_drop": 0.25}, {"recurrent_dropout": 0.35}, {"weight_drop": 0.2,
            "recurrent_dropout": 0.2}],
)  # fmt: skip
@pytest.mark.parametrize("B", [1, 6])
def test_without_projection(isa, dtype, batch_first, reg, B):
    """The plain LSTM (no w_hr): Gradients, not VariantGradients, as the
    reference; B = 1 runs the batch-1 paths."""
    rng = np.random.default_rng(1)
    T, I, H = 5, 4, 9  # noqa: E741
    seq = (B, T) if batch_first else (T, B)
    x = rng.standard_normal((*seq, I)).astype(dtype)
    w = [rng.uniform(-0.4, 0.4, s).astype(dtype) for s in ((4 * H, I), (4 * H, H), 4 * H, 4 * H)]
    dy = rng.standard_normal((*seq, H)).astype(dtype)
    kw = dict(batch_first=batch_first, seed=99, **reg)
    out = lstm_fast.forward(x, *w, **kw)
    g = lstm_fast.backward(out.cache, dy)
    r_out = ref.forward(x.astype(np.float64), *(a.astype(np.float64) for a in w), **kw)
    r = ref.backward(r_out.cache, dy.astype(np.float64))
    assert type(g).__name__ == type(r).__name__ == "Gradients"
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11)
    for a, b in [(out.y, r_out.y), (out.h_n, r_out.h_n), (out.c_n, r_out.c_n), *zip(g, r)]:
        np.testing.assert_allclose(a, b, **tol)
    if "weight_drop" in reg:  # the dropped entries of w_hh get no gradient
        p = reg["weight_drop"]
        keep = masks.scaled_keep(99, masks.WEIGHT_DROP, 0, 0, (4 * H, H), p, dtype)
        assert np.all(g.dw_hh[keep == 0] == 0) and np.any(keep == 0)


@pytest.mark.parametrize("option", ["weight_drop", "recurrent_dropout"])
def test_masks_follow_seed_layer_direction(option):
    arrays, options, _ = _problem({}, SETTINGS["basic"], np.float64)
    options.pop("reverse")
    base = lstm_fast.forward(*arrays.values(), **options, **{option: 0.5}, seed=1).y
    same = lstm_fast.forward(*arrays.values(), **options, **{option: 0.5}, seed=1).y
    assert_same_bits(base, same)
    for change in ({"seed": 2}, {"layer": 1}, {"reverse": True}):
        kw = {option: 0.5, "seed": 1, **change}
        other = lstm_fast.forward(*arrays.values(), **options, **kw).y
        assert not np.array_equal(base, other), change


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_defaults_and_inference_change_no_bit(dtype):
    arrays, options, seeds = _problem(VARIANTS["everything"], SETTINGS["many-rows"], dtype)
    plain_out, plain_g = _run(lstm_fast, arrays, options, seeds)
    for extra in (
        {},
        {"recurrent_dropout": 0.0, "weight_drop": 0.0, "seed": 3, "layer": 2},
        {"weight_drop": 0.5, "recurrent_dropout": 0.3, "training": False},
        {"weight_drop": 0.5, "seed": 1, "training": False},
    ):
        out, g = _run(lstm_fast, arrays, {**options, **extra}, seeds)
        for a, b in zip((*out[:3], *g[:9]), (*plain_out[:3], *plain_g[:9])):
            if b is None:
                assert a is None
            else:
                assert_same_bits(a, b)


# ---------------------------------------------------------------------------
# Threads and splits: the same bits

_THREAD_SCRIPT = r"""
from tests.test_projection import VARIANTS, SETTINGS, _problem, _run
for isa in lstm_fast.available_isas():
    lstm_fast._set_isa(isa)
    for name in ("plain-gates", "everything"):
        for dtype in (np.float32, np.float64):
            for setting in ("many-rows", "lengths-reverse-h0c0"):
                arrays, options, seeds = _problem(VARIANTS[name], SETTINGS[setting], dtype, seed=3)
                options.update(weight_drop=0.35, recurrent_dropout=0.3, seed=8, layer=1)
                fwd, g = _run(lstm_fast, arrays, options, seeds)
                key = f"{{isa}}/{{name}}/{{np.dtype(dtype).name}}/{{setting}}"
                out[key] = digest(*fwd[:3], *g[:9])
    # Without a projection (P = H): the hidden split and the plain gate math.
    lengths = [5, 0, 3, 5, 1, 4, 5, 2] * 3
    for name in ("plain-gates", "peepholes"):
        for dtype in (np.float32, np.float64):
            setting = (5, len(lengths), 6, 70, 70, lengths, True, False, True)
            arrays, options, seeds = _problem(VARIANTS[name], setting, dtype, seed=5)
            options.pop("w_hr")
            options.update(weight_drop=0.2, recurrent_dropout=0.4, seed=9)
            fwd, g = _run(lstm_fast, arrays, options, seeds)
            key = f"{{isa}}/{{name}}/{{np.dtype(dtype).name}}/no-projection"
            out[key] = digest(*fwd[:3], *g[:7])
"""


def test_same_bits_for_any_thread_count_and_split():
    assert_same_hashes(_THREAD_SCRIPT)


def test_masks_identical_across_isas():
    """The mask is drawn once per call outside the kernels: dw_hh's zeros are
    the mask's on every ISA."""
    arrays, options, seeds = _problem({}, SETTINGS["many-rows"], np.float64)
    options.update(weight_drop=0.6, seed=4)
    previous = lstm_fast.get_isa()
    zeros = []
    try:
        for isa in lstm_fast.available_isas():
            lstm_fast._set_isa(isa)
            _, g = _run(lstm_fast, arrays, options, seeds)
            zeros.append(g.dw_hh == 0)
    finally:
        lstm_fast._set_isa(previous)
    for z in zeros[1:]:
        assert np.array_equal(z, zeros[0])


# ---------------------------------------------------------------------------
# Bad arguments: the reference's errors

BAD = [
    ({"weight_drop": 1.0, "seed": 0}, ValueError, "weight_drop"),
    ({"weight_drop": -0.1, "seed": 0}, ValueError, "weight_drop"),
    ({"weight_drop": float("nan"), "seed": 0}, ValueError, "weight_drop"),
    ({"weight_drop": "0.1", "seed": 0}, TypeError, "weight_drop"),
    ({"recurrent_dropout": 1.5, "seed": 0}, ValueError, "recurrent_dropout"),
    ({"weight_drop": 0.1}, ValueError, "seed"),
    ({"weight_drop": 0.1, "seed": -1}, ValueError, "seed"),
    ({"weight_drop": 0.1, "seed": 2**64}, ValueError, "seed"),
    ({"weight_drop": 0.1, "seed": 1.5}, TypeError, "seed"),
    ({"layer": -1}, ValueError, "layer"),
    ({"layer": "a"}, TypeError, "layer"),
    ({"training": "yes"}, TypeError, "training"),
]


@pytest.mark.parametrize("kw, error, match", BAD)
def test_bad_arguments_raise_the_references_errors(kw, error, match):
    arrays, options, _ = _problem({}, SETTINGS["basic"], np.float32)
    with pytest.raises(error, match=match) as mine:
        lstm_fast.forward(*arrays.values(), **options, **kw)
    with pytest.raises(error, match=match) as theirs:
        ref.forward(*_f64(arrays).values(), **_f64(options), **kw)
    assert str(mine.value) == str(theirs.value)

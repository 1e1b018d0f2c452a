"""The engine's zoneout (docs/variants.md, 'Zoneout', 'Masks') against the NumPy
reference.

- The generator: ``_core.zoneout_keep`` (rust/src/masks.rs) is
  ``masks.events`` laid out like the caches, both layouts and dtypes, every ISA.
- Zoneout of h only, of c only and of both, training and inference, alone, with
  recurrent dropout and weight drop, with every variant of
  tests/test_projection.py (projection, peepholes, clip, activations...) and
  every setting (lengths, 0 included, reverse, batch_first, h0/c0), both dtypes,
  every ISA: y, h_n, c_n, the cache, every gradient and the gradient flow.
- Without a projection (the hidden split, the batch-1 paths) likewise.
- The same bits for 1, 2 and 3 threads and either split; the masks the same on
  every ISA; the defaults change no bit; bad arguments raise the reference's
  errors.
"""

from __future__ import annotations

import lstm_fast
import numpy as np
import pytest
from lstm_fast import _core, masks

from tests.helpers import assert_close, assert_same_bits, assert_same_hashes, ref
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
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize(
    "seed, stream, layer, direction, T, B, W, pad, p",
    [
        (0, masks.ZONEOUT_H, 0, 0, 5, 3, 7, 8, 0.3),
        (2**64 - 1, masks.ZONEOUT_C, 3, 1, 4, 6, 33, 40, 0.5),
        (42, masks.ZONEOUT_H, 1, 0, 1, 1, 1, 16, 0.0),
        (7, masks.ZONEOUT_C, 2, 1, 3, 2, 16, 16, 1 - 2**-53),
    ],
)
def test_engine_masks_are_the_generators(
    isa, dtype, batch_first, seed, stream, layer, direction, T, B, W, pad, p
):
    """On every ISA (the draw runs with the ISA's vector instructions)."""
    mine = np.full((T * B, pad), 7, dtype)
    _core.zoneout_keep(mine, seed, stream, layer, direction, p, T, B, W, batch_first)
    events = masks.events(seed, stream, layer, direction, (T, B, W), p)  # (T, B, W) bool
    rows = events.transpose(1, 0, 2) if batch_first else events
    want = np.zeros((T * B, pad), dtype)
    want[:, :W] = rows.reshape(T * B, W)
    assert_same_bits(mine, want)


def test_engine_masks_bad_arguments():
    out = np.empty((6, 8))
    for p in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="p must be"):
            _core.zoneout_keep(out, 0, 1, 0, 0, p, 3, 2, 8, False)
    with pytest.raises(ValueError, match="zoneout_keep"):
        _core.zoneout_keep(out, 0, 1, 0, 0, 0.5, 3, 3, 8, False)
    with pytest.raises(ValueError, match="zoneout_keep"):
        _core.zoneout_keep(out, 0, 1, 0, 0, 0.5, 3, 2, 9, False)


# ---------------------------------------------------------------------------
# Against the reference

REG = {
    "zh": {"zoneout": (0.3, 0.0), "seed": 11},
    "zc": {"zoneout": (0.0, 0.4), "seed": 11},
    "both": {"zoneout": 0.25, "seed": 2**63, "layer": 1},
    "both-uneven": {"zoneout": (0.6, 0.15), "seed": 5, "layer": 2},
    "both+rd": {"zoneout": 0.3, "recurrent_dropout": 0.3, "seed": 6},
    "zh+wd": {"zoneout": (0.35, 0.0), "weight_drop": 0.4, "seed": 2**64 - 3},
    "zc+rd+wd": {"zoneout": (0.0, 0.3), "recurrent_dropout": 0.25, "weight_drop": 0.45,
                 "seed": 6, "layer": 3},
    "both-inference": {"zoneout": 0.3, "training": False},
    "uneven-inference": {"zoneout": (0.1, 0.7), "training": False, "weight_drop": 0.5},
    "zh-inference": {"zoneout": (0.45, 0.0), "training": False, "seed": 3},
}  # fmt: skip


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("reg", REG)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_engine_matches_reference(isa, dtype, reg, setting):
    arrays, options, seeds = _problem({}, SETTINGS[setting], dtype)
    options.update(REG[reg])
    _assert_matches_reference(arrays, options, seeds, dtype)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reg", ["zh", "zc", "both+rd", "zc+rd+wd", "uneven-inference"])
def test_with_every_variant(isa, dtype, name, reg):
    arrays, options, seeds = _problem(VARIANTS[name], SETTINGS["lengths-reverse-h0c0"], dtype)
    options.update(REG[reg])
    _assert_matches_reference(arrays, options, seeds, dtype)


def _without_projection(name, setting, dtype, seed=1):
    arrays, options, seeds = _problem(VARIANTS[name], setting, dtype, seed=seed)
    options.pop("w_hr")
    P = arrays["w_hh"].shape[1]
    H = arrays["w_hh"].shape[0] // 4
    assert P == H
    return arrays, options, seeds


def _assert_matches_reference_plain(arrays, options, seeds, dtype):
    """Without a projection: Gradients or VariantGradients as the reference."""
    out, g = _run(lstm_fast, arrays, options, seeds)
    r_out, r = _run(ref, _f64(arrays), _f64(options), _f64(seeds))
    for field in ("y", "h_n", "c_n"):
        assert_close(getattr(out, field), getattr(r_out, field), dtype, what=field)
    for gate in "ifgoc":
        assert_close(getattr(out.cache, gate), getattr(r_out.cache, gate), dtype, what=gate)
    assert type(g).__name__ == type(r).__name__
    for field in g._fields:
        mine, theirs = getattr(g, field), getattr(r, field)
        if field == "flow":
            for k in ("dh", "dc", "dh_sum", "dc_sum"):
                assert_close(getattr(mine, k), getattr(theirs, k), dtype, what=f"flow.{k}")
        elif theirs is None:
            assert mine is None, field
        else:
            assert mine.dtype == dtype, field
            assert_close(mine, theirs, dtype, what=field)


# (T, B, I, H, P, lengths, reverse, batch_first, h0c0); P is dropped with w_hr.
PLAIN_SETTINGS = {
    "B1": (7, 1, 3, 17, 17, None, False, False, True),
    "B1-reverse-bf": (6, 1, 4, 9, 9, [4], True, True, False),
    "lengths-reverse": (6, 5, 3, 20, 20, [6, 0, 3, 5, 1], True, False, True),
    "batch_first-lengths": (5, 3, 5, 9, 9, [2, 5, 4], False, True, True),
    "wide": (4, 7, 3, 70, 70, [4, 4, 0, 2, 3, 4, 1], False, False, True),
}


@pytest.mark.parametrize("setting", PLAIN_SETTINGS)
@pytest.mark.parametrize("reg", ["zh", "zc", "both", "both+rd", "zh+wd", "both-inference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["plain-gates", "peepholes"])
def test_without_projection(isa, dtype, reg, setting, name):
    """P = H: the general body without a projection, its batch-1 paths and
    (with threads) the hidden split."""
    arrays, options, seeds = _without_projection(name, PLAIN_SETTINGS[setting], dtype)
    options.update(REG[reg])
    _assert_matches_reference_plain(arrays, options, seeds, dtype)
    _, g = _run(lstm_fast, arrays, options, seeds, flow=False)
    r_out, r = _run(ref, _f64(arrays), _f64(options), _f64(seeds), flow=False)
    assert type(g).__name__ == type(r).__name__


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_seeds_and_initial_state(isa, dtype):
    arrays, options, seeds = _problem({}, SETTINGS["lengths-reverse-h0c0"], dtype, seed=5)
    arrays["h0"] = arrays["c0"] = None
    options.update(REG["both+rd"])
    for drop in ("dy", "dh_n", "dc_n"):
        _assert_matches_reference(arrays, options, dict(seeds, **{drop: None}), dtype)


@pytest.mark.parametrize(
    "T, B, lengths", [(0, 3, None), (4, 0, None), (4, 3, [0, 0, 0])], ids=["T0", "B0", "len0"]
)
def test_no_steps(T, B, lengths):
    setting = (T, B, 3, 6, 6, lengths, False, False, True)
    arrays, options, seeds = _without_projection("peepholes", setting, np.float64)
    options.update(zoneout=0.5, seed=1)
    out, g = _run(lstm_fast, arrays, options, seeds)
    r_out, r = _run(ref, arrays, options, seeds)
    for a, b in zip(out[:3], r_out[:3]):
        assert_same_bits(a, b)
    for field in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dpeepholes"):
        np.testing.assert_array_equal(getattr(g, field), getattr(r, field), err_msg=field)


# ---------------------------------------------------------------------------
# What zoneout does, exactly


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_is_an_exact_select(dtype):
    """Where the mask of h zones out, y_t is y_{t-1}'s bits; where that of c
    does, the state c_t (the next step's c_prev) keeps c_{t-1}'s bits."""
    T, B, H = 6, 4, 24
    setting = (T, B, 3, H, H, None, False, False, True)
    arrays, options, _ = _without_projection("plain-gates", setting, dtype)
    out = lstm_fast.forward(*arrays.values(), **options, zoneout=(0.4, 0.0), seed=9)
    keep = masks.events(9, masks.ZONEOUT_H, 0, 0, (T, B, H), 0.4)
    y = np.concatenate([arrays["h0"][None], out.y])
    same = y[1:] == y[:-1]
    assert np.array_equal(same, keep)
    # The cache's c is the candidate; the state after zoneout feeds c_n.
    out = lstm_fast.forward(*arrays.values(), **options, zoneout=(0.0, 0.5), seed=9)
    keep_c = masks.events(9, masks.ZONEOUT_C, 0, 0, (T, B, H), 0.5)
    c = arrays["c0"].copy()
    for t in range(T):
        c = np.where(keep_c[t], c, out.cache.c[t])
    assert_same_bits(c, out.c_n)


def test_inference_is_the_expectation_in_the_references_order():
    """z·prev + (1 - z)·new in the compute dtype, not fused: float64 bits of
    the engine equal the reference's for one step of a tiny problem."""
    setting = (1, 2, 3, 4, 4, None, False, False, True)
    arrays, options, _ = _without_projection("plain-gates", setting, np.float64)
    kw = dict(zoneout=(0.3, 0.6), training=False)
    out = lstm_fast.forward(*arrays.values(), **options, **kw)
    z_h, z_c = np.float64(0.3), np.float64(0.6)
    c_new = out.cache.c[0]
    assert_same_bits(out.c_n, z_c * arrays["c0"] + (1 - z_c) * c_new)
    h_cand = out.cache.o[0] * np.tanh(c_new)
    assert_close(out.h_n, z_h * arrays["h0"] + (1 - z_h) * h_cand, np.float64, what="h_n")


@pytest.mark.parametrize("option", [0.5, (0.5, 0.0), (0.0, 0.5)])
def test_masks_follow_seed_layer_direction(option):
    arrays, options, _ = _problem({}, SETTINGS["basic"], np.float64)
    options.pop("reverse")
    base = lstm_fast.forward(*arrays.values(), **options, zoneout=option, seed=1)
    same = lstm_fast.forward(*arrays.values(), **options, zoneout=option, seed=1)
    assert_same_bits(base.y, same.y)
    assert_same_bits(base.c_n, same.c_n)
    for change in ({"seed": 2}, {"layer": 1}, {"reverse": True}):
        kw = {"zoneout": option, "seed": 1, **change}
        other = lstm_fast.forward(*arrays.values(), **options, **kw)
        assert not (np.array_equal(base.y, other.y) and np.array_equal(base.c_n, other.c_n))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_defaults_change_no_bit(dtype):
    arrays, options, seeds = _problem(VARIANTS["everything"], SETTINGS["many-rows"], dtype)
    plain_out, plain_g = _run(lstm_fast, arrays, options, seeds)
    assert plain_out.cache._c_state is None
    for extra in ({"zoneout": 0.0}, {"zoneout": (0.0, 0.0), "seed": 3, "layer": 2},
                  {"zoneout": 0, "training": False}):  # fmt: skip
        out, g = _run(lstm_fast, arrays, {**options, **extra}, seeds)
        assert out.cache._c_state is None
        for a, b in zip((*out[:3], *g[:9]), (*plain_out[:3], *plain_g[:9])):
            assert_same_bits(a, b)


def test_cache_size():
    """Zoneout keeps the plain cache (6·Hp per (row, step): the cells are the
    states after zoneout, backward rebuilds the candidates), besides the
    training masks."""
    arrays, options, _ = _without_projection("plain-gates", PLAIN_SETTINGS["wide"], np.float32)
    T, B = 4, 7
    hp = _core.hidden_pad(70, 4)
    plain = lstm_fast.forward(*arrays.values(), **options).cache
    zh = lstm_fast.forward(*arrays.values(), **options, zoneout=(0.5, 0), seed=1).cache
    zc = lstm_fast.forward(*arrays.values(), **options, zoneout=(0, 0.5), seed=1).cache
    zc_inf = lstm_fast.forward(*arrays.values(), **options, zoneout=(0, 0.5), training=False)
    assert zh.nbytes == plain.nbytes + T * B * hp * 4  # the mask of h
    assert zc.nbytes == plain.nbytes + T * B * hp * 4  # the mask of c
    assert zc_inf.cache.nbytes == plain.nbytes


# ---------------------------------------------------------------------------
# Threads, splits and ISAs: the same bits

_THREAD_SCRIPT = r"""
from tests.test_projection import VARIANTS, SETTINGS, _problem, _run
for isa in lstm_fast.available_isas():
    lstm_fast._set_isa(isa)
    for name in ("plain-gates", "everything"):
        for dtype in (np.float32, np.float64):
            for setting in ("many-rows", "lengths-reverse-h0c0"):
                arrays, options, seeds = _problem(VARIANTS[name], SETTINGS[setting], dtype, seed=3)
                options.update(zoneout=(0.3, 0.2), recurrent_dropout=0.3, seed=8, layer=1)
                fwd, g = _run(lstm_fast, arrays, options, seeds)
                out[f"{{isa}}/{{name}}/{{np.dtype(dtype).name}}/{{setting}}"] = digest(
                    *fwd[:3], *g[:9], *g.flow)
    # Without a projection (P = H): the hidden split, training and inference.
    lengths = [5, 0, 3, 5, 1, 4, 5, 2] * 3
    for name in ("plain-gates", "peepholes"):
        for dtype in (np.float32, np.float64):
            for training in (True, False):
                setting = (5, len(lengths), 6, 70, 70, lengths, True, False, True)
                arrays, options, seeds = _problem(VARIANTS[name], setting, dtype, seed=5)
                options.pop("w_hr")
                options.update(zoneout=(0.35, 0.25), weight_drop=0.2, seed=9, training=training)
                fwd, g = _run(lstm_fast, arrays, options, seeds)
                out[f"{{isa}}/{{name}}/{{np.dtype(dtype).name}}/{{training}}"] = digest(
                    *fwd[:3], *g[:8], *g.flow)
"""


def test_same_bits_for_any_thread_count_and_split():
    one = assert_same_hashes(_THREAD_SCRIPT)
    assert len(one) == 16 * len(lstm_fast.available_isas())


def test_masks_identical_across_isas():
    """The masks are drawn once per call outside the kernels: on every ISA the
    units of y that keep their previous value are exactly the mask's."""
    T, B, H = 5, 9, 40
    setting = (T, B, 3, H, H, None, False, True, True)
    arrays, options, _ = _without_projection("plain-gates", setting, np.float32)
    keep = masks.events(4, masks.ZONEOUT_H, 0, 0, (T, B, H), 0.5).transpose(1, 0, 2)
    previous = lstm_fast.get_isa()
    try:
        for isa in lstm_fast.available_isas():
            lstm_fast._set_isa(isa)
            y = lstm_fast.forward(*arrays.values(), **options, zoneout=(0.5, 0), seed=4).y
            y = np.concatenate([arrays["h0"][:, None], y], axis=1)  # batch_first
            assert np.array_equal(y[:, 1:] == y[:, :-1], keep), isa
    finally:
        lstm_fast._set_isa(previous)


# ---------------------------------------------------------------------------
# Bad arguments: the reference's errors

BAD = [
    ({"zoneout": 1.0, "seed": 0}, ValueError, "zoneout"),
    ({"zoneout": -0.1, "seed": 0}, ValueError, "zoneout"),
    ({"zoneout": float("nan"), "seed": 0}, ValueError, "zoneout"),
    ({"zoneout": "0.1", "seed": 0}, TypeError, "zoneout"),
    ({"zoneout": (0.1,), "seed": 0}, ValueError, "zoneout"),
    ({"zoneout": (0.1, 0.2, 0.3), "seed": 0}, ValueError, "zoneout"),
    ({"zoneout": (0.1, 1.0), "seed": 0}, ValueError, r"zoneout\[1\]"),
    ({"zoneout": (None, 0.1), "seed": 0}, TypeError, r"zoneout\[0\]"),
    ({"zoneout": 0.1}, ValueError, "seed"),
    ({"zoneout": (0.0, 0.1), "seed": -1}, ValueError, "seed"),
    ({"zoneout": 0.1, "training": "no"}, TypeError, "training"),
]


@pytest.mark.parametrize("kw, error, match", BAD)
def test_bad_arguments_raise_the_references_errors(kw, error, match):
    arrays, options, _ = _problem({}, SETTINGS["basic"], np.float32)
    with pytest.raises(error, match=match) as mine:
        lstm_fast.forward(*arrays.values(), **options, **kw)
    with pytest.raises(error, match=match) as theirs:
        ref.forward(*_f64(arrays).values(), **_f64(options), **kw)
    assert str(mine.value) == str(theirs.value)


# ---------------------------------------------------------------------------
# The cache without the candidates: the cells are the states after zoneout and
# the candidates are rebuilt with the forward's arithmetic


def _states_and_candidates(out):
    """The cache's cells (the states c_t) and ``cache.c`` (the candidates),
    (T, B, H) by real time."""
    cache = out.cache
    a = cache._args
    cells = cache._cells.reshape(a.layout_shape(a.hidden_pad))[..., : a.hidden]
    return cache._time_major(cells), cache.c


def test_candidates_binding_raises_naming_the_wrong_array():
    """``_core.zoneout_candidates`` checks in the engine (``lstm::candidates``,
    ``check.rs``) and raises the engine's error as ``ValueError`` naming the array,
    never a panic: ``out`` (T·B × Hp) and the cache's arrays."""
    rng = np.random.default_rng(3)
    T, B, I, H = 4, 2, 3, 5
    x = rng.standard_normal((T, B, I))
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    cache = lstm_fast.forward(x, w_ih, w_hh, zoneout=0.3, seed=1).cache
    a, cells = cache._args, cache._cells
    with pytest.raises(
        ValueError, match=rf"^out: expected {cells.size} elements, got {cells.size - 1}$"
    ):
        _core.zoneout_candidates(a, cache._arrays(), np.empty(cells.size - 1))
    short = cache._arrays()._replace(cells=cells[:-1])
    with pytest.raises(ValueError, match="^cache cells: expected"):
        _core.zoneout_candidates(a, short, np.empty_like(cells))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", ["lengths-reverse-h0c0", "batch_first-lengths", "basic"])
@pytest.mark.parametrize("variant", ["everything", "peep+coupled", "no_forget_gate"])
def test_cache_cells_are_the_states_and_c_the_forwards_candidates(isa, dtype, setting, variant):
    """On every ISA, with lengths, reverse, batch_first and c0: where the mask of
    c keeps the candidate, the cached state is the rebuilt candidate's bits (so
    the rebuild is the forward's arithmetic); where it zones out, the state is
    c_{t-1}'s bits; each row's last state is c_n. At inference the state is
    z·c_{t-1} + (1 - z)·c̃_t of the rebuilt candidate, in the reference's order."""
    T, B, _, H, _, lengths, reverse, _, _ = SETTINGS[setting]
    arrays, options, _ = _problem(VARIANTS[variant], SETTINGS[setting], dtype, seed=4)
    lens = [T] * B if lengths is None else lengths
    c0 = arrays["c0"] if arrays["c0"] is not None else np.zeros((B, H), dtype)
    keep = masks.events(6, masks.ZONEOUT_C, 1, int(reverse), (T, B, H), 0.45)
    for training in (True, False):
        kw = dict(zoneout=(0.2, 0.45), seed=6, layer=1, training=training)
        out = lstm_fast.forward(*arrays.values(), **options, **kw)
        states, cand = _states_and_candidates(out)
        assert out.cache._c_state is None
        z = dtype(0.45)
        for b in range(B):
            order = range(lens[b] - 1, -1, -1) if reverse else range(lens[b])
            prev = c0[b]
            for t in order:
                if training:
                    want = np.where(keep[t, b], prev, cand[t, b])
                else:
                    want = z * prev + (1 - z) * cand[t, b]
                assert_same_bits(states[t, b], want)
                prev = states[t, b]
            if lens[b]:
                assert_same_bits(out.c_n[b], prev)
            # Padded steps hold zeros.
            pad = [t for t in range(T) if t >= lens[b]]
            assert not cand[pad, b].any() and not states[pad, b].any()


def test_zoneout_cache_holds_the_plain_arrays():
    """With zoneout of h and of c the cache's arrays are the plain LSTM's
    (gates, cells, h_prev: 6·Hp per (row, step)), the same shapes; only the
    training masks come on top."""
    arrays, options, _ = _without_projection("peepholes", PLAIN_SETTINGS["wide"], np.float32)
    T, B = 4, 7
    hp = _core.hidden_pad(70, 4)
    plain = lstm_fast.forward(*arrays.values(), **options).cache
    both = lstm_fast.forward(*arrays.values(), **options, zoneout=(0.3, 0.4), seed=2).cache
    shapes = [(x.shape, x.dtype) for x in (plain._gates, plain._cells, plain._h_prev)]
    assert [(x.shape, x.dtype) for x in (both._gates, both._cells, both._h_prev)] == shapes
    assert shapes == [((T * B, 4 * hp), np.float32), ((T * B, hp), np.float32)] + [
        ((T * B, hp), np.float32)
    ]
    assert both._pre is None and both._c_state is None
    assert both.nbytes == plain.nbytes + 2 * T * B * hp * 4  # the masks of h and c
    shape = dict(steps=T, batch=B, hidden=70, proj=70, itemsize=4)
    training_memory = lstm_fast.functional.training_memory
    base = training_memory(None, **shape)
    assert base == T * B * 6 * hp * 4
    both_masks = training_memory(None, **shape, zoneout_h=True, zoneout_c=True)
    assert both_masks == base + 2 * T * B * hp * 4

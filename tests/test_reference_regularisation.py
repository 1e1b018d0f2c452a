"""The NumPy reference's regularisation (docs/variants.md, 'Zoneout', 'Recurrent
dropout', 'Weight drop', 'Dropout between layers') and the mask generator ('Masks').

- The generator: the vectorised masks equal the word-by-word definition in any
  order of evaluation; known answers pin it (the engine reproduces them); it is
  deterministic; the event rate matches p; streams, layers, directions, seeds and
  neighbouring coordinates look independent.
- Each option against the torch oracle of tests/test_reference_layernorm.py
  (autograd, masks from the generator applied by the oracle), float64, tight;
  with lengths, reverse, batch_first, a projection, LayerNorm.
- Central finite differences in float64 for every gradient with the masks fixed
  (dx, dh0, dc0, w_hh through weight drop, ...).
- Inference is the expectation; the same masks whatever the layout; the defaults
  change no bit; bad arguments name the argument.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import ref
from tests.test_reference_layernorm import (
    NAMES,
    NORM_NAMES,
    assert_matches_oracle,
    check_finite_differences,
    loss_of,
    make_arrays,
    masks,
    run,
    torch_oracle,
)

# --------------------------------------------------------------------------
# The generator


def test_mix_is_splitmix64():
    # SplitMix64 seeded with 0 returns mix(0x9E3779B97F4A7C15) first: its
    # published first output.
    assert masks.mix(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF
    assert masks.mix(0) == 0


# Known answers (docs/variants.md lists them for the engine): the definition
# written out here on its own, and its 64-bit hash of a few entries pinned.
KNOWN = {
    (0, masks.ZONEOUT_H, 0, 0, 0, 0, 0): 0xFC1F9D47C1A5266C,
    (42, masks.ZONEOUT_C, 1, 1, 5, 2, 7): 0xDD02D7020C2A6D6E,
    (2**64 - 1, masks.WEIGHT_DROP, 3, 0, 11, 4): 0x804DB5A933C937BA,
    (12345, masks.RECURRENT_DROPOUT, 0, 1, 3, 9): 0x6513794DEA3C0E8B,
}


def _definition(*words):
    """seed, stream, layer, direction, coordinates... -> the entry's 64-bit hash."""
    word = 2**64

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % word
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % word
        return z ^ (z >> 31)

    h = words[0]
    for w in words[1:]:
        h = mix(((h ^ w) + 0x9E3779B97F4A7C15) % word)
    return h


def test_known_answers():
    """A change of the generator shows here (and must change docs/variants.md and
    the engine with it)."""
    for words, expected in KNOWN.items():
        assert _definition(*words) == expected, (words, hex(_definition(*words)))
        assert masks.uniform_scalar(*words) == (expected >> 11) * 2.0**-53, words
    # the vectorised form on the first entry of a mask
    assert masks.bits(0, masks.ZONEOUT_H, 0, 0, (1, 1, 1))[0, 0, 0] == 0xFC1F9D47C1A5266C


@pytest.mark.parametrize("stream", [masks.ZONEOUT_H, masks.WEIGHT_DROP])
def test_vectorised_equals_the_definition_in_any_order(stream):
    shape = (3, 4, 5)
    u = masks.uniform(77, stream, 2, 1, shape)
    order = list(np.ndindex(shape))
    np.random.default_rng(0).shuffle(order)  # the order of evaluation does not matter
    for index in order:
        assert u[index] == masks.uniform_scalar(77, stream, 2, 1, *index), index


def test_masks_do_not_depend_on_the_shape():
    """An entry is keyed by its coordinates only: a larger mask contains a smaller one."""
    small = masks.uniform(5, masks.ZONEOUT_C, 0, 0, (3, 2, 4))
    large = masks.uniform(5, masks.ZONEOUT_C, 0, 0, (7, 5, 6))
    assert small.tobytes() == np.ascontiguousarray(large[:3, :2, :4]).tobytes()


def test_deterministic_and_seeded():
    a = masks.events(9, masks.ZONEOUT_H, 0, 0, (50, 8, 16), 0.5)
    assert a.tobytes() == masks.events(9, masks.ZONEOUT_H, 0, 0, (50, 8, 16), 0.5).tobytes()
    assert a.tobytes() != masks.events(10, masks.ZONEOUT_H, 0, 0, (50, 8, 16), 0.5).tobytes()


@pytest.mark.parametrize("p", [0.0, 0.05, 0.3, 0.5, 0.9, 0.999])
def test_event_rate_matches_p(p):
    n = 200 * 1000
    rate = masks.events(3, masks.RECURRENT_DROPOUT, 0, 0, (200, 1000), p).mean()
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(rate - p) <= 5 * sigma + 1e-12, (rate, p)


def test_uniform_is_uniform():
    u = masks.uniform(4, masks.DROPOUT, 0, 0, (400, 500)).ravel()
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    expected = u.size / 20
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 50, chi2  # 19 degrees of freedom: P(chi2 > 50) ~ 1e-4
    assert u.min() >= 0 and u.max() < 1


@pytest.mark.parametrize(
    "other",
    [
        dict(seed=1),
        dict(stream=masks.ZONEOUT_C),
        dict(layer=1),
        dict(direction=1),
    ],
    ids=lambda d: ",".join(d),
)
def test_streams_look_independent(other):
    """Correlation of two masks' uniforms that differ in one key word, and of
    neighbouring coordinates of one mask, is within noise."""
    base = dict(seed=0, stream=masks.ZONEOUT_H, layer=0, direction=0)
    shape = (100, 20, 50)
    u = masks.uniform(**base, shape=shape)
    v = masks.uniform(**{**base, **other}, shape=shape)
    bound = 5 / np.sqrt(u.size)
    assert abs(np.corrcoef(u.ravel(), v.ravel())[0, 1]) < bound
    for axis in range(3):  # neighbours along each coordinate
        a = np.take(u, range(shape[axis] - 1), axis=axis).ravel()
        b = np.take(u, range(1, shape[axis]), axis=axis).ravel()
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size), axis
    # joint events of two independent masks at p = 0.5: a quarter
    both = ((u < 0.5) & (v < 0.5)).mean()
    assert abs(both - 0.25) < 5 * np.sqrt(0.25 * 0.75 / u.size)


def test_scaled_keep():
    keep = masks.scaled_keep(1, masks.WEIGHT_DROP, 0, 0, (64, 64), 0.25, np.float32)
    assert keep.dtype == np.float32
    assert set(np.unique(keep)) == {np.float32(0), np.float32(1 / 0.75)}
    dropped = masks.events(1, masks.WEIGHT_DROP, 0, 0, (64, 64), 0.25)
    assert np.array_equal(keep == 0, dropped)


@pytest.mark.parametrize(
    "args, error",
    [
        ((-1, 1), ValueError),
        ((2**64, 1), ValueError),
        ((1.0, 1), TypeError),
        ((True, 1), TypeError),
        ((1, -1), ValueError),
    ],
)
def test_bad_key_words(args, error):
    with pytest.raises(error, match="seed|stream"):
        masks.key(*args)


# --------------------------------------------------------------------------
# Against the torch oracle

REG_CASES = {
    "zoneout-h": dict(zoneout=(0.4, 0.0)),
    "zoneout-c": dict(zoneout=(0.0, 0.5)),
    "zoneout-both": dict(zoneout=0.35),
    "recurrent-dropout": dict(recurrent_dropout=0.4),
    "weight-drop": dict(weight_drop=0.5),
    "everything": dict(zoneout=(0.2, 0.4), recurrent_dropout=0.3, weight_drop=0.3, layer=2),
}
LAYOUTS = {
    "plain": {},
    "lengths-reverse": dict(lengths=[3, 0, 2, 4], reverse=True),
    "lengths-batch-first": dict(lengths=[4, 1, 3, 2], batch_first=True),
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("case", REG_CASES, ids=str)
def test_regularisation_matches_torch(case, layout):
    pytest.importorskip("torch")
    options = dict(seed=2024, **REG_CASES[case], **LAYOUTS[layout])
    a = make_arrays(30, 4, 4, 3, 5, norms=(), batch_first=options.get("batch_first", False))
    out = run(a, **options)
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    assert isinstance(grads, ref.Gradients)  # regularisation changes values, not fields
    assert_matches_oracle(a, out, grads, torch_oracle(a, **options))


@pytest.mark.parametrize(
    "shape, options",
    [
        (dict(P=3), dict(zoneout=(0.3, 0.3), recurrent_dropout=0.3, weight_drop=0.3)),
        (
            dict(P=2, peepholes=True),
            dict(zoneout=0.4, weight_drop=0.2, lengths=[2, 4, 1, 3], reverse=True),
        ),
        (
            dict(peepholes=True),
            dict(layer_norm=True, zoneout=(0.1, 0.5), recurrent_dropout=0.25, weight_drop=0.25),
        ),
        (
            dict(P=3),
            dict(
                layer_norm=True,
                zoneout=0.3,
                recurrent_dropout=0.3,
                batch_first=True,
                lengths=[1, 4, 2, 3],
            ),
        ),
    ],
    ids=[
        "projection",
        "projection-peepholes-reverse",
        "layer-norm",
        "layer-norm-projection-batch-first",
    ],
)
def test_regularised_variants_match_torch(shape, options):
    pytest.importorskip("torch")
    options = dict(seed=7, **options)
    norms = NORM_NAMES if options.get("layer_norm") else ()
    a = make_arrays(
        31, 4, 4, 3, 5, norms=norms, batch_first=options.get("batch_first", False), **shape
    )
    out = run(a, **options)
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    assert_matches_oracle(a, out, grads, torch_oracle(a, **options))


@pytest.mark.parametrize("case", ["zoneout-both", "everything"], ids=str)
def test_inference_matches_torch_expectation(case):
    pytest.importorskip("torch")
    options = dict(training=False, **REG_CASES[case], lengths=[3, 4, 1, 2], reverse=True)
    a = make_arrays(32, 4, 4, 3, 5, norms=())
    out = run(a, **options)  # no seed needed at inference
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    assert_matches_oracle(a, out, grads, torch_oracle(a, **options))


# --------------------------------------------------------------------------
# Finite differences (the masks are fixed by the seed)

FD_CASES = {
    "zoneout": (dict(), dict(zoneout=(0.4, 0.5))),
    "dropouts-lengths-reverse": (
        dict(),
        dict(recurrent_dropout=0.3, weight_drop=0.4, lengths=[2, 0, 3], reverse=True),
    ),
    "everything-projection-batch-first": (
        dict(P=2, peepholes=True),
        dict(
            zoneout=0.3, recurrent_dropout=0.3, weight_drop=0.3, batch_first=True, lengths=[3, 1, 2]
        ),
    ),
    "everything-layer-norm": (
        dict(norms=NORM_NAMES),
        dict(layer_norm=True, zoneout=(0.2, 0.4), recurrent_dropout=0.3, weight_drop=0.3, clip=0.9),
    ),
    "inference": (
        dict(),
        dict(zoneout=(0.4, 0.5), recurrent_dropout=0.3, weight_drop=0.3, training=False),
    ),
}


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_regularised_gradients_match_finite_differences(case):
    shape, options = FD_CASES[case]
    options = dict(seed=99, **options)
    shape = {"norms": (), **shape}
    a = make_arrays(33, 3, 3, 2, 3, batch_first=options.get("batch_first", False), **shape)
    out = run(a, **options)
    if options.get("training", True):
        drawn = out.cache.masks
        for name in ("zoneout_h", "zoneout_c"):  # the masks must bite both ways
            if getattr(drawn, name) is not None:
                assert getattr(drawn, name).any() and not getattr(drawn, name).all(), name
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    check_finite_differences(a, grads, lambda: loss_of(run(a, **options), a))


# --------------------------------------------------------------------------
# Definitions: inference, layouts, defaults


def test_zoneout_inference_is_the_expectation_of_training():
    """One step from a given state: h_1 = m h0 + (1 - m) h~ is linear in the mask,
    so the mean over many rows' masks is the inference output."""
    B = 20000
    a = make_arrays(34, 1, 1, 3, 4, norms=())
    for k in ("x", "h0", "c0", "dy", "dh_n", "dc_n"):  # one row repeated B times
        a[k] = np.repeat(a[k], B, axis=-2)
    options = dict(zoneout=(0.3, 0.6))
    train = run(a, seed=1, **options)
    infer = run(a, training=False, **options)
    for field, z in (("h_n", 0.3), ("c_n", 0.6)):
        got, want = getattr(train, field).mean(axis=0), getattr(infer, field)[0]
        spread = np.abs(
            a["h0" if field == "h_n" else "c0"][0]
            - getattr(run(a, training=False, zoneout=0.0), field)[0]
        )
        bound = 5 * np.sqrt(z * (1 - z) / B) * spread + 1e-12
        assert np.all(np.abs(got - want) <= bound), field


def test_dropouts_at_inference_are_the_plain_lstm_bit_for_bit():
    a = make_arrays(35, 4, 3, 2, 4, norms=())
    plain = run(a)
    infer = run(a, recurrent_dropout=0.5, weight_drop=0.5, training=False)
    for field in ("y", "h_n", "c_n"):
        assert getattr(plain, field).tobytes() == getattr(infer, field).tobytes(), field


@pytest.mark.parametrize(
    "options",
    [{}, dict(zoneout=0.0, recurrent_dropout=0.0, weight_drop=0.0, seed=3)],
    ids=["defaults", "zero-rates"],
)
def test_no_regularisation_changes_no_bit(options):
    a = make_arrays(36, 4, 3, 2, 4, norms=())
    plain = ref.forward(*(a[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")))
    out = run(a, **options)
    for field in ("y", "h_n", "c_n"):
        assert getattr(plain, field).tobytes() == getattr(out, field).tobytes(), field
    g0 = ref.backward(plain.cache, a["dy"], a["dh_n"], a["dc_n"])
    g1 = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    for x, y in zip(g0, g1):
        assert x.tobytes() == y.tobytes()


EVERYTHING = dict(seed=123, zoneout=(0.3, 0.4), recurrent_dropout=0.3, weight_drop=0.3, layer=1)


def test_same_masks_whatever_batch_first():
    a = make_arrays(37, 5, 3, 2, 4, norms=())
    out = run(a, lengths=[5, 2, 4], reverse=True, **EVERYTHING)
    b = dict(a, x=a["x"].transpose(1, 0, 2).copy())
    out_bf = run(b, lengths=[5, 2, 4], reverse=True, batch_first=True, **EVERYTHING)
    assert out.y.transpose(1, 0, 2).tobytes() == out_bf.y.tobytes()
    assert out.h_n.tobytes() == out_bf.h_n.tobytes() and out.c_n.tobytes() == out_bf.c_n.tobytes()


def test_masks_are_keyed_by_real_time_not_by_padding():
    """A sequence padded to more steps (lengths = the real length) draws the same
    masks for its real steps: the results are the same bits."""
    a = make_arrays(38, 6, 3, 2, 4, norms=())
    for reverse in (False, True):
        short = dict(a, x=a["x"][:4])
        out_short = run(short, reverse=reverse, **EVERYTHING)
        out_long = run(a, lengths=[4, 4, 4], reverse=reverse, **EVERYTHING)
        assert out_short.y.tobytes() == out_long.y[:4].tobytes()
        assert out_short.h_n.tobytes() == out_long.h_n.tobytes()


def test_seed_layer_and_direction_change_the_masks():
    a = make_arrays(39, 4, 3, 2, 4, norms=())
    y = run(a, **EVERYTHING).y
    assert run(a, **EVERYTHING).y.tobytes() == y.tobytes()  # reproducible
    for change in (dict(seed=124), dict(layer=2)):
        assert run(a, **{**EVERYTHING, **change}).y.tobytes() != y.tobytes(), change
    drawn = run(a, **EVERYTHING).cache.masks
    reversed_masks = run(a, reverse=True, **EVERYTHING).cache.masks
    assert drawn.h_keep.tobytes() != reversed_masks.h_keep.tobytes()


def test_float32_masks_are_those_of_float64():
    a = make_arrays(40, 4, 3, 2, 4, norms=())
    a32 = {k: None if v is None else v.astype(np.float32) for k, v in a.items()}
    m64, m32 = run(a, **EVERYTHING).cache.masks, run(a32, **EVERYTHING).cache.masks
    assert np.array_equal(m64.zoneout_h, m32.zoneout_h) and np.array_equal(
        m64.zoneout_c, m32.zoneout_c
    )
    assert np.array_equal(m64.h_keep == 0, m32.h_keep == 0)
    assert m32.w_hh_keep.dtype == np.float32


# --------------------------------------------------------------------------
# Dropout between layers


def test_dropout_between_layers():
    rng = np.random.default_rng(41)
    y = rng.standard_normal((6, 5, 8))
    out = ref.dropout(y, 0.25, seed=3, layer=1)
    keep = masks.scaled_keep(3, masks.DROPOUT, 1, 0, y.shape, 0.25, np.float64)
    assert out.tobytes() == (y * keep).tobytes()
    assert 0.1 < (out == 0).mean() < 0.4
    batch_first = ref.dropout(y.transpose(1, 0, 2), 0.25, seed=3, layer=1, batch_first=True)
    assert batch_first.tobytes() == np.ascontiguousarray(out.transpose(1, 0, 2)).tobytes()
    assert ref.dropout(y, 0.25, training=False).tobytes() == y.tobytes()
    assert ref.dropout(y, 0.0, seed=3).tobytes() == y.tobytes()
    # linear: its gradient is the same call on dy
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(
        np.sum(out * dy), np.sum(y * ref.dropout(dy, 0.25, seed=3, layer=1)), rtol=1e-13
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(p=1.0, seed=1), ValueError, r"\bp\b"),
        (dict(p=-0.1, seed=1), ValueError, r"\bp\b"),
        (dict(p=0.5), ValueError, "seed"),
        (dict(p=0.5, seed=1, y=np.ones((2, 3))), ValueError, r"\by\b"),
    ],
)
def test_bad_dropout_arguments(kwargs, error, match):
    y = kwargs.pop("y", np.ones((2, 3, 4)))
    with pytest.raises(error, match=match):
        ref.dropout(y, **kwargs)


# --------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(zoneout=1.0, seed=1), ValueError, r"zoneout must be in \[0, 1\)"),
        (dict(zoneout=-0.1, seed=1), ValueError, "zoneout"),
        (dict(zoneout=float("nan"), seed=1), ValueError, "zoneout"),
        (dict(zoneout=(0.1, 1.5), seed=1), ValueError, r"zoneout\[1\]"),
        (dict(zoneout=(0.1,), seed=1), ValueError, "zoneout"),
        (dict(zoneout="0.1", seed=1), TypeError, "zoneout"),
        (dict(recurrent_dropout=1.0, seed=1), ValueError, "recurrent_dropout"),
        (dict(recurrent_dropout=-1e-9, seed=1), ValueError, "recurrent_dropout"),
        (dict(weight_drop=1.0, seed=1), ValueError, "weight_drop"),
        (dict(weight_drop=None, seed=1), TypeError, "weight_drop"),
        (dict(zoneout=0.1), ValueError, "seed"),
        (dict(weight_drop=0.1, seed=-1), ValueError, "seed"),
        (dict(weight_drop=0.1, seed=2**64), ValueError, "seed"),
        (dict(weight_drop=0.1, seed=1.5), TypeError, "seed"),
        (dict(weight_drop=0.1, seed=1, layer=-1), ValueError, "layer"),
        (dict(weight_drop=0.1, seed=1, layer=1.0), TypeError, "layer"),
        (dict(weight_drop=0.1, seed=1, training="yes"), TypeError, "training"),
    ],
    ids=lambda v: str(v)[:40] if not isinstance(v, dict) else ",".join(map(str, v.values()))[:40],
)
def test_bad_regularisation_arguments_name_the_argument(options, error, match):
    a = make_arrays(42, 2, 2, 3, 4, norms=())
    with pytest.raises(error, match=match):
        ref.forward(**{k: a[k] for k in NAMES if k not in NORM_NAMES}, **options)

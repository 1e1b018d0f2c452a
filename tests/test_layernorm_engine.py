"""The engine's LayerNorm LSTM (rust/src/layernorm.rs; docs/variants.md,
'LayerNorm LSTM') against the NumPy reference.

- y, h_n, c_n, the cache's gates and cells and every gradient (the six of the
  normalisations included) against the reference: with and without each of
  the six gains and biases, with every variant of tests/test_projection.py
  (peepholes, clip, input_forget, no forget gate, activations), with and
  without a projection, every setting (lengths incl. 0, reverse, batch_first,
  h0/c0), zoneout (training and inference), recurrent dropout and weight
  drop, both dtypes, every ISA;
- T = 0, B = 0, every length 0; the cell API; prepared weights;
- the same bits for 1, 2 and 3 threads and either split;
- float64 central differences of the engine's own forward for the gradients
  of the normalisations' parameters;
- bad arguments raise the reference's errors, naming the argument.
"""

from __future__ import annotations

import lstm_fast
import numpy as np
import pytest
from lstm_fast import _checks, reference

from tests.helpers import (
    BAD_LAYER_NORM,
    GRADIENTS,
    assert_close,
    assert_engine_matches_reference,
    assert_same_bits,
    assert_same_bits_for_thread_counts,
    assert_same_hashes,
    bad_option_id,
    lstm_problem,
    ref,
)
from tests.helpers import float64_values as _f64
from tests.helpers import forward_backward as _run
from tests.test_projection import SETTINGS, VARIANTS

NAMES = _checks.LAYER_NORM_NAMES
NORM_GRADIENTS = ("dw_ln_ih", "db_ln_ih", "dw_ln_hh", "db_ln_hh", "dw_ln_c", "db_ln_c")


def _problem(variant: dict, setting: tuple, dtype, *, projection: bool = True, norms=NAMES,
             seed: int = 0):  # fmt: skip
    """Arrays, options (layer norm, the variant, the setting) and seeds; without
    ``projection`` P = H and no w_hr."""
    if not projection:
        setting = (*setting[:4], setting[3], *setting[5:])
    return lstm_problem(
        variant, setting, dtype, seed, projection=projection, layer_norm=True, norms=norms
    )


def _assert_matches_reference(arrays, options, seeds, dtype, *, factor=1.0):
    out, g, r = assert_engine_matches_reference(
        arrays, options, seeds, dtype, GRADIENTS + NORM_GRADIENTS, factor=factor
    )
    assert type(g) is lstm_fast.LayerNormGradients
    assert type(g) is type(r)
    return out, g


# ---------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_with_projection_matches_reference(isa, dtype, name, setting):
    arrays, options, seeds = _problem(VARIANTS[name], SETTINGS[setting], dtype)
    _assert_matches_reference(arrays, options, seeds, dtype)


@pytest.mark.parametrize("setting", ["basic", "lengths-reverse-h0c0", "batch_first-lengths",
                                     "B1-P1", "many-rows"])  # fmt: skip
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_projection_matches_reference(isa, dtype, name, setting):
    arrays, options, seeds = _problem(VARIANTS[name], SETTINGS[setting], dtype, projection=False)
    _assert_matches_reference(arrays, options, seeds, dtype)


NORM_SETS = {
    "none": (),
    **{name: (name,) for name in NAMES},
    "gains": ("w_ln_ih", "w_ln_hh", "w_ln_c"),
    "biases": ("b_ln_ih", "b_ln_hh", "b_ln_c"),
    "all": NAMES,
}


@pytest.mark.parametrize("norms", NORM_SETS)
@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_gain_and_bias_alone(isa, dtype, projection, norms):
    setting = SETTINGS["lengths-reverse-h0c0"]
    arrays, options, seeds = _problem(
        {"peepholes": True}, setting, dtype, projection=projection, norms=NORM_SETS[norms]
    )
    _, g = _assert_matches_reference(arrays, options, seeds, dtype)
    for name, field in zip(NAMES, NORM_GRADIENTS):
        assert (getattr(g, field) is None) == (name not in NORM_SETS[norms]), field


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_biases_and_seeds(dtype):
    arrays, options, seeds = _problem({}, SETTINGS["basic"], dtype, projection=False)
    arrays.update(b_ih=None, b_hh=None)
    seeds.update(dh_n=None, dc_n=None)
    _, g = _assert_matches_reference(arrays, options, seeds, dtype)
    assert g.db_ih is None and g.db_hh is None


def test_bias_gradients_are_separate_arrays():
    arrays, options, seeds = _problem({}, SETTINGS["basic"], np.float64, projection=False)
    _, g = _run(lstm_fast, arrays, options, seeds)
    biases = [g.db_ih, g.db_hh, g.db_ln_ih, g.db_ln_hh]
    for k, a in enumerate(biases):
        assert_same_bits(a, biases[0])
        for b in biases[k + 1 :]:
            assert not np.shares_memory(a, b)


REG = {
    "wd": {"weight_drop": 0.3, "seed": 11},
    "rd": {"recurrent_dropout": 0.3, "seed": 11},
    "rd+wd": {"recurrent_dropout": 0.25, "weight_drop": 0.45, "seed": 6, "layer": 3},
    "inference": {"recurrent_dropout": 0.4, "weight_drop": 0.3, "training": False},
    "zoneout": {"zoneout": 0.3, "seed": 11},
    "zoneout-h": {"zoneout": (0.4, 0.0), "seed": 5, "layer": 2},
    "zoneout-c": {"zoneout": (0.0, 0.35), "seed": 7},
    "zoneout+rd+wd": {
        "zoneout": (0.2, 0.3),
        "recurrent_dropout": 0.25,
        "weight_drop": 0.3,
        "seed": 9,
    },
    "zoneout-inference": {"zoneout": (0.3, 0.15), "recurrent_dropout": 0.2, "training": False},
}


@pytest.mark.parametrize("reg", REG)
@pytest.mark.parametrize("name", ["plain-gates", "everything", "peep+coupled"])
@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_regularisation_matches_reference(isa, dtype, projection, name, reg):
    arrays, options, seeds = _problem(
        VARIANTS[name], SETTINGS["lengths-reverse-h0c0"], dtype, projection=projection
    )
    options.update(REG[reg])
    _assert_matches_reference(arrays, options, seeds, dtype)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zoneout_every_setting_matches_reference(isa, dtype, setting):
    """Zoneout of h and c (h P wide with the projection) with lengths, reverse,
    batch_first, h0/c0, in training and at inference."""
    arrays, options, seeds = _problem(VARIANTS["everything"], SETTINGS[setting], dtype)
    for training in (True, False):
        options.update(zoneout=(0.35, 0.25), seed=4, training=training)
        _assert_matches_reference(arrays, options, seeds, dtype)


def test_zoneout_state_and_cache():
    """y_t is the state after zoneout; the cache's c is the candidate c~_t,
    which zoneout of c keeps apart from the state (as the reference's)."""
    arrays, options, seeds = _problem({}, SETTINGS["basic"], np.float64, projection=False)
    options.update(zoneout=(0.5, 0.5), seed=2)
    out = lstm_fast.forward(*arrays.values(), **options)
    r_out = ref.forward(*arrays.values(), **options)
    assert_close(out.y, r_out.y, np.float64, what="y")
    assert_close(out.cache.c, r_out.cache.c, np.float64, what="c")
    plain = lstm_fast.forward(*arrays.values(), **{**options, "zoneout": 0.0})
    assert not np.allclose(out.y, plain.y)
    # Half the units zone out at some step: some keep their previous value.
    y = out.y
    assert np.any(y[1:] == y[:-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "T, B, lengths", [(0, 3, None), (4, 0, None), (3, 2, [0, 0]), (3, 3, [0, 3, 0])]
)
def test_empty_shapes_and_zero_lengths(dtype, T, B, lengths):
    setting = (T, B, 3, 5, 2, lengths, True, False, True)
    for projection in (False, True):
        arrays, options, seeds = _problem({}, setting, dtype, projection=projection)
        out, g = _assert_matches_reference(arrays, options, seeds, dtype)
        if lengths is not None and not any(lengths):
            assert_same_bits(out.h_n, arrays["h0"])
            assert_same_bits(out.c_n, arrays["c0"])
            assert not np.any(out.y)
            for field in ("dw_ih", "dw_hh", "dw_ln_ih", "db_ln_c"):
                assert not np.any(getattr(g, field)), field


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["x", "c0"])
@pytest.mark.parametrize("need_cache", [False, True])
def test_non_finite_inputs_give_the_references_nans(dtype, bad, where, need_cache):
    # An infinity or a NaN in x (every element of that row's s_x non-finite)
    # or in one unit of c0 (one infinite c_t among finite ones): the
    # normalisation is NaN in every element, not a finite 1/sigma from a
    # variance clamped at zero, and the NaN spreads as in the reference.
    rng = np.random.default_rng(5)
    T, B, I, H = 4, 3, 5, 6
    x = rng.standard_normal((T, B, I)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype)
    t0 = 1 if where == "x" else 0
    if where == "x":
        x[1, 2, 3] = bad
    else:
        c0[2, 3] = bad
    w = {
        "w_ih": rng.standard_normal((4 * H, I)).astype(dtype) / 3,
        "w_hh": rng.standard_normal((4 * H, H)).astype(dtype) / 3,
        "b_ih": rng.standard_normal(4 * H).astype(dtype),
        "c0": c0,
    }
    ln = {"layer_norm": True, "w_ln_c": np.full(H, 0.7, dtype)}
    out = lstm_fast.forward(x, **w, **ln, need_cache=need_cache)
    want = reference.forward(x, **w, **ln)
    assert np.isnan(out.y[t0:, 2]).all()
    for got, expected in zip(out[:3], want[:3]):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        finite = ~np.isnan(expected)
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# The cell API and prepared weights


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("name", ["plain-gates", "everything", "peep+coupled", "no_forget_gate"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cell_matches_reference(isa, dtype, name, projection):
    setting = (1, 4, 3, 9, 4, None, False, False, True)
    arrays, options, seeds = _problem(VARIANTS[name], setting, dtype, projection=projection)
    for k in ("batch_first", "reverse", "lengths"):
        options.pop(k)
    args = (arrays["x"][0], arrays["h0"], arrays["c0"], arrays["w_ih"], arrays["w_hh"],
            arrays["b_ih"], arrays["b_hh"])  # fmt: skip
    mine = lstm_fast.cell_forward(*args, **options)
    theirs = ref.cell_forward(*_f64(dict(enumerate(args))).values(), **_f64(options))
    for k in (0, 1):
        assert mine[k].dtype == dtype
        assert_close(mine[k], theirs[k], dtype)
    for gate in "ifgoc":
        assert_close(getattr(mine.cache, gate), getattr(theirs.cache, gate), dtype, what=gate)
    g = lstm_fast.cell_backward(mine.cache, seeds["dh_n"], seeds["dc_n"])
    r = ref.cell_backward(theirs.cache, seeds["dh_n"].astype(np.float64),
                          seeds["dc_n"].astype(np.float64))  # fmt: skip
    assert type(g) is lstm_fast.CellLayerNormGradients and type(r) is type(g)
    for field in g._fields:
        a, b = getattr(g, field), getattr(r, field)
        if b is None:
            assert a is None, field
        else:
            assert_close(a, b, dtype, what=field)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prepared_weights_take_layer_norm(dtype):
    arrays, options, seeds = _problem(
        {"peepholes": True}, SETTINGS["lengths-reverse-h0c0"], dtype, projection=False
    )
    out, g = _run(lstm_fast, arrays, options, seeds)
    prepared = lstm_fast.prepare_weights(
        arrays["w_ih"], arrays["w_hh"], arrays["b_ih"], arrays["b_hh"]
    )
    p_out = prepared.forward(arrays["x"], arrays["h0"], arrays["c0"], **options)
    for a, b in zip(p_out[:3], out[:3]):
        assert_same_bits(a, b)
    p_g = lstm_fast.backward(p_out.cache, *seeds.values(), flow=True)
    for field in GRADIENTS + NORM_GRADIENTS:
        if field not in ("db_ih", "db_hh"):  # the prepared weights keep b_ih + b_hh
            assert_same_bits(getattr(p_g, field), getattr(g, field), field)
    cell = prepared.cell_forward(
        arrays["x"][0], arrays["h0"], arrays["c0"], layer_norm=True, w_ln_c=options["w_ln_c"]
    )
    theirs = ref.cell_forward(
        arrays["x"][0], arrays["h0"], arrays["c0"], arrays["w_ih"], arrays["w_hh"],
        arrays["b_ih"], arrays["b_hh"], layer_norm=True, w_ln_c=options["w_ln_c"],
    )  # fmt: skip
    assert_close(cell.h_new, theirs.h_new, dtype)
    with pytest.raises(ValueError, match="w_ln_ih.*layer_norm=True"):
        prepared.forward(arrays["x"], w_ln_ih=options["w_ln_ih"])


def test_types_are_shared_with_the_reference():
    assert lstm_fast.LayerNormGradients is ref.LayerNormGradients
    assert lstm_fast.CellLayerNormGradients is ref.CellLayerNormGradients
    assert ref.LayerNormGradients._fields[:10] == lstm_fast.functional.VariantGradients._fields


def test_cache_describes_itself():
    arrays, options, seeds = _problem({"clip": 0.5}, SETTINGS["basic"], np.float32)
    out = lstm_fast.forward(*arrays.values(), **options)
    assert isinstance(out.cache, lstm_fast.functional.LayerNormCache)
    assert out.cache.z is not None and out.cache.z.shape == (5, 3, 28)
    assert out.cache.nbytes > out.cache.c.nbytes
    assert "lstm_fast.Cache" in repr(out.cache)
    assert lstm_fast.forward(*arrays.values(), need_cache=False, **options).cache is None


def test_cache_rebuilds_gates_and_pre_activations():
    # The cache keeps no gates nor pre-activations (docs/variants.md, 'In the
    # engine'): with clip (whose backward needs z) it is no larger than
    # without; i, f, g, o and z are rebuilt at each access, read-only, the
    # same bits each time.
    arrays, options, _ = _problem({"clip": 0.5}, SETTINGS["basic"], np.float32)
    clipped = lstm_fast.forward(*arrays.values(), **options).cache
    options.pop("clip")
    plain = lstm_fast.forward(*arrays.values(), **options).cache
    assert plain.z is None and clipped.z is not None
    assert clipped.nbytes == plain.nbytes
    for name in ("i", "f", "g", "o", "z"):
        first, again = getattr(clipped, name), getattr(clipped, name)
        assert not first.flags.writeable
        assert_same_bits(first, again)


# ---------------------------------------------------------------------------
# Gradients of the normalisations: central differences of the engine itself


@pytest.mark.parametrize("projection", [False, True])
def test_gradients_match_central_differences(projection):
    setting = (4, 3, 3, 5, 2, [4, 2, 3], True, False, True)
    arrays, options, seeds = _problem(
        {"peepholes": True}, setting, np.float64, projection=projection
    )
    options["layer_norm_eps"] = 1e-3

    def loss(arrays, options):
        out = lstm_fast.forward(*arrays.values(), need_cache=False, **options)
        return float(
            np.sum(out.y * seeds["dy"]) + np.sum(out.h_n * seeds["dh_n"])
            + np.sum(out.c_n * seeds["dc_n"])
        )  # fmt: skip

    _, g = _run(lstm_fast, arrays, options, seeds)
    rng = np.random.default_rng(5)
    step = 1e-6
    checks = [(options, name, getattr(g, field)) for name, field in zip(NAMES, NORM_GRADIENTS)]
    checks += [(arrays, "x", g.dx), (arrays, "w_hh", g.dw_hh), (arrays, "c0", g.dc0)]
    for container, key, grad in checks:
        base = container[key]
        for _ in range(5):
            index = tuple(int(rng.integers(n)) for n in base.shape)
            values = []
            for sign in (1, -1):
                moved = base.copy()
                moved[index] += sign * step
                changed = dict(container, **{key: moved})
                values.append(
                    loss(changed, options) if container is arrays else loss(arrays, changed)
                )
            numeric = (values[0] - values[1]) / (2 * step)
            assert abs(numeric - grad[index]) <= 1e-6 * max(1.0, abs(numeric)), (key, index)


# ---------------------------------------------------------------------------
# Threads and splits: the same bits

_THREAD_SCRIPT = r"""
from tests.test_layernorm_engine import SETTINGS, VARIANTS, _problem, _run
for isa in lstm_fast.available_isas():
    lstm_fast._set_isa(isa)
    for name in ("plain-gates", "everything"):
        for dtype in (np.float32, np.float64):
            for setting in ("many-rows", "lengths-reverse-h0c0", "P>H"):
                for projection in (False, True):
                    arrays, options, seeds = _problem(
                        VARIANTS[name], SETTINGS[setting], dtype, projection=projection, seed=3
                    )
                    options.update(recurrent_dropout=0.2, weight_drop=0.1, seed=8)
                    if projection:
                        options.update(zoneout=(0.3, 0.2))
                    fwd, g = _run(lstm_fast, arrays, options, seeds)
                    h = digest(*fwd[:3], *g[:9], *g.flow, *g[10:])
                    key = f"{{isa}}/{{name}}/{{np.dtype(dtype).name}}/{{setting}}/{{projection}}"
                    out[key] = h
"""


def test_same_bits_for_any_thread_count_and_split():
    assert_same_hashes(_THREAD_SCRIPT)


# H = 33: rows of partial vectors; H = 32: whole vectors on every ISA. With 40
# rows, 2 and 3 threads run the forward in chunks of the batch (one a thread).
@pytest.mark.parametrize("hidden", [33, 32])
@pytest.mark.parametrize("zoneout", [0.0, (0.3, 0.2)])
def test_same_bits_for_any_thread_count_in_process(threads, zoneout, hidden):
    lengths = [int(n) for n in np.random.default_rng(4).integers(0, 8, 40)]
    setting = (7, 40, 4, hidden, 9, lengths, True, False, True)
    arrays, options, seeds = _problem(VARIANTS["everything"], setting, np.float32)
    options.update(zoneout=zoneout, seed=5)

    def run():
        out, g = _run(lstm_fast, arrays, options, seeds)
        return [*out[:3], *g[:9], *g.flow, *g[10:]]

    assert_same_bits_for_thread_counts(run)


# Without a cache, once s_x of the whole call (T*B rows of 4H) passes 16 MiB
# (LAYER_NORM_WHOLE_PRODUCT_BYTES in rust/src/tuning.rs),
# each chunk makes its input products a block of whole steps at a time inside
# its loop (256 rows: 51 steps of 5 rows, 6 of a 40-row batch, 19 of a 13-row
# chunk); with a cache every row's at once into the cache. Rows that end
# inside and across blocks, in every order: the same bits both ways, at any
# thread count.
@pytest.mark.parametrize("batch", [5, 40])
@pytest.mark.parametrize("order", [{}, {"reverse": True}, {"batch_first": True}])
def test_inference_blocks_give_the_bits_of_the_cached_forward(threads, order, batch):
    rng = np.random.default_rng(7)
    T, I, H = 17 * 1024 // batch, 6, 64  # s_x: 17 MiB
    lengths = [T, 13, 0, T // 2 + 1, 12] if batch == 5 else list(rng.integers(0, T + 1, batch))
    lengths[-1] = T
    f32 = np.float32
    shape = (batch, T, I) if order.get("batch_first") else (T, batch, I)
    x = rng.standard_normal(shape).astype(f32)
    shapes = ((4 * H, I), (4 * H, H), (4 * H,))
    weights = [rng.uniform(-0.3, 0.3, shape).astype(f32) for shape in shapes]
    norms = {
        "w_ln_ih": rng.uniform(0.5, 1.5, 4 * H).astype(f32),
        "b_ln_c": rng.uniform(-0.5, 0.5, H).astype(f32),
    }
    h0 = rng.standard_normal((batch, H)).astype(f32)

    def run():
        out = []
        for need_cache in (False, True):
            f = lstm_fast.forward(
                x, *weights, None, h0, None, lengths=lengths,
                layer_norm=True, need_cache=need_cache, **order, **norms,
            )  # fmt: skip
            out.append(f[:3])
        for a, b in zip(*out):
            assert_same_bits(a, b)
        return out[0]

    assert_same_bits_for_thread_counts(run)


# The blocks with prepared weights (their kept panels of w_ih, bfloat16's
# rounded), H not a multiple of any ISA's lanes, a projection and peepholes: a
# call past 16 MiB of s_x against the same call with a cache (float32), or
# against a short call over its first steps (bfloat16, which has no cache).
@pytest.mark.parametrize("weight_dtype", [None, "bfloat16"])
def test_inference_blocks_with_prepared_weights(threads, weight_dtype):
    rng = np.random.default_rng(8)
    T, B, I, H, P = 2200, 8, 5, 61, 7  # s_x: 2200 * 8 * 244 * 4 bytes, 16.4 MiB
    f32 = np.float32
    x = rng.standard_normal((T, B, I)).astype(f32)
    w_ih, w_hh = (rng.uniform(-0.3, 0.3, (4 * H, n)).astype(f32) for n in (I, P))
    b_ih = rng.uniform(-0.3, 0.3, 4 * H).astype(f32)
    w_hr = rng.uniform(-0.3, 0.3, (P, H)).astype(f32)
    options = {
        "layer_norm": True,
        "peepholes": rng.uniform(-0.3, 0.3, 3 * H).astype(f32),
        "w_ln_hh": rng.uniform(0.5, 1.5, 4 * H).astype(f32),
        "b_ln_ih": rng.uniform(-0.5, 0.5, 4 * H).astype(f32),
        "w_ln_c": rng.uniform(0.5, 1.5, H).astype(f32),
        "lengths": [T, 5, T - 1, 0, 300, T, 1, 1999],
    }
    prepared = lstm_fast.prepare_weights(w_ih, w_hh, b_ih, w_hr=w_hr, weight_dtype=weight_dtype)

    def run():
        blocks = prepared.forward(x, need_cache=False, **options)
        if weight_dtype is None:
            other = prepared.forward(x, need_cache=True, **options)
            assert_same_bits(blocks.y, other.y)
            assert_same_bits(blocks.h_n, other.h_n)
            assert_same_bits(blocks.c_n, other.c_n)
        else:
            short = {**options, "lengths": [min(n, 900) for n in options["lengths"]]}
            other = prepared.forward(x[:900], need_cache=False, **short)  # 6.7 MiB
            assert_same_bits(blocks.y[:900], other.y)
        return blocks[:3]

    assert_same_bits_for_thread_counts(run)


# ---------------------------------------------------------------------------
# Bad arguments: the reference's errors


@pytest.mark.parametrize("options, error, match", BAD_LAYER_NORM, ids=bad_option_id)
def test_bad_arguments_raise_the_references_errors(options, error, match):
    rng = np.random.default_rng(2)
    x, w_ih, w_hh = rng.standard_normal((2, 2, 3)), np.ones((16, 3)), np.ones((16, 4))
    h, c = np.zeros((2, 4)), np.zeros((2, 4))
    messages = []
    for module in (lstm_fast, ref):
        with pytest.raises(error, match=match) as seq_error:
            module.forward(x, w_ih, w_hh, **options)
        with pytest.raises(error, match=match) as cell_error:
            module.cell_forward(x[0], h, c, w_ih, w_hh, **options)
        messages.append((str(seq_error.value), str(cell_error.value)))
    assert messages[0] == messages[1], options  # the reference's very messages


def test_float16_and_mixed_dtypes_follow_the_rules():
    arrays, options, _ = _problem({}, SETTINGS["basic"], np.float32, projection=False, norms=())
    out = lstm_fast.forward(*arrays.values(), **options, w_ln_c=np.ones(7, np.float16))
    assert out.y.dtype == np.float32
    out = lstm_fast.forward(*arrays.values(), **options, w_ln_c=np.ones(7, np.float64))
    assert out.y.dtype == np.float64

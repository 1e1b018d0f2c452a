"""bf16 inference (``weight_dtype="bfloat16"``): weights rounded to bfloat16, state
and sums in float32.

The main check: bf16 inference gives, bit for bit, what the float32 engine gives on
the weights rounded to bfloat16 (bfloat16 widens to float32 exactly, and each
output keeps the same FMA chain), on every ISA, for any thread count and split,
for every variant and the cell and layer APIs. The rounding itself is checked
against an independent NumPy implementation (nearest of the two neighbours, ties
to even) and against PyTorch's when it is installed; the error against float32
weights against a bound derived from the rounding (see ``_one_step_bound``).
"""

from __future__ import annotations

import math

import lstm_fast
import numpy as np
import pytest
from lstm_fast._checks import regularisation
from lstm_fast.functional import bfloat16_round

from tests.conftest import BF16_DOT_ISAS
from tests.helpers import assert_same_bits, assert_same_hashes

# ---------------------------------------------------------------------------
# The rounding


def _bits(a: np.ndarray) -> np.ndarray:
    out = np.empty(a.shape, np.uint16)
    lstm_fast._core.bfloat16_bits(np.ascontiguousarray(a, np.float32), out)
    return out


def _numpy_rne(a: np.ndarray) -> np.ndarray:
    """bfloat16 bits of float32 ``a`` by value: the nearer of the two bfloat16
    neighbours (exact in float64), ties to the even one, overflow past the largest
    bfloat16 by half an ulp or more to inf; NaN to a quiet NaN of the same sign."""
    a = np.ascontiguousarray(a, np.float32).ravel()
    out = np.empty(a.shape, np.uint16)
    for n, x in enumerate(a):
        bits = int(x.view(np.uint32))
        if np.isnan(x):
            out[n] = (bits >> 16) | 0x40
            continue
        low = bits >> 16  # the neighbour towards zero (truncation)
        if np.isinf(x) or bits & 0xFFFF == 0:
            out[n] = low
            continue
        high = low + 1  # away from zero; 0x7f80 | sign is inf

        def value(b: int, sign: float = float(x)) -> float:
            if b & 0x7FFF == 0x7F80:  # past the largest finite: 2^128 unbounded
                return math.copysign(2.0**128, sign)
            return float(np.array(b << 16, np.uint32).view(np.float32))

        d_low, d_high = abs(float(x) - value(low)), abs(float(x) - value(high))
        if d_low < d_high or (d_low == d_high and low % 2 == 0):
            out[n] = low
        else:
            out[n] = high
    return out.reshape(-1)


def _special_values() -> np.ndarray:
    f = np.float32
    tiny = np.finfo(f).tiny
    values = [
        0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan,
        np.finfo(f).max, -np.finfo(f).max, tiny, -tiny, tiny / 2, 1e-45, -1e-45,
        3.3895314e38, 3.3961776e38, 3.4028235e38,  # around bf16's largest, its overflow
    ]  # fmt: skip
    # Exact ties between two bfloat16 values (bit 15 set, lower bits clear), with an
    # even and an odd lower neighbour, in normal and subnormal ranges, both signs.
    for base in (0x3F80, 0x3F81, 0x0001, 0x0002, 0x007F, 0x7F7E, 0x7F7F, 0x4049):
        for sign in (0, 0x8000):
            b = base | sign
            for low in (0x8000, 0x7FFF, 0x8001, 0x0001, 0xFFFF):
                values.append(np.array((b << 16) | low, np.uint32).view(f))
    # NaNs whose payload lies in the dropped half only, and signalling ones.
    for nan in (0x7F800001, 0xFF800001, 0x7F80FFFF, 0x7FC00000, 0x7FA00000):
        values.append(np.array(nan, np.uint32).view(f))
    return np.array(values, f)


def test_rounding_matches_numpy_ties_to_even():
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate([_special_values(), random_bits.view(np.float32)])
    got, want = _bits(values), _numpy_rne(values)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(hex(int(values.view(np.uint32)[k])), hex(got[k]), hex(want[k]))
                           for k in bad[:5]]  # fmt: skip


def test_rounding_keeps_nan_and_inf():
    specials = np.array([np.inf, -np.inf, np.nan], np.float32)
    nan_low_payload = np.array([0x7F800001, 0xFF800001], np.uint32).view(np.float32)
    r = bfloat16_round(np.concatenate([specials, nan_low_payload]))
    assert r[0] == np.inf and r[1] == -np.inf
    assert np.isnan(r[2:]).all()
    assert np.signbit(r[4]) and not np.signbit(r[3])
    # Overflow: half an ulp past bf16's largest finite value rounds to inf.
    big = np.array([3.3961776e38, -3.3961776e38, 3.38953139e38], np.float32)
    r = bfloat16_round(big)
    assert r[0] == np.inf and r[1] == -np.inf and np.isfinite(r[2])


def test_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            _special_values()[~np.isnan(_special_values())],
            rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        ]
    )
    values = values[~np.isnan(values)]
    want = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(_bits(values), want)


def test_round_is_idempotent_and_exact_back():
    x = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    r = bfloat16_round(x)
    assert_same_bits(bfloat16_round(r), r)
    assert (r.view(np.uint32) & 0xFFFF == 0).all()
    assert np.abs(r - x).max() <= 2.0**-8 * np.abs(x).max()


# ---------------------------------------------------------------------------
# Bitwise equal to float32 on the rounded weights


def _weights(rng, inp, hidden, proj=0, scale=1.0):
    k = scale / np.sqrt(hidden)
    p = proj or hidden
    w = {
        "w_ih": rng.uniform(-k, k, (4 * hidden, inp)).astype(np.float32),
        "w_hh": rng.uniform(-k, k, (4 * hidden, p)).astype(np.float32),
        "b_ih": rng.uniform(-k, k, 4 * hidden).astype(np.float32),
        "b_hh": rng.uniform(-k, k, 4 * hidden).astype(np.float32),
    }
    if proj:
        w["w_hr"] = rng.uniform(-k, k, (proj, hidden)).astype(np.float32)
    return w


def _rounded(w):
    return {k: bfloat16_round(v) if k.startswith("w_") else v for k, v in w.items()}


VARIANTS = {
    "plain": {},
    "peepholes": {"peepholes": "make"},
    "clip": {"clip": 0.7},
    "input_forget": {"input_forget": True},
    "no_forget_gate": {"forget_gate": False},
    "activations": {"activations": [("HardSigmoid", 0.3, 0.5), "Softsign", "Elu"]},
    "projection": {"proj": 7},
    # Regularisation at inference (training=False): zoneout mixes each state with
    # the previous one, z * prev + (1 - z) * new; the dropouts are the identity.
    "zoneout_h": {"zoneout": (0.3, 0.0)},
    "zoneout_c": {"zoneout": (0.0, 0.4)},
    "zoneout": {"zoneout": 0.25},
    "zoneout_peepholes_clip": {"zoneout": (0.2, 0.6), "peepholes": "make", "clip": 0.8},
    "zoneout_projection": {"zoneout": (0.35, 0.15), "proj": 7},
    "zoneout_dropouts": {"zoneout": (0.1, 0.2), "recurrent_dropout": 0.3, "weight_drop": 0.4},
}
REGULARISATION = ("zoneout", "recurrent_dropout", "weight_drop")

# (T, B, I, H, options): B = 1 (the batch-1 kernel), larger batches, H not a
# multiple of the vector width, lengths / reverse / batch_first / h0, c0.
SHAPES = [
    (6, 1, 5, 20, {}),
    (5, 1, 9, 70, {"reverse": True, "state": True}),
    (4, 7, 3, 33, {"lengths": [4, 0, 2, 3, 4, 1, 4]}),
    (5, 10, 12, 64, {"batch_first": True, "state": True}),
    (3, 9, 4, 17, {"reverse": True, "lengths": [1, 3, 3, 2, 0, 3, 3, 1, 2]}),
]


def _case(variant, shape, seed):
    T, B, inp, H, options = shape
    rng = np.random.default_rng(seed)
    opts = dict(VARIANTS[variant])
    proj = opts.pop("proj", 0)
    w = _weights(rng, inp, H, proj)
    if opts.get("peepholes") == "make":
        opts["peepholes"] = rng.uniform(-0.5, 0.5, 3 * H).astype(np.float32)
    P = proj or H
    batch_first = options.get("batch_first", False)
    x = rng.standard_normal((B, T, inp) if batch_first else (T, B, inp)).astype(np.float32)
    call = {"batch_first": batch_first, "reverse": options.get("reverse", False), **opts}
    if "lengths" in options:
        call["lengths"] = np.array(options["lengths"])
    if options.get("state"):
        call["h0"] = rng.standard_normal((B, P)).astype(np.float32)
        call["c0"] = rng.standard_normal((B, H)).astype(np.float32)
    return x, w, call


def _results(x, w, call):
    """bf16 results three ways (one-off, prepared, cell over the first step) and
    the float32 engine's on the rounded weights."""
    call = dict(call)
    h0, c0 = call.pop("h0", None), call.pop("c0", None)
    peepholes, w_hr = call.pop("peepholes", None), w.get("w_hr")
    reg = {k: call.pop(k) for k in REGULARISATION if k in call}
    if reg:
        reg["training"] = False
    mats = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    r = _rounded(w)
    got = lstm_fast.forward(x, *mats, h0, c0, weight_dtype="bfloat16", need_cache=False, w_hr=w_hr,
                            peepholes=peepholes, **call, **reg)  # fmt: skip
    want = lstm_fast.forward(x, r["w_ih"], r["w_hh"], r["b_ih"], r["b_hh"], h0, c0,
                             need_cache=False, w_hr=r.get("w_hr"), peepholes=peepholes,
                             **call, **reg)  # fmt: skip
    pw = lstm_fast.prepare_weights(*mats, peepholes=peepholes, w_hr=w_hr, weight_dtype="bf16")
    variant = {k: v for k, v in call.items() if k not in ("batch_first", "reverse", "lengths")}
    place = dict(batch_first=call["batch_first"], reverse=call["reverse"],
                 lengths=call.get("lengths"), need_cache=False)  # fmt: skip
    if "zoneout" in reg:
        # The prepared weights' path of the layer's eval mode (zoneout's rates).
        zoneout = regularisation(zoneout=reg["zoneout"], training=False)[:2]
        again = pw._forward(x, h0, c0, **place, checkpoint=None, variant=variant,
                            zoneout=zoneout)  # fmt: skip
        # Zoneout changes the result: the comparison is not of two plain passes.
        plain = lstm_fast.forward(x, *mats, h0, c0, weight_dtype="bfloat16", need_cache=False,
                                  w_hr=w_hr, peepholes=peepholes, **call)  # fmt: skip
        assert not np.array_equal(plain.h_n, got.h_n)
    else:
        again = pw.forward(x, h0, c0, **place, **variant)
    x0 = x[:, 0] if call["batch_first"] else x[0]
    B = x0.shape[0]
    h = np.zeros((B, (w_hr.shape[0] if w_hr is not None else w["w_hh"].shape[1])), np.float32)
    c = np.ones((B, w["w_hh"].shape[0] // 4), np.float32)
    assert got.cache is None and again.cache is None
    results = {
        "y": (got.y, want.y), "h_n": (got.h_n, want.h_n), "c_n": (got.c_n, want.c_n),
        "prepared.y": (again.y, want.y), "prepared.h_n": (again.h_n, want.h_n),
        "prepared.c_n": (again.c_n, want.c_n),
    }  # fmt: skip
    if reg:  # the cell API takes no regularisation
        return results
    cell = pw.cell_forward(x0, h, c, **variant)
    cell_want = lstm_fast.cell_forward(
        x0, h, c, r["w_ih"], r["w_hh"], r["b_ih"], r["b_hh"],
        w_hr=r.get("w_hr"), peepholes=peepholes, **variant,
    )  # fmt: skip
    assert cell.cache is None
    results["cell.h"] = (cell.h_new, cell_want.h_new)
    results["cell.c"] = (cell.c_new, cell_want.c_new)
    return results


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s[:4]))
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.bf16_widening
def test_same_bits_as_float32_on_rounded_weights(isa, variant, shape):
    x, w, call = _case(variant, shape, seed=hash((variant, shape[3])) % 1000)
    for name, (got, want) in _results(x, w, call).items():
        assert_same_bits(got, want, f"{isa} {variant} {name}")


_THREAD_SCRIPT = """
from tests.conftest import BF16_DOT_ISAS
from tests.test_bf16 import SHAPES, VARIANTS, _case, _results
for isa in lstm_fast.available_isas():
    lstm_fast._set_isa(isa)
    for variant in VARIANTS:
        for k, shape in enumerate(SHAPES):
            x, w, call = _case(variant, shape, seed=k)
            h = hashlib.sha256()
            for name, (got, want) in _results(x, w, call).items():
                # On the BF16 dot products (x and h rounded too) only the
                # hashes are compared, across the configurations.
                if isa not in BF16_DOT_ISAS:
                    assert got.tobytes() == want.tobytes(), (isa, variant, k, name)
                h.update(got.tobytes())
            out[f"{{isa}}/{{variant}}/{{k}}"] = h.hexdigest()
"""


def test_same_bits_for_any_thread_count_and_split():
    one = assert_same_hashes(
        _THREAD_SCRIPT,
        (
            {"LSTM_FAST_NUM_THREADS": "2", "LSTM_FAST_SPLIT": "hidden"},
            {"LSTM_FAST_NUM_THREADS": "2", "LSTM_FAST_SPLIT": "batch"},
            {"LSTM_FAST_NUM_THREADS": "3", "LSTM_FAST_SPLIT": "hidden"},
            {"LSTM_FAST_NUM_THREADS": "3", "LSTM_FAST_SPLIT": "batch"},
        ),
        timeout=600,
    )
    assert len(one) == len(lstm_fast.available_isas()) * len(VARIANTS) * len(SHAPES)


@pytest.mark.bf16_widening
def test_layer_multilayer_bidirectional_same_bits(isa):
    rng = np.random.default_rng(5)
    layer = lstm_fast.LSTM(6, 24, num_layers=3, bidirectional=True)
    x = rng.standard_normal((7, 4, 6)).astype(np.float32)
    hx = (rng.standard_normal((6, 4, 24)).astype(np.float32),
          rng.standard_normal((6, 4, 24)).astype(np.float32))  # fmt: skip
    y, (h, c) = layer.forward(x, hx, need_cache=False, weight_dtype="bfloat16")
    twin = lstm_fast.LSTM(6, 24, num_layers=3, bidirectional=True)
    twin.load_state_dict({k: bfloat16_round(v) if k.startswith("weight") else v
                          for k, v in layer.state_dict().items()})  # fmt: skip
    y2, (h2, c2) = twin.forward(x, hx, need_cache=False)
    assert_same_bits(y, y2, "y")
    assert_same_bits(h, h2, "h_n")
    assert_same_bits(c, c2, "c_n")
    # The float32 path of the same layer is untouched by the bf16 copy.
    y3, _ = layer.forward(x, hx, need_cache=False)
    y4, _ = twin.forward(x, hx, need_cache=False)
    assert not np.array_equal(y3, y4)


LAYER_REGULARISED = [
    {"zoneout": 0.3},
    {"zoneout": (0.0, 0.4), "proj_size": 5},
    {"zoneout": (0.2, 0.0), "recurrent_dropout": 0.3, "weight_drop": 0.2, "dropout": 0.1},
]


def _rounded_twin(layer, **options):
    """A float32 layer like ``layer`` whose weight matrices are bfloat16_round's."""
    twin = lstm_fast.LSTM(layer.input_size, layer.hidden_size, **options)
    twin.load_state_dict({k: bfloat16_round(v) if k.startswith("weight") else v
                          for k, v in layer.state_dict().items()})  # fmt: skip
    return twin.eval()


@pytest.mark.parametrize("options", LAYER_REGULARISED, ids=["zoneout", "zoneout_c_proj", "all"])
@pytest.mark.bf16_widening
def test_layer_zoneout_eval_same_bits(isa, options):
    """The layer in eval mode with zoneout (and the dropouts, the identity there)
    and bf16 weights: the float32 layer's bits on the rounded weights, forward
    (stacked, bidirectional) and step by step, from the kept bfloat16 copy."""
    rng = np.random.default_rng(11)
    kw = dict(num_layers=2, bidirectional=True, **options)
    layer = lstm_fast.LSTM(6, 12, seed=3, **kw).eval()
    P = options.get("proj_size") or 12
    x = rng.standard_normal((5, 3, 6)).astype(np.float32)
    hx = (rng.standard_normal((4, 3, P)).astype(np.float32),
          rng.standard_normal((4, 3, 12)).astype(np.float32))  # fmt: skip
    y, (h, c) = layer.forward(x, hx, need_cache=False, weight_dtype="bfloat16")
    y2, (h2, c2) = _rounded_twin(layer, **kw).forward(x, hx, need_cache=False)
    assert_same_bits(y, y2, "y")
    assert_same_bits(h, h2, "h_n")
    assert_same_bits(c, c2, "c_n")
    kept = layer._prepared[(0, 1, 16)]
    layer.forward(x, hx, need_cache=False, weight_dtype="bfloat16")
    assert layer._prepared[(0, 1, 16)] is kept  # reused while unchanged
    # Zoneout acts: without it the same weights give other results.
    plain = lstm_fast.LSTM(6, 12, num_layers=2, bidirectional=True,
                           proj_size=options.get("proj_size", 0))  # fmt: skip
    plain.load_state_dict(layer.state_dict())
    y3, _ = plain.forward(x, hx, need_cache=False, weight_dtype="bfloat16")
    assert not np.array_equal(y, y3)

    # Step by step (a unidirectional stack) gives the forward's y.
    kw["bidirectional"] = False
    uni = lstm_fast.LSTM(6, 12, seed=4, **kw).eval()
    y, _ = uni.forward(x, need_cache=False, weight_dtype="bf16")
    state = None
    for t in range(x.shape[0]):
        y_t, state = uni.step(x[t], state, weight_dtype="bfloat16")
        assert_same_bits(y_t, y[t], f"step {t}")
    y4, _ = _rounded_twin(uni, **kw).forward(x, need_cache=False)
    assert_same_bits(y, y4, "unidirectional y")


def test_layer_zoneout_training_refused():
    layer = lstm_fast.LSTM(3, 8, zoneout=0.2, seed=0)  # training mode
    x = np.zeros((2, 2, 3), np.float32)
    with pytest.raises(ValueError, match="inference.*zoneout"):
        layer.forward(x, need_cache=False, weight_dtype="bf16")
    # step computes as in eval mode: it runs.
    layer.step(x[0], weight_dtype="bf16")


def test_layer_step_and_kept_copy():
    rng = np.random.default_rng(6)
    layer = lstm_fast.LSTM(5, 16, num_layers=2)
    x = rng.standard_normal((6, 2, 5)).astype(np.float32)
    y, (h, c) = layer.forward(x, need_cache=False, weight_dtype="bf16")
    state = None
    for t in range(6):
        y_t, state = layer.step(x[t], state, weight_dtype="bfloat16")
        assert_same_bits(y_t, y[t], f"step {t}")
    kept = layer._prepared[(0, 0, 16)]
    layer.forward(x, need_cache=False, weight_dtype="bf16")
    assert layer._prepared[(0, 0, 16)] is kept  # reused while unchanged
    layer.parameters["weight_hh_l0"][0, 0] += 1.0  # an in-place update repacks
    y2, _ = layer.forward(x, need_cache=False, weight_dtype="bf16")
    assert layer._prepared[(0, 0, 16)] is not kept
    assert not np.array_equal(y, y2)


def test_prepared_copy_is_private():
    rng = np.random.default_rng(7)
    w = _weights(rng, 4, 16)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    pw = lstm_fast.prepare_weights(w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"],
                                   weight_dtype="bfloat16")  # fmt: skip
    before = pw.forward(x, need_cache=False).y
    w["w_hh"][:] = 0
    w["w_ih"][:] = 0
    assert_same_bits(pw.forward(x, need_cache=False).y, before)
    assert "weight_dtype=bfloat16" in repr(pw)


# ---------------------------------------------------------------------------
# Accuracy against float32 weights


def _one_step_bound(x, h, c, w, isa):
    """A bound on |h_new - h_new(float32 weights)| for one step, from the rounding:
    each weight moves by at most u = 2^-8 of itself, so each pre-activation by at
    most d = u (|W_ih| |x| + |W_hh| |h|); the gates move by at most d/4 (sigmoid) or
    d (tanh), hence |dc| <= d_i/4 + d_g + |c| d_f/4 and |dh| <= d_o/4 + |dc|
    (mean value theorem; |i|, |g|, |o|, tanh' <= 1). Plus 1e-5 for float32's own
    rounding in both runs. On the BF16 dot products x and h are rounded too, so
    each product moves by at most (1 + 2^-8)^2 - 1 = 2^-7 + 2^-16 of itself."""
    u = 2.0**-7 + 2.0**-16 if isa in BF16_DOT_ISAS else 2.0**-8
    d = u * (np.abs(x) @ np.abs(w["w_ih"]).T + np.abs(h) @ np.abs(w["w_hh"]).T)
    d_i, d_f, d_g, d_o = np.split(d, 4, axis=1)
    dc = d_i / 4 + d_g + np.abs(c) * d_f / 4
    return d_o / 4 + dc + 1e-5, dc + 1e-5


@pytest.mark.parametrize("seed", range(6))
def test_one_step_error_within_bound(isa, seed):
    rng = np.random.default_rng(100 + seed)
    B, inp, H = rng.integers(1, 9), rng.integers(1, 80), rng.integers(1, 140)
    w = _weights(rng, inp, H, scale=float(rng.uniform(0.5, 3.0)))
    x = (rng.standard_normal((B, inp)) * rng.uniform(0.1, 4)).astype(np.float32)
    h = np.tanh(rng.standard_normal((B, H))).astype(np.float32)
    c = rng.standard_normal((B, H)).astype(np.float32)
    mats = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    exact = lstm_fast.cell_forward(x, h, c, *mats)
    bf16 = lstm_fast.prepare_weights(*mats, weight_dtype="bf16").cell_forward(x, h, c)
    bound_h, bound_c = _one_step_bound(x, h, c, w, isa)
    assert (np.abs(bf16.h_new - exact.h_new) <= bound_h).all()
    assert (np.abs(bf16.c_new - exact.c_new) <= bound_c).all()
    # The bound is not vacuous: the errors are there, and below the bound.
    assert 0 < np.abs(bf16.h_new - exact.h_new).max()


# ---------------------------------------------------------------------------
# Bad arguments


def _small():
    rng = np.random.default_rng(8)
    w = _weights(rng, 3, 8)
    return rng.standard_normal((2, 2, 3)).astype(np.float32), w


@pytest.mark.parametrize(
    "weight_dtype, error, match",
    [
        ("float16", ValueError, "weight_dtype"),
        ("bfloat", ValueError, "weight_dtype"),
        ("", ValueError, "weight_dtype"),
        (3, TypeError, "weight_dtype"),
        (np.float16, ValueError, "weight_dtype"),
        (object(), TypeError, "weight_dtype"),
    ],
)
def test_bad_weight_dtype(weight_dtype, error, match):
    x, w = _small()
    with pytest.raises(error, match=match):
        lstm_fast.forward(x, w["w_ih"], w["w_hh"], need_cache=False, weight_dtype=weight_dtype)
    with pytest.raises(error, match=match):
        lstm_fast.prepare_weights(w["w_ih"], w["w_hh"], weight_dtype=weight_dtype)
    with pytest.raises(error, match=match):
        lstm_fast.LSTM(3, 8).forward(x, need_cache=False, weight_dtype=weight_dtype)
    with pytest.raises(error, match=match):
        lstm_fast.LSTM(3, 8).step(x[0], weight_dtype=weight_dtype)


def test_names_accepted():
    x, w = _small()
    ys = [lstm_fast.forward(x, w["w_ih"], w["w_hh"], need_cache=False, weight_dtype=name).y
          for name in ("bfloat16", "bf16", "BFloat16")]  # fmt: skip
    for y in ys[1:]:
        assert_same_bits(y, ys[0])
    ml_dtypes = pytest.importorskip("ml_dtypes")
    y = lstm_fast.forward(
        x, w["w_ih"], w["w_hh"], need_cache=False, weight_dtype=ml_dtypes.bfloat16
    ).y
    assert_same_bits(y, ys[0])


def test_float64_refused():
    x, w = _small()
    with pytest.raises(TypeError, match="x is float64"):
        lstm_fast.forward(
            x.astype(np.float64), w["w_ih"], w["w_hh"], need_cache=False, weight_dtype="bf16"
        )
    pw = lstm_fast.prepare_weights(w["w_ih"], w["w_hh"], weight_dtype="bf16")
    with pytest.raises(TypeError, match="h0 is float64"):
        pw.forward(x, np.zeros((2, 8)), need_cache=False)
    with pytest.raises(TypeError, match="x_t is float64"):
        pw.cell_forward(x[0].astype(np.float64), np.zeros((2, 8), np.float32),
                        np.zeros((2, 8), np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="float32"):
        lstm_fast.prepare_weights(w["w_ih"], w["w_hh"], dtype=np.float64, weight_dtype="bf16")
    with pytest.raises(ValueError, match="float32"):
        lstm_fast.LSTM(3, 8, dtype=np.float64).forward(x, need_cache=False, weight_dtype="bf16")
    # The engine refuses a float64 bf16 cache by itself.
    with pytest.raises(ValueError, match="float32"):
        lstm_fast._core.Packed(w["w_ih"].astype(np.float64), w["w_hh"].astype(np.float64),
                               bfloat16=True)  # fmt: skip


def test_inference_only():
    x, w = _small()
    with pytest.raises(ValueError, match="need_cache"):
        lstm_fast.forward(x, w["w_ih"], w["w_hh"], weight_dtype="bf16", need_cache=True)
    pw = lstm_fast.prepare_weights(w["w_ih"], w["w_hh"], weight_dtype="bf16")
    with pytest.raises(ValueError, match="need_cache"):
        pw.forward(x)
    with pytest.raises(ValueError, match="inference"):
        lstm_fast.forward(x, w["w_ih"], w["w_hh"], weight_dtype="bf16", need_cache=False,
                          weight_drop=0.3, seed=1)  # fmt: skip
    with pytest.raises(ValueError, match="inference.*zoneout"):
        lstm_fast.forward(x, w["w_ih"], w["w_hh"], weight_dtype="bf16", need_cache=False,
                          zoneout=(0.0, 0.2), seed=1)  # fmt: skip
    # Regularisation at inference is allowed (zoneout mixes, the dropouts are the
    # identity; tested above against the float32 engine).
    lstm_fast.forward(x, w["w_ih"], w["w_hh"], weight_dtype="bf16", weight_drop=0.3,
                      seed=1, training=False, need_cache=False)  # fmt: skip
    layer = lstm_fast.LSTM(3, 8)
    with pytest.raises(ValueError, match="need_cache"):
        layer.forward(x, need_cache=True, weight_dtype="bf16")
    layer.forward(x)  # a tape ...
    layer.forward(x, need_cache=False, weight_dtype="bf16")  # ... dropped by an inference pass
    with pytest.raises(RuntimeError, match="bfloat16"):
        layer.backward(np.ones((2, 2, 8), np.float32))


# ---------------------------------------------------------------------------
# Prepared weights with zoneout at inference

ZONEOUT_VARIANTS = ["zoneout_h", "zoneout_c", "zoneout", "zoneout_peepholes_clip",
                    "zoneout_projection"]  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s[:4]))
@pytest.mark.parametrize("variant", ZONEOUT_VARIANTS)
@pytest.mark.bf16_widening
def test_prepared_bf16_takes_zoneout_at_inference(isa, variant, shape):
    """``prepare_weights(..., weight_dtype='bfloat16').forward`` and ``.cell_forward``
    with ``zoneout=``, ``training=False``: bit for bit the float32 engine (functional
    forward, training=False) on the rounded weights; the cell is its one step."""
    x, w, call = _case(variant, shape, seed=hash((variant, shape[3])) % 1000 + 1)
    call = dict(call)
    h0, c0 = call.pop("h0", None), call.pop("c0", None)
    peepholes, w_hr, zoneout = call.pop("peepholes", None), w.get("w_hr"), call.pop("zoneout")
    mats = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    r = _rounded(w)
    rounded = (r["w_ih"], r["w_hh"], r["b_ih"], r["b_hh"])
    pw = lstm_fast.prepare_weights(*mats, peepholes=peepholes, w_hr=w_hr, weight_dtype="bf16")
    got = pw.forward(x, h0, c0, need_cache=False, zoneout=zoneout, training=False, **call)
    want = lstm_fast.forward(x, *rounded, h0, c0, need_cache=False, w_hr=r.get("w_hr"),
                             peepholes=peepholes, zoneout=zoneout, training=False,
                             **call)  # fmt: skip
    for a, b, what in zip(got[:3], want[:3], ("y", "h_n", "c_n")):
        assert_same_bits(a, b, f"{isa} {variant} {what}")
    # Zoneout changed the result.
    plain = pw.forward(x, h0, c0, need_cache=False, **call)
    assert not np.array_equal(plain.c_n, got.c_n) or not np.array_equal(plain.h_n, got.h_n)
    # One step of the cell from a state (h, c).
    variant_opts = {k: v for k, v in call.items() if k not in ("batch_first", "reverse", "lengths")}
    x0 = x[:, 0] if call["batch_first"] else x[0]
    B, P, H = x0.shape[0], got.h_n.shape[1], got.c_n.shape[1]
    rng = np.random.default_rng(7)
    h, c = (rng.standard_normal(s).astype(np.float32) for s in ((B, P), (B, H)))
    cell = pw.cell_forward(x0, h, c, zoneout=zoneout, training=False, **variant_opts)
    step = lstm_fast.forward(x0[None], *rounded, h, c, need_cache=False, w_hr=r.get("w_hr"),
                             peepholes=peepholes, zoneout=zoneout, training=False,
                             **variant_opts)  # fmt: skip
    assert cell.cache is None
    assert_same_bits(cell.h_new, step.h_n, f"{isa} {variant} cell.h")
    assert_same_bits(cell.c_new, step.c_n, f"{isa} {variant} cell.c")


def test_prepared_zoneout_refused_in_training():
    """In training (the default) prepared weights refuse zoneout: bf16 weights with
    the functional API's message, float32 ones pointing to lstm_fast.forward; a
    bad rate names zoneout; zoneout 0 in training changes nothing."""
    x, w = _small()
    pw = lstm_fast.prepare_weights(w["w_ih"], w["w_hh"], weight_dtype="bf16")
    for call in (pw.forward, lambda x, **kw: pw.cell_forward(x[0], None, None, **kw)):
        with pytest.raises(ValueError, match="^weight_dtype='bfloat16' is for inference: zoneout"):
            call(x, need_cache=False, zoneout=0.2)
        with pytest.raises(ValueError, match=r"zoneout\[1\]"):
            call(x, need_cache=False, zoneout=(0.1, 1.0), training=False)
        with pytest.raises(TypeError, match="training"):
            call(x, need_cache=False, zoneout=0.1, training="no")
    same = pw.forward(x, need_cache=False, zoneout=0.0)
    assert_same_bits(same.y, pw.forward(x, need_cache=False).y)
    p32 = lstm_fast.prepare_weights(w["w_ih"], w["w_hh"])
    with pytest.raises(ValueError, match="^zoneout: prepared weights take it at inference only"):
        p32.forward(x, zoneout=(0.0, 0.3))
    with pytest.raises(ValueError, match="^zoneout: prepared weights take it at inference only"):
        p32.cell_forward(x[0], None, None, zoneout=0.3)


def test_prepared_float32_zoneout_at_inference_with_its_cache():
    """float32 prepared weights at inference with zoneout: the functional API's
    bits, cache and gradients included (backward of the expectation)."""
    x, w = _small()
    mats = (w["w_ih"], w["w_hh"])
    p32 = lstm_fast.prepare_weights(*mats)
    got = p32.forward(x, zoneout=(0.3, 0.4), training=False)
    want = lstm_fast.forward(x, *mats, zoneout=(0.3, 0.4), training=False)
    for a, b in zip((*got[:3], got.cache.c), (*want[:3], want.cache.c)):
        assert_same_bits(a, b)
    dy = np.ones_like(got.y)
    for a, b in zip(lstm_fast.backward(got.cache, dy), lstm_fast.backward(want.cache, dy)):
        if a is not None or b is not None:
            assert_same_bits(a, b)
    h, c = np.full((2, 8), 0.5, np.float32), np.full((2, 8), -0.25, np.float32)
    cell = p32.cell_forward(x[0], h, c, zoneout=0.25, training=False)
    step = lstm_fast.forward(x[:1], *mats, None, None, h, c, zoneout=0.25, training=False)
    assert_same_bits(cell.h_new, step.h_n)
    assert_same_bits(cell.c_new, step.c_n)
    assert_same_bits(cell.cache.c, step.cache.c[0])
    g = lstm_fast.cell_backward(cell.cache, np.ones_like(cell.h_new))
    gs = lstm_fast.backward(step.cache, None, np.ones_like(cell.h_new))
    # dx, dc and dw_hh of the step (the cell's dx is one row of the sequence's).
    assert_same_bits(g[0], gs[0][0])
    assert_same_bits(g[2], gs[2])
    assert_same_bits(g[4], gs[4])

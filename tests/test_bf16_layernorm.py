"""bf16 inference of the LayerNorm LSTM (``weight_dtype="bfloat16"`` with
``layer_norm=True``): the weight matrices rounded to bfloat16 (``w_hh`` streamed
as bfloat16 by the step product), the normalisations' gains and biases, the
biases, state and sums float32.

The contract is tests/test_bf16.py's: bit for bit what the float32 LayerNorm
engine gives on the weights rounded by ``bfloat16_round``, on every ISA, for any
thread count and split, with every variant, through the functional API, the
prepared weights, the cell and the layer.
"""

from __future__ import annotations

import lstm_fast
import numpy as np
import pytest
from lstm_fast.functional import bfloat16_round

from tests.helpers import assert_same_bits, assert_same_hashes
from tests.test_bf16 import REGULARISATION, SHAPES, VARIANTS, _case, _rounded

# The variants without regularisation, which prepared weights and the cell take
# (the regularised ones: test_regularised_same_bits_as_float32_on_rounded_weights).
PLAIN_VARIANTS = [v for v in VARIANTS if not set(VARIANTS[v]) & set(REGULARISATION)]
REGULARISED_VARIANTS = [v for v in VARIANTS if v not in PLAIN_VARIANTS]

NORMS = ("w_ln_ih", "b_ln_ih", "w_ln_hh", "b_ln_hh", "w_ln_c", "b_ln_c")


def _norms(rng, hidden, which):
    """The six gains and biases (all, or none: the defaults)."""
    if which == "none":
        return {}
    out = {}
    for name in NORMS:
        n = hidden if name.endswith("_c") else 4 * hidden
        centre = 1.0 if name.startswith("w_") else 0.0
        out[name] = (centre + rng.uniform(-0.5, 0.5, n)).astype(np.float32)
    return out


def _results(x, w, call, norms):
    """bf16 LayerNorm results three ways (one-off, prepared, cell over the first
    step) and the float32 LayerNorm engine's on the rounded weights."""
    call = dict(call)
    h0, c0 = call.pop("h0", None), call.pop("c0", None)
    peepholes, w_hr = call.pop("peepholes", None), w.get("w_hr")
    mats = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    r = _rounded(w)
    ln = {"layer_norm": True, **norms}
    got = lstm_fast.forward(x, *mats, h0, c0, weight_dtype="bfloat16", need_cache=False, w_hr=w_hr,
                            peepholes=peepholes, **call, **ln)  # fmt: skip
    want = lstm_fast.forward(x, r["w_ih"], r["w_hh"], r["b_ih"], r["b_hh"], h0, c0,
                             need_cache=False, w_hr=r.get("w_hr"), peepholes=peepholes,
                             **call, **ln)  # fmt: skip
    pw = lstm_fast.prepare_weights(*mats, peepholes=peepholes, w_hr=w_hr, weight_dtype="bf16")
    variant = {k: v for k, v in call.items() if k not in ("batch_first", "reverse", "lengths")}
    again = pw.forward(x, h0, c0, batch_first=call["batch_first"], reverse=call["reverse"],
                       lengths=call.get("lengths"), need_cache=False, **variant, **ln)  # fmt: skip
    # A second call on the same prepared weights reuses the kept panels.
    twice = pw.forward(x, h0, c0, batch_first=call["batch_first"], reverse=call["reverse"],
                       lengths=call.get("lengths"), need_cache=False, **variant, **ln)  # fmt: skip
    x0 = x[:, 0] if call["batch_first"] else x[0]
    B = x0.shape[0]
    h = np.zeros((B, (w_hr.shape[0] if w_hr is not None else w["w_hh"].shape[1])), np.float32)
    c = np.ones((B, w["w_hh"].shape[0] // 4), np.float32)
    cell = pw.cell_forward(x0, h, c, **variant, **ln)
    cell_want = lstm_fast.cell_forward(
        x0, h, c, r["w_ih"], r["w_hh"], r["b_ih"], r["b_hh"],
        w_hr=r.get("w_hr"), peepholes=peepholes, **variant, **ln,
    )  # fmt: skip
    assert got.cache is None and again.cache is None and cell.cache is None
    return {
        "y": (got.y, want.y), "h_n": (got.h_n, want.h_n), "c_n": (got.c_n, want.c_n),
        "prepared.y": (again.y, want.y), "prepared.h_n": (again.h_n, want.h_n),
        "prepared.c_n": (again.c_n, want.c_n), "again.y": (twice.y, want.y),
        "cell.h": (cell.h_new, cell_want.h_new), "cell.c": (cell.c_new, cell_want.c_new),
    }  # fmt: skip


def _ln_case(variant, k, which):
    shape = SHAPES[k]
    x, w, call = _case(variant, shape, seed=100 + k)
    norms = _norms(np.random.default_rng(200 + k), shape[3], which)
    return x, w, call, norms


@pytest.mark.parametrize("which", ["all", "none"])
@pytest.mark.parametrize(
    "k", range(len(SHAPES)), ids=lambda k: "T{}B{}I{}H{}".format(*SHAPES[k][:4])
)
@pytest.mark.parametrize("variant", PLAIN_VARIANTS)
def test_same_bits_as_float32_on_rounded_weights(isa, variant, k, which):
    x, w, call, norms = _ln_case(variant, k, which)
    results = _results(x, w, call, norms)
    for name, (got, want) in results.items():
        assert_same_bits(got, want, f"{isa} {variant} {which} {name}")
    # The rounding is seen: not the float32 weights' results.
    rest = {k: v for k, v in call.items() if k not in ("h0", "c0")}
    exact = lstm_fast.forward(x, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], need_cache=False,
                              w_hr=w.get("w_hr"), layer_norm=True, **norms, **rest)  # fmt: skip
    assert not np.array_equal(results["y"][0], exact.y)


@pytest.mark.parametrize(
    "k", range(len(SHAPES)), ids=lambda k: "T{}B{}I{}H{}".format(*SHAPES[k][:4])
)
@pytest.mark.parametrize("variant", REGULARISED_VARIANTS)
def test_regularised_same_bits_as_float32_on_rounded_weights(isa, variant, k):
    """Zoneout and the dropouts at inference (training=False) in the bf16
    LayerNorm LSTM: the float32 LayerNorm engine on the rounded weights."""
    x, w, call, norms = _ln_case(variant, k, "all")
    h0, c0 = call.pop("h0", None), call.pop("c0", None)
    peepholes = call.pop("peepholes", None)
    r = _rounded(w)
    run = dict(need_cache=False, peepholes=peepholes, layer_norm=True, training=False,
               **norms, **call)  # fmt: skip
    got = lstm_fast.forward(x, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], h0, c0,
                            w_hr=w.get("w_hr"), weight_dtype="bfloat16", **run)  # fmt: skip
    want = lstm_fast.forward(x, r["w_ih"], r["w_hh"], r["b_ih"], r["b_hh"], h0, c0,
                             w_hr=r.get("w_hr"), **run)  # fmt: skip
    for name in ("y", "h_n", "c_n"):
        assert_same_bits(getattr(got, name), getattr(want, name), f"{isa} {variant} {name}")
    # Zoneout is seen: not the pass without it.
    plain = {k: v for k, v in run.items() if k not in REGULARISATION}
    without = lstm_fast.forward(x, r["w_ih"], r["w_hh"], r["b_ih"], r["b_hh"], h0, c0,
                                w_hr=r.get("w_hr"), **plain)  # fmt: skip
    assert not np.array_equal(without.c_n, want.c_n)


_THREAD_SCRIPT = """
from tests.test_bf16 import SHAPES
from tests.test_bf16_layernorm import PLAIN_VARIANTS, _ln_case, _results
for isa in lstm_fast.available_isas():
    lstm_fast._set_isa(isa)
    for variant in PLAIN_VARIANTS:
        for k in range(len(SHAPES)):
            h = hashlib.sha256()
            for name, (got, want) in _results(*_ln_case(variant, k, "all")).items():
                assert got.tobytes() == want.tobytes(), (isa, variant, k, name)
                h.update(got.tobytes())
            out[f"{{isa}}/{{variant}}/{{k}}"] = h.hexdigest()
"""


def test_same_bits_for_any_thread_count_and_split():
    one = assert_same_hashes(
        _THREAD_SCRIPT,
        (
            {"LSTM_FAST_NUM_THREADS": "2", "LSTM_FAST_SPLIT": "hidden"},
            {"LSTM_FAST_NUM_THREADS": "3", "LSTM_FAST_SPLIT": "batch"},
        ),
        timeout=600,
    )
    assert len(one) == len(lstm_fast.available_isas()) * len(PLAIN_VARIANTS) * len(SHAPES)


def test_layer_same_bits(isa):
    rng = np.random.default_rng(5)
    layer = lstm_fast.LSTM(6, 24, num_layers=2, bidirectional=True, layer_norm=True, seed=3)
    params = layer.state_dict()
    # Gains and biases away from their initial 1 and 0.
    for name, value in params.items():
        if "_ln_" in name:
            value += rng.uniform(-0.3, 0.3, value.shape).astype(value.dtype)
    layer.load_state_dict(params)
    layer.eval()
    x = rng.standard_normal((7, 4, 6)).astype(np.float32)
    y, (h, c) = layer.forward(x, need_cache=False, weight_dtype="bfloat16")
    twin = lstm_fast.LSTM(6, 24, num_layers=2, bidirectional=True, layer_norm=True, seed=3)
    # The weight matrices rounded; the gains (weight_ln_*) stay float32.
    twin.load_state_dict({k: bfloat16_round(v) if k.startswith("weight") and "_ln_" not in k
                          else v for k, v in layer.state_dict().items()})  # fmt: skip
    twin.eval()
    y2, (h2, c2) = twin.forward(x, need_cache=False)
    assert_same_bits(y, y2, "y")
    assert_same_bits(h, h2, "h_n")
    assert_same_bits(c, c2, "c_n")
    y3, _ = layer.forward(x, need_cache=False)
    assert not np.array_equal(y, y3)


def test_inference_only():
    x, w, call, norms = _ln_case("plain", 0, "all")
    mats = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    with pytest.raises(ValueError, match="need_cache"):
        lstm_fast.forward(x, *mats, layer_norm=True, weight_dtype="bfloat16")
    pw = lstm_fast.prepare_weights(*mats, weight_dtype="bfloat16")
    with pytest.raises(ValueError, match="need_cache"):
        pw.forward(x, layer_norm=True, **norms)
    with pytest.raises(TypeError, match="float64"):
        pw.forward(x.astype(np.float64), layer_norm=True, need_cache=False)

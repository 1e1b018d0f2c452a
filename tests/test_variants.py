"""The LSTM variants in the engine (docs/variants.md) against the NumPy reference.

- Every variant (peepholes, clip, input_forget, no forget gate, each ONNX
  activation as σ_f, σ_g and σ_h, and combinations), forward values and every
  gradient (dpeepholes included) and the gradient-flow norms, both dtypes, every
  ISA this machine runs, with lengths, reverse, batch_first and h0/c0.
- The same bits for any thread count and either split (subprocesses under
  LSTM_FAST_NUM_THREADS and LSTM_FAST_SPLIT); asking for the flow moves no bit.
- The cell API, prepared weights, the cache's pre-activations, bad options.
- The layer: options, parameter names, forget_bias, gradients (against the same
  layer run on the reference), the flow it keeps.

The reference (itself checked against ONNX Runtime, PyTorch and finite
differences in tests/test_reference_variants.py) runs in float64 on the same
input values, so only the engine's error is judged.
"""

from __future__ import annotations

import pickle

import lstm_fast
import numpy as np
import pytest
from lstm_fast import _checks

from tests.helpers import (
    ACTIVATION_CASES,
    assert_close,
    assert_engine_matches_reference,
    assert_same_bits,
    assert_same_bits_for_thread_counts,
    assert_same_hashes,
    lstm_problem,
    ref,
)
from tests.helpers import float64_values as _f64
from tests.helpers import forward_backward as _run

PLAIN = (("Sigmoid",), ("Tanh",), ("Tanh",))


def _acts(position: int, act: tuple) -> list:
    acts = list(PLAIN)
    acts[position] = act
    return acts


VARIANTS = {
    "plain": {},
    "peepholes": {"peepholes": True},
    "clip": {"clip": 0.7},
    "input_forget": {"input_forget": True},
    "no_forget_gate": {"forget_gate": False},
    "peep+clip+coupled": {"peepholes": True, "clip": 1.1, "input_forget": True},
    "peep+no_forget+acts": {
        "peepholes": True,
        "forget_gate": False,
        "activations": [("HardSigmoid", 0.25, 0.45), ("Softsign",), ("Elu", 0.8)],
    },
    "everything": {
        "peepholes": True,
        "clip": 0.9,
        "activations": [("LeakyRelu", 0.2), ("ScaledTanh", 1.2, 0.9), ("Softplus",)],
    },
}
for _pos, _role in enumerate("fgh"):
    for _act in ACTIVATION_CASES:
        if (_act,) != (PLAIN[_pos],):
            VARIANTS[f"{_role}={_act[0]}"] = {"activations": _acts(_pos, _act)}

# (T, B, I, H, lengths, reverse, batch_first, h0c0)
SETTINGS = {
    "basic": (5, 3, 4, 7, None, False, False, False),
    "lengths-reverse-h0c0": (6, 4, 3, 20, [6, 0, 3, 5], True, False, True),
    "batch_first-lengths": (5, 3, 5, 9, [2, 5, 4], False, True, True),
}


def _problem(variant: dict, setting: tuple, dtype, seed: int = 0):
    T, B, I, H, lengths, reverse, batch_first, h0c0 = setting  # noqa: E741
    dims = (T, B, I, H, H, lengths, reverse, batch_first, h0c0)
    return lstm_problem(variant, dims, dtype, seed)


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_engine_matches_reference(isa, dtype, name, setting):
    arrays, options, seeds = _problem(VARIANTS[name], SETTINGS[setting], dtype)
    _, g, _ = assert_engine_matches_reference(arrays, options, seeds, dtype)
    assert type(g).__name__ == "VariantGradients"
    assert g.dw_hr is None


@pytest.mark.parametrize("name", ["plain", "peepholes", "everything", "f=Relu"])
def test_flow_moves_no_bit(name):
    arrays, options, seeds = _problem(VARIANTS[name], SETTINGS["lengths-reverse-h0c0"], np.float32)
    _, with_flow = _run(lstm_fast, arrays, options, seeds, flow=True)
    _, without = _run(lstm_fast, arrays, options, seeds, flow=False)
    for k, field in enumerate(without[:9]):  # flow (the last field) aside
        assert_same_bits(with_flow[k], field, what=str(k))
    if name == "plain":
        assert type(without).__name__ == "Gradients"
    else:
        assert type(without).__name__ in ("Gradients", "VariantGradients")


def test_result_types():
    arrays, options, seeds = _problem({}, SETTINGS["basic"], np.float64)
    _, g = _run(lstm_fast, arrays, options, seeds, flow=False)
    assert isinstance(g, lstm_fast.Gradients)
    arrays, options, seeds = _problem({"peepholes": True}, SETTINGS["basic"], np.float64)
    _, g = _run(lstm_fast, arrays, options, seeds, flow=False)
    assert isinstance(g, ref.VariantGradients) and g.flow is None and g.dw_hr is None
    _, g = _run(lstm_fast, arrays, options, seeds, flow=True)
    assert isinstance(g.flow, ref.GradientFlow)


def test_flow_without_forget_gate_is_the_carousel():
    """With f = 1, no dy and no peepholes, ||dL/dc_t|| only grows going back through
    time by what enters through h_t: with dy = 0 except at the end and w_hh = 0,
    nothing enters, and the norm is constant."""
    arrays, options, seeds = _problem({"forget_gate": False}, SETTINGS["basic"], np.float64)
    arrays["w_hh"] = np.zeros_like(arrays["w_hh"])
    seeds["dy"] = np.zeros_like(seeds["dy"])
    _, g = _run(lstm_fast, arrays, options, seeds)
    np.testing.assert_allclose(g.flow.dc, np.broadcast_to(g.flow.dc[-1], g.flow.dc.shape))


def test_pre_activations_cached_only_when_needed():
    for name, needed in (("plain", False), ("peepholes", False), ("input_forget", False),
                         ("f=HardSigmoid", False), ("clip", True), ("g=Relu", True),
                         ("f=Softplus", True), ("h=Relu", False)):  # fmt: skip
        arrays, options, _ = _problem(VARIANTS[name], SETTINGS["lengths-reverse-h0c0"], np.float64)
        cache = lstm_fast.forward(*arrays.values(), **options).cache
        assert (cache.z is not None) == needed, name
        if needed:
            r = ref.forward(*arrays.values(), **options).cache
            assert_close(cache.z, r.z, np.float64, what="z")


@pytest.mark.parametrize("name", ["peepholes", "everything", "no_forget_gate", "f=Elu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cell_api(dtype, name):
    arrays, options, seeds = _problem(VARIANTS[name], (1, 3, 4, 7, None, False, False, True), dtype)
    for k in ("batch_first", "reverse", "lengths"):
        options.pop(k)
    x, w_ih, w_hh, b_ih, b_hh, h, c = arrays.values()
    cell = lstm_fast.cell_forward(x[0], h, c, w_ih, w_hh, b_ih, b_hh, **options)
    r_cell = ref.cell_forward(*_f64({"x": x[0], "h": h, "c": c}).values(),
                              *_f64({"a": w_ih, "b": w_hh, "c": b_ih, "d": b_hh}).values(),
                              **_f64(options))  # fmt: skip
    assert_close(cell.h_new, r_cell.h_new, dtype)
    assert_close(cell.c_new, r_cell.c_new, dtype)
    dh, dc = seeds["dh_n"], seeds["dc_n"]
    g = lstm_fast.cell_backward(cell.cache, dh, dc)
    r = ref.cell_backward(r_cell.cache, dh.astype(np.float64), dc.astype(np.float64))
    assert type(g).__name__ == type(r).__name__
    for k, (mine, theirs) in enumerate(zip(g, r)):
        if theirs is None:
            assert mine is None
        else:
            assert_close(mine, theirs, dtype, what=str(k))


def test_prepared_weights_take_the_options():
    arrays, options, seeds = _problem(VARIANTS["everything"], SETTINGS["basic"], np.float32)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = arrays.values()
    peep = options.pop("peepholes")
    prepared = lstm_fast.prepare_weights(w_ih, w_hh, b_ih, b_hh, peepholes=peep)
    got = prepared.forward(x, h0, c0, **options)
    want = lstm_fast.forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, peepholes=peep, **options)
    for a, b in zip(got[:3], want[:3]):
        assert_same_bits(a, b)
    ga = lstm_fast.backward(got.cache, *seeds.values())
    gb = lstm_fast.backward(want.cache, *seeds.values())
    for a, b in zip(ga, gb):
        assert_same_bits(a, b)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lengthz'"):
        prepared.forward(x, lengthz=None)


# ---------------------------------------------------------------------------
# Threads and splits: the same bits


_THREAD_SCRIPT = r"""
from tests.test_variants import VARIANTS, SETTINGS, _problem, _run
for isa in lstm_fast.available_isas():
    lstm_fast._set_isa(isa)
    for name in ("plain", "peepholes", "everything", "peep+no_forget+acts", "g=Elu"):
        for dtype in (np.float32, np.float64):
            for setting in ((9, 11, 5, 40, [9, 1, 0, 9, 4, 7, 9, 2, 3, 8, 5], True, False, True),
                            SETTINGS["batch_first-lengths"]):
                arrays, options, seeds = _problem(VARIANTS[name], setting, dtype, seed=3)
                fwd, g = _run(lstm_fast, arrays, options, seeds)
                h = digest(*fwd[:3], *g[:7], g.dpeepholes, *g.flow)
                out[f"{{isa}}/{{name}}/{{np.dtype(dtype).name}}/{{setting[3]}}"] = h
"""


def test_same_bits_for_any_thread_count_and_split():
    assert_same_hashes(
        _THREAD_SCRIPT,
        (
            {"LSTM_FAST_NUM_THREADS": "2", "LSTM_FAST_SPLIT": "batch"},
            {"LSTM_FAST_NUM_THREADS": "2", "LSTM_FAST_SPLIT": "hidden"},
            {"LSTM_FAST_NUM_THREADS": "3", "LSTM_FAST_SPLIT": "hidden"},
        ),
    )


def test_same_bits_for_any_thread_count_in_process(threads):
    arrays, options, seeds = _problem(
        VARIANTS["everything"], (7, 20, 4, 33, None, True, False, True), np.float32
    )

    def run():
        fwd, g = _run(lstm_fast, arrays, options, seeds)
        return [*fwd[:3], *g[:7], g.dpeepholes, *g.flow]

    assert_same_bits_for_thread_counts(run, (1, 2))


# ---------------------------------------------------------------------------
# Bad options


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"clip": 0}, ValueError, "clip must be > 0"),
        ({"clip": -1.0}, ValueError, "clip must be > 0"),
        ({"clip": float("nan")}, ValueError, "clip"),
        ({"clip": "1"}, TypeError, "clip must be a real number"),
        ({"input_forget": "yes"}, TypeError, "input_forget must be True or False"),
        ({"forget_gate": None}, TypeError, "forget_gate must be True or False"),
        ({"input_forget": True, "forget_gate": False}, ValueError, "give one or the other"),
        ({"activations": "Tanh"}, TypeError, "activations must be a sequence of 3"),
        ({"activations": ["Tanh", "Tanh"]}, ValueError, "3 entries"),
        ({"activations": ["Tanh", "Tanh", "Nope"]}, ValueError, "unknown activation 'Nope'"),
        ({"activations": ["Affine", "Tanh", "Tanh"]}, ValueError, "Affine needs its alpha"),
        ({"activations": [("Relu", 1.0), "Tanh", "Tanh"]}, ValueError, "Relu takes no alpha"),
        ({"activations": [("Elu", "a"), "Tanh", "Tanh"]}, TypeError, "Elu's alpha"),
        ({"activations": [3, "Tanh", "Tanh"]}, TypeError, "each entry must be"),
        ({"peepholes": np.zeros(20)}, ValueError, "peepholes must have shape"),
        ({"peepholes": np.zeros((3, 7))}, ValueError, "peepholes"),
        ({"peepholes": np.zeros(21, complex)}, TypeError, "peepholes"),
    ],
)
def test_bad_options(options, error, match):
    arrays, _, _ = _problem({}, SETTINGS["basic"], np.float32)
    with pytest.raises(error, match=match):
        lstm_fast.forward(*arrays.values(), **options)
    x, w_ih, w_hh, *_ = arrays.values()
    h = np.zeros((3, 7), np.float32)
    with pytest.raises(error, match=match):
        lstm_fast.cell_forward(x[0], h, h, w_ih, w_hh, **options)


def test_bad_flow():
    arrays, _, _ = _problem({}, SETTINGS["basic"], np.float32)
    cache = lstm_fast.forward(*arrays.values()).cache
    with pytest.raises(TypeError, match="flow must be True or False"):
        lstm_fast.backward(cache, flow="yes")


def test_activation_names_match_without_case_and_defaults_fill_in():
    arrays, _, seeds = _problem({}, SETTINGS["basic"], np.float64)
    a = lstm_fast.forward(*arrays.values(), activations=["hardsigmoid", "TANH", "elu"])
    b = lstm_fast.forward(
        *arrays.values(), activations=[("HardSigmoid", 0.2, 0.5), "Tanh", ("Elu", 1.0)]
    )
    c = lstm_fast.forward(
        *arrays.values(),
        activations=[ref.Activation("HardSigmoid"), ref.Activation("Tanh"), ref.Activation("Elu")],
    )
    for x, y, z in zip(a[:3], b[:3], c[:3]):
        assert_same_bits(x, y)
        assert_same_bits(x, z)


def test_rule_tables_agree():
    """_checks' table of activation parameters is the reference's."""
    assert set(_checks.ACTIVATION_PARAMETERS) == set(ref.ACTIVATIONS)
    for name, kind in ref.ACTIVATIONS.items():
        assert _checks.ACTIVATION_PARAMETERS[name] == kind.defaults, name


# ---------------------------------------------------------------------------
# The layer

LAYER_OPTIONS = {
    "peepholes": True,
    "clip": 1.5,
    "activations": [("HardSigmoid", 0.25, 0.5), "Tanh", "Softsign"],
}


def test_layer_names_and_shapes():
    m = lstm_fast.LSTM(3, 5, 2, bidirectional=True, peepholes=True, seed=0)
    plain = lstm_fast.LSTM(3, 5, 2, bidirectional=True, seed=0)
    extra = set(m.parameters) - set(plain.parameters)
    assert extra == {"weight_p_l0", "weight_p_l0_reverse", "weight_p_l1", "weight_p_l1_reverse"}
    for name in extra:
        assert m.parameters[name].shape == (15,) and m.parameters[name].dtype == np.float32
        assert m.grads[name].shape == (15,)
    # The plain parameters draw the same numbers with or without peepholes.
    for name, p in plain.parameters.items():
        assert_same_bits(m.parameters[name], p)
    assert "peepholes=True" in repr(m)
    assert repr(plain) == "LSTM(3, 5, num_layers=2, bidirectional=True)"
    sd = m.state_dict()
    m2 = lstm_fast.LSTM(3, 5, 2, bidirectional=True, peepholes=True, seed=1)
    m2.load_state_dict(sd)
    for name in sd:
        assert_same_bits(m2.parameters[name], sd[name])


def test_layer_forget_bias():
    m = lstm_fast.LSTM(3, 4, forget_bias=1.0, seed=0)
    b = m.parameters["bias_ih_l0"] + m.parameters["bias_hh_l0"]
    np.testing.assert_array_equal(b[4:8], 1.0)
    plain = lstm_fast.LSTM(3, 4, seed=0)
    assert_same_bits(m.parameters["bias_ih_l0"][:4], plain.parameters["bias_ih_l0"][:4])
    with pytest.raises(ValueError, match="forget_bias needs bias=True"):
        lstm_fast.LSTM(3, 4, bias=False, forget_bias=1.0)
    with pytest.raises(TypeError, match="forget_bias must be a real number"):
        lstm_fast.LSTM(3, 4, forget_bias="1")


@pytest.mark.parametrize(
    "kw, error",
    [
        ({"peepholes": "yes"}, TypeError),
        ({"clip": 0}, ValueError),
        ({"input_forget": True, "forget_gate": False}, ValueError),
        ({"activations": ["Tanh"]}, ValueError),
    ],
)
def test_layer_bad_options(kw, error):
    with pytest.raises(error):
        lstm_fast.LSTM(3, 4, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_matches_the_layer_on_the_reference(monkeypatch, dtype):
    """The same layer run on the engine and on the reference (``_F`` swapped)."""
    m = lstm_fast.LSTM(3, 6, 2, bidirectional=True, dtype=dtype, seed=0, **LAYER_OPTIONS)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 4, 3))
    lengths = np.array([5, 2, 0, 4])
    dy = rng.standard_normal((5, 4, 12))
    y, (h, c) = m(x, lengths=lengths)
    dx = m.backward(dy, flow=True)
    grads = {k: v.copy() for k, v in m.grads.items()}
    flow = dict(m.flow)
    monkeypatch.setattr(lstm_fast.layer, "_F", ref)
    m._prepared = {}
    ry, (rh, rc) = m(x, lengths=lengths)
    rdx = m.backward(dy, flow=True)
    for a, b in ((y, ry), (h, rh), (c, rc), (dx, rdx)):
        assert_close(a, b, dtype)
    for name, g in grads.items():
        assert_close(g, m.grads[name], dtype, what=name)
    assert set(flow) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for key, f in flow.items():
        for field in ("dh", "dc", "dh_sum", "dc_sum"):
            assert_close(getattr(f, field), getattr(m.flow[key], field), dtype, what=str(key))


def test_layer_flow_only_when_asked_and_step():
    m = lstm_fast.LSTM(3, 5, seed=0, **LAYER_OPTIONS)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    y, _ = m(x)
    m.backward(np.ones_like(y))
    assert m.flow == {}
    m.backward(np.ones_like(y), flow=True)
    assert m.flow[(0, 0)].dh.shape == (4, 2)
    # Streaming one step at a time gives the forward's outputs.
    state = None
    for t in range(4):
        y_t, state = m.step(x[t], state)
        assert_same_bits(y_t, y[t])


def test_layer_pickles_and_exports_what_onnx_can_express(tmp_path):
    pytest.importorskip("onnx")
    m = lstm_fast.LSTM(3, 5, seed=0, **LAYER_OPTIONS)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    m2 = pickle.loads(pickle.dumps(m))
    assert_same_bits(m(x)[0], m2(x)[0])
    m.export_onnx(tmp_path / "m.onnx")  # the variants export (tests/test_model_io.py)
    with pytest.raises(NotImplementedError, match="forget_gate=False"):
        lstm_fast.LSTM(3, 5, forget_gate=False).export_onnx(tmp_path / "f.onnx")

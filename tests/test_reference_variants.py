"""The NumPy reference's LSTM variants (docs/variants.md) against independent oracles.

- ``torch.nn.LSTM(proj_size=...)`` for the projection (outputs, final states, dx,
  every parameter gradient; one and two directions, lengths, batch_first).
- ONNX Runtime running an ONNX ``LSTM`` node for peepholes, clip, input_forget and
  every activation with its alpha/beta (forward; forward, reverse and bidirectional,
  sequence_lens, initial states; ORT runs layout 0 only, so ONNX's layout 1 is
  checked as the reference's batch_first against ORT's transposed results).
- Central finite differences in float64 for every gradient of every variant.
- A hand-written torch loop (autograd, retain_grad on every step's state) for the
  gradient-flow norms.
- The defaults give bit for bit what the plain LSTM gives; bad options are errors
  that name the argument.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.helpers import (
    ACTIVATION_CASES,
    assert_close,
    assert_same_bits,
    check_finite_differences,
    loss_of,
    numeric_gradient,
    onnx_model,
    ref,
)

NAMES = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "w_hr", "peepholes")


def _arrays(seed, T, B, I, H, P=None, *, peepholes=False, batch_first=False, dtype=np.float64):  # noqa: E741
    """Random arrays of one layer: the arguments (``NAMES``, ``None`` for an absent
    w_hr or peepholes) and the output gradients dy, dh_n, dc_n."""
    rng = np.random.default_rng(seed)
    S = H if P is None else P  # the size of the state h
    k = 1.5 / np.sqrt(H)
    seq = (B, T) if batch_first else (T, B)
    arrays = {
        "x": rng.standard_normal((*seq, I)),
        "w_ih": rng.uniform(-k, k, (4 * H, I)),
        "w_hh": rng.uniform(-k, k, (4 * H, S)),
        "b_ih": rng.uniform(-k, k, 4 * H),
        "b_hh": rng.uniform(-k, k, 4 * H),
        "h0": 0.5 * rng.standard_normal((B, S)),
        "c0": rng.standard_normal((B, H)),
        "w_hr": None if P is None else rng.uniform(-k, k, (P, H)),
        "peepholes": rng.uniform(-1, 1, 3 * H) if peepholes else None,
        "dy": rng.standard_normal((*seq, S)),
        "dh_n": rng.standard_normal((B, S)),
        "dc_n": rng.standard_normal((B, H)),
    }
    return {k: None if v is None else v.astype(dtype) for k, v in arrays.items()}


def _forward(a, **options):
    return ref.forward(
        a["x"],
        a["w_ih"],
        a["w_hh"],
        a["b_ih"],
        a["b_hh"],
        a["h0"],
        a["c0"],
        w_hr=a["w_hr"],
        peepholes=a["peepholes"],
        **options,
    )


def _cell_forward(a, x_t, **options):
    """One cell step from x_t and the state h0, c0 of ``a``."""
    weights = (a[n] for n in ("w_ih", "w_hh", "b_ih", "b_hh"))
    return ref.cell_forward(
        x_t, a["h0"], a["c0"], *weights, w_hr=a["w_hr"], peepholes=a["peepholes"], **options
    )


def _check_gradients(a, grads, loss, names=NAMES):
    check_finite_differences(a, grads, loss, names)


# --------------------------------------------------------------------------
# Finite differences: every gradient of every variant


FD_VARIANTS = {
    "projection": (dict(P=2), {}),
    "peepholes": (dict(peepholes=True), {}),
    "projection-peepholes": (dict(P=2, peepholes=True), {}),
    "clip": (dict(peepholes=True), dict(clip=0.6)),
    "input-forget": (dict(peepholes=True), dict(input_forget=True)),
    "no-forget-gate": (dict(peepholes=True), dict(forget_gate=False)),
    "everything": (dict(P=2, peepholes=True), dict(clip=0.8, input_forget=True)),
}
FD_LAYOUTS = {
    "plain": {},
    "lengths-reverse": dict(lengths=[2, 0, 3], reverse=True),
    "lengths-batch-first": dict(lengths=[3, 1, 2], batch_first=True),
}


@pytest.mark.parametrize("layout", FD_LAYOUTS, ids=str)
@pytest.mark.parametrize("variant", FD_VARIANTS, ids=str)
def test_gradients_match_finite_differences(variant, layout):
    shape, options = FD_VARIANTS[variant]
    options = {**options, **FD_LAYOUTS[layout]}
    a = _arrays(1, 3, 3, 2, 3, batch_first=options.get("batch_first", False), **shape)
    out = _forward(a, **options)
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    _check_gradients(a, grads, lambda: loss_of(_forward(a, **options), a))
    if options.get("clip"):
        z = np.abs(out.cache.z)
        assert np.any(z > options["clip"]) and np.any(z < options["clip"]), "clip must bite"
    if options.get("input_forget") or options.get("forget_gate") is False:
        # the f rows and p_f are not used: their gradients are exactly zero
        H = a["c0"].shape[1]
        for name in ("dw_ih", "dw_hh", "db_ih", "db_hh"):
            assert not np.any(getattr(grads, name)[H : 2 * H]), name
        assert not np.any(grads.dpeepholes[2 * H :])


@pytest.mark.parametrize("position", ["f", "g", "h"])
@pytest.mark.parametrize("spec", ACTIVATION_CASES, ids=lambda s: s[0])
def test_activation_gradients_match_finite_differences(spec, position):
    activations = [("Sigmoid",), ("Tanh",), ("Tanh",)]
    activations["fgh".index(position)] = spec
    options = dict(activations=activations, lengths=[3, 2], reverse=position == "g")
    a = _arrays(2, 3, 2, 2, 2, peepholes=True)
    out = _forward(a, **options)
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    _check_gradients(a, grads, lambda: loss_of(_forward(a, **options), a))


@pytest.mark.parametrize(
    "options",
    [
        {},
        dict(clip=0.5, activations=["HardSigmoid", "Elu", "Softsign"]),
        dict(input_forget=True),
        dict(forget_gate=False),
    ],
    ids=str,
)
def test_cell_gradients_match_finite_differences(options):
    a = _arrays(3, 1, 3, 2, 3, P=2, peepholes=True)
    a["x_t"] = a["x"][0]
    dh_new, dc_new = a["dh_n"], a["dc_n"]

    def cell():
        return _cell_forward(a, a["x_t"], **options)

    def loss():
        step = cell()
        return float(np.sum(step.h_new * dh_new) + np.sum(step.c_new * dc_new))

    grads = ref.cell_backward(cell().cache, dh_new, dc_new)
    assert isinstance(grads, ref.CellVariantGradients)
    _check_gradients(
        a, grads, loss, names=("x_t", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "peepholes")
    )
    np.testing.assert_allclose(grads.dh, numeric_gradient(loss, a["h0"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grads.dc, numeric_gradient(loss, a["c0"]), rtol=1e-6, atol=1e-6)


def test_cell_equals_one_step_sequence():
    a = _arrays(4, 1, 3, 2, 4, P=3, peepholes=True)
    options = dict(clip=0.7, activations=["Softsign", ("LeakyRelu", 0.2), "Tanh"])
    out = _forward(a, **options)
    grads = ref.backward(out.cache, None, a["dh_n"], a["dc_n"])
    step = _cell_forward(a, a["x"][0], **options)
    cell_grads = ref.cell_backward(step.cache, a["dh_n"], a["dc_n"])
    assert_close(step.h_new, out.h_n)
    assert_close(step.c_new, out.c_n)
    for k in range(len(cell_grads)):
        want = grads[k][0] if k == 0 else grads[k]
        assert_close(cell_grads[k], want, what=cell_grads._fields[k])


# --------------------------------------------------------------------------
# The defaults are the plain LSTM, bit for bit


def _all_results(out, grads):
    cache = out.cache
    return [out.y, out.h_n, out.c_n, *(getattr(cache, n) for n in "ifgoc"), *grads]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_defaults_are_the_plain_lstm_bit_for_bit(dtype):
    a = _arrays(5, 5, 4, 3, 6, dtype=dtype)
    layout = dict(lengths=[5, 0, 3, 2], reverse=True)
    defaults = dict(
        w_hr=None, peepholes=None, clip=None, input_forget=False, forget_gate=True, activations=None
    )
    plain = ref.forward(*(a[n] for n in NAMES[:7]), **layout)
    plain_grads = ref.backward(plain.cache, a["dy"], a["dh_n"], a["dc_n"])
    assert type(plain_grads) is ref.Gradients
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = plain_grads  # the classic unpacking
    explicit = [
        dict(defaults),
        dict(activations=["Sigmoid", ("tanh",), ref.Activation("TANH")]),
        dict(clip=None, input_forget=0, forget_gate=np.True_),
    ]
    for options in explicit:
        out = ref.forward(*(a[n] for n in NAMES[:7]), **layout, **options)
        grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
        assert type(grads) is ref.Gradients
        for k, (got, want) in enumerate(
            zip(_all_results(out, grads), _all_results(plain, plain_grads))
        ):
            assert_same_bits(got, want, f"result {k} with {options}")
    # flow=True adds a field and changes no bit of the others
    flowing = ref.backward(plain.cache, a["dy"], a["dh_n"], a["dc_n"], flow=True)
    assert type(flowing) is ref.VariantGradients and flowing.dw_hr is None
    for got, want in zip(flowing[:7], plain_grads):
        assert_same_bits(got, want)


def test_neutral_variants_reduce_to_the_plain_lstm():
    """Zero peepholes, an identity projection and a clip no value reaches change no
    value (x + 0 and products with an identity matrix are exact)."""
    a = _arrays(6, 4, 3, 2, 5)
    plain = ref.forward(*(a[n] for n in NAMES[:7]), lengths=[4, 1, 3])
    plain_grads = ref.backward(plain.cache, a["dy"], a["dh_n"], a["dc_n"])
    a["w_hr"] = np.eye(5)
    a["peepholes"] = np.zeros(15)
    out = _forward(a, lengths=[4, 1, 3], clip=1e30)
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    for got, want in zip(_all_results(out, grads[:7]), _all_results(plain, plain_grads)):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------
# Projection: torch.nn.LSTM(proj_size=...)


@pytest.mark.parametrize(
    "bidirectional, batch_first, lengths, bias",
    [
        (False, False, None, True),
        (True, False, [5, 2, 4, 1], True),
        (True, True, [3, 5, 5, 1], False),
        (False, True, [4, 5, 1, 2], True),
    ],
)
def test_projection_matches_torch(bidirectional, batch_first, lengths, bias):
    torch = pytest.importorskip("torch")
    T, B, I, H, P = 5, 4, 3, 6, 4
    D = 2 if bidirectional else 1
    torch.manual_seed(0)
    module = torch.nn.LSTM(
        I,
        H,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        proj_size=P,
        dtype=torch.float64,
    )
    rng = np.random.default_rng(7)
    seq = (B, T) if batch_first else (T, B)
    x = torch.tensor(rng.standard_normal((*seq, I)), requires_grad=True)
    h0 = torch.tensor(rng.standard_normal((D, B, P)), requires_grad=True)
    c0 = torch.tensor(rng.standard_normal((D, B, H)), requires_grad=True)
    dy, dh_n, dc_n = (rng.standard_normal(s) for s in ((*seq, D * P), (D, B, P), (D, B, H)))
    if lengths is None:
        y, (h_n, c_n) = module(x, (h0, c0))
    else:
        pack = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
        )
        y, (h_n, c_n) = module(pack, (h0, c0))
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=batch_first, total_length=T)
    loss = (y * torch.tensor(dy)).sum() + (h_n * torch.tensor(dh_n)).sum()
    (loss + (c_n * torch.tensor(dc_n)).sum()).backward()

    dx = np.zeros(x.shape)
    for d in range(D):
        suffix = "_l0" + ("_reverse" if d else "")
        weights = [
            getattr(module, n + suffix, None)
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
        ]
        w_ih, w_hh, b_ih, b_hh, w_hr = (None if w is None else w.detach().numpy() for w in weights)
        out = ref.forward(
            x.detach().numpy(),
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            h0[d].detach().numpy(),
            c0[d].detach().numpy(),
            batch_first=batch_first,
            lengths=lengths,
            reverse=d == 1,
            w_hr=w_hr,
        )
        grads = ref.backward(out.cache, dy[..., d * P : (d + 1) * P], dh_n[d], dc_n[d])
        assert_close(out.y, y[..., d * P : (d + 1) * P].detach().numpy(), what="y")
        assert_close(out.h_n, h_n[d].detach().numpy(), what="h_n")
        assert_close(out.c_n, c_n[d].detach().numpy(), what="c_n")
        assert_close(grads.dh0, h0.grad[d].numpy(), what="dh0")
        assert_close(grads.dc0, c0.grad[d].numpy(), what="dc0")
        for name, w in zip(("dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr"), weights):
            if w is None:
                assert getattr(grads, name) is None, name
            else:
                assert_close(getattr(grads, name), w.grad.numpy(), what=f"{name}{suffix}")
        dx += grads.dx
    assert_close(dx, x.grad.numpy(), what="dx")


# --------------------------------------------------------------------------
# ONNX Runtime: peepholes, clip, input_forget, activations

_IOFC = [0, 3, 1, 2]  # ONNX's gate blocks i, o, f, c in lstm_fast's i, f, g, o


def _onnx_gates(w):
    H = w.shape[0] // 4
    return np.concatenate([w[k * H : (k + 1) * H] for k in _IOFC])


def _onnx_lstm(directions, x, h0, c0, lengths, *, direction, clip, input_forget, acts):
    """Y, Y_h, Y_c of one ONNX LSTM node run by ONNX Runtime (float32), in
    lstm_fast's layout: y (T, B, D*H), y_h and y_c (D, B, H).

    ``directions`` holds one or two dicts of lstm_fast's arrays; ``x`` is (T, B, I).
    ONNX Runtime runs layout 0 only (it refuses layout=1, "Batchwise recurrent
    operations (layout == 1) are not supported"), so that is the layout used here.
    """
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    T, B, _ = x.shape
    H = h0.shape[1]
    D = len(directions)
    f32 = np.float32
    inputs = {
        "X": x,
        "W": np.stack([_onnx_gates(d["w_ih"]) for d in directions]),
        "R": np.stack([_onnx_gates(d["w_hh"]) for d in directions]),
        "B": np.stack(
            [np.concatenate([_onnx_gates(d["b_ih"]), _onnx_gates(d["b_hh"])]) for d in directions]
        ),
        "sequence_lens": np.asarray(lengths, np.int32),
        "initial_h": np.stack([h0] * D),
        "initial_c": np.stack([c0] * D),
        "P": np.stack([d["peepholes"] for d in directions]),
    }
    alpha, beta = [], []
    for act in acts:
        takes = len(ref.ACTIVATIONS[act.name].defaults)
        alpha += [act.alpha] if takes >= 1 else []
        beta += [act.beta] if takes >= 2 else []
    attributes = dict(
        hidden_size=H,
        direction=direction,
        layout=0,
        input_forget=int(input_forget),
        activations=[a.name for a in acts] * D,
    )
    # ORT gives each activation that takes an alpha (beta) the next one of the list
    for name, values in (("activation_alpha", alpha), ("activation_beta", beta)):
        if values:
            attributes[name] = values * D
    if clip is not None:
        attributes["clip"] = clip
    node = helper.make_node("LSTM", list(inputs), ["Y", "Y_h", "Y_c"], **attributes)
    graph = helper.make_graph(
        [node],
        "lstm",
        [],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")],
        initializer=[
            numpy_helper.from_array(v if k == "sequence_lens" else v.astype(f32), k)
            for k, v in inputs.items()
        ],
    )
    model = onnx_model(graph)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, y_h, y_c = session.run(None, {})
    return y.transpose(0, 2, 1, 3).reshape(T, B, D * H), y_h, y_c  # Y is (T, D, B, H)


def _onnx_cases():
    """Each activation in each of the three places, with every ONNX option spread
    over the cases: peepholes, clip, input_forget, the three directions, and the
    reference's batch_first (ONNX's layout 1; ORT runs layout 0 and the results are
    transposed)."""
    cases = []
    directions = ("forward", "reverse", "bidirectional")
    for k, spec in enumerate(ACTIVATION_CASES):
        for place in range(3):
            acts = [("Sigmoid",), ("Tanh",), ("Tanh",)]
            acts[place] = spec
            n = 3 * k + place
            cases.append(
                dict(
                    acts=acts,
                    direction=directions[n % 3],
                    batch_first=n // 3 % 2 == 1,
                    clip=(None, 0.9, 2.5)[(n + k) % 3],
                    input_forget=n % 4 == 1,
                )
            )
    # the options on their own, and all of them at once
    plain = [("Sigmoid",), ("Tanh",), ("Tanh",)]
    for direction in directions:
        for batch_first in (False, True):
            for clip, input_forget in ((None, False), (0.5, False), (None, True)):
                options = dict(clip=clip, input_forget=input_forget, batch_first=batch_first)
                cases.append(dict(acts=plain, direction=direction, **options))
    cases.append(
        dict(
            acts=[("HardSigmoid", 1 / 6, 0.5), ("Elu", 0.5), ("ScaledTanh", 2.0, 0.5)],
            direction="bidirectional",
            batch_first=True,
            clip=1.0,
            input_forget=True,
        )
    )
    return cases


def _case_id(case):
    acts = "-".join(a[0] for a in case["acts"])
    flags = f"bf{case['batch_first']:d}-clip{case['clip']}-if{case['input_forget']:d}"
    return f"{acts}-{case['direction']}-{flags}"


@pytest.mark.parametrize("case", _onnx_cases(), ids=_case_id)
def test_matches_onnxruntime(case):
    T, B, I, H = 4, 3, 3, 5
    D = 2 if case["direction"] == "bidirectional" else 1
    directions = [_arrays(10 + d, T, B, I, H, peepholes=True, dtype=np.float32) for d in range(D)]
    x, h0, c0 = directions[0]["x"], directions[0]["h0"], directions[0]["c0"]
    lengths = [4, 1, 3]
    acts = [ref.Activation(*spec) for spec in case["acts"]]
    options = dict(
        clip=case["clip"],
        input_forget=case["input_forget"],
        activations=acts,
        batch_first=case["batch_first"],
        lengths=lengths,
    )
    y, y_h, y_c = _onnx_lstm(
        directions,
        x,
        h0,
        c0,
        lengths,
        direction=case["direction"],
        clip=case["clip"],
        input_forget=case["input_forget"],
        acts=acts,
    )
    for d, a in enumerate(directions):
        # float64 on the same (float32) values: only ORT's float32 error is judged
        a64 = {k: None if v is None else v.astype(np.float64) for k, v in a.items()}
        a64.update(x=x.astype(np.float64), h0=h0.astype(np.float64), c0=c0.astype(np.float64))
        if case["batch_first"]:
            a64["x"] = a64["x"].transpose(1, 0, 2)
        reverse = case["direction"] == "reverse" or d == 1
        out = _forward(a64, reverse=reverse, **options)
        y_d = out.y.transpose(1, 0, 2) if case["batch_first"] else out.y
        assert_close(y[..., d * H : (d + 1) * H], y_d, np.float32, what=f"y[{d}]")
        assert_close(y_h[d], out.h_n, np.float32, what=f"y_h[{d}]")
        assert_close(y_c[d], out.c_n, np.float32, what=f"y_c[{d}]")


def test_onnx_ignores_the_forget_rows_with_input_forget():
    """ORT and the reference both ignore the f block of W, R, B and p_f with
    input_forget=1: changing them changes nothing."""
    a = _arrays(20, 3, 2, 3, 4, peepholes=True, dtype=np.float32)
    acts = [ref.Activation("Sigmoid"), ref.Activation("Tanh"), ref.Activation("Tanh")]

    def both(a):
        onnx_y = _onnx_lstm(
            [a],
            a["x"],
            a["h0"],
            a["c0"],
            [3, 3],
            direction="forward",
            clip=None,
            input_forget=True,
            acts=acts,
        )[0]
        return onnx_y, _forward(a, input_forget=True).y

    before = both(a)
    for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
        a[name][4:8] = 3.0
    a["peepholes"][8:] = -2.0
    after = both(a)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


# --------------------------------------------------------------------------
# Activations


def test_activation_table():
    a = np.linspace(-3, 3, 61)
    for spec in ACTIVATION_CASES:
        act = ref.Activation(*spec)
        y = act(a)
        # the derivative is the function's slope (away from kinks)
        h = 1e-6
        slope = (act(a + h) - act(a - h)) / (2 * h)
        smooth = np.abs(a - (act.alpha if act.name == "ThresholdedRelu" else 0)) > 1e-3
        if act.name == "HardSigmoid":
            smooth &= np.abs(np.abs(act.alpha * a + act.beta - 0.5) - 0.5) > 1e-3
        np.testing.assert_allclose(
            act.backprop(np.ones_like(a), a, y)[smooth],
            slope[smooth],
            rtol=1e-6,
            atol=1e-8,
            err_msg=act.name,
        )
        assert act(a.astype(np.float32)).dtype == np.float32, act.name
    # ONNX's defaults, names without regard to case
    assert ref.Activation("hardsigmoid") == ref.Activation("HardSigmoid", 0.2, 0.5)
    assert ref.Activation("LEAKYRELU").alpha == 0.01
    assert ref.Activation("ThresholdedRelu").alpha == 1.0
    assert ref.Activation("Elu").alpha == 1.0
    # no overflow where the function saturates
    with np.errstate(over="raise", invalid="raise"):
        for name in ("Elu", "Softplus", "Sigmoid"):
            ref.Activation(name)(np.array([-1e4, 1e4]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras's own np.array(copy=False)
def test_keras_hard_sigmoid_is_hard_sigmoid_one_sixth():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    a = np.linspace(-5, 5, 101)
    want = keras.ops.convert_to_numpy(keras.ops.hard_sigmoid(a))
    np.testing.assert_allclose(ref.Activation("HardSigmoid", 1 / 6, 0.5)(a), want, atol=1e-7)


# --------------------------------------------------------------------------
# Gradient flow: the norms of dL/dh_t and dL/dc_t


def _torch_steps(torch, a, lengths, *, forget_gate, input_forget):
    """The same forward in a hand-written torch loop; returns the loss and every
    step's h_t and c_t (retain_grad), for autograd to give dL/dh_t and dL/dc_t."""
    t = {k: None if v is None else torch.tensor(v, requires_grad=True) for k, v in a.items()}
    T, B, _ = a["x"].shape
    H = a["c0"].shape[1]
    valid = torch.tensor(np.arange(T)[:, None] < np.asarray(lengths)[None, :])
    h, c, loss, states = t["h0"], t["c0"], 0.0, []
    p_i, p_o, p_f = t["peepholes"].split(H)
    for s in range(T):
        a_s = t["x"][s] @ t["w_ih"].T + t["b_ih"] + h @ t["w_hh"].T + t["b_hh"]
        z_i, z_f, z_g, z_o = a_s.split(H, dim=1)
        i = torch.sigmoid(z_i + p_i * c)
        f = 1 - i if input_forget else torch.sigmoid(z_f + p_f * c)
        f = f if forget_gate else torch.ones_like(i)
        c_new = f * c + i * torch.tanh(z_g)
        h_new = (torch.sigmoid(z_o + p_o * c_new) * torch.tanh(c_new)) @ t["w_hr"].T
        h_new.retain_grad()
        c_new.retain_grad()
        states.append((h_new, c_new))
        ok = valid[s][:, None]
        loss = loss + (torch.where(ok, h_new, 0) * t["dy"][s]).sum()
        h, c = torch.where(ok, h_new, h), torch.where(ok, c_new, c)
    return loss + (h * t["dh_n"]).sum() + (c * t["dc_n"]).sum(), states


@pytest.mark.parametrize("options", [{}, dict(forget_gate=False), dict(input_forget=True)], ids=str)
def test_gradient_flow_matches_torch_autograd(options):
    torch = pytest.importorskip("torch")
    a = _arrays(30, 6, 3, 2, 4, P=3, peepholes=True)
    lengths = [6, 2, 4]
    loss, states = _torch_steps(
        torch, a, lengths, **{"forget_gate": True, "input_forget": False, **options}
    )
    loss.backward()
    out = _forward(a, lengths=lengths, **options)
    grads = ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"], flow=True)
    flow = grads.flow
    want_h = np.stack([s[0].grad.norm(dim=1).numpy() for s in states])
    want_c = np.stack([s[1].grad.norm(dim=1).numpy() for s in states])
    assert flow.dh.shape == flow.dc.shape == (6, 3) and flow.dh_sum.shape == (6,)
    assert_close(flow.dh, want_h, what="dh")
    assert_close(flow.dc, want_c, what="dc")
    assert_close(flow.dh_sum, want_h.sum(axis=1), what="dh_sum")
    assert_close(flow.dc_sum, want_c.sum(axis=1), what="dc_sum")
    assert np.all(flow.dh[2:, 1] == 0) and np.all(flow.dc[4:, 2] == 0), "padded steps are 0"


def test_gradient_flow_layouts():
    """Time-major, real time: batch_first and reverse give the same norms as the
    time-major forward pass over the time-reversed sequence."""
    a = _arrays(31, 5, 2, 3, 4)
    full = ref.backward(_forward(a).cache, a["dy"], a["dh_n"], a["dc_n"], flow=True).flow
    flipped = dict(a, x=a["x"][::-1].transpose(1, 0, 2), dy=a["dy"][::-1].transpose(1, 0, 2))
    out = _forward(flipped, reverse=True, batch_first=True)
    rev = ref.backward(out.cache, flipped["dy"], a["dh_n"], a["dc_n"], flow=True).flow
    for got, want in zip(rev, full):
        np.testing.assert_allclose(got, want[::-1], rtol=1e-12)
    # with only dc_n given, the last step's dL/dc_t is dc_n itself
    no_out = dict(a, dy=np.zeros_like(a["dy"]), dh_n=np.zeros_like(a["dh_n"]))
    g = ref.backward(_forward(no_out, forget_gate=False).cache, None, None, a["dc_n"], flow=True)
    assert g.flow.dc.shape == (5, 2)
    np.testing.assert_allclose(g.flow.dc[-1], np.linalg.norm(a["dc_n"], axis=1), rtol=1e-12)


# --------------------------------------------------------------------------
# dtypes, prepared weights


def test_float32_variants_match_float64():
    a32 = _arrays(40, 4, 3, 3, 5, P=2, peepholes=True, dtype=np.float32)
    a64 = {k: None if v is None else v.astype(np.float64) for k, v in a32.items()}
    options = dict(
        clip=1.2,
        activations=[("HardSigmoid", 0.25, 0.5), "Softsign", "Tanh"],
        lengths=[4, 2, 3],
        reverse=True,
    )
    results = []
    for a in (a32, a64):
        out = _forward(a, **options)
        results.append((out, ref.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"], flow=True)))
    (o32, g32), (o64, g64) = results
    for name in ("y", "h_n", "c_n"):
        assert_close(getattr(o32, name), getattr(o64, name), np.float32, what=name)
    for name in g32._fields[:-1]:
        got = getattr(g32, name)
        assert got.dtype == np.float32, name
        assert_close(got, getattr(g64, name), np.float32, what=name)
    for got, want in zip(g32.flow, g64.flow):
        assert got.dtype == np.float32
        assert_close(got, want, np.float32, what="flow")


def test_prepared_weights_take_the_options():
    a = _arrays(41, 3, 2, 2, 3, P=2, peepholes=True)
    prepared = ref.prepare_weights(a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    got = prepared.forward(
        a["x"], a["h0"], a["c0"], w_hr=a["w_hr"], peepholes=a["peepholes"], clip=0.5
    )
    want = _forward(a, clip=0.5)
    for k in range(3):
        assert_same_bits(got[k], want[k])


# --------------------------------------------------------------------------
# Bad options


def _bad_calls():
    a = _arrays(50, 2, 2, 2, 3, P=2, peepholes=True)
    plain = {k: v for k, v in _arrays(50, 2, 2, 2, 3).items() if k in NAMES[:3]}
    wrong_w_hh = dict(plain, w_hh=np.zeros((12, 3)))  # (4H, H) where w_hr wants (4H, P)
    return [
        (plain, dict(activations=["Sigmoid", "Tanh", "Swish"]), ValueError, "unknown activation"),
        (plain, dict(activations=["Sigmoid", "Tanh"]), ValueError, "activations must have 3"),
        (plain, dict(activations="Sigmoid"), TypeError, "activations must be a sequence"),
        (plain, dict(activations=["Sigmoid", 3, "Tanh"]), TypeError, "activations: each entry"),
        (plain, dict(activations=["Affine", "Tanh", "Tanh"]), ValueError, "Affine needs its alpha"),
        (
            plain,
            dict(activations=[("Sigmoid", 1.0), "Tanh", "Tanh"]),
            ValueError,
            "Sigmoid takes no alpha",
        ),
        (
            plain,
            dict(activations=[("Elu", 1.0, 2.0), "Tanh", "Tanh"]),
            ValueError,
            "Elu takes no beta",
        ),
        (plain, dict(activations=[("LeakyRelu", "a"), "Tanh", "Tanh"]), TypeError, "alpha"),
        (plain, dict(clip=0), ValueError, "clip must be > 0"),
        (plain, dict(clip=-1.0), ValueError, "clip must be > 0"),
        (plain, dict(clip=float("nan")), ValueError, "clip"),
        (plain, dict(clip="1"), TypeError, "clip must be a real number"),
        (plain, dict(input_forget="yes"), TypeError, "input_forget"),
        (plain, dict(forget_gate=None), TypeError, "forget_gate"),
        (plain, dict(input_forget=True, forget_gate=False), ValueError, "input_forget"),
        (plain, dict(peepholes=np.zeros(6)), ValueError, "peepholes must have shape"),
        (plain, dict(peepholes=np.zeros((3, 3))), ValueError, "peepholes must have shape"),
        (plain, dict(peepholes=np.array(["a"] * 9)), TypeError, "peepholes"),
        (
            dict(plain, w_hh=a["w_hh"]),
            dict(w_hr=np.zeros((2, 4))),
            ValueError,
            "w_hr must have shape",
        ),
        (dict(plain, w_hh=a["w_hh"]), dict(w_hr=np.zeros(6)), ValueError, "w_hr must have shape"),
        (wrong_w_hh, dict(w_hr=np.zeros((2, 3))), ValueError, "w_hh must have shape"),
        (
            dict(plain, w_hh=a["w_hh"]),
            dict(w_hr=a["w_hr"], h0=np.zeros((2, 3))),
            ValueError,
            "h0 must have shape",
        ),
        (
            dict(plain, w_hh=a["w_hh"]),
            dict(w_hr=a["w_hr"], c0=np.zeros((2, 2))),
            ValueError,
            "c0 must have shape",
        ),
        (dict(plain, w_hh=a["w_hh"]), dict(w_hr=a["w_hr"], b_ih=np.zeros(8)), ValueError, "b_ih"),
        (dict(plain, w_hh=a["w_hh"]), dict(w_hr="junk"), TypeError, "w_hr"),
        (dict(plain, w_hh=None), dict(w_hr=a["w_hr"]), TypeError, "w_hh is required"),
    ]


@pytest.mark.parametrize("k", range(len(_bad_calls())))
def test_bad_options_name_the_argument(k):
    arrays, options, error, message = _bad_calls()[k]
    with pytest.raises(error, match=message):
        ref.forward(**arrays, **options)
    h0 = options.pop("h0", np.zeros((2, 2 if "w_hr" in options else 3)))
    c0 = options.pop("c0", np.zeros((2, 3)))
    x_t = arrays["x"][0]
    with pytest.raises(error, match=message.replace("h0", "h").replace("c0", "c")):
        ref.cell_forward(x_t, h0, c0, arrays["w_ih"], arrays["w_hh"], **options)


def test_bad_backward_arguments():
    a = _arrays(51, 2, 2, 2, 3, P=2)
    out = _forward(a)
    with pytest.raises(TypeError, match="flow"):
        ref.backward(out.cache, flow="yes")
    with pytest.raises(ValueError, match=r"dy must have shape \(seq_len, batch, proj_size\)"):
        ref.backward(out.cache, np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match=r"dh_n must have shape \(batch, proj_size\)"):
        ref.backward(out.cache, None, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"dc_n must have shape \(batch, hidden_size\)"):
        ref.backward(out.cache, None, None, np.zeros((2, 2)))

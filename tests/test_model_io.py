"""Whole models in and out: LSTM.from_onnx, LSTM.from_keras and export_onnx of the
variants, with ONNX Runtime, PyTorch's exporter and Keras 3 as the oracles."""

from __future__ import annotations

import io
import os
import pickle
import warnings

import numpy as np
import pytest
from lstm_fast import LSTM

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tests.helpers import onnx_model  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The object being serialized includes a `lambda`"),
]


def _session(model):
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _close(got, want, what="", atol=ATOL):
    for k, (a, b) in enumerate(zip(got, want)):
        assert np.shape(a) == np.shape(b), (what, k)
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=atol, err_msg=f"{what} output {k}")


def _forward(layer, x, **kw):
    y, (h, c) = layer(x, **kw)
    return y, h, c


# ------------------------------------------------------------------- export_onnx

ACTIVATIONS = [
    ("Sigmoid",),
    ("Tanh",),
    ("Relu",),
    ("HardSigmoid", 0.25, 0.4),
    ("Affine", 0.5, 0.1),
    ("LeakyRelu", 0.05),
    ("ThresholdedRelu", 0.3),
    ("ScaledTanh", 1.5, 0.7),
    ("Elu", 0.8),
    ("Softsign",),
    ("Softplus",),
]

EXPORT_CASES = [
    dict(peepholes=True),
    dict(clip=0.7),
    dict(input_forget=True),
    dict(peepholes=True, clip=1.5, input_forget=True, bidirectional=True, num_layers=2),
    dict(activations=[("HardSigmoid", 1 / 6, 0.5), "Elu", ("ScaledTanh", 2.0, 0.5)]),
    dict(activations=["Softsign", "Relu", ("LeakyRelu", 0.1)], batch_first=True, bias=False),
    dict(activations=[("Affine", 0.3, 0.5), "Softplus", "Tanh"], bidirectional=True),
    dict(activations=["Sigmoid", ("ThresholdedRelu", 0.2), "Tanh"], peepholes=True, clip=3.0),
    dict(peepholes=True, dtype=np.float64, num_layers=2, batch_first=True),
]


@pytest.mark.parametrize("options", EXPORT_CASES, ids=lambda o: "-".join(map(str, o)))
def test_export_variant_runs_in_onnxruntime(tmp_path, options):
    options = dict(options)
    layers = options.pop("num_layers", 1)
    m = LSTM(3, 5, layers, seed=4, **options)
    path = tmp_path / "variant.onnx"
    m.export_onnx(path)
    rng = np.random.default_rng(5)
    for steps, batch in ((6, 2), (3, 4)):
        shape = (batch, steps, 3) if m.batch_first else (steps, batch, 3)
        x = rng.standard_normal(shape).astype(m.dtype)
        _close(_session(onnx.load(path)).run(None, {"x": x}), _forward(m, x), str(options))
    # ...and back: the model read by from_onnx is the same layer
    back = LSTM.from_onnx(path)
    rtol = 0 if m.dtype == np.float32 else 1e-7  # float64 layers export float32 nodes
    for name, value in m.parameters.items():
        np.testing.assert_allclose(back.parameters[name], value, rtol=rtol, atol=0, err_msg=name)
    assert (back.clip, back.input_forget, back.peepholes) == (m.clip, m.input_forget, m.peepholes)


def test_export_refuses_what_onnx_cannot_say(tmp_path):
    with pytest.raises(NotImplementedError, match="forget_gate=False"):
        LSTM(3, 4, forget_gate=False).export_onnx(tmp_path / "m.onnx")


# ------------------------------------------------------ from_onnx: PyTorch's exporter

torch = pytest.importorskip("torch")


def _torch_onnx(module, args, input_names, dynamic):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            buffer,
            dynamo=False,
            input_names=input_names,
            output_names=["y", "h_n", "c_n"],
            dynamic_axes=dynamic,
        )
    return buffer.getvalue()


@pytest.mark.parametrize(
    "layers, bidi, batch_first, states",
    [
        (1, False, False, False),
        (1, True, False, True),
        (2, False, True, False),
        (2, True, True, True),
        (3, True, False, False),
        (2, True, True, "static"),
        (2, False, False, "static"),
    ],
)
def test_from_pytorch_exporter(layers, bidi, batch_first, states):
    torch.manual_seed(layers)
    net = torch.nn.LSTM(3, 4, layers, bidirectional=bidi, batch_first=batch_first).eval()
    B, T = 2, 5
    shape = (B, T, 3) if batch_first else (T, B, 3)
    x = torch.randn(shape)
    rows = layers * (2 if bidi else 1)
    h0, c0 = torch.randn(rows, B, 4), torch.randn(rows, B, 4)
    if states == "static":
        # no dynamic axes: the zero states are built for this batch size
        data = _torch_onnx(net, (x,), ["x"], None)
        states = False
    elif states:
        data = _torch_onnx(net, (x, (h0, c0)), ["x", "h0", "c0"], None)
    else:
        batch_axis, time_axis = (0, 1) if batch_first else (1, 0)
        data = _torch_onnx(net, (x,), ["x"], {"x": {batch_axis: "B", time_axis: "T"}})
    layer = LSTM.from_onnx(data)
    assert (layer.num_layers, layer.bidirectional, layer.batch_first) == (layers, bidi, batch_first)
    with torch.no_grad():
        want = net(x, (h0, c0)) if states else net(x)
    want = [want[0].numpy(), want[1][0].numpy(), want[1][1].numpy()]
    hx = (h0.numpy(), c0.numpy()) if states else None
    _close(_forward(layer, x.numpy(), hx=hx), want, "pytorch")
    # ONNX Runtime runs the same file to the same numbers
    feeds = {"x": x.numpy(), **({"h0": h0.numpy(), "c0": c0.numpy()} if states else {})}
    _close(_session(data).run(None, feeds), want, "onnxruntime")


# ---------------------------------------------- from_onnx: models made with onnx.helper


def _lstm_model(
    directions,
    H=4,
    I=3,
    *,
    layout=0,
    acts=None,
    clip=None,
    input_forget=False,
    peepholes=True,
    lengths=False,
    states=False,
    direction=None,
    bias=True,
    seed=0,
):
    """One ONNX LSTM node, its optional inputs as graph inputs, random weights."""
    rng = np.random.default_rng(seed)
    D = 2 if directions == "bidirectional" else 1
    direction = direction or directions
    inits = [
        numpy_helper.from_array(rng.standard_normal((D, 4 * H, I)).astype(np.float32) * 0.5, "W"),
        numpy_helper.from_array(rng.standard_normal((D, 4 * H, H)).astype(np.float32) * 0.5, "R"),
    ]
    inputs = ["X", "W", "R", "", "", "", "", ""]
    if bias:
        inits.append(
            numpy_helper.from_array(rng.standard_normal((D, 8 * H)).astype(np.float32), "B")
        )
        inputs[3] = "B"
    if peepholes:
        inits.append(
            numpy_helper.from_array(rng.standard_normal((D, 3 * H)).astype(np.float32), "P")
        )
        inputs[7] = "P"
    x_shape = ["B", "T", I] if layout else ["T", "B", I]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if lengths:
        inputs[4] = "lens"
        graph_inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["B"]))
    if states:
        inputs[5:7] = ["h0", "c0"]
        state_shape = ["B", D, H] if layout else [D, "B", H]
        for name in ("h0", "c0"):
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, state_shape))
    attrs = dict(hidden_size=H, direction=direction)
    if layout:
        attrs["layout"] = 1
    if clip is not None:
        attrs["clip"] = clip
    if input_forget:
        attrs["input_forget"] = 1
    if acts is not None:
        alpha, beta = [], []
        for a in acts:
            alpha += list(a[1:2])
            beta += list(a[2:3])
        attrs["activations"] = [a[0] for a in acts] * D
        if alpha:
            attrs["activation_alpha"] = alpha * D
        if beta:
            attrs["activation_beta"] = beta * D
    node = helper.make_node("LSTM", inputs, ["Y", "Y_h", "Y_c"], name="lstm", **attrs)
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")
    ]
    graph = helper.make_graph([node], "m", graph_inputs, outputs, initializer=inits)
    return onnx_model(graph)


def _as_layout0(model):
    """The same model in layout 0 (ONNX Runtime refuses layout=1)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    node = copy.graph.node[0]
    for a in list(node.attribute):
        if a.name == "layout":
            node.attribute.remove(a)
    return copy


def _check_helper_model(model, T=5, B=3, **flags):
    layer = LSTM.from_onnx(model)
    layout = flags.get("layout", 0)
    D = layer.num_directions
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, B, layer.input_size)).astype(np.float32)
    feeds = {"X": x}
    kw = {}
    if flags.get("lengths"):
        feeds["lens"] = np.array([T, 2, 1], np.int32)  # ORT: length 0 gives Y_h = 0, not h0
        kw["lengths"] = feeds["lens"]
    if flags.get("states"):
        feeds["h0"] = rng.standard_normal((D, B, layer.hidden_size)).astype(np.float32)
        feeds["c0"] = rng.standard_normal((D, B, layer.hidden_size)).astype(np.float32)
        kw["hx"] = (feeds["h0"], feeds["c0"])
    y, y_h, y_c = _session(_as_layout0(model)).run(None, feeds)
    want = [y.transpose(0, 2, 1, 3).reshape(T, B, D * layer.hidden_size), y_h, y_c]
    if layout:
        assert layer.batch_first
        x = x.transpose(1, 0, 2)
        want[0] = want[0].transpose(1, 0, 2)
    _close(_forward(layer, x, **kw), want, str(flags))
    return layer


@pytest.mark.parametrize("place", range(3))
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a[0])
def test_from_onnx_activations(act, place):
    acts = [("Sigmoid",), ("Tanh",), ("Tanh",)]
    acts[place] = act
    directions = ("forward", "reverse", "bidirectional")[(ACTIVATIONS.index(act) + place) % 3]
    model = _lstm_model(directions, acts=acts, clip=2.0 if place == 1 else None)
    layer = _check_helper_model(model)
    assert layer.activations is None or layer.activations[place][0] == act[0]


@pytest.mark.parametrize(
    "flags",
    [
        dict(directions="forward", lengths=True, states=True),
        dict(directions="reverse", lengths=True, states=True, input_forget=True),
        dict(directions="bidirectional", lengths=True, states=True, clip=0.5),
        dict(directions="bidirectional", layout=1, states=True),
        dict(directions="reverse", layout=1, input_forget=True, clip=1.0),
        dict(directions="forward", peepholes=False, bias=False),
        dict(directions="bidirectional", input_forget=True, lengths=True),
    ],
    ids=str,
)
def test_from_onnx_options(flags):
    model = _lstm_model(**flags)
    check = {k: v for k, v in flags.items() if k in ("layout", "lengths", "states")}
    if flags.get("layout") and flags.get("states"):
        # layout 1 keeps the states (B, D, H); ONNX Runtime's layout 0 wants (D, B, H)
        check.pop("states")
        _check_layout1_states(model)
    else:
        _check_helper_model(model, **check)


def _check_layout1_states(model):
    layer = LSTM.from_onnx(model)
    T, B, H = 4, 2, layer.hidden_size
    D = layer.num_directions
    rng = np.random.default_rng(8)
    x = rng.standard_normal((T, B, 3)).astype(np.float32)
    h0 = rng.standard_normal((D, B, H)).astype(np.float32)
    c0 = rng.standard_normal((D, B, H)).astype(np.float32)
    y, y_h, y_c = _session(_as_layout0(model)).run(None, {"X": x, "h0": h0, "c0": c0})
    want = [y.transpose(2, 0, 1, 3).reshape(B, T, D * H), y_h, y_c]
    _close(_forward(layer, x.transpose(1, 0, 2), hx=(h0, c0)), want, "layout 1")


def test_from_onnx_inputs_and_pickle(tmp_path):
    model = _lstm_model("reverse")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    a, b, c = (LSTM.from_onnx(v) for v in (model, str(path), model.SerializeToString()))
    for name in a.parameters:
        assert np.array_equal(a.parameters[name], b.parameters[name])
        assert np.array_equal(a.parameters[name], c.parameters[name])
    assert "reverse" in repr(a)
    again = pickle.loads(pickle.dumps(a))
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(again(x)[0], a(x)[0])
    with pytest.raises(ValueError, match="unidirectional"):
        a.step(x[0])
    # a reverse layer exports as direction="reverse"
    a.export_onnx(tmp_path / "back.onnx")
    _close(_session(onnx.load(tmp_path / "back.onnx")).run(None, {"x": x}), _forward(a, x))
    with pytest.raises(TypeError, match="model_or_path"):
        LSTM.from_onnx(3.5)


def _with_head(model):
    """model + a MatMul on Y (a head the layer cannot hold)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.initializer.append(numpy_helper.from_array(np.ones((4, 2), np.float32), "head"))
    m.graph.node.append(helper.make_node("MatMul", ["Y", "head"], ["logits"], name="head"))
    m.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, None))
    return m


def test_from_onnx_errors():
    with pytest.raises(ValueError, match="MatMul node 'head'"):
        LSTM.from_onnx(_with_head(_lstm_model("forward")))
    model = _lstm_model("bidirectional", acts=[("Sigmoid",), ("Tanh",), ("Tanh",)])
    attr = next(a for a in model.graph.node[0].attribute if a.name == "activations")
    attr.strings[3] = b"HardSigmoid"
    with pytest.raises(ValueError, match="different activations"):
        LSTM.from_onnx(model)
    model = _lstm_model("forward", acts=[("Sigmoid",), ("Tanh",), ("Tanh",)])
    attr = next(a for a in model.graph.node[0].attribute if a.name == "activations")
    attr.strings[1] = b"Affine"
    with pytest.raises(ValueError, match="Affine needs its alpha"):
        LSTM.from_onnx(model)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["Y"], name="r")],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(ValueError, match="Relu node 'r'"):
        LSTM.from_onnx(helper.make_model(graph))
    graph.node[0].op_type = "Identity"
    with pytest.raises(ValueError, match="no LSTM node"):
        LSTM.from_onnx(helper.make_model(graph))


def _stack(glue, second_layout=0):
    """Two forward LSTM nodes with ``glue`` nodes from Y1 to the second node's X."""
    rng = np.random.default_rng(3)
    H = 4
    inits = []
    for k, size in ((1, 3), (2, H)):
        inits.append(
            numpy_helper.from_array(
                rng.standard_normal((1, 4 * H, size)).astype(np.float32), f"W{k}"
            )
        )
        inits.append(
            numpy_helper.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32), f"R{k}")
        )
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape"))
    nodes = [
        helper.make_node(
            "LSTM", ["x", "W1", "R1"], ["Y1", "h1", "c1"], name="first", hidden_size=H
        ),
        *glue,
        helper.make_node(
            "LSTM", ["X2", "W2", "R2"], ["Y2", "h2", "c2"], name="second", hidden_size=H
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", 3])],
        [helper.make_tensor_value_info("Y2", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return onnx_model(graph)


def test_from_onnx_stacked_glue():
    squeeze = [helper.make_node("Squeeze", ["Y1", "axis1"], ["X2"])]
    layer = LSTM.from_onnx(_stack(squeeze))
    x = np.random.default_rng(2).standard_normal((5, 2, 3)).astype(np.float32)
    model = _stack(squeeze)
    y = _session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(layer(x)[0], y[:, 0], rtol=RTOL, atol=ATOL)
    # Glue that moves the data somewhere else is refused, naming the node
    wrong = [
        helper.make_node("Transpose", ["Y1"], ["Y1t"], perm=[2, 1, 0, 3]),
        helper.make_node("Reshape", ["Y1t", "shape"], ["X2"]),
    ]
    with pytest.raises(ValueError, match="X of LSTM node 'second' must be the Y"):
        LSTM.from_onnx(_stack(wrong))
    # an op outside the glue set
    relu = [
        helper.make_node("Squeeze", ["Y1", "axis1"], ["Y1s"]),
        helper.make_node("Relu", ["Y1s"], ["X2"], name="act"),
    ]
    with pytest.raises(ValueError, match="Relu node 'act'"):
        LSTM.from_onnx(_stack(relu))


def test_from_onnx_lengths_from_the_shape():
    """tf2onnx's full-length sequence_lens, computed from x's shape, is accepted."""
    model = _lstm_model("bidirectional")
    graph = model.graph
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), "t_axis"),
            numpy_helper.from_array(np.array([1], np.int64), "b_axis"),
        ]
    )
    glue = [
        helper.make_node("Shape", ["X"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "t_axis"], ["steps"]),
        helper.make_node("Gather", ["x_shape", "b_axis"], ["batch"]),
        helper.make_node("Expand", ["steps", "batch"], ["lens64"]),
        helper.make_node("Cast", ["lens64"], ["lens"], to=TensorProto.INT32),
    ]
    for k, node in enumerate(glue):
        graph.node.insert(k, node)
    graph.node[len(glue)].input[4] = "lens"
    _check_helper_model(model)
    # a constant that cuts rows short is refused
    graph.node[len(glue)].input[4] = "short"
    graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 1], np.int32), "short"))
    with pytest.raises(ValueError, match="sequence_lens of LSTM node 'lstm' is a constant"):
        LSTM.from_onnx(model)


def test_from_onnx_nonzero_constant_state():
    model = _lstm_model("forward")
    node = model.graph.node[0]
    model.graph.initializer.append(
        numpy_helper.from_array(np.ones((1, 1, 4), np.float32), "h_init")
    )
    node.input[5] = "h_init"
    with pytest.raises(ValueError, match="initial_h of LSTM node 'lstm' is a constant"):
        LSTM.from_onnx(model)


# --------------------------------------------------------------------- from_keras

os.environ.setdefault("KERAS_BACKEND", "torch")


@pytest.fixture(scope="module")
def keras():
    if os.environ.get("KERAS_BACKEND") != "torch":
        pytest.skip("the Keras tests run with KERAS_BACKEND=torch")
    return pytest.importorskip("keras")


def _keras_out(layer, x):
    return np.asarray(layer(x).detach().cpu().numpy())


KERAS_CASES = [
    dict(),
    dict(go_backwards=True),
    dict(use_bias=False),
    dict(recurrent_activation="hard_sigmoid"),
    dict(activation="relu", recurrent_activation="sigmoid", unit_forget_bias=False),
    dict(activation="softsign", recurrent_activation="hard_sigmoid", go_backwards=True),
    dict(activation="elu"),
    dict(activation="linear", recurrent_activation="hard_sigmoid"),
    dict(recurrent_activation="softplus"),
    dict(activation="leaky_relu"),
]


@pytest.mark.parametrize(
    "options, bidirectional",
    # (Bidirectional makes its own go_backwards layer)
    [(o, b) for o in KERAS_CASES for b in (False, True) if not (b and o.get("go_backwards"))],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else f"bidi{v}",
)
def test_from_keras(keras, tmp_path, options, bidirectional):
    keras.utils.set_random_seed(1)
    lstm = keras.layers.LSTM(4, return_sequences=True, **options)
    layer = keras.layers.Bidirectional(lstm) if bidirectional else lstm
    x = np.random.default_rng(3).standard_normal((2, 6, 3)).astype(np.float32)
    want = _keras_out(layer, x)
    if options.get("use_bias", True) is not False:
        # random biases, so that they are checked too
        weights = layer.get_weights()
        layer.set_weights(
            [
                w + 0.3 * np.random.default_rng(4).standard_normal(w.shape) if w.ndim == 1 else w
                for w in weights
            ]
        )
        want = _keras_out(layer, x)
    ours = LSTM.from_keras(layer)
    assert ours.batch_first and ours.bidirectional == bidirectional
    y = ours(x)[0]
    if options.get("go_backwards"):
        y = y[:, ::-1]  # Keras returns the steps in processing order
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL)
    # the same from (config, weights)
    again = LSTM.from_keras((layer.get_config(), layer.get_weights()))
    np.testing.assert_array_equal(again(x)[0], ours(x)[0])
    # and out to ONNX Runtime
    path = tmp_path / "keras.onnx"
    ours.export_onnx(path)
    # (unbounded activations reach |y| ~ 2: float32 rounding of other operation orders)
    _close(_session(onnx.load(path)).run(None, {"x": x}), _forward(ours, x), "export", atol=1e-5)


def test_keras_hard_sigmoid_is_one_sixth(keras):
    a = np.linspace(-4, 4, 33)
    got = np.asarray(keras.ops.hard_sigmoid(keras.ops.convert_to_tensor(a)).cpu())
    np.testing.assert_allclose(got, np.clip(a / 6 + 0.5, 0, 1), rtol=1e-6, atol=1e-7)


def test_from_keras_errors(keras):
    x = np.zeros((1, 2, 3), np.float32)
    for act, name in (("gelu", "gelu"), ("swish", "silu"), ("selu", "selu")):
        layer = keras.layers.LSTM(2, activation=act)
        layer(x)
        with pytest.raises(ValueError, match=f"activation '{name}'"):
            LSTM.from_keras(layer)
    layer = keras.layers.LSTM(2, recurrent_activation=lambda v: v)
    layer(x)
    with pytest.raises(ValueError, match="recurrent_activation"):
        LSTM.from_keras(layer)
    bidi = keras.layers.Bidirectional(keras.layers.LSTM(2), merge_mode="sum")
    bidi(x)
    with pytest.raises(ValueError, match="merge_mode"):
        LSTM.from_keras(bidi)
    with pytest.raises(ValueError, match="build it first"):
        LSTM.from_keras(keras.layers.LSTM(2))
    with pytest.raises(TypeError, match="layer_or_config"):
        LSTM.from_keras(42)
    good = keras.layers.LSTM(2)
    good(x)
    with pytest.raises(ValueError, match="weights must hold 3"):
        LSTM.from_keras((good.get_config(), good.get_weights()[:2]))


def test_from_onnx_refuses_what_is_not_a_model(tmp_path):
    pytest.importorskip("onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model")
    for source in (b"junk", junk):
        with pytest.raises(ValueError, match="model_or_path: .* not hold an ONNX model"):
            LSTM.from_onnx(source)
    with pytest.raises(FileNotFoundError):
        LSTM.from_onnx(tmp_path / "missing.onnx")

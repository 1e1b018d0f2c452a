"""ONNX export of layers with a projection (proj_size): a Scan over time whose body is
one step of the cell, run by ONNX Runtime and compared with the NumPy reference
(module lstm_fast.export, docs/variants.md 'Projection')."""

from __future__ import annotations

import inspect

import lstm_fast
import numpy as np
import pytest
from lstm_fast import reference
from lstm_fast._types import LayerWeights
from lstm_fast.export import to_onnx_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class _Stack:
    """A stand-in for a layer with a projection, made of plain weight arrays: what the
    export reads (sizes, ``weights``, ``_variant``), and its forward by the reference."""

    def __init__(
        self,
        input_size,
        hidden,
        proj,
        num_layers=1,
        *,
        bidirectional=False,
        batch_first=False,
        bias=True,
        dtype=np.float32,
        seed=0,
        peepholes=False,
        **options,
    ):
        rng = np.random.default_rng(seed)
        self.input_size, self.hidden_size, self.proj_size = input_size, hidden, proj
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.bias, self.batch_first, self.dtype = bias, batch_first, np.dtype(dtype)
        self.options = options
        self.arrays = {}

        def uniform(*shape):
            return rng.uniform(-0.6, 0.6, shape).astype(dtype)

        for k in range(num_layers):
            width = input_size if k == 0 else self.num_directions * proj
            for d in range(self.num_directions):
                self.arrays[k, d] = dict(
                    w_ih=uniform(4 * hidden, width),
                    w_hh=uniform(4 * hidden, proj),
                    b_ih=uniform(4 * hidden) if bias else None,
                    b_hh=uniform(4 * hidden) if bias else None,
                    w_hr=uniform(proj, hidden),
                    peepholes=uniform(3 * hidden) if peepholes else None,
                )

    def weights(self, layer, direction=0):
        a = self.arrays[layer, direction]
        return LayerWeights(a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])

    def _variant(self, layer, direction):
        a = self.arrays[layer, direction]
        extra = {} if a["peepholes"] is None else {"peepholes": a["peepholes"]}
        return {"w_hr": a["w_hr"], **extra, **self.options}

    def __repr__(self):
        return f"_Stack({self.input_size}, {self.hidden_size}, proj_size={self.proj_size})"

    def forward(self, x):
        current, h_n, c_n = x, [], []
        for k in range(self.num_layers):
            ys = []
            for d in range(self.num_directions):
                out = reference.forward(
                    current,
                    *self.weights(k, d),
                    batch_first=self.batch_first,
                    reverse=d == 1,
                    **self._variant(k, d),
                )
                ys.append(out.y)
                h_n.append(out.h_n)
                c_n.append(out.c_n)
            current = np.concatenate(ys, axis=-1)
        return current, np.stack(h_n), np.stack(c_n)


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _compare(session, stack, shapes, tol):
    rng = np.random.default_rng(7)
    for steps, batch in shapes:
        shape = (
            (batch, steps, stack.input_size)
            if stack.batch_first
            else (steps, batch, stack.input_size)
        )
        x = rng.standard_normal(shape).astype(stack.dtype)
        got = session.run(None, {"x": x})
        want = stack.forward(x)
        for name, ours, theirs in zip(("y", "h_n", "c_n"), got, want):
            assert ours.shape == theirs.shape, name
            assert ours.dtype == theirs.dtype, name
            assert np.abs(theirs).max() > 1e-3, name  # a comparison of zeros proves nothing
            np.testing.assert_allclose(ours, theirs, err_msg=name, **tol)


TIGHT = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13),
}

CASES = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, batch_first=True),
    dict(bidirectional=True, batch_first=True, bias=False),
    dict(clip=0.4),
    dict(peepholes=True, clip=0.6, bidirectional=True),
    dict(input_forget=True, peepholes=True),
    dict(forget_gate=False, num_layers=2),
    dict(activations=[("HardSigmoid", 0.25, 0.4), ("Elu", 0.8), ("ScaledTanh", 1.5, 0.7)]),
    dict(activations=[("Affine", 0.5, 0.1), ("LeakyRelu", 0.05), "Softplus"], clip=2.0),
    dict(activations=["Softsign", ("ThresholdedRelu", 0.1), "Tanh"], bidirectional=True),
    dict(activations=["Sigmoid", "Relu", "Softsign"], batch_first=True),
    dict(dtype=np.float64, num_layers=2, bidirectional=True, peepholes=True, clip=1.0),
    dict(dtype=np.float64, activations=[("HardSigmoid", 1 / 6, 0.5), "Softplus", "Elu"]),
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_scan_export_equals_the_reference(options):
    stack = _Stack(3, 6, 4, seed=2, **options)
    # The body computes in the layer's dtype here (float64 nodes run in ONNX Runtime).
    model = to_onnx_model(stack, lstm_dtype=stack.dtype)
    ops = {n.op_type for n in model.graph.node}
    assert "Scan" in ops and "LSTM" not in ops
    assert (
        sum(n.op_type == "Scan" for n in model.graph.node)
        == stack.num_layers * stack.num_directions
    )
    # Dynamic sequence length and batch: several shapes through one model.
    _compare(_session(model), stack, ((5, 2), (1, 3), (9, 1)), TIGHT[stack.dtype])


@pytest.mark.parametrize("opset", [9, 10, 12, 13, 17, 18, 21])
def test_every_opset_from_9(opset):
    # Split's sizes moved from an attribute to an input in 13; Clip is not used.
    stack = _Stack(3, 5, 2, 2, bidirectional=True, seed=3, clip=0.5, peepholes=True)
    model = to_onnx_model(stack, opset=opset)
    assert model.opset_import[0].version == opset
    _compare(_session(model), stack, ((4, 2),), TIGHT[stack.dtype])


def test_float64_with_float32_nodes():
    # The default lstm_dtype: float64 in and out, float32 inside (as for the LSTM nodes).
    stack = _Stack(3, 5, 3, 2, dtype=np.float64, seed=4)
    model = to_onnx_model(stack)
    weights = {i.name: i.data_type for i in model.graph.initializer}
    assert weights["l0_W_ih_T"] == weights["l1_W_hr_T"] == onnx.TensorProto.FLOAT
    _compare(_session(model), stack, ((6, 2),), dict(rtol=1e-5, atol=1e-6))


def test_output_shapes_are_declared():
    stack = _Stack(3, 5, 2, 2, bidirectional=True, batch_first=True)
    graph = to_onnx_model(stack).graph
    dims = {
        o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
        for o in graph.output
    }
    assert dims == {
        "y": ["batch", "seq_len", 4],
        "h_n": [4, "batch", 2],
        "c_n": [4, "batch", 5],
    }
    assert [i.name for i in graph.input] == ["x"]


def test_refusals():
    stack = _Stack(3, 5, 2)
    with pytest.raises(ValueError, match="opset must be >= 9.*proj_size"):
        to_onnx_model(stack, opset=8)
    stack.arrays[0, 0]["w_hr"] = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"w_hr of shape \(2, 5\)"):
        to_onnx_model(stack)


# ----------------------------------------------------------- the layer, end to end

needs_engine = pytest.mark.skipif(
    "w_hr" not in inspect.signature(lstm_fast.forward).parameters,
    reason="the engine has no projection (w_hr) yet",
)


@needs_engine
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(num_layers=2, bidirectional=True),
        dict(num_layers=2, batch_first=True, peepholes=True, clip=0.8),
        dict(bidirectional=True, dtype=np.float64, forget_gate=False),
        dict(activations=[("HardSigmoid", 0.2, 0.5), "Softsign", "Tanh"], input_forget=True),
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_layer_round_trip(tmp_path, options):
    """Our layer -> ONNX file -> ONNX Runtime equals our forward."""
    options = dict(options)
    layers = options.pop("num_layers", 1)
    m = lstm_fast.LSTM(3, 6, layers, proj_size=4, seed=5, **options)
    path = tmp_path / "lstmp.onnx"
    model = m.export_onnx(path, lstm_dtype=m.dtype)
    assert model.doc_string == repr(m)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tol = TIGHT[m.dtype] if m.dtype == np.float64 else dict(rtol=1e-5, atol=2e-6)
    rng = np.random.default_rng(6)
    for steps, batch in ((5, 2), (2, 3)):
        shape = (batch, steps, 3) if m.batch_first else (steps, batch, 3)
        x = rng.standard_normal(shape).astype(m.dtype)
        y, (h, c) = m(x)
        got = session.run(None, {"x": x})
        for name, ours, theirs in zip(("y", "h_n", "c_n"), got, (y, h, c)):
            assert ours.shape == theirs.shape, name
            np.testing.assert_allclose(ours, theirs, err_msg=name, **tol)

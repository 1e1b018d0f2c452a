"""ONNX export, run by ONNX Runtime, equals LSTM.forward (shapes and values)."""

from __future__ import annotations

import numpy as np
import pytest
from lstm_fast.layer import LSTM

onnx = pytest.importorskip("onnx")


def _run(path, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [o.name for o in session.get_outputs()] == ["y", "h_n", "c_n"]
    return session.run(None, {"x": x})


@pytest.mark.parametrize(
    "layers, bidi, batch_first, bias",
    [
        (1, False, False, True),
        (2, True, False, True),
        (3, True, True, False),
        (2, False, True, True),
    ],
)
def test_onnx_runtime_equals_forward(tmp_path, layers, bidi, batch_first, bias):
    m = LSTM(3, 5, layers, bidirectional=bidi, batch_first=batch_first, bias=bias, seed=1)
    path = tmp_path / "lstm.onnx"
    model = m.export_onnx(path)
    assert model.opset_import[0].version == 14
    onnx.checker.check_model(str(path))
    rng = np.random.default_rng(0)
    # Dynamic sequence length and batch: two different shapes through one model.
    for steps, batch in ((7, 2), (3, 4)):
        shape = (batch, steps, 3) if batch_first else (steps, batch, 3)
        x = rng.standard_normal(shape).astype(np.float32)
        expected = m(x)
        got = _run(path, x)
        for name, ours, theirs in zip(("y", "h_n", "c_n"), got, (expected[0], *expected[1])):
            assert ours.shape == theirs.shape, name
            assert ours.dtype == theirs.dtype, name
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("opset", [7, 13, 17])
def test_other_opsets(tmp_path, opset):
    m = LSTM(2, 3, 2, bidirectional=True, seed=2)
    path = tmp_path / f"lstm{opset}.onnx"
    m.export_onnx(path, opset=opset)
    x = np.random.default_rng(1).standard_normal((4, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(_run(path, x)[0], m(x)[0], rtol=1e-5, atol=1e-6)


def test_float64_layer(tmp_path):
    m = LSTM(2, 3, 2, bidirectional=True, dtype=np.float64, seed=3)
    x = np.random.default_rng(2).standard_normal((4, 2, 2))
    path = tmp_path / "lstm64.onnx"
    m.export_onnx(path)  # float32 LSTM nodes inside: ONNX Runtime has no double LSTM
    y, h, c = _run(path, x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, m(x)[0], rtol=1e-5, atol=1e-6)
    # Double nodes on request: a valid model, for runtimes that implement them.
    model = m.export_onnx(tmp_path / "native.onnx", lstm_dtype=np.float64)
    assert all(n.op_type != "Cast" for n in model.graph.node)
    weights = {i.name: i.data_type for i in model.graph.initializer}
    assert weights["l0_W"] == weights["l1_R"] == onnx.TensorProto.DOUBLE


def test_export_errors(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        LSTM(2, 3).export_onnx(tmp_path / "m.onnx", opset=3)
    with pytest.raises(TypeError, match="lstm_dtype"):
        LSTM(2, 3).export_onnx(tmp_path / "m.onnx", lstm_dtype=np.float16)

"""Weight conversion: Keras, ONNX and textbook layouts, round trips and the worked example."""

from __future__ import annotations

import lstm_fast
import numpy as np
import pytest
from lstm_fast import convert
from lstm_fast.layer import LSTM


def _weights(inputs=3, hidden=4, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((4 * hidden, inputs)).astype(dtype),
        rng.standard_normal((4 * hidden, hidden)).astype(dtype),
        rng.standard_normal(4 * hidden).astype(dtype),
        rng.standard_normal(4 * hidden).astype(dtype),
    )


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


# ------------------------------------------ the worked example (docs/api.md, 'The math')


def test_worked_forget_gate_example_through_from_gate_matrices():
    """The textbook forget gate of docs/api.md, 'The math', I = H = 3."""
    W_f = np.array([[1, 2, 3, 4, 5, 6], [5, 6, 7, 8, 9, 10], [3, 4, 5, 6, 7, 8]], float)
    b_f = np.array([1.0, 2.0, 3.0])
    W_i = np.repeat(np.array([[1.0], [2.0], [3.0]]), 6, axis=1)  # rows of 1s, 2s, 3s
    b_i = np.ones(3)
    zeros_w, zeros_b = np.zeros((3, 6)), np.zeros(3)
    x = np.array([1.0, 2.0, 3.0])
    h_prev = np.array([4.0, 5.0, 6.0])

    w_ih, w_hh, b_ih, b_hh = convert.from_gate_matrices(
        W_i, W_f, zeros_w, zeros_w, b_i, b_f, zeros_b, zeros_b, input_size=3
    )
    assert w_ih.shape == (12, 3) and w_hh.shape == (12, 3) and b_ih.shape == b_hh.shape == (12,)
    np.testing.assert_array_equal(w_ih[3:6], W_f[:, :3])
    np.testing.assert_array_equal(w_hh[3:6], W_f[:, 3:])

    pre = w_ih @ x + b_ih + w_hh @ h_prev + b_hh  # a_t for one row
    np.testing.assert_array_equal(pre[3:6], [92, 177, 136])
    # The input gate: rows of 1s, 2s, 3s times [1..6] are 21, 42, 63, plus b_i = 1 each
    # (not [22, 42, 62], a value quoted with this example).
    np.testing.assert_array_equal(pre[0:3], [22, 43, 64])
    # (b_i = [1, 0, -1] gives those numbers.)
    w_ih_b, w_hh_b, b_ih_b, b_hh_b = convert.from_gate_matrices(
        W_i, W_f, zeros_w, zeros_w, np.array([1.0, 0.0, -1.0]), b_f, zeros_b, zeros_b, input_size=3
    )
    np.testing.assert_array_equal(
        (w_ih_b @ x + b_ih_b + w_hh_b @ h_prev + b_hh_b)[:3], [22, 42, 62]
    )

    # The engine computes the same gates: forget gate sigmoid(92..) is 1 in float64.
    cell = lstm_fast.cell_forward(x[None], h_prev[None], np.zeros((1, 3)), w_ih, w_hh, b_ih, b_hh)
    np.testing.assert_allclose(cell.cache.f[0], [1.0, 1.0, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cell.cache.i[0], _sigmoid(np.array([22.0, 43.0, 64.0])), rtol=1e-15)
    # ...and so does the sequence forward with one step.
    out = lstm_fast.forward(x[None, None], w_ih, w_hh, b_ih, b_hh, h_prev[None], np.zeros((1, 3)))
    np.testing.assert_allclose(out.cache.f[0, 0], [1.0, 1.0, 1.0], rtol=0, atol=1e-15)

    # order="hx": the same gate written against [h_{t-1}, x_t].
    W_f_hx = np.concatenate([W_f[:, 3:], W_f[:, :3]], axis=1)
    W_i_hx = np.concatenate([W_i[:, 3:], W_i[:, :3]], axis=1)
    hx = convert.from_gate_matrices(
        W_i_hx, W_f_hx, zeros_w, zeros_w, b_i, b_f, zeros_b, zeros_b, input_size=3, order="hx"
    )
    for a, b in zip(hx, (w_ih, w_hh, b_ih, b_hh)):
        np.testing.assert_array_equal(a, b)


def test_gate_matrices_round_trip_and_layout():
    w_ih, w_hh, b_ih, b_hh = _weights(inputs=2, hidden=3)
    for order in ("xh", "hx"):
        mats, biases = convert.to_gate_matrices(w_ih, w_hh, b_ih, b_hh, order=order)
        assert all(m.shape == (3, 5) for m in mats)
        back = convert.from_gate_matrices(*mats, *biases, input_size=2, order=order)
        np.testing.assert_array_equal(back[0], w_ih)
        np.testing.assert_array_equal(back[1], w_hh)
        np.testing.assert_allclose(back[2] + back[3], b_ih + b_hh)
    # The textbook gate acting on [x, h] equals the packed pre-activation.
    rng = np.random.default_rng(1)
    x, h = rng.standard_normal(2), rng.standard_normal(3)
    mats, biases = convert.to_gate_matrices(w_ih, w_hh, b_ih, b_hh)
    packed = w_ih @ x + b_ih + w_hh @ h + b_hh
    for k in range(4):
        np.testing.assert_allclose(
            mats[k] @ np.concatenate([x, h]) + biases[k], packed[3 * k : 3 * k + 3]
        )


def test_from_gate_matrices_without_biases_and_errors():
    mats = [np.ones((2, 5))] * 4
    w_ih, w_hh, b_ih, b_hh = convert.from_gate_matrices(*mats, None, None, None, None, input_size=3)
    assert w_ih.shape == (8, 3) and w_hh.shape == (8, 2) and b_ih is None and b_hh is None
    with pytest.raises(ValueError, match=r"W_c must have shape .* = \(2, 5\), got \(2, 4\)"):
        convert.from_gate_matrices(mats[0], mats[0], np.ones((2, 4)), mats[0], input_size=3)
    with pytest.raises(ValueError, match="order"):
        convert.from_gate_matrices(*mats, input_size=3, order="yx")
    with pytest.raises(ValueError, match=r"b_o must have shape \(hidden_size,\) = \(2,\)"):
        convert.from_gate_matrices(*mats, None, None, None, np.ones(3), input_size=3)


# -------------------------------------------------------------------------- Keras


def test_keras_round_trip_and_equivalence():
    w_ih, w_hh, b_ih, b_hh = _weights(dtype=np.float32)
    kernel, recurrent, bias = convert.to_keras(w_ih, w_hh, b_ih, b_hh)
    assert kernel.shape == (3, 16) and recurrent.shape == (4, 16) and bias.shape == (16,)
    assert kernel.dtype == np.float32 and kernel.flags.c_contiguous
    # Keras computes x @ kernel + h @ recurrent_kernel + bias with gates i, f, c, o.
    rng = np.random.default_rng(2)
    x, h = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
    np.testing.assert_allclose(
        x @ kernel + h @ recurrent + bias,
        x @ w_ih.T + b_ih + h @ w_hh.T + b_hh,
        rtol=1e-5,
        atol=1e-5,
    )
    w_ih2, w_hh2, b_ih2, b_hh2 = convert.from_keras(kernel, recurrent, bias)
    np.testing.assert_array_equal(w_ih2, w_ih)
    np.testing.assert_array_equal(w_hh2, w_hh)
    np.testing.assert_allclose(b_ih2 + b_hh2, b_ih + b_hh, rtol=1e-6)
    np.testing.assert_array_equal(b_hh2, 0)
    # One layer built from the converted weights computes what the original does.
    m, m2 = LSTM(3, 4), LSTM(3, 4)
    m.load_state_dict(dict(zip(m.parameters, (w_ih, w_hh, b_ih, b_hh))))
    m2.load_state_dict(dict(zip(m2.parameters, (w_ih2, w_hh2, b_ih2, b_hh2))))
    xs = rng.standard_normal((6, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(m(xs)[0], m2(xs)[0], rtol=1e-5, atol=1e-6)


def test_keras_without_bias_and_split_bias():
    w_ih, w_hh, b_ih, b_hh = _weights()
    kernel, recurrent, bias = convert.to_keras(w_ih, w_hh)
    np.testing.assert_array_equal(bias, 0)
    assert convert.from_keras(kernel, recurrent)[2:] == (None, None)
    split = convert.from_keras(kernel, recurrent, np.concatenate([b_ih, b_hh]))
    np.testing.assert_array_equal(split[2], b_ih)
    np.testing.assert_array_equal(split[3], b_hh)
    with pytest.raises(ValueError, match=r"kernel must have shape \(input_size, 4\*hidden_size\)"):
        convert.from_keras(np.ones((3, 12)), recurrent)
    with pytest.raises(ValueError, match="bias must have shape"):
        convert.from_keras(kernel, recurrent, np.ones(5))


# --------------------------------------------------------------------------- ONNX


def test_onnx_layout_and_round_trip():
    w_ih, w_hh, b_ih, b_hh = _weights(inputs=3, hidden=2)
    W, R, B = convert.to_onnx(w_ih, w_hh, b_ih, b_hh)
    assert W.shape == (1, 8, 3) and R.shape == (1, 8, 2) and B.shape == (1, 16)
    # ONNX stacks i, o, f, c; ours is i, f, g(=c), o.
    blocks = np.split(w_ih, 4)
    np.testing.assert_array_equal(
        W[0], np.concatenate([blocks[0], blocks[3], blocks[1], blocks[2]])
    )
    np.testing.assert_array_equal(B[0, 8:10], b_hh[0:2])  # Rb's input gate
    np.testing.assert_array_equal(B[0, 10:12], b_hh[6:8])  # Rb's output gate
    ((w_ih2, w_hh2, b_ih2, b_hh2),) = convert.from_onnx(W, R, B)
    for a, b in zip((w_ih2, w_hh2, b_ih2, b_hh2), (w_ih, w_hh, b_ih, b_hh)):
        np.testing.assert_array_equal(a, b)
    # Two directions: one tuple each, forward first; no bias gives None.
    rev = _weights(inputs=3, hidden=2, seed=1)
    W2, R2, _ = convert.to_onnx(*rev)
    both = convert.from_onnx(np.concatenate([W, W2]), np.concatenate([R, R2]))
    assert len(both) == 2 and both[0][2] is None and both[1][3] is None
    np.testing.assert_array_equal(both[1][0], rev[0])
    np.testing.assert_array_equal(both[1][1], rev[1])
    np.testing.assert_array_equal(convert.to_onnx(w_ih, w_hh)[2], 0)


def test_onnx_errors():
    w_ih, w_hh, _, _ = _weights()
    W, R, B = convert.to_onnx(w_ih, w_hh)
    with pytest.raises(ValueError, match=r"R must have shape .* = \(1, 16, 4\), got \(1, 16, 3\)"):
        convert.from_onnx(W, R[:, :, :3])
    with pytest.raises(ValueError, match=r"B must have shape"):
        convert.from_onnx(W, R, B[:, :5])
    with pytest.raises(
        ValueError,
        match=r"w_hh must have shape \(4\*hidden_size, hidden_size\) "
        r"= \(16, 4\), got \(16, 3\)",
    ):
        convert.to_onnx(w_ih, w_hh[:, :3])
    with pytest.raises(ValueError, match="multiple of 4"):
        convert.to_onnx(w_ih[:6], w_hh)
    with pytest.raises(TypeError, match="real numeric"):
        convert.to_keras(w_ih.astype(complex), w_hh)


def test_conversions_accept_torch_tensors_and_keep_dtype():
    torch = pytest.importorskip("torch")
    t = torch.nn.LSTM(3, 4)
    sd = t.state_dict()
    kernel, recurrent, bias = convert.to_keras(
        sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"]
    )
    assert kernel.dtype == np.float32
    W, R, B = convert.to_onnx(t.weight_ih_l0, t.weight_hh_l0, t.bias_ih_l0, t.bias_hh_l0)
    np.testing.assert_array_equal(convert.from_onnx(W, R, B)[0][0], sd["weight_ih_l0"].numpy())
    # Integer input computes in float64.
    assert convert.to_keras(np.ones((8, 1), int), np.ones((8, 2), int))[0].dtype == np.float64

"""The worked forget-gate example of docs/api.md, 'The math', through ``cell_forward``.

Textbook form: ``f_t = sigma(W_f . [x_t, h_{t-1}] + b_f)`` with ``W_f`` (H, I+H);
in our layout ``W_f[:, :I]`` is ``w_ih[H:2H]`` and ``W_f[:, I:]`` is
``w_hh[H:2H]`` (the forget gate is the second of the blocks i, f, g, o).

With I = H = 3, ``W_f = [[1..6], [5..10], [3..8]]``, ``b_f = [1, 2, 3]``,
``x = [1, 2, 3]`` and ``h_prev = [4, 5, 6]`` the pre-activation is
``[92, 177, 136]`` and the forget gate rounds to exactly 1 in both dtypes.

``W_i`` = rows of 1s, 2s and 3s with ``b_i = [1, 1, 1]`` gives
``[21 + 1, 42 + 1, 63 + 1] = [22, 43, 64]`` (each row sums x and h_prev, 21,
times its constant). ``[22, 42, 62]``, a value quoted with this example, is not
what the definitions give (it would need ``b_i = [1, 0, -1]``), so the test
checks the values the definitions imply and, separately, that
``b_i = [1, 0, -1]`` gives ``[22, 42, 62]``.

sigma(92) and sigma(22) are too close to 1 to recover the pre-activation from
the gate (only sigma(22) = 1 - 2.8e-10 is still distinguishable in float64), so
the example is also run with every weight and bias scaled by 2**-7: scaling by a
power of two is exact, the pre-activations become exactly ``[92, 177, 136]/128``
and the gates are invertible: ``128 * logit(f)`` must give back 92, 177, 136.
"""

from __future__ import annotations

import lstm_fast as lf
import numpy as np

from tests.helpers import each_dtype

I = H = 3  # noqa: E741
W_F = np.array([[1, 2, 3, 4, 5, 6], [5, 6, 7, 8, 9, 10], [3, 4, 5, 6, 7, 8]], dtype=float)
B_F = np.array([1.0, 2.0, 3.0])
W_I = np.repeat(np.array([[1.0], [2.0], [3.0]]), I + H, axis=1)
B_I = np.array([1.0, 1.0, 1.0])
X = np.array([[1.0, 2.0, 3.0]])
H_PREV = np.array([[4.0, 5.0, 6.0]])
C_PREV = np.array([[0.5, -1.0, 2.0]])
F_PRE = np.array([92.0, 177.0, 136.0])
I_PRE = np.array([22.0, 43.0, 64.0])
# the cell candidate and output gate: small values, so c_new and h_new are informative
B_G = np.array([0.25, -0.5, 1.0])
B_O = np.array([-1.0, 0.0, 0.75])


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _layout(w_i=W_I, b_i=B_I, scale=1.0):
    """The textbook rows placed into w_ih, w_hh, b_ih (gate order i, f, g, o)."""
    w_ih = np.zeros((4 * H, I))
    w_hh = np.zeros((4 * H, H))
    b_ih = np.zeros(4 * H)
    w_ih[0:H], w_hh[0:H], b_ih[0:H] = w_i[:, :I], w_i[:, I:], b_i
    w_ih[H : 2 * H], w_hh[H : 2 * H], b_ih[H : 2 * H] = W_F[:, :I], W_F[:, I:], B_F
    b_ih[2 * H : 3 * H] = B_G
    b_ih[3 * H : 4 * H] = B_O
    return w_ih * scale, w_hh * scale, b_ih * scale


def test_the_example_arithmetic():
    """The textbook products themselves (no engine): 92, 177, 136 and 22, 43, 64."""
    v = np.concatenate([X[0], H_PREV[0]])
    np.testing.assert_array_equal(W_F @ v + B_F, F_PRE)
    np.testing.assert_array_equal(W_I @ v + B_I, I_PRE)
    np.testing.assert_array_equal(W_I @ v + np.array([1.0, 0.0, -1.0]), [22.0, 42.0, 62.0])


@each_dtype
def test_forget_gate_saturates(isa, dtype):
    w_ih, w_hh, b_ih = _layout()
    cell = lf.cell_forward(*(a.astype(dtype) for a in (X, H_PREV, C_PREV, w_ih, w_hh, b_ih)))
    f = cell.cache.f
    assert f.shape == (1, H) and f.dtype == dtype
    # sigma(92), sigma(136), sigma(177) round to exactly 1 in float32 and float64
    np.testing.assert_allclose(f[0], _sigmoid(F_PRE), rtol=2 * np.finfo(dtype).eps)
    np.testing.assert_allclose(f[0], [1.0, 1.0, 1.0], rtol=2 * np.finfo(dtype).eps)
    np.testing.assert_allclose(cell.cache.i[0], _sigmoid(I_PRE), rtol=2 * np.finfo(dtype).eps)


def test_input_gate_pre_activation_22_unscaled(isa):
    """sigma(22) = 1 - 2.8e-10 is still invertible in float64: logit(i[0]) = 22."""
    w_ih, w_hh, b_ih = _layout()
    cell = lf.cell_forward(X, H_PREV, C_PREV, w_ih, w_hh, b_ih)
    i0 = cell.cache.i[0, 0]
    # 1 - i0 carries a relative error of ~eps / 2.8e-10 ~ 1e-6, hence the tolerance;
    # a pre-activation of 21 or 23 would be off by 1.
    assert abs(np.log(i0 / (1.0 - i0)) - 22.0) < 1e-4


@each_dtype
def test_pre_activations_recovered_when_scaled(isa, dtype):
    scale = 2.0**-7
    w_ih, w_hh, b_ih = _layout(scale=scale)
    cell = lf.cell_forward(*(a.astype(dtype) for a in (X, H_PREV, C_PREV, w_ih, w_hh, b_ih)))
    f = cell.cache.f[0].astype(np.float64)
    i = cell.cache.i[0].astype(np.float64)
    # logit(f) is a few ULP of f amplified by 1 / (f * (1 - f)) <= ~20 here
    tol = 1e-12 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(np.log(f / (1 - f)) / scale, F_PRE, rtol=tol)
    np.testing.assert_allclose(np.log(i / (1 - i)) / scale, I_PRE, rtol=tol)
    g = cell.cache.g[0].astype(np.float64)
    o = cell.cache.o[0].astype(np.float64)
    np.testing.assert_allclose(np.arctanh(g) / scale, B_G, rtol=tol)
    np.testing.assert_allclose(np.log(o / (1 - o)) / scale, B_O, rtol=tol, atol=tol)
    # the cell and hidden update of docs/api.md, 'The math'
    c_new = f * C_PREV[0] + i * g
    np.testing.assert_allclose(cell.c_new[0], c_new, rtol=tol)
    np.testing.assert_allclose(cell.h_new[0], o * np.tanh(c_new), rtol=tol)
    np.testing.assert_allclose(cell.cache.c[0], c_new, rtol=tol)


def test_input_gate_numbers_quoted_with_the_example(isa):
    """b_i = [1, 0, -1] gives the input gate pre-activation [22, 42, 62]."""
    scale = 2.0**-7
    w_ih, w_hh, b_ih = _layout(b_i=np.array([1.0, 0.0, -1.0]), scale=scale)
    i = lf.cell_forward(X, H_PREV, C_PREV, w_ih, w_hh, b_ih).cache.i[0]
    np.testing.assert_allclose(np.log(i / (1 - i)) / scale, [22.0, 42.0, 62.0], rtol=1e-12)


def test_textbook_form_equals_our_layout(isa):
    """For random W_f, b_f, x, h: sigma(W_f . [x, h] + b_f) == cache.f (also split biases)."""
    rng = np.random.default_rng(3)
    I_, H_, B_ = 5, 4, 2
    w_f = rng.standard_normal((H_, I_ + H_)) * 0.3
    b_f = rng.standard_normal(H_)
    x = rng.standard_normal((B_, I_))
    h = rng.standard_normal((B_, H_))
    w_ih = rng.standard_normal((4 * H_, I_))
    w_hh = rng.standard_normal((4 * H_, H_))
    w_ih[H_ : 2 * H_] = w_f[:, :I_]
    w_hh[H_ : 2 * H_] = w_f[:, I_:]
    b_ih = rng.standard_normal(4 * H_)
    b_hh = rng.standard_normal(4 * H_)
    b_hh[H_ : 2 * H_] = b_f - b_ih[H_ : 2 * H_]  # b_ih + b_hh = b_f for the forget gate
    cell = lf.cell_forward(x, h, np.zeros((B_, H_)), w_ih, w_hh, b_ih, b_hh)
    textbook = _sigmoid(np.concatenate([x, h], axis=1) @ w_f.T + b_f)
    np.testing.assert_allclose(cell.cache.f, textbook, rtol=1e-12)


@each_dtype
def test_same_example_through_forward(isa, dtype):
    """The sequence API with T = 1 gives the same gates as the cell API."""
    scale = 2.0**-7
    w_ih, w_hh, b_ih = _layout(scale=scale)
    args = [a.astype(dtype) for a in (X, H_PREV, C_PREV, w_ih, w_hh, b_ih)]
    cell = lf.cell_forward(*args)
    x, h, c, w_ih, w_hh, b_ih = args
    out = lf.forward(x[None], w_ih, w_hh, b_ih, None, h, c)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for name in "ifgoc":
        np.testing.assert_allclose(
            getattr(out.cache, name)[0], getattr(cell.cache, name), rtol=tol, err_msg=name
        )

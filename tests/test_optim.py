"""Optimizers and clipping (vs torch.optim and by hand), and training on engine vs oracle."""

from __future__ import annotations

import lstm_fast.layer as layer_module
import numpy as np
import pytest
from lstm_fast import reference
from lstm_fast.layer import LSTM
from lstm_fast.optim import SGD, Adam, clip_grad_norm

from tests.helpers import each_dtype


def _params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "a": rng.standard_normal((3, 4)).astype(dtype),
        "b": rng.standard_normal(5).astype(dtype),
    }


def _grad_sequence(params, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [
        {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()}
        for _ in range(steps)
    ]


@pytest.mark.parametrize(
    "make, torch_make",
    [
        (lambda p: SGD(p, lr=0.1), lambda t, o: o.SGD(t, lr=0.1)),
        (lambda p: SGD(p, lr=0.1, momentum=0.9), lambda t, o: o.SGD(t, lr=0.1, momentum=0.9)),
        (
            lambda p: SGD(p, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
            lambda t, o: o.SGD(t, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
        ),
        (
            lambda p: SGD(p, lr=0.05, momentum=0.5, dampening=0.3),
            lambda t, o: o.SGD(t, lr=0.05, momentum=0.5, dampening=0.3),
        ),
        (lambda p: Adam(p, lr=0.01), lambda t, o: o.Adam(t, lr=0.01)),
        (
            lambda p: Adam(p, lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
            lambda t, o: o.Adam(t, lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        ),
    ],
    ids=["sgd", "momentum", "nesterov", "dampening", "adam", "adam-options"],
)
def test_matches_torch_optim(make, torch_make):
    torch = pytest.importorskip("torch")
    params = _params()
    tensors = [torch.tensor(v, requires_grad=True) for v in params.values()]
    ours = make(params)
    theirs = torch_make(tensors, torch.optim)
    for grads in _grad_sequence(params, 5):
        ours.step(grads)
        for t, g in zip(tensors, grads.values()):
            t.grad = torch.tensor(g)
        theirs.step()
    for (name, p), t in zip(params.items(), tensors):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=name)


def test_adam_first_step_by_hand_and_in_place():
    params = _params(np.float32)
    a = params["a"]
    before = a.copy()
    grads = _grad_sequence(params, 1)[0]
    Adam(params, lr=0.01).step(grads)
    assert params["a"] is a and a.dtype == np.float32
    # First step: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps).
    g = grads["a"].astype(np.float64)
    np.testing.assert_allclose(a, before - 0.01 * g / (np.abs(g) + 1e-8), rtol=1e-6)


def test_sgd_momentum_by_hand_and_missing_grads_are_skipped():
    params = {"w": np.array([1.0, 2.0]), "frozen": np.array([3.0])}
    opt = SGD(params, lr=0.5, momentum=0.9)
    opt.step({"w": np.array([1.0, 1.0])})
    np.testing.assert_allclose(params["w"], [0.5, 1.5])
    opt.step({"w": np.array([1.0, 1.0]), "frozen": None})
    np.testing.assert_allclose(params["w"], [0.5 - 0.5 * 1.9, 1.5 - 0.5 * 1.9])
    np.testing.assert_array_equal(params["frozen"], [3.0])


def test_optimizer_errors():
    params = _params()
    with pytest.raises(ValueError, match="not parameters"):
        SGD(params, lr=0.1).step({"c": np.zeros(1)})
    with pytest.raises(ValueError, match=r"gradient 'b' must have shape \(5,\)"):
        Adam(params).step({"b": np.zeros(4)})
    with pytest.raises(ValueError, match="lr"):
        SGD(params, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        Adam(params, betas=(1.0, 0.9))
    with pytest.raises(TypeError, match="floating ndarray"):
        SGD({"x": [1.0]}, lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(params, lr=0.1, nesterov=True)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_grad_norm_matches_torch(norm_type):
    torch = pytest.importorskip("torch")
    grads = _grad_sequence(_params(), 1)[0]
    tensors = [
        torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()
    ]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    arrays = list(grads.values())
    total = clip_grad_norm(grads, 1.5, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(tensors, 1.5, norm_type=norm_type)
    assert total == pytest.approx(float(expected), rel=1e-12)
    for g, t in zip(arrays, tensors):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)  # scaled in place


def test_clip_grad_norm_by_hand():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]]), "none": None}
    assert clip_grad_norm(grads, 10.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(grads["a"], [3.0, 0.0])  # under the limit: unchanged
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(grads["a"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(grads["b"], [[0.8]], rtol=1e-6)
    readonly = np.array([6.0, 8.0])
    readonly.flags.writeable = False
    wrapped = {"r": readonly}
    clip_grad_norm(wrapped, 5.0)
    np.testing.assert_allclose(wrapped["r"], [3.0, 4.0], rtol=1e-6)
    assert clip_grad_norm({}, 1.0) == 0.0


# ------------------------------------------------ training: engine == NumPy oracle


def _train(steps, dtype):
    """A few steps of a 2-layer bidirectional LSTM + linear head, Adam and clipping."""
    rng = np.random.default_rng(0)
    m = LSTM(3, 6, 2, bidirectional=True, batch_first=True, dtype=dtype, seed=4)
    head = {"head.weight": (rng.standard_normal((12, 1)) * 0.3).astype(dtype)}
    params = {**m.parameters, **head}
    opt = Adam(params, lr=0.05)
    x = rng.standard_normal((4, 5, 3)).astype(dtype)
    target = np.tanh(x[:, 0, :1])  # remember the first step
    lengths = np.array([5, 2, 4, 1])
    losses = []
    for _ in range(steps):
        y, (h_n, _) = m(x, lengths=lengths)
        features = np.concatenate([h_n[-2], h_n[-1]], axis=1)  # last layer, both directions
        pred = features @ params["head.weight"]
        err = pred - target
        losses.append(float((err**2).mean()))
        dpred = 2 * err / err.size
        dfeatures = dpred @ params["head.weight"].T
        dh_n = np.zeros_like(h_n)
        dh_n[-2], dh_n[-1] = dfeatures[:, :6], dfeatures[:, 6:]
        m.backward(np.zeros_like(y), dh_n)
        grads = {**m.grads, "head.weight": features.T @ dpred}
        clip_grad_norm(grads, 1.0)
        opt.step(grads)
    return losses, params


@each_dtype
def test_training_steps_equal_the_reference(monkeypatch, dtype):
    losses, params = _train(4, dtype)
    monkeypatch.setattr(layer_module, "_F", reference)
    ref_losses, ref_params = _train(4, dtype)
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(losses, ref_losses, **tol)
    for name in params:
        np.testing.assert_allclose(params[name], ref_params[name], err_msg=name, **tol)
    assert losses[-1] < losses[0]

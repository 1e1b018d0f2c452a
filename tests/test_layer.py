"""The LSTM layer (docs/api.md, 'The LSTM layer'): PyTorch parity, lengths, streaming,
state dicts."""

from __future__ import annotations

import os
import subprocess
import sys

import lstm_fast
import lstm_fast.layer as layer_module
import numpy as np
import pytest
from lstm_fast import reference
from lstm_fast.layer import LSTM

from tests.helpers import central_difference, each_dtype, torch_layer_backward

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def _random(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _run_layer(m, x, hx, lengths, dy, dh, dc):
    y, (h, c) = m(x, hx, lengths=lengths)
    dx = m.backward(dy, dh, dc)
    return y, h, c, dx, dict(m.grads), m.hx_grad


# ---------------------------------------------------------------- PyTorch parity

CONFIGS = [
    # num_layers, bidirectional, batch_first, bias, with lengths, with hx
    (1, False, False, True, False, True),
    (2, True, False, True, False, True),
    (3, False, True, False, False, False),
    (2, True, True, True, True, True),
    (2, True, False, False, True, False),
    (1, False, False, True, True, True),
]


@each_dtype
@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: "L{}-bi{:d}-bf{:d}-b{:d}-len{:d}-hx{:d}".format(*c)
)
def test_matches_torch(config, dtype):
    torch = pytest.importorskip("torch")

    layers, bidi, batch_first, bias, use_lengths, use_hx = config
    steps, batch, inputs, hidden = 7, 4, 3, 5
    directions = 2 if bidi else 1
    rng = np.random.default_rng(sum(config))
    options = dict(bidirectional=bidi, batch_first=batch_first, bias=bias)
    m = LSTM(inputs, hidden, layers, **options, dtype=dtype, seed=3)
    t = torch.nn.LSTM(
        inputs,
        hidden,
        layers,
        **options,
        dtype=torch.float64 if dtype == np.float64 else torch.float32,
    )
    t.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})

    x = _random(rng, (batch, steps, inputs) if batch_first else (steps, batch, inputs), dtype)
    h0 = _random(rng, (layers * directions, batch, hidden), dtype)
    c0 = _random(rng, (layers * directions, batch, hidden), dtype)
    lengths = np.array([7, 2, 5, 1]) if use_lengths else None
    y_shape = x.shape[:2] + (directions * hidden,)
    dy = _random(rng, y_shape, dtype)
    if use_lengths:  # padded outputs get no gradient in torch either way; keep them honest
        mask = np.arange(steps)[None, :] < lengths[:, None]  # (B, T)
        dy *= (mask if batch_first else mask.T)[..., None]
    dh = _random(rng, h0.shape, dtype)
    dc = _random(rng, c0.shape, dtype)

    y, h, c, dx, grads, (dh0, dc0) = _run_layer(
        m, x, (h0, c0) if use_hx else None, lengths, dy, dh, dc
    )

    (yt, ht, ct), (xt, h0t, c0t) = torch_layer_backward(
        t, x, h0, c0, use_hx, lengths, batch_first, dy, dh, dc
    )

    tol = TOL[dtype]
    for name, ours, theirs in [("y", y, yt), ("h_n", h, ht), ("c_n", c, ct), ("dx", dx, xt.grad)]:
        theirs = theirs.detach().numpy()
        assert ours.shape == theirs.shape, name
        assert ours.dtype == dtype, name
        np.testing.assert_allclose(ours, theirs, err_msg=name, **tol)
    if use_hx:
        np.testing.assert_allclose(dh0, h0t.grad.numpy(), err_msg="dh0", **tol)
        np.testing.assert_allclose(dc0, c0t.grad.numpy(), err_msg="dc0", **tol)
    names = [name for name, _ in t.named_parameters()]
    assert list(m.parameters) == names
    assert set(grads) == set(names)
    for name, p in t.named_parameters():
        assert grads[name].shape == tuple(p.shape), name
        np.testing.assert_allclose(grads[name], p.grad.numpy(), err_msg=name, **tol)


def test_loads_torch_state_dict_and_initialises_like_torch():
    torch = pytest.importorskip("torch")
    t = torch.nn.LSTM(4, 6, 2, bidirectional=True)
    m = LSTM(4, 6, 2, bidirectional=True)
    m.load_state_dict(t.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    y, (h, c) = m(x)
    with torch.no_grad():
        yt, (ht, ct) = t(torch.from_numpy(x))
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c, ct.numpy(), rtol=1e-4, atol=1e-5)
    # Same shapes, names and bound as torch's initialisation.
    bound = 1 / np.sqrt(6)
    for name, p in LSTM(4, 6, 2, bidirectional=True, seed=0).parameters.items():
        assert p.shape == tuple(t.state_dict()[name].shape)
        assert np.abs(p).max() <= bound
        assert np.abs(p).max() > 0.8 * bound


def test_load_state_dict_from_float64_and_bfloat16_tensors():
    torch = pytest.importorskip("torch")
    m = LSTM(2, 3)
    state = {
        k: torch.from_numpy(v.astype(np.float64)).requires_grad_()
        for k, v in LSTM(2, 3, seed=5).parameters.items()
    }
    m.load_state_dict(state)
    for k, v in state.items():
        np.testing.assert_allclose(m.parameters[k], v.detach().numpy(), rtol=1e-7)
        assert m.parameters[k].dtype == np.float32
    m.load_state_dict({k: v.detach().to(torch.bfloat16) for k, v in state.items()})
    for k, v in state.items():
        np.testing.assert_allclose(m.parameters[k], v.detach().numpy(), rtol=1e-2)


# -------------------------------------------------------- engine == NumPy oracle


@pytest.mark.parametrize("bidi", [False, True])
def test_layer_on_engine_equals_layer_on_reference(monkeypatch, bidi):
    rng = np.random.default_rng(1)
    m = LSTM(3, 4, 2, bidirectional=bidi, batch_first=True, dtype=np.float64, seed=2)
    x = rng.standard_normal((5, 6, 3))
    lengths = np.array([6, 0, 3, 1, 5])
    directions = 2 if bidi else 1
    h0 = rng.standard_normal((2 * directions, 5, 4))
    c0 = rng.standard_normal((2 * directions, 5, 4))
    dy = rng.standard_normal((5, 6, 4 * directions))
    dh = rng.standard_normal(h0.shape)
    dc = rng.standard_normal(h0.shape)
    engine = _run_layer(m, x, (h0, c0), lengths, dy, dh, dc)
    monkeypatch.setattr(layer_module, "_F", reference)
    oracle = _run_layer(m, x, (h0, c0), lengths, dy, dh, dc)
    for ours, theirs in zip(engine[:4], oracle[:4]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    for name in m.parameters:
        np.testing.assert_allclose(engine[4][name], oracle[4][name], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(engine[5][0], oracle[5][0], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------- lengths and edges


def test_zero_length_rows_keep_the_initial_state():
    rng = np.random.default_rng(2)
    m = LSTM(3, 4, 2, bidirectional=True, seed=0, dtype=np.float64)
    x = rng.standard_normal((6, 3, 3))
    h0 = rng.standard_normal((4, 3, 4))
    c0 = rng.standard_normal((4, 3, 4))
    lengths = np.array([6, 0, 4])
    y, (h, c) = m(x, (h0, c0), lengths=lengths)
    np.testing.assert_array_equal(h[:, 1], h0[:, 1])
    np.testing.assert_array_equal(c[:, 1], c0[:, 1])
    assert not y[:, 1].any() and not y[4:, 2].any()
    dh = rng.standard_normal(h.shape)
    dx = m.backward(rng.standard_normal(y.shape), dh, None)
    assert not dx[:, 1].any() and not dx[4:, 2].any()
    np.testing.assert_array_equal(m.hx_grad[0][:, 1], dh[:, 1])
    # Rows are independent: row 2 alone with its length equals row 2 in the batch.
    y2, (h2, _) = m(x[:4, 2:3], (h0[:, 2:3], c0[:, 2:3]))
    np.testing.assert_allclose(y[:4, 2:3], y2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h[:, 2:3], h2, rtol=1e-12, atol=1e-14)


def test_empty_sequence_and_empty_batch():
    m = LSTM(3, 4, 2, bidirectional=True)
    h0 = np.ones((4, 2, 4), np.float32)
    y, (h, c) = m(np.zeros((0, 2, 3), np.float32), (h0, h0))
    assert y.shape == (0, 2, 8)
    np.testing.assert_array_equal(h, h0)
    assert m.backward(np.zeros_like(y)).shape == (0, 2, 3)
    y, (h, c) = m(np.zeros((5, 0, 3), np.float32))
    assert y.shape == (5, 0, 8) and h.shape == (4, 0, 4)


def test_unbatched_input_equals_batch_of_one():
    rng = np.random.default_rng(3)
    m = LSTM(3, 4, 2, bidirectional=True, batch_first=True, dtype=np.float64, seed=1)
    x = rng.standard_normal((5, 3))
    h0 = rng.standard_normal((4, 4))
    y, (h, c) = m(x, (h0, h0))
    yb, (hb, cb) = m(x[None], (h0[:, None], h0[:, None]))
    assert y.shape == (5, 8) and h.shape == (4, 4)
    np.testing.assert_allclose(y, yb[0], rtol=1e-12)
    np.testing.assert_allclose(c, cb[:, 0], rtol=1e-12)
    dx = m.backward(np.ones_like(yb))
    m(x, (h0, h0))
    np.testing.assert_allclose(m.backward(np.ones_like(y)), dx[0], rtol=1e-12)


def test_concurrent_directions_give_the_same_bits(monkeypatch):
    rng = np.random.default_rng(4)
    m = LSTM(8, 16, 2, bidirectional=True, seed=0)
    x = rng.standard_normal((9, 5, 8)).astype(np.float32)
    dy = rng.standard_normal((9, 5, 32)).astype(np.float32)
    results = []
    for concurrent in (False, True):
        monkeypatch.setattr(layer_module, "CONCURRENT_DIRECTIONS", concurrent)
        y, (h, c) = m(x)
        dx = m.backward(dy)
        results.append((y, h, c, dx, dict(m.grads)))
    for a, b in zip(results[0][:4], results[1][:4]):
        np.testing.assert_array_equal(a, b)
    for name in m.parameters:
        np.testing.assert_array_equal(results[0][4][name], results[1][4][name])


def test_concurrency_rule(monkeypatch):
    """Both directions at once only where the engine leaves threads idle (layer.py)."""
    monkeypatch.setattr(layer_module, "_engine_threads", lambda: 2)
    bi = LSTM(64, 64, bidirectional=True)
    assert bi._concurrent(100, 1) and bi._concurrent(100, 8)
    assert not bi._concurrent(100, 16)  # ceil(16 / 8) = 2 engine threads busy already
    assert not LSTM(32, 32, bidirectional=True)._concurrent(100, 1)  # too little per step
    assert not bi._concurrent(2, 1)  # too little in all
    assert not LSTM(64, 64)._concurrent(100, 1)
    monkeypatch.setattr(layer_module, "_engine_threads", lambda: 16)
    assert bi._concurrent(100, 64) and not bi._concurrent(100, 128)
    monkeypatch.setattr(layer_module, "_engine_threads", lambda: 1)
    assert not bi._concurrent(100, 1)


def test_errors_in_the_reverse_thread_propagate(monkeypatch):
    monkeypatch.setattr(layer_module, "CONCURRENT_DIRECTIONS", True)

    class Failing:
        class PreparedWeights(lstm_fast.PreparedWeights):
            def forward(self, *args, reverse=False, **kwargs):
                if reverse:
                    raise ValueError("reverse direction failed")
                return super().forward(*args, reverse=reverse, **kwargs)

        prepare_weights = PreparedWeights

    monkeypatch.setattr(layer_module, "_F", Failing)
    m = LSTM(2, 3, bidirectional=True)
    with pytest.raises(ValueError, match="reverse direction failed"):
        m(np.zeros((4, 1, 2), np.float32))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_concurrent_directions_survive_fork():
    code = (
        "import os, numpy as np, lstm_fast.layer as L\n"
        "L.CONCURRENT_DIRECTIONS = True\n"
        "m = L.LSTM(2, 3, bidirectional=True)\n"
        "x = np.ones((4, 1, 2), np.float32)\n"
        "y = m(x)[0]\n"  # starts the worker thread in the parent
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if np.array_equal(m(x)[0], y) else 3)\n"
        "assert os.waitpid(pid, 0)[1] == 0\n"
    )
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True, timeout=60)


# ------------------------------------------------------------ live parameters


def test_parameters_are_live_and_grads_fill_after_backward():
    m = LSTM(2, 3, seed=0)
    x = np.ones((4, 1, 2), np.float32)
    y1, _ = m(x)
    w = m.parameters["bias_ih_l0"]
    w[...] += 1.0  # an optimizer's in-place update
    y2, _ = m(x)
    assert not np.allclose(y1, y2)
    assert not any(g.any() for g in m.grads.values())
    m.backward(np.ones_like(y2))
    assert all(g.any() for g in m.grads.values())
    assert set(m.grads) == set(m.parameters)
    # load_state_dict writes into the same arrays.
    before = {k: id(v) for k, v in m.parameters.items()}
    m.load_state_dict(LSTM(2, 3, seed=1).state_dict())
    assert {k: id(v) for k, v in m.parameters.items()} == before
    np.testing.assert_array_equal(
        m.parameters["bias_ih_l0"], LSTM(2, 3, seed=1).parameters["bias_ih_l0"]
    )


def test_state_dict_is_a_copy_and_seed_is_reproducible():
    m = LSTM(2, 3, 2, seed=7, dtype=np.float64)
    state = m.state_dict()
    m.parameters["weight_ih_l0"][...] = 0
    assert state["weight_ih_l0"].any()
    assert m.parameters["weight_hh_l1"].dtype == np.float64
    for k, v in LSTM(2, 3, 2, seed=7, dtype=np.float64).parameters.items():
        np.testing.assert_array_equal(v, state[k])


def test_backward_can_repeat_and_uses_the_forward_weights():
    rng = np.random.default_rng(5)
    m = LSTM(3, 4, 2, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 2, 3))
    y, _ = m(x)
    dy = rng.standard_normal(y.shape)
    dx1 = m.backward(dy)
    m.parameters["weight_hh_l0"][...] = 0  # after the forward: backward must not see it
    dx2 = m.backward(dy)
    np.testing.assert_array_equal(dx1, dx2)


def test_finite_differences_float64():
    rng = np.random.default_rng(6)
    m = LSTM(2, 3, 2, bidirectional=True, dtype=np.float64, seed=0)
    x = rng.standard_normal((4, 2, 2))
    lengths = np.array([4, 2])
    w = rng.standard_normal((4, 2, 6))

    def loss() -> float:
        y, (h, c) = m(x, lengths=lengths)
        return float((w * y).sum() + h.sum() + 0.5 * (c**2).sum())

    y, (h, c) = m(x, lengths=lengths)
    dx = m.backward(w, np.ones_like(h), c)
    grads = dict(m.grads)
    for name in ("weight_hh_l0_reverse", "bias_ih_l1", "weight_ih_l1"):
        p = m.parameters[name]
        idx = tuple(rng.integers(0, s) for s in p.shape)
        numeric = central_difference(loss, p, idx, 1e-6)
        assert grads[name][idx] == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    idx = (1, 1, 0)
    assert dx[idx] == pytest.approx(central_difference(loss, x, idx, 1e-6), rel=1e-5, abs=1e-8)


# ----------------------------------------------------------------- streaming


@pytest.mark.parametrize("batched", [True, False])
def test_step_equals_full_sequence(batched):
    rng = np.random.default_rng(7)
    m = LSTM(3, 5, 3, batch_first=True, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 8, 3)) if batched else rng.standard_normal((8, 3))
    y, (h_n, c_n) = m(x)
    # Prime with a forward over a prefix, then stream the rest one step at a time.
    prefix = 3
    _, state = m(x[:, :prefix] if batched else x[:prefix])
    outs = []
    for t in range(prefix, 8):
        y_t, state = m.step(x[:, t] if batched else x[t], state)
        outs.append(y_t)
    streamed = np.stack(outs, axis=1 if batched else 0)
    np.testing.assert_allclose(
        streamed, y[:, prefix:] if batched else y[prefix:], rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(state[0], h_n, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[1], c_n, rtol=1e-12, atol=1e-14)


def test_step_from_zero_state_float32():
    rng = np.random.default_rng(8)
    m = LSTM(3, 4, 2)
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    y, _ = m(x)
    state = None
    for t in range(6):
        y_t, state = m.step(x[t], state)
        assert y_t.dtype == np.float32 and state[0].shape == (2, 2, 4)
        np.testing.assert_allclose(y_t, y[t], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors():
    m = LSTM(3, 4, 2, bidirectional=True)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"input_size = 3.*\(5, 2, 4\)"):
        m(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(ValueError, match="x must have shape"):
        m(np.zeros((5,), np.float32))
    with pytest.raises(TypeError, match="x must be a real"):
        m(x.astype(np.complex64))
    with pytest.raises(TypeError, match="x must be a real"):
        m(np.array([["a"]]))
    with pytest.raises(ValueError, match=r"h0 must have shape .* = \(4, 2, 4\), got \(2, 2, 4\)"):
        m(x, (np.zeros((2, 2, 4)), np.zeros((4, 2, 4))))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        m(x, np.zeros((4, 2, 4)))
    with pytest.raises(ValueError, match=r"lengths must lie in 0..seq_len = 0..5"):
        m(x, lengths=[6, 1])
    with pytest.raises(ValueError, match=r"lengths must have shape \(batch,\) = \(2,\)"):
        m(x, lengths=[1, 1, 1])
    with pytest.raises(TypeError, match="lengths must be integers"):
        m(x, lengths=[1.5, 1])
    with pytest.raises(RuntimeError, match="forward"):
        LSTM(3, 4).backward(np.zeros((5, 2, 4)))
    m(x, need_cache=False)
    with pytest.raises(RuntimeError, match="need_cache=True"):
        m.backward(np.zeros((5, 2, 8)))
    m(x)
    with pytest.raises(ValueError, match=r"dy must have the shape of y = \(5, 2, 8\)"):
        m.backward(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match="dh_n must have shape"):
        m.backward(np.zeros((5, 2, 8)), np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match="unidirectional"):
        m.step(x[0])
    with pytest.raises(ValueError, match="hidden_size must be at least 1"):
        LSTM(3, 0)
    with pytest.raises(TypeError, match="num_layers must be an integer"):
        LSTM(3, 4, 1.5)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        LSTM(3, 4, dtype=np.int32)
    with pytest.raises(ValueError, match="missing keys.*unexpected keys"):
        m.load_state_dict({"weight_ih_l9": np.zeros(3)})
    state = m.state_dict()
    state["weight_ih_l1"] = np.zeros((16, 4))
    before = m.state_dict()
    with pytest.raises(ValueError, match=r"weight_ih_l1 must have shape \(16, 8\)"):
        m.load_state_dict(state)
    for k, v in m.parameters.items():  # nothing was half-loaded
        np.testing.assert_array_equal(v, before[k])


def test_repr():
    assert repr(LSTM(3, 4)) == "LSTM(3, 4)"
    assert repr(LSTM(3, 4, 2, bias=False, bidirectional=True, dtype=np.float64)) == (
        "LSTM(3, 4, num_layers=2, bias=False, bidirectional=True, dtype=float64)"
    )


def test_importing_does_not_import_torch_or_onnx():
    code = (
        "import sys, numpy as np, lstm_fast\n"
        "from lstm_fast import LSTM, convert, optim\n"
        "m = LSTM(2, 3, bidirectional=True)\n"
        "m.load_state_dict(m.state_dict())\n"
        "y, _ = m(np.zeros((4, 1, 2), np.float32))\n"
        "m.backward(y)\n"
        "convert.to_onnx(m.parameters['weight_ih_l0'], m.parameters['weight_hh_l0'])\n"
        "bad = [k for k in ('torch', 'onnx', 'onnxruntime') if k in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names():
    assert lstm_fast.LSTM is LSTM

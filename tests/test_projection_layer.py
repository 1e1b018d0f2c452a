"""The LSTM layer with a projection, ``proj_size`` (docs/variants.md, 'Projection'):
PyTorch's torch.nn.LSTM(proj_size=...) is the oracle for outputs and every gradient,
and its state dicts load as they are."""

from __future__ import annotations

import inspect
import pickle

import lstm_fast
import numpy as np
import pytest
from lstm_fast.layer import LSTM

from tests.helpers import each_dtype, torch_layer_backward

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

needs_engine = pytest.mark.skipif(
    "w_hr" not in inspect.signature(lstm_fast.forward).parameters,
    reason="the engine has no projection (w_hr) yet",
)


def _torch_twin(m, torch):
    """torch.nn.LSTM with m's configuration and m's parameters."""
    t = torch.nn.LSTM(
        m.input_size,
        m.hidden_size,
        m.num_layers,
        bias=m.bias,
        batch_first=m.batch_first,
        bidirectional=m.bidirectional,
        proj_size=m.proj_size,
        dtype=torch.float64 if m.dtype == np.float64 else torch.float32,
    )
    t.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    return t


# ---------------------------------------------------------------- PyTorch parity

CONFIGS = [
    # num_layers, bidirectional, batch_first, bias, lengths, hx, proj_size
    (1, False, False, True, False, True, 2),
    (2, True, False, True, False, True, 3),
    (2, True, True, True, True, True, 2),
    (2, False, True, False, True, False, 1),
    (1, True, False, True, True, False, 4),
    (3, False, False, True, False, True, 3),
]


@needs_engine
@each_dtype
@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: "L{}-bi{:d}-bf{:d}-b{:d}-len{:d}-hx{:d}-P{}".format(*c)
)
def test_matches_torch(config, dtype):
    torch = pytest.importorskip("torch")

    layers, bidi, batch_first, bias, use_lengths, use_hx, proj = config
    I, H, T, B = 3, 5, 6, 4  # noqa: E741
    D = 2 if bidi else 1
    m = LSTM(
        I, H, layers, bias=bias, batch_first=batch_first, bidirectional=bidi, proj_size=proj,
        dtype=dtype, seed=11,
    )  # fmt: skip
    t = _torch_twin(m, torch)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((layers * D, B, proj)).astype(dtype)
    c0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
    lengths = np.array([6, 1, 4, 6]) if use_lengths else None
    y_shape = (B, T, D * proj) if batch_first else (T, B, D * proj)
    dy = rng.standard_normal(y_shape).astype(dtype)
    if use_lengths:  # padded outputs get no gradient in torch: keep the comparison honest
        valid = np.arange(T)[:, None] < lengths[None, :]
        dy *= (valid.T if batch_first else valid)[..., None]
    dh = rng.standard_normal((layers * D, B, proj)).astype(dtype)
    dc = rng.standard_normal((layers * D, B, H)).astype(dtype)

    hx = (h0, c0) if use_hx else None
    y, (h, c) = m(x, hx, lengths=lengths)
    dx = m.backward(dy, dh, dc)
    dh0, dc0 = m.hx_grad

    (yt, ht, ct), (xt, h0t, c0t) = torch_layer_backward(
        t, x, h0, c0, use_hx, lengths, batch_first, dy, dh, dc
    )

    tol = TOL[dtype]
    expected = [("y", y, yt), ("h_n", h, ht), ("c_n", c, ct), ("dx", dx, xt.grad)]
    if use_hx:
        expected += [("dh0", dh0, h0t.grad), ("dc0", dc0, c0t.grad)]
    for name, ours, theirs in expected:
        theirs = theirs.detach().numpy()
        assert ours.shape == theirs.shape, name
        assert ours.dtype == dtype, name
        np.testing.assert_allclose(ours, theirs, err_msg=name, **tol)
    assert h.shape == (layers * D, B, proj) and c.shape == (layers * D, B, H)
    names = [name for name, _ in t.named_parameters()]
    assert list(m.parameters) == names
    assert list(m.grads) == names
    for name, p in t.named_parameters():
        assert m.grads[name].shape == tuple(p.shape), name
        np.testing.assert_allclose(m.grads[name], p.grad.numpy(), err_msg=name, **tol)


# ------------------------------------------------------ parameters and state dicts


def test_parameters_and_initialisation_are_torchs():
    torch = pytest.importorskip("torch")
    t = torch.nn.LSTM(4, 6, 2, bidirectional=True, proj_size=3)
    m = LSTM(4, 6, 2, bidirectional=True, proj_size=3, seed=0)
    assert list(m.parameters) == list(t.state_dict())
    bound = 1 / np.sqrt(6)  # 1/sqrt(hidden_size) for every parameter, weight_hr too
    for name, p in m.parameters.items():
        assert p.shape == tuple(t.state_dict()[name].shape), name
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound, name
        assert np.abs(p).max() > 0.8 * bound, name
    assert m.parameters["weight_hr_l1_reverse"].shape == (3, 6)
    assert m.parameters["weight_ih_l1"].shape == (24, 6)  # D*P inputs
    assert m.parameters["weight_hh_l0"].shape == (24, 3)
    assert set(m.grads) == set(m.parameters)
    again = LSTM(4, 6, 2, bidirectional=True, proj_size=3, seed=0)
    for name, p in m.parameters.items():
        np.testing.assert_array_equal(again.parameters[name], p, err_msg=name)


def test_proj_size_zero_is_the_plain_layer():
    plain, zero = LSTM(3, 4, 2, seed=1), LSTM(3, 4, 2, seed=1, proj_size=0)
    assert zero.proj_size == 0 and zero.state_size == 4 and zero.is_plain
    assert repr(zero) == repr(plain) == "LSTM(3, 4, num_layers=2)"
    assert list(zero.parameters) == list(plain.parameters)
    for name, p in plain.parameters.items():
        np.testing.assert_array_equal(zero.parameters[name], p, err_msg=name)


def test_state_dict_round_trips_with_torch():
    torch = pytest.importorskip("torch")
    t = torch.nn.LSTM(3, 5, 2, bidirectional=True, proj_size=2, dtype=torch.float64)
    # torch -> ours: the state dict loads as it is (tensors, torch's names and shapes).
    m = LSTM(3, 5, 2, bidirectional=True, proj_size=2, dtype=np.float64, seed=9)
    m.load_state_dict(t.state_dict())
    for name, value in t.state_dict().items():
        np.testing.assert_array_equal(m.parameters[name], value.numpy(), err_msg=name)
    # ours -> torch, and back into a new layer.
    ours = LSTM(3, 5, 2, bidirectional=True, proj_size=2, dtype=np.float64, seed=10)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    for name, value in t.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), ours.parameters[name], err_msg=name)
    back = LSTM(3, 5, 2, bidirectional=True, proj_size=2, dtype=np.float64)
    back.load_state_dict(ours.state_dict())
    for name, value in ours.parameters.items():
        np.testing.assert_array_equal(back.parameters[name], value, err_msg=name)


def test_state_dicts_of_other_shapes_are_refused():
    with_proj = LSTM(3, 5, proj_size=2, seed=1)
    plain = LSTM(3, 5, seed=1)
    with pytest.raises(ValueError, match="unexpected keys \\['weight_hr_l0'\\]"):
        plain.load_state_dict(with_proj.state_dict())
    with pytest.raises(ValueError, match="missing keys \\['weight_hr_l0'\\]"):
        with_proj.load_state_dict(plain.state_dict())
    other = LSTM(3, 5, proj_size=3, seed=1).state_dict()
    before = with_proj.state_dict()
    with pytest.raises(ValueError, match=r"weight_hh_l0 must have shape \(20, 2\)"):
        with_proj.load_state_dict(other)
    for name, value in before.items():  # nothing changed
        np.testing.assert_array_equal(with_proj.parameters[name], value, err_msg=name)


@pytest.mark.parametrize("value", [-1, 5, 6, 100])
def test_bad_proj_size_values(value):
    with pytest.raises(ValueError, match="proj_size"):
        LSTM(3, 5, proj_size=value)


def test_bad_proj_size_messages_and_types():
    with pytest.raises(ValueError, match="proj_size should be a positive integer or zero"):
        LSTM(3, 5, proj_size=-2)
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size = 5"):
        LSTM(3, 5, proj_size=5)
    for value in (2.0, True, "2", None):
        with pytest.raises(TypeError, match="proj_size"):
            LSTM(3, 5, proj_size=value)


def test_initial_state_shapes_are_checked():
    m = LSTM(3, 5, 2, proj_size=2, bidirectional=True)
    x = np.zeros((4, 3, 3), np.float32)
    h_good, c_good = np.zeros((4, 3, 2), np.float32), np.zeros((4, 3, 5), np.float32)
    with pytest.raises(
        ValueError, match=r"h0 must have shape \(num_layers\*num_directions, batch, proj_size\)"
    ):
        m(x, (np.zeros((4, 3, 5), np.float32), c_good))
    with pytest.raises(
        ValueError, match=r"c0 must have shape \(num_layers\*num_directions, batch, hidden_size\)"
    ):
        m(x, (h_good, np.zeros((4, 3, 2), np.float32)))
    with pytest.raises(ValueError, match="h0.*proj_size"):
        m(x[:, 0], (np.zeros((4, 5), np.float32), c_good[:, 0]))


# -------------------------------------------------------------- forward, backward


@needs_engine
def test_gradient_shapes_and_bad_gradients():
    m = LSTM(3, 5, 2, proj_size=2, bidirectional=True, seed=2)
    x = np.random.default_rng(3).standard_normal((4, 3, 3)).astype(np.float32)
    y, (h, c) = m(x)
    assert y.shape == (4, 3, 4) and h.shape == (4, 3, 2) and c.shape == (4, 3, 5)
    with pytest.raises(ValueError, match="dy must have the shape of y"):
        m.backward(np.ones((4, 3, 10), np.float32))
    with pytest.raises(ValueError, match="dh_n.*proj_size"):
        m.backward(None, np.ones((4, 3, 5), np.float32))
    with pytest.raises(ValueError, match="dc_n.*hidden_size"):
        m.backward(None, None, np.ones((4, 3, 2), np.float32))
    dx = m.backward(np.ones_like(y), np.ones_like(h), np.ones_like(c))
    assert dx.shape == x.shape
    assert m.hx_grad[0].shape == (4, 3, 2) and m.hx_grad[1].shape == (4, 3, 5)
    for name, g in m.grads.items():
        assert g.shape == m.parameters[name].shape, name
        assert np.abs(g).max() > 0, name


@needs_engine
@each_dtype
def test_unbatched_equals_batch_of_one(dtype):
    m = LSTM(3, 6, 2, proj_size=4, bidirectional=True, dtype=dtype, seed=4)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 3)).astype(dtype)
    h0 = rng.standard_normal((4, 4)).astype(dtype)
    c0 = rng.standard_normal((4, 6)).astype(dtype)
    y, (h, c) = m(x, (h0, c0))
    dx = m.backward(np.ones_like(y), np.ones_like(h))
    grads = {k: g.copy() for k, g in m.grads.items()}
    yb, (hb, cb) = m(x[:, None], (h0[:, None], c0[:, None]))
    dxb = m.backward(np.ones_like(yb), np.ones_like(hb))
    for ours, batched in ((y, yb), (h, hb), (c, cb), (dx, dxb)):
        np.testing.assert_array_equal(ours, batched[:, 0])
    for name, g in grads.items():
        np.testing.assert_array_equal(g, m.grads[name], err_msg=name)


@needs_engine
@each_dtype
def test_step_equals_forward(dtype):
    m = LSTM(3, 6, 2, proj_size=2, dtype=dtype, seed=6)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((7, 2, 3)).astype(dtype)
    h0 = rng.standard_normal((2, 2, 2)).astype(dtype)
    c0 = rng.standard_normal((2, 2, 6)).astype(dtype)
    y, (h, c) = m(x, (h0, c0))
    state = (h0, c0)
    steps = []
    for t in range(7):
        y_t, state = m.step(x[t], state)
        steps.append(y_t)
    np.testing.assert_allclose(np.stack(steps), y, **TOL[dtype])
    np.testing.assert_allclose(state[0], h, **TOL[dtype])
    np.testing.assert_allclose(state[1], c, **TOL[dtype])
    assert state[0].shape == (2, 2, 2) and state[1].shape == (2, 2, 6)
    with pytest.raises(ValueError, match="state\\[0\\].*proj_size"):
        m.step(x[0], (np.zeros((2, 2, 6), dtype), c0))


@needs_engine
def test_in_place_update_of_weight_hr_is_used():
    """The layer keeps packed weights across calls; an optimizer's in-place step on
    weight_hr must change the next forward (no stale copy)."""
    m = LSTM(3, 5, proj_size=2, seed=8)
    x = np.random.default_rng(9).standard_normal((4, 2, 3)).astype(np.float32)
    y0, _ = m(x)
    m(x)  # a second call on the kept weights
    m.parameters["weight_hr_l0"][...] *= 0.5
    y1, _ = m(x)
    fresh = LSTM(3, 5, proj_size=2)
    fresh.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(y1, fresh(x)[0])
    assert not np.allclose(y0, y1)


@needs_engine
def test_flow_per_layer_and_direction():
    m = LSTM(3, 5, 2, proj_size=2, bidirectional=True, seed=10)
    x = np.random.default_rng(11).standard_normal((6, 3, 3)).astype(np.float32)
    y, _ = m(x)
    dy = np.ones_like(y)
    dx = m.backward(dy, flow=True)
    grads = {k: g.copy() for k, g in m.grads.items()}
    assert sorted(m.flow) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for flow in m.flow.values():
        assert flow.dh.shape == flow.dc.shape == (6, 3)
        np.testing.assert_allclose(flow.dh_sum, flow.dh.sum(axis=1), rtol=1e-5)
    # The top layer's forward direction sees dy's first P columns at every step and,
    # at the last step, nothing else: ||dh_T|| = ||dy_T[:, :P]|| = sqrt(P).
    np.testing.assert_allclose(m.flow[(1, 0)].dh[-1], np.sqrt(2), rtol=1e-6)
    # Asking for the flow changes no gradient.
    np.testing.assert_array_equal(m.backward(dy), dx)
    for name, g in grads.items():
        np.testing.assert_array_equal(m.grads[name], g, err_msg=name)


@needs_engine
def test_pickle_and_repr():
    m = LSTM(3, 5, 2, proj_size=2, bidirectional=True, dtype=np.float64, seed=12)
    assert repr(m) == "LSTM(3, 5, num_layers=2, bidirectional=True, dtype=float64, proj_size=2)"
    assert not m.is_plain and m.state_size == 2
    x = np.random.default_rng(13).standard_normal((4, 2, 3))
    y, (h, c) = m(x)
    back = pickle.loads(pickle.dumps(m))
    assert repr(back) == repr(m) and back.proj_size == 2
    yb, (hb, cb) = back(x)
    for ours, theirs in ((y, yb), (h, hb), (c, cb)):
        np.testing.assert_array_equal(ours, theirs)
    back.backward(np.ones_like(yb))
    assert back.grads["weight_hr_l1_reverse"].shape == (2, 5)


def test_pickle_of_a_layer_from_before_projections():
    m = LSTM(3, 4, seed=14)
    state = m.__getstate__()
    del state["proj_size"]  # as a layer pickled before proj_size existed
    old = LSTM.__new__(LSTM)
    old.__setstate__(state)
    assert old.proj_size == 0 and old.state_size == 4 and repr(old) == "LSTM(3, 4)"

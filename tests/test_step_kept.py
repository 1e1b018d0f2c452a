"""``LSTM.step``'s kept call (``LSTM._kept_pass``: the proof that the live parameters
are the packed ones and the step, in one engine call) against the general call it
stands in for (``PreparedWeights.forward`` after ``PreparedWeights.matches``, or the
functional call): the same bits for every option, the same exceptions for bad input,
and never a stale packing."""

from __future__ import annotations

import lstm_fast
import numpy as np
import pytest
from lstm_fast import functional
from lstm_fast.layer import LSTM

from tests.helpers import assert_same_bits, each_dtype


def _general(monkeypatch):
    """Make ``step`` take the general call for every layer (the path of before)."""
    monkeypatch.setattr(LSTM, "_kept_pass", lambda *args, **kwargs: False)


def _steps(m, xs, state=None, **kw):
    """Each step's (y, (h, c)), the state carried along."""
    out = []
    for x_t in xs:
        y, state = m.step(x_t, state, **kw)
        out.append((y, state))
    return out


def _twins(monkeypatch, make, xs, state=None, **kw):
    """The steps of two identical layers: kept calls, then general calls."""
    kept = _steps(make(), xs, state, **kw)
    with monkeypatch.context() as patch:
        _general(patch)
        general = _steps(make(), xs, state, **kw)
    return kept, general


def _random_norms(m, seed=0):
    """``m`` with its LayerNorm gains and biases drawn (not 1 and 0, so that a
    gain read in a bias's place, or one layer's for another's, shows)."""
    rng = np.random.default_rng(seed)
    for name, p in m.parameters.items():
        if "_ln_" in name:
            low, high = (0.5, 1.5) if name.startswith("weight_") else (-0.5, 0.5)
            p[...] = rng.uniform(low, high, p.shape)
    return m


def _assert_same(kept, general):
    assert len(kept) == len(general)
    for t, ((y, (h, c)), (y2, (h2, c2))) in enumerate(zip(kept, general)):
        assert_same_bits(y, y2, f"y, step {t}")
        assert_same_bits(h, h2, f"h, step {t}")
        assert_same_bits(c, c2, f"c, step {t}")


OPTIONS = [
    {},
    {"num_layers": 3},
    {"proj_size": 3},
    {"proj_size": 2, "num_layers": 2},
    {"bias": False},
    {"batch_first": True},
    {"peepholes": True},
    {"clip": 0.5},
    {"input_forget": True},
    {"forget_gate": False},
    {"activations": ["hardsigmoid", ("leakyrelu", 0.1), "softsign"]},
    {"peepholes": True, "proj_size": 2, "clip": 0.7, "num_layers": 2},
    {"forget_bias": 1.0},
    {"layer_norm": True},
    {"layer_norm": True, "layer_norm_eps": 0.5, "num_layers": 2},
    {"layer_norm": True, "peepholes": True, "proj_size": 3, "clip": 0.7},
    # Regularisation that does not change inference: step is the plain cell.
    {"recurrent_dropout": 0.3, "weight_drop": 0.2, "dropout": 0.4, "num_layers": 2},
]


@each_dtype
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("batch", [None, 1, 3])
def test_kept_step_gives_the_bits_of_the_general_call(monkeypatch, isa, dtype, options, batch):
    rng = np.random.default_rng(3)
    shape = (5, 4) if batch is None else (5, batch, 4)
    xs = rng.standard_normal(shape).astype(dtype)

    def make():
        return _random_norms(LSTM(4, 6, seed=1, dtype=dtype, **options))

    _assert_same(*_twins(monkeypatch, make, xs))
    # From a given state, of another dtype and not C-contiguous.
    m = make()
    rows = (m.num_layers,) if batch is None else (m.num_layers, batch)
    h0 = np.asfortranarray(rng.standard_normal((*rows, m.state_size)))
    c0 = rng.standard_normal((*rows, m.hidden_size)).astype(np.float32)
    _assert_same(*_twins(monkeypatch, make, xs, (h0, c0)))


@pytest.mark.parametrize(
    "options",
    [{}, {"proj_size": 3, "num_layers": 2}, {"peepholes": True}, {"layer_norm": True}],
)
@pytest.mark.parametrize("shape", [(4, 2, 5), (4, 1, 5), (4, 5)], ids=["B2", "B1", "unbatched"])
def test_kept_step_with_bfloat16_weights(monkeypatch, isa, options, shape):
    # One row reads float32 weights in place (kernels/row_major.rs), never the
    # bfloat16 ones: bf16's steps keep the kept bfloat16 copy at any batch.
    rng = np.random.default_rng(4)
    xs = rng.standard_normal(shape).astype(np.float32)

    def make():
        return _random_norms(LSTM(5, 8, seed=2, **options))

    kept, general = _twins(monkeypatch, make, xs, weight_dtype="bfloat16")
    _assert_same(kept, general)
    # bf16's own copy, not the float32 one.
    assert not np.array_equal(kept[-1][0], _steps(make(), xs)[-1][0])


@pytest.mark.parametrize("layer_norm", [False, True])
def test_kept_step_is_taken_and_runs_no_general_call(monkeypatch, layer_norm):
    # The kept call must really stand in for the general one (or the comparisons
    # above would compare the general call with itself).
    def refuse(*args, **kwargs):
        raise AssertionError("the general call ran")

    m = _random_norms(LSTM(3, 5, num_layers=2, seed=0, proj_size=2, layer_norm=layer_norm))
    x = np.ones((2, 3), np.float32)
    m.step(x)  # packs once
    m.forward(x[None], need_cache=False)
    monkeypatch.setattr(functional.PreparedWeights, "forward", refuse)
    monkeypatch.setattr(functional.PreparedWeights, "matches", refuse)
    monkeypatch.setattr(functional, "forward", refuse)
    y, state = m.step(x)
    y, state = m.step(x, state)
    assert y.shape == (2, 2)
    # The inference forward too (its state written in place).
    y_f, (h_f, c_f) = m.forward(np.stack([x, x]), need_cache=False)
    assert y_f.shape == (2, 2, 2) and h_f.shape == (2, 2, 2)


@pytest.mark.parametrize(
    "how",
    ["in_place", "bias", "projection", "load_state_dict", "replaced", "float64", "view"]
    + ["unaligned", "ln_in_place", "ln_replaced", "ln_float64", "ln_view"],
)
def test_kept_step_never_uses_stale_weights(monkeypatch, how):
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((6, 2, 3)).astype(np.float32)

    def update(m, t):
        p = m.parameters
        if how == "in_place":
            p["weight_hh_l1"][t % 4, 1] += 0.25
        elif how == "bias":
            p["bias_hh_l0"][-1] -= 0.5
        elif how == "projection":
            p["weight_hr_l0"][0, t % 5] *= -1.5
        elif how == "load_state_dict":
            state = m.state_dict()
            state["weight_ih_l0"] = state["weight_ih_l0"] * 0.5
            m.load_state_dict(state)
        elif how == "replaced":
            p["weight_ih_l1"] = p["weight_ih_l1"] + 0.125
        elif how == "ln_in_place":  # the gains and biases are read live, never kept
            p["weight_ln_hh_l1"][t % 4] *= 1.5
            p["bias_ln_c_l0"][t % 5] += 0.25
        elif how == "ln_replaced":
            p["weight_ln_ih_l0"] = p["weight_ln_ih_l0"] * 0.75
        elif how == "ln_float64":  # not the layer's dtype: the general call casts it
            p["bias_ln_ih_l1"] = p["bias_ln_ih_l1"].astype(np.float64) + 0.125
        elif how == "ln_view":  # a strided view: the general call copies it
            w = p["weight_ln_c_l1"]
            big = np.zeros(2 * w.shape[0], w.dtype)
            big[::2] = w * 1.25
            p["weight_ln_c_l1"] = big[::2]
        elif how == "float64":
            p["weight_hh_l0"] = p["weight_hh_l0"].astype(np.float64) * 0.75
        elif how == "unaligned":  # as unpickled arrays can be: the general call copies it
            w = p["weight_hh_l0"]
            raw = np.zeros(w.nbytes + 1, np.uint8)[1:].view(w.dtype).reshape(w.shape)
            raw[...] = w * 0.5
            assert not raw.flags.aligned
            p["weight_hh_l0"] = raw
        else:  # a strided view: the general call copies it
            w = p["weight_ih_l0"]
            big = np.zeros((w.shape[0], 2 * w.shape[1]), w.dtype)
            big[:, ::2] = w * 1.25
            p["weight_ih_l0"] = big[:, ::2]

    def run(m):
        out, state = [], None
        for t, x_t in enumerate(xs):
            y, state = m.step(x_t, state)
            out.append((y, state))
            update(m, t)
        return out

    def make():
        return LSTM(
            3, 5, num_layers=2, seed=4, proj_size=2 if how == "projection" else 0,
            layer_norm=how.startswith("ln_"),
        )  # fmt: skip

    kept = run(make())
    with monkeypatch.context() as patch:
        _general(patch)
        general = run(make())
    _assert_same(kept, general)
    assert not np.array_equal(kept[0][0], kept[-1][0])


def test_kept_step_sees_a_copy_and_a_pickle_on_their_own():
    import copy
    import pickle

    m = LSTM(3, 4, seed=2)
    x = np.ones((1, 3), np.float32)
    before = m.step(x)[0]
    for twin in (copy.copy(m), pickle.loads(pickle.dumps(m))):
        twin.parameters["weight_ih_l0"] = twin.parameters["weight_ih_l0"] + 1
        assert not np.array_equal(twin.step(x)[0], before)
    assert_same_bits(m.step(x)[0], before)


BAD = [
    ("x_t", lambda m: (np.ones((2, 2, 3), np.float32),), {}),
    ("x_t", lambda m: (np.ones((2, 5), np.float32),), {}),
    ("x_t", lambda m: (np.ones(5, np.float32),), {}),
    ("x_t", lambda m: (np.array(["a", "b", "c"]),), {}),
    ("x_t", lambda m: (np.ones(3, np.complex64),), {}),
    ("state", lambda m: (np.ones((2, 3)), np.zeros((2, 5))), {}),
    ("state[0]", lambda m: (np.ones((2, 3)), (np.zeros((2, 2, 4)), np.zeros((2, 2, 5)))), {}),
    ("state[1]", lambda m: (np.ones((2, 3)), (np.zeros((2, 2, 5)), np.zeros((2, 2, 4)))), {}),
    ("state[0]", lambda m: (np.ones(3), (np.zeros((2, 2, 5)), np.zeros((2, 5)))), {}),
    ("state[1]", lambda m: (np.ones((2, 3)), (np.zeros((2, 2, 5)), "c")), {}),
    ("weight_dtype", lambda m: (np.ones((2, 3)),), {"weight_dtype": "float16"}),
]


@pytest.mark.parametrize("name,args,kw", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_kept_step_refuses_what_the_general_call_refuses(monkeypatch, name, args, kw):
    def failure(m):
        with pytest.raises((TypeError, ValueError)) as info:
            m.step(*args(m), **kw)
        return info.type, str(info.value)

    m = LSTM(3, 5, num_layers=2, seed=0)
    m.step(np.ones((2, 3), np.float32))  # packed: the kept call is the one refusing
    kept = failure(m)
    with monkeypatch.context() as patch:
        _general(patch)
        general = failure(LSTM(3, 5, num_layers=2, seed=0))
    assert kept == general
    assert name.split("[")[0] in kept[1]


def test_kept_step_refusals_of_the_layer_and_the_weights():
    bi = LSTM(3, 4, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        bi.step(np.ones(3, np.float32))
    wide = LSTM(3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match="float32"):
        wide.step(np.ones(3), weight_dtype="bf16")
    m = LSTM(3, 4)
    m.step(np.ones(3, np.float32))
    m.parameters["weight_hh_l0"] = np.ones((4, 4), np.float32)  # a wrong shape
    with pytest.raises(ValueError, match="w_hh"):
        m.step(np.ones(3, np.float32))


@pytest.mark.parametrize("threads_n", [1, 2, 3])
def test_kept_step_proof_over_threads(threads, threads_n):
    # Weights past the size the proof splits over the threads (1 MiB): the same
    # answer, and an update of the last byte is seen, whatever the thread count.
    lstm_fast.set_num_threads(threads_n)
    m = LSTM(192, 192, seed=3)
    x = np.random.default_rng(6).standard_normal((1, 192)).astype(np.float32)
    _, state = m.step(x)
    y = m.step(x, state)[0]
    assert_same_bits(m.step(x, state)[0], y)
    m.parameters["weight_hh_l0"][-1, -1] += 1.0  # the last byte the proof reads
    y2 = m.step(x, state)[0]
    assert not np.array_equal(y2, y)
    fresh = LSTM(192, 192, seed=3)
    fresh.load_state_dict(m.state_dict())
    assert_same_bits(fresh.step(x, state)[0], y2)


# ------------------------------------------------------- inference forward


FORWARD_OPTIONS = [
    {},
    {"bidirectional": True, "num_layers": 2},
    {"batch_first": True, "num_layers": 2},
    {"proj_size": 2, "bidirectional": True},
    {"peepholes": True, "clip": 0.5, "bias": False},
    {"activations": ["hardsigmoid", ("leakyrelu", 0.1), "softsign"], "input_forget": True},
    {"layer_norm": True, "num_layers": 2},
    {"layer_norm": True, "bidirectional": True, "proj_size": 2, "peepholes": True},
]


@each_dtype
@pytest.mark.parametrize("options", FORWARD_OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("steps", [0, 1, 7])
def test_kept_forward_gives_the_bits_of_the_general_call(monkeypatch, isa, dtype, options, steps):
    rng = np.random.default_rng(8)
    m = _random_norms(LSTM(4, 6, seed=5, dtype=dtype, **options))
    general = _random_norms(LSTM(4, 6, seed=5, dtype=dtype, **options))
    rows = m.num_layers * m.num_directions
    batched_shape = (3, steps, 4) if m.batch_first else (steps, 3, 4)
    for shape in (batched_shape, (steps, 4)):  # batched (the layer's layout), unbatched
        x = rng.standard_normal(shape).astype(dtype)
        batched = len(shape) == 3
        h0 = rng.standard_normal((rows, 3, m.state_size) if batched else (rows, m.state_size))
        for hx in (None, (h0, np.zeros((*h0.shape[:-1], m.hidden_size), np.float32))):
            ours = m.forward(x, hx, need_cache=False)
            with monkeypatch.context() as patch:
                patch.setattr(LSTM, "_kept_pass", lambda *args, **kwargs: False)
                theirs = general.forward(x, hx, need_cache=False)
            assert_same_bits(ours[0], theirs[0], "y")
            assert_same_bits(ours[1][0], theirs[1][0], "h_n")
            assert_same_bits(ours[1][1], theirs[1][1], "c_n")
            # The training forward (the general call) gives the same bits.
            assert_same_bits(m.forward(x, hx)[0], ours[0], "y with a cache")


@pytest.mark.parametrize("layer_norm", [False, True])
def test_kept_forward_bfloat16_and_updates(monkeypatch, layer_norm):
    rng = np.random.default_rng(9)
    m = _random_norms(LSTM(5, 8, num_layers=2, bidirectional=True, seed=6, layer_norm=layer_norm))
    x = rng.standard_normal((4, 2, 5)).astype(np.float32)

    def general(m, **kw):
        with monkeypatch.context() as patch:
            patch.setattr(LSTM, "_kept_pass", lambda *args, **kwargs: False)
            return m.forward(x, need_cache=False, **kw)

    for kw in ({}, {"weight_dtype": "bf16"}):
        y = m.forward(x, need_cache=False, **kw)[0]
        assert_same_bits(y, general(m, **kw)[0])
        m.parameters["weight_hh_l1_reverse"][3, 2] += 0.5  # seen by the next call
        y2 = m.forward(x, need_cache=False, **kw)[0]
        assert not np.array_equal(y, y2)
        assert_same_bits(y2, general(m, **kw)[0])


def test_kept_forward_leaves_lengths_and_training_to_the_general_call(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the kept call ran")

    m = LSTM(3, 4, seed=0, recurrent_dropout=0.5)
    x = np.ones((3, 2, 3), np.float32)
    monkeypatch.setattr(LSTM, "_kept_pass", refuse)
    m.forward(x, need_cache=False, lengths=[3, 1])
    m.forward(x)
    m.forward(x, need_cache=False)  # training mode with masks


@pytest.mark.parametrize("bidirectional", [False, True])
def test_kept_forward_states_when_some_passes_take_the_general_call(monkeypatch, bidirectional):
    # Layer 1's input weights a strided view: its passes take the general call,
    # layer 0's the kept one; h_n and c_n hold every pass's state either way.
    rng = np.random.default_rng(10)
    m = LSTM(3, 5, num_layers=2, bidirectional=bidirectional, seed=7)
    general = LSTM(3, 5, num_layers=2, bidirectional=bidirectional, seed=7)
    for layer in (m, general):
        w = layer.parameters["weight_ih_l1"]
        big = np.zeros((w.shape[0], 2 * w.shape[1]), w.dtype)
        big[:, ::2] = w
        layer.parameters["weight_ih_l1"] = big[:, ::2]
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    h0 = rng.standard_normal((m.num_layers * m.num_directions, 2, 5)).astype(np.float32)
    for hx in (None, (h0, -h0)):
        for _ in range(2):  # the second call reuses the packed weights
            y, (h_n, c_n) = m.forward(x, hx, need_cache=False)
            with monkeypatch.context() as patch:
                patch.setattr(LSTM, "_kept_pass", lambda *args, **kwargs: False)
                y_g, (h_g, c_g) = general.forward(x, hx, need_cache=False)
            assert_same_bits(y, y_g, "y")
            assert_same_bits(h_n, h_g, "h_n")
            assert_same_bits(c_n, c_g, "c_n")
            assert h_n.flags.c_contiguous and c_n.flags.c_contiguous

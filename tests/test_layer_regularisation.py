"""The LSTM layer's regularisation (docs/variants.md, 'Regularisation'; docs/api.md,
'The LSTM layer'): ``dropout`` between layers, ``recurrent_dropout`` and
``weight_drop``, in training mode only.

The oracle is a loop over ``lstm_fast.reference`` written here: per layer and
direction ``reference.forward`` with the same seed, ``layer=k`` and ``reverse``,
``reference.dropout`` on every layer's output but the last, and backward in reverse
through the same calls. Against it: 1-3 layers, bidirectional, proj_size, lengths,
batch_first, unbatched, h0/c0, both dtypes. Then the mode (eval() is the plain
layer, bit for bit), reproducibility from the seed, pickling, state dicts, step,
export, from_keras and bad arguments.

Zoneout and the LayerNorm LSTM (``zoneout=``, ``layer_norm=True``) against the same
loop, in both modes, on the engine once ``lstm_fast.forward`` takes them and, always,
on the reference swapped in as the layer's engine (which tests the layer's part:
parameters, masks, modes, gradients).
"""

from __future__ import annotations

import os
import pickle
import warnings

import lstm_fast
import numpy as np
import pytest
from lstm_fast import layer as layer_module
from lstm_fast import masks
from lstm_fast.layer import LSTM

from tests.helpers import assert_close, assert_same_bits, each_dtype, ref

I, H, T, B = 3, 5, 6, 4  # noqa: E741

RATES = {"dropout": 0.3, "recurrent_dropout": 0.25, "weight_drop": 0.4}


# ---------------------------------------------------------------------------
# The oracle: the stack written out over the reference


def _variant(m: LSTM, k: int, d: int) -> dict:
    suffix = f"_l{k}" + ("_reverse" if d else "")
    options = {}
    if m.proj_size:
        options["w_hr"] = m.parameters["weight_hr" + suffix].astype(np.float64)
    if m.peepholes:
        options["peepholes"] = m.parameters["weight_p" + suffix].astype(np.float64)
    if m.layer_norm:
        options["layer_norm"] = True
        options["layer_norm_eps"] = m.layer_norm_eps
        for key, name in zip(LN_KEYS, m._layer_norm_names(k, d)):
            options[key] = _f64(m.parameters[name])
    return options


LN_KEYS = ("w_ln_ih", "b_ln_ih", "w_ln_hh", "b_ln_hh", "w_ln_c", "b_ln_c")
LN_GRADS = ("dw_ln_ih", "db_ln_ih", "dw_ln_hh", "db_ln_hh", "dw_ln_c", "db_ln_c")


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def reference_stack(m: LSTM, x, hx, lengths, seed, dy, dh, dc):
    """(y, h_n, c_n, dx, grads, dh0, dc0) of ``m`` in its mode, computed in float64 by
    the reference with the masks of ``seed`` (x batched, in m's layout)."""
    L, D, bf = m.num_layers, m.num_directions, m.batch_first
    training = m.training
    reg = dict(
        recurrent_dropout=m.recurrent_dropout, weight_drop=m.weight_drop,
        zoneout=getattr(m, "zoneout", 0.0), seed=seed, training=training,
    )  # fmt: skip
    h0, c0 = (None, None) if hx is None else (_f64(hx[0]), _f64(hx[1]))
    inp = _f64(x)
    caches, h_n, c_n = [], [], []
    for k in range(L):
        outs = []
        for d in range(D):
            w = [_f64(a) for a in m.weights(k, d)]
            r = k * D + d
            outs.append(
                ref.forward(
                    inp,
                    *w,
                    None if h0 is None else h0[r],
                    None if c0 is None else c0[r],
                    batch_first=bf,
                    lengths=lengths,
                    reverse=d == 1,
                    layer=k,
                    **_variant(m, k, d),
                    **reg,
                )  # fmt: skip
            )
        caches.append([o.cache for o in outs])
        h_n += [o.h_n for o in outs]
        c_n += [o.c_n for o in outs]
        y = np.concatenate([o.y for o in outs], axis=-1)
        if k < L - 1:
            y = ref.dropout(y, m.dropout, seed=seed, layer=k, batch_first=bf, training=training)
        inp = y
    grads, dh0, dc0 = {}, [None] * (L * D), [None] * (L * D)
    d_out = _f64(dy)
    P = m.state_size
    for k in reversed(range(L)):
        dx = 0
        for d in range(D):
            r = k * D + d
            g = ref.backward(
                caches[k][d], d_out[..., d * P : (d + 1) * P], _f64(dh[r]), _f64(dc[r])
            )
            suffix = f"_l{k}" + ("_reverse" if d else "")
            grads["weight_ih" + suffix], grads["weight_hh" + suffix] = g.dw_ih, g.dw_hh
            if m.bias:
                grads["bias_ih" + suffix], grads["bias_hh" + suffix] = g.db_ih, g.db_hh
            if m.proj_size:
                grads["weight_hr" + suffix] = g.dw_hr
            if m.peepholes:
                grads["weight_p" + suffix] = g.dpeepholes
            if m.layer_norm:
                for field, name in zip(LN_GRADS, m._layer_norm_names(k, d)):
                    grads[name] = getattr(g, field)
            dh0[r], dc0[r] = g.dh0, g.dc0
            dx = dx + g.dx
        if k > 0:  # the gradient of the dropout below: the same mask, linear
            dx = ref.dropout(dx, m.dropout, seed=seed, layer=k - 1, batch_first=bf,
                             training=training)  # fmt: skip
        d_out = dx
    return y, np.stack(h_n), np.stack(c_n), d_out, grads, np.stack(dh0), np.stack(dc0)


def _problem(m: LSTM, dtype, lengths: bool, hx: bool, seed: int = 5):
    rng = np.random.default_rng(seed)
    D, P = m.num_directions, m.state_size
    x = rng.standard_normal((B, T, I) if m.batch_first else (T, B, I)).astype(dtype)
    rows = m.num_layers * D
    state = (
        (
            rng.standard_normal((rows, B, P)).astype(dtype),
            rng.standard_normal((rows, B, H)).astype(dtype),
        )
        if hx
        else None
    )
    lens = np.array([T, 1, 0, 4])[:B] if lengths else None
    dy = rng.standard_normal((B, T, D * P) if m.batch_first else (T, B, D * P)).astype(dtype)
    dh = rng.standard_normal((rows, B, P)).astype(dtype)
    dc = rng.standard_normal((rows, B, H)).astype(dtype)
    return x, state, lens, dy, dh, dc


def _check_against_reference(m: LSTM, dtype, *, lengths=False, hx=True, seed=None):
    x, state, lens, dy, dh, dc = _problem(m, dtype, lengths, hx)
    y, (h_n, c_n) = m(x, state, lengths=lens, seed=seed)
    dx = m.backward(dy, dh, dc)
    used = m._tape.seed
    if seed is not None:  # a given seed is the pass's, when the pass draws masks
        assert used == m.mask_seed(seed)
    want = reference_stack(m, x, state, lens, used, dy, dh, dc)
    names = ("y", "h_n", "c_n", "dx")
    for name, ours, theirs in zip(names, (y, h_n, c_n, dx), want[:4]):
        assert ours.dtype == dtype, name
        assert_close(ours, theirs, dtype, what=name)
    assert set(want[4]) == set(m.grads)
    for name, g in want[4].items():
        assert_close(m.grads[name], g, dtype, what=name)
    assert_close(m.hx_grad[0], want[5], dtype, what="dh0")
    assert_close(m.hx_grad[1], want[6], dtype, what="dc0")
    return y


CONFIGS = [
    # num_layers, bidirectional, batch_first, proj_size, lengths, rates
    (1, False, False, 0, False, {"recurrent_dropout": 0.3}),
    (1, False, True, 0, True, {"weight_drop": 0.5}),
    (1, True, False, 0, True, {"recurrent_dropout": 0.2, "weight_drop": 0.3}),
    (2, False, False, 0, False, {"dropout": 0.4}),
    (2, False, True, 0, True, RATES),
    (2, True, False, 0, False, RATES),
    (2, True, True, 2, True, RATES),
    (3, False, False, 3, False, RATES),
    (3, True, True, 0, True, {"dropout": 0.5, "weight_drop": 0.2}),
    (3, True, False, 4, True, {"dropout": 0.2, "recurrent_dropout": 0.6}),
]


def _config_id(c) -> str:
    rates = "+".join(f"{k[:3]}{v}" for k, v in c[5].items())
    return "L{}-bi{:d}-bf{:d}-P{}-len{:d}-".format(*c[:5]) + rates


@each_dtype
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_training_matches_the_reference_loop(config, dtype):
    layers, bidi, batch_first, proj, lengths, rates = config
    m = LSTM(
        I, H, layers, bidirectional=bidi, batch_first=batch_first, proj_size=proj,
        dtype=dtype, seed=3, **rates,
    )  # fmt: skip
    assert m.training
    _check_against_reference(m, dtype, lengths=lengths, seed=2**64 - 7)
    # The generator's seed (no seed given) is as good as any: the tape says which.
    _check_against_reference(m, dtype, lengths=lengths, hx=False)


@each_dtype
def test_masks_change_the_result(dtype):
    """The oracle must not agree by accident: the regularised pass differs from the
    plain one, and from itself under another seed."""
    m = LSTM(I, H, 2, bidirectional=True, dtype=dtype, seed=3, **RATES)
    x, state, *_ = _problem(m, dtype, False, True)
    y1, _ = m(x, state, seed=1)
    y2, _ = m(x, state, seed=2)
    y0, _ = m.eval()(x, state)
    assert not np.allclose(y1, y2)
    assert not np.allclose(y1, y0)


@each_dtype
def test_each_option_reaches_its_layers(dtype):
    """dropout alone changes only layers above the first; with one layer it does
    nothing (and warns, as PyTorch); recurrent dropout and weight drop change layer 0."""
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(dtype)
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        one = LSTM(I, H, dropout=0.5, dtype=dtype, seed=1)
    plain = LSTM(I, H, dtype=dtype, seed=1)
    assert_same_bits(one(x, seed=4)[0], plain(x)[0])
    two = LSTM(I, H, 2, dropout=0.5, dtype=dtype, seed=1)
    y, (h_n, c_n) = two(x, seed=4)
    y_plain, (h_plain, c_plain) = LSTM(I, H, 2, dtype=dtype, seed=1)(x)
    assert_same_bits(h_n[0], h_plain[0])  # layer 0 untouched
    assert not np.allclose(h_n[1], h_plain[1])
    for option in ("recurrent_dropout", "weight_drop"):
        m = LSTM(I, H, 2, dtype=dtype, seed=1, **{option: 0.5})
        _, (h_n, _) = m(x, seed=4)
        assert not np.allclose(h_n[0], h_plain[0]), option


@each_dtype
@pytest.mark.parametrize("proj", [0, 2])
def test_unbatched(dtype, proj):
    m = LSTM(I, H, 2, bidirectional=True, proj_size=proj, dtype=dtype, seed=2, **RATES)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, I)).astype(dtype)
    y, (h_n, c_n) = m(x, seed=9)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = m.backward(dy)
    # The same rows batched (b = 0): the same masks, so the same bits.
    yb, (hb, cb) = m(x[:, None, :], seed=9)
    dxb = m.backward(dy[:, None, :])
    assert_same_bits(y, yb[:, 0])
    assert_same_bits(h_n, hb[:, 0])
    assert_same_bits(dx, dxb[:, 0])
    zeros = np.zeros((4, 1, m.state_size))
    want = reference_stack(
        m, x[:, None, :], None, None, 9, dy[:, None, :], zeros, np.zeros((4, 1, H))
    )
    assert_close(y, want[0][:, 0], dtype, what="y")
    assert_close(dx, want[3][:, 0], dtype, what="dx")


@pytest.mark.parametrize("concurrent", [False, True])
def test_directions_in_two_threads_give_the_same_bits(monkeypatch, concurrent):
    m = LSTM(I, H, 2, bidirectional=True, dtype=np.float64, seed=2, **RATES)
    x, state, lens, dy, dh, dc = _problem(m, np.float64, True, True)
    monkeypatch.setattr(layer_module, "CONCURRENT_DIRECTIONS", concurrent)
    y, (h_n, c_n) = m(x, state, lengths=lens, seed=11)
    dx = m.backward(dy, dh, dc)
    monkeypatch.setattr(layer_module, "CONCURRENT_DIRECTIONS", not concurrent)
    y2, (h2, c2) = m(x, state, lengths=lens, seed=11)
    dx2 = m.backward(dy, dh, dc)
    for a, b in ((y, y2), (h_n, h2), (c_n, c2), (dx, dx2)):
        assert_same_bits(a, b)


def test_dropout_between_layers_is_the_generators_mask():
    """Stream 5, layer k, coordinates (t, b, u) of y whatever the layout: layer 1's
    input is layer 0's output times masks.scaled_keep(seed, DROPOUT, 0, 0, ...)."""
    dtype = np.float64
    for batch_first in (False, True):
        m = LSTM(I, H, 2, batch_first=batch_first, dropout=0.5, dtype=dtype, seed=4)
        x, *_ = _problem(m, dtype, False, False)
        y, _ = m(x, seed=21)
        first = LSTM(I, H, batch_first=batch_first, dtype=dtype, seed=4)  # m's layer 0
        y0, _ = first(x)
        keep = masks.scaled_keep(21, masks.DROPOUT, 0, 0, (T, B, H), 0.5, dtype)
        if batch_first:
            keep = keep.transpose(1, 0, 2)
        # The tape keeps the mask's shape and rate, not the mask (backward draws it
        # again from the seed).
        shape = (B, T, H) if batch_first else (T, B, H)
        assert m._tape.dropout == [(shape, 0.5), None]
        assert_same_bits(m._dropout_keep(0, 21, shape, 0.5, batch_first), keep)
        second = lstm_fast.prepare_weights(*m.weights(1), dtype=dtype)
        assert_same_bits(y, second.forward(y0 * keep, batch_first=batch_first).y)


# ---------------------------------------------------------------------------
# Training mode


@each_dtype
@pytest.mark.parametrize("proj", [0, 2])
def test_eval_is_the_plain_layer_bit_for_bit(dtype, proj):
    kw = dict(bidirectional=True, batch_first=True, proj_size=proj, dtype=dtype, seed=8)
    m = LSTM(I, H, 3, **kw, **RATES)
    plain = LSTM(I, H, 3, **kw)
    assert m.eval() is m and not m.training
    x, state, lens, dy, dh, dc = _problem(m, dtype, True, True)
    ours = m(x, state, lengths=lens)
    theirs = plain(x, state, lengths=lens)
    assert_same_bits(ours[0], theirs[0])
    assert_same_bits(ours[1][0], theirs[1][0])
    assert_same_bits(ours[1][1], theirs[1][1])
    assert_same_bits(m.backward(dy, dh, dc), plain.backward(dy, dh, dc))
    for name in plain.grads:
        assert_same_bits(m.grads[name], plain.grads[name], name)
    assert_same_bits(m.hx_grad[0], plain.hx_grad[0])
    # A seed in eval mode is checked and unused.
    assert_same_bits(m(x, state, lengths=lens, seed=3)[0], theirs[0])
    # Back to training: masks again.
    assert m.train() is m and m.training
    assert not np.allclose(m(x, state, lengths=lens)[0], theirs[0])
    assert m.train(False) is m and not m.training


def test_eval_mode_does_not_use_the_generator():
    m = LSTM(I, H, 2, seed=1, **RATES)
    twin = LSTM(I, H, 2, seed=1, **RATES)
    x = np.ones((T, B, I), np.float32)
    m.eval()
    for _ in range(3):
        m(x)
    m.train()
    assert_same_bits(m(x)[0], twin(x)[0])


def test_need_cache_false_still_drops_in_training():
    """As PyTorch (dropout under no_grad in train mode): masks depend on the mode,
    not on whether a backward will follow."""
    m = LSTM(I, H, 2, dtype=np.float64, seed=1, **RATES)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    y, _ = m(x, seed=5)
    y2, _ = m(x, seed=5, need_cache=False)
    assert_same_bits(y, y2)
    with pytest.raises(RuntimeError, match="need_cache=True"):
        m.backward(y)


# ---------------------------------------------------------------------------
# Seeds


@each_dtype
def test_reproducible_from_the_layer_seed(dtype):
    runs = []
    for _ in range(2):
        m = LSTM(I, H, 2, bidirectional=True, dtype=dtype, seed=12, **RATES)
        x, state, lens, dy, dh, dc = _problem(m, dtype, True, True)
        outs = []
        for _ in range(3):  # a fresh seed per forward, the same sequence of them
            y, (h_n, c_n) = m(x, state, lengths=lens)
            outs += [y, h_n, c_n, m.backward(dy, dh, dc), *m.grads.values()]
        runs.append(outs)
    for a, b in zip(*runs):
        assert_same_bits(a, b)
    # Successive forwards draw different seeds, hence different masks.
    assert not np.array_equal(runs[0][0], runs[0][4 + len(m.grads)])


def test_layer_seeds_differ_and_forward_seed_overrides():
    x = np.random.default_rng(0).standard_normal((T, B, I))
    a = LSTM(I, H, 2, dtype=np.float64, seed=1, **RATES)
    b = LSTM(I, H, 2, dtype=np.float64, seed=2, **RATES)
    b.load_state_dict(a.state_dict())  # the same weights, another generator
    assert not np.array_equal(a(x)[0], b(x)[0])
    assert_same_bits(a(x, seed=77)[0], b(x, seed=77)[0])
    assert not np.array_equal(a(x, seed=77)[0], a(x, seed=78)[0])
    # A given seed leaves the generator alone.
    c = LSTM(I, H, 2, dtype=np.float64, seed=1, **RATES)
    c(x, seed=5)
    d = LSTM(I, H, 2, dtype=np.float64, seed=1, **RATES)
    assert_same_bits(c(x)[0], d(x)[0])


def test_the_seed_keys_every_layer_and_direction(monkeypatch):
    """One seed for the pass; the layer index and the direction key the masks. The
    layer run on the reference (its ``_F`` swapped) shows the masks it asked for."""
    m = LSTM(H, H, 2, bidirectional=True, recurrent_dropout=0.5, weight_drop=0.5,
             dtype=np.float64, seed=0)  # fmt: skip
    x = np.random.default_rng(0).standard_normal((T, B, H))
    y, _ = m(x, seed=3)
    monkeypatch.setattr(layer_module, "_F", ref)
    y_ref, _ = m(x, seed=3)
    assert_close(y, y_ref, np.float64, what="y")
    for k in range(2):
        for d in range(2):
            drawn = m._tape.caches[k][d].masks
            args = (3, masks.WEIGHT_DROP, k, d, (4 * H, H), 0.5, np.float64)
            assert_same_bits(drawn.w_hh_keep, masks.scaled_keep(*args))
            args = (3, masks.RECURRENT_DROPOUT, k, d, (B, H), 0.5, np.float64)
            assert_same_bits(drawn.h_keep, masks.scaled_keep(*args))


@pytest.mark.parametrize(
    "layers, options, training, draws",
    [
        (2, RATES, True, True),
        (1, {"dropout": 0.3}, True, False),  # dropout acts between layers only
        (2, {"dropout": 0.3}, True, True),
        (1, {"zoneout": (0.0, 0.2)}, True, True),
        (1, {"recurrent_dropout": 0.1}, True, True),
        (2, {}, True, False),
        (2, RATES, False, False),
    ],
    ids=[
        "all",
        "dropout-1-layer",
        "dropout-2-layers",
        "zoneout-c",
        "recurrent",
        "no-rate",
        "eval",
    ],  # fmt: skip
)
@pytest.mark.filterwarnings("ignore:dropout option adds dropout")  # one layer: PyTorch's warning
def test_mask_seed_is_the_seed_forward_uses(layers, options, training, draws):
    """``mask_seed()`` answers for the next forward: None when it draws no masks,
    else the seed it runs with (a fresh one from the generator, or the given one,
    which leaves the generator alone)."""
    a = LSTM(I, H, layers, dtype=np.float64, seed=4, **options).train(training)
    b = LSTM(I, H, layers, dtype=np.float64, seed=4, **options).train(training)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    assert a.mask_seed(9) == (9 if draws else None)
    assert a.mask_seed(np.uint64(2**64 - 1)) == (2**64 - 1 if draws else None)
    seed = a.mask_seed()
    assert (seed is not None) == draws
    if draws:
        assert isinstance(seed, int) and 0 <= seed < 2**64
        # b's forward draws the same seed from the same generator state ...
        y, _ = b(x)
        assert b._tape.seed == seed
        assert_same_bits(y, a(x, seed=seed)[0])
        # ... and both generators moved on the same way.
        assert a.mask_seed() == b.mask_seed() != seed
    else:
        # Nothing drawn: the next forwards are still twins.
        assert_same_bits(a(x)[0], b(x)[0])


@pytest.mark.parametrize("training", [True, False])
def test_bad_mask_seed(training):
    m = LSTM(I, H, 2, seed=0, **RATES).train(training)
    twin = LSTM(I, H, 2, seed=0, **RATES).train(training)
    for seed, error in ((-1, ValueError), (2**64, ValueError), (1.5, TypeError)):
        with pytest.raises(error, match="seed must be an integer"):
            m.mask_seed(seed)
    assert m.mask_seed() == twin.mask_seed()  # a refused seed moves nothing


# ---------------------------------------------------------------------------
# Pickling, state dicts, repr, step, export, Keras


def test_pickle_keeps_the_options_mode_and_generator():
    m = LSTM(I, H, 2, bidirectional=True, seed=4, **RATES)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    m(x)
    copy = pickle.loads(pickle.dumps(m))
    for option, value in RATES.items():
        assert getattr(copy, option) == value
    assert copy.training
    assert repr(copy) == repr(m)
    # The copy continues the original's stream of seeds.
    assert_same_bits(copy(x)[0], m(x)[0])
    m.eval()
    assert not pickle.loads(pickle.dumps(m)).training


def test_old_pickles_load_without_the_options():
    m = LSTM(I, H, 2, seed=4)
    state = m.__getstate__()
    for name in ("dropout", "recurrent_dropout", "weight_drop", "training", "_generator"):
        del state[name]
    old = LSTM.__new__(LSTM)
    old.__setstate__(state)
    assert (old.dropout, old.recurrent_dropout, old.weight_drop) == (0.0, 0.0, 0.0)
    assert old.training
    x = np.ones((T, B, I), np.float32)
    assert_same_bits(old(x)[0], m(x)[0])
    assert repr(old) == "LSTM(3, 5, num_layers=2)"


def test_state_dict_and_parameters_do_not_change():
    plain = LSTM(I, H, 2, bidirectional=True, proj_size=2, seed=6)
    m = LSTM(I, H, 2, bidirectional=True, proj_size=2, seed=6, **RATES)
    assert list(m.state_dict()) == list(plain.state_dict())
    for name, value in plain.state_dict().items():
        assert_same_bits(m.state_dict()[name], value, name)
    torch = pytest.importorskip("torch")
    twin = torch.nn.LSTM(I, H, 2, bidirectional=True, proj_size=2, dropout=0.3)
    m.load_state_dict(twin.state_dict())


def test_repr():
    assert repr(LSTM(3, 4, 2, dropout=0.5)) == "LSTM(3, 4, num_layers=2, dropout=0.5)"
    assert (
        repr(LSTM(3, 4, recurrent_dropout=0.25, weight_drop=0.1))
        == "LSTM(3, 4, recurrent_dropout=0.25, weight_drop=0.1)"
    )


@each_dtype
def test_step_is_inference_like(dtype):
    m = LSTM(I, H, 2, proj_size=2, dtype=dtype, seed=3, **RATES)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(dtype)
    assert m.training
    state = None
    ys = []
    for t in range(T):
        y_t, state = m.step(x[t], state)
        ys.append(y_t)
    y, (h_n, c_n) = m.eval()(x)
    assert_same_bits(np.stack(ys), y)
    assert_same_bits(state[0], h_n)
    assert_same_bits(state[1], c_n)


def test_export_is_the_eval_layer(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    m = LSTM(I, H, 2, bidirectional=True, seed=1, **RATES)
    path = tmp_path / "reg.onnx"
    m.export_onnx(path)
    assert m.training  # exporting does not change the mode
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})
    y, (h_n, c_n) = m.eval()(x)
    for ours, theirs in zip(got, (y, h_n, c_n)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def _keras_config(**extra):
    rng = np.random.default_rng(0)
    weights = [
        rng.standard_normal((I, 4 * H)).astype(np.float32),
        rng.standard_normal((H, 4 * H)).astype(np.float32),
        rng.standard_normal(4 * H).astype(np.float32),
    ]
    return {"units": H, **extra}, weights


def test_from_keras_maps_recurrent_dropout():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = LSTM.from_keras(_keras_config(recurrent_dropout=0.25, dropout=0.0))
    assert m.recurrent_dropout == 0.25 and m.dropout == 0.0 and m.weight_drop == 0.0
    plain = LSTM.from_keras(_keras_config())
    assert plain.recurrent_dropout == 0.0
    x = np.ones((B, T, I), np.float32)
    assert_same_bits(m.eval()(x)[0], plain(x)[0])


def test_from_keras_warns_about_input_dropout():
    with pytest.warns(UserWarning, match="dropout=0.2 .*on the inputs"):
        m = LSTM.from_keras(_keras_config(dropout=0.2, recurrent_dropout=0.1))
    assert m.recurrent_dropout == 0.1 and m.dropout == 0.0


def test_from_keras_bad_rates():
    with pytest.raises(ValueError, match="recurrent_dropout"):
        LSTM.from_keras(_keras_config(recurrent_dropout=1.0))
    with pytest.raises(ValueError, match="dropout"):
        LSTM.from_keras(_keras_config(dropout=-0.5))


def test_from_keras_layer():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    if os.environ.get("KERAS_BACKEND") != "torch":
        pytest.skip("the Keras tests run with KERAS_BACKEND=torch")
    keras = pytest.importorskip("keras")
    k = keras.layers.LSTM(H, recurrent_dropout=0.3, return_sequences=True)
    k.build((None, T, I))
    assert LSTM.from_keras(k).recurrent_dropout == pytest.approx(0.3)
    both = keras.layers.Bidirectional(
        keras.layers.LSTM(H, dropout=0.5, recurrent_dropout=0.2, return_sequences=True)
    )
    both.build((None, T, I))
    with pytest.warns(UserWarning, match="dropout=0.5"):
        m = LSTM.from_keras(both)
    assert m.bidirectional and m.recurrent_dropout == pytest.approx(0.2)
    x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
    want = both(x).detach().cpu().numpy()  # Keras's inference: no masks
    np.testing.assert_allclose(m.eval()(x)[0], want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Bad arguments: the reference's rules and messages


@pytest.mark.parametrize("option", ["dropout", "recurrent_dropout", "weight_drop"])
@pytest.mark.parametrize(
    "value, error, message",
    [
        (1.0, ValueError, r"must be in \[0, 1\), got 1.0"),
        (-0.1, ValueError, r"must be in \[0, 1\), got -0.1"),
        (float("nan"), ValueError, "must be a number"),
        (True, TypeError, "must be a real number"),
        ("0.1", TypeError, "must be a real number"),
        (None, TypeError, "must be a real number"),
    ],
    ids=["one", "negative", "nan", "bool", "string", "none"],
)
def test_bad_rates(option, value, error, message):
    with pytest.raises(error, match=f"^{option} {message}"):
        LSTM(I, H, 2, **{option: value})
    # The reference says the same about the functional options.
    if option != "dropout":
        with pytest.raises(error, match=f"^{option} {message}"):
            ref.forward(np.zeros((1, 1, I)), np.zeros((4 * H, I)), np.zeros((4 * H, H)),
                        seed=0, **{option: value})  # fmt: skip


@pytest.mark.parametrize(
    "seed, error, message",
    [
        (-1, ValueError, r"seed must be an integer in \[0, 2\*\*64\), got -1"),
        (2**64, ValueError, r"seed must be an integer in \[0, 2\*\*64\)"),
        (1.5, TypeError, "seed must be an integer"),
        ("3", TypeError, "seed must be an integer"),
        (True, TypeError, "seed must be an integer"),
    ],
    ids=["negative", "too-big", "float", "string", "bool"],
)
@pytest.mark.parametrize("training", [True, False])
def test_bad_forward_seed(seed, error, message, training):
    m = LSTM(I, H, 2, seed=0, **RATES).train(training)
    x = np.ones((T, B, I))
    m(x)
    with pytest.raises(error, match=message):
        m(x, seed=seed)
    with pytest.raises(RuntimeError):  # a failed call leaves no tape
        m.backward(None)


def test_forward_seed_bounds_accepted():
    m = LSTM(I, H, 2, seed=0, **RATES)
    x = np.ones((T, B, I))
    for seed in (0, 2**64 - 1, np.uint64(2**64 - 1), np.int8(3)):
        y, _ = m(x, seed=seed)
        assert m._tape.seed == int(seed)
        assert np.all(np.isfinite(y))


def test_bad_mode():
    m = LSTM(I, H)
    for mode in ("yes", None, 2):
        with pytest.raises(TypeError, match="mode must be True or False"):
            m.train(mode)
    assert m.training


def test_failed_forward_leaves_the_generator():
    m = LSTM(I, H, 2, seed=1, **RATES)
    twin = LSTM(I, H, 2, seed=1, **RATES)
    with pytest.raises(ValueError, match="input_size"):
        m(np.ones((T, B, I + 1)))
    x = np.ones((T, B, I))
    assert_same_bits(m(x)[0], twin(x)[0])


def test_functional_and_layer_agree_for_one_layer():
    """One layer and direction: the layer's pass is lstm_fast.forward with its
    weights, seed and layer=0, bit for bit."""
    m = LSTM(I, H, recurrent_dropout=0.3, weight_drop=0.2, dtype=np.float64, seed=2)
    x = np.random.default_rng(1).standard_normal((T, B, I))
    y, (h_n, c_n) = m(x, seed=99)
    out = lstm_fast.forward(x, *m.weights(0), recurrent_dropout=0.3, weight_drop=0.2,
                            seed=99, layer=0)  # fmt: skip
    assert_same_bits(y, out.y)
    assert_same_bits(h_n[0], out.h_n)


# ---------------------------------------------------------------------------
# Zoneout and the LayerNorm LSTM (docs/variants.md), on the engine and on the
# reference swapped in as the layer's engine.


@pytest.fixture(params=["engine", "reference"])
def engine(request, monkeypatch):
    """Which ``_F`` the layer runs on: the engine or the NumPy reference."""
    if request.param == "reference":
        monkeypatch.setattr(layer_module, "_F", ref)
    return request.param


def _perturb_layer_norm(m: LSTM, seed: int = 0) -> None:
    """Gains and biases away from 1 and 0, so that their gradients test something."""
    rng = np.random.default_rng(seed)
    for name, p in m.parameters.items():
        if "_ln_" in name:
            p += rng.uniform(-0.5, 0.5, p.shape).astype(p.dtype)


ZONEOUT_CONFIGS = [
    # num_layers, bidirectional, batch_first, proj_size, lengths, options
    (1, False, False, 0, False, {"zoneout": 0.3}),
    (1, True, True, 0, True, {"zoneout": (0.4, 0.1)}),
    (2, False, False, 2, True, {"zoneout": (0.0, 0.5), "dropout": 0.3}),
    (2, True, False, 0, False, {"zoneout": 0.2, **RATES}),
    (3, True, True, 3, True, {"zoneout": (0.25, 0.35), "weight_drop": 0.3}),
]


@each_dtype
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("config", ZONEOUT_CONFIGS, ids=_config_id)
def test_zoneout_matches_the_reference_loop(engine, config, training, dtype):
    layers, bidi, batch_first, proj, lengths, options = config
    m = LSTM(
        I, H, layers, bidirectional=bidi, batch_first=batch_first, proj_size=proj,
        dtype=dtype, seed=3, **options,
    ).train(training)  # fmt: skip
    _check_against_reference(m, dtype, lengths=lengths, seed=12345)


LAYER_NORM_CONFIGS = [
    (1, False, False, 0, False, {}),
    (1, True, True, 0, True, {}),
    (2, False, True, 2, True, {}),
    (2, True, False, 0, False, RATES),
    (3, False, False, 3, True, {"zoneout": (0.2, 0.3), "weight_drop": 0.25}),
    (2, True, True, 2, False, {"zoneout": 0.1, **RATES}),
]


@each_dtype
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("config", LAYER_NORM_CONFIGS, ids=_config_id)
def test_layer_norm_matches_the_reference_loop(engine, config, training, dtype):
    layers, bidi, batch_first, proj, lengths, options = config
    m = LSTM(
        I, H, layers, bidirectional=bidi, batch_first=batch_first, proj_size=proj,
        dtype=dtype, seed=3, layer_norm=True, **options,
    ).train(training)  # fmt: skip
    _perturb_layer_norm(m)
    _check_against_reference(m, dtype, lengths=lengths, seed=99)


def test_layer_norm_with_peepholes(engine):
    m = LSTM(I, H, 2, bidirectional=True, peepholes=True, layer_norm=True, dtype=np.float64,
             seed=1, recurrent_dropout=0.3)  # fmt: skip
    _perturb_layer_norm(m)
    _check_against_reference(m, np.float64, lengths=True, seed=4)


@pytest.mark.parametrize("proj", [0, 2])
def test_layer_norm_parameters(proj):
    m = LSTM(I, H, 2, bidirectional=True, proj_size=proj, peepholes=True, layer_norm=True,
             seed=5)  # fmt: skip
    plain = LSTM(I, H, 2, bidirectional=True, proj_size=proj, peepholes=True, seed=5)
    names = list(m.parameters)
    want = []
    for k in range(2):
        for suffix in (f"_l{k}", f"_l{k}_reverse"):
            want += [f"weight_ih{suffix}", f"weight_hh{suffix}", f"bias_ih{suffix}",
                     f"bias_hh{suffix}"] + ([f"weight_hr{suffix}"] if proj else [])  # fmt: skip
            want += [f"{w}_ln_{p}{suffix}" for p in ("ih", "hh", "c") for w in ("weight", "bias")]
    want += [n for n in plain.parameters if n.startswith("weight_p_")]
    assert names == want
    for name, value in plain.parameters.items():  # the same draws as without layer norm
        assert_same_bits(m.parameters[name], value, name)
    for name in names:
        if "_ln_" in name:
            width = H if "_ln_c" in name else 4 * H
            start = 1 if name.startswith("weight") else 0
            assert_same_bits(m.parameters[name], np.full(width, start, np.float32), name)
            assert m.grads[name].shape == (width,)
    assert list(m.state_dict()) == names
    assert not m.is_plain and plain.is_plain is False  # peepholes: not plain either
    assert LSTM(I, H, layer_norm=True).is_plain is False
    with pytest.raises(ValueError, match="missing keys .*weight_ln_ih_l0"):
        m.load_state_dict(plain.state_dict())
    m.load_state_dict({**plain.state_dict(), **{n: m.parameters[n] * 2 for n in names
                                                 if "_ln_" in n}})  # fmt: skip
    assert m.parameters["weight_ln_c_l1_reverse"][0] == 2


def test_layer_norm_training_loop_fills_every_gradient(engine):
    m = LSTM(I, H, 2, layer_norm=True, dtype=np.float64, seed=2)
    _perturb_layer_norm(m)
    x, state, lens, dy, dh, dc = _problem(m, np.float64, True, True)
    m(x, state, lengths=lens)
    m.backward(dy, dh, dc)
    assert set(m.grads) == set(m.parameters)
    for name, g in m.grads.items():
        assert g.shape == m.parameters[name].shape and np.any(g != 0), name


@each_dtype
@pytest.mark.parametrize(
    "options", [{"zoneout": 0.3}, {"zoneout": (0.2, 0.4), **RATES}, {"layer_norm": True},
                {"layer_norm": True, "zoneout": (0.5, 0.0)}],
    ids=["zoneout", "zoneout-pair+rates", "layer-norm", "layer-norm+zoneout"],
)  # fmt: skip
def test_step_is_the_eval_forward(engine, options, dtype):
    m = LSTM(I, H, 2, proj_size=2, dtype=dtype, seed=3, **options)
    if m.layer_norm:
        _perturb_layer_norm(m)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(dtype)
    state = None
    ys = []
    for t in range(T):
        y_t, state = m.step(x[t], state)
        ys.append(y_t)
    y, (h_n, c_n) = m.eval()(x, need_cache=False)
    assert_close(np.stack(ys), y, dtype, what="y")
    assert_close(state[1], c_n, dtype, what="c_n")


def test_zoneout_eval_is_the_expectation_not_the_plain_layer(engine):
    m = LSTM(I, H, 2, zoneout=0.5, dtype=np.float64, seed=1).eval()
    plain = LSTM(I, H, 2, dtype=np.float64, seed=1)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    assert not np.allclose(m(x)[0], plain(x)[0])
    # The generator is not used at inference.
    twin = LSTM(I, H, 2, zoneout=0.5, dtype=np.float64, seed=1)
    m.train()
    assert_same_bits(m(x)[0], twin(x)[0])


def test_zoneout_and_layer_norm_options():
    assert LSTM(I, H, zoneout=0.25).zoneout == 0.25
    assert LSTM(I, H, zoneout=(0.25, 0.5)).zoneout == (0.25, 0.5)
    assert LSTM(I, H, zoneout=[0.0, 0.0]).zoneout == 0.0
    assert repr(LSTM(I, H, zoneout=(0.25, 0.0))) == "LSTM(3, 5, zoneout=(0.25, 0.0))"
    assert repr(LSTM(I, H, layer_norm=True, zoneout=0.1)) == (
        "LSTM(3, 5, zoneout=0.1, layer_norm=True)"
    )
    m = LSTM(I, H, 2, bidirectional=True, layer_norm=True, zoneout=(0.1, 0.2), seed=0)
    copy = pickle.loads(pickle.dumps(m))
    assert copy.zoneout == (0.1, 0.2) and copy.layer_norm
    assert list(copy.parameters) == list(m.parameters)


@pytest.mark.parametrize(
    "value, error, message",
    [
        (1.0, ValueError, r"^zoneout must be in \[0, 1\), got 1.0"),
        ((0.1, 1.5), ValueError, r"^zoneout\[1\] must be in \[0, 1\), got 1.5"),
        ((float("nan"), 0.1), ValueError, r"^zoneout\[0\] must be a number"),
        ((0.1,), ValueError, "^zoneout must be a probability or a pair"),
        ("0.1", TypeError, "^zoneout must be a real number"),
        (None, TypeError, "^zoneout must be a real number"),
    ],
    ids=["one", "pair-c", "pair-nan", "one-of-pair", "string", "none"],
)
def test_bad_zoneout(value, error, message):
    with pytest.raises(error, match=message):
        LSTM(I, H, zoneout=value)


def test_bad_layer_norm():
    for value in ("yes", None, 2):
        with pytest.raises(TypeError, match="layer_norm must be True or False"):
            LSTM(I, H, layer_norm=value)


@pytest.mark.parametrize("options", [{"zoneout": 0.2}, {"zoneout": (0.0, 0.1)},
                                     {"layer_norm": True}])  # fmt: skip
def test_export_refuses_what_it_cannot_write(tmp_path, options):
    pytest.importorskip("onnx")
    m = LSTM(I, H, **options).eval()
    with pytest.raises(NotImplementedError, match="cannot be exported"):
        m.export_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    from lstm_fast import export

    with pytest.raises(NotImplementedError, match="cannot be exported"):
        export.export_onnx(m, tmp_path / "m.onnx")  # the module's entry point too
    with pytest.raises(NotImplementedError, match="cannot be exported"):
        export.to_onnx_model(m)
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------------------
# layer_norm_eps: the functional API's option, on the layer


@each_dtype
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_layer_norm_eps_matches_the_reference_loop(engine, training, dtype):
    # The loop passes the layer's eps to every reference.forward; backward takes it
    # from the caches.
    m = LSTM(
        I, H, 2, bidirectional=True, proj_size=2, dtype=dtype, seed=3, layer_norm=True,
        layer_norm_eps=0.5, zoneout=(0.2, 0.1), **RATES,
    ).train(training)  # fmt: skip
    _perturb_layer_norm(m)
    _check_against_reference(m, dtype, lengths=True, seed=11)


def test_layer_norm_eps_changes_forward_backward_and_step(engine):
    m = LSTM(I, H, 2, proj_size=2, layer_norm=True, layer_norm_eps=0.5, dtype=np.float64, seed=3)
    _perturb_layer_norm(m)
    default = LSTM(I, H, 2, proj_size=2, layer_norm=True, dtype=np.float64, seed=3)
    default.load_state_dict(m.state_dict())  # the same parameters, eps 1e-5
    x = np.random.default_rng(0).standard_normal((T, B, I))
    y, (h_n, c_n) = m(x)
    y_default, _ = default(x)
    assert not np.allclose(y, y_default, rtol=1e-3, atol=1e-3)
    # As the functional reference says, layer 0 alone: its eps, not the default.
    out = ref.forward(x, *m.weights(0), **_variant(m, 0, 0))
    assert_close(h_n[0], out.h_n, np.float64, what="h_n[0]")
    dy = np.ones_like(y)
    m.backward(dy)
    default.backward(dy)
    assert not np.allclose(m.grads["weight_ln_ih_l0"], default.grads["weight_ln_ih_l0"])
    # step computes as the eval forward: with the layer's eps too.
    state, ys = None, []
    for t in range(T):
        y_t, state = m.step(x[t], state)
        ys.append(y_t)
    assert_close(np.stack(ys), m.eval()(x, need_cache=False)[0], np.float64, what="step")


def test_layer_norm_eps_repr_pickle_and_old_pickles():
    m = LSTM(I, H, 2, layer_norm=True, layer_norm_eps=1e-3, seed=0)
    assert m.layer_norm_eps == 1e-3 and isinstance(m.layer_norm_eps, float)
    assert repr(m) == "LSTM(3, 5, num_layers=2, layer_norm=True, layer_norm_eps=0.001)"
    assert repr(LSTM(I, H, layer_norm=True)) == "LSTM(3, 5, layer_norm=True)"
    assert LSTM(I, H, layer_norm=True).layer_norm_eps == 1e-5
    assert LSTM(I, H, layer_norm=True, layer_norm_eps=np.float32(0.25)).layer_norm_eps == 0.25
    # The default given explicitly asks for nothing: accepted without layer norm.
    assert repr(LSTM(I, H, layer_norm_eps=1e-5)) == "LSTM(3, 5)"
    _perturb_layer_norm(m)
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    copy = pickle.loads(pickle.dumps(m))
    assert copy.layer_norm_eps == 1e-3 and repr(copy) == repr(m)
    assert_same_bits(copy.eval()(x)[0], m.eval()(x)[0])
    # A pickle from before the option computes with the eps it always had.
    state = m.__getstate__()
    del state["layer_norm_eps"]
    old = LSTM.__new__(LSTM)
    old.__setstate__(state)
    assert old.layer_norm_eps == 1e-5
    assert repr(old) == "LSTM(3, 5, num_layers=2, layer_norm=True)"
    twin = LSTM(I, H, 2, layer_norm=True, seed=0)
    twin.load_state_dict(m.state_dict())
    assert_same_bits(old.eval()(x)[0], twin.eval()(x)[0])


@pytest.mark.parametrize(
    "value, error, message",
    [
        (0.0, ValueError, r"^layer_norm_eps must be a finite number > 0, got 0.0"),
        (-1e-5, ValueError, r"^layer_norm_eps must be a finite number > 0, got -1e-05"),
        (float("inf"), ValueError, r"^layer_norm_eps must be a finite number > 0, got inf"),
        (float("nan"), ValueError, r"^layer_norm_eps must be a number, got nan"),
        ("1e-5", TypeError, r"^layer_norm_eps must be a real number, got str"),
        (None, TypeError, r"^layer_norm_eps must be a real number, got NoneType"),
        (True, TypeError, r"^layer_norm_eps must be a real number, got bool"),
    ],
    ids=["zero", "negative", "inf", "nan", "string", "none", "bool"],
)
def test_bad_layer_norm_eps(value, error, message):
    with pytest.raises(error, match=message):
        LSTM(I, H, layer_norm=True, layer_norm_eps=value)
    with pytest.raises(error, match=message):  # the value first, with layer norm or not
        LSTM(I, H, layer_norm_eps=value)
    # The functional API's rule, word for word.
    x, w_ih, w_hh = np.ones((2, 1, I)), np.ones((4 * H, I)), np.ones((4 * H, H))
    with pytest.raises(error, match=message):
        lstm_fast.forward(x, w_ih, w_hh, layer_norm=True, layer_norm_eps=value)


def test_layer_norm_eps_needs_layer_norm():
    message = r"^layer_norm_eps=0.001 is an option of the LayerNorm LSTM: pass layer_norm=True"
    with pytest.raises(ValueError, match=message):
        LSTM(I, H, layer_norm_eps=1e-3)

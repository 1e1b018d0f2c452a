"""lstm_fast.distributed on a LocalCluster the tests start: 2 worker processes x 1
thread on 127.0.0.1, no dashboard (and a 1-worker cluster for the comparisons).

Scoring must equal the layer's forward bit for bit; a step's gradient must equal
the single-process one written out here with the layer's forward and backward;
training must be independent of the number of workers, survive a killed worker,
fail cleanly without workers, and resume from a checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import pickle
import signal
import tempfile
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import lstm_fast  # noqa: E402
from lstm_fast import LSTM  # noqa: E402
from lstm_fast.distributed import (  # noqa: E402
    CrossEntropyLoss,
    DataParallelTrainer,
    Linear,
    MSELoss,
    NoWorkersError,
    predict,
    shard_seed,
)
from lstm_fast.optim import SGD, Adam, clip_grad_norm  # noqa: E402

pytestmark = pytest.mark.timeout(120)

# The parent's engine setting, which a worker inherits through its environment
# and must not use: every worker has 1 thread.
PARENT_THREADS = "2"


@contextlib.contextmanager
def _cluster(n_workers: int):
    """A LocalCluster and its client, started (and, for a worker the nanny restarts,
    restarted) with the parent's LSTM_FAST_NUM_THREADS = PARENT_THREADS."""
    previous = os.environ.get("LSTM_FAST_NUM_THREADS")
    os.environ["LSTM_FAST_NUM_THREADS"] = PARENT_THREADS
    try:
        # The workers' scratch space in a directory of the test's own, removed after
        # (dask's default, /tmp/dask-scratch-space, outlives the run).
        scratch = tempfile.TemporaryDirectory(prefix="lstm_fast_dask_")
        cluster = distributed.LocalCluster(
            local_directory=scratch.name,
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # The scheduler serves its health and metrics routes over HTTP even
            # without a dashboard, by default on port 8787 of every interface.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        )
        with scratch, cluster, distributed.Client(cluster) as client:
            yield cluster, client
    finally:
        if previous is None:
            del os.environ["LSTM_FAST_NUM_THREADS"]
        else:
            os.environ["LSTM_FAST_NUM_THREADS"] = previous


@pytest.fixture(scope="module")
def client():
    with _cluster(2) as (_, client):
        yield client


@pytest.fixture(scope="module")
def client1():
    with _cluster(1) as (_, client):
        yield client


def _chunked(array, chunks, axis):
    spec = [-1] * array.ndim
    spec[axis] = chunks
    return da.from_array(array, chunks=tuple(spec))


def _rows(array, rows, axis):
    return np.take(array, rows, axis=axis)


# ---------------------------------------------------------------------------
# Scoring


@pytest.mark.parametrize(
    "dtype, batch_first, num_layers, bidirectional, with_lengths",
    [
        (np.float32, False, 1, False, False),
        (np.float32, True, 1, False, True),
        (np.float32, False, 2, True, True),
        (np.float64, True, 2, True, True),
        (np.float64, False, 3, False, True),
    ],
)
def test_predict_equals_forward_bit_for_bit(
    client, dtype, batch_first, num_layers, bidirectional, with_lengths
):
    rng = np.random.default_rng(num_layers)
    batch, steps = 29, 11
    layer = LSTM(
        5, 12, num_layers, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype, seed=1
    )
    shape = (batch, steps, 5) if batch_first else (steps, batch, 5)
    x = rng.standard_normal(shape).astype(dtype)
    lengths = rng.integers(0, steps + 1, batch) if with_lengths else None
    axis = 0 if batch_first else 1
    chunks = (4, 13, 1, 11)  # uneven, and one chunk of a single row

    y, (h_n, c_n) = predict(
        layer,
        _chunked(x, chunks, axis),
        None if lengths is None else _chunked(lengths, chunks, 0),
        return_state=True,
    )
    assert y.chunks[axis] == chunks and h_n.chunks[1] == chunks
    y, h_n, c_n = client.compute([y, h_n, c_n], sync=True)
    y_ref, (h_ref, c_ref) = layer(x, lengths=lengths, need_cache=False)
    assert y.dtype == y_ref.dtype
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(h_n, h_ref)
    np.testing.assert_array_equal(c_n, c_ref)
    # Without the states; NumPy lengths are aligned to x's chunks.
    alone = predict(layer, _chunked(x, chunks, axis), lengths).compute()
    np.testing.assert_array_equal(alone, y_ref)


needs_projection = pytest.mark.skipif(
    "w_hr" not in inspect.signature(lstm_fast.forward).parameters,
    reason="this build's engine has no projection (w_hr)",
)


@needs_projection
@pytest.mark.parametrize("batch_first, bidirectional", [(False, True), (True, False)])
def test_projection_layer_predicts_and_trains(client, batch_first, bidirectional):
    # y and h are proj_size wide, c hidden_size: the shapes predict declares and
    # the read-out's features follow the layer's state_size.
    rng = np.random.default_rng(3)
    batch, steps = 17, 7
    layer = LSTM(
        4, 9, 2, proj_size=3, bidirectional=bidirectional, batch_first=batch_first,
        dtype=np.float64, seed=5,
    )  # fmt: skip
    axis = 0 if batch_first else 1
    x = rng.standard_normal((batch, steps, 4) if batch_first else (steps, batch, 4))
    lengths = rng.integers(1, steps + 1, batch)
    chunks = (6, 11)
    y, (h_n, c_n) = predict(
        layer, _chunked(x, chunks, axis), _chunked(lengths, chunks, 0), return_state=True
    )
    width = layer.num_directions * 3
    assert y.shape[-1] == width and h_n.shape[-1] == 3 and c_n.shape[-1] == 9
    y, h_n, c_n = client.compute([y, h_n, c_n], sync=True)
    y_ref, (h_ref, c_ref) = layer(x, lengths=lengths, need_cache=False)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(h_n, h_ref)
    np.testing.assert_array_equal(c_n, c_ref)

    loss = MSELoss("last", Linear(width, 2, dtype=np.float64, seed=6))
    target = rng.standard_normal((batch, 2))
    value, grads = _trainer(client, layer, loss).gradient(
        _chunked(x, chunks, axis), target, _chunked(lengths, chunks, 0)
    )
    expected_value, expected = _reference(layer, loss, x, target, lengths)
    assert any(name.startswith("weight_hr") for name in grads)
    assert value == pytest.approx(expected_value, rel=1e-12)
    for name, g in expected.items():
        np.testing.assert_allclose(grads[name], g, rtol=0, atol=1e-12 * np.max(np.abs(g)))


def test_predict_ships_the_weights_once_per_worker(client):
    layer = LSTM(4, 32, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 40, 4)).astype(np.float32)
    y = predict(layer, da.from_array(x, chunks=(6, 5, 4)))  # 8 chunks on 2 workers
    weight_keys = [k for k in dict(y.__dask_graph__()) if "lstm-fast-weights" in str(k)]
    assert len(weight_keys) == 1
    client.run(lambda dask_worker: dask_worker.transfer_incoming_log.clear())
    expected = layer(x, need_cache=False)[0]
    # The weights are copied when predict is called: later changes do not count.
    layer.parameters["weight_hh_l0"][...] = 0
    np.testing.assert_array_equal(client.compute(y, sync=True), expected)
    logs = client.run(
        lambda dask_worker: [list(entry["keys"]) for entry in dask_worker.transfer_incoming_log]
    )
    for keys in logs.values():
        fetched = [k for batch in keys for k in batch if k == weight_keys[0]]
        assert len(fetched) <= 1


def test_predict_bad_input(client):
    layer = LSTM(3, 4, seed=0)
    x = da.zeros((5, 6, 3), chunks=(5, 3, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="layer must be an lstm_fast.LSTM"):
        predict("lstm", x)
    with pytest.raises(TypeError, match="x must be a Dask array"):
        predict(layer, np.zeros((5, 6, 3)))
    with pytest.raises(ValueError, match=r"x must have shape .* \(3 dimensions\)"):
        predict(layer, da.zeros((5, 3)))
    with pytest.raises(ValueError, match="input_size = 3"):
        predict(layer, da.zeros((5, 6, 4)))
    with pytest.raises(TypeError, match="x must be a real numeric array"):
        predict(layer, da.zeros((5, 6, 3), dtype=complex))
    with pytest.raises(TypeError, match="lengths must be integers"):
        predict(layer, x, np.full(6, 2.0))
    with pytest.raises(ValueError, match=r"lengths must have shape \(batch,\)"):
        predict(layer, x, np.full(5, 2))
    with pytest.raises(TypeError, match="return_state must be True or False"):
        predict(layer, x, return_state="yes")
    with pytest.raises(ValueError, match="known chunk sizes"):
        predict(layer, x[x[:, 0, 0] > 0])
    # Values are checked per chunk, when computed, with the engine's message.
    with pytest.raises(ValueError, match="lengths must lie in 0..seq_len = 0..5"):
        client.compute(predict(layer, x, np.array([1, 2, 3, 9, 1, 1])), sync=True)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        predict(layer, x, seed=-1)
    with pytest.raises(TypeError, match="seed must be an integer"):
        predict(layer, x, seed=1.5)


@pytest.mark.parametrize("batch_first", [False, True])
def test_predict_in_training_mode_draws_each_chunks_masks_from_its_seed(
    client, client1, batch_first
):
    """With masks, chunk k runs forward(chunk, seed=shard_seed(seed, 0, 0, k)): the
    same bits on 1 and 2 workers, and again for the same seed or generator state."""
    rng = np.random.default_rng(5)
    batch, steps = 9, 7
    layer = LSTM(4, 6, 2, batch_first=batch_first, seed=3, **MASKED)
    shape = (batch, steps, 4) if batch_first else (steps, batch, 4)
    x = rng.standard_normal(shape).astype(np.float32)
    lengths = rng.integers(0, steps + 1, batch)
    axis = 0 if batch_first else 1
    chunks = (4, 1, 4)
    starts = np.cumsum((0,) + chunks)

    def run(target, **kwargs):
        lazy = predict(layer, _chunked(x, chunks, axis), lengths, return_state=True, **kwargs)
        return target.compute([lazy[0], *lazy[1]], sync=True)

    two = run(client, seed=11)
    one = run(client1, seed=11)
    parts = [
        layer.forward(
            np.take(x, range(a, b), axis=axis),
            lengths=lengths[a:b],
            need_cache=False,
            seed=shard_seed(11, 0, 0, k),
        )
        for k, (a, b) in enumerate(zip(starts[:-1], starts[1:]))
    ]
    want = [
        np.concatenate([y for y, _ in parts], axis=axis),
        np.concatenate([h for _, (h, _) in parts], axis=1),
        np.concatenate([c for _, (_, c) in parts], axis=1),
    ]
    for got_two, got_one, expected in zip(two, one, want):
        np.testing.assert_array_equal(got_two, expected)
        np.testing.assert_array_equal(got_one, expected)
    # The masks are on: eval mode gives other outputs.
    layer.eval()
    assert not np.array_equal(run(client)[0], want[0])
    layer.train()
    # Without a seed, one is drawn from the layer's generator at the call: the
    # seed layer.mask_seed() gives, on one worker and on two.
    twin, twin1 = copy.deepcopy(layer), copy.deepcopy(layer)
    seed = copy.deepcopy(layer).mask_seed()
    drawn = run(client)
    np.testing.assert_array_equal(
        client.compute(predict(twin, _chunked(x, chunks, axis), lengths), sync=True), drawn[0]
    )
    drawn_one = client1.compute(predict(twin1, _chunked(x, chunks, axis), lengths), sync=True)
    np.testing.assert_array_equal(drawn_one, drawn[0])
    for got, expected in zip(run(client, seed=seed), drawn):
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------
# Gradients against one process


def _mask(layer, lengths, batch, steps):
    if lengths is None:
        valid = np.ones((batch, steps), bool)
    else:
        valid = np.arange(steps)[None, :] < lengths[:, None]
    return valid if layer.batch_first else valid.T


def _reference(layer, loss, x, target, lengths, seed=None):
    """The mean loss and its gradients on one process, from the layer's forward and
    backward on the whole batch, written out as in the README's training example
    (``seed``: the mask seed of the forward)."""
    layer = copy.deepcopy(layer)
    y, (h_n, _) = layer(x, lengths=lengths, seed=seed)
    directions, hidden = layer.num_directions, layer.state_size
    batch = h_n.shape[1]
    steps = y.shape[1] if layer.batch_first else y.shape[0]
    p = loss.parameters
    w = p.get("readout.weight")
    b = p.get("readout.bias")
    grads = {}
    dy = dh = None
    if loss.on == "last":
        features = np.concatenate([h_n[-directions + d] for d in range(directions)], axis=-1)
    else:
        features = y
    pred = features if w is None else features @ w.T + b
    if isinstance(loss, MSELoss):
        mask = _mask(layer, lengths, batch, steps)[..., None] if loss.on == "all" else 1
        err = (pred - target) * mask
        n = np.sum(np.broadcast_to(mask, err.shape))
        value = np.sum(err**2) / n
        dpred = 2 * err / n
    else:
        mask = _mask(layer, lengths, batch, steps) if loss.on == "all" else np.ones(batch, bool)
        shifted = pred - pred.max(axis=-1, keepdims=True)
        prob = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
        safe = np.where(mask, target, 0)
        picked = np.take_along_axis(prob, safe[..., None], -1)[..., 0]
        n = mask.sum()
        value = -np.sum(np.log(picked) * mask) / n
        onehot = np.eye(pred.shape[-1])[safe]
        dpred = (prob - onehot) * mask[..., None] / n
    if w is not None:
        flat_f = features.reshape(-1, features.shape[-1])
        flat_d = dpred.reshape(-1, dpred.shape[-1])
        grads["readout.weight"] = flat_d.T @ flat_f
        grads["readout.bias"] = flat_d.sum(axis=0)
        dfeatures = dpred @ w
    else:
        dfeatures = dpred
    if loss.on == "last":
        dh = np.zeros_like(h_n)
        for d in range(directions):
            dh[-directions + d] = dfeatures[:, d * hidden : (d + 1) * hidden]
    else:
        dy = dfeatures
    layer.backward(dy, dh)
    grads.update(layer.grads)
    return float(value), grads


def _problem(
    kind, dtype, batch_first=True, batch=24, steps=7, seed=0, init_seed=None, **layer_options
):
    """A layer, a loss, inputs, targets and lengths; ``init_seed`` draws other initial
    parameters for the same data; ``layer_options`` go to the layer."""
    rng = np.random.default_rng(seed)
    init = seed if init_seed is None else init_seed
    bidirectional = kind == "mse-last"
    layer = LSTM(
        3,
        6,
        2 if kind != "mse-all" else 1,
        bidirectional=bidirectional,
        batch_first=batch_first,
        dtype=dtype,
        seed=init,
        **layer_options,
    )
    features = layer.num_directions * layer.hidden_size
    lead = (batch, steps) if batch_first else (steps, batch)
    x = rng.standard_normal((batch, steps, 3) if batch_first else (steps, batch, 3)).astype(dtype)
    lengths = rng.integers(1, steps + 1, batch)
    if kind == "mse-last":
        loss = MSELoss("last", Linear(features, 2, dtype=dtype, seed=init + 1))
        target = rng.standard_normal((batch, 2)).astype(dtype)
    elif kind == "mse-all":
        loss = MSELoss("all")
        target = rng.standard_normal((*lead, features)).astype(dtype)
    else:
        loss = CrossEntropyLoss(Linear(features, 5, dtype=dtype, seed=init + 1))
        target = rng.integers(0, 5, lead)
    return layer, loss, x, target, lengths


def _trainer(client, layer, loss, lr=0.01, **kwargs):
    optimizer = Adam({**layer.parameters, **loss.parameters}, lr=lr)
    return DataParallelTrainer(layer, loss, optimizer, client, **kwargs)


@pytest.mark.parametrize("kind", ["mse-last", "mse-all", "ce-all"])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_one_step_gradient_equals_single_process(client, kind, dtype, rtol):
    batch_first = kind != "mse-all"
    layer, loss, x, target, lengths = _problem(kind, dtype, batch_first)
    axis = 0 if batch_first else 1
    trainer = _trainer(client, layer, loss)
    value, grads = trainer.gradient(
        _chunked(x, (5, 11, 8), axis), target, _chunked(lengths, (5, 11, 8), 0)
    )
    expected_value, expected = _reference(layer, loss, x, target, lengths)
    assert set(grads) == set(expected) == set(layer.parameters) | set(loss.parameters)
    assert value == pytest.approx(expected_value, rel=rtol)
    for name, g in expected.items():
        assert grads[name].dtype == np.dtype(dtype)
        scale = np.max(np.abs(g))
        assert scale > 0
        np.testing.assert_allclose(grads[name], g, rtol=0, atol=rtol * scale, err_msg=name)


def _reference_fit(layer, loss, optimizer_cls, x, target, lengths, epochs, batch_size, seed, clip):
    """fit's schedule on one process: each epoch's order from (seed, epoch), sorted rows."""
    params = {**layer.parameters, **loss.parameters}
    optimizer = optimizer_cls(params)
    batch = len(lengths)
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(batch)
        for start in range(0, batch, batch_size):
            rows = np.sort(order[start : start + batch_size])
            xb = _rows(x, rows, 0 if layer.batch_first else 1)
            tb = _rows(target, rows, loss.target_axis(layer))
            _, grads = _reference(layer, loss, xb, tb, lengths[rows])
            clip_grad_norm(grads, clip)
            optimizer.step(grads)


def test_twenty_adam_steps_equal_single_process(client):
    layer, loss, x, target, lengths = _problem("mse-last", np.float64)
    ref_layer, ref_loss = copy.deepcopy(layer), copy.deepcopy(loss)
    start = {k: p.copy() for k, p in {**layer.parameters, **loss.parameters}.items()}
    trainer = _trainer(client, layer, loss, clip_grad_norm=1.0)
    history = trainer.fit(
        _chunked(x, (9, 7, 8), 0),
        _chunked(target, (9, 7, 8), 0),
        lengths,
        epochs=5,
        batch_size=6,
        seed=3,
        progress=False,
    )
    assert len(history) == 20 and len(trainer.epoch_losses) == 5
    _reference_fit(
        ref_layer, ref_loss, lambda p: Adam(p, lr=0.01), x, target, lengths, 5, 6, 3, 1.0
    )
    trained = {**layer.parameters, **loss.parameters}
    for name, p in {**ref_layer.parameters, **ref_loss.parameters}.items():
        assert not np.array_equal(p, start[name]), name  # 20 steps moved every parameter
        np.testing.assert_allclose(trained[name], p, rtol=0, atol=1e-10 * np.max(np.abs(p)))


def _inputs(x, target, lengths):
    """The training problem's arrays in uneven chunks of rows (batch-first)."""
    chunks = (7, 9, 8)
    return _chunked(x, chunks, 0), _chunked(target, chunks, 0), _chunked(lengths, chunks, 0)


def _fit(client, callback=None, init_seed=None, trainer_options=None, layer_options=None, **kwargs):
    """A short character-model run (cross-entropy at every step): trainer, parameters."""
    layer, loss, x, target, lengths = _problem(
        "ce-all", np.float32, init_seed=init_seed, **(layer_options or {})
    )
    trainer = _trainer(client, layer, loss, **(trainer_options or {}))
    options = {"epochs": 2, "batch_size": 10, "seed": 1, "progress": False, **kwargs}
    trainer.fit(*_inputs(x, target, lengths), callback=callback, **options)
    return trainer, {**layer.parameters, **loss.parameters}


def _assert_same_parameters(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_one_and_two_workers_give_the_same_bits(client, client1):
    trainer, two = _fit(client)
    _, one = _fit(client1)
    _assert_same_parameters(one, two)
    # Training moved the parameters (the comparison is not between two copies of
    # the initial values).
    start = _problem("ce-all", np.float32)[0].parameters
    assert not np.array_equal(two["weight_hh_l0"], start["weight_hh_l0"])
    assert len(trainer.history) == 6


# Every mask the layer can draw: dropout between its two layers, zoneout of h and
# c, recurrent dropout and weight drop.
MASKED = {"dropout": 0.3, "zoneout": (0.2, 0.1), "recurrent_dropout": 0.2, "weight_drop": 0.25}


def test_masks_one_and_two_workers_give_the_same_bits(client, client1):
    # Each shard's masks come from (seed, epoch, step, chunk), not from a generator
    # its worker's tasks share, so the schedule changes no bit.
    trainer, two = _fit(client, layer_options=MASKED)
    _, one = _fit(client1, layer_options=MASKED)
    _assert_same_parameters(one, two)
    assert len(trainer.history) == 6 and np.isfinite(trainer.history).all()
    # The masks act: the run without them differs, and so does one with another
    # seed where the seed changes only the masks (shuffle=False).
    _, plain = _fit(client)
    assert not np.array_equal(plain["weight_hh_l0"], two["weight_hh_l0"])
    _, first = _fit(client, layer_options=MASKED, shuffle=False, seed=1)
    _, second = _fit(client, layer_options=MASKED, shuffle=False, seed=2)
    assert not np.array_equal(first["weight_hh_l0"], second["weight_hh_l0"])


def test_masked_gradient_is_the_sum_of_the_shards_passes(client):
    """gradient(seed=s) is the mean over every row of each chunk's forward and
    backward with the mask seed shard_seed(s, 0, 0, chunk): its masks are those of
    the documented seeds, chunk by chunk."""
    layer, loss, x, target, lengths = _problem("mse-last", np.float64, **MASKED)
    chunks = (5, 11, 8)
    bounds = np.cumsum((0, *chunks))
    value, grads = _trainer(client, layer, loss).gradient(
        _chunked(x, chunks, 0), target, _chunked(lengths, chunks, 0), seed=7
    )
    expected_value, expected = 0.0, {}
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        rows = slice(lo, hi)
        part_value, part = _reference(
            layer, loss, x[rows], target[rows], lengths[rows], seed=shard_seed(7, 0, 0, k)
        )
        # Means over the chunk's rows (MSE on the last state: F terms a row).
        weight = (hi - lo) / len(lengths)
        expected_value += part_value * weight
        for name, g in part.items():
            expected[name] = expected.get(name, 0) + g * weight
    assert value == pytest.approx(expected_value, rel=1e-12)
    for name, g in expected.items():
        np.testing.assert_allclose(grads[name], g, rtol=0, atol=1e-12 * np.max(np.abs(g)))
    # One seed for the whole batch would give other gradients: the chunks' seeds count.
    _, whole = _reference(layer, loss, x, target, lengths, seed=shard_seed(7, 0, 0, 0))
    assert not np.allclose(whole["weight_hh_l0"], grads["weight_hh_l0"])


def test_shard_seed():
    seeds = {
        shard_seed(s, e, t, b)
        for s in (0, 1, 2**64 - 1, 2**80)
        for e in range(3)
        for t in range(3)
        for b in range(3)
    }
    assert len(seeds) == 4 * 27
    assert all(0 <= s < 2**64 for s in seeds)
    assert shard_seed(3, 1, 2, 0) == shard_seed(3, 1, 2, 0)
    # Apart from the epochs' orders, drawn from SeedSequence([seed, epoch]).
    order = np.random.SeedSequence([3, 0]).generate_state(1, np.uint64)[0]
    assert shard_seed(3, 0, 0, 0) != int(order)
    with pytest.raises(ValueError, match="block must be a non-negative integer, got -1"):
        shard_seed(0, 0, 0, -1)
    with pytest.raises(TypeError, match="epoch"):
        shard_seed(0, 1.5, 0, 0)


def test_two_levels_of_the_reduction_tree(client, client1):
    # 11 shards: a first level of two additions (8 and 3 shards), then their sum.
    layer, loss, x, target, lengths = _problem("mse-last", np.float64, batch=30)
    chunks = (1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 7)
    data = (_chunked(x, chunks, 0), target, _chunked(lengths, chunks, 0))
    two = _trainer(client, layer, loss).gradient(*data)
    one = _trainer(client1, layer, loss).gradient(*data)
    assert two[0] == one[0]
    _assert_same_parameters(two[1], one[1])
    _, expected = _reference(layer, loss, x, target, lengths)
    for name, g in expected.items():
        np.testing.assert_allclose(two[1][name], g, rtol=0, atol=1e-12 * np.max(np.abs(g)))


def test_a_killed_worker_costs_a_recomputation_not_the_run(client):
    _, undisturbed = _fit(client, epochs=3)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed = []

    def kill(trainer, epoch, step):
        if not killed:  # during the next step, while its shards are in flight
            threading.Timer(0.01, os.kill, (victim, signal.SIGKILL)).start()
            killed.append((epoch, step))

    trainer, after_kill = _fit(client, epochs=3, callback=kill)
    assert killed == [(0, 0)]
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
    assert victim not in client.run(os.getpid).values()
    assert len(trainer.history) == 9
    _assert_same_parameters(after_kill, undisturbed)


def test_no_worker_left_raises_and_keeps_the_last_good_parameters():
    with _cluster(1) as (cluster, client):
        layer, loss, x, target, lengths = _problem("ce-all", np.float32)
        trainer = _trainer(client, layer, loss, worker_timeout=1.0)
        kept = {}

        def lose_every_worker(trainer, epoch, step):
            if step == 1:
                kept.update({k: p.copy() for k, p in trainer.optimizer.params.items()})
                cluster.scale(0)
                while client.nthreads():
                    time.sleep(0.05)

        with pytest.raises(NoWorkersError, match="no Dask worker left"):
            trainer.fit(
                *_inputs(x, target, lengths),
                batch_size=10,
                progress=False,
                callback=lose_every_worker,
            )
        # The failed step was not applied: the parameters are those after step 1.
        assert len(trainer.history) == 2
        _assert_same_parameters({**layer.parameters, **loss.parameters}, kept)


# ---------------------------------------------------------------------------
# Checkpoints, progress, pickling, threads


@pytest.mark.parametrize("layer_options", [None, MASKED], ids=["plain", "masked"])
def test_resume_from_checkpoint_equals_an_uninterrupted_run(client, tmp_path, layer_options):
    # With masks, those of the steps after the checkpoint are the uninterrupted
    # run's: they depend on (seed, epoch, step, chunk), not on a generator that the
    # new process's layer (other initial values, another seed) would bring.
    path = tmp_path / "run.npz"
    full, uninterrupted = _fit(client, layer_options=layer_options, epochs=2)

    class Stop(Exception):
        pass

    def stop(trainer, epoch, step):
        if (epoch, step) == (1, 0):
            raise Stop

    with pytest.raises(Stop):
        _fit(
            client,
            layer_options=layer_options,
            epochs=2,
            checkpoint=path,
            checkpoint_every=1,
            callback=stop,
        )
    # A new process would start from fresh objects: other initial values and a new
    # optimizer; the checkpoint brings back everything.
    trainer, resumed = _fit(
        client, init_seed=5, layer_options=layer_options, epochs=2, checkpoint=path, resume=True
    )
    _assert_same_parameters(resumed, uninterrupted)
    assert trainer.history == full.history
    assert trainer.epoch_losses == full.epoch_losses
    with pytest.raises(ValueError, match="batch_size = 10 there, 8 now"):
        _fit(
            client,
            layer_options=layer_options,
            epochs=2,
            batch_size=8,
            checkpoint=path,
            resume=True,
        )


def test_progress_bar_on_stderr(client, capsys):
    _fit(client, epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "epoch   1/2 [" in err and "epoch   2/2 [########################] loss " in err
    _fit(client, epochs=1, progress=False)
    assert capsys.readouterr().err == ""


def test_sgd_state_and_bad_arguments(client, tmp_path):
    layer, loss, x, target, lengths = _problem("mse-all", np.float32, batch_first=False)
    xs = _chunked(x, (12, 12), 1)
    with pytest.raises(ValueError, match="optimizer must be built over"):
        DataParallelTrainer(layer, loss, Adam({**layer.parameters, "w": np.ones(2)}), client)
    with pytest.raises(ValueError, match="optimizer must be built over"):
        DataParallelTrainer(layer, loss, Adam(copy.deepcopy(layer).parameters), client)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        DataParallelTrainer(layer, loss, Adam(layer.parameters), "tcp://127.0.0.1:8786")
    with pytest.raises(TypeError, match="loss must be"):
        DataParallelTrainer(layer, "mse", Adam(layer.parameters), client)
    with pytest.raises(ValueError, match="in_features = num_directions\\*state_size = 6"):
        MSELoss("last", Linear(7, 1)).check(layer)
    with pytest.raises(ValueError, match="on must be 'last' or 'all'"):
        MSELoss("first")
    with pytest.raises(TypeError, match="readout is required"):
        CrossEntropyLoss(None)  # type: ignore[arg-type]
    trainer = DataParallelTrainer(layer, loss, SGD(layer.parameters, lr=0.1, momentum=0.9), client)
    with pytest.raises(ValueError, match=r"target must have shape \(7, 24, 6\)"):
        trainer.fit(xs, target[:, :3], lengths, progress=False)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        trainer.fit(xs, target, lengths, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        trainer.fit(xs, target, lengths, resume=True, progress=False)
    with pytest.raises(TypeError, match="target must hold class indices"):
        _trainer(client, *_problem("ce-all", np.float32)[:2]).fit(
            da.zeros((24, 7, 3), chunks=(12, 7, 3)), np.zeros((24, 7)), progress=False
        )
    # A bad value found by a shard fails the step and changes nothing.
    ce_layer, ce_loss, cx, ctarget, _ = _problem("ce-all", np.float32)
    before = {k: p.copy() for k, p in {**ce_layer.parameters, **ce_loss.parameters}.items()}
    ctarget[3, 2] = 5
    with pytest.raises(ValueError, match="target must hold class indices in 0..4, got 5"):
        _trainer(client, ce_layer, ce_loss).fit(_chunked(cx, (12, 12), 0), ctarget, progress=False)
    _assert_same_parameters({**ce_layer.parameters, **ce_loss.parameters}, before)
    # SGD's momentum travels through a checkpoint too.
    path = tmp_path / "sgd.npz"
    trainer.fit(xs, target, lengths, epochs=1, batch_size=12, progress=False, checkpoint=path)
    with np.load(path) as saved:
        velocity = {k.split(":", 1)[1]: saved[k] for k in saved.files if k.startswith("sgd.")}
    assert velocity.keys() == layer.parameters.keys()
    for name, v in velocity.items():
        np.testing.assert_array_equal(v, trainer.optimizer.velocity[name])


def test_layer_pickles_weights_and_configuration_only():
    layer = LSTM(3, 5, 2, bidirectional=True, batch_first=True, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 9, 3))
    fresh = len(pickle.dumps(layer))
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    data = pickle.dumps(layer)
    assert len(data) == fresh  # neither the tape nor the gradients travel
    copy_ = pickle.loads(data)
    assert repr(copy_) == repr(layer)
    for name, p in layer.parameters.items():
        np.testing.assert_array_equal(copy_.parameters[name], p)
        assert copy_.parameters[name] is not p
        assert not copy_.grads[name].any()
    assert copy_.hx_grad is None
    with pytest.raises(RuntimeError, match="needs a preceding forward"):
        copy_.backward(np.ones_like(y))
    np.testing.assert_array_equal(copy_(x)[0], y)


def test_engine_uses_the_worker_thread_count(client):
    # The precondition that makes this test mean something: the workers inherited
    # the parent's LSTM_FAST_NUM_THREADS.
    env = client.run(lambda: os.environ.get("LSTM_FAST_NUM_THREADS"))
    assert set(env.values()) == {PARENT_THREADS}
    layer = LSTM(3, 4, seed=0)
    x = da.zeros((5, 4, 3), chunks=(5, 2, 3), dtype=np.float32)
    for address in client.nthreads():
        client.compute(predict(layer, x), workers=[address], sync=True)
    assert client.run(lstm_fast.get_num_threads) == client.nthreads()
    assert set(client.nthreads().values()) == {1}

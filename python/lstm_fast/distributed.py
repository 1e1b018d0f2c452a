"""``lstm_fast.distributed``: batch scoring and data-parallel training on Dask.

Install with ``pip install "lstm_fast[dask]"``; docs/distributed.md is the reference.

* :func:`predict` scores a Dask array of sequences chunked along the batch: one
  task per chunk runs the layer's forward in a worker, and the weights are one key
  of the graph, so they travel once per worker, not once per chunk. Every row of
  the engine's output depends on that row alone and the engine gives the same bits
  for any thread count, so the result equals ``layer.forward`` on the whole array,
  bit for bit.
* :class:`DataParallelTrainer` trains a layer (and the linear read-out of its
  loss) on Dask arrays of inputs and targets. Each step, every chunk that holds
  rows of the mini-batch is a shard: a task computes the *summed* loss and
  gradients of those rows; the shards are added in shard order, eight to a task (a
  fixed tree, whatever worker computed what, and whenever it arrived), divided once by
  the number of terms, and the update of :mod:`lstm_fast.optim` is applied here,
  in the client, exactly as in single-process training.

A layer in training mode with a regularisation rate > 0 (``dropout``,
``recurrent_dropout``, ``weight_drop``, ``zoneout``) draws each shard's masks from
:func:`shard_seed` of the fit's ``seed``, the epoch, the step and the chunk's index:
a pure function of what identifies the shard's rows, so the masks, like the sums,
do not depend on which worker computed what, or when.

The chunks are recomputable Dask blocks (persisted, not scattered), so a worker
that dies mid-step costs a recomputation of what it held and the run's result is
unchanged. The update is applied only after every shard's gradient has arrived,
so a failed step leaves the parameters as they were.

Threads: Dask sets the BLAS variables (``OMP_NUM_THREADS`` ...) on its workers, not
``LSTM_FAST_NUM_THREADS``, which a worker inherits from the process that started
the cluster. Every task therefore sets the engine of its worker to the worker's
own thread count (``Worker.state.nthreads``) before it computes.
"""

from __future__ import annotations

import abc
import copy
import json
import math
import os
import sys
import threading
import time
import uuid
from typing import Any, Callable, NamedTuple

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError('lstm_fast.distributed needs Dask: pip install "lstm_fast[dask]"') from exc

from . import functional as _F
from ._checks import (
    check_lengths,
    flag,
    float_dtype,
    integer,
    one_of,
    positive_int,
    random_generator,
    real_array,
    real_number,
    regularisation,
)
from .layer import LSTM
from .optim import SGD, Adam, clip_grad_norm

__all__ = [
    "CrossEntropyLoss",
    "DataParallelTrainer",
    "Linear",
    "MSELoss",
    "NoWorkersError",
    "predict",
    "shard_seed",
]

# How often a waiting step asks the scheduler whether any worker is left.
_POLL_S = 0.5
_CHECKPOINT_FORMAT = 1
# Shards added by one task of the reduction tree: each level costs a round trip
# through the scheduler, each input one gradient's bytes into the adding worker.
_FAN_IN = 8
# The first spawn key of the shards' mask seeds (b"mask"): see shard_seed.
_MASK_KEY = 0x6D61736B


class NoWorkersError(RuntimeError):
    """The cluster had no worker for longer than the trainer's ``worker_timeout``."""


# ---------------------------------------------------------------------------
# Inside a worker
# ---------------------------------------------------------------------------


def _use_worker_threads() -> None:
    """Give the engine of this worker process the worker's thread count.

    A worker inherits the environment of the process that started the cluster,
    ``LSTM_FAST_NUM_THREADS`` included, so the engine would otherwise run as many
    threads as the parent asked for (or one per core) in every worker, on top of
    the worker's own threads. Outside a distributed worker (Dask's local
    schedulers) the process's setting stands.
    """
    try:
        from distributed import get_worker

        nthreads = int(get_worker().state.nthreads)
    except (ImportError, ValueError):  # not in a worker
        return
    if _F.get_num_threads() != nthreads:
        _F.set_num_threads(nthreads)


def _private(layer: LSTM) -> LSTM:
    """A copy of ``layer`` that shares its weight arrays but has its own tape and
    gradients: the tasks of one worker share the layer they received, and run in
    the worker's threads at the same time."""
    return copy.copy(layer)


def _predict_block(
    layer: LSTM,
    x: np.ndarray,
    lengths: np.ndarray | None,
    return_state: bool,
    seed: int | None,
) -> Any:
    _use_worker_threads()
    y, state = _private(layer).forward(x, lengths=lengths, need_cache=False, seed=seed)
    return (y, *state) if return_state else y


# ---------------------------------------------------------------------------
# Argument rules shared by predict and the trainer
# ---------------------------------------------------------------------------


def _check_layer(layer: Any) -> LSTM:
    if not isinstance(layer, LSTM):
        raise TypeError(f"layer must be an lstm_fast.LSTM, got {type(layer).__name__}")
    return layer


def _batch_axis(layer: LSTM) -> int:
    return 0 if layer.batch_first else 1


def _is_dask_array(value: Any) -> bool:
    return isinstance(value, da.Array)


def _known_shape(name: str, array: Any) -> None:
    if any(math.isnan(s) for s in array.shape):
        raise ValueError(
            f"{name} must have known chunk sizes, got shape {array.shape} (call "
            f"{name}.compute_chunk_sizes() first)"
        )


def _real_dtype(name: str, dtype: np.dtype) -> None:
    # The same TypeError the NumPy entry points raise, from the Dask array's dtype.
    real_array(name, np.empty(0, dtype))


def _sequences(layer: LSTM, x: Any) -> Any:
    """``x`` checked against ``layer`` and rechunked to whole sequences per chunk."""
    layout = "(batch, seq_len, input_size)" if layer.batch_first else "(seq_len, batch, input_size)"
    if not _is_dask_array(x):
        raise TypeError(
            f"x must be a Dask array {layout} chunked along the batch (e.g. "
            f"dask.array.from_array(x, chunks=...)), got {type(x).__name__}"
        )
    _real_dtype("x", x.dtype)
    if x.ndim != 3:
        raise ValueError(f"x must have shape {layout} (3 dimensions), got {x.shape}")
    _known_shape("x", x)
    if x.shape[2] != layer.input_size:
        raise ValueError(
            f"x must have shape {layout} with input_size = {layer.input_size}, got {x.shape}"
        )
    # A task needs whole sequences: only the batch axis may stay split.
    return x.rechunk({1 - _batch_axis(layer): -1, 2: -1})


def _aligned(name: str, value: Any, x: Any, batch_axis: int, axis: int) -> Any:
    """``value`` (a Dask or NumPy array) as a Dask array whose chunks along ``axis``
    are those of ``x`` along ``batch_axis`` (whole along every other axis)."""
    if not _is_dask_array(value):
        value = np.asarray(value) if isinstance(value, (list, tuple)) else value
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{name} must be a Dask or NumPy array, got {type(value).__name__}")
        value = da.from_array(value, chunks=-1)
    _known_shape(name, value)
    chunks = {k: -1 for k in range(value.ndim)}
    if value.ndim > axis and value.shape[axis] == x.shape[batch_axis]:
        chunks[axis] = x.chunks[batch_axis]
    return value.rechunk(chunks)


def _dask_lengths(lengths: Any, x: Any, batch_axis: int) -> Any:
    if lengths is None:
        return None
    lengths = _aligned("lengths", lengths, x, batch_axis, 0)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers (an integer dtype), got dtype {lengths.dtype}")
    batch = x.shape[batch_axis]
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape (batch,) = ({batch},), got {lengths.shape}")
    return lengths


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def predict(
    layer: LSTM, x: Any, lengths: Any = None, *, return_state: bool = False, seed: Any = None
) -> Any:
    """``layer``'s forward over a Dask array of sequences: a Dask array ``y``.

    ``x`` is (B, T, I) with ``layer.batch_first``, else (T, B, I), chunked along the
    batch (other axes are rechunked to whole sequences); ``lengths`` (B,) an integer
    Dask or NumPy array, checked per chunk when computed. ``y`` is chunked as ``x``
    along the batch; with ``return_state`` the result is ``(y, (h_n, c_n))``, the
    states (L*D, B, H) chunked along axis 1. The weights are copied now (later
    changes to the layer do not reach the result) into one key of the graph, which
    each worker fetches once. Equal, bit for bit, to ``layer.forward(x.compute(),
    lengths=...)`` for a layer in eval mode (or without regularisation).

    A layer in training mode with a regularisation rate > 0 draws masks: chunk
    ``k`` (its index along the batch, from 0) runs with the mask seed
    ``shard_seed(seed, 0, 0, k)``, ``seed`` given or, when None, drawn now from the
    layer's generator, so the result is the same bits on any number of workers and
    for any schedule (not the masks of one ``layer.forward`` over the whole array:
    those are keyed by the row's index in the pass). Otherwise ``seed`` is checked
    and unused.
    """
    layer = _check_layer(layer)
    return_state = flag("return_state", return_state)
    if seed is not None:  # the layer's rule for a mask seed
        seed = regularisation(seed=seed, training=False)[4]
    x = _sequences(layer, x)
    axis = _batch_axis(layer)
    lengths = _dask_lengths(lengths, x, axis)

    # Drawn once the arguments are known to be good, as the layer does.
    pass_seed = layer.mask_seed(seed)
    snapshot = copy.deepcopy(layer)
    # The mode is part of the key: repr does not show it, and a key that two
    # snapshots share may be answered with the one the cluster still holds.
    token = dask.base.tokenize(repr(layer), snapshot.training, sorted(snapshot.parameters.items()))
    weights = dask.delayed(snapshot, name=f"lstm-fast-weights-{token}", traverse=False)
    x_blocks = x.to_delayed().ravel()
    l_blocks = [None] * len(x_blocks) if lengths is None else lengths.to_delayed().ravel()

    # y and h are state_size wide (proj_size with a projection), c hidden_size.
    steps, width = x.shape[1 - axis], layer.num_directions * layer.state_size
    rows = layer.num_layers * layer.num_directions
    ys, hs, cs = [], [], []
    for k, (block, block_lengths, size) in enumerate(zip(x_blocks, l_blocks, x.chunks[axis])):
        block_seed = None if pass_seed is None else shard_seed(pass_seed, 0, 0, k)
        y_shape = (size, steps, width) if layer.batch_first else (steps, size, width)
        h_shape = (rows, size, layer.state_size)
        c_shape = (rows, size, layer.hidden_size)
        out = dask.delayed(_predict_block, pure=True, nout=3 if return_state else None)(
            weights, block, block_lengths, return_state, block_seed
        )
        if return_state:
            ys.append(da.from_delayed(out[0], y_shape, dtype=layer.dtype))
            hs.append(da.from_delayed(out[1], h_shape, dtype=layer.dtype))
            cs.append(da.from_delayed(out[2], c_shape, dtype=layer.dtype))
        else:
            ys.append(da.from_delayed(out, y_shape, dtype=layer.dtype))
    y = da.concatenate(ys, axis=axis)
    if return_state:
        return y, (da.concatenate(hs, axis=1), da.concatenate(cs, axis=1))
    return y


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


class Linear:
    """A linear read-out ``pred = features @ weight.T + bias`` trained with the layer.

    ``weight`` (out_features, in_features), ``bias`` (out_features,) as in PyTorch's
    ``nn.Linear``, initialised like it: uniform in ±1/sqrt(in_features).
    :attr:`parameters` holds them as ``readout.weight`` and ``readout.bias``, the live
    arrays (build the optimizer over ``{**layer.parameters, **loss.parameters}``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        dtype: Any = np.float32,
        seed: Any = None,
    ) -> None:
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.bias = flag("bias", bias)
        self.dtype = float_dtype("dtype", dtype)
        rng = random_generator("seed", seed)
        bound = 1.0 / np.sqrt(self.in_features)
        shapes: dict[str, tuple[int, ...]] = {
            "readout.weight": (self.out_features, self.in_features)
        }
        if self.bias:
            shapes["readout.bias"] = (self.out_features,)
        #: name -> the live parameter array.
        self.parameters: dict[str, np.ndarray] = {
            name: rng.uniform(-bound, bound, size=shape).astype(self.dtype)
            for name, shape in shapes.items()
        }

    def __repr__(self) -> str:
        extra = "" if self.bias else ", bias=False"
        if self.dtype != np.float32:
            extra += f", dtype={self.dtype.name}"
        return f"Linear({self.in_features}, {self.out_features}{extra})"

    def __call__(self, features: np.ndarray) -> np.ndarray:
        out = features @ self.parameters["readout.weight"].T
        if self.bias:
            out += self.parameters["readout.bias"]
        return out

    def backward(
        self, features: np.ndarray, dpred: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(dfeatures, grads)`` for the gradient ``dpred`` of the predictions."""
        flat_f = features.reshape(-1, self.in_features)
        flat_d = dpred.reshape(-1, self.out_features)
        grads = {"readout.weight": flat_d.T @ flat_f}
        if self.bias:
            grads["readout.bias"] = flat_d.sum(axis=0)
        return dpred @ self.parameters["readout.weight"], grads


class _Sums(NamedTuple):
    """A shard's contribution: the summed loss, the number of terms, summed gradients."""

    loss: float
    terms: int
    grads: dict[str, np.ndarray]


def _add(*parts: _Sums) -> _Sums:
    """The sum of ``parts``, added left to right (in shard order)."""
    total = parts[0]
    for part in parts[1:]:
        total = _Sums(
            total.loss + part.loss,
            total.terms + part.terms,
            {k: g + part.grads[k] for k, g in total.grads.items()},
        )
    return total


class _Loss(abc.ABC):
    """What the two losses share: where the predictions come from (``on``), the
    optional read-out, and the backward from the prediction to the layer."""

    readout: Linear | None

    def __init__(self, on: str, readout: Linear | None) -> None:
        self.on = one_of("on", on, ("last", "all"))
        if readout is not None and not isinstance(readout, Linear):
            raise TypeError(
                f"readout must be an lstm_fast.distributed.Linear or None, got "
                f"{type(readout).__name__}"
            )
        self.readout = readout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(on={self.on!r}, readout={self.readout!r})"

    @property
    def parameters(self) -> dict[str, np.ndarray]:
        """The read-out's live parameters (empty without one)."""
        return {} if self.readout is None else self.readout.parameters

    def target_axis(self, layer: LSTM) -> int:
        """The batch axis of the target."""
        return 0 if self.on == "last" or layer.batch_first else 1

    def _features(self, layer: LSTM) -> int:
        return layer.num_directions * layer.state_size

    def _target_shape(
        self, layer: LSTM, batch: int, steps: int, width: int | None
    ) -> tuple[int, ...]:
        lead: tuple[int, ...] = (batch,)
        if self.on == "all":
            lead = (batch, steps) if layer.batch_first else (steps, batch)
        return lead if width is None else (*lead, width)

    def check(self, layer: LSTM) -> None:
        """A ``ValueError`` unless the read-out takes the layer's outputs."""
        features = self._features(layer)
        if self.readout is not None and self.readout.in_features != features:
            raise ValueError(
                f"loss.readout must have in_features = num_directions*state_size = "
                f"{features}, got {self.readout.in_features}"
            )

    @abc.abstractmethod
    def _criterion(
        self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None
    ) -> tuple[float, int, np.ndarray]:
        """(summed loss, count, gradient of the summed loss by ``pred``) of one shard."""

    def sums(
        self, layer: LSTM, y: np.ndarray, h_n: np.ndarray, target: np.ndarray, lengths: Any
    ) -> tuple[float, int, np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
        """``(loss_sum, count, dy, dh_n, readout_grads)`` of the rows of one shard.

        Sums, not means: the shards are added and divided by the total count once.
        """
        # h is state_size wide (proj_size with a projection).
        directions, hidden = layer.num_directions, layer.state_size
        batch = h_n.shape[1]
        mask = None
        if self.on == "last":
            # The last layer's final state, both directions side by side: (B, D*H).
            features = h_n[-directions:].transpose(1, 0, 2).reshape(batch, directions * hidden)
        else:
            features = y
            if lengths is not None:
                steps = y.shape[1] if layer.batch_first else y.shape[0]
                valid = np.arange(steps)[None, :] < np.asarray(lengths)[:, None]  # (B, T)
                mask = valid if layer.batch_first else valid.T
        pred = features if self.readout is None else self.readout(features)
        loss, count, dpred = self._criterion(pred, target, mask)
        readout_grads: dict[str, np.ndarray] = {}
        dfeatures = dpred
        if self.readout is not None:
            dfeatures, readout_grads = self.readout.backward(features, dpred)
        if self.on == "all":
            return loss, count, dfeatures, None, readout_grads
        dh_n = np.zeros_like(h_n)
        dh_n[-directions:] = dfeatures.reshape(batch, directions, hidden).transpose(1, 0, 2)
        return loss, count, None, dh_n, readout_grads


class MSELoss(_Loss):
    """Mean squared error on the last step (``on="last"``) or on every step (``"all"``).

    The prediction is the layer's output, through ``readout`` when given: with
    ``on="last"`` the last layer's final hidden state (both directions side by
    side), (B, D*H), against a target (B, F); with ``on="all"`` every step's output
    against a target (B, T, F) (or (T, B, F), in the layer's layout), padded steps
    left out. F is ``readout.out_features``, or D*H without a read-out. The loss is
    the mean over every term, as ``torch.nn.MSELoss()``.
    """

    def __init__(self, on: str = "last", readout: Linear | None = None) -> None:
        super().__init__(on, readout)

    def target_shape(self, layer: LSTM, batch: int, steps: int) -> tuple[int, ...]:
        width = self._features(layer) if self.readout is None else self.readout.out_features
        return self._target_shape(layer, batch, steps, width)

    def check_target_dtype(self, dtype: np.dtype) -> None:
        _real_dtype("target", dtype)

    def _criterion(
        self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None
    ) -> tuple[float, int, np.ndarray]:
        err = pred - target.astype(pred.dtype, copy=False)
        count = err.size
        if mask is not None:
            err *= mask[..., None]
            count = int(mask.sum()) * err.shape[-1]
        return float(np.sum(err * err, dtype=np.float64)), count, 2 * err


class CrossEntropyLoss(_Loss):
    """Cross-entropy of class indices over a linear read-out's logits.

    ``on="all"`` (the default, a character model): logits ``readout(y)`` at every
    step against integer targets (B, T) (or (T, B), in the layer's layout), padded
    steps left out; ``on="last"``: one class per sequence from the final state,
    targets (B,). The loss is the mean over the terms, as
    ``torch.nn.CrossEntropyLoss()``.
    """

    readout: Linear

    def __init__(self, readout: Linear, on: str = "all") -> None:
        if readout is None:
            raise TypeError("readout is required: cross-entropy needs logits, one per class")
        super().__init__(on, readout)

    def target_shape(self, layer: LSTM, batch: int, steps: int) -> tuple[int, ...]:
        return self._target_shape(layer, batch, steps, None)

    def check_target_dtype(self, dtype: np.dtype) -> None:
        if np.dtype(dtype).kind not in "iu":
            raise TypeError(f"target must hold class indices (an integer dtype), got dtype {dtype}")

    def _criterion(
        self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None
    ) -> tuple[float, int, np.ndarray]:
        classes = pred.shape[-1]
        valid = np.ones(target.shape, bool) if mask is None else mask
        picked = np.where(valid, target, 0)
        if picked.size and (picked.min() < 0 or picked.max() >= classes):
            bad = picked[(picked < 0) | (picked >= classes)][0]
            raise ValueError(f"target must hold class indices in 0..{classes - 1}, got {int(bad)}")
        shifted = pred - pred.max(axis=-1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=-1, keepdims=True)
        log_p = np.take_along_axis(shifted - np.log(total), picked[..., None], axis=-1)[..., 0]
        loss = -float(np.sum(np.where(valid, log_p, 0.0), dtype=np.float64))
        dpred = exp / total
        np.put_along_axis(
            dpred, picked[..., None], np.take_along_axis(dpred, picked[..., None], -1) - 1, -1
        )
        dpred *= valid[..., None]
        return loss, int(valid.sum()), dpred


def shard_seed(seed: int, epoch: int, step: int, block: int) -> int:
    """The mask seed of one shard of :meth:`DataParallelTrainer.fit`: the seed
    that the task of chunk ``block`` (its index along the batch, from 0) passes to
    ``layer.forward(..., seed=...)`` at step ``step`` (counted within the epoch) of
    epoch ``epoch`` of a fit with ``seed``; :meth:`DataParallelTrainer.gradient`
    uses epoch 0, step 0.

    ``numpy.random.SeedSequence(seed, spawn_key=(0x6D61736B, epoch, step,
    block))``'s first 64-bit word (the first key, b"mask", keeps these apart from
    the epochs' orders, drawn from ``SeedSequence([seed, epoch])``): a pure function
    of what identifies the shard's rows, never of the schedule (which worker ran
    the task, how many tasks it ran before), so a training run with masks gives the
    same bits on any number of workers.
    """
    words = []
    for name, value in (("seed", seed), ("epoch", epoch), ("step", step), ("block", block)):
        value = integer(name, value)
        if value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value}")
        words.append(value)
    keys = np.random.SeedSequence(words[0], spawn_key=(_MASK_KEY, *words[1:]))
    return int(keys.generate_state(1, np.uint64)[0])


def _shard_sums(
    model: tuple[LSTM, _Loss],
    x: np.ndarray,
    target: np.ndarray,
    lengths: np.ndarray | None,
    rows: np.ndarray | None,
    seed: int,
) -> _Sums:
    """The summed loss and gradients of ``rows`` of one chunk (all of it for None);
    ``seed`` is the mask seed of the pass (unused unless the layer draws masks)."""
    _use_worker_threads()
    shared, loss = model
    layer = _private(shared)
    axis = _batch_axis(layer)
    if rows is not None:
        x = x.take(rows, axis=axis)
        target = target.take(rows, axis=loss.target_axis(layer))
        lengths = None if lengths is None else lengths[rows]
    if lengths is not None:
        steps = x.shape[1 - axis]
        lengths = check_lengths(lengths, x.shape[axis], steps)
    # The seed given, not one of the layer's generator: the tasks of one worker share
    # that generator, so what it draws would depend on the schedule.
    y, (h_n, _) = layer.forward(x, lengths=lengths, seed=seed)
    total, count, dy, dh_n, readout_grads = loss.sums(layer, y, h_n, target, lengths)
    layer.backward(dy, dh_n)
    return _Sums(total, count, {**layer.grads, **readout_grads})


def _fit_seed(seed: Any) -> int:
    """The ``seed`` of :meth:`DataParallelTrainer.fit`: an integer >= 0."""
    seed = integer("seed", seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return seed


def _hold(value: Any) -> Any:
    """A task whose result is its argument: the weights become one recomputable key."""
    return value


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


class _Block(NamedTuple):
    start: int  # the chunk's first row
    stop: int
    x: Any  # futures of the persisted chunks
    target: Any
    lengths: Any


class DataParallelTrainer:
    """Data-parallel training of ``layer`` (and ``loss``'s read-out) on a Dask cluster.

    ``optimizer`` is an :class:`lstm_fast.optim.SGD` or :class:`~lstm_fast.optim.Adam`
    over ``{**layer.parameters, **loss.parameters}`` (the live arrays, which every
    step updates in place, in this process). ``client`` is a ``distributed.Client``.
    ``clip_grad_norm`` clips the combined gradient's global norm before each update
    (as :func:`lstm_fast.optim.clip_grad_norm`). A step that finds no worker for
    ``worker_timeout`` seconds raises :class:`NoWorkersError`, the parameters left at
    their last good values.

    After :meth:`fit`: :attr:`history` holds every step's loss (the mean over the
    mini-batch), :attr:`epoch_losses` each epoch's mean of those.
    """

    def __init__(
        self,
        layer: LSTM,
        loss: MSELoss | CrossEntropyLoss,
        optimizer: SGD | Adam,
        client: Any,
        *,
        clip_grad_norm: float | None = None,
        worker_timeout: float = 60.0,
    ) -> None:
        from distributed import Client

        self.layer = _check_layer(layer)
        if not isinstance(loss, (MSELoss, CrossEntropyLoss)):
            raise TypeError(
                f"loss must be an lstm_fast.distributed.MSELoss or CrossEntropyLoss, got "
                f"{type(loss).__name__}"
            )
        loss.check(layer)
        self.loss = loss
        if not isinstance(optimizer, (SGD, Adam)):
            raise TypeError(
                f"optimizer must be an lstm_fast.optim.SGD or Adam, got {type(optimizer).__name__}"
            )
        trained = {**layer.parameters, **loss.parameters}
        if set(optimizer.params) != set(trained) or any(
            optimizer.params[k] is not p for k, p in trained.items()
        ):
            raise ValueError(
                "optimizer must be built over {**layer.parameters, **loss.parameters} (the "
                "same arrays, so that its updates reach the layer and the read-out)"
            )
        self.optimizer = optimizer
        if not isinstance(client, Client):
            raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
        self.client = client
        self.clip_grad_norm = (
            None
            if clip_grad_norm is None
            else real_number("clip_grad_norm", clip_grad_norm, minimum=0.0)
        )
        self.worker_timeout = real_number("worker_timeout", worker_timeout, minimum=0.0)
        #: The loss of every step of the last fit (a resumed run's earlier steps too).
        self.history: list[float] = []
        #: The mean step loss of every finished epoch.
        self.epoch_losses: list[float] = []

    # ------------------------------------------------------------------- data

    def _data(self, x: Any, target: Any, lengths: Any) -> tuple[Any, Any, Any]:
        layer = self.layer
        x = _sequences(layer, x)
        axis = _batch_axis(layer)
        batch, steps = x.shape[axis], x.shape[1 - axis]
        target_axis = self.loss.target_axis(layer)
        target = _aligned("target", target, x, axis, target_axis)
        self.loss.check_target_dtype(target.dtype)
        want = self.loss.target_shape(layer, batch, steps)
        if target.shape != want:
            raise ValueError(f"target must have shape {want} for {self.loss!r}, got {target.shape}")
        return x, target, _dask_lengths(lengths, x, axis)

    def _blocks(self, x: Any, target: Any, lengths: Any) -> list[_Block]:
        """Persist the chunks (once per fit; recomputable if a worker dies) and pair
        each chunk of ``x`` with those of the target and the lengths."""
        from distributed import futures_of

        arrays = [a for a in (x, target, lengths) if a is not None]
        persisted = self.client.persist(arrays)
        futures = {f.key: f for a in persisted for f in futures_of(a)}
        columns = [[futures[d.key] for d in a.to_delayed().ravel()] for a in persisted]
        if lengths is None:
            columns.append([None] * len(columns[0]))
        bounds = np.cumsum((0, *x.chunks[_batch_axis(self.layer)]))
        return [
            _Block(int(bounds[k]), int(bounds[k + 1]), *(c[k] for c in columns))
            for k in range(len(bounds) - 1)
        ]

    # ------------------------------------------------------------------ a step

    def _wait(self, future: Any) -> Any:
        """``future``'s result; a :class:`NoWorkersError` once the cluster has had no
        worker for ``worker_timeout`` seconds (Dask itself would wait for ever)."""
        # Waiting on an event rather than with future.result(timeout=...): under load,
        # distributed's timed result() can lose the result to a race (UnboundLocalError).
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        alone_since = None
        while not done.wait(min(_POLL_S, max(self.worker_timeout, 0.01))):
            if self.client.nthreads():
                alone_since = None
                continue
            now = time.monotonic()
            alone_since = now if alone_since is None else alone_since
            if now - alone_since >= self.worker_timeout:
                future.cancel()
                raise NoWorkersError(
                    f"no Dask worker left: the cluster of {self.client.scheduler.address} "
                    f"had no worker for {self.worker_timeout:g} s (worker_timeout); the "
                    f"step was not applied, the parameters are those of the last step"
                )
        return future.result()

    def _sums(
        self, blocks: list[_Block], rows: np.ndarray | None, where: tuple[int, int, int]
    ) -> _Sums:
        """The summed loss and gradients of ``rows`` (sorted; None: every row);
        ``where`` is (seed, epoch, step), which with each chunk's index gives its
        shard's mask seed (:func:`shard_seed`)."""
        client = self.client
        model = (copy.deepcopy(self.layer), copy.deepcopy(self.loss))
        size = sum(p.nbytes for p in self.optimizer.params.values())
        # Embedding the weights in the task is the point (one recomputable key that
        # each worker fetches once), so Dask's hint to scatter large data is noise.
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": 2 * size + 2**24}):
            weights = client.submit(
                _hold, model, pure=False, key=f"lstm-fast-weights-{uuid.uuid4().hex}"
            )
        parts = []
        for index, block in enumerate(blocks):
            local = None
            if rows is not None:
                lo, hi = np.searchsorted(rows, (block.start, block.stop))
                if lo == hi:
                    continue
                local = rows[lo:hi] - block.start
            parts.append(
                client.submit(
                    _shard_sums,
                    weights,
                    block.x,
                    block.target,
                    block.lengths,
                    local,
                    shard_seed(*where, index),
                    pure=False,
                )
            )
        # A fixed tree by shard index, _FAN_IN shards per node: the bits do not depend
        # on who computed what, and a step waits for log_FAN_IN(shards) round trips.
        while len(parts) > 1:
            parts = [
                client.submit(_add, *parts[k : k + _FAN_IN], pure=False)
                for k in range(0, len(parts), _FAN_IN)
            ]
        return self._wait(parts[0])

    def _mean(self, sums: _Sums) -> tuple[float, dict[str, np.ndarray]]:
        count = max(sums.terms, 1)
        grads = {}
        for name, g in sums.grads.items():
            g /= g.dtype.type(count)
            grads[name] = g
        return sums.loss / count, grads

    def gradient(
        self, x: Any, target: Any, lengths: Any = None, *, seed: int = 0
    ) -> tuple[float, dict[str, np.ndarray]]:
        """The mean loss over every row and its gradients ``{name: array}``, computed
        by the shards as in :meth:`fit` (no update, no clipping). A layer that draws
        masks draws them as the first step of ``fit(..., seed=seed)`` would
        (:func:`shard_seed` of epoch 0, step 0)."""
        seed = _fit_seed(seed)
        blocks = self._blocks(*self._data(x, target, lengths))
        return self._mean(self._sums(blocks, None, (seed, 0, 0)))

    def _update(
        self, blocks: list[_Block], rows: np.ndarray | None, where: tuple[int, int, int]
    ) -> float:
        sums = self._sums(blocks, rows, where)
        if sums.terms == 0:  # no valid step in the mini-batch: nothing to learn from
            return float("nan")
        loss, grads = self._mean(sums)
        if self.clip_grad_norm is not None:
            clip_grad_norm(grads, self.clip_grad_norm)
        self.optimizer.step(grads)
        return loss

    # -------------------------------------------------------------------- fit

    def fit(
        self,
        x: Any,
        target: Any,
        lengths: Any = None,
        *,
        epochs: int = 1,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        progress: bool = True,
        checkpoint: Any = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        callback: Callable[[DataParallelTrainer, int, int], Any] | None = None,
    ) -> list[float]:
        """Train for ``epochs`` passes over the rows; returns :attr:`history`.

        Mini-batches of ``batch_size`` rows (all rows when None; the last one of an
        epoch may be smaller), in an order drawn afresh each epoch from ``seed``
        when ``shuffle``. ``progress`` writes a bar to stderr. ``checkpoint`` is a
        file written (atomically) every ``checkpoint_every`` steps and at the end of
        every epoch: the parameters, the optimizer's state, the position in the run
        and the losses so far. With ``resume`` a run starts from that file when it
        exists (the same data, ``batch_size``, ``shuffle`` and ``seed``), and ends
        with the same parameters as a run that was never stopped. ``callback(self,
        epoch, step)`` runs after each update (``step`` counts within the epoch).

        A layer in training mode with ``dropout``, ``recurrent_dropout``,
        ``weight_drop`` or ``zoneout`` draws each shard's masks from
        :func:`shard_seed` ``(seed, epoch, step, chunk index)``: two fits with the same
        ``seed`` and chunks give the same bits on any number of workers, and a
        resumed run draws the masks the uninterrupted one drew.
        """
        epochs = positive_int("epochs", epochs)
        shuffle = flag("shuffle", shuffle)
        seed = _fit_seed(seed)
        progress = flag("progress", progress)
        resume = flag("resume", resume)
        if resume and checkpoint is None:
            raise ValueError("resume=True needs a checkpoint file to resume from")
        if checkpoint is not None:
            checkpoint = os.fspath(checkpoint)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        x, target, lengths = self._data(x, target, lengths)
        batch = x.shape[_batch_axis(self.layer)]
        if batch == 0:
            raise ValueError("x must hold at least one sequence to train on")
        batch_size = batch if batch_size is None else positive_int("batch_size", batch_size)
        per_epoch = -(-batch // batch_size)
        checkpoint_every = (
            per_epoch
            if checkpoint_every is None
            else positive_int("checkpoint_every", checkpoint_every)
        )
        run = {"rows": batch, "batch_size": batch_size, "shuffle": shuffle, "seed": seed}

        self.history, self.epoch_losses = [], []
        start = 0  # steps of the run already done
        if resume and os.path.exists(checkpoint):
            start = self._load(checkpoint, run)
        blocks = self._blocks(x, target, lengths)
        bar = _Progress(epochs, per_epoch) if progress else None
        for epoch in range(start // per_epoch, epochs):
            # Each epoch's order from (seed, epoch) alone: a resumed run draws the same.
            order = (
                np.random.default_rng([seed, epoch]).permutation(batch)
                if shuffle
                else np.arange(batch)
            )
            first = start - epoch * per_epoch if epoch == start // per_epoch else 0
            for step in range(first, per_epoch):
                rows = np.sort(order[step * batch_size : (step + 1) * batch_size])
                self.history.append(
                    self._update(blocks, None if len(rows) == batch else rows, (seed, epoch, step))
                )
                done = epoch * per_epoch + step + 1
                if step + 1 == per_epoch:
                    self.epoch_losses.append(float(np.mean(self.history[-per_epoch:])))
                if checkpoint is not None and (
                    done % checkpoint_every == 0 or step + 1 == per_epoch
                ):
                    self._save(checkpoint, run, done)
                if bar is not None:
                    bar.show(epoch, step + 1, float(np.mean(self.history[epoch * per_epoch :])))
                if callback is not None:
                    callback(self, epoch, step)
            if bar is not None:
                bar.end_epoch()
        return self.history

    # ------------------------------------------------------------- checkpoints

    def _optimizer_state(self) -> dict[str, np.ndarray]:
        opt = self.optimizer
        if isinstance(opt, Adam):
            state = {f"adam.steps:{k}": np.asarray(v) for k, v in opt.steps.items()}
            state.update({f"adam.exp_avg:{k}": v for k, v in opt.exp_avg.items()})
            state.update({f"adam.exp_avg_sq:{k}": v for k, v in opt.exp_avg_sq.items()})
            return state
        return {f"sgd.velocity:{k}": v for k, v in opt.velocity.items()}

    def _save(self, path: str, run: dict[str, Any], done: int) -> None:
        meta = {
            "format": _CHECKPOINT_FORMAT,
            "steps_done": done,
            "optimizer": type(self.optimizer).__name__,
            "history": self.history,
            "epoch_losses": self.epoch_losses,
            **run,
        }
        arrays: dict[str, Any] = {f"param:{k}": p for k, p in self.optimizer.params.items()}
        arrays.update(self._optimizer_state())
        arrays["meta"] = np.asarray(json.dumps(meta))
        partial = path + ".partial"
        with open(partial, "wb") as f:
            np.savez(f, **arrays)
        os.replace(partial, path)  # a run killed while writing keeps the previous file

    def _load(self, path: str, run: dict[str, Any]) -> int:
        """Restore a checkpoint into the live arrays and the optimizer; the steps done."""
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {path!r} is not a checkpoint of this trainer")
        for key, value in run.items():
            if meta.get(key) != value:
                raise ValueError(
                    f"checkpoint {path!r} is of another run: {key} = {meta.get(key)!r} there, "
                    f"{value!r} now"
                )
        if meta["optimizer"] != type(self.optimizer).__name__:
            raise ValueError(
                f"checkpoint {path!r} holds the state of {meta['optimizer']}, not of "
                f"{type(self.optimizer).__name__}"
            )
        params = self.optimizer.params
        saved = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("param:")}
        if set(saved) != set(params) or any(saved[k].shape != p.shape for k, p in params.items()):
            raise ValueError(f"checkpoint {path!r} holds parameters of another model")
        for name, p in params.items():
            p[...] = saved[name]
        opt = self.optimizer

        def part(prefix: str) -> dict[str, np.ndarray]:
            return {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + ":")}

        if isinstance(opt, Adam):
            opt.steps = {k: int(v) for k, v in part("adam.steps").items()}
            opt.exp_avg = part("adam.exp_avg")
            opt.exp_avg_sq = part("adam.exp_avg_sq")
        else:
            opt.velocity = part("sgd.velocity")
        self.history = [float(v) for v in meta["history"]]
        self.epoch_losses = [float(v) for v in meta["epoch_losses"]]
        return int(meta["steps_done"])


class _Progress:
    """A text progress bar on stderr, as the demo's: redrawn in place on a terminal,
    one line per epoch otherwise (logs, CI)."""

    def __init__(self, epochs: int, per_epoch: int, width: int = 24) -> None:
        self.epochs, self.per_epoch, self.width = epochs, per_epoch, width
        self.live = sys.stderr.isatty()
        self.started = time.perf_counter()
        self.steps = 0
        self.line = ""

    def show(self, epoch: int, step: int, loss: float) -> None:
        self.steps += 1
        filled = self.width * step // self.per_epoch
        rate = self.steps / max(time.perf_counter() - self.started, 1e-9)
        self.line = (
            f"epoch {epoch + 1:>3}/{self.epochs} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"loss {loss:.4g}  {rate:.1f} steps/s"
        )
        if self.live:
            print("\r" + self.line, end="", file=sys.stderr, flush=True)

    def end_epoch(self) -> None:
        print(("\r" if self.live else "") + self.line, file=sys.stderr, flush=True)

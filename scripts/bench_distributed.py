"""Throughput of lstm_fast.distributed on a LocalCluster of 1 and 2 workers (BENCHMARKS.md).

    python scripts/bench_distributed.py            # the tables of BENCHMARKS.md, a few minutes
    python scripts/bench_distributed.py --quick    # a smoke run

Measures, each the best of --repeats runs:

* scoring: sequences per second of ``lstm_fast.distributed.predict`` on 1 and 2
  workers of one thread, against ``LSTM.forward`` in this process on 1 and 2
  engine threads;
* training: steps per second of ``DataParallelTrainer.fit`` (forward, backward and
  Adam on a mini-batch, split into shards by the chunks), against the same step in
  this process;
* the scheduler's cost per step: the same with a model so small that the
  computation is negligible, so that what remains is the round trips through the
  scheduler.

It prints Markdown tables and the figures of the scaling model: bytes sent per step
(the weights to each worker, each shard's gradient through the reduction tree).
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import dask.array as da
import lstm_fast
import numpy as np
from distributed import Client, LocalCluster
from lstm_fast import LSTM
from lstm_fast.distributed import DataParallelTrainer, Linear, MSELoss, predict
from lstm_fast.optim import Adam


def best(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def cluster(workers: int) -> tuple[LocalCluster, Client]:
    c = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    return c, Client(c)


def model(inputs: int, hidden: int, seed: int = 0) -> tuple[LSTM, MSELoss, Adam]:
    layer = LSTM(inputs, hidden, batch_first=True, seed=seed)
    loss = MSELoss("last", Linear(hidden, 1, seed=seed))
    return layer, loss, Adam({**layer.parameters, **loss.parameters}, lr=1e-3)


def local_step(layer: LSTM, loss: MSELoss, opt: Adam, x: np.ndarray, t: np.ndarray) -> None:
    """One single-process training step of the same model and loss."""
    assert loss.readout is not None
    y, (h_n, _) = layer(x)
    features = h_n[-1]
    err = loss.readout(features) - t
    dpred = 2 * err / err.size
    dfeatures, grads = loss.readout.backward(features, dpred)
    dh = np.zeros_like(h_n)
    dh[-1] = dfeatures
    layer.backward(None, dh)
    opt.step({**layer.grads, **grads})


def fit_rate(client: Client, sizes: dict[str, int], steps: int, repeats: int) -> float:
    """Steps per second of fit, after a warm-up fit (imports, first transfers)."""
    rng = np.random.default_rng(0)
    rows, seq, inputs, hidden = sizes["rows"], sizes["seq"], sizes["inputs"], sizes["hidden"]
    x = da.from_array(
        rng.standard_normal((rows, seq, inputs)).astype(np.float32),
        chunks=(sizes["chunk"], -1, -1),
    )
    t = da.from_array(
        rng.standard_normal((rows, 1)).astype(np.float32), chunks=(sizes["chunk"], -1)
    )
    layer, loss, opt = model(inputs, hidden)
    trainer = DataParallelTrainer(layer, loss, opt, client)
    trainer.fit(x, t, batch_size=sizes["batch"], progress=False)
    epochs = max(steps * sizes["batch"] // rows, 1)
    per_epoch = -(-rows // sizes["batch"])
    elapsed = best(
        lambda: trainer.fit(x, t, epochs=epochs, batch_size=sizes["batch"], progress=False),
        repeats,
    )
    return epochs * per_epoch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    score = {"rows": 4096, "seq": 50, "inputs": 32, "hidden": 128, "chunk": 512}
    train = {"rows": 2048, "seq": 50, "inputs": 32, "hidden": 128, "chunk": 256, "batch": 512}
    tiny = {"rows": 64, "seq": 2, "inputs": 2, "hidden": 4, "chunk": 16, "batch": 64}
    steps = 40
    if args.quick:
        score.update(rows=512, chunk=128)
        train.update(rows=256, chunk=64, batch=128)
        steps = 4

    rng = np.random.default_rng(0)
    x = rng.standard_normal((score["rows"], score["seq"], score["inputs"])).astype(np.float32)
    layer, _, _ = model(score["inputs"], score["hidden"])
    xd = da.from_array(x, chunks=(score["chunk"], -1, -1))
    results: dict[str, dict[str, float]] = {"score": {}, "train": {}, "tiny": {}}

    previous = lstm_fast.get_num_threads()
    tx = rng.standard_normal((train["batch"], train["seq"], train["inputs"])).astype(np.float32)
    tt = rng.standard_normal((train["batch"], 1)).astype(np.float32)
    for threads in (1, 2):
        lstm_fast.set_num_threads(threads)
        label = f"this process, {threads} engine thread{'s' if threads > 1 else ''}"
        seconds = best(lambda: layer(x, need_cache=False), repeats)
        results["score"][label] = score["rows"] / seconds
        step_layer, step_loss, step_opt = model(train["inputs"], train["hidden"])
        seconds = best(
            lambda m=(step_layer, step_loss, step_opt): local_step(*m, tx, tt), repeats * 3
        )
        results["train"][label] = 1.0 / seconds
    lstm_fast.set_num_threads(previous)

    for workers in (1, 2):
        c, client = cluster(workers)
        with c, client:
            label = f"Dask, {workers} worker{'s' if workers > 1 else ''} x 1 thread"
            client.compute(predict(layer, xd), sync=True)  # warm-up: imports, first fetch
            seconds = best(lambda c=client: c.compute(predict(layer, xd), sync=True), repeats)
            results["score"][label] = score["rows"] / seconds
            results["train"][label] = fit_rate(client, train, steps, repeats)
            results["tiny"][label] = fit_rate(client, tiny, steps, repeats)

    print(
        f"\nScoring: B = {score['rows']} sequences of T = {score['seq']}, I = {score['inputs']}, "
        f"H = {score['hidden']}, chunks of {score['chunk']} rows (float32)\n"
    )
    print("| where | sequences/s |\n|---|---|")
    for label, rate in results["score"].items():
        print(f"| {label} | {rate:,.0f} |")
    print(
        f"\nTraining: Adam steps on mini-batches of {train['batch']} from {train['rows']} rows, "
        f"chunks (shards) of {train['chunk']} rows, same sizes\n"
    )
    print("| where | steps/s | ms/step |\n|---|---|---|")
    for label, rate in results["train"].items():
        print(f"| {label} | {rate:.1f} | {1000 / rate:.1f} |")
    print(
        f"\nScheduler cost: the same training step with H = {tiny['hidden']}, "
        f"T = {tiny['seq']}, {tiny['rows'] // tiny['chunk']} shards of {tiny['chunk']} rows\n"
    )
    print("| where | steps/s | ms/step |\n|---|---|---|")
    for label, rate in results["tiny"].items():
        print(f"| {label} | {rate:.1f} | {1000 / rate:.1f} |")
    params = sum(p.nbytes for p in model(train["inputs"], train["hidden"])[0].parameters.values())
    print(f"\nBytes of the weights (and of one gradient) of the training model: {params:,}")


if __name__ == "__main__":
    main()

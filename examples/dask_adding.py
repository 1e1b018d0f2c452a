"""Train and score on a Dask cluster: the adding problem with lstm_fast.distributed.

    pip install "lstm_fast[dask]"
    python examples/dask_adding.py            # about a minute on 2 cores
    python examples/dask_adding.py --quick    # seconds: a smoke run

Starts a LocalCluster on this machine (--workers processes of one thread each,
on 127.0.0.1, no dashboard), trains an LSTM with a linear read-out on the adding
problem (the sum of the two marked numbers of a sequence, read from the last
step) with data-parallel Adam and a progress bar, then scores fresh sequences
with lstm_fast.distributed.predict and checks the scores against the layer's own
forward. For a cluster of many machines, replace the LocalCluster by the address
of its scheduler: Client("tcp://scheduler:8786").
"""

from __future__ import annotations

import argparse
import time

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster
from lstm_fast import LSTM
from lstm_fast.demo import adding_batch
from lstm_fast.distributed import DataParallelTrainer, Linear, MSELoss, predict
from lstm_fast.optim import Adam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--rows", type=int, default=4096, help="training sequences")
    parser.add_argument("--chunk", type=int, default=512, help="sequences per Dask chunk")
    parser.add_argument("--seq-len", type=int, default=50, help="steps per sequence")
    parser.add_argument("--hidden", type=int, default=32, help="hidden size")
    parser.add_argument("--epochs", type=int, default=40, help="passes over the data")
    parser.add_argument("--batch-size", type=int, default=256, help="sequences per step")
    parser.add_argument("--quick", action="store_true", help="a few seconds, nothing learned")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.chunk, args.seq_len, args.epochs = 256, 64, 10, 2

    rng = np.random.default_rng(0)
    x, target = adding_batch(rng, args.rows, args.seq_len)  # (B, T, 2), (B, 1)
    x_test, target_test = adding_batch(rng, args.rows // 4, args.seq_len)

    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # health routes, loopback
    )
    with cluster, Client(cluster) as client:
        print(
            f"cluster: {len(client.nthreads())} workers, {sum(client.nthreads().values())} threads"
        )
        layer = LSTM(2, args.hidden, batch_first=True, seed=0)
        head = Linear(args.hidden, 1, seed=0)  # the read-out, trained with the layer
        loss = MSELoss(on="last", readout=head)
        optimizer = Adam({**layer.parameters, **loss.parameters}, lr=0.01)
        trainer = DataParallelTrainer(layer, loss, optimizer, client, clip_grad_norm=1.0)

        started = time.perf_counter()
        trainer.fit(
            da.from_array(x, chunks=(args.chunk, -1, -1)),
            da.from_array(target, chunks=(args.chunk, -1)),
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=0,
        )
        print(
            f"trained: {len(trainer.history)} steps in {time.perf_counter() - started:.1f} s, "
            f"loss {trainer.history[0]:.4f} -> {trainer.epoch_losses[-1]:.4f} "
            f"(predicting the mean gives 0.167)"
        )

        # Scoring: the last step's output of every test sequence, then the read-out.
        y = predict(layer, da.from_array(x_test, chunks=(args.chunk, -1, -1)))
        last = client.compute(y[:, -1, :], sync=True)
        pred = head(last)
        mse = float(np.mean((pred - target_test) ** 2))
        same = np.array_equal(last, layer(x_test, need_cache=False)[0][:, -1, :])
        print(f"scored {len(x_test)} fresh sequences: MSE {mse:.4f}; equal to forward: {same}")


if __name__ == "__main__":
    main()

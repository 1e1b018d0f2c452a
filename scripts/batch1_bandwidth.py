"""How close the batch-1 recurrence comes to the read bandwidth of the cores.

    python scripts/batch1_bandwidth.py [--hidden 64,128,256] [--threads N]

At batch 1 each time step reads the packed ``w_hh`` once (4·Hp·H floats), so its
limit is how fast a core streams that many bytes from its cache. This script
measures both on this machine, in one process:

- the marginal cost of one step, ``(t(T=1500) - t(T=500)) / 1000`` of a forward
  with prepared weights and input size 1 (so the input projection vanishes),
  minimum of repeats; with one engine thread t is the process's CPU time, which
  a shared machine's preemptions do not inflate (wall-clock time otherwise);
- the read bandwidth of one core from a buffer of each core's share of the
  panels (``_core.read_bandwidth``: vector loads over the buffer again and
  again, the fastest pass), measured on every core at once;

and prints µs and bytes per step per core and their ratio.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import lstm_fast
import numpy as np
from lstm_fast import _core
from lstm_fast.benchmark import cpu_model, on_threads


def per_step_seconds(hidden: int, repeats: int, clock: Callable[[], float]) -> float:
    rng = np.random.default_rng(0)
    k = 1 / np.sqrt(hidden)
    prepared = lstm_fast.prepare_weights(
        rng.uniform(-k, k, (4 * hidden, 1)), rng.uniform(-k, k, (4 * hidden, hidden)),
        dtype=np.float32,
    )  # fmt: skip
    short = rng.standard_normal((500, 1, 1)).astype(np.float32)
    long = rng.standard_normal((1500, 1, 1)).astype(np.float32)

    def best(x: np.ndarray) -> float:
        prepared.forward(x, need_cache=False)  # warm-up: packs, faults pages in
        times = []
        for _ in range(repeats):
            t0 = clock()
            prepared.forward(x, need_cache=False)
            times.append(clock() - t0)
        return min(times)

    return (best(long) - best(short)) / 1000


def bandwidth_on_threads(threads: int, nbytes: int, seconds: float) -> float:
    """Per-core read bandwidth (bytes/s, the slowest core) with every core reading."""
    return min(on_threads(threads, lambda: _core.read_bandwidth(nbytes, seconds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", default="64,128,256", help="hidden sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=lstm_fast.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    lstm_fast.set_num_threads(args.threads)
    threads = lstm_fast.get_num_threads()
    clock = time.process_time if threads == 1 else time.perf_counter
    print(f"CPU: {cpu_model()}; ISA {lstm_fast.get_isa()}; {threads} engine thread(s)")
    print(
        "| H | w_hh panels | µs/step | bytes/step/core | GB/s per core "
        "| read bandwidth per core | share |"
    )
    print("|---|---|---|---|---|---|---|")
    for hidden in (int(h) for h in args.hidden.split(",")):
        padded = -(-hidden // 16) * 16
        panels = 4 * padded * hidden * 4  # float32
        share = panels // threads
        step = per_step_seconds(hidden, args.repeats, clock)
        limit = bandwidth_on_threads(threads, share, 0.3)
        rate = share / step
        print(
            f"| {hidden} | {panels / 1024:.0f} KiB | {step * 1e6:.2f} | {share / 1024:.0f} KiB "
            f"| {rate / 1e9:.1f} | {limit / 1e9:.1f} GB/s | {100 * rate / limit:.0f} % |"
        )


if __name__ == "__main__":
    main()

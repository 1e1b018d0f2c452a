"""A/B speed of two builds of lstm_fast in one process, calls interleaved.

    # a copy of the old build's package, renamed so that both can be imported:
    python scripts/ab_speed.py --base lstm_fast_base --path /tmp/old   # PYTHONPATH for it

For each shape, forward and forward + backward of both builds run in turns
(A, B, A, B, ...) so that the machine's noise falls on both alike; the table
gives the minimum and the median of the repeats and the ratio old / new (above 1:
the new build is faster). The standard shapes are those of the throughput table
(float32, time-major, one layer); ``--shapes`` picks some, ``--extra`` adds a few
off the standard grid (wide input, long sequence, H not a multiple of 16).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np
from lstm_fast import benchmark

# (B, T, I, H): the standard shapes, and a few off the grid
SHAPES = {
    name: (s.batch, s.steps, s.input_size, s.hidden_size) for name, s in benchmark.SHAPES.items()
}
EXTRA = {
    "wide-input": (8, 50, 1024, 64),
    "long": (4, 1000, 32, 64),
    "H=100": (32, 50, 100, 100),
    "step": (1, 1, 256, 256),
}


def _problem(b: int, t: int, i: int, h: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    k = 1 / np.sqrt(h)
    f = np.float32
    return {
        "x": rng.standard_normal((t, b, i), dtype=f),
        "w_ih": rng.uniform(-k, k, (4 * h, i)).astype(f),
        "w_hh": rng.uniform(-k, k, (4 * h, h)).astype(f),
        "b_ih": rng.uniform(-k, k, 4 * h).astype(f),
        "b_hh": rng.uniform(-k, k, 4 * h).astype(f),
        "dy": rng.standard_normal((t, b, h), dtype=f),
    }


def _calls(lf: Any, p: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    args = (p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])

    def fwd() -> Any:
        return lf.forward(*args, need_cache=False)

    def fwd_bwd() -> Any:
        out = lf.forward(*args)
        return lf.backward(out.cache, p["dy"])

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def _time(fn: Callable[[], Any], budget: float) -> float:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    n = max(1, int(budget / max(dt, 1e-7)))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="lstm_fast_base", help="module name of the old build")
    parser.add_argument("--new", default="lstm_fast", help="module name of the new build")
    parser.add_argument("--path", action="append", default=[], help="prepended to sys.path")
    parser.add_argument("--shapes", default="S,M,L", help="comma-separated standard shapes")
    parser.add_argument("--extra", action="store_true", help="also the off-grid shapes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.15, help="seconds per timing")
    args = parser.parse_args()
    sys.path[:0] = args.path
    old, new = importlib.import_module(args.base), importlib.import_module(args.new)
    shapes = {name: SHAPES[name] for name in args.shapes.split(",") if name}
    if args.extra:
        shapes.update(EXTRA)
    print(f"old {old.__file__}\nnew {new.__file__}")
    print(f"ISA {new.get_isa()}, threads {new.get_num_threads()}, repeats {args.repeats}\n")
    print("| shape | pass | old min ms | new min ms | old/new (min) | old/new (median) |")
    print("|---|---|---|---|---|---|")
    for name, shape in shapes.items():
        p = _problem(*shape)
        a, b = _calls(old, p), _calls(new, p)
        for pass_ in a:
            times: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(args.repeats):
                times["old"].append(_time(a[pass_], args.budget))
                times["new"].append(_time(b[pass_], args.budget))
            mo, mn = min(times["old"]), min(times["new"])
            med = statistics.median(times["old"]) / statistics.median(times["new"])
            print(
                f"| {name} {shape} | {pass_} | {mo * 1e3:.3f} | {mn * 1e3:.3f} "
                f"| {mo / mn:.3f} | {med:.3f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

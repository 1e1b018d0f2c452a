"""Each variant of the LSTM against the plain LSTM, interleaved in one process.

    python scripts/variants_speed.py [--shapes S,M,L] [--repeats 20] [--threads 1]

For each standard shape, the plain forward and each variant's forward run in
turns (plain, variant, plain, variant, ...) so that a noisy machine's drift
falls on both alike; the same for forward + backward. Times are the process's
CPU time per call (on one thread this ignores the time the process is not
scheduled), min / median over the repeats, and the variant / plain ratios of
both. Variants: zoneout 0.1 on h and c, recurrent dropout 0.1, weight drop 0.1
(training mode, masks from a seed; forward without a cache), the LayerNorm
LSTM, a projection P = H / 2, and recompute with checkpoint = 10 (forward + backward only).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import lstm_fast
import numpy as np
from lstm_fast import benchmark, functional

VARIANTS: dict[str, Callable[[int, int, np.random.Generator], dict[str, Any]]] = {
    "zoneout 0.1": lambda i, h, rng: {"zoneout": 0.1, "seed": 1},
    "recurrent dropout 0.1": lambda i, h, rng: {"recurrent_dropout": 0.1, "seed": 1},
    "weight drop 0.1": lambda i, h, rng: {"weight_drop": 0.1, "seed": 1},
    "layer norm": lambda i, h, rng: {"layer_norm": True},
    "projection P=H/2": lambda i, h, rng: {
        "w_hr": (rng.standard_normal((h // 2, h)) / np.sqrt(h)).astype(np.float32),
        "w_hh": (rng.standard_normal((4 * h, h // 2)) / np.sqrt(h)).astype(np.float32),
    },
    "checkpoint 10": lambda i, h, rng: {"checkpoint": 10},
}


def _cpu_ms(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1e3


def _calls(args: tuple, extra: dict[str, Any], dy_shape: tuple) -> tuple[Callable, Callable]:
    dy = np.ones(dy_shape, dtype=np.float32)
    if "w_hh" in extra:  # the projection's recurrent weights are (4H, P)
        args = args[:2] + (extra["w_hh"],) + args[3:]
        extra = {k: v for k, v in extra.items() if k != "w_hh"}
    fwd_extra = {k: v for k, v in extra.items() if k != "checkpoint"}

    def forward() -> Any:
        return functional.forward(*args, need_cache=False, **fwd_extra)

    def forward_backward() -> Any:
        out = functional.forward(*args, **extra)
        return functional.backward(
            out.cache, dy if out.y.shape == dy.shape else np.ones_like(out.y)
        )

    return forward, forward_backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="S,M,L")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    lstm_fast.set_num_threads(args.threads)
    print(
        f"lstm_fast {lstm_fast.__version__}, {args.threads} thread(s), process CPU time, ms, "
        f"min / median of {args.repeats}; ratio = variant / plain"
    )
    head = ("shape", "variant", "pass", "plain", "variant", "ratio min", "median")
    print("{:5s} {:22s} {:8s} {:>17s} {:>17s} {:>9s} {:>7s}".format(*head))
    for name in args.shapes.split(","):
        s = benchmark.SHAPES[name]
        b, t, i, h = s.batch, s.steps, s.input_size, s.hidden_size
        rng = np.random.default_rng(0)
        k = 1 / np.sqrt(h)
        x = rng.standard_normal((t, b, i)).astype(np.float32)
        w_ih = rng.uniform(-k, k, (4 * h, i)).astype(np.float32)
        w_hh = rng.uniform(-k, k, (4 * h, h)).astype(np.float32)
        b_ih = rng.uniform(-k, k, 4 * h).astype(np.float32)
        b_hh = rng.uniform(-k, k, 4 * h).astype(np.float32)
        base = (x, w_ih, w_hh, b_ih, b_hh)
        plain = _calls(base, {}, (t, b, h))
        for vname in args.variants.split(","):
            extra = VARIANTS[vname](i, h, rng)
            variant = _calls(base, extra, (t, b, h))
            for p, pass_ in enumerate(("fwd", "fwd+bwd")):
                if pass_ == "fwd" and "checkpoint" in extra:
                    continue
                a, v = plain[p], variant[p]
                a(), v()
                ta, tv = [], []
                for _ in range(args.repeats):
                    ta.append(_cpu_ms(a))
                    tv.append(_cpu_ms(v))
                ma, mv = statistics.median(ta), statistics.median(tv)
                print(
                    f"{name:5s} {vname:22s} {pass_:8s} {min(ta):8.2f} / {ma:6.2f} "
                    f"{min(tv):8.2f} / {mv:6.2f} {min(tv) / min(ta):9.2f} {mv / ma:7.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

"""bf16 inference against float32: speed and accuracy.

    python scripts/bf16_bench.py [--threads 1 2] [--repeats 9] [--shapes S M ...]
                                 [--no-accuracy] [--no-speed]

Speed: forward without a cache of one layer over prepared weights (the packing
is not timed), float32 and bfloat16 weights, and PyTorch's nn.LSTM in float32 and
bfloat16 (``model.bfloat16()``, bf16 input) under ``torch.inference_mode`` where
it runs (its error is printed where it does not). Calls run in turns (A, B, C, D,
A, ...) so the machine's noise falls on all alike; the time is the process CPU
time at 1 thread, the wall time above; min and median of the repeats.

Accuracy: max and mean |bf16 - float32| of y and h_n, our engine on both, on the
standard shapes and on the cases of the real-world suite (lstm_fast.suite, full
sizes, forward only).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import lstm_fast
import numpy as np
from lstm_fast import benchmark, suite

# (B, T, I, H): the standard shapes, and batch 1 over long sequences, where the
# recurrence streams w_hh from L2/L3 every step.
SHAPES = {
    **{n: (s.batch, s.steps, s.input_size, s.hidden_size) for n, s in benchmark.SHAPES.items()},
    "b1-256": (1, 2000, 256, 256),
    "b1-512": (1, 1000, 512, 512),
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
    }


def _torch_calls(p: dict[str, np.ndarray], threads: int) -> dict[str, Callable[[], Any] | str]:
    try:
        import torch
    except ImportError as e:
        return {"torch f32": f"not installed ({e})", "torch bf16": "not installed"}
    torch.set_num_threads(threads)
    h = p["w_hh"].shape[1]
    calls: dict[str, Callable[[], Any] | str] = {}
    for name, dtype in (("torch f32", torch.float32), ("torch bf16", torch.bfloat16)):
        model = torch.nn.LSTM(p["x"].shape[2], h)
        with torch.no_grad():
            model.weight_ih_l0.copy_(torch.from_numpy(p["w_ih"]))
            model.weight_hh_l0.copy_(torch.from_numpy(p["w_hh"]))
            model.bias_ih_l0.copy_(torch.from_numpy(p["b_ih"]))
            model.bias_hh_l0.copy_(torch.from_numpy(p["b_hh"]))
        model = model.to(dtype)
        x = torch.from_numpy(p["x"]).to(dtype)

        def call(model: Any = model, x: Any = x) -> Any:
            with torch.inference_mode():
                return model(x)[0]

        try:
            call()
            calls[name] = call
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            calls[name] = f"fails: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return calls


def speed(names: list[str], threads: list[int], repeats: int) -> None:
    print("| shape (B,T,I,H) | threads | ours f32 min / med ms | ours bf16 min / med ms "
          "| f32/bf16 (min) | torch f32 min / med ms | torch bf16 min / med ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for n in threads:
        lstm_fast.set_num_threads(n)
        for name in names:
            b, t, i, h = SHAPES[name]
            p = _problem(b, t, i, h)
            mats = (p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
            f32 = lstm_fast.prepare_weights(*mats)
            bf16 = lstm_fast.prepare_weights(*mats, weight_dtype="bfloat16")
            calls: dict[str, Callable[[], Any] | str] = {
                "f32": lambda f32=f32, x=p["x"]: f32.forward(x, need_cache=False),
                "bf16": lambda bf16=bf16, x=p["x"]: bf16.forward(x, need_cache=False),
                **_torch_calls(p, n),
            }
            runnable = {k: c for k, c in calls.items() if callable(c)}
            clock = time.process_time if n == 1 else time.perf_counter
            times: dict[str, list[float]] = {k: [] for k in runnable}
            for c in runnable.values():
                c()  # warm: packing, first touch
            for _ in range(repeats):
                for k, c in runnable.items():
                    t0 = clock()
                    c()
                    times[k].append(clock() - t0)

            cells = {
                k: str(c) if k not in times
                else f"{min(times[k]) * 1e3:.2f} / {statistics.median(times[k]) * 1e3:.2f}"
                for k, c in calls.items()
            }  # fmt: skip
            ratio = min(times["f32"]) / min(times["bf16"])
            print(f"| {name} ({b},{t},{i},{h}) | {n} | {cells['f32']} | {cells['bf16']} | "
                  f"{ratio:.2f} | {cells['torch f32']} | {cells['torch bf16']} |",
                  flush=True)  # fmt: skip


def _err(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return f"{d.max():.2e} / {d.mean():.2e}"


def accuracy(names: list[str]) -> None:
    print("| case | y max / mean abs err | h_n max / mean abs err |")
    print("|---|---|---|")
    for name in names:
        b, t, i, h = SHAPES[name]
        p = _problem(b, t, i, h)
        args = (p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
        ref = lstm_fast.forward(*args, need_cache=False)
        got = lstm_fast.forward(*args, need_cache=False, weight_dtype="bfloat16")
        print(f"| {name} ({b},{t},{i},{h}) | {_err(got.y, ref.y)} | {_err(got.h_n, ref.h_n)} |",
              flush=True)  # fmt: skip
    for case in suite.CASES:
        m = suite._build_model(case)
        y_ref = y_bf = m.x
        for layer in m.layers:
            y_ref, (h_ref, _) = layer.forward(y_ref, lengths=m.lengths, need_cache=False)
            y_bf, (h_bf, _) = layer.forward(
                y_bf, lengths=m.lengths, need_cache=False, weight_dtype="bfloat16"
            )
        print(f"| suite {case.name} ({case.describe()}) | {_err(y_bf, y_ref)} | "
              f"{_err(h_bf, h_ref)} |", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--shapes", nargs="+", default=["S", "M", "L", "b1-256", "b1-512"])
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    a = ap.parse_args()
    print(f"lstm_fast {lstm_fast.__version__} isa={lstm_fast.get_isa()}")
    if not a.no_speed:
        speed(a.shapes, a.threads, a.repeats)
    if not a.no_accuracy:
        accuracy(a.shapes)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Plot GFLOP/s per shape and implementation, forward and forward+backward.

From a pytest-benchmark JSON file::

    pytest benches --benchmark-enable --benchmark-json=bench.json
    python scripts/plot_benchmarks.py bench.json -o benchmarks.png

or, with no file, measure here and now (same runners as ``python -m lstm_fast``)::

    python scripts/plot_benchmarks.py --shapes S,M -o benchmarks.png

Needs matplotlib (``pip install ".[plot]"``). The dashed line is the NumPy sgemm
rate, the machine's practical limit, when it was measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lstm_fast import benchmark

# (shape, pass, impl) -> GFLOP/s
Rates = dict[tuple[str, str, str], float]


def rates_from_json(path: Path) -> tuple[Rates, float | None, str]:
    """Rates from a pytest-benchmark JSON written by ``benches/`` (its extra_info)."""
    data = json.loads(path.read_text())
    rates: Rates = {}
    sgemm: float | None = None
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        rate = info.get("gflops")
        if rate is None and "gflop" in info:
            rate = info["gflop"] / bench["stats"]["min"]
        if rate is None:
            continue
        if info.get("impl") == "numpy":
            sgemm = max(sgemm or 0.0, rate)
        elif {"shape", "pass_", "impl"} <= info.keys():
            rates[(info["shape"], info["pass_"], info["impl"])] = rate
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("processor", "")
    threads = next(
        (
            b["extra_info"]["threads"]
            for b in data.get("benchmarks", [])
            if "threads" in b.get("extra_info", {})
        ),
        None,
    )
    title = f"{cpu}, {threads} threads" if threads else str(cpu)
    return rates, sgemm, title


def rates_measured(
    shapes: list[benchmark.Shape], threads: int | None, repeats: int
) -> tuple[Rates, float, str]:
    import lstm_fast

    if threads is not None:
        lstm_fast.set_num_threads(threads)
    threads = lstm_fast.get_num_threads()
    print("sgemm 2048^3 ...", end=" ", flush=True)
    sgemm = benchmark.sgemm_gflops(2048)
    print(f"{sgemm:.0f} GFLOP/s", flush=True)
    rates: Rates = {}
    for shape in shapes:
        problem = benchmark.make_problem(shape)
        runners, unavailable = benchmark.make_runners(problem, benchmark.IMPLS, threads)
        for impl, why in unavailable.items():
            print(f"  skipping {impl}: {why}", flush=True)
        for pass_ in benchmark.PASSES:
            fns = {i: r.for_pass(pass_) for i, r in runners.items()}
            timings = benchmark.time_interleaved(
                {i: fn for i, fn in fns.items() if fn is not None}, repeats=repeats, rounds=2
            )
            for impl, timing in timings.items():
                rate = benchmark.flop(shape, pass_) / timing.best / 1e9
                rates[(shape.name, pass_, impl)] = rate
                print(f"  {shape.name:<3} {pass_:<8} {impl:<12} {rate:8.1f} GFLOP/s", flush=True)
    return rates, sgemm, f"lstm_fast {lstm_fast.get_isa()}, {threads} threads"


def _tick(shape: benchmark.Shape) -> str:
    return (
        f"{shape.name}\nB={shape.batch} T={shape.steps}\nI={shape.input_size} H={shape.hidden_size}"
    )


def plot(rates: Rates, sgemm: float | None, title: str, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit('matplotlib is needed for the plot: pip install ".[plot]"')

    shapes = [s for s in benchmark.SHAPES if any(k[0] == s for k in rates)]
    impls = [i for i in benchmark.IMPLS if any(k[2] == i for k in rates)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    width = 0.8 / max(1, len(impls))
    for ax, pass_ in zip(axes, benchmark.PASSES):
        for j, impl in enumerate(impls):
            xs, ys = [], []
            for k, shape in enumerate(shapes):
                if (shape, pass_, impl) in rates:
                    xs.append(k + (j - (len(impls) - 1) / 2) * width)
                    ys.append(rates[(shape, pass_, impl)])
            bars = ax.bar(xs, ys, width, label=benchmark.IMPL_LABELS[impl])
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        if sgemm:
            ax.axhline(sgemm, color="gray", linestyle="--", linewidth=1)
            ax.text(-0.45, sgemm, f" NumPy sgemm {sgemm:.0f}", va="bottom", fontsize=8)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels([_tick(benchmark.SHAPES[s]) for s in shapes], fontsize=8)
        ax.set_title("forward" if pass_ == "fwd" else "forward + backward")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("GFLOP/s (higher is better)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"LSTM float32, time-major, one layer: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="?", type=Path, help="pytest-benchmark JSON file")
    parser.add_argument("-o", "--out", type=Path, default=Path("benchmarks.png"))
    parser.add_argument("--shapes", default="S,M,L,XL", help="when measuring: which shapes")
    parser.add_argument(
        "--threads", type=benchmark.positive_int, default=None, help="when measuring"
    )
    parser.add_argument("--repeats", type=benchmark.positive_int, default=5, help="when measuring")
    args = parser.parse_args(argv)
    if args.json is not None:
        rates, sgemm, title = rates_from_json(args.json)
        if not rates:
            sys.exit(
                f"{args.json}: no benchmark with GFLOP/s in it (was it run with "
                "--benchmark-enable?)"
            )
    else:
        try:
            shapes = benchmark.parse_shapes(args.shapes)
        except ValueError as exc:
            parser.error(str(exc))
        rates, measured, title = rates_measured(shapes, args.threads, args.repeats)
        sgemm = measured
    plot(rates, sgemm, title, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""pytest-benchmark suites: lstm_fast against its peers on the standard shapes.

Real measurements (a few minutes on 2 cores)::

    pytest benches --benchmark-enable --benchmark-json=bench.json
    python scripts/plot_benchmarks.py bench.json        # -> benchmarks.png

Every benchmark is one (shape, implementation, pass) on the float32, time-major,
one-layer standard shapes of ``lstm_fast.benchmark``, all implementations with
the same weights, input and thread count (``lstm_fast.get_num_threads()``, set by
``LSTM_FAST_NUM_THREADS``). The rate is stored as ``extra_info["gflops"]`` (from the
fastest round) next to ``extra_info["gflop"]``, the work of one call; a GFLOP/s
table is printed at the end of the run.

Smoke mode: the normal test run has ``--benchmark-disable`` (pyproject addopts), and
then each benchmark calls its function once, with the shape's B, I and H but only
``SMOKE_STEPS`` time steps (and a 256³ sgemm), so the folder costs seconds while
still exercising every code path and every peer.

A peer that is not importable (PyTorch, ONNX Runtime) is skipped; the NumPy
reference is not run at the shapes of ``lstm_fast.benchmark.REFERENCE_SKIP`` (XL: too slow
to be worth waiting for).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import lstm_fast
import numpy as np
import pytest
from lstm_fast import benchmark as harness  # `benchmark` is pytest-benchmark's fixture

SMOKE_STEPS = 2
# Seconds of timed rounds per benchmark when enabled (after one warm-up call).
ROUND_SECONDS = float(os.environ.get("LSTM_FAST_BENCH_SECONDS", "2"))
MIN_ROUNDS, MAX_ROUNDS = 3, 200

SHAPE_NAMES = list(harness.SHAPES)

# (shape, pass, impl) -> GFLOP/s of the fastest round, for the closing table.
_RATES: dict[tuple[str, str, str], float] = {}


_PROBLEMS: dict[tuple[str, int], harness.Problem] = {}


def _problem(shape_name: str, smoke: bool) -> harness.Problem:
    shape = harness.SHAPES[shape_name]
    if smoke:
        shape = shape._replace(steps=SMOKE_STEPS)
    key = (shape.name, shape.steps)
    if key not in _PROBLEMS:
        _PROBLEMS.clear()  # cases are ordered by shape: keep one at a time
        _PROBLEMS[key] = harness.make_problem(shape)
    return _PROBLEMS[key]


def run_pedantic(benchmark: Any, fn: Callable[[], Any]) -> None:
    """Warm up once, choose the number of rounds from that call's time, time them."""
    if benchmark.disabled:
        benchmark(fn)  # calls fn once
        return
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, math.ceil(ROUND_SECONDS / max(first, 1e-6))))
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0, iterations=1)


def record_rate(benchmark: Any, key: tuple[str, str, str], work: float) -> None:
    benchmark.extra_info["gflop"] = work / 1e9
    if benchmark.stats is not None:
        rate = work / benchmark.stats.stats.min / 1e9
        benchmark.extra_info["gflops"] = rate
        _RATES[key] = rate


@pytest.fixture
def measure(benchmark: Any) -> Callable[[str, str, str], None]:
    """``measure(shape_name, impl, pass_)`` benchmarks one case (or skips it)."""

    def run(shape_name: str, impl: str, pass_: str) -> None:
        if impl == "reference" and shape_name in harness.REFERENCE_SKIP:
            pytest.skip(f"the NumPy reference is not run at {shape_name} (too slow)")
        problem = _problem(shape_name, smoke=benchmark.disabled)
        threads = lstm_fast.get_num_threads()
        try:
            runner = harness.make_runner(impl, problem, threads)
        except harness.PeerUnavailable as exc:
            pytest.skip(str(exc))
        fn = runner.for_pass(pass_)
        if fn is None:
            pytest.skip(f"{impl} has no {pass_}")
        shape = problem.shape
        benchmark.group = f"{pass_} {shape_name}"
        benchmark.extra_info.update(
            impl=impl,
            shape=shape_name,
            pass_=pass_,
            batch=shape.batch,
            steps=shape.steps,
            input_size=shape.input_size,
            hidden_size=shape.hidden_size,
            threads=threads,
            isa=lstm_fast.get_isa(),
        )
        run_pedantic(benchmark, fn)
        record_rate(benchmark, (shape_name, pass_, impl), harness.flop(shape, pass_))

    return run


@pytest.fixture
def measure_sgemm(benchmark: Any) -> Callable[[int], None]:
    """``measure_sgemm(n)`` benchmarks a NumPy float32 n³ matmul (256³ in smoke mode)."""

    def run(n: int) -> None:
        if benchmark.disabled:
            n = 256
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty((n, n), dtype=np.float32)
        benchmark.group = "sgemm"
        benchmark.extra_info.update(impl="numpy", shape=f"sgemm{n}", pass_="matmul")
        run_pedantic(benchmark, lambda: np.matmul(a, b, out=out))
        record_rate(benchmark, (f"sgemm{n}", "matmul", "numpy"), 2.0 * n**3)

    return run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    sgemm = {k[0]: v for k, v in _RATES.items() if k[2] == "numpy"}
    rates = {k: v for k, v in _RATES.items() if k[2] != "numpy"}
    if not rates and not sgemm:
        return
    write = terminalreporter.write_line
    impls = [i for i in harness.IMPLS if any(k[2] == i for k in rates)]
    terminalreporter.section("GFLOP/s (fastest round; higher is better)")
    write(f"{'shape':<7}{'pass':<9}" + "".join(f"{harness.IMPL_LABELS[i]:>12}" for i in impls))
    rows = sorted({k[:2] for k in rates}, key=lambda r: (_order(r[0]), r[1]))
    for shape_name, pass_ in rows:
        cells = "".join(
            f"{rates[(shape_name, pass_, i)]:>12.1f}"
            if (shape_name, pass_, i) in rates
            else f"{'-':>12}"
            for i in impls
        )
        write(f"{shape_name:<7}{pass_:<9}{cells}")
    for name, rate in sgemm.items():
        write(f"NumPy {name} (the machine's practical limit): {rate:.1f}")


def _order(shape_name: str) -> int:
    return SHAPE_NAMES.index(shape_name) if shape_name in SHAPE_NAMES else len(SHAPE_NAMES)

"""The project's stress suite: lstm_fast used the way a careless or hostile user would.

    python scripts/stress.py                  the short form (tests/test_stress.py runs it, < 1 min)
    python scripts/stress.py --long           the long form, with a JSON and a markdown summary
    python scripts/stress.py --check NAME     only these checks (repeat --check for several)

Checks (each runs in a child process of its own, under a time limit, so that a
crash or a hang is reported as one instead of taking the suite down with it):

- ``concurrency``: 8 Python threads call ``forward``/``backward``, the cell and
  the ``LSTM`` layer at once while another thread flips ``set_num_threads``
  among 1..4; every result must be bitwise the single-threaded one.
- ``memory``: a long run of calls, valid and failing ones mixed (bad shapes,
  bad dtypes, bad lengths, wrong caches); every failing call must raise
  ``TypeError`` or ``ValueError``, every valid one give its first bits again;
  RSS (``/proc/self/statm``) must not grow after the warm-up, nor the number
  of threads (``/proc/self/status``).
- ``fork``: children made with ``os.fork`` and with multiprocessing's ``fork``
  and ``spawn`` start methods while other threads are inside the engine; each
  child must compute the parent's bits (which match the NumPy reference)
  within a time limit.
- ``alloc_limit``: under ``RLIMIT_AS``, calls of growing size; each must work
  or raise ``MemoryError``, and the process must live on and still compute.
- ``interrupt`` (long form): SIGINT during long calls; the figure is the time
  from the signal to ``KeyboardInterrupt``, which must come well under a
  second, with no engine thread left running and the engine usable after.
- ``bad_calls`` (long form): ``tests/test_bad_calls.py``, the generated sweep
  of bad input over every public function, with ``LSTM_FAST_STRESS_CALLS``
  calls (10 000 by default).
- ``wheel_matrix`` (long form): ``scripts/wheel_matrix``, the wheel installed
  into fresh CPython 3.9 ... 3.13 virtualenvs without Rust.

Every loop and every child process is bounded in time; nothing uses the
network except ``wheel_matrix`` (numpy from PyPI). The exit status is 1 when
any check failed. RELIABILITY.md gives the figures of a long run.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import multiprocessing
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import lstm_fast as lf
import numpy as np
from lstm_fast import reference

# The bits of a list of results (dtype, shape and bytes of each array), hashed as
# scripts/result_hashes.py hashes them; this folder is on sys.path when run as a script.
from result_hashes import _digest as digest

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20

# A fork while other threads run is what this suite tests on purpose.
warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)


# ---------------------------------------------------------------------------
# What every check measures with


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def proc_status(field: str) -> int:
    """A number from /proc/self/status (``Threads``, ``VmSize`` in kB, ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def threads_now() -> int:
    return proc_status("Threads")


def close_to(actual: Any, expected: Any, dtype: Any) -> bool:
    """The engine's result agrees with the reference's to rounding (the test suite's bound)."""
    tol = 2e-4 if np.dtype(dtype) == np.float32 else 1e-10
    expected = np.asarray(expected, np.float64)
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.max(np.abs(finite), initial=0.0)))
    return bool(np.allclose(np.asarray(actual, np.float64), expected, rtol=tol, atol=tol * scale))


def problem(T: int, B: int, I: int, H: int, dtype: Any, seed: int, lengths: bool = False) -> dict:  # noqa: E741
    """The arrays of one forward and backward call (time-major)."""
    rng = np.random.default_rng(seed)
    k = 1.5 / np.sqrt(H)
    p = {
        "x": rng.standard_normal((T, B, I)).astype(dtype),
        "w_ih": rng.uniform(-k, k, (4 * H, I)).astype(dtype),
        "w_hh": rng.uniform(-k, k, (4 * H, H)).astype(dtype),
        "b_ih": rng.uniform(-k, k, 4 * H).astype(dtype),
        "b_hh": rng.uniform(-k, k, 4 * H).astype(dtype),
        "h0": (rng.standard_normal((B, H)) * 0.5).astype(dtype),
        "c0": rng.standard_normal((B, H)).astype(dtype),
    }
    seeds = {
        "dy": rng.standard_normal((T, B, H)).astype(dtype),
        "dh_n": rng.standard_normal((B, H)).astype(dtype),
        "dc_n": rng.standard_normal((B, H)).astype(dtype),
    }
    extra = {}
    if lengths:
        lens = rng.integers(0, T + 1, B)
        lens[0], lens[-1] = T, 0
        extra["lengths"] = lens
    return {"args": p, "seeds": seeds, "extra": extra}


def run_functional(lib: Any, pr: dict, **options: Any) -> list[Any]:
    """forward then backward of ``lib`` (lstm_fast or its reference): every result."""
    out = lib.forward(**pr["args"], **pr["extra"], **options)
    grads = lib.backward(out.cache, **pr["seeds"])
    return [out.y, out.h_n, out.c_n, *grads]


def layer_runner(seed: int, **shape: Any) -> Callable[[], list[Any]]:
    """A runner owning its LSTM layer (a layer is one user's, not shared among threads)."""
    layer = lf.LSTM(shape["I"], shape["H"], num_layers=shape.get("L", 1),
                    bidirectional=shape.get("bidirectional", False), seed=seed)  # fmt: skip
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape["T"], shape["B"], shape["I"])).astype(np.float32)
    dy_cols = layer.hidden_size * layer.num_directions
    dy = rng.standard_normal((shape["T"], shape["B"], dy_cols)).astype(np.float32)

    def run() -> list[Any]:
        y, (h_n, c_n) = layer(x)
        dx = layer.backward(dy)
        return [y, h_n, c_n, dx, *[layer.grads[k] for k in sorted(layer.grads)]]

    return run


def cell_runner(seed: int) -> Callable[[], list[Any]]:
    pr = problem(1, 9, 12, 24, np.float64, seed)
    a = pr["args"]

    def run() -> list[Any]:
        cell = lf.cell_forward(a["x"][0], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"])
        grads = lf.cell_backward(cell.cache, pr["seeds"]["dh_n"], pr["seeds"]["dc_n"])
        return [cell.h_new, cell.c_new, *grads]

    return run


def functional_runner(pr: dict, **options: Any) -> Callable[[], list[Any]]:
    return lambda: run_functional(lf, pr, **options)


# The calls the concurrency and fork checks make. Small batches with H >= 64
# so that two or more engine threads split the hidden units (a team at the
# barrier), larger ones so that they split the batch; a bidirectional layer
# whose two directions may run in two Python threads of their own.
def job_factories() -> list[tuple[str, Callable[[], Callable[[], list[Any]]]]]:
    small = problem(12, 3, 16, 96, np.float32, 1, lengths=True)
    large = problem(6, 40, 8, 40, np.float64, 2, lengths=True)
    return [
        ("forward+backward f32 B=3 H=96", lambda: functional_runner(small)),
        ("forward+backward f64 B=40 reverse", lambda: functional_runner(large, reverse=True)),
        (
            "LSTM 2 layers bidirectional",
            lambda: layer_runner(3, T=8, B=2, I=8, H=64, L=2, bidirectional=True),
        ),
        ("cell_forward+cell_backward", lambda: cell_runner(4)),
    ]


def join_all(threads: list[threading.Thread], seconds: float) -> list[str]:
    """Joins every thread within ``seconds`` in all; the names of those still running."""
    deadline = time.monotonic() + seconds
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


# ---------------------------------------------------------------------------
# (a) concurrency


def check_concurrency(p: dict) -> dict:
    factories = job_factories()
    lf.set_num_threads(1)
    expected = [digest(make()()) for _, make in factories]
    # The single-threaded bits are themselves right: a functional job against the reference.
    small = problem(12, 3, 16, 96, np.float64, 1, lengths=True)
    got, want = run_functional(lf, small), run_functional(reference, small)
    failures = []
    if not all(close_to(g, w, np.float64) for g, w in zip(got, want)):
        failures.append("forward+backward f64 B=3 H=96: the engine differs from the reference")

    stop = threading.Event()
    calls: Counter[str] = Counter()
    mismatches: list[str] = []
    errors: list[str] = []
    switches = [0]
    max_threads = [threads_now()]
    lock = threading.Lock()

    def worker(k: int) -> None:
        runners = [make() for _, make in factories]
        i = k
        try:
            while not stop.is_set():
                j = i % len(runners)
                got = digest(runners[j]())
                with lock:
                    calls[factories[j][0]] += 1
                    if got != expected[j]:
                        mismatches.append(f"thread {k}: {factories[j][0]}")
                i += 1
        except BaseException as e:  # a panic is a BaseException: report it, do not die
            with lock:
                errors.append(f"thread {k}: {type(e).__name__}: {e}")

    def flipper() -> None:
        n = 0
        while not stop.is_set():
            lf.set_num_threads(1 + n % p["flip_up_to"])
            n += 1
            switches[0] = n
            max_threads[0] = max(max_threads[0], threads_now())
            time.sleep(p["flip_every"])

    workers = [
        threading.Thread(target=worker, args=(k,), name=f"worker-{k}") for k in range(p["threads"])
    ]
    everyone = [*workers, threading.Thread(target=flipper, name="flipper")]
    for t in everyone:
        t.start()
    time.sleep(p["seconds"])
    stop.set()
    hung = join_all(everyone, 60)
    lf.set_num_threads(1)
    total = sum(calls.values())
    failures += mismatches[:10] + errors[:10]
    if hung:
        failures.append(f"threads still running 60 s after the stop: {hung}")
    if total < p["threads"]:
        failures.append(f"only {total} calls were made")
    if max_threads[0] > p["thread_bound"]:
        failures.append(f"{max_threads[0]} threads at once (bound {p['thread_bound']})")
    return {
        "failures": failures,
        "figures": {
            "python_threads": p["threads"],
            "seconds": p["seconds"],
            "calls": total,
            "calls_by_job": dict(calls),
            "mismatches": len(mismatches),
            "errors": len(errors),
            "set_num_threads_switches": switches[0],
            "max_threads": max_threads[0],
        },
    }


# ---------------------------------------------------------------------------
# (b) memory over many calls, failing ones included


def bad_calls() -> list[tuple[str, type, Callable[[], Any]]]:
    """Calls that must fail, with the exception type each must raise."""
    pr = problem(5, 4, 6, 8, np.float32, 7)
    a = pr["args"]
    cache = lf.forward(**a).cache
    layer = lf.LSTM(6, 8, seed=0)
    wrong = np.zeros((4 * 8, 7), np.float32)
    x_t, w_ih, w_hh, dy_bad = a["x"][0], a["w_ih"], a["w_hh"], np.zeros((5, 4, 3))
    return [
        ("w_hh of the wrong shape", ValueError, lambda: lf.forward(**{**a, "w_hh": wrong})),
        ("complex x", TypeError, lambda: lf.forward(**{**a, "x": a["x"].astype(np.complex64)})),
        ("object x", TypeError, lambda: lf.forward(**{**a, "x": a["x"].astype(object)})),
        ("string w_ih", TypeError, lambda: lf.forward(**{**a, "w_ih": "weights"})),
        ("2-D x", ValueError, lambda: lf.forward(**{**a, "x": a["x"][0]})),
        ("lengths > T", ValueError, lambda: lf.forward(**a, lengths=np.array([9, 1, 1, 1]))),
        ("negative lengths", ValueError, lambda: lf.forward(**a, lengths=np.array([-1, 1, 1, 1]))),
        ("float lengths", TypeError, lambda: lf.forward(**a, lengths=np.ones(4))),
        ("dy of the wrong shape", ValueError, lambda: lf.backward(cache, np.zeros((5, 4, 9)))),
        ("cache None", TypeError, lambda: lf.backward(None)),
        ("complex dh_n", TypeError, lambda: lf.backward(cache, None, np.zeros((4, 8), complex))),
        ("cell without state", TypeError, lambda: lf.cell_forward(x_t, None, None, w_ih, w_hh)),
        ("layer x of the wrong size", ValueError, lambda: layer(np.zeros((5, 4, 7), np.float32))),
        ("layer backward of a bad dy", ValueError, lambda: (layer(a["x"]), layer.backward(dy_bad))),
        ("set_num_threads(0)", ValueError, lambda: lf.set_num_threads(0)),
    ]  # fmt: skip


def good_calls() -> list[tuple[str, Callable[[], list[Any]]]]:
    pr = problem(7, 5, 6, 20, np.float32, 8, lengths=True)
    pr64 = problem(4, 3, 5, 9, np.float64, 9)
    layer = lf.LSTM(6, 10, num_layers=2, seed=1)
    x = np.random.default_rng(10).standard_normal((5, 3, 6)).astype(np.float32)

    def step() -> list[Any]:
        y_t, (h, c) = layer.step(x[0])
        return [y_t, h, c]

    return [
        ("forward+backward f32 lengths", functional_runner(pr)),
        ("forward f64 inference", lambda: list(lf.forward(**pr64["args"], need_cache=False)[:3])),
        ("LSTM forward+backward", layer_runner(11, T=5, B=3, I=6, H=10, L=2)),
        ("LSTM.step", step),
        ("cell_forward+cell_backward", cell_runner(12)),
    ]


def check_memory(p: dict) -> dict:
    failures: list[str] = []
    # The one bad call whose acceptance would spawn runaway threads is tried
    # first, alone, and undone at once if it is accepted (the pool is only
    # rebuilt at the next call).
    before = lf.get_num_threads()
    try:
        lf.set_num_threads(2**31)
        lf.set_num_threads(before)
        failures.append("set_num_threads(2**31) was accepted (no upper bound)")
    except ValueError:
        pass
    except BaseException as e:
        failures.append(f"set_num_threads(2**31) raised {type(e).__name__}, not ValueError: {e}")

    bad = bad_calls()
    good = good_calls()
    schedule = [("bad", i) for i in range(len(bad))] + [("good", i) for i in range(len(good))]
    expected = {i: digest(run()) for i, (_, run) in enumerate(good)}
    raised: Counter[str] = Counter()
    unexpected: list[str] = []
    wrong_bits: list[str] = []
    warmup = p["warmup"]
    rss: list[tuple[int, int]] = []
    threads: list[int] = []
    valid = failing = 0
    t0 = time.monotonic()
    for n in range(p["calls"]):
        kind, i = schedule[n % len(schedule)]
        if kind == "good":
            name, run = good[i]
            valid += 1
            if digest(run()) != expected[i]:
                wrong_bits.append(name)
        else:
            name, want, call = bad[i]
            failing += 1
            try:
                call()
                unexpected.append(f"{name}: accepted")
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # a PanicException is a BaseException
                raised[type(e).__name__] += 1
                if not isinstance(e, want):
                    unexpected.append(f"{name}: {type(e).__name__} (expected {want.__name__}): {e}")
        if n + 1 >= warmup and (n + 1 - warmup) % p["sample_every"] == 0:
            rss.append((n + 1, rss_bytes()))
            threads.append(threads_now())
    seconds = time.monotonic() - t0
    rss.append((p["calls"], rss_bytes()))
    threads.append(threads_now())
    start = rss[0][1]
    growth = rss[-1][1] - start
    peak = max(r for _, r in rss) - start
    if growth > p["max_growth_mb"] * MB:
        failures.append(
            f"RSS grew by {growth / MB:.1f} MB after the warm-up (bound {p['max_growth_mb']} MB)"
        )
    if max(threads) > threads[0] + 2:
        failures.append(f"threads grew from {threads[0]} to {max(threads)} after the warm-up")
    failures += sorted(set(unexpected))[:10]
    failures += [f"{name}: other bits than its first call" for name in sorted(set(wrong_bits))]
    return {
        "failures": failures,
        "figures": {
            "calls": p["calls"],
            "valid_calls": valid,
            "failing_calls": failing,
            "exceptions_by_type": dict(raised),
            "unexpected": len(unexpected),
            "wrong_bits": len(wrong_bits),
            "seconds": round(seconds, 1),
            "warmup_calls": warmup,
            "rss_after_warmup_mb": round(start / MB, 1),
            "rss_growth_mb": round(growth / MB, 2),
            "rss_peak_growth_mb": round(peak / MB, 2),
            "threads_after_warmup": threads[0],
            "threads_max": max(threads),
        },
    }


# ---------------------------------------------------------------------------
# (c) fork under load


def fork_job() -> list[str]:
    """What each child computes: a functional call and a layer call, as digests."""
    pr = problem(9, 5, 7, 72, np.float64, 21, lengths=True)
    return [
        digest(run_functional(lf, pr)),
        digest(layer_runner(22, T=6, B=2, I=5, H=64, bidirectional=True)()),
    ]


def _mp_child(conn: Any) -> None:
    """The body of a multiprocessing child (top level, so that 'spawn' can find it)."""
    try:
        conn.send(("ok", fork_job()))
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def _fork_once(method: str, timeout: float) -> tuple[str, Any, float]:
    """One child by ``method``; (outcome, payload, seconds), outcome ok|error|crash|hang."""
    t0 = time.monotonic()
    if method == "os.fork":
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: compute, report, leave without cleanup
            code = 0
            try:
                signal.alarm(int(timeout) + 5)  # a backstop should the parent be gone
                os.close(r)
                os.write(w, json.dumps(fork_job()).encode())
            except BaseException:
                code = 3
            finally:
                os._exit(code)
        os.close(w)
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            time.sleep(0.005)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hang", None, time.monotonic() - t0
        with os.fdopen(r, "rb") as f:
            data = f.read()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            return "crash" if code < 0 else "error", f"exit status {code}", time.monotonic() - t0
        return "ok", json.loads(data), time.monotonic() - t0

    ctx = multiprocessing.get_context(method)
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_mp_child, args=(child_end,))
    proc.start()
    child_end.close()
    try:
        if not parent_end.poll(timeout):  # poll() is True at EOF too: a dead child is seen below
            proc.kill()
            proc.join(5)
            return "hang", None, timeout
        outcome, payload = parent_end.recv()
    except EOFError:
        proc.join(5)
        return "crash", f"exit status {proc.exitcode}", time.monotonic() - t0
    finally:
        parent_end.close()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
        return "hang", "did not exit after reporting", time.monotonic() - t0
    return outcome, payload, time.monotonic() - t0


def check_fork(p: dict) -> dict:
    failures: list[str] = []
    lf.set_num_threads(2)
    expected = fork_job()
    pr = problem(9, 5, 7, 72, np.float64, 21, lengths=True)
    if not all(
        close_to(g, w, np.float64)
        for g, w in zip(run_functional(lf, pr), run_functional(reference, pr))
    ):
        failures.append("the parent's call differs from the reference")

    stop = threading.Event()
    load_calls: Counter[str] = Counter()
    load_errors: list[str] = []

    def load(name: str, make: Callable[[], Callable[[], list[Any]]]) -> None:
        run = make()
        try:
            while not stop.is_set():
                run()
                load_calls[name] += 1
        except BaseException as e:
            load_errors.append(f"{name}: {type(e).__name__}: {e}")

    loaders = [threading.Thread(target=load, args=job, name=job[0]) for job in job_factories()[:3]]
    for t in loaders:
        t.start()
    results: dict[str, Counter] = {}
    seconds: dict[str, list[float]] = {}
    try:
        time.sleep(0.05)
        for method, count in p["children"].items():
            results[method] = Counter()
            seconds[method] = []
            for _ in range(count):
                time.sleep(p["gap"])
                outcome, payload, dt = _fork_once(method, p["timeout"])
                if outcome == "ok" and payload != expected:
                    outcome = "wrong"
                results[method][outcome] += 1
                seconds[method].append(dt)
                if outcome != "ok":
                    failures.append(f"{method} child: {outcome} {payload or ''}".strip())
    finally:
        stop.set()
        hung = join_all(loaders, 60)
    if hung:
        failures.append(f"load threads still running 60 s after the stop: {hung}")
    failures += load_errors
    return {
        "failures": failures[:20],
        "figures": {
            "children": {m: dict(c) for m, c in results.items()},
            "child_seconds_max": {m: round(max(s), 2) for m, s in seconds.items() if s},
            "load_calls_meanwhile": sum(load_calls.values()),
            "engine_threads": 2,
        },
    }


# ---------------------------------------------------------------------------
# (d) an allocation limit


def _alloc_calls(
    limit: int,
) -> list[tuple[str, Callable[[int], Callable[[], Any]], list[int], Callable[[int], int]]]:
    """Kinds of call that grow, with their sizes and the bytes their outputs take.

    Inputs are made with np.zeros (mapped lazily), so that the limit is met by
    what the call allocates, not by its arguments.
    """
    f32 = np.float32

    def forward_t0(
        b: int,
    ) -> Callable[[], Any]:  # the engine's per-row state is ~48x its outputs at H = 1
        x, w_ih, w_hh = np.zeros((0, b, 1), f32), np.zeros((4, 1), f32), np.zeros((4, 1), f32)
        return lambda: lf.forward(x, w_ih, w_hh, need_cache=False)

    def forward_cache(b: int) -> Callable[[], Any]:
        x, w_ih, w_hh = np.zeros((2, b, 1), f32), np.zeros((4, 1), f32), np.zeros((4, 1), f32)
        return lambda: lf.forward(x, w_ih, w_hh)

    def forward_backward_h(h: int) -> Callable[[], Any]:
        x, w_ih, w_hh = (
            np.zeros((2, 2, 4), f32),
            np.zeros((4 * h, 4), f32),
            np.zeros((4 * h, h), f32),
        )
        return lambda: lf.backward(lf.forward(x, w_ih, w_hh).cache, np.ones((2, 2, h), f32))

    def layer_batch(b: int) -> Callable[[], Any]:
        layer, x = lf.LSTM(1, 1, seed=0), np.zeros((2, b, 1), f32)
        return lambda: layer.backward(layer(x)[0])

    top = 8 * limit  # well past the limit
    batches = [1 << k for k in range(10, 40) if (1 << k) * 4 * 3 <= top]
    hidden = [1 << k for k in range(6, 20) if 16 * (1 << k) ** 2 <= top]
    return [
        ("forward, T = 0, H = 1, batch B", forward_t0, batches, lambda b: 3 * 4 * b),
        ("forward with cache, T = 2, H = 1, batch B", forward_cache, batches, lambda b: 7 * 4 * b),
        ("forward + backward, hidden size H", forward_backward_h, hidden, lambda h: 16 * 4 * h * h),
        (
            "LSTM forward + backward, T = 2, H = 1, batch B",
            layer_batch,
            batches,
            lambda b: 10 * 4 * b,
        ),
    ]


def check_alloc_limit(p: dict) -> dict:
    lf.set_num_threads(p["engine_threads"])
    small = problem(4, 3, 5, 9, np.float32, 31)
    expected = digest(run_functional(lf, small))
    for _, make, sizes, _ in _alloc_calls(1 << 30):  # warm-up: every path once, small
        make(sizes[0])()
    vm_kb = proc_status("VmSize")
    limit = vm_kb * 1024 + p["margin_mb"] * MB
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    print(
        f"RLIMIT_AS = {limit / MB:.0f} MB (VmSize {vm_kb / 1024:.0f} MB + {p['margin_mb']} MB)",
        flush=True,
    )

    failures: list[str] = []
    rows: list[dict] = []
    outcomes: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for kind, make, sizes, out_bytes in _alloc_calls(p["margin_mb"] * MB):
        memory_errors = 0
        for size in sizes:
            # What a crash would leave behind: the call it died in.
            print(f"call: {kind}, size {size}", flush=True)
            try:
                call = make(size)
            except MemoryError:
                rows.append({"kind": kind, "size": size, "outcome": "inputs do not fit"})
                break
            t0 = time.monotonic()
            try:
                call()
                outcome = "works"
            except MemoryError as e:
                outcome = "MemoryError"
                memory_errors += 1
                messages[re.sub(r"\d+", "N", str(e))[:160]] += 1
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:
                outcome = type(e).__name__
                failures.append(f"{kind}, size {size}: {type(e).__name__}: {e}")
            del call
            outcomes[outcome] += 1
            mb, dt = round(out_bytes(size) / MB, 1), round(time.monotonic() - t0, 2)
            rows.append(
                {"kind": kind, "size": size, "outputs_mb": mb, "outcome": outcome, "seconds": dt}
            )
            if outcome == "MemoryError":
                # The engine must still compute after a failed allocation.
                if digest(run_functional(lf, small)) != expected:
                    failures.append(
                        f"{kind}, size {size}: a small call gives other bits after the MemoryError"
                    )
                if memory_errors >= 2:
                    break
    if outcomes["MemoryError"] == 0:
        failures.append("no call met the limit: the sizes do not grow far enough")
    # Per kind: the largest call that worked and the first that did not, with the
    # bytes of its outputs (what the engine costs beyond them shows here).
    by_kind = {}
    for kind, *_ in _alloc_calls(p["margin_mb"] * MB):
        mine = [r for r in rows if r["kind"] == kind]
        worked = [r for r in mine if r["outcome"] == "works"]
        failed = [r for r in mine if r["outcome"] == "MemoryError"]
        by_kind[kind] = {
            "largest working": f"{worked[-1]['size']} ({worked[-1]['outputs_mb']} MB of outputs)"
            if worked
            else None,
            "first MemoryError": f"{failed[0]['size']} ({failed[0]['outputs_mb']} MB of outputs)"
            if failed
            else None,
        }
    return {
        "failures": failures,
        "figures": {
            "limit_mb": round(limit / MB),
            "margin_mb": p["margin_mb"],
            "calls": sum(outcomes.values()),
            "outcomes": dict(outcomes),
            "memory_error_messages": dict(messages),
            "by_kind": by_kind,
            "calls_detail": rows,
        },
    }


# ---------------------------------------------------------------------------
# Interrupts (long form)


def _long_calls(seconds: float) -> list[tuple[str, Callable[[], Any]]]:
    """Calls that take about ``seconds`` each: T is scaled from a timed short call."""
    rng = np.random.default_rng(41)
    B, I, H = 2, 256, 512
    w_ih = (rng.standard_normal((4 * H, I)) * 0.05).astype(np.float32)
    w_hh = (rng.standard_normal((4 * H, H)) * 0.05).astype(np.float32)
    probe_t = 200
    x = rng.standard_normal((probe_t, B, I)).astype(np.float32)
    lf.forward(x, w_ih, w_hh, need_cache=False)
    t0 = time.perf_counter()
    lf.forward(x, w_ih, w_hh, need_cache=False)
    per_step = (time.perf_counter() - t0) / probe_t
    T = max(probe_t, int(seconds / per_step))
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    cache = lf.forward(x[: T // 2], w_ih, w_hh).cache  # backward costs about twice a forward
    dy = np.ones((T // 2, B, H), np.float32)
    layer = lf.LSTM(I, H, bidirectional=True, seed=0)  # two directions: two Python threads
    return [
        ("forward", lambda: lf.forward(x, w_ih, w_hh, need_cache=False)),
        ("forward with cache", lambda: lf.forward(x, w_ih, w_hh)),
        ("backward", lambda: lf.backward(cache, dy)),
        ("LSTM bidirectional", lambda: layer(x[: T // 2], need_cache=False)),
    ]


def check_interrupt(p: dict) -> dict:
    failures: list[str] = []
    small = problem(4, 3, 5, 9, np.float32, 32)
    expected = digest(run_functional(lf, small))
    latencies: dict[str, list[float]] = {}
    after_cpu: list[float] = []
    uninterrupted: list[str] = []
    for n_threads in p["engine_threads"]:
        lf.set_num_threads(n_threads)
        calls = _long_calls(p["call_seconds"])
        for name, call in calls:
            key = f"{name}, {n_threads} thread{'s' if n_threads > 1 else ''}"
            latencies[key] = []
            for run in range(p["runs"]):
                call_threads = threads_now()
                sent = [0.0]

                def interrupt(run: int = run, sent: list[float] = sent) -> None:
                    time.sleep(p["delay"] + 0.05 * run)
                    sent[0] = time.perf_counter()
                    os.kill(os.getpid(), signal.SIGINT)

                timer = threading.Thread(target=interrupt)
                t_start = time.perf_counter()
                finished = None
                try:
                    timer.start()
                    call()
                    finished = time.perf_counter()
                    timer.join()
                    time.sleep(1.0)  # the signal is handled at the next bytecode
                    failures.append(f"{key}: SIGINT raised no KeyboardInterrupt")
                    continue
                except KeyboardInterrupt:
                    caught = time.perf_counter()
                timer.join()
                if finished is not None and finished < sent[0]:
                    uninterrupted.append(key)  # the call was over before the signal
                    continue
                latency = caught - sent[0]
                latencies[key].append(latency)
                print(f"{key}, run {run}: SIGINT after {sent[0] - t_start:.2f} s, "
                      f"KeyboardInterrupt {latency * 1000:.1f} ms later", flush=True)  # fmt: skip
                # Nothing may go on computing: CPU time of the whole process over a pause.
                time.sleep(0.05)
                c0, w0 = time.process_time(), time.perf_counter()
                time.sleep(0.3)
                after_cpu.append((time.process_time() - c0) / (time.perf_counter() - w0))
                if threads_now() > call_threads + 1:
                    failures.append(
                        f"{key}: {threads_now() - call_threads} more threads after the interrupt"
                    )
                if digest(run_functional(lf, small)) != expected:
                    failures.append(f"{key}: the engine gives other bits after an interrupt")
    every = [v for vs in latencies.values() for v in vs]
    if uninterrupted:
        failures.append(
            f"calls over before the signal (make them longer): {sorted(set(uninterrupted))}"
        )
    if every and max(every) > p["max_latency"]:
        failures.append(
            f"Ctrl-C answered after up to {max(every):.2f} s (bound {p['max_latency']} s)"
        )
    if after_cpu and max(after_cpu) > 0.5:
        failures.append(
            f"up to {max(after_cpu):.2f} CPU-seconds per second still spent after an interrupt"
        )
    return {
        "failures": failures,
        "figures": {
            "call_seconds": p["call_seconds"],
            "latency_ms": {
                k: {
                    "min": round(min(v) * 1e3, 1),
                    "median": round(statistics.median(v) * 1e3, 1),
                    "max": round(max(v) * 1e3, 1),
                    "runs": len(v),
                }  # fmt: skip
                for k, v in latencies.items()
                if v
            },
            "cpu_after_interrupt_max": round(max(after_cpu), 3) if after_cpu else None,
        },
    }


# ---------------------------------------------------------------------------
# Checks that run other programs (long form)


def check_bad_calls(p: dict) -> dict:
    test = ROOT / "tests" / "test_bad_calls.py"
    if not test.exists():
        return {"failures": ["tests/test_bad_calls.py does not exist"], "figures": {}}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "bad_calls.json"
        env = {
            **os.environ,
            "LSTM_FAST_STRESS_CALLS": str(p["calls"]),
            "LSTM_FAST_STRESS_REPORT": str(report),
        }
        cmd = [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", str(test)]
        result = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=p["timeout"]
        )
        counts = json.loads(report.read_text()) if report.exists() else {}
    out = result.stdout + result.stderr
    print(out[-6000:], flush=True)
    failures = [] if result.returncode == 0 else [f"pytest exit status {result.returncode}"]
    if counts.get("calls", 0) < p["calls"]:
        failures.append(f"the sweep made {counts.get('calls', 0)} calls, not {p['calls']}")
    closing = [line for line in out.splitlines() if line.strip()][-1:]
    return {"failures": failures, "figures": {**counts, "pytest": closing}}


def check_wheel_matrix(p: dict) -> dict:
    cmd = [str(ROOT / "scripts" / "wheel_matrix"), *p.get("wheel", [])]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=p["timeout"])
    out = result.stdout
    print((out + result.stderr)[-6000:], flush=True)
    table = out[out.find("=== wheel matrix") :].splitlines() if "=== wheel matrix" in out else []
    tags = [line for line in out.splitlines() if line.startswith("tags OK")]
    return {
        "failures": []
        if result.returncode == 0
        else [f"wheel_matrix exit status {result.returncode}"],
        "figures": {"tags": tags, "table": table},
    }


# ---------------------------------------------------------------------------
# Self-tests of the harness: a crash and a hang must be reported as such.


def check_selftest_crash(p: dict) -> dict:
    os.abort()


def check_selftest_hang(p: dict) -> dict:
    time.sleep(3600)
    return {"failures": [], "figures": {}}


# name: (function, short parameters, long parameters, time limit short, long)
CHECKS: dict[str, tuple[Callable[[dict], dict], dict | None, dict, float, float]] = {
    "concurrency": (
        check_concurrency,
        {"threads": 8, "seconds": 4, "flip_up_to": 4, "flip_every": 0.003, "thread_bound": 64},
        {"threads": 8, "seconds": 60, "flip_up_to": 4, "flip_every": 0.003, "thread_bound": 64},
        90, 240,
    ),
    "memory": (
        check_memory,
        {"calls": 3000, "warmup": 500, "sample_every": 100, "max_growth_mb": 4},
        {"calls": 30000, "warmup": 2000, "sample_every": 500, "max_growth_mb": 4},
        90, 900,
    ),
    "fork": (
        check_fork,
        {"children": {"os.fork": 6, "fork": 3, "spawn": 2}, "timeout": 30, "gap": 0.02},
        {"children": {"os.fork": 60, "fork": 25, "spawn": 10}, "timeout": 60, "gap": 0.02},
        120, 900,
    ),
    "alloc_limit": (
        check_alloc_limit,
        {"margin_mb": 384, "engine_threads": 2},
        {"margin_mb": 1024, "engine_threads": 2},
        120, 600,
    ),
    "interrupt": (
        check_interrupt,
        None,
        {"engine_threads": [1, 2], "runs": 3, "call_seconds": 3, "delay": 0.4, "max_latency": 0.5},
        0, 300,
    ),
    "bad_calls": (check_bad_calls, None, {"calls": 10000, "timeout": 1500}, 0, 1600),
    "wheel_matrix": (check_wheel_matrix, None, {"timeout": 900}, 0, 960),
    "selftest_crash": (check_selftest_crash, {}, {}, 30, 30),
    "selftest_hang": (check_selftest_hang, {}, {}, 3, 3),
}  # fmt: skip
SHORT = ["concurrency", "memory", "fork", "alloc_limit"]
LONG = [*SHORT, "interrupt", "bad_calls", "wheel_matrix"]


# ---------------------------------------------------------------------------
# Running the checks, each in a child process


def run_in_child(name: str, long: bool, extra: dict) -> dict:
    """Runs one check in a child process under its time limit; its report."""
    _, short_p, long_p, short_limit, long_limit = CHECKS[name]
    params = {**(long_p if long else short_p or {}), **extra}
    limit = long_limit if long else short_limit
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name,
               "--params", json.dumps(params), "--report", str(report_path),
               "--limit", str(limit)]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            output, _ = proc.communicate(timeout=limit)
            status = "done"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and whatever it forked
            output, _ = proc.communicate()
            status = "hang"
        seconds = time.monotonic() - t0
        report = json.loads(report_path.read_text()) if report_path.exists() else None
    rc = proc.returncode
    if status == "hang":
        failures = [f"hang: still running after {limit:.0f} s"]
    elif rc < 0:
        status = "crash"
        failures = [f"crash: killed by {signal.Signals(-rc).name}"]
    elif report is None:
        status = "crash"
        failures = [f"crash: exit status {rc} without a report"]
    else:
        failures = report["failures"]
    last = [line for line in output.splitlines() if line.strip()][-5:]
    if status != "done" and last:
        failures.append("last output: " + " | ".join(last))
    return {
        "check": name,
        "status": "failed" if failures else "ok",
        "outcome": status,
        "seconds": round(seconds, 1),
        "failures": failures,
        "figures": (report or {}).get("figures", {}),
        "output_tail": output[-8000:],
    }


def child_main(name: str, params: dict, report: Path, limit: float) -> None:
    # Shortly before the parent gives up on this child: where every thread is.
    faulthandler.dump_traceback_later(max(1.0, limit - 5), exit=False)
    try:
        result = CHECKS[name][0](params)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # a Rust panic arrives as a BaseException
        result = {"failures": ["the check raised:\n" + traceback.format_exc()], "figures": {}}
    report.write_text(json.dumps(result, indent=1, default=str))


def machine() -> dict:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except Exception:
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in run(["lscpu"]).splitlines()
                if line.startswith("Model name")), platform.processor())  # fmt: skip
    dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": run(["git", "rev-parse", "--short", "HEAD"])
        + (" + uncommitted changes" if dirty else ""),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "lstm_fast": lf.__version__,
        "isa": lf.get_isa(),
    }


def brief(figures: dict) -> dict:
    """The figures without the per-call detail (which stays in the JSON summary)."""
    return {k: v for k, v in figures.items() if k != "calls_detail"}


def markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = [
        f"# Stress run ({'long' if summary['long'] else 'short'} form)",
        "",
        f"{m['date']}, commit {m['commit']}, {m['cpu']} ({m['cores']} cores), "
        f"CPython {m['python']}, NumPy {m['numpy']}, lstm_fast {m['lstm_fast']} ({m['isa']})",
        "",
        "| check | result | seconds | failures |",
        "|---|---|---|---|",
    ]
    for r in summary["results"]:
        result = f"{r['status']} ({r['outcome']})"
        lines.append(f"| {r['check']} | {result} | {r['seconds']} | {len(r['failures'])} |")
    for r in summary["results"]:
        figures = json.dumps(brief(r["figures"]), indent=1, default=str)
        lines += ["", f"## {r['check']}", "", "```json", figures, "```"]
        if r["failures"]:
            lines += ["", "Failures:", ""] + [f"- {f}" for f in r["failures"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="the long form (minutes)")
    parser.add_argument(
        "--check", action="append", choices=sorted(CHECKS), help="run only this check"
    )
    parser.add_argument(
        "--json", type=Path, help="write the summary here (long form: target/stress/stress.json)"
    )
    parser.add_argument(
        "--markdown", type=Path, help="and a markdown summary (long form: beside it, .md)"
    )
    parser.add_argument("--wheel", help="wheel_matrix: test this wheel instead of building one")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=600, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.params), args.report, args.limit)
        return 0

    names = args.check or (LONG if args.long else SHORT)
    missing = [n for n in names if (CHECKS[n][2] if args.long else CHECKS[n][1]) is None]
    if missing:
        parser.error(f"{', '.join(missing)} only in the long form (--long)")
    if args.long:
        args.json = args.json or ROOT / "target" / "stress" / "stress.json"
        args.markdown = args.markdown or args.json.with_suffix(".md")
    summary = {"long": args.long, "machine": machine(), "results": []}
    for name in names:
        extra = {"wheel": [args.wheel]} if name == "wheel_matrix" and args.wheel else {}
        print(f"=== {name}", flush=True)
        r = run_in_child(name, args.long, extra)
        summary["results"].append(r)
        print(f"=== {name}: {r['status']} ({r['outcome']}, {r['seconds']} s)", flush=True)
        print(json.dumps(brief(r["figures"]), indent=1, default=str)[:4000], flush=True)
        for f in r["failures"]:
            print(f"  FAILED: {f}", flush=True)
    for path, text in (
        (args.json, json.dumps(summary, indent=1, default=str)),
        (args.markdown, None),
    ):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text if text is not None else markdown(summary))
            print(f"wrote {path}")
    failed = [r["check"] for r in summary["results"] if r["status"] != "ok"]
    print(
        f"stress: {len(names) - len(failed)} passed, {len(failed)} failed"
        + (f": {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Threads: the same bits for any thread count, concurrent callers, env switches."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading

import lstm_fast as lf
import numpy as np
import pytest

from tests.helpers import (
    ROOT,
    Case,
    assert_matches_reference,
    assert_same_bits,
    make_arrays,
    run_both,
)

# B >= 8 and H >= 64 so that an engine that splits the batch or the hidden
# units across threads really does split them.
THREAD_CASES = [
    Case(5, 16, 40, 64, dtype=np.float32, seed=1),
    Case(4, 9, 17, 130, dtype=np.float64, lengths="mixed", reverse=True, seed=2),
    Case(3, 33, 64, 96, dtype=np.float32, lengths="random", batch_first=True, seed=3),
    Case(6, 8, 8, 64, dtype=np.float64, bias="none", state="none", seed=4),
    Case(2, 64, 16, 80, dtype=np.float32, lengths="random", reverse=True, seed=5),
]


def _all_results(case, arrays):
    out, grads = run_both(lf, case, arrays)
    cache = {name: getattr(out.cache, name) for name in "ifgoc"}
    a = arrays
    cell = lf.cell_forward(
        a["x"][:, 0] if case.batch_first else a["x"][0],
        np.zeros((case.B, case.H), case.dtype),
        np.ones((case.B, case.H), case.dtype),
        a["w_ih"],
        a["w_hh"],
        a["b_ih"],
    )
    cell_grads = lf.cell_backward(cell.cache, a["dh_n"], a["dc_n"])
    return {
        "y": out.y,
        "h_n": out.h_n,
        "c_n": out.c_n,
        **{f"cache.{k}": v for k, v in cache.items()},
        **{k: getattr(grads, k) for k in grads._fields},
        "cell.h_new": cell.h_new,
        "cell.c_new": cell.c_new,
        **{f"cell.{k}": getattr(cell_grads, k) for k in cell_grads._fields},
    }


def _assert_same_results(got, expected, where):
    for name, value in expected.items():
        assert_same_bits(got[name], value, f"{where}: {name}")


def _run_threads(bodies, meanwhile=None):
    """Run each of ``bodies`` in a thread of its own, and ``meanwhile`` in this one;
    then fail if a thread hung (a deadlock) and raise the first error of any."""
    errors: list[BaseException] = []

    def guarded(body):
        try:
            body()
        except BaseException as e:  # noqa: BLE001 - raised below
            errors.append(e)

    pool = [threading.Thread(target=guarded, args=(body,), daemon=True) for body in bodies]
    for t in pool:
        t.start()
    try:
        if meanwhile is not None:
            meanwhile()
    finally:
        for t in pool:
            t.join(timeout=100)
    assert not any(t.is_alive() for t in pool), "a worker thread hung"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("case", THREAD_CASES, ids=lambda c: c.id)
def test_same_bits_for_any_thread_count(isa, threads, case):
    arrays = make_arrays(case)
    lf.set_num_threads(1)
    assert lf.get_num_threads() == 1
    one = _all_results(case, arrays)
    for n in (2, 3, 4):
        lf.set_num_threads(n)
        assert lf.get_num_threads() == n
        _assert_same_results(_all_results(case, arrays), one, f"{n} threads")


def test_threaded_results_are_right(threads):
    """Not only the same bits: right, with more threads than cores."""
    case = THREAD_CASES[1]
    arrays = make_arrays(case)
    lf.set_num_threads(3)
    out, grads = run_both(lf, case, arrays)
    assert_matches_reference(case, arrays, out, grads)


def test_get_num_threads_default():
    n = lf.get_num_threads()
    assert isinstance(n, int) and n >= 1


@pytest.mark.timeout(120)
def test_concurrent_callers(threads):
    """Several Python threads call forward/backward at once: no deadlock, same bits.

    Each thread works on its own case and checks every result against the one
    computed alone beforehand; a hang fails through the timeout.
    """
    lf.set_num_threads(2)
    cases = [THREAD_CASES[i % len(THREAD_CASES)].with_(seed=10 + i) for i in range(6)]
    inputs = [make_arrays(c) for c in cases]
    expected = [_all_results(c, a) for c, a in zip(cases, inputs)]
    start = threading.Barrier(len(cases))

    def worker(k):
        start.wait()
        for _ in range(8):
            _assert_same_results(_all_results(cases[k], inputs[k]), expected[k], f"thread {k}")

    _run_threads([lambda k=k: worker(k) for k in range(len(cases))])


@pytest.mark.timeout(120)
def test_set_num_threads_while_others_compute(threads):
    """Changing the thread count during other threads' calls is safe and keeps the bits."""
    case = THREAD_CASES[0]
    arrays = make_arrays(case)
    lf.set_num_threads(1)
    expected = _all_results(case, arrays)
    stop = threading.Event()

    def compute():
        while not stop.is_set():
            _assert_same_results(_all_results(case, arrays), expected, "while switching")

    def switch():
        try:
            for k in range(40):
                lf.set_num_threads(1 + k % 3)
        finally:
            stop.set()

    _run_threads([compute, compute], meanwhile=switch)


# --------------------------------------------------------------------------
# Environment switches, read at import


def _run_python(code: str, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_FAST_")}
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.parametrize("n", [1, 3])
def test_env_num_threads(n):
    assert _run_python("import lstm_fast; print(lstm_fast.get_num_threads())",
                       LSTM_FAST_NUM_THREADS=str(n)) == str(n)  # fmt: skip


@pytest.mark.parametrize("name", lf.available_isas())
def test_env_isa(name):
    code = "import lstm_fast; print(lstm_fast.get_isa())"
    assert _run_python(code, LSTM_FAST_ISA=name) == name


def test_env_isa_gives_the_same_numbers_as_set_isa():
    """A subprocess forced to the scalar ISA computes what _set_isa("scalar") computes here."""
    case_source = "Case(4, 9, 13, 70, dtype=np.float32, lengths='mixed', seed=21)"
    code = (
        "import sys, numpy as np, lstm_fast as lf\n"
        f"sys.path.insert(0, {str(ROOT)!r})  # the folder that holds tests/\n"
        "from tests.helpers import Case, make_arrays, run_both\n"
        f"case = {case_source}\n"
        "out, grads = run_both(lf, case, make_arrays(case))\n"
        "print(out.y.tobytes().hex(), grads.dw_hh.tobytes().hex())\n"
    )
    case = eval(case_source, {"Case": Case, "np": np})
    previous = lf.get_isa()
    try:
        lf._set_isa("scalar")
        out, grads = run_both(lf, case, make_arrays(case))
    finally:
        lf._set_isa(previous)
    got = _run_python(code, LSTM_FAST_ISA="scalar", LSTM_FAST_NUM_THREADS="2")
    assert got == out.y.tobytes().hex() + " " + grads.dw_hh.tobytes().hex()


def test_default_isa():
    """Without LSTM_FAST_ISA a SIMD path is chosen whenever the machine has one."""
    isas = lf.available_isas()
    assert "scalar" in isas
    default = _run_python("import lstm_fast; print(lstm_fast.get_isa())")
    assert default in isas
    if len(isas) > 1:
        assert default != "scalar"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.timeout(120)
def test_fork_while_another_thread_computes():
    """A child forked while another thread is inside a call (the small-batch
    team holds the pool's lock then) starts its own pool and finishes its call."""
    import threading
    import time

    rng = np.random.default_rng(0)
    T, B, I, H = 200, 2, 8, 256
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w_ih = (rng.standard_normal((4 * H, I)) * 0.1).astype(np.float32)
    w_hh = (rng.standard_normal((4 * H, H)) * 0.1).astype(np.float32)
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            lf.forward(x, w_ih, w_hh, need_cache=False)

    worker = threading.Thread(target=busy)
    worker.start()
    hung = 0
    try:
        for _ in range(5):
            time.sleep(0.01)
            pid = os.fork()
            if pid == 0:  # the child: one call, then leave at once
                try:
                    lf.forward(x[:5], w_ih, w_hh, need_cache=False)
                    os._exit(0)
                except BaseException:
                    os._exit(1)
            deadline = time.monotonic() + 20
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert os.waitstatus_to_exitcode(status) == 0
                    break
                if time.monotonic() > deadline:
                    hung += 1
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.01)
    finally:
        stop.set()
        worker.join()
    assert hung == 0, f"{hung} of 5 forked children hung"


def test_unusable_env_isa_warns_and_falls_back():
    """An LSTM_FAST_ISA the CPU cannot run (or that does not exist) gives a
    RuntimeWarning at import and the best available path, not a failure."""
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import lstm_fast\n"
        "print(lstm_fast.get_isa(), lstm_fast.available_isas()[-1],"
        " sum('LSTM_FAST_ISA' in str(x.message) for x in w))\n"
    )
    isa, best, warned = _run_python(code, LSTM_FAST_ISA="avx1024").split()
    assert isa == best and warned == "1"
    isa, best, warned = _run_python(code, LSTM_FAST_ISA="scalar").split()
    assert isa == "scalar" and warned == "0"


def test_last_team_stats_count_the_team_waits():
    """The barrier's record of a team call (for measuring what a team costs): zero
    before any team ran; after a forward of T steps on a team of 2, at least one
    wait per step, polls counted, no more sleeps than waits."""
    code = (
        "import numpy as np, lstm_fast as lf\n"
        "from lstm_fast import _core\n"
        "print(_core._last_team_stats())\n"
        "lf.set_num_threads(2)\n"
        "rng = np.random.default_rng(0)\n"
        "T, B, H = 40, 2, 128\n"
        "lf.forward(rng.standard_normal((T, B, H), np.float32),\n"
        "           rng.standard_normal((4 * H, H), np.float32) * 0.1,\n"
        "           rng.standard_normal((4 * H, H), np.float32) * 0.1, need_cache=False)\n"
        "print(_core._last_team_stats())\n"
    )
    env = dict(os.environ, LSTM_FAST_SPLIT="hidden")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    before, after = (ast.literal_eval(line) for line in out.stdout.split("\n")[:2])
    assert before == (0, 0, 0, 0)
    members, waits, slept, _polls = after
    assert members == 2
    assert waits >= 40 and slept <= waits

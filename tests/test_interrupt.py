"""Ctrl-C during a long call: ``KeyboardInterrupt`` soon after the signal, no thread
left running, the engine usable (docs/api.md, 'Interrupts').

Each case runs in a child process: the child warms up (so that the threads the
engine keeps exist before: its pool, the thread that runs the main thread's long
calls, the layer's worker thread), prints ``READY`` just before a call
that would take seconds (made again and again, so that a parent slow to be
scheduled still interrupts one), and the parent sends SIGINT a moment later, then writes
the time it did so (the monotonic clock is the system's, the same in both
processes) to the child's stdin; nothing runs between taking that time and
sending the signal (see ``_interrupt``). The child catches ``KeyboardInterrupt``,
measures the latency, checks that the process has as many threads as before the
call and that a following small call is right, and prints one ``RESULT`` line.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests.helpers import ref

# The latency bound: generous (the engine checks for signals every 20 ms and stops
# at its next time step, which takes well under a millisecond at these shapes); the
# property is that the call does not run on to its end, seconds later.
LATENCY_BOUND = 1.0
# How long after the child's READY the signal is sent: the call is well under way.
SIGNAL_AFTER = 0.3

_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    import numpy as np
    import lstm_fast as lf
    from lstm_fast import layer as layer_module, reference

    # Python's own Ctrl-C handling, whatever the test runner was started with: a
    # shell starts a background job (`pytest &`) with SIGINT ignored, a child
    # inherits that, and Python then installs no handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    case = sys.argv[1]
    rng = np.random.default_rng(0)

    def problem(t, b, i, h):
        k = 1 / np.sqrt(h)
        return (
            rng.standard_normal((t, b, i), dtype=np.float32),
            rng.uniform(-k, k, (4 * h, i)).astype(np.float32),
            rng.uniform(-k, k, (4 * h, h)).astype(np.float32),
            rng.uniform(-k, k, 4 * h).astype(np.float32),
        )

    def tasks():
        names = []
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/comm") as f:
                    names.append(f.read().strip())
            except OSError:  # ended meanwhile
                pass
        return sorted(names)

    # Per thread (name/tid): seconds on a CPU and seconds runnable but waiting for
    # one (/proc/.../schedstat); and the host's steal time, in seconds. Not
    # asserted on: when the latency is long they say whether the threads were
    # computing, waiting for a CPU, or the virtual machine was not running.
    def scheduling():
        threads = {}
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/self/task/{task}/schedstat") as f:
                    cpu, delay = (int(v) / 1e9 for v in f.read().split()[:2])
            except (OSError, ValueError):  # ended meanwhile, or no schedstat
                continue
            threads[f"{name}/{task}"] = (cpu, delay)
        with open("/proc/stat") as f:
            steal = int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
        return threads, steal

    def scheduling_since(before):
        (threads0, steal0), (threads1, steal1) = before, scheduling()
        per_thread = {
            name: [round(c - threads0[name][0], 4), round(d - threads0[name][1], 4)]
            for name, (c, d) in threads1.items()
            if name in threads0
        }
        return {"cpu_and_wait_s": per_thread, "steal_s": round(steal1 - steal0, 3)}

    # The follow-up call: small (not interruptible), compared with the reference.
    small = problem(7, 3, 5, 9)

    def small_call_is_right():
        got = lf.forward(*small)
        want = reference.forward(*small)
        return all(np.allclose(g, w, rtol=1e-5, atol=1e-6) for g, w in zip(got[:3], want[:3]))

    check_layer = None
    if case == "forward":
        # One chunk of 8 rows: the engine thread runs the whole loop alone.
        x, w_ih, w_hh, b = problem(20000, 8, 64, 512)
        lf.forward(x[:300], w_ih, w_hh, b, need_cache=False)
        call = lambda: lf.forward(x, w_ih, w_hh, b, need_cache=False)
    elif case == "backward":
        # About 1.4 s uninterrupted on a Zen 5 core (1,500 steps took 0.27 s,
        # less than SIGNAL_AFTER, once large buffers were kept for reuse).
        x, w_ih, w_hh, b = problem(8000, 1, 16, 1024)
        cache = lf.forward(x, w_ih, w_hh, b).cache
        lf.backward(lf.forward(x[:2], w_ih, w_hh, b).cache)
        dy = np.ones((8000, 1, 1024), np.float32)
        call = lambda: lf.backward(cache, dy)
    elif case == "hidden":
        # LSTM_FAST_SPLIT=hidden: a team of 2 meets at a barrier every step, and
        # must agree on the step at which it stops.
        lf.set_num_threads(2)
        x, w_ih, w_hh, b = problem(20000, 1, 16, 1024)
        lf.forward(x[:300], w_ih, w_hh, b, need_cache=False)
        call = lambda: lf.forward(x, w_ih, w_hh, b, need_cache=False)
    elif case == "layer":
        # Both directions at once: the reverse one in the layer's worker thread,
        # which never sees the signal and must be stopped by the main thread.
        layer_module.CONCURRENT_DIRECTIONS = True
        lstm = lf.LSTM(16, 512, bidirectional=True, seed=0)
        x = rng.standard_normal((20000, 1, 16), dtype=np.float32)
        lstm.forward(x[:300], need_cache=False)
        y_small, _ = lstm.forward(x[:5])
        lstm.backward(np.ones_like(y_small))
        grads = {k: v.copy() for k, v in lstm.grads.items()}
        call = lambda: lstm.forward(x)

        def check_layer():
            # The gradients are those of the last backward, the interrupted forward
            # left no tape (as any failed forward), and the layer computes as before.
            same_grads = all(np.array_equal(grads[k], v) for k, v in lstm.grads.items())
            no_tape = lstm._tape is None
            y, _ = lstm.forward(x[:5])
            return same_grads and no_tape and np.array_equal(y, y_small)

    python_threads, os_threads = threading.active_count(), tasks()
    before = scheduling()
    print("READY", flush=True)
    start = time.monotonic()
    # The call again until the signal comes: on a loaded machine the parent may
    # send it only after a whole call (a few seconds) has ended.
    finished = 0
    try:
        while True:
            call()
            finished += 1
    except KeyboardInterrupt:
        caught = time.monotonic()
        during = scheduling_since(before)
    signalled = float(sys.stdin.readline())
    # A thread that has just ended may still be listed for a moment.
    deadline = time.monotonic() + 1.0
    while tasks() != os_threads and time.monotonic() < deadline:
        time.sleep(0.001)
    result = {
        "latency": caught - signalled,
        "python_threads": [python_threads, threading.active_count()],
        "os_threads": [os_threads, tasks()],
        "small_call_is_right": small_call_is_right(),
        # From READY to KeyboardInterrupt (SIGNAL_AFTER, then the latency).
        "window_s": round(caught - start, 4),
        "calls_finished_before": finished,
        "scheduling": during,
    }
    if check_layer is not None:
        result["layer_is_intact"] = check_layer()
    print("RESULT", json.dumps(result), flush=True)
    """
)


def _interrupt(case: str, env: dict[str, str]) -> dict:
    """Runs the child for ``case``, sends SIGINT after READY; the child's RESULT."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, case],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline()
        assert line.strip() == "READY", line + child.communicate(timeout=60)[1][-2000:]
        time.sleep(SIGNAL_AFTER)
        # The signal goes out right after the time is taken: no Python code in
        # between (Popen.send_signal polls first), and the cyclic collector off,
        # which in this process (the test suite's, with torch and the rest
        # loaded) can take over a second when it runs a full collection, and
        # runs whenever an allocation reaches its threshold. The child is not
        # reaped before communicate(), so its pid is still its own.
        collecting = gc.isenabled()
        gc.disable()
        try:
            signalled = time.monotonic()
            os.kill(child.pid, signal.SIGINT)
        finally:
            if collecting:
                gc.enable()
        child.stdin.write(f"{signalled!r}\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    results = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert results, f"no result (exit status {child.returncode}): {err[-2000:]}"
    result = json.loads(results[-1][len("RESULT ") :])
    assert child.returncode == 0, err[-2000:]
    return result


@pytest.mark.skipif(
    sys.platform != "linux", reason="counts the process's threads in /proc/self/task"
)
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("case", "env"),
    [
        # Chunks of at least 8 rows: the 8-row batch is one chunk, run inline.
        ("forward", {"LSTM_FAST_SPLIT": "batch", "LSTM_FAST_CHUNK_ROWS": "8"}),
        ("backward", {"LSTM_FAST_SPLIT": "batch"}),
        ("hidden", {"LSTM_FAST_SPLIT": "hidden"}),
        ("layer", {}),
    ],
    ids=["forward", "backward", "hidden-split", "layer-two-threads"],
)
def test_ctrl_c_stops_a_long_call(case, env):
    result = _interrupt(case, env)
    print(f"{case}: KeyboardInterrupt {result['latency'] * 1e3:.1f} ms after SIGINT")
    assert result["latency"] < LATENCY_BOUND, result
    # No thread outlives the call: the engine's is joined, the pool's are idle.
    before, after = result["python_threads"]
    assert after == before, result
    before, after = result["os_threads"]
    assert after == before, result
    assert result["small_call_is_right"], result
    if case == "layer":
        assert result["layer_is_intact"], result


def test_calls_inside_a_cancelled_block_stop(lf):
    # The mechanism by which the layer stops its reverse direction: calls made in
    # `with stop:` (on that thread) stop once `stop` is cancelled; the innermost
    # block decides, and calls outside run as usual.
    _core = lf._core
    rng = np.random.default_rng(1)
    args = (
        rng.standard_normal((6, 2, 3)),
        rng.standard_normal((16, 3)) * 0.5,
        rng.standard_normal((16, 4)) * 0.5,
    )
    cache = lf.forward(*args).cache
    stop = _core.Cancel()
    assert not stop.cancelled
    stop.cancel()
    assert stop.cancelled
    with stop:
        with pytest.raises(KeyboardInterrupt):
            lf.forward(*args)
        with pytest.raises(KeyboardInterrupt):
            lf.backward(cache)
    with stop, _core.Cancel():
        inner = lf.forward(*args)
    outside = lf.forward(*args)
    want = ref.forward(*args)
    for got in (inner, outside):
        for g, w in zip(got[:3], want[:3]):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)

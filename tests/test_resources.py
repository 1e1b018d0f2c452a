"""The engine's resources: allocations the system refuses are a MemoryError (never
an abort), calls without steps need no per-row state, the thread count is bounded,
and a fork while another thread holds the pool's lock leaves a working child."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import lstm_fast as lf
import numpy as np
import pytest
from lstm_fast import _core

MAX_THREADS = 1024  # rust/src/tuning.rs


def _run(code: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_FAST_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=environment, timeout=timeout,
    )  # fmt: skip


# --------------------------------------------------------------------------
# Memory

# Run in a child under an address-space limit 1.5 GB above what it uses once the
# engine is warm. Each call needs more than that in one of the engine's own buffers
# (or did before they were bounded: T = 0 and all-zero lengths used to allocate
# the per-row state of every row), so it must work or raise MemoryError; any other
# outcome (an abort, another exception) fails the child. A small call afterwards
# must still equal the reference.
_UNDER_LIMIT = """
    import resource
    import numpy as np
    import lstm_fast as lf
    from lstm_fast import reference as ref

    f32 = np.float32
    rng = np.random.default_rng(0)
    small = dict(
        x=rng.standard_normal((5, 3, 4)), w_ih=rng.standard_normal((8, 4)) * 0.3,
        w_hh=rng.standard_normal((8, 2)) * 0.3, b_ih=rng.standard_normal(8) * 0.1,
    )

    def check_small():
        got = lf.forward(**small)
        want = ref.forward(**small)
        np.testing.assert_allclose(got.y, want.y, rtol=1e-12, atol=1e-12)
        grads = lf.backward(got.cache, np.ones_like(got.y))
        want_grads = ref.backward(want.cache, np.ones_like(want.y))
        np.testing.assert_allclose(grads.dw_hh, want_grads.dw_hh, rtol=1e-10, atol=1e-12)

    check_small()  # the pool is started and the code paths are warm
    print("isa", lf.get_isa(), flush=True)

    def address_space():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    B = 1 << 24  # rows: 3 states of Hp = 16 floats per row were 3 GB

    def steps_zero():
        out = lf.forward(np.zeros((0, B, 1), f32), np.zeros((4, 1), f32), np.zeros((4, 1), f32))
        assert out.h_n.shape == (B, 1) and not out.h_n.any()
        grads = lf.backward(out.cache, None, np.ones((B, 1), f32))
        assert (grads.dh0 == 1).all() and not grads.dw_hh.any()

    def lengths_zero():
        out = lf.forward(
            np.zeros((2, B, 1), f32), np.zeros((4, 1), f32), np.zeros((4, 1), f32),
            lengths=np.zeros(B, np.int64), need_cache=False,
        )
        assert not out.y.any()

    def one_step():  # the per-row state: 3 GB
        lf.forward(np.zeros((1, B, 1), f32), np.zeros((4, 1), f32), np.zeros((4, 1), f32),
                   need_cache=False)

    def large_hidden():  # w_hh 1 GB, its panels 1 GB more (two rows: packed)
        H = 8192
        w_hh = np.zeros((4 * H, H), f32)
        lf.forward(np.zeros((1, 2, 1), f32), np.zeros((4 * H, 1), f32), w_hh, need_cache=False)

    def large_hidden_one_row():  # the same w_hh, one row: read in place, no panels
        H = 8192
        w_hh = np.zeros((4 * H, H), f32)
        lf.forward(np.zeros((1, 1, 1), f32), np.zeros((4 * H, 1), f32), w_hh, need_cache=False)

    def backward_padding():  # w_ih padded to 4·Hp rows: 16 × 256 MB
        I = 1 << 24
        out = lf.forward(np.zeros((1, 1, I), f32), np.zeros((4, I), f32), np.zeros((4, 1), f32))
        lf.backward(out.cache, np.ones_like(out.y))

    def backward_scratch():  # the cache (1.2 GB) fits, the gate gradients (0.8 GB) not
        T = 3 << 14
        out = lf.forward(np.zeros((T, 64, 1), f32), np.zeros((4, 1), f32), np.zeros((4, 1), f32))
        lf.backward(out.cache, np.ones_like(out.y))

    def large_output():  # y alone is 4 GB: NumPy refuses it in the Python layer
        x = np.zeros((4096, 1024, 1), f32)
        lf.forward(x, np.zeros((1024, 1), f32), np.zeros((1024, 256), f32), need_cache=False)

    limit = address_space() + (3 << 29)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    for case in (steps_zero, lengths_zero, one_step, large_hidden, large_hidden_one_row,
                 backward_padding, backward_scratch, large_output):
        try:
            case()
        except MemoryError as e:
            print(case.__name__, "MemoryError", e, flush=True)
        else:
            print(case.__name__, "ok", flush=True)
        check_small()
    print("SMALL OK")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and RLIMIT_AS")
@pytest.mark.timeout(600)
def test_allocations_refused_under_an_address_space_limit_raise_memory_error():
    result = _run(_UNDER_LIMIT, LSTM_FAST_NUM_THREADS="2")
    report = result.stdout + result.stderr[-3000:]
    assert result.returncode == 0, f"the child died ({result.returncode}):\n{report}"
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    # Calls without steps need no per-row state: they work under the limit.
    assert lines["steps_zero"] == "ok" and lines["lengths_zero"] == "ok", report
    # These need more than the limit in a buffer of the engine: refused, named.
    for name, buffer in [
        ("one_step", "per-row state"),
        ("large_hidden", "panels of w_hh"),
        # w_ih's panels (4*Hp x I) are the first buffer of this size where forward
        # packs (the scalar path); one row read in place, backward's padded copy.
        ("backward_padding", "panels of w_ih" if lines["isa"] == "scalar" else "w_ih padded"),
        ("large_output", "y: out of memory"),
    ]:
        assert lines[name].startswith("MemoryError"), report
        assert buffer in lines[name] and "bytes" in lines[name], report
    assert lines["backward_scratch"].startswith(("MemoryError", "ok")), report
    # One row for one step reads the weights as given (on the FMA paths; the
    # scalar path packs them, and is refused like two rows).
    assert lines["large_hidden_one_row"].startswith(("ok", "MemoryError")), report
    if lines["isa"] != "scalar":
        assert lines["large_hidden_one_row"] == "ok", report
    assert "SMALL OK" in result.stdout, report


@pytest.mark.parametrize("need_cache", [True, False])
def test_calls_without_steps_give_the_initial_state(need_cache):
    """T = 0, or every length 0: h_n = h0, c_n = c0; backward: dh0 = dh_n, dc0 = dc_n,
    every other gradient zero (bitwise: copies, not arithmetic)."""
    rng = np.random.default_rng(3)
    B, I, H = 5, 3, 7
    h0, c0, dh_n, dc_n = (rng.standard_normal((B, H)).astype(np.float32) for _ in range(4))
    w_ih, w_hh = (rng.standard_normal((4 * H, n)).astype(np.float32) for n in (I, H))
    for steps, lengths in [(0, None), (4, np.zeros(B, np.int64))]:
        x = rng.standard_normal((steps, B, I)).astype(np.float32)
        out = lf.forward(x, w_ih, w_hh, None, np.ones(4 * H, np.float32), h0, c0, lengths=lengths,
                         need_cache=need_cache)  # fmt: skip
        assert out.h_n.tobytes() == h0.tobytes() and out.c_n.tobytes() == c0.tobytes()
        assert out.y.shape == (steps, B, H) and not out.y.any()
        if need_cache:
            grads = lf.backward(out.cache, np.ones_like(out.y), dh_n, dc_n)
            assert grads.dh0.tobytes() == dh_n.tobytes()
            assert grads.dc0.tobytes() == dc_n.tobytes()
            for name in ("dx", "dw_ih", "dw_hh", "db_hh"):
                assert not getattr(grads, name).any(), name


# --------------------------------------------------------------------------
# Threads


@pytest.mark.parametrize("n", [MAX_THREADS + 1, 2**31, 2**64, 2**70])
def test_set_num_threads_above_the_maximum(threads, n):
    before = lf.get_num_threads()
    with pytest.raises(ValueError, match=rf"\bn\b.*\[1, {MAX_THREADS}\].*got {n}$"):
        lf.set_num_threads(n)
    assert lf.get_num_threads() == before


def test_set_num_threads_accepts_the_maximum(threads):
    lf.set_num_threads(MAX_THREADS)  # no call follows: no thread starts
    assert lf.get_num_threads() == MAX_THREADS


@pytest.mark.parametrize(
    "value", ["abc", "0", "-2", "2.5", str(MAX_THREADS + 1), "99999999999999999999"]
)
def test_unusable_env_num_threads_warns_and_uses_the_default(value):
    code = """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import lstm_fast
        print(lstm_fast.get_num_threads())
        print(*[w.message for w in caught if w.category is RuntimeWarning], sep="\\n")
    """
    default = _run(code, timeout=60)
    result = _run(code, timeout=60, LSTM_FAST_NUM_THREADS=value)
    assert result.returncode == 0, result.stderr[-2000:]
    used, *messages = result.stdout.splitlines()
    assert used == default.stdout.split()[0]
    assert any("LSTM_FAST_NUM_THREADS" in m and value in m for m in messages), result.stdout


def test_valid_env_num_threads_does_not_warn():
    code = "import lstm_fast; print(lstm_fast.get_num_threads())"
    result = _run(code, timeout=60, LSTM_FAST_NUM_THREADS=" 3 ", PYTHONWARNINGS="error")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "3"


# --------------------------------------------------------------------------
# Fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.timeout(120)
def test_fork_while_another_thread_holds_the_pool_lock():
    """The parent's lock holder does not exist in the child: the child takes the
    lock anyway, starts its own pool and computes the same numbers."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 9, 6)).astype(np.float32)
    w_ih = (rng.standard_normal((4 * 40, 6)) * 0.2).astype(np.float32)
    w_hh = (rng.standard_normal((4 * 40, 40)) * 0.2).astype(np.float32)
    want = lf.forward(x, w_ih, w_hh, need_cache=False).y
    holder = threading.Thread(target=_core._hold_pool_lock, args=(2.5,))
    holder.start()
    try:
        time.sleep(0.5)  # the holder takes the lock at once, then sleeps
        pid = os.fork()
        if pid == 0:  # the child: one call, then leave at once
            code = 1
            try:
                got = lf.forward(x, w_ih, w_hh, need_cache=False).y
                code = 0 if got.tobytes() == want.tobytes() else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung on the pool lock")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0, "the child computed other numbers"
    finally:
        holder.join()
    # The parent goes on as before once its holder lets go.
    assert lf.forward(x, w_ih, w_hh, need_cache=False).y.tobytes() == want.tobytes()

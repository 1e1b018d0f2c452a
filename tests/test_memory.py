"""Large buffers from blocks kept for reuse (python/lstm_fast/_memory.py): never
two live arrays on the same memory, a block reused once nothing refers to it, the
free blocks bounded, and a training loop that stops faulting its memory in."""

from __future__ import annotations

import resource
import sys
import threading

import lstm_fast
import numpy as np
import pytest
from lstm_fast import _memory

pytestmark = pytest.mark.skipif(
    not getattr(sys, "_is_gil_enabled", lambda: True)(),
    reason="free-threaded: plain np.empty (reference counts are not exact)",
)

BIG = (512, 1024)  # 2 MiB in float32, 4 in float64


@pytest.fixture(autouse=True)
def _no_kept_blocks():
    _memory.release()
    yield
    _memory.release()


def test_buffers_are_plain_arrays():
    for dtype in (np.float32, np.float64):
        a = _memory.empty(BIG, dtype)
        assert a.shape == BIG and a.dtype == dtype
        assert a.flags.c_contiguous and a.flags.writeable
        a[...] = 1.5
        assert float(a.sum()) == 1.5 * a.size
    small = _memory.empty((3, 4), np.float32)
    assert small.base is None  # below MIN_BYTES: np.empty itself


def test_live_buffers_never_share_memory():
    live = [_memory.empty(BIG, np.float32) for _ in range(6)]
    for i, a in enumerate(live):
        for b in live[i + 1 :]:
            assert not np.shares_memory(a, b)


def test_a_free_block_is_reused():
    a = _memory.empty(BIG, np.float32)
    where = a.__array_interface__["data"][0]
    del a
    b = _memory.empty(BIG, np.float32)
    assert b.__array_interface__["data"][0] == where
    # Another dtype and shape of the same size reuse it too.
    del b
    c = _memory.empty((BIG[0] // 2, BIG[1]), np.float64)
    assert c.__array_interface__["data"][0] == where


def test_a_live_view_keeps_its_block():
    a = _memory.empty(BIG, np.float32)
    a[...] = 7.0
    view = a[10:20, ::3]
    flat = a.reshape(-1)[5:]
    del a
    b = _memory.empty(BIG, np.float32)
    b[...] = -1.0
    assert not np.shares_memory(b, view) and not np.shares_memory(b, flat)
    assert np.all(view == 7.0) and np.all(flat == 7.0)
    del view
    c = _memory.empty(BIG, np.float32)  # `flat` still holds the first block
    assert not np.shares_memory(c, flat) and not np.shares_memory(c, b)


def test_only_blocks_of_a_similar_size_are_reused():
    a = _memory.empty((4 * BIG[0], BIG[1]), np.float32)  # 8 MiB
    del a
    small = _memory.empty(BIG, np.float32)  # 2 MiB: a block over 1.25 times its size is not used
    assert _memory.kept_bytes() == 8 * 2**20
    del small
    assert _memory.kept_bytes() == 10 * 2**20


def test_blocks_held_are_bounded_and_released(monkeypatch):
    monkeypatch.setattr(_memory, "KEEP_BYTES", 10 * 2**20)
    mib = 2**20
    arrays = [_memory.empty((512 * (k + 1), 1024), np.float32) for k in range(4)]  # 2..8 MiB
    # 2 + 4 MiB held; 6 and 8 would go past the bound: plain arrays.
    assert [a.base is None for a in arrays] == [False, False, True, True]
    del arrays
    assert _memory.kept_bytes() == 6 * mib
    big = _memory.empty((8 * mib,), np.uint8)  # fits no kept block: room is made
    assert big.base is not None and _memory.kept_bytes() == 0
    del big
    assert _memory.kept_bytes() == 8 * mib
    # Never more than the bound, however many large buffers come and go.
    many = [_memory.empty((3 * mib,), np.uint8) for _ in range(10)]
    assert _memory.kept_bytes() <= 10 * mib
    del many
    assert _memory.kept_bytes() <= 10 * mib
    _memory.release()
    assert _memory.kept_bytes() == 0


def test_a_taken_lock_is_never_waited_for():
    """Another thread allocating, a finalizer that runs during an allocation, a
    child forked while the lock was held: a plain array, no deadlock."""
    assert _memory._lock.acquire()
    try:
        a = _memory.empty(BIG, np.float32)
        assert a.base is None and a.shape == BIG
    finally:
        _memory._lock.release()


def test_threads_never_share_a_block():
    errors: list[str] = []
    barrier = threading.Barrier(4)

    def work(k: int) -> None:
        barrier.wait()
        for _ in range(50):
            a = _memory.empty(BIG, np.float32)
            a[...] = k
            if not np.all(a == k):
                errors.append(f"thread {k}: its buffer was written by another")
            del a

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_training_loop_stops_faulting_memory_in():
    """The layer's forward + backward at B=16, T=100, I=H=256, called back to
    back: once warm, its buffers come from kept blocks (no page faults to speak
    of), and the results are the same bits every call."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 16, 256)).astype(np.float32)
    layer = lstm_fast.LSTM(256, 256)
    first = None
    faults = []
    for _ in range(10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y, _ = layer.forward(x)
        dx = layer.backward(np.ones_like(y))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        if first is None:
            first = (y.copy(), np.array(dx, copy=True))
        else:
            assert np.array_equal(y, first[0]) and np.array_equal(dx, first[1])
    # 10 MB of cache and as much of gradients per call: 3,000-4,000 faults on
    # every other call when they are faulted in again (measured without the
    # kept blocks: about 14,000 over 8 calls); with them, most calls under 100,
    # now and then about 1,000.
    assert sum(faults[2:]) < 6000, faults


@pytest.mark.parametrize(
    "value, kept_mib, warns",
    [("", 256, False), ("0", 0, False), ("64", 64, False), ("abc", 256, True), ("-5", 256, True)],
)
def test_keep_mib_from_the_environment(value, kept_mib, warns):
    """LSTM_FAST_KEEP_MIB, read at import: 0 keeps nothing (every buffer plain);
    a value that is not an integer in range warns and keeps the default."""
    import os
    import subprocess

    script = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import numpy as np, lstm_fast._memory as m\n"
        "a = m.empty((1024, 1024), np.float32)\n"
        "print(m.KEEP_BYTES >> 20, a.base is None,"
        " any('LSTM_FAST_KEEP_MIB' in str(x.message) for x in w))\n"
    )
    env = dict(os.environ, LSTM_FAST_KEEP_MIB=value)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(kept_mib), str(kept_mib == 0), str(warns)]

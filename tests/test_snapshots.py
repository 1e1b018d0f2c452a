"""The copies of the weights a cache keeps (`_snapshots.py`): made once per
version of the weights, shared by the passes that find them unchanged, and
never changed while a cache holds them, whatever the caller does to its arrays
in place between the passes."""

from __future__ import annotations

import gc
import os
import signal
from typing import Any

import lstm_fast as lf
import numpy as np
import pytest
from lstm_fast import _snapshots

from tests.helpers import assert_same_bits

# Big enough for the snapshot path (w_hh is 64 KiB): smaller weights are always
# copied.
T, B, I, H = 5, 3, 80, 64


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w_ih": rng.uniform(-0.3, 0.3, (4 * H, I)).astype(np.float32),
        "w_hh": rng.uniform(-0.3, 0.3, (4 * H, H)).astype(np.float32),
        "b_ih": rng.uniform(-0.3, 0.3, 4 * H).astype(np.float32),
    }


def _steps(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dh = rng.standard_normal((T, B, H)).astype(np.float32)
    dc = rng.standard_normal((T, B, H)).astype(np.float32)
    return x, dh, dc


def _kept(cache: lf.CellCache | lf.Cache, name: str) -> np.ndarray:
    seq = cache._seq if isinstance(cache, lf.CellCache) else cache
    return getattr(seq._args, name)


def test_cell_steps_share_one_copy_while_the_weights_are_unchanged():
    w = _weights()
    assert min(w["w_ih"].nbytes, w["w_hh"].nbytes) >= _snapshots.MIN_BYTES
    x, _, _ = _steps()
    h = c = np.zeros((B, H), np.float32)
    caches = []
    for t in range(T):
        h, c, cache = lf.cell_forward(x[t], h, c, w["w_ih"], w["w_hh"], w["b_ih"])
        caches.append(cache)
    for name in ("w_ih", "w_hh"):
        first = _kept(caches[0], name)
        assert not first.flags.writeable
        assert not np.shares_memory(first, w[name])  # a copy, not the caller's
        assert_same_bits(first, w[name], name)
        for cache in caches[1:]:
            assert np.shares_memory(_kept(cache, name), first), name


def test_in_place_updates_between_steps_reach_only_later_steps():
    """Each step's backward uses the weights its forward ran with: the caller
    updates w_hh in place between the steps, as an online learner does."""
    w = _weights()
    x, dh, dc = _steps()
    h = c = np.zeros((B, H), np.float32)
    caches, used = [], []
    for t in range(T):
        used.append({k: v.copy() for k, v in w.items()})
        h, c, cache = lf.cell_forward(x[t], h, c, w["w_ih"], w["w_hh"], w["b_ih"])
        caches.append(cache)
        if t % 2 == 0:
            w["w_hh"] *= np.float32(0.5)  # in place, while earlier caches live
    # The same steps, each on private copies of the weights it saw.
    h = c = np.zeros((B, H), np.float32)
    for t in range(T):
        u = used[t]
        h, c, expect = lf.cell_forward(x[t], h, c, u["w_ih"], u["w_hh"], u["b_ih"])
        got = lf.cell_backward(caches[t], dh[t], dc[t])
        want = lf.cell_backward(expect, dh[t], dc[t])
        for name in want._fields:
            assert_same_bits(getattr(got, name), getattr(want, name), f"step {t} {name}")
        assert_same_bits(_kept(caches[t], "w_hh"), u["w_hh"], f"step {t} w_hh")


@pytest.mark.parametrize("cache_alive", [True, False])
def test_sequence_caches_after_an_update(cache_alive):
    """A second forward after an in-place update: a new copy while the first
    cache lives (which keeps its bits), the first copy's memory otherwise."""
    w = _weights()
    x, _, _ = _steps()
    dy = np.ones((T, B, H), np.float32)
    first = lf.forward(x, w["w_ih"], w["w_hh"], w["b_ih"])
    old = {k: v.copy() for k, v in w.items()}
    first_copy = _kept(first.cache, "w_hh")
    first_at = first_copy.__array_interface__["data"][0]
    if not cache_alive:
        del first, first_copy  # no view of the copy left
        gc.collect()
    w["w_hh"] -= np.float32(0.01)
    second = lf.forward(x, w["w_ih"], w["w_hh"], w["b_ih"])
    second_copy = _kept(second.cache, "w_hh")
    assert_same_bits(second_copy, w["w_hh"], "w_hh")
    assert (second_copy.__array_interface__["data"][0] == first_at) == (not cache_alive)
    want = lf.backward(lf.forward(x, w["w_ih"].copy(), w["w_hh"].copy(), w["b_ih"]).cache, dy)
    got = lf.backward(second.cache, dy)
    for name in want._fields:
        assert_same_bits(getattr(got, name), getattr(want, name), name)
    if cache_alive:
        assert_same_bits(first_copy, old["w_hh"], "the first cache's w_hh")
        want = lf.backward(lf.forward(x, old["w_ih"], old["w_hh"], old["b_ih"]).cache, dy)
        got = lf.backward(first.cache, dy)
        for name in want._fields:
            assert_same_bits(getattr(got, name), getattr(want, name), name)


def test_weights_to_convert_are_copied_each_time():
    """Weights the pass must lay out anew (here not C-contiguous) are copied
    on every call, never remembered."""
    w = _weights()
    x, _, _ = _steps()
    w_ih = np.asfortranarray(w["w_ih"])
    a = lf.forward(x, w_ih, w["w_hh"], w["b_ih"])
    b = lf.forward(x, w_ih, w["w_hh"], w["b_ih"])
    assert id(w_ih) not in _snapshots._registry
    assert not np.shares_memory(_kept(a.cache, "w_ih"), _kept(b.cache, "w_ih"))
    assert np.shares_memory(_kept(a.cache, "w_hh"), _kept(b.cache, "w_hh"))
    assert_same_bits(_kept(b.cache, "w_ih"), w["w_ih"], "w_ih")


def test_the_registry_forgets_dead_sources_and_the_least_recently_used():
    x, _, _ = _steps()
    live = [_weights(seed) for seed in range(_snapshots.MAX_SNAPSHOTS // 2 + 3)]
    for w in live:  # two sources each: more than the registry holds
        lf.forward(x, w["w_ih"], w["w_hh"], w["b_ih"])
    assert len(_snapshots._registry) == _snapshots.MAX_SNAPSHOTS
    assert id(live[0]["w_ih"]) not in _snapshots._registry  # the oldest went first
    assert id(live[-1]["w_hh"]) in _snapshots._registry
    # A use makes a source the most recent: the next ones evict others.
    lf.forward(x, live[2]["w_ih"], live[2]["w_hh"], live[2]["b_ih"])
    for seed in (90, 91):
        w = _weights(seed)
        live.append(w)
        lf.forward(x, w["w_ih"], w["w_hh"], w["b_ih"])
    assert id(live[2]["w_hh"]) in _snapshots._registry
    # A source that dies takes its entry with it.
    key = id(live[-1]["w_hh"])
    assert key in _snapshots._registry
    del live[-1], w
    gc.collect()
    assert key not in _snapshots._registry


def test_one_array_as_both_weights_and_a_projection():
    """The same array object given twice, and w_hr, each get a correct copy."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    w = rng.uniform(-0.3, 0.3, (4 * H, H)).astype(np.float32)
    first = lf.forward(x, w, w)
    w *= np.float32(0.5)
    second = lf.forward(x, w, w)
    for cache, want in ((first.cache, w * 2), (second.cache, w)):
        assert_same_bits(_kept(cache, "w_ih"), want, "w_ih")
        assert_same_bits(_kept(cache, "w_hh"), want, "w_hh")
    p = H // 2
    w_hr = rng.uniform(-0.3, 0.3, (p, H)).astype(np.float32)
    w_hh = rng.uniform(-0.3, 0.3, (4 * H, p)).astype(np.float32)
    w_ih = rng.uniform(-0.3, 0.3, (4 * H, H)).astype(np.float32)
    dy = np.ones((T, B, p), np.float32)
    out = lf.forward(x, w_ih, w_hh, w_hr=w_hr)
    old = w_hr.copy()
    w_hr += np.float32(0.25)
    want = lf.backward(lf.forward(x, w_ih.copy(), w_hh.copy(), w_hr=old).cache, dy)
    got = lf.backward(out.cache, dy)
    for name in want._fields:
        assert_same_bits(getattr(got, name), getattr(want, name), name)


@pytest.mark.parametrize(
    "options",
    [{"weight_drop": 0.3, "seed": 3}, {"checkpoint": 2}, {"layer_norm": True}],
    ids=["weight_drop", "checkpoint", "layer_norm"],
)
def test_variant_caches_keep_the_weights_of_their_forward(options):
    """Caches of the other passes (weight drop's W_hh * M, recompute's
    segments, the LayerNorm LSTM) after an in-place update of the weights."""
    w = _weights()
    x, _, _ = _steps()
    dy = np.ones((T, B, H), np.float32)
    first = lf.forward(x, w["w_ih"], w["w_hh"], w["b_ih"], **options)
    old = {k: v.copy() for k, v in w.items()}
    w["w_hh"] += np.float32(0.1)
    w["w_ih"] *= np.float32(0.9)
    second = lf.forward(x, w["w_ih"], w["w_hh"], w["b_ih"], **options)
    for cache, u in ((first.cache, old), (second.cache, w)):
        ref = lf.forward(x, u["w_ih"].copy(), u["w_hh"].copy(), u["b_ih"], **options)
        want, got = lf.backward(ref.cache, dy), lf.backward(cache, dy)
        for name in want._fields:
            assert_same_bits(getattr(got, name), getattr(want, name), name)


def test_threads_sharing_weights_updated_between_passes():
    """Threads that run passes on the same arrays, one of them updating the
    weights in place between its passes (under a lock, as a trainer would):
    every cache's backward is the one of the weights its forward saw."""
    import threading

    w = _weights()
    x, _, _ = _steps()
    dy = np.ones((T, B, H), np.float32)
    update = threading.Lock()
    results: list[tuple[dict[str, np.ndarray], Any]] = []
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(8):
                with update:
                    seen = {name: v.copy() for name, v in w.items()}
                    out = lf.forward(x, w["w_ih"], w["w_hh"], w["b_ih"])
                    if k == 0 and i % 2:
                        w["w_hh"] *= np.float32(0.99)
                results.append((seen, lf.backward(out.cache, dy)))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for seen, got in results:
        ref = lf.forward(x, seen["w_ih"], seen["w_hh"], seen["b_ih"])
        want = lf.backward(ref.cache, dy)
        for name in want._fields:
            assert_same_bits(getattr(got, name), getattr(want, name), name)


def test_a_long_run_of_steps_keeps_few_views():
    """Steps whose caches are dropped as they go (truncated backpropagation)
    leave no pile of dead views behind."""
    w = _weights()
    x, _, _ = _steps()
    h = c = np.zeros((B, H), np.float32)
    window: list[lf.CellCache] = []
    for t in range(300):
        h, c, cache = lf.cell_forward(x[t % T], h, c, w["w_ih"], w["w_hh"], w["b_ih"])
        window = [*window[-2:], cache]
    entry = _snapshots._registry[id(w["w_hh"])]
    assert len(entry.views) <= 2 * 3 + 16 + 1
    assert np.shares_memory(_kept(window[0], "w_hh"), _kept(window[-1], "w_hh"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_the_lock_is_held_can_keep_a_cache():
    """fork() while another thread holds the registry's lock: the child's
    passes do not wait for a lock no thread of it will release."""
    w = _weights()
    x, _, _ = _steps()
    with _snapshots._lock:  # as another thread would, inside a pass
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(20)  # a hang ends the child, seen as a failure
                out = lf.forward(x, w["w_ih"], w["w_hh"], w["b_ih"])
                code = 0 if _kept(out.cache, "w_hh").shape == w["w_hh"].shape else 2
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

"""The copies of the weights a cache keeps (`_snapshots.py`): made once per
version of the weights, shared by the passes that find them unchanged, and
never changed while a cache holds them, whatever the caller does to its arrays
in place between the passes."""

from __future__ import annotations

import gc

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


def test_weights_above_the_threshold():
    w = _weights()
    assert w["w_hh"].nbytes >= _snapshots.MIN_BYTES
    assert w["w_ih"].nbytes >= _snapshots.MIN_BYTES


def test_cell_steps_share_one_copy_while_the_weights_are_unchanged():
    w = _weights()
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


def test_the_registry_forgets_dead_and_old_sources():
    x, _, _ = _steps()
    for seed in range(_snapshots.MAX_SNAPSHOTS + 5):
        w = _weights(seed)
        lf.forward(x, w["w_ih"], w["w_hh"], w["b_ih"])
        assert len(_snapshots._registry) <= _snapshots.MAX_SNAPSHOTS
    w = _weights(99)
    lf.forward(x, w["w_ih"], w["w_hh"], w["b_ih"])
    assert id(w["w_hh"]) in _snapshots._registry
    key = id(w["w_hh"])
    del w
    gc.collect()
    assert key not in _snapshots._registry


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

"""Snapshots: the private copies of the weights that a cache keeps for backward.

A cache must not change when the caller updates its arrays in place, so a pass
that keeps a cache keeps copies of ``w_ih`` and ``w_hh`` (and ``w_hr``). Made on
every call, those copies cost more than the pass itself where the pass is short:
a step of ``cell_forward`` at B = 1, I = H = 256 copies 2 MiB, and two fresh
arrays of 1 MiB each can send the C allocator back to the kernel for fresh pages
on every call (measured: about 0.7 ms for the two copies, against about 30 µs
for the step).

So each array passed keeps one snapshot, remembered by the array object. A
pass given the same array again while a cache holds its snapshot shares that
snapshot after proving the bits unchanged (``_core.same_bits``, the proof a
layer makes of its parameters); when no cache holds it any longer, the pass
copies the bits into its memory. The snapshots of the steps of one sequence run
through ``cell_forward`` are then one copy, not one per step, and a pass after
another's cache is gone copies into memory the process already has.

Caches get read-only views of a snapshot, and a snapshot is rewritten only while
none of the views it handed out lives: so a cache holds the view it was given
itself (the package never keeps a view derived from it, which NumPy would base
on the snapshot's memory, not on the tracked view). The registry holds a
snapshot while its source array lives, for at most ``MAX_SNAPSHOTS`` sources
(the least recently used forgotten first). One lock serialises the registry,
the proofs and the copies, so that two threads passing the same array see one
snapshot change at a time; a child of ``fork()`` starts with a fresh lock and
an empty registry.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _core
from ._checks import private_copy

#: Below this many bytes a copy costs less than the proof: always copied.
MIN_BYTES = 64 * 1024

#: Source arrays remembered at once (each entry holds one snapshot).
MAX_SNAPSHOTS = 16

# id(source) -> its entry; order is use (least recent first). Changed under
# `_lock`, except by `_forget`, which only removes its own entry.
_registry: dict[int, _Entry] = {}
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A fresh lock and registry in a child of fork(): another thread of the
    parent may have held the lock as it forked, and no thread of the child
    would ever release it."""
    global _lock
    _lock = threading.Lock()
    _registry.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Entry:
    """One source array's snapshot, and weak references to the views of it
    handed out: while one lives, the snapshot's bits must not change."""

    __slots__ = ("source", "kept", "views", "pruned")

    def __init__(self, source: weakref.ref[np.ndarray], kept: np.ndarray) -> None:
        self.source = source
        self.kept = kept
        self.views: list[weakref.ref[np.ndarray]] = []
        self.pruned = 0  # how many views were left by the last pruning

    def made_of(self, array: np.ndarray) -> bool:
        """Whether this is the snapshot of ``array`` (the same object, alive)."""
        return self.source() is array and self.kept.shape == array.shape

    def held(self) -> bool:
        """Whether a view handed out still lives. The newest is looked at
        first (in a run of cell steps, it lives: O(1) per step)."""
        if self.views and self.views[-1]() is not None:
            return True
        self._prune()
        return bool(self.views)

    def view(self) -> np.ndarray:
        out = self.kept.view()
        self.views.append(weakref.ref(out))
        if len(self.views) > 2 * self.pruned + 16:
            self._prune()  # amortised O(1): dead views never pile up
        return out

    def _prune(self) -> None:
        self.views = [v for v in self.views if v() is not None]
        self.pruned = len(self.views)


def snapshots(arrays: Mapping[str, Any], dtype: np.dtype) -> dict[str, np.ndarray]:
    """Private, read-only, C-contiguous copies of ``arrays`` (name -> array) in
    ``dtype`` for a cache. Of an array passed before (the same object):
    while a cache holds a view of its snapshot, a view of that snapshot when
    the bits are unchanged (all such proved in one engine call), else of a new
    copy; when none does, the bits copied into the snapshot's memory (a copy
    costs about what the proof does; the memory is already the process's)."""
    out: dict[str, np.ndarray] = {}
    reusable: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if (
            type(array) is np.ndarray
            and array.dtype == dtype
            and array.flags.c_contiguous
            and array.flags.aligned
            and array.nbytes >= MIN_BYTES
        ):
            reusable[name] = array
        else:
            out[name] = private_copy(name, array, dtype)
    if reusable:
        with _lock:
            out.update(_from_registry(reusable, dtype))
    return out


def _from_registry(arrays: dict[str, np.ndarray], dtype: np.dtype) -> dict[str, np.ndarray]:
    """:func:`snapshots` of arrays it may remember (under the lock)."""
    held: list[tuple[str, np.ndarray, _Entry]] = []
    for name, array in arrays.items():
        entry = _registry.pop(id(array), None)
        if entry is None or not entry.made_of(array):
            entry = _Entry(weakref.ref(array, _forget), private_copy(name, array, dtype))
        elif entry.held():
            held.append((name, array, entry))
        else:
            entry.kept.flags.writeable = True
            np.copyto(entry.kept, array)
            entry.kept.flags.writeable = False
        _registry[id(array)] = entry  # the most recently used
    # The common case, one proof for all: every held snapshot unchanged.
    if held and not _core.same_bits([a for _, a, _ in held], [e.kept for _, _, e in held]):
        for name, array, entry in held:
            if not _core.same_bits([array], [entry.kept]):
                # A cache holds the old bits: a new snapshot.
                entry = _Entry(weakref.ref(array, _forget), private_copy(name, array, dtype))
                _registry[id(array)] = entry
    out = {name: _registry[id(array)].view() for name, array in arrays.items()}
    # A copy of the keys: `_forget` may remove entries meanwhile (another
    # thread, or the garbage collector), which an iterator would not survive.
    for key in list(_registry)[: max(0, len(_registry) - MAX_SNAPSHOTS)]:
        _registry.pop(key, None)
    return out


def _forget(ref: weakref.ref[np.ndarray]) -> None:
    """Drops the entry of a source array that died (called by the weak
    reference, at any point in any thread: it takes no lock, and removes the
    entry only while it is still the one made for that array)."""
    for key, entry in list(_registry.items()):
        if entry.source is ref:
            _registry.pop(key, None)
            return

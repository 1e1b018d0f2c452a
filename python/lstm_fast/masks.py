"""The masks of the regularised LSTM: a counter-based hash of the mask's coordinates
(docs/variants.md, 'Masks').

Every mask entry is a pure function of (seed, stream, layer, direction, its
coordinates): never of a thread, a memory layout, a batch size or the order in
which entries are computed. So a run is reproducible and the same for any thread
count, ISA or ``batch_first``, and the engine (Rust) reproduces it bit for bit
from the definition below.

All arithmetic is on unsigned 64-bit words, modulo 2**64::

    mix(z)       = SplitMix64's finaliser:
                   z ^= z >> 30;  z *= 0xBF58476D1CE4E5B9
                   z ^= z >> 27;  z *= 0x94D049BB133111EB
                   z ^= z >> 31
    absorb(h, w) = mix((h ^ w) + 0x9E3779B97F4A7C15)
    key          = absorb(absorb(absorb(seed, stream), layer), direction)
    bits         = absorb(... absorb(key, c_0) ..., c_{n-1})      the coordinates in order
    u            = (bits >> 11) * 2**-53                          53 bits, in [0, 1)
    event        = u < p                                          p a float64

An *event* is "drop" for the dropouts and "zone out" (keep the previous state) for
zoneout; its probability is p. ``u < p`` is exact in float64 (u is a multiple of
2**-53), the same as the integer test ``bits >> 11 < ceil(p * 2**53)``.

The streams and their coordinates (zero-based, ``t`` the real time index of the
step, whatever ``reverse``; ``b`` the batch row; ``u`` a unit; ``r`` a row of
``w_hh`` in its i, f, g, o layout; ``k`` a column):

=================== ====== ================= ==========================
stream              id     coordinates       mask shape
=================== ====== ================= ==========================
zoneout of h        1      (t, b, u)         (T, B, P)
zoneout of c        2      (t, b, u)         (T, B, H)
recurrent dropout   3      (b, u)            (B, P), one per sequence
weight drop         4      (r, k)            (4H, P), one per call
dropout (between)   5      (t, b, u)         (T, B, D*P) of layer ``layer``'s output
=================== ====== ================= ==========================

``layer`` is the layer's index (0 for the functional API unless given) and
``direction`` 0 forward, 1 reverse (the reference takes it from ``reverse``);
the dropout between layers uses direction 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _checks

__all__ = [
    "DROPOUT",
    "RECURRENT_DROPOUT",
    "WEIGHT_DROP",
    "ZONEOUT_C",
    "ZONEOUT_H",
    "bits",
    "events",
    "key",
    "mix",
    "scaled_keep",
    "uniform",
    "uniform_scalar",
]

ZONEOUT_H = 1
ZONEOUT_C = 2
RECURRENT_DROPOUT = 3
WEIGHT_DROP = 4
DROPOUT = 5

_WORD = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment, 2**64 / golden ratio
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_UNIFORM_BITS = 53


# --------------------------------------------------------------------------
# The definition, on Python ints (one word at a time)


def mix(z: int) -> int:
    """SplitMix64's finaliser of one 64-bit word (a bijection of [0, 2**64))."""
    z ^= z >> 30
    z = (z * _M1) & _WORD
    z ^= z >> 27
    z = (z * _M2) & _WORD
    z ^= z >> 31
    return z


def _absorb(h: int, w: int) -> int:
    return mix(((h ^ w) + _GAMMA) & _WORD)


def key(seed: int, stream: int, layer: int = 0, direction: int = 0) -> int:
    """The 64-bit key of one mask: ``seed``, the stream id, the layer, the direction."""
    h = _word("seed", seed)
    for name, w in (("stream", stream), ("layer", layer), ("direction", direction)):
        h = _absorb(h, _word(name, w))
    return h


def uniform_scalar(seed: int, stream: int, layer: int, direction: int, *coordinates: int) -> float:
    """One entry's uniform number in [0, 1), computed word by word: the plainest
    statement of the definition (the vectorised :func:`uniform` must equal it)."""
    h = key(seed, stream, layer, direction)
    for k, c in enumerate(coordinates):
        h = _absorb(h, _word(f"coordinate {k}", c))
    return (h >> (64 - _UNIFORM_BITS)) * 2.0**-_UNIFORM_BITS


def _word(name: str, value: Any) -> int:
    value = _checks.integer(name, value)
    if not 0 <= value <= _WORD:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {value}")
    return value


# --------------------------------------------------------------------------
# Vectorised: NumPy uint64 arrays (their arithmetic wraps modulo 2**64)


def _mix_array(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(_M1)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def bits(seed: int, stream: int, layer: int, direction: int, shape: tuple[int, ...]) -> np.ndarray:
    """The 64-bit hash of every entry of a mask of ``shape``, whose coordinates
    are the entry's indices (in the order of the axes), as a uint64 array."""
    h = np.full((1,) * len(shape), key(seed, stream, layer, direction), dtype=np.uint64)
    for axis, n in enumerate(shape):
        index = np.arange(n, dtype=np.uint64).reshape(
            [-1 if a == axis else 1 for a in range(len(shape))]
        )
        h = _mix_array((h ^ index) + np.uint64(_GAMMA))
    return np.broadcast_to(h, shape)


def uniform(
    seed: int, stream: int, layer: int, direction: int, shape: tuple[int, ...]
) -> np.ndarray:
    """Every entry's uniform number in [0, 1), float64 (53 bits)."""
    top = bits(seed, stream, layer, direction, shape) >> np.uint64(64 - _UNIFORM_BITS)
    return top.astype(np.float64) * 2.0**-_UNIFORM_BITS


def events(
    seed: int, stream: int, layer: int, direction: int, shape: tuple[int, ...], p: float
) -> np.ndarray:
    """Where the event happens (``u < p``), a bool array of ``shape``."""
    return uniform(seed, stream, layer, direction, shape) < p


def scaled_keep(
    seed: int, stream: int, layer: int, direction: int, shape: tuple[int, ...], p: float, dtype
) -> np.ndarray:
    """An inverted-dropout mask: ``1/(1-p)`` where kept, 0 where dropped (the event).

    The scale is computed in float64 and rounded to ``dtype`` once; the masked
    value is ``value * mask`` in ``dtype``.
    """
    dtype = np.dtype(dtype)
    scale = np.asarray(1.0 / (1.0 - p)).astype(dtype)
    return np.where(events(seed, stream, layer, direction, shape, p), dtype.type(0), scale)

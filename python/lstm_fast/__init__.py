"""lstm_fast: a fast, checkable LSTM for the CPU with a NumPy API.

Functional API: :func:`forward`, :func:`backward`, :func:`cell_forward`,
:func:`cell_backward`; threads with :func:`set_num_threads`. The layer:
:class:`LSTM`, with weight conversion in :mod:`lstm_fast.convert` and optimizers
in :mod:`lstm_fast.optim`. The NumPy reference with the same functional API lives
in :mod:`lstm_fast.reference`. Every function, argument, shape, dtype rule and
error is described in docs/api.md; how the engine is built, in docs/design.md.
"""

from __future__ import annotations

import os

from . import _core, convert, optim
from ._types import (
    Cell,
    CellGradients,
    CellLayerNormGradients,
    Forward,
    Gradients,
    LayerNormGradients,
    LayerWeights,
)
from .functional import (
    Cache,
    CellCache,
    PreparedWeights,
    backward,
    bfloat16_round,
    cell_backward,
    cell_forward,
    forward,
    get_num_threads,
    prepare_weights,
    set_num_threads,
)
from .layer import LSTM

__version__ = _core.__version__

__all__ = [
    "Cache",
    "Cell",
    "CellCache",
    "CellGradients",
    "CellLayerNormGradients",
    "Forward",
    "Gradients",
    "LSTM",
    "LayerNormGradients",
    "LayerWeights",
    "PreparedWeights",
    "available_isas",
    "backward",
    "bfloat16_round",
    "cell_backward",
    "cell_forward",
    "convert",
    "forward",
    "get_isa",
    "get_num_threads",
    "optim",
    "prepare_weights",
    "set_num_threads",
]


def available_isas() -> list[str]:
    """SIMD paths this CPU can run, slowest first (``LSTM_FAST_ISA`` picks one)."""
    return list(_core.available_isas())


def get_isa() -> str:
    """The SIMD path in use: ``"scalar"``, ``"avx2"``, ``"avx512"`` or ``"avx512bf16"``
    (AVX-512 with the bfloat16 dot products, which bf16 inference uses)."""
    return str(_core.get_isa())


def _set_isa(name: str) -> None:
    """Force a SIMD path (for tests); ValueError if unknown or unsupported."""
    _core.set_isa(name)


def _check_isa_request() -> None:
    """Warn when LSTM_FAST_ISA names a path this CPU cannot run (the engine then
    uses the best one it can, rather than failing at import)."""
    wanted = os.environ.get("LSTM_FAST_ISA", "").strip().lower()
    if wanted and wanted != get_isa():
        import warnings

        warnings.warn(
            f"LSTM_FAST_ISA={wanted!r} is not one of the SIMD paths this CPU can run "
            f"(available: {', '.join(available_isas())}); using {get_isa()!r}",
            RuntimeWarning,
            stacklevel=2,
        )


def _check_threads_request() -> None:
    """Warn when LSTM_FAST_NUM_THREADS is not a number of threads the engine
    accepts (the message says which); the engine then uses its default."""
    problem = _core._env_num_threads_error()
    if problem is not None:
        import warnings

        warnings.warn(f"{problem}; using {get_num_threads()} threads", RuntimeWarning, stacklevel=2)


_check_isa_request()
_check_threads_request()

# The worker threads do not survive fork(): a child starts a fresh pool.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_core._after_fork_in_child)

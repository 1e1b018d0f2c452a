"""Type stubs of the compiled engine (rust/src/python.rs). Private: use the
functions of :mod:`lstm_fast`, which check and normalise their arguments.

The two passes take bundles (lstm_fast/_bundles.py) whose fields python.rs
reads by name; every array of one call has the dtype of ``seq.x``."""

from collections.abc import Sequence as _Seq
from typing import final

import numpy as np

from ._bundles import (
    CacheArrays,
    Grads,
    LayerNormCacheArrays,
    LayerNormGrads,
    LayerNormParams,
    Outputs,
    Seeds,
    Sequence,
)

__all__ = [
    "Cancel",
    "Kept",
    "Packed",
    "__version__",
    "_after_fork_in_child",
    "_env_num_threads_error",
    "_hold_pool_lock",
    "_last_team_stats",
    "available_isas",
    "bf16_dot_peak",
    "bfloat16_bits",
    "fma_peak",
    "backward",
    "backward_checkpointed",
    "forward",
    "forward_checkpointed",
    "get_isa",
    "get_num_threads",
    "hidden_pad",
    "layer_norm_backward",
    "layer_norm_backward_checkpointed",
    "layer_norm_forward",
    "layer_norm_forward_checkpointed",
    "layer_norm_gates",
    "read_bandwidth",
    "same_bits",
    "scaled_keep",
    "set_isa",
    "set_num_threads",
    "zoneout_candidates",
    "zoneout_keep",
]

__version__: str

def forward(seq: Sequence, out: Outputs, cache: CacheArrays | None) -> None: ...
def backward(seq: Sequence, cache: CacheArrays, seeds: Seeds, grads: Grads) -> None: ...
def zoneout_candidates(seq: Sequence, cache: CacheArrays, out: np.ndarray) -> None: ...
def layer_norm_forward(
    seq: Sequence, ln: LayerNormParams, out: Outputs, cache: LayerNormCacheArrays | None
) -> None: ...
def layer_norm_gates(
    seq: Sequence,
    ln: LayerNormParams,
    cache: LayerNormCacheArrays,
    gates: np.ndarray,
    pre: np.ndarray | None,
    block: int | None,
) -> None: ...
def layer_norm_backward(
    seq: Sequence,
    ln: LayerNormParams,
    cache: LayerNormCacheArrays,
    seeds: Seeds,
    grads: LayerNormGrads,
) -> None: ...

_Zoneout = tuple[int, int, int, float, float] | None

def forward_checkpointed(
    seq: Sequence, out: Outputs, states: np.ndarray, every: int, zoneout: _Zoneout = None
) -> None: ...
def backward_checkpointed(
    seq: Sequence,
    states: np.ndarray,
    every: int,
    seeds: Seeds,
    grads: Grads,
    zoneout: _Zoneout = None,
) -> None: ...
def layer_norm_forward_checkpointed(
    seq: Sequence,
    ln: LayerNormParams,
    out: Outputs,
    states: np.ndarray,
    every: int,
    zoneout: _Zoneout = None,
) -> None: ...
def layer_norm_backward_checkpointed(
    seq: Sequence,
    ln: LayerNormParams,
    states: np.ndarray,
    every: int,
    seeds: Seeds,
    grads: LayerNormGrads,
    zoneout: _Zoneout = None,
) -> None: ...
def hidden_pad(hidden: int, itemsize: int) -> int: ...
def bfloat16_bits(src: np.ndarray, out: np.ndarray) -> None: ...
def same_bits(given: _Seq[object], kept: _Seq[object]) -> bool: ...
def scaled_keep(
    out: np.ndarray, seed: int, stream: int, layer: int, direction: int, p: float
) -> None: ...
def zoneout_keep(
    out: np.ndarray,
    seed: int,
    stream: int,
    layer: int,
    direction: int,
    p: float,
    steps: int,
    batch: int,
    width: int,
    batch_first: bool,
) -> None: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def _after_fork_in_child() -> None: ...
def _env_num_threads_error() -> str | None: ...
def _hold_pool_lock(seconds: float) -> None: ...
def _last_team_stats() -> tuple[int, int, int, int]: ...
def available_isas() -> list[str]: ...
def get_isa() -> str: ...
def read_bandwidth(nbytes: int, seconds: float = 0.2) -> float: ...
def set_isa(name: str) -> None: ...
def fma_peak(seconds: float = 0.2) -> float: ...
def bf16_dot_peak(seconds: float = 0.2) -> float | None: ...

@final
class Cancel:
    """Stops the engine calls made inside ``with`` blocks of it, once cancelled."""

    def __init__(self) -> None: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...
    def __enter__(self) -> Cancel: ...
    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None: ...

@final
class Packed:
    """The packed panels of ``w_ih``, ``w_hh`` and the projection ``w_hr`` (None
    for none), kept for the calls whose ``seq.packed`` it is."""

    def __new__(
        cls, w_ih: object, w_hh: object, w_hr: object | None = None, bfloat16: bool = False
    ) -> Packed: ...

@final
class Kept:
    """Prepared weights as a kept call runs them (``PreparedWeights._run_kept``):
    the private arrays, the panels and the variant fixed once; each call proves
    the caller's live weights bit for bit the kept ones and runs one pass
    without a cache, in one crossing (one row for a few steps reads the live
    weights themselves, with the same bits, and needs no proof). With
    ``layer_norm`` the pass is the LayerNorm LSTM's, its gains and biases read
    in place."""

    def __new__(
        cls,
        packed: Packed,
        w_ih: np.ndarray,
        w_hh: np.ndarray,
        w_hr: np.ndarray | None,
        bias: np.ndarray | None,
        b_ih: np.ndarray | None,
        b_hh: np.ndarray | None,
        clip: float | None,
        input_forget: bool,
        forget_gate: bool,
        activations: _Seq[tuple[str, float | None, float | None]] | None,
    ) -> Kept: ...
    def forward(
        self,
        x: np.ndarray,
        h0: np.ndarray | None,
        c0: np.ndarray | None,
        live: _Seq[object | None],
        peepholes: object | None,
        out: Outputs,
        *,
        batch_first: bool = False,
        reverse: bool = False,
        layer_norm: LayerNormParams | None = None,
    ) -> bool: ...

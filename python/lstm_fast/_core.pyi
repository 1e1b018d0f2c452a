"""Type stubs of the compiled engine (rust/src/python.rs). Private: use the
functions of :mod:`lstm_fast`, which check and normalise their arguments.

The two passes take bundles (lstm_fast/_bundles.py) whose fields python.rs
reads by name; every array of one call has the dtype of ``seq.x``."""

from ._bundles import CacheArrays, Grads, Outputs, Seeds, Sequence

__all__ = [
    "__version__",
    "_after_fork_in_child",
    "available_isas",
    "backward",
    "forward",
    "get_isa",
    "get_num_threads",
    "hidden_pad",
    "set_isa",
    "set_num_threads",
]

__version__: str

def forward(seq: Sequence, out: Outputs, cache: CacheArrays | None) -> None: ...
def backward(seq: Sequence, cache: CacheArrays, seeds: Seeds, grads: Grads) -> None: ...
def hidden_pad(hidden: int, itemsize: int) -> int: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def _after_fork_in_child() -> None: ...
def available_isas() -> list[str]: ...
def get_isa() -> str: ...
def set_isa(name: str) -> None: ...

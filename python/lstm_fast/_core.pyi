"""Type stubs of the compiled engine (rust/src/python.rs). Private: use the
functions of :mod:`lstm_fast`, which check and normalise their arguments."""

import numpy as np

__all__ = [
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

def forward(
    x: np.ndarray,
    w_ih: np.ndarray,
    w_hh: np.ndarray,
    bias: np.ndarray | None,
    h0: np.ndarray | None,
    c0: np.ndarray | None,
    lengths: np.ndarray | None,
    batch_first: bool,
    reverse: bool,
    y: np.ndarray,
    h_n: np.ndarray,
    c_n: np.ndarray,
    gates: np.ndarray | None = None,
    cells: np.ndarray | None = None,
    h_prev: np.ndarray | None = None,
) -> None: ...
def backward(
    x: np.ndarray,
    w_ih: np.ndarray,
    w_hh: np.ndarray,
    c0: np.ndarray | None,
    lengths: np.ndarray | None,
    batch_first: bool,
    reverse: bool,
    gates: np.ndarray,
    cells: np.ndarray,
    h_prev: np.ndarray,
    dy: np.ndarray | None,
    dh_n: np.ndarray | None,
    dc_n: np.ndarray | None,
    dx: np.ndarray,
    dh0: np.ndarray,
    dc0: np.ndarray,
    dw_ih: np.ndarray,
    dw_hh: np.ndarray,
    db: np.ndarray | None = None,
    scratch: np.ndarray | None = None,
) -> None: ...
def hidden_pad(hidden: int, itemsize: int) -> int: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def _after_fork_in_child() -> None: ...
def available_isas() -> list[str]: ...
def get_isa() -> str: ...
def set_isa(name: str) -> None: ...

"""Result types of the functional API (docs/api.md, 'Functional API') and of
:meth:`lstm_fast.LSTM.weights`."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Forward(NamedTuple):
    """Result of :func:`lstm_fast.forward`."""

    y: np.ndarray
    h_n: np.ndarray
    c_n: np.ndarray
    cache: Any | None


class Gradients(NamedTuple):
    """Result of :func:`lstm_fast.backward`; a missing bias has gradient ``None``."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None


class Cell(NamedTuple):
    """Result of :func:`lstm_fast.cell_forward`."""

    h_new: np.ndarray
    c_new: np.ndarray
    cache: Any


class CellGradients(NamedTuple):
    """Result of :func:`lstm_fast.cell_backward`."""

    dx: np.ndarray
    dh: np.ndarray
    dc: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None


class LayerWeights(NamedTuple):
    """One layer and direction of an :class:`lstm_fast.LSTM`, from its ``weights``
    method: gate blocks i, f, g, o; the biases are ``None`` without ``bias``."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray | None
    b_hh: np.ndarray | None

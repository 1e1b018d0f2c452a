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


class GradientFlow(NamedTuple):
    """How the gradient travels back through time (``backward(..., flow=True)``).

    ``dh[t, b]`` is the L2 norm over the units of dL/dh_t of row b: the whole
    gradient that reaches the state h_t (dy_t plus what comes back from step t+1;
    P units with a projection); ``dc[t, b]`` that of dL/dc_t, everything that
    reaches c_t (through h_t, the output peephole and step t+1). Both are (T, B),
    time-major and indexed by real time whatever ``batch_first`` and ``reverse``;
    steps past a row's length are 0. ``dh_sum`` and ``dc_sum`` (T,) are their sums
    over the batch.
    """

    dh: np.ndarray
    dc: np.ndarray
    dh_sum: np.ndarray
    dc_sum: np.ndarray


class VariantGradients(NamedTuple):
    """Result of :func:`lstm_fast.backward` (and the reference's) when the forward
    had a projection or peepholes, or ``flow=True``: the seven fields of
    ``Gradients``, in its order (``g[:7]`` is the classic tuple), then the
    gradients of the new parameters (``None`` where the forward had none) and the
    gradient flow (``None`` unless asked for)."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None
    dw_hr: np.ndarray | None
    dpeepholes: np.ndarray | None
    flow: GradientFlow | None


class CellVariantGradients(NamedTuple):
    """Result of :func:`lstm_fast.cell_backward` (and the reference's) when the
    step had a projection or peepholes: the seven fields of ``CellGradients``,
    then ``dw_hr`` and ``dpeepholes``."""

    dx: np.ndarray
    dh: np.ndarray
    dc: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None
    dw_hr: np.ndarray | None
    dpeepholes: np.ndarray | None


class LayerNormGradients(NamedTuple):
    """Result of :func:`lstm_fast.backward` (and the reference's) after a forward
    with ``layer_norm=True``: the ten fields of ``VariantGradients`` in its order
    (``g[:7]`` is the classic tuple), then the gradients of the normalisations'
    gains and biases, ``None`` for those the forward did not get."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None
    dw_hr: np.ndarray | None
    dpeepholes: np.ndarray | None
    flow: GradientFlow | None
    dw_ln_ih: np.ndarray | None
    db_ln_ih: np.ndarray | None
    dw_ln_hh: np.ndarray | None
    db_ln_hh: np.ndarray | None
    dw_ln_c: np.ndarray | None
    db_ln_c: np.ndarray | None


class CellLayerNormGradients(NamedTuple):
    """Result of :func:`lstm_fast.cell_backward` (and the reference's) after a
    step with ``layer_norm=True``: the nine fields of ``CellVariantGradients``,
    then the six of the normalisations."""

    dx: np.ndarray
    dh: np.ndarray
    dc: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db_ih: np.ndarray | None
    db_hh: np.ndarray | None
    dw_hr: np.ndarray | None
    dpeepholes: np.ndarray | None
    dw_ln_ih: np.ndarray | None
    db_ln_ih: np.ndarray | None
    dw_ln_hh: np.ndarray | None
    db_ln_hh: np.ndarray | None
    dw_ln_c: np.ndarray | None
    db_ln_c: np.ndarray | None


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

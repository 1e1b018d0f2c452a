"""The argument bundles of the compiled engine's two passes.

``_core.forward(seq, out, cache)`` and ``_core.backward(seq, cache, seeds,
grads)`` take objects, not positions: rust/src/python.rs reads each field below
as an attribute of its bundle, by name, into the engine's structs of the same
names (``Sequence``, ``Outputs``, ``Cache``, ``Seeds``, ``Grads``). Every array
is C-contiguous, aligned and of one dtype, float32 or float64, which
``seq.x`` decides; the engine writes the outputs in place.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from ._core import Packed


class Sequence(Protocol):
    """One checked sequence pass, as ``functional._Args`` holds it: ``x`` (T, B,
    I), or (B, T, I) with ``batch_first``; ``w_ih`` (4H, I); ``w_hh`` (4H, P);
    ``bias`` (4H,) = b_ih + b_hh; ``h0`` (B, P), ``c0`` (B, H); ``lengths`` int64
    (B,); ``packed``: None, or the ``_core.Packed`` made from this very ``w_ih``,
    ``w_hh`` and ``w_hr`` (prepared weights), whose panels the call reuses. P is
    ``w_hr``'s rows with a projection, else H."""

    x: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    bias: np.ndarray | None
    h0: np.ndarray | None
    c0: np.ndarray | None
    lengths: np.ndarray | None
    packed: Packed | None
    batch_first: bool
    reverse: bool
    steps: int
    batch: int
    input: int
    hidden: int
    # The variant (docs/variants.md): peepholes (3H,) [p_i, p_o, p_f] or None;
    # clip > 0 or None; the two flags; activations None (the plain ones) or
    # three (ONNX name, alpha or None, beta or None).
    peepholes: np.ndarray | None
    w_hr: np.ndarray | None  # the projection (P, H), or None
    clip: float | None
    input_forget: bool
    forget_gate: bool
    activations: tuple[tuple[str, float | None, float | None], ...] | None
    # Recurrent dropout's scaled keep mask (B, P) of a training pass, or None
    # (docs/variants.md, 'Recurrent dropout'); weight drop is already in w_hh.
    recurrent_keep: np.ndarray | None
    # Zoneout (docs/variants.md, 'Zoneout'): in training the masks (T*B, Pp) for
    # h and (T*B, Hp) for c in x's layout (``_core.zoneout_keep``: 1 where the
    # unit keeps its previous value), else None; at inference the rates
    # (0.0: none).
    zoneout_h_keep: np.ndarray | None
    zoneout_c_keep: np.ndarray | None
    zoneout_h: float
    zoneout_c: float


class Outputs(NamedTuple):
    """What forward writes: ``y`` like x with last dimension P; ``h_n`` (B, P),
    ``c_n`` (B, H)."""

    y: np.ndarray
    h_n: np.ndarray
    c_n: np.ndarray


class CacheArrays(NamedTuple):
    """What forward writes for backward, rows ordered like x: the activated
    gates (T*B, 4*Hp) in blocks i, f, g, o; cells (T*B, Hp) and h_prev (T*B, Pp),
    with Hp = ``_core.hidden_pad(H, itemsize)``, Pp likewise of P; ``pre`` (T*B, 4*Hp), the
    pre-activations, for the variants whose backward needs them (else None).
    ``cells`` holds the states c_t, after zoneout with zoneout of c (backward
    rebuilds the candidates from them and the gates): 5*Hp + Pp per (row,
    step), 6*Hp without a projection, with zoneout as without."""

    gates: np.ndarray
    cells: np.ndarray
    h_prev: np.ndarray
    pre: np.ndarray | None


class Seeds(NamedTuple):
    """Gradients of the loss with respect to the outputs; None means zeros."""

    dy: np.ndarray | None
    dh_n: np.ndarray | None
    dc_n: np.ndarray | None


class Grads(NamedTuple):
    """What backward writes, each shaped like its variable; ``db`` (4H,) is the
    gradient of both biases (None: not wanted); ``scratch`` (T*B, 4*Hp), any
    contents, holds the gate gradients (None: the engine allocates them);
    ``dpeepholes`` (3H,) with peepholes, else None; ``dw_hr`` (P, H) with a
    projection, else None; ``flow_h``, ``flow_c`` (T, B) the gradient-flow norms,
    or both None. ``dh0`` is (B, P), ``dw_hh`` (4H, P)."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db: np.ndarray | None
    scratch: np.ndarray | None
    dpeepholes: np.ndarray | None
    dw_hr: np.ndarray | None
    flow_h: np.ndarray | None
    flow_c: np.ndarray | None


class LayerNormParams(NamedTuple):
    """The LayerNorm LSTM's gains ``w_*`` and biases ``b_*`` (None: a gain of 1,
    a bias of 0): ``w_ih``, ``b_ih``, ``w_hh``, ``b_hh`` (4H,), ``w_c``, ``b_c``
    (H,), and ``eps``, added to the variance."""

    w_ih: np.ndarray | None
    b_ih: np.ndarray | None
    w_hh: np.ndarray | None
    b_hh: np.ndarray | None
    w_c: np.ndarray | None
    b_c: np.ndarray | None
    eps: float


class LayerNormCacheArrays(NamedTuple):
    """What ``_core.layer_norm_forward`` writes for backward, dense, rows R = T*B
    ordered like x: ``cells`` (R, H), ``h_prev`` (R, P), ``sx_hat`` and
    ``sh_hat`` (R, 4H) the normalised products, ``moments`` (R, 4) the 1/sigma
    of s_x, s_h and c and the mean of c (the gates, the pre-activations and
    the normalised cell are rebuilt from these: ``_core.layer_norm_gates``);
    with zoneout of c ``c_state`` (R, H) the states after zoneout (``cells``
    then holds the candidates), else None."""

    cells: np.ndarray
    h_prev: np.ndarray
    sx_hat: np.ndarray
    sh_hat: np.ndarray
    moments: np.ndarray
    c_state: np.ndarray | None


class LayerNormGrads(NamedTuple):
    """What ``_core.layer_norm_backward`` writes: those of :class:`Grads` (``db``
    is the gradient of every bias of the gate pre-activations), its scratch as
    two arrays, dz and ds_h, (T*B, 4H) each, any contents (both None: the engine
    allocates them), then the gains' gradients and that of ``b_ln_c``, each None
    when not wanted."""

    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dw_ih: np.ndarray
    dw_hh: np.ndarray
    db: np.ndarray | None
    dpeepholes: np.ndarray | None
    dw_hr: np.ndarray | None
    flow_h: np.ndarray | None
    flow_c: np.ndarray | None
    scratch_dz: np.ndarray | None
    scratch_dsh: np.ndarray | None
    dw_ln_ih: np.ndarray | None
    dw_ln_hh: np.ndarray | None
    dw_ln_c: np.ndarray | None
    db_ln_c: np.ndarray | None

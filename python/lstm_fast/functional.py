"""The functional API (docs/api.md, 'Functional API'), over the compiled engine.

This module checks and normalises arguments (dtype, shape, memory order; the rules
themselves live in ``_checks``) and allocates the results; `_core`
(rust/src/python.rs) borrows the arrays and runs the engine with the GIL released.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._bundles import (
    CacheArrays,
    Grads,
    LayerNormCacheArrays,
    LayerNormGrads,
    LayerNormParams,
    Outputs,
    Seeds,
)
from ._checks import (
    CELL_NAMES,
    LAYER_NORM_EPS,
    LAYER_NORM_NAMES,
    NEEDS_INPUT,
    PLAIN_ACTIVATIONS,
    bfloat16_weights,
    cell_arguments,
    check_lengths,
    check_shape,
    check_size,
    compute_dtype,
    contiguous,
    empty,
    flag,
    float_dtype,
    hidden_from_gate_rows,
    integer,
    layer_norm_arrays,
    layer_norm_flag,
    pass_arguments,
    positive_int,
    private_copy,
    projected_arguments,
    projection,
    real_array,
    regularisation,
    shaped_array,
    variant_options,
)
from ._checks import (
    layer_norm_eps as checked_eps,
)
from ._snapshots import snapshots
from ._types import (
    Cell,
    CellGradients,
    CellLayerNormGradients,
    CellVariantGradients,
    Forward,
    GradientFlow,
    Gradients,
    LayerNormGradients,
    VariantGradients,
)

__all__ = [
    "Cache",
    "CellCache",
    "LayerNormCache",
    "PreparedWeights",
    "backward",
    "cell_backward",
    "cell_forward",
    "forward",
    "get_num_threads",
    "prepare_weights",
    "set_num_threads",
]

_GATES = ("i", "f", "g", "o")


# ---------------------------------------------------------------------------
# Argument normalisation
# ---------------------------------------------------------------------------


def _bias_sum(biases: list[np.ndarray], dtype: np.dtype) -> np.ndarray | None:
    """b_ih + b_hh (or the one given) in ``dtype``, the one bias the engine adds."""
    if not biases:
        return None
    cast_biases = [b.astype(dtype) for b in biases]
    return np.require(sum(cast_biases[1:], cast_biases[0]), requirements=["C", "A"])


class _Args:
    """Checked, normalised arguments of one sequence pass."""

    def __init__(
        self,
        x: Any,
        w_ih: Any,
        w_hh: Any,
        b_ih: Any,
        b_hh: Any,
        h0: Any,
        c0: Any,
        *,
        batch_first: bool,
        lengths: Any,
        reverse: bool,
        own: bool,
        names: dict[str, str],
        prepared: PreparedWeights | None = None,
        peepholes: Any = None,
        w_hr: Any = None,
        clip: Any = None,
        input_forget: Any = False,
        forget_gate: Any = True,
        activations: Any = None,
        norms: dict[str, Any] | None = None,
        layer_norm_eps: Any = LAYER_NORM_EPS,
    ) -> None:
        batch_first = flag("batch_first", batch_first)
        self.reverse = flag("reverse", reverse)
        # The variant (docs/variants.md): what _core's Sequence bundle reads as
        # peepholes, clip, input_forget, forget_gate, activations.
        self.clip, self.input_forget, self.forget_gate, acts = variant_options(
            clip=clip, input_forget=input_forget, forget_gate=forget_gate, activations=activations
        )
        #: None for the plain activations, else three (ONNX name, alpha, beta).
        self.activations: tuple[tuple[str, float | None, float | None], ...] | None = (
            None if acts == PLAIN_ACTIVATIONS else acts
        )
        raw = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "h0": h0, "c0": c0}
        if prepared is not None:
            w_hr = prepared._w_hr
        if w_hr is None:
            arrays, sizes = pass_arguments(raw, batch_first=batch_first, names=names)
        else:
            # w_hh (4H, P) and h0 (B, P): the reference's rules (_checks).
            arrays, sizes = projected_arguments(raw, w_hr, batch_first=batch_first, names=names)
        if peepholes is None and prepared is not None:
            peepholes = prepared._peepholes
        if peepholes is not None:
            arrays["peepholes"] = shaped_array(
                "peepholes", peepholes, "(3*hidden_size,)", (3 * sizes[3],)
            )
        # The LayerNorm LSTM's gains and biases (None: no layer norm); they count
        # for the dtype like the weights.
        ln_arrays = None if norms is None else layer_norm_arrays(norms, sizes[3])
        if ln_arrays:
            arrays.update(ln_arrays)
        # Prepared weights fix the dtype (their private copies are made in it).
        self.dtype = (
            compute_dtype(a.dtype for a in arrays.values()) if prepared is None else prepared.dtype
        )
        #: The `_core.Packed` of prepared weights: w_hh's panels, kept across calls.
        self.packed = None if prepared is None else prepared._packed
        #: Weight drop's scaled keep mask M (4H, P) of a training pass, else None:
        #: then ``w_hh`` is the dropped matrix W_hh ⊙ M (set by ``_regularise``).
        self.w_hh_keep: np.ndarray | None = None
        #: Recurrent dropout's scaled keep mask r (B, P) of a training pass, else
        #: None: the engine multiplies the recurrent product's operand h_{t-1} by it.
        self.recurrent_keep: np.ndarray | None = None
        #: Zoneout's masks of a training pass, (T*B, Pp) for h and (T*B, Hp) for
        #: c in x's layout, 1 where the unit keeps its previous value, else None;
        #: at inference the rates ``zoneout_h``, ``zoneout_c`` (0.0: none).
        self.zoneout_h_keep: np.ndarray | None = None
        self.zoneout_c_keep: np.ndarray | None = None
        self.zoneout_h = 0.0
        self.zoneout_c = 0.0
        #: Instead of those masks, in a checkpointed training pass: (seed, layer,
        #: direction, z_h, z_c), each segment drawing its own rows of them
        #: (rust/src/masks.rs, ``ZoneoutDraws``); else None.
        self.zoneout_draws: tuple[int, int, int, float, float] | None = None
        steps, batch, inp, hidden = sizes
        self.steps, self.batch, self.input, self.hidden = sizes
        #: P, the width of the state h: proj_size with a projection, else H.
        self.proj = hidden if "w_hr" not in arrays else int(arrays["w_hr"].shape[0])
        self.batch_first = batch_first
        self.hidden_pad = _core.hidden_pad(hidden, self.dtype.itemsize)
        self.proj_pad = _core.hidden_pad(self.proj, self.dtype.itemsize)
        xname = names.get("x", "x")
        # The buffers the engine allocates besides the arguments, padded to
        # hidden_pad: the cache (and backward's scratch), the per-row state, w_hh's
        # panels and w_ih's padded gate rows (rust/src/check.rs checks their exact
        # sizes again).
        hp, pp = self.hidden_pad, self.proj_pad
        check_size(xname, (steps, batch, 4 * hp), (batch, 4 * hp), (steps, batch, pp + hp))
        check_size("w_hh", (4 * hp, max(hp, pp)))
        check_size("w_ih", (4 * hp, inp))
        self.lengths = None if lengths is None else check_lengths(lengths, batch, steps, own=own)

        dt = self.dtype
        self.x = contiguous(xname, arrays["x"], dt, own=own)
        if prepared is not None:
            # Private, never written: a cache may share them.
            self.w_ih, self.w_hh, self.bias = prepared._w_ih, prepared._w_hh, prepared._bias
            self.w_hr = prepared._w_hr
            self.has_b_ih, self.has_b_hh = prepared._has_bias
        else:
            given: dict[str, Any] = {k: arrays[k] for k in ("w_ih", "w_hh", "w_hr") if k in arrays}
            # A cache keeps snapshots of the weights, shared by the passes
            # that find them unchanged (`_snapshots.py`).
            if own:
                weights = snapshots(given, dt)
            else:
                weights = {k: contiguous(k, v, dt, own=False) for k, v in given.items()}
            self.w_ih, self.w_hh = weights["w_ih"], weights["w_hh"]
            self.w_hr = weights.get("w_hr")
            self.has_b_ih, self.has_b_hh = "b_ih" in arrays, "b_hh" in arrays
            self.bias = _bias_sum([arrays[k] for k in ("b_ih", "b_hh") if k in arrays], dt)
        h0n, c0n = names.get("h0", "h0"), names.get("c0", "c0")
        self.h0 = contiguous(h0n, arrays["h0"], dt, own=False) if "h0" in arrays else None
        self.c0 = contiguous(c0n, arrays["c0"], dt, own=own) if "c0" in arrays else None
        self.peepholes = (
            contiguous("peepholes", arrays["peepholes"], dt, own=own)
            if "peepholes" in arrays
            else None
        )
        #: The LayerNorm LSTM's parameters (docs/variants.md), or None.
        self.ln: LayerNormParams | None = None
        if ln_arrays is not None:
            eps = checked_eps(layer_norm_eps)
            w_ih_, b_ih_, w_hh_, b_hh_, w_c, b_c = (
                contiguous(k, ln_arrays[k], dt, own=own) if k in ln_arrays else None
                for k in LAYER_NORM_NAMES
            )
            self.ln = LayerNormParams(w_ih_, b_ih_, w_hh_, b_hh_, w_c, b_c, eps)

    @property
    def caches_pre(self) -> bool:
        """Whether backward needs the pre-activations cached (rust/src/variant.rs,
        ``Variant::caches_pre``: with clip, or σ_f or σ_g among NEEDS_INPUT)."""
        return caches_pre(self.clip, self.activations)

    @property
    def zones_c(self) -> bool:
        """Whether c zones out (training or inference): the cache then keeps the
        states after zoneout besides the candidates (rust/src/sequence.rs, Cache)."""
        return self.zoneout_c_keep is not None or self.zoneout_c != 0.0

    @property
    def y_shape(self) -> tuple[int, int, int]:
        if self.batch_first:
            return (self.batch, self.steps, self.proj)
        return (self.steps, self.batch, self.proj)

    def layout_shape(self, last: int) -> tuple[int, int, int]:
        if self.batch_first:
            return (self.batch, self.steps, last)
        return (self.steps, self.batch, last)


# ---------------------------------------------------------------------------
# Caches
# ---------------------------------------------------------------------------


def caches_pre(clip: float | None, activations: Any) -> bool:
    """Whether backward needs the pre-activations cached (rust/src/variant.rs,
    ``Variant::caches_pre``: with clip, or σ_f or σ_g among NEEDS_INPUT);
    ``activations`` None means the plain ones."""
    acts = activations or PLAIN_ACTIVATIONS
    return clip is not None or acts[0][0] in NEEDS_INPUT or acts[1][0] in NEEDS_INPUT


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


class Cache:
    """What :func:`backward` needs from :func:`forward` (private copies).

    ``i``, ``f``, ``g``, ``o`` (activated gates) and ``c`` (cell states) are
    read-only (T, B, H) arrays, time-major whatever the input layout; padded
    steps hold zeros. The variants whose backward needs the pre-activations
    (``clip``, or an activation whose derivative needs its input) keep them
    too: ``z``, (T, B, 4H), else None. With zoneout, ``c`` is the cell each step
    computed, before zoneout mixed it with c_{t-1} (as the reference's).

    The cache holds per (row, step) the gates (4*Hp), the cells (Hp) and the h
    each step started from (Pp): 5*Hp + Pp, 6*Hp without a projection (Hp, Pp:
    H, P padded, ``_core.hidden_pad``), + 4*Hp with ``z``. Zoneout keeps no more:
    with zoneout of c the cells are the states after zoneout, and ``c`` (and
    backward) rebuild each candidate from the gates and the previous state with
    the forward's arithmetic, its bits. Zoneout's training masks are kept besides
    (Pp of h, Hp of c).
    """

    __slots__ = ("_args", "_c_state", "_cells", "_gates", "_h_prev", "_pre")

    def __init__(
        self,
        args: _Args,
        gates: np.ndarray,
        cells: np.ndarray,
        h_prev: np.ndarray,
        pre: np.ndarray | None = None,
        c_state: np.ndarray | None = None,
    ) -> None:
        for a in (gates, cells, h_prev, pre, c_state):
            if a is not None:
                a.flags.writeable = False
        self._args, self._gates, self._cells, self._h_prev = args, gates, cells, h_prev
        self._pre, self._c_state = pre, c_state

    def _time_major(self, a: np.ndarray) -> np.ndarray:
        return _readonly(a.swapaxes(0, 1) if self._args.batch_first else a)

    def _gate(self, k: int) -> np.ndarray:
        a = self._args
        g = self._gates.reshape(a.layout_shape(4 * a.hidden_pad))
        return self._time_major(g[..., k * a.hidden_pad : k * a.hidden_pad + a.hidden])

    @property
    def i(self) -> np.ndarray:
        return self._gate(0)

    @property
    def f(self) -> np.ndarray:
        return self._gate(1)

    @property
    def g(self) -> np.ndarray:
        return self._gate(2)

    @property
    def o(self) -> np.ndarray:
        return self._gate(3)

    @property
    def c(self) -> np.ndarray:
        a = self._args
        cells = self._cells
        if a.zones_c:
            # The cells are the states after zoneout: the candidates are
            # rebuilt with the forward's arithmetic (its bits).
            cells = np.empty_like(cells)
            _core.zoneout_candidates(a, self._arrays(), cells)
        return self._time_major(cells.reshape(a.layout_shape(a.hidden_pad))[..., : a.hidden])

    def _arrays(self) -> CacheArrays:
        return CacheArrays(gates=self._gates, cells=self._cells, h_prev=self._h_prev, pre=self._pre)

    @property
    def z(self) -> np.ndarray | None:
        """The pre-activations (T, B, 4H), blocks i, f, g, o, peepholes added,
        before clip; None when the variant's backward does not need them."""
        a = self._args
        if self._pre is None:
            return None
        z = self._pre.reshape(a.layout_shape(4 * a.hidden_pad))
        blocks = [z[..., k * a.hidden_pad : k * a.hidden_pad + a.hidden] for k in range(4)]
        return self._time_major(np.concatenate(blocks, axis=-1))

    @property
    def dtype(self) -> np.dtype:
        return self._args.dtype

    @property
    def nbytes(self) -> int:
        """Memory held by the cache, inputs copies included."""
        a = self._args
        arrays = [self._gates, self._cells, self._h_prev, self._pre, self._c_state]
        arrays += [a.x, a.w_ih, a.w_hh, a.c0, a.lengths, a.peepholes, a.w_hr]
        arrays += [a.zoneout_h_keep, a.zoneout_c_keep]
        return sum(x.nbytes for x in arrays if x is not None)

    def __repr__(self) -> str:
        a = self._args
        return (
            f"<lstm_fast.Cache T={a.steps} B={a.batch} I={a.input} H={a.hidden} "
            f"dtype={a.dtype} batch_first={a.batch_first} reverse={a.reverse}>"
        )


class CheckpointCache(Cache):
    """What :func:`backward` needs from ``forward(..., checkpoint=k)``: the state
    (h, c) of every row at the start of each segment of ``k`` steps (processing
    order) but the first, and private copies of the inputs. Backward recomputes
    each segment's forward from its state, so the gates and cells are not kept:
    ``i``, ``f``, ``g``, ``o``, ``c``, ``z`` raise. ``checkpoint`` is k.
    """

    __slots__ = ("_every", "_states")

    def __init__(self, args: _Args, states: np.ndarray, every: int) -> None:
        states.flags.writeable = False
        self._args, self._states, self._every = args, states, every
        self._gates = self._cells = self._h_prev = np.empty(0, args.dtype)
        self._pre = None

    @property
    def checkpoint(self) -> int:
        return self._every

    def _gate(self, k: int) -> np.ndarray:
        raise AttributeError(
            "a checkpointed cache keeps no gates or cells (backward recomputes them); "
            "run forward with checkpoint=None to inspect them"
        )

    @property
    def c(self) -> np.ndarray:
        return self._gate(0)

    @property
    def z(self) -> np.ndarray | None:
        return self._gate(0)

    @property
    def nbytes(self) -> int:
        """Memory held by the cache: the kept states, ((T + k - 1) // k - 1) * B *
        (P + H) elements, and the inputs' copies (zoneout's training masks are
        drawn per segment, not kept)."""
        a = self._args
        arrays = [self._states, a.x, a.w_ih, a.w_hh, a.c0, a.lengths, a.peepholes, a.w_hr]
        arrays += [a.zoneout_h_keep, a.zoneout_c_keep]
        return sum(x.nbytes for x in arrays if x is not None)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f" checkpoint={self._every}>"


class CellCache:
    """What :func:`cell_backward` needs; ``i, f, g, o, c`` are read-only (B, H)."""

    __slots__ = ("_seq",)

    def __init__(self, seq: Cache) -> None:
        self._seq = seq

    i = property(lambda self: self._seq.i[0])
    f = property(lambda self: self._seq.f[0])
    g = property(lambda self: self._seq.g[0])
    o = property(lambda self: self._seq.o[0])
    c = property(lambda self: self._seq.c[0])

    def __repr__(self) -> str:
        a = self._seq._args
        return f"<lstm_fast.CellCache B={a.batch} I={a.input} H={a.hidden} dtype={a.dtype}>"


class LayerNormCache(Cache):
    """:class:`Cache` of a forward with ``layer_norm=True`` (the same ``i``,
    ``f``, ``g``, ``o``, ``c``, ``z``). It keeps the cells, the normalised
    products, their 1/sigma and the cell's mean and 1/sigma for backward
    (docs/variants.md, 'In the engine'), not the gates or the pre-activations:
    ``i``, ``f``, ``g``, ``o`` (each its own block alone) and ``z`` are rebuilt
    from it at each access, with the forward's arithmetic (its bits)."""

    __slots__ = ("_ln",)

    def __init__(self, args: _Args, arrays: LayerNormCacheArrays) -> None:
        # No gates nor pre-activations: `_gate` and `z` rebuild them.
        gates: Any = None
        super().__init__(args, gates, arrays.cells, arrays.h_prev, None, arrays.c_state)
        for a in arrays:
            if a is not None:
                a.flags.writeable = False
        self._ln = arrays

    def _rebuilt(self, pre: bool) -> np.ndarray:
        """The gates or (``pre``) the pre-activations (R, 4H), dense."""
        a = self._args
        assert a.ln is not None
        shape = (a.steps * a.batch, 4 * a.hidden)
        gates = empty("the cache's gates", shape, a.dtype)
        z = empty("the cache's pre-activations", shape, a.dtype) if pre else None
        _core.layer_norm_gates(a, a.ln, self._ln, gates, z, None)
        return gates if z is None else z

    def _gate(self, k: int) -> np.ndarray:
        """Gate block k (i, f, g, o) alone, rebuilt: (R, H), not all four."""
        a = self._args
        assert a.ln is not None
        g = empty("the cache's gate", (a.steps * a.batch, a.hidden), a.dtype)
        _core.layer_norm_gates(a, a.ln, self._ln, g, None, k)
        return self._time_major(g.reshape(a.layout_shape(a.hidden)))

    @property
    def c(self) -> np.ndarray:
        a = self._args
        return self._time_major(self._cells.reshape(a.layout_shape(a.hidden)))

    @property
    def z(self) -> np.ndarray | None:
        """The pre-activations (T, B, 4H), as :attr:`Cache.z`."""
        a = self._args
        if not a.caches_pre:
            return None
        return self._time_major(self._rebuilt(True).reshape(a.layout_shape(4 * a.hidden)))

    @property
    def nbytes(self) -> int:
        ln = self._args.ln
        extra = [self._ln.sx_hat, self._ln.sh_hat, self._ln.moments]
        extra += [] if ln is None else [p for p in ln[:-1] if p is not None]
        return super().nbytes + sum(x.nbytes for x in extra)


class LayerNormCheckpointCache(CheckpointCache):
    """:class:`CheckpointCache` of a forward with ``layer_norm=True``: the states
    every k steps; backward recomputes each segment's LayerNorm cache and
    returns ``LayerNormGradients``."""

    __slots__ = ()

    @property
    def nbytes(self) -> int:
        ln = self._args.ln
        extra = [] if ln is None else [p for p in ln[:-1] if p is not None]
        return super().nbytes + sum(x.nbytes for x in extra)


# ---------------------------------------------------------------------------
# Sequence API
# ---------------------------------------------------------------------------


def checkpoint_states(steps: int, batch: int, hidden: int, proj: int, every: int) -> int:
    """Elements of the states a ``checkpoint=every`` forward keeps:
    (ceil(T / k) - 1) * B * (P + H)."""
    return max(-(-steps // every) - 1, 0) * batch * (proj + hidden)


def training_memory(
    checkpoint: int | None,
    *,
    steps: int,
    batch: int,
    hidden: int,
    proj: int,
    itemsize: int,
    caches_pre: bool = False,
    passes: int = 1,
    layer_norm: bool = False,
    zoneout_h: bool = False,
    zoneout_c: bool = False,
) -> int:
    """Bytes a training pass of ``passes`` layer-directions holds for backward
    (inputs and outputs aside), for ``checkpoint`` None (the full cache) or k:

    - full cache (None, or k >= T): ``passes * T * B * (C + Z) * itemsize``;
    - k < T: ``passes * (ceil(T/k) - 1) * B * (P + H) * itemsize`` (the kept states)
      ``+ k * B * (C + S + Z) * itemsize`` (one segment's cache, backward's scratch
      and masks, one pass at a time).

    C is the cache's width per step and row: 5*Hp + Pp (Hp, Pp: H, P padded,
    ``_core.hidden_pad``; 6*Hp without a projection), + 4*Hp for the variants
    that keep the pre-activations; zoneout adds nothing to it (the cells are
    the states after zoneout, backward rebuilds the candidates). For the
    LayerNorm LSTM (``layer_norm``, dense arrays) 9*H + P + 4 (its gates and
    pre-activations are rebuilt), + H with zoneout of c (its cache keeps both). S is
    backward's scratch: 4*Hp (the gate gradients), for the LayerNorm LSTM 8*H
    (ds_x, ds_h) + P + H with a projection (dh and m of every step). Z is
    zoneout's training masks: Pp with ``zoneout_h``, Hp with ``zoneout_c`` (a
    training pass with zoneout of h, of c).
    """
    hp = _core.hidden_pad(hidden, itemsize)
    pp = _core.hidden_pad(proj, itemsize)
    if layer_norm:
        width = 9 * hidden + proj + 4
        width += hidden if zoneout_c else 0
        scratch = 8 * hidden + (proj + hidden if proj != hidden else 0)
    else:
        width = 5 * hp + pp + (4 * hp if caches_pre else 0)
        scratch = 4 * hp
    masks = (pp if zoneout_h else 0) + (hp if zoneout_c else 0)
    if checkpoint is None or checkpoint >= steps:
        return passes * steps * batch * (width + masks) * itemsize
    states = checkpoint_states(steps, batch, hidden, proj, checkpoint)
    return (passes * states + checkpoint * batch * (width + scratch + masks)) * itemsize


def checkpoint_for_budget(budget: Any, **shape: Any) -> int | None:
    """The ``checkpoint`` whose :func:`training_memory` (same keywords) fits
    ``budget`` bytes with the least recompute: None (the full cache, no
    recompute) when it fits, else the largest k < T that fits (every k < T
    recomputes each step once; the largest has the fewest segments). A budget
    no k meets is a ``ValueError`` naming ``memory_budget``."""
    budget = integer("memory_budget", budget)
    steps = shape["steps"]
    if training_memory(None, **shape) <= budget:
        return None
    for k in range(steps - 1, 0, -1):
        if training_memory(k, **shape) <= budget:
            return k
    least = min(training_memory(k, **shape) for k in range(1, max(steps, 2)))
    raise ValueError(
        f"memory_budget: {budget} bytes is too small for any checkpoint; "
        f"this call needs at least {least} bytes"
    )


def _run_forward(
    args: _Args, need_cache: bool, checkpoint: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Cache | None]:
    dt, rows = args.dtype, args.steps * args.batch
    out = Outputs(
        y=empty("y", args.y_shape, dt),
        h_n=empty("h_n", (args.batch, args.proj), dt),
        c_n=empty("c_n", (args.batch, args.hidden), dt),
    )
    if need_cache and checkpoint is not None and checkpoint < args.steps:
        n = checkpoint_states(args.steps, args.batch, args.hidden, args.proj, checkpoint)
        states = empty("the checkpoint states", (n,), dt)
        if args.ln is not None:
            _core.layer_norm_forward_checkpointed(
                args, args.ln, out, states, checkpoint, args.zoneout_draws
            )
            return out.y, out.h_n, out.c_n, LayerNormCheckpointCache(args, states, checkpoint)
        _core.forward_checkpointed(args, out, states, checkpoint, args.zoneout_draws)
        return out.y, out.h_n, out.c_n, CheckpointCache(args, states, checkpoint)
    if args.ln is not None:
        return _run_layer_norm_forward(args, out, need_cache)
    arrays = None
    if need_cache:
        hp = args.hidden_pad
        arrays = CacheArrays(
            gates=empty("cache (gates)", (rows, 4 * hp), dt),
            cells=empty("cache (cells)", (rows, hp), dt),
            h_prev=empty("cache (h_prev)", (rows, args.proj_pad), dt),
            pre=empty("cache (pre-activations)", (rows, 4 * hp), dt) if args.caches_pre else None,
        )
    _core.forward(args, out, arrays)
    cache = None if arrays is None else Cache(args, *arrays)
    return out.y, out.h_n, out.c_n, cache


def _run_layer_norm_forward(
    args: _Args, out: Outputs, need_cache: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Cache | None]:
    """:func:`_run_forward` of the LayerNorm LSTM: its own pass and dense cache."""
    assert args.ln is not None
    dt, rows, H, P = args.dtype, args.steps * args.batch, args.hidden, args.proj
    arrays = None
    if need_cache:
        arrays = LayerNormCacheArrays(
            cells=empty("cache (cells)", (rows, H), dt),
            h_prev=empty("cache (h_prev)", (rows, P), dt),
            sx_hat=empty("cache (normalised x w_ih^T)", (rows, 4 * H), dt),
            sh_hat=empty("cache (normalised h w_hh^T)", (rows, 4 * H), dt),
            moments=empty("cache (1/sigma and mean)", (rows, 4), dt),
            c_state=empty("cache (c after zoneout)", (rows, H), dt) if args.zones_c else None,
        )
    _core.layer_norm_forward(args, args.ln, out, arrays)
    cache = None if arrays is None else LayerNormCache(args, arrays)
    return out.y, out.h_n, out.c_n, cache


def _layer_norm_options(layer_norm: Any, norms: dict[str, Any]) -> dict[str, Any] | None:
    """The LayerNorm LSTM's gains and biases by name when ``layer_norm`` (each
    may be None), else None; one given without ``layer_norm=True`` is a
    ``ValueError`` naming it (docs/variants.md, 'LayerNorm LSTM')."""
    return norms if layer_norm_flag(layer_norm, norms) else None


def forward(
    x: Any,
    w_ih: Any,
    w_hh: Any,
    b_ih: Any = None,
    b_hh: Any = None,
    h0: Any = None,
    c0: Any = None,
    *,
    batch_first: bool = False,
    lengths: Any = None,
    reverse: bool = False,
    need_cache: bool = True,
    w_hr: Any = None,
    peepholes: Any = None,
    clip: Any = None,
    input_forget: bool = False,
    forget_gate: bool = True,
    activations: Any = None,
    layer_norm: bool = False,
    w_ln_ih: Any = None,
    b_ln_ih: Any = None,
    w_ln_hh: Any = None,
    b_ln_hh: Any = None,
    w_ln_c: Any = None,
    b_ln_c: Any = None,
    layer_norm_eps: Any = LAYER_NORM_EPS,
    zoneout: Any = 0.0,
    recurrent_dropout: Any = 0.0,
    weight_drop: Any = 0.0,
    seed: Any = None,
    layer: Any = 0,
    training: bool = True,
    weight_dtype: Any = None,
    checkpoint: Any = None,
) -> Forward:
    """Runs one LSTM layer (one direction) over a whole sequence.

    ``x`` is (T, B, I), or (B, T, I) with ``batch_first``; ``w_ih`` (4H, I) and
    ``w_hh`` (4H, H) hold the gate blocks i, f, g, o; ``b_ih``, ``b_hh`` (4H,),
    ``h0``, ``c0`` (B, H) default to zeros. ``lengths`` (B,) gives each row's
    valid steps (PyTorch PackedSequence semantics); ``reverse`` runs each row
    from its last valid step back to step 0. Returns ``Forward(y, h_n, c_n,
    cache)``; ``cache`` is None with ``need_cache=False``.

    The variants (docs/variants.md): ``w_hr`` (P, H) a projection (PyTorch's
    ``proj_size``: h_t = w_hr @ (o_t * tanh(c_t)), so ``w_hh`` is (4H, P), ``h0``,
    ``h_n`` (B, P) and ``y``'s last dimension P); ``peepholes`` (3H,) in ONNX's order
    ``[p_i, p_o, p_f]``; ``clip`` > 0 clamps the pre-activations; ``input_forget``
    couples the gates (f = 1 - i); ``forget_gate=False`` removes the forget gate
    (f = 1); ``activations`` ONNX's three (f for the gates, g for the cell
    candidate, h for the output), each a name, (name, alpha) or (name, alpha,
    beta).

    The regularisation (docs/variants.md, 'Regularisation'; masks from ``seed``
    keyed by ``layer`` and the direction): ``zoneout`` (a probability for h and c,
    or a pair ``(z_h, z_c)``: each unit keeps its previous state with that
    probability; ``y`` is the state after zoneout), ``weight_drop`` (DropConnect
    on ``w_hh``) and ``recurrent_dropout``; ``training=False`` uses the
    expectation (zoneout mixes ``z * prev + (1 - z) * new``; the dropouts are
    the identity). The defaults change no bit.

    ``layer_norm=True`` runs the LayerNorm LSTM (docs/variants.md, 'LayerNorm
    LSTM'): x W_ih^T and h W_hh^T are each normalised over their 4H values, c_t
    over its H before sigma_h; ``w_ln_ih``, ``b_ln_ih``, ``w_ln_hh``, ``b_ln_hh``
    (4H,) and ``w_ln_c``, ``b_ln_c`` (H,) are the optional gains (absent: 1) and
    biases (absent: 0), ``layer_norm_eps`` (1e-5) is added to the variance.
    ``backward`` then returns ``LayerNormGradients``. It combines with every
    other option.

    ``weight_dtype="bfloat16"`` (or ``"bf16"``): bf16 inference (README, 'bf16
    inference'): the weight matrices rounded to bfloat16 for this call, state and
    sums in float32; float32 inputs, no cache (pass ``need_cache=False``) and no
    regularisation in training (at inference zoneout mixes the states as above).
    :func:`prepare_weights` rounds and packs once for many calls.

    ``checkpoint=k`` (an int >= 1; None: the full cache) trades time for memory:
    the cache keeps only each row's state every k steps, and :func:`backward`
    recomputes each segment of k steps, giving bitwise the same gradients with
    O((T/k + k) * H) memory per row instead of O(T * H); k >= T is the full cache.
    With zoneout in training each segment draws its rows of the masks from
    ``seed`` (in forward and again in backward), so no mask of the whole
    sequence is held.
    It combines with ``layer_norm=True`` (the gradients bitwise those of the
    LayerNorm LSTM's full cache).
    """
    need_cache = flag("need_cache", need_cache)
    every = None if checkpoint is None else positive_int("checkpoint", checkpoint)
    given = (w_ln_ih, b_ln_ih, w_ln_hh, b_ln_hh, w_ln_c, b_ln_c)
    norms = _layer_norm_options(layer_norm, dict(zip(LAYER_NORM_NAMES, given)))
    reg = regularisation(
        zoneout=zoneout, recurrent_dropout=recurrent_dropout, weight_drop=weight_drop,
        seed=seed, layer=layer, training=training,
    )  # fmt: skip
    if bfloat16_weights(weight_dtype):
        if reg[6] and any(reg[:4]):
            raise ValueError(
                "weight_dtype='bfloat16' is for inference: zoneout, recurrent_dropout and "
                "weight_drop need training=False (or 0)"
            )
        prepared = PreparedWeights(
            w_ih, w_hh, b_ih, b_hh, peepholes=peepholes, w_hr=w_hr, weight_dtype="bfloat16"
        )
        # At inference the dropouts are the identity and zoneout takes its rates.
        variant = dict(
            clip=clip, input_forget=input_forget, forget_gate=forget_gate,
            activations=activations, layer_norm=layer_norm, layer_norm_eps=layer_norm_eps,
            **dict(zip(LAYER_NORM_NAMES, given)),
        )  # fmt: skip
        return prepared._forward(
            x, h0, c0, batch_first=batch_first, lengths=lengths, reverse=reverse,
            need_cache=need_cache, checkpoint=None, variant=variant, zoneout=(reg[0], reg[1]),
        )  # fmt: skip
    args = _Args(
        x, w_ih, w_hh, b_ih, b_hh, h0, c0,
        batch_first=batch_first, lengths=lengths, reverse=reverse, own=need_cache, names={},
        peepholes=peepholes, w_hr=w_hr, clip=clip, input_forget=input_forget,
        forget_gate=forget_gate, activations=activations, norms=norms,
        layer_norm_eps=layer_norm_eps,
    )  # fmt: skip
    segments = need_cache and every is not None and every < args.steps
    _regularise(args, *reg, draw_per_segment=segments)
    return Forward(*_run_forward(args, need_cache, every))


# Stream ids in the mask generator (masks.py, rust/src/masks.rs).
_ZONEOUT_H = 1
_ZONEOUT_C = 2
_RECURRENT_DROPOUT = 3
_WEIGHT_DROP = 4


def _regularise(
    args: _Args, z_h: float, z_c: float, p_rec: float, p_weight: float,
    seed: int | None, layer: int, training: bool, draw_per_segment: bool = False,
) -> None:  # fmt: skip
    """Applies the checked regularisation options to ``args``: weight drop packs
    W_hh ⊙ M (one mask per call) and backward multiplies dw_hh by M; at
    inference both dropouts are the identity. Zoneout in training draws its
    masks once per call in the caches' layout (the cache keeps them for
    backward), or with ``draw_per_segment`` (a checkpointed pass) leaves each
    segment to draw its own rows, in forward and again in backward; at
    inference the engine takes the rates."""
    direction = int(args.reverse)
    rows = args.steps * args.batch
    if training and (z_h or z_c) and draw_per_segment:
        assert seed is not None  # regularisation() requires one
        args.zoneout_draws = (seed, layer, direction, z_h, z_c)
        z_h = z_c = 0.0
    for stream, z, width, pad in (
        (_ZONEOUT_H, z_h, args.proj, args.proj_pad),
        (_ZONEOUT_C, z_c, args.hidden, args.hidden_pad),
    ):
        if not z:
            continue
        if training:
            assert seed is not None  # regularisation() requires one
            keep = empty("the zoneout mask", (rows, pad), args.dtype)
            _core.zoneout_keep(
                keep, seed, stream, layer, direction, z,
                args.steps, args.batch, width, args.batch_first,
            )  # fmt: skip
        if stream == _ZONEOUT_H:
            args.zoneout_h_keep, args.zoneout_h = (keep, 0.0) if training else (None, z)
        else:
            args.zoneout_c_keep, args.zoneout_c = (keep, 0.0) if training else (None, z)
    if p_rec and training:
        assert seed is not None  # regularisation() requires one
        keep = empty("the recurrent dropout mask", (args.batch, args.proj), args.dtype)
        _core.scaled_keep(keep, seed, _RECURRENT_DROPOUT, layer, direction, p_rec)
        args.recurrent_keep = keep
    if p_weight and training:
        assert seed is not None  # regularisation() requires one
        keep = empty("the weight drop mask", args.w_hh.shape, args.dtype)
        _core.scaled_keep(keep, seed, _WEIGHT_DROP, layer, direction, p_weight)
        args.w_hh = np.multiply(args.w_hh, keep)  # DropConnect: the pass packs W_hh ⊙ M
        args.packed = None
        args.w_hh_keep = keep


def _seed(
    name: str, value: Any, symbols: str, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray | None:
    if value is None:
        return None
    return contiguous(name, shaped_array(name, value, symbols, shape), dtype, own=False)


def _seeds(a: _Args, dy: Any, dh_n: Any, dc_n: Any, names: tuple[str, str, str]) -> Seeds:
    """The gradients of the outputs checked against the pass (None: zeros)."""
    dt = a.dtype
    p = "hidden_size" if a.w_hr is None else "proj_size"
    y_symbols = f"(batch, seq_len, {p})" if a.batch_first else f"(seq_len, batch, {p})"
    return Seeds(
        dy=_seed(names[0], dy, y_symbols, a.y_shape, dt),
        dh_n=_seed(names[1], dh_n, f"(batch, {p})", (a.batch, a.proj), dt),
        dc_n=_seed(names[2], dc_n, "(batch, hidden_size)", (a.batch, a.hidden), dt),
    )


def _gradient_flow(norm_h: np.ndarray | None, norm_c: np.ndarray | None) -> GradientFlow:
    """The flow a backward asked for it wrote (per step and row), with its sums."""
    assert norm_h is not None and norm_c is not None
    return GradientFlow(norm_h, norm_c, norm_h.sum(axis=1), norm_c.sum(axis=1))


def _run_layer_norm_backward(
    cache: LayerNormCache | LayerNormCheckpointCache, dy: Any, dh_n: Any, dc_n: Any,
    names: tuple[str, str, str], flow: bool = False,
) -> tuple[Any, ...]:  # fmt: skip
    """:func:`_run_backward` of the LayerNorm LSTM: the sixteen fields of
    ``LayerNormGradients``."""
    a = cache._args
    ln = a.ln
    assert ln is not None
    dt, H = a.dtype, a.hidden
    seeds = _seeds(a, dy, dh_n, dc_n, names)
    checkpointed = isinstance(cache, LayerNormCheckpointCache)

    def wanted(name: str, shape: tuple[int, ...], given: bool) -> np.ndarray | None:
        return empty(name, shape, dt) if given else None

    grads = LayerNormGrads(
        dx=empty("dx", a.x.shape, dt),
        dh0=empty("dh0", (a.batch, a.proj), dt),
        dc0=empty("dc0", (a.batch, H), dt),
        dw_ih=empty("dw_ih", (4 * H, a.input), dt),
        dw_hh=empty("dw_hh", (4 * H, a.proj), dt),
        db=empty("db", (4 * H,), dt),
        dpeepholes=wanted("dpeepholes", (3 * H,), a.peepholes is not None),
        dw_hr=wanted("dw_hr", (a.proj, H), a.w_hr is not None),
        flow_h=wanted("the gradient flow (dh)", (a.steps, a.batch), flow),
        flow_c=wanted("the gradient flow (dc)", (a.steps, a.batch), flow),
        # NumPy backs large arrays with huge pages: fewer page faults than the
        # engine's own allocation (as for the plain pass's scratch). A
        # checkpointed pass allocates one segment's.
        scratch_dz=wanted(
            "the input products' gradients", (a.steps * a.batch, 4 * H), not checkpointed
        ),
        scratch_dsh=wanted(
            "the recurrent products' gradients", (a.steps * a.batch, 4 * H), not checkpointed
        ),
        dw_ln_ih=wanted("dw_ln_ih", (4 * H,), ln.w_ih is not None),
        dw_ln_hh=wanted("dw_ln_hh", (4 * H,), ln.w_hh is not None),
        dw_ln_c=wanted("dw_ln_c", (H,), ln.w_c is not None),
        db_ln_c=wanted("db_ln_c", (H,), ln.b_c is not None),
    )
    if isinstance(cache, LayerNormCheckpointCache):
        _core.layer_norm_backward_checkpointed(
            a, ln, cache._states, cache._every, seeds, grads, a.zoneout_draws
        )
    else:
        _core.layer_norm_backward(a, ln, cache._ln, seeds, grads)
    if a.w_hh_keep is not None:
        np.multiply(grads.dw_hh, a.w_hh_keep, out=grads.dw_hh)  # w_hh entered as w_hh ⊙ M
    # Σ dz is the gradient of every bias that adds to the pre-activations; each
    # gets its own array, so updating one leaves the others alone.
    db = grads.db
    assert db is not None
    biases: list[np.ndarray | None] = []
    first = True
    for given in (a.has_b_ih, a.has_b_hh, ln.b_ih is not None, ln.b_hh is not None):
        biases.append((db if first else db.copy()) if given else None)
        first = first and not given
    flows = _gradient_flow(grads.flow_h, grads.flow_c) if flow else None
    db_ih, db_hh, db_ln_ih, db_ln_hh = biases
    return (
        grads.dx, grads.dh0, grads.dc0, grads.dw_ih, grads.dw_hh, db_ih, db_hh,
        grads.dw_hr, grads.dpeepholes, flows,
        grads.dw_ln_ih, db_ln_ih, grads.dw_ln_hh, db_ln_hh, grads.dw_ln_c, grads.db_ln_c,
    )  # fmt: skip


def _run_backward(
    cache: Cache, dy: Any, dh_n: Any, dc_n: Any, names: tuple[str, str, str], flow: bool = False
) -> tuple[
    tuple[Any, Any, Any, Any, Any, Any, Any],
    np.ndarray | None,
    np.ndarray | None,
    GradientFlow | None,
]:
    """The seven classic gradients, dw_hr (None without a projection), dpeepholes
    (None without peepholes) and the gradient flow (None unless ``flow``)."""
    a = cache._args
    dt = a.dtype
    state, cells = (a.batch, a.proj), (a.batch, a.hidden)
    seeds = _seeds(a, dy, dh_n, dc_n, names)
    grads = Grads(
        dx=empty("dx", a.x.shape, dt),
        dh0=empty("dh0", state, dt),
        dc0=empty("dc0", cells, dt),
        dw_ih=empty("dw_ih", (4 * a.hidden, a.input), dt),
        dw_hh=empty("dw_hh", (4 * a.hidden, a.proj), dt),
        db=empty("db", (4 * a.hidden,), dt) if (a.has_b_ih or a.has_b_hh) else None,
        # The gate gradients: NumPy backs large arrays with huge pages, which saves
        # the engine tens of thousands of page faults per call at the large shapes.
        scratch=None
        if isinstance(cache, CheckpointCache)
        else empty("the gate gradients", (a.steps * a.batch, 4 * a.hidden_pad), dt),
        dpeepholes=None if a.peepholes is None else empty("dpeepholes", (3 * a.hidden,), dt),
        dw_hr=None if a.w_hr is None else empty("dw_hr", (a.proj, a.hidden), dt),
        flow_h=empty("the gradient flow (dh)", (a.steps, a.batch), dt) if flow else None,
        flow_c=empty("the gradient flow (dc)", (a.steps, a.batch), dt) if flow else None,
    )
    if isinstance(cache, CheckpointCache):
        _core.backward_checkpointed(a, cache._states, cache._every, seeds, grads, a.zoneout_draws)
    else:
        _core.backward(a, cache._arrays(), seeds, grads)
    if a.w_hh_keep is not None:
        np.multiply(grads.dw_hh, a.w_hh_keep, out=grads.dw_hh)  # w_hh entered as w_hh ⊙ M
    db = grads.db
    db_ih = db if a.has_b_ih else None
    # Two arrays when both biases exist, so updating one leaves the other alone.
    db_hh = None if db is None or not a.has_b_hh else (db.copy() if a.has_b_ih else db)
    flows = _gradient_flow(grads.flow_h, grads.flow_c) if flow else None
    classic = (grads.dx, grads.dh0, grads.dc0, grads.dw_ih, grads.dw_hh, db_ih, db_hh)
    return classic, grads.dw_hr, grads.dpeepholes, flows


def _check_cache(cache: Any, cls: type, producer: str) -> None:
    if not isinstance(cache, cls):
        raise TypeError(
            f"cache must be the cache returned by lstm_fast.{producer} (with need_cache=True), "
            f"got {type(cache).__name__}"
        )


def backward(
    cache: Cache, dy: Any = None, dh_n: Any = None, dc_n: Any = None, *, flow: bool = False
) -> Gradients | VariantGradients | LayerNormGradients:
    """Backpropagation through time for a :func:`forward` call.

    ``dy`` (like ``y``), ``dh_n`` (B, P) and ``dc_n`` (B, H) are the gradients of
    the loss with respect to the outputs (None means zeros; P = H without a
    projection). Returns ``Gradients(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)``;
    a bias that was None has gradient None. The cache can be used any number of
    times.

    After a forward with ``w_hr`` or ``peepholes``, or with ``flow=True``, returns
    ``VariantGradients``: the same seven, then ``dw_hr`` (P, H) (None without a
    projection), ``dpeepholes`` and ``flow`` (``GradientFlow(dh, dc, dh_sum, dc_sum)``,
    the norms of dL/dh_t and dL/dc_t per step and row, docs/variants.md,
    'Gradient flow'; None unless asked for). Asking for the flow changes no
    bit of the gradients.

    After a forward with ``layer_norm=True``, returns ``LayerNormGradients``: the
    ten fields of ``VariantGradients``, then ``dw_ln_ih``, ``db_ln_ih``,
    ``dw_ln_hh``, ``db_ln_hh``, ``dw_ln_c``, ``db_ln_c`` (None for those the
    forward did not get).
    """
    _check_cache(cache, Cache, "forward")
    flow = flag("flow", flow)
    if isinstance(cache, (LayerNormCache, LayerNormCheckpointCache)):
        return LayerNormGradients(
            *_run_layer_norm_backward(cache, dy, dh_n, dc_n, ("dy", "dh_n", "dc_n"), flow=flow)
        )
    classic, dw_hr, dpeepholes, flows = _run_backward(
        cache, dy, dh_n, dc_n, ("dy", "dh_n", "dc_n"), flow=flow
    )
    if dw_hr is None and dpeepholes is None and not flow:
        return Gradients(*classic)
    return VariantGradients(*classic, dw_hr, dpeepholes, flows)


# ---------------------------------------------------------------------------
# Cell API (one step: the sequence engine with T = 1)
# ---------------------------------------------------------------------------


def cell_forward(
    x_t: Any,
    h: Any,
    c: Any,
    w_ih: Any,
    w_hh: Any,
    b_ih: Any = None,
    b_hh: Any = None,
    *,
    w_hr: Any = None,
    peepholes: Any = None,
    clip: Any = None,
    input_forget: bool = False,
    forget_gate: bool = True,
    activations: Any = None,
    layer_norm: bool = False,
    w_ln_ih: Any = None,
    b_ln_ih: Any = None,
    w_ln_hh: Any = None,
    b_ln_hh: Any = None,
    w_ln_c: Any = None,
    b_ln_c: Any = None,
    layer_norm_eps: Any = LAYER_NORM_EPS,
) -> Cell:
    """One LSTM step: ``x_t`` (B, I), ``h`` (B, H), or (B, P) with ``w_hr``, ``c``
    (B, H) -> ``Cell(h_new, c_new, cache)``; the variant options, the LayerNorm
    LSTM's among them, are :func:`forward`'s."""
    given = (w_ln_ih, b_ln_ih, w_ln_hh, b_ln_hh, w_ln_c, b_ln_c)
    norms = _layer_norm_options(layer_norm, dict(zip(LAYER_NORM_NAMES, given)))
    raw = cell_arguments(x_t, h, c, w_ih, w_hh, b_ih, b_hh)
    args = _Args(
        *raw.values(), batch_first=False, lengths=None, reverse=False, own=True, names=CELL_NAMES,
        peepholes=peepholes, w_hr=w_hr, clip=clip, input_forget=input_forget,
        forget_gate=forget_gate, activations=activations, norms=norms,
        layer_norm_eps=layer_norm_eps,
    )  # fmt: skip
    _, h_new, c_new, cache = _run_forward(args, need_cache=True)
    assert cache is not None
    return Cell(h_new, c_new, CellCache(cache))


def cell_backward(
    cache: CellCache, dh_new: Any = None, dc_new: Any = None
) -> CellGradients | CellVariantGradients | CellLayerNormGradients:
    """Gradients of one :func:`cell_forward` step from ``dh_new`` (B, H), or (B, P)
    with a projection, and ``dc_new`` (B, H): ``CellGradients``, or
    ``CellVariantGradients`` (the seven, then ``dw_hr`` and ``dpeepholes``, None
    where the step had none) after a step with ``w_hr`` or peepholes, or
    ``CellLayerNormGradients`` (those nine, then the six gradients of the
    normalisations' gains and biases) after one with ``layer_norm=True``."""
    _check_cache(cache, CellCache, "cell_forward")
    if isinstance(cache._seq, LayerNormCache):
        g = _run_layer_norm_backward(cache._seq, None, dh_new, dc_new, ("dy", "dh_new", "dc_new"))
        return CellLayerNormGradients(g[0][0], *g[1:9], *g[10:])
    classic, dw_hr, dpeepholes, _ = _run_backward(
        cache._seq, None, dh_new, dc_new, ("dy", "dh_new", "dc_new")
    )
    dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh = classic
    if dw_hr is None and dpeepholes is None:
        return CellGradients(dx[0], dh, dc, dw_ih, dw_hh, db_ih, db_hh)
    return CellVariantGradients(dx[0], dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dpeepholes)


# ---------------------------------------------------------------------------
# Prepared weights (packed once, for many calls)
# ---------------------------------------------------------------------------


def bfloat16_round(a: Any) -> np.ndarray:
    """``a`` (float32 values) rounded to bfloat16, ties to even, and widened back
    to float32: the values bf16 inference computes with in place of the weights."""
    src = np.ascontiguousarray(a, dtype=np.float32)
    bits = np.empty(src.shape, np.uint16)
    _core.bfloat16_bits(src, bits)
    return (bits.astype(np.uint32) << 16).view(np.float32)


class PreparedWeights:
    """One layer's weights, copied and packed once for any number of calls.

    Made by :func:`prepare_weights`. Every call of :func:`forward` packs ``w_hh``
    into the layout its kernels stream, a pass over the weights that costs as much
    as several time steps; a stream of short calls (one step at a time) or an
    inference loop over unchanged weights packs once here instead. The object keeps
    private copies: changing the caller's arrays later changes nothing (prepare
    again to use new weights). Calls compute in the weights' dtype (``dtype``);
    inputs of another dtype are cast to it. Caches from :meth:`forward` and
    :meth:`cell_forward` go to :func:`backward` and :func:`cell_backward` as usual,
    and share the copies rather than copying the weights again.

    With ``weight_dtype="bfloat16"`` (README, 'bf16 inference') the weight matrices
    are rounded to bfloat16 (ties to even) when packed and the recurrence streams
    ``w_hh`` as bfloat16; state, sums, biases and peepholes stay float32. Such
    weights are for inference: float32 inputs, forward without a cache, no backward.
    """

    __slots__ = (
        "_bias", "_has_bias", "_kept", "_packed", "_peepholes", "_plan", "_w_hh", "_w_hr",
        "_w_ih", "dtype", "weight_dtype",
    )  # fmt: skip

    def __init__(
        self,
        w_ih: Any,
        w_hh: Any,
        b_ih: Any = None,
        b_hh: Any = None,
        *,
        dtype: Any = None,
        peepholes: Any = None,
        w_hr: Any = None,
        weight_dtype: Any = None,
    ) -> None:
        bf16 = bfloat16_weights(weight_dtype)
        #: "bfloat16" for bf16 inference's weights, else None (the compute dtype).
        self.weight_dtype = "bfloat16" if bf16 else None
        raw = {"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}
        for k in ("w_ih", "w_hh"):
            if raw[k] is None:
                raise TypeError(f"{k} is required: expected an array, got None")
        arrays = {k: real_array(k, v) for k, v in raw.items() if v is not None}
        if w_hr is None:
            hidden = hidden_from_gate_rows(
                "w_hh", arrays["w_hh"].shape, "(4*hidden_size, hidden_size)"
            )
            check_shape(
                "w_hh", arrays["w_hh"], "(4*hidden_size, hidden_size)", (4 * hidden, hidden)
            )
            proj = hidden
        else:
            arrays["w_hr"], hidden, proj = projection(arrays["w_hh"], w_hr)
        wih = arrays["w_ih"]
        if wih.ndim != 2 or wih.shape[0] != 4 * hidden:
            raise ValueError(
                f"w_ih must have shape (4*hidden_size, input_size) with 4*hidden_size = "
                f"{4 * hidden}, got {wih.shape}"
            )
        for k in ("b_ih", "b_hh"):
            if k in arrays:
                check_shape(k, arrays[k], "(4*hidden_size,)", (4 * hidden,))
        if peepholes is not None:
            arrays["peepholes"] = shaped_array(
                "peepholes", peepholes, "(3*hidden_size,)", (3 * hidden,)
            )
        self.dtype = (
            compute_dtype(a.dtype for a in arrays.values())
            if dtype is None
            else float_dtype("dtype", dtype)
        )
        if bf16:
            if dtype is not None and self.dtype != np.float32:
                raise ValueError(
                    f"weight_dtype='bfloat16' computes in float32: dtype must be float32 "
                    f"or None, got {self.dtype}"
                )
            self.dtype = np.dtype(np.float32)
        pad = _core.hidden_pad(max(hidden, proj), self.dtype.itemsize)
        check_size("w_hh", (4 * pad, max(hidden, proj)))
        self._w_ih = private_copy("w_ih", wih, self.dtype)
        self._w_hh = private_copy("w_hh", arrays["w_hh"], self.dtype)
        #: The projection (P, H) every call uses, or None.
        self._w_hr = None if w_hr is None else private_copy("w_hr", arrays["w_hr"], self.dtype)
        self._has_bias = ("b_ih" in arrays, "b_hh" in arrays)
        bias = _bias_sum([arrays[k] for k in ("b_ih", "b_hh") if k in arrays], self.dtype)
        if bias is not None:
            bias.flags.writeable = False
        self._bias = bias
        #: The weights as given (in dtype), what :meth:`matches` compares with:
        #: w_ih, w_hh, b_ih, b_hh, w_hr.
        self._kept = (
            (self._w_ih, self._w_hh)
            + tuple(
                private_copy(k, arrays[k], self.dtype) if k in arrays else None
                for k in ("b_ih", "b_hh")
            )
            + (self._w_hr,)
        )
        self._packed = _core.Packed(self._w_ih, self._w_hh, self._w_hr, bfloat16=bf16)
        #: (variant, the `_core.Kept` of :meth:`_run_kept` for it), made on first use.
        self._plan: tuple[tuple[Any, ...], Any] | None = None
        #: The peepholes every call uses (docs/variants.md), or None.
        given = arrays.get("peepholes")
        self._peepholes = None if given is None else private_copy("peepholes", given, self.dtype)

    @property
    def input_size(self) -> int:
        return int(self._w_ih.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self._w_hh.shape[0]) // 4

    @property
    def proj_size(self) -> int:
        """P, the rows of the projection ``w_hr``; 0 without one (PyTorch's
        convention)."""
        return 0 if self._w_hr is None else int(self._w_hr.shape[0])

    def __repr__(self) -> str:
        proj = f" proj_size={self.proj_size}" if self._w_hr is not None else ""
        weights = "" if self.weight_dtype is None else f" weight_dtype={self.weight_dtype}"
        return (
            f"<lstm_fast.PreparedWeights input_size={self.input_size} "
            f"hidden_size={self.hidden_size}{proj} dtype={self.dtype}{weights}>"
        )

    def matches(
        self, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None, *, w_hr: Any = None
    ) -> bool:
        """Whether these arrays, in this object's dtype, are bit for bit the prepared
        weights (NaNs included; ``w_hr`` the projection, None for none): the proof a
        caller needs to keep using this object for weights that may have been
        updated in place."""
        given, kept = [], []
        names = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
        values = (w_ih, w_hh, b_ih, b_hh, w_hr)
        for name, value, mine in zip(names, values, self._kept):
            if (value is None) != (mine is None):
                return False
            if mine is None:
                continue
            # A layer's own arrays (the common case) skip the general coercion.
            exact = type(value) is np.ndarray and value.dtype == mine.dtype
            array = value if exact else real_array(name, value)
            if array.shape != mine.shape:
                return False
            if array.dtype != mine.dtype or not (
                array.flags.c_contiguous and array.flags.aligned
            ):  # the layout the engine reads (an unpickled array may be unaligned)
                array = np.require(array, dtype=mine.dtype, requirements=["C", "A"])
            given.append(array)
            kept.append(mine)
        return bool(_core.same_bits(given, kept))

    def _run_kept(
        self,
        x: np.ndarray,
        h0: np.ndarray | None,
        c0: np.ndarray | None,
        out: Outputs,
        live: tuple[np.ndarray | None, ...],
        peepholes: np.ndarray | None,
        variant: tuple[Any, Any, Any, Any],
        *,
        batch_first: bool = False,
        reverse: bool = False,
        layer_norm: LayerNormParams | None = None,
    ) -> bool:
        """One pass without a cache, in one engine call that first proves ``live``
        (the caller's w_ih, w_hh, b_ih, b_hh, w_hr; None where absent) bit for bit
        these weights, as :meth:`matches` does: the per-call work of a layer that
        keeps its prepared weights (``LSTM.step``, an inference ``LSTM.forward``).
        The arguments are checked: ``x`` (T, B, I), or (B, T, I) with
        ``batch_first``, ``h0``, ``c0`` (or None) and ``out``'s arrays
        C-contiguous in this dtype and of the pass's shapes; ``peepholes`` the
        live (3H,) array or None; ``variant`` (clip, input_forget, forget_gate,
        activations) as ``_checks.variant_options`` returns them, activations
        None for the plain ones; ``layer_norm`` the LayerNorm LSTM's live gains
        and biases and its checked eps, or None. False, with nothing computed, when the live
        arrays are not the prepared weights, or not arrays of this dtype the
        engine reads in place: the caller then prepares again (or takes the
        general path)."""
        plan = self._plan
        if plan is None or plan[0] != variant:
            clip, input_forget, forget_gate, acts = variant
            kept = _core.Kept(
                self._packed, self._w_ih, self._w_hh, self._w_hr, self._bias, self._kept[2],
                self._kept[3], clip, input_forget, forget_gate, acts,
            )  # fmt: skip
            plan = self._plan = (variant, kept)
        return bool(
            plan[1].forward(
                x,
                h0,
                c0,
                live,
                peepholes,
                out,
                batch_first=batch_first,
                reverse=reverse,
                layer_norm=layer_norm,
            )
        )

    def _args(self, x: Any, h0: Any, c0: Any, x_name: str, batch_first: bool, **kw: Any) -> _Args:
        array = real_array(x_name, x)
        if self.weight_dtype is not None:
            names = kw.get("names", {})
            for name, value in ((x_name, array), (names.get("h0", "h0"), h0),
                                (names.get("c0", "c0"), c0)):  # fmt: skip
                if getattr(value, "dtype", None) is not None:
                    if real_array(name, value).dtype == np.float64:
                        raise TypeError(
                            f"{name} is float64: weights prepared in bfloat16 compute in "
                            f"float32 (pass float32 arrays)"
                        )
        if array.ndim >= 1 and array.shape[-1] != self.input_size:
            raise ValueError(
                f"{x_name} must have input_size = {self.input_size} in its last dimension "
                f"(the prepared w_ih is {self._w_ih.shape}), got shape {array.shape}"
            )
        return _Args(
            array, self._w_ih, self._w_hh, None, None, h0, c0,
            batch_first=batch_first, prepared=self, **kw,
        )  # fmt: skip

    def forward(
        self,
        x: Any,
        h0: Any = None,
        c0: Any = None,
        *,
        batch_first: bool = False,
        lengths: Any = None,
        reverse: bool = False,
        need_cache: bool = True,
        checkpoint: Any = None,
        zoneout: Any = 0.0,
        training: bool = True,
        **variant: Any,
    ) -> Forward:
        """:func:`forward` with these weights: ``Forward(y, h_n, c_n, cache)``;
        ``variant`` takes the variant options of :func:`forward` (``peepholes``
        defaults to the prepared ones); ``checkpoint`` as for :func:`forward`. Weights
        prepared in bfloat16 need ``need_cache=False`` (inference only). ``zoneout``
        (a probability or a pair, as for :func:`forward`) at inference only
        (``training=False``): each state z * previous + (1 - z) * new, the bits of
        :func:`forward` with ``training=False`` (in bfloat16 on the widening ISAs: of
        the float32 engine on the rounded weights); in training it is a
        ``ValueError`` (train with zoneout through :func:`forward`, which draws the
        masks)."""
        rates = self._inference_zoneout(zoneout, training)
        return self._forward(
            x, h0, c0, batch_first=batch_first, lengths=lengths, reverse=reverse,
            need_cache=need_cache, checkpoint=checkpoint, variant=variant, zoneout=rates,
        )  # fmt: skip

    def _inference_zoneout(self, zoneout: Any, training: Any) -> tuple[float, float]:
        """``zoneout`` checked as :func:`forward` checks it: the rates (z_h, z_c)
        of an inference call; nonzero rates in training are a ``ValueError``."""
        z_h, z_c = regularisation(zoneout=zoneout, training=False)[:2]
        if flag("training", training) and (z_h or z_c):
            if self.weight_dtype is not None:
                raise ValueError(
                    "weight_dtype='bfloat16' is for inference: zoneout needs training=False (or 0)"
                )
            raise ValueError(
                "zoneout: prepared weights take it at inference only (training=False); "
                "train with zoneout through lstm_fast.forward (it draws the masks)"
            )
        return z_h, z_c

    def _forward(
        self, x: Any, h0: Any, c0: Any, *, batch_first: bool, lengths: Any, reverse: bool,
        need_cache: bool, checkpoint: Any, variant: dict[str, Any],
        zoneout: tuple[float, float],
    ) -> Forward:  # fmt: skip
        """:meth:`forward` with zoneout at inference (checked rates ``(z_h, z_c)``:
        each state z * previous + (1 - z) * new): bf16 inference with zoneout
        (:func:`forward`, the layer's eval mode) runs the kept weights this way."""
        need_cache = self._need_cache(need_cache)
        every = None if checkpoint is None else positive_int("checkpoint", checkpoint)
        args = self._args(
            x, h0, c0, "x", batch_first, lengths=lengths, reverse=reverse, own=need_cache,
            names={}, **_variant_keywords(variant),
        )  # fmt: skip
        if any(zoneout):
            _regularise(args, *zoneout, 0.0, 0.0, None, 0, False)
        return Forward(*_run_forward(args, need_cache, every))

    def cell_forward(
        self, x_t: Any, h: Any, c: Any, *, zoneout: Any = 0.0, training: bool = True,
        **variant: Any,
    ) -> Cell:  # fmt: skip
        """:func:`cell_forward` with these weights: ``Cell(h_new, c_new, cache)``
        (``cache`` None for weights prepared in bfloat16: inference only).
        ``zoneout`` at inference only (``training=False``), as for :meth:`forward`:
        h_new = z_h * h + (1 - z_h) * h̃, c_new = z_c * c + (1 - z_c) * c̃ (no mask,
        so a single step needs no time coordinate)."""
        rates = self._inference_zoneout(zoneout, training)
        raw = cell_arguments(x_t, h, c, self._w_ih, self._w_hh, None, None)
        need_cache = self.weight_dtype is None
        args = self._args(
            raw["x"], raw["h0"], raw["c0"], "x_t", False,
            lengths=None, reverse=False, own=need_cache, names=CELL_NAMES,
            **_variant_keywords(variant),
        )  # fmt: skip
        if any(rates):
            _regularise(args, *rates, 0.0, 0.0, None, 0, False)
        _, h_new, c_new, cache = _run_forward(args, need_cache=need_cache)
        return Cell(h_new, c_new, None if cache is None else CellCache(cache))

    def _need_cache(self, need_cache: Any) -> bool:
        """``need_cache`` checked: bfloat16 weights refuse True."""
        need_cache = flag("need_cache", need_cache)
        if need_cache and self.weight_dtype is not None:
            raise ValueError(
                "need_cache=True: weights in bfloat16 are for inference only (pass "
                "need_cache=False; no cache, no backward); use float32 weights to train"
            )
        return need_cache


def _variant_keywords(given: dict[str, Any]) -> dict[str, Any]:
    """The variant options a prepared call may take: :func:`forward`'s (peepholes
    given here replace the prepared ones for this call), the LayerNorm LSTM's
    among them (its gains and biases are given per call)."""
    allowed = ("peepholes", "clip", "input_forget", "forget_gate", "activations")
    ln_keys = ("layer_norm", "layer_norm_eps", *LAYER_NORM_NAMES)
    for k in given:
        if k not in allowed and k not in ln_keys:
            raise TypeError(f"unexpected keyword argument {k!r}")
    kw = {k: v for k, v in given.items() if k in allowed}
    norms = _layer_norm_options(
        given.get("layer_norm", False), {k: given.get(k) for k in LAYER_NORM_NAMES}
    )
    return {**kw, "norms": norms, "layer_norm_eps": given.get("layer_norm_eps", LAYER_NORM_EPS)}


def prepare_weights(
    w_ih: Any,
    w_hh: Any,
    b_ih: Any = None,
    b_hh: Any = None,
    *,
    dtype: Any = None,
    peepholes: Any = None,
    w_hr: Any = None,
    weight_dtype: Any = None,
) -> PreparedWeights:
    """Copy and pack one layer's weights once: a :class:`PreparedWeights` whose
    ``forward``/``cell_forward`` skip the per-call packing. ``dtype`` (float32 or
    float64) defaults to the weights' compute dtype; ``peepholes`` (3H,) are kept
    with the weights for every call; ``w_hr`` (P, H), a projection, is copied and
    packed with them (``w_hh`` is then (4H, P)). ``weight_dtype="bfloat16"`` (or
    ``"bf16"``, or ml_dtypes' bfloat16): bf16 inference, the weight matrices rounded
    to bfloat16 once here (see :class:`PreparedWeights`)."""
    return PreparedWeights(
        w_ih, w_hh, b_ih, b_hh, dtype=dtype, peepholes=peepholes, w_hr=w_hr,
        weight_dtype=weight_dtype,
    )  # fmt: skip


# ---------------------------------------------------------------------------
# Threads and ISA
# ---------------------------------------------------------------------------


def set_num_threads(n: int) -> None:
    """Threads for later calls (default: ``LSTM_FAST_NUM_THREADS`` or all cores); the
    engine refuses a count above its maximum (any size of int) with a ``ValueError``."""
    _core.set_num_threads(positive_int("set_num_threads: n", n))


def get_num_threads() -> int:
    """The number of threads calls use."""
    return int(_core.get_num_threads())

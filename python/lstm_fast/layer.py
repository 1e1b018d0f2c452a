"""``LSTM``: the complete layer (docs/api.md, 'The LSTM layer') on top of the functional API.

Stacked layers, both directions, ``batch_first``, variable lengths with PyTorch's
PackedSequence semantics, backward through everything, PyTorch's parameter names,
streaming one step at a time and ONNX export.

The engine is reached only through the module object ``_F`` so that the same layer
can run on the NumPy oracle (``monkeypatch.setattr(lstm_fast.layer, "_F",
lstm_fast.reference)``), which is how the tests compare whole training runs.
"""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable, NamedTuple, TypeVar

import numpy as np

from . import functional as _F
from . import functional as _functional
from . import masks as _masks
from ._bundles import LayerNormParams
from ._bundles import Outputs as _Outputs
from ._checks import (
    LAYER_NORM_EPS,
    PLAIN_ACTIVATIONS,
    bfloat16_weights,
    cast,
    check_lengths,
    check_memory,
    check_shape,
    contiguous,
    empty,
    flag,
    float_dtype,
    integer,
    mapping,
    positive_int,
    probability,
    random_generator,
    real_number,
    regularisation,
    shape_error,
    variant_options,
)
from ._checks import layer_norm_eps as checked_eps
from ._core import Cancel
from ._types import Forward as _Forward
from ._types import LayerWeights

__all__ = ["LSTM"]

#: The functional API's names of the LayerNorm parameters (docs/variants.md).
_LAYER_NORM_KEYS = ("w_ln_ih", "b_ln_ih", "w_ln_hh", "b_ln_hh", "w_ln_c", "b_ln_c")
#: The keywords of a pass that only asks for layer norm (``_pass_options``): the
#: prepared weights take them, so such a pass keeps its packing across calls.
_LAYER_NORM_OPTIONS = frozenset({"layer_norm", "layer_norm_eps", *_LAYER_NORM_KEYS})

_T = TypeVar("_T")

# Running the two directions of a layer in two threads overlaps them (the engine
# releases the GIL). That only pays when one direction leaves engine threads idle,
# which the rule below counts as ceil(B / _ENGINE_ROWS_PER_TASK) busy threads for a
# batch of B rows (a rule of thumb fitted to the measurements below, not the
# engine's split, which also uses small batches' threads by teams or one-row
# chunks; the overlap still measured faster there). With fewer busy threads than the
# engine has, the reverse direction runs on the idle ones; with all of them busy, a
# second direction only competes for the same cores. With little work per step
# (B*4H*(I+H) multiply-adds below _CONCURRENT_MIN_STEP_WORK) or in all (times T, below
# _CONCURRENT_MIN_WORK) the Python work around the engine call, done under the GIL,
# and the hand-off to the worker thread cost what the overlap saves.
# Measured on 2 cores / 2 engine threads, forward + backward of one bidirectional
# layer, I = H, best of 90 s of alternating runs, sequential / concurrent:
#   T=100 B=1  H=32   0.25 / 0.27 ms   (8K MACs a step: no gain; T=50 B=2 H=32 neither)
#   T=20  B=1  H=64   0.40 / 0.33 ms   T=100 B=1 H=64   0.53 / 0.43 ms
#   T=100 B=1  H=256  5.7  / 3.7 ms    T=100 B=4 H=128  3.1  / 2.2 ms
#   T=100 B=8  H=256 20.1  / 15.2 ms   (one busy engine thread: the other was idle)
#   T=100 B=16 H=128  8.3  / 8.1 ms    T=100 B=64 H=128 34.3 / 35.7 ms (both busy)
_ENGINE_ROWS_PER_TASK = 8
_CONCURRENT_MIN_STEP_WORK = 1 << 15
_CONCURRENT_MIN_WORK = 1 << 19
#: Force (True/False) or leave to the rule above (None); for tests and benchmarks.
CONCURRENT_DIRECTIONS: bool | None = None


class _Pool:
    """One lazily started worker thread for the reverse direction (fork-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._pid = -1

    def submit(self, fn: Callable[[], _T]) -> Future[_T]:
        with self._lock:
            # After fork() the parent's worker thread does not exist in the child, and a
            # ThreadPoolExecutor copied across the fork would wait for it forever.
            if self._executor is None or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="lstm_fast-reverse"
                )
                self._pid = os.getpid()
            return self._executor.submit(fn)


_POOL = _Pool()


def _engine_threads() -> int:
    get = getattr(_F, "get_num_threads", None)
    return int(get()) if get is not None else 1


def _both_directions(run: Callable[[int], _T], concurrent: bool) -> list[_T]:
    """``[run(0), run(1)]``, the reverse direction in the worker thread if ``concurrent``."""
    if not concurrent:
        return [run(0), run(1)]
    # Only the main thread sees Ctrl-C. Both engine calls share `stop`: an
    # interrupted call cancels it (python.rs), which also stops the other one at its
    # next time step; so does a failure here, or an interrupted wait for run(1).
    # Either way the wait below ends soon, and no work outlives the call.
    stop = Cancel()

    def reverse() -> _T:
        with stop:
            return run(1)

    future = _POOL.submit(reverse)
    try:
        with stop:
            first = run(0)
        second = future.result()
    except BaseException:
        stop.cancel()
        wait([future])
        raise
    return [first, second]


class _Tape(NamedTuple):
    """What :meth:`LSTM.backward` needs from the last forward."""

    caches: list[list[Any]]  # [layer][direction] -> the functional cache
    y_shape: tuple[int, ...]  # the shape the caller saw (unbatched included)
    batch_first: bool  # layout of the arrays given to the engine
    unbatched: bool
    steps: int
    batch: int
    #: [layer] -> (the shape of that layer's output in the engine's layout, p) of
    #: the dropout applied to it, None where none was (the last layer, inference).
    #: Backward draws the mask again from ``seed``, the same bits, rather than keep
    #: its T*B*D*P numbers per layer.
    dropout: list[tuple[tuple[int, ...], float] | None] | None = None
    #: The seed of the pass's masks, None when it drew none.
    seed: int | None = None


class LSTM:
    """A multi-layer, optionally bidirectional LSTM with PyTorch's semantics and names.

    ``forward(x, hx=None, *, lengths=None) -> (y, (h_n, c_n))`` with ``x`` (T, B, I), or
    (B, T, I) with ``batch_first=True``, or (T, I) unbatched; ``y`` (T, B, D*H) in x's
    layout, ``h_n``/``c_n`` (L*D, B, H). ``backward(dy, dh_n, dc_n) -> dx`` after a
    forward fills :attr:`grads`. ``x`` and the states are computed in the layer's dtype.

    ``proj_size=P`` (0 < P < H; PyTorch's LSTMP) adds a projection ``weight_hr_l{k}``
    (P, H) per layer and direction: ``h_t = weight_hr (o_t * tanh(c_t))``, so ``y`` is
    (T, B, D*P), ``h0``/``h_n`` are (L*D, B, P), ``weight_hh_l{k}`` is (4H, P) and
    layer k > 0 takes D*P inputs; ``c0``/``c_n`` stay H wide.

    Regularisation (docs/variants.md, 'Regularisation'), in training mode only
    (:attr:`training`, :meth:`train`, :meth:`eval`, as in PyTorch): ``dropout=p``
    (PyTorch's, on the output of every layer but the last), ``recurrent_dropout=p``
    (one mask per sequence on h_{t-1} in the recurrent product), ``weight_drop=p``
    (DropConnect on ``weight_hh``) and ``zoneout=z`` or ``(z_h, z_c)``. Each training
    forward draws its masks from a fresh seed of the layer's generator (seeded by
    ``seed``) unless ``forward(..., seed=s)`` gives one; :meth:`backward` uses the
    same masks. In eval mode each computes its expectation: the plain layer, bit
    for bit, for the three dropouts; a mix of each state with the previous one for
    zoneout. ``layer_norm=True`` is the LayerNorm LSTM, with the parameters
    ``weight_ln_{ih,hh,c}_l{k}`` and ``bias_ln_{ih,hh,c}_l{k}``; ``layer_norm_eps``
    (1e-5, a finite number > 0) is added to each variance (it needs ``layer_norm=True``).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        bias: bool = True,
        batch_first: bool = False,
        bidirectional: bool = False,
        dtype: Any = np.float32,
        seed: int | None = None,
        peepholes: bool = False,
        clip: float | None = None,
        input_forget: bool = False,
        forget_gate: bool = True,
        activations: Any = None,
        forget_bias: float | None = None,
        proj_size: int = 0,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        zoneout: Any = 0.0,
        layer_norm: bool = False,
        layer_norm_eps: float = LAYER_NORM_EPS,
    ) -> None:
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.bias = flag("bias", bias)
        self.batch_first = flag("batch_first", batch_first)
        self.bidirectional = flag("bidirectional", bidirectional)
        self.dtype = float_dtype("dtype", dtype)
        rng = random_generator("seed", seed)
        self.peepholes = flag("peepholes", peepholes)
        self.clip, self.input_forget, self.forget_gate, acts = variant_options(
            clip=clip, input_forget=input_forget, forget_gate=forget_gate, activations=activations
        )
        #: The three activations as (ONNX name, alpha, beta); None: the plain ones.
        self.activations = None if acts == PLAIN_ACTIVATIONS else acts
        if forget_bias is not None:
            forget_bias = real_number("forget_bias", forget_bias)
            if not self.bias:
                raise ValueError(
                    "forget_bias needs bias=True (it initialises the forget-gate bias)"
                )
        self.forget_bias = forget_bias
        # PyTorch's rule and its two messages, with the value.
        proj_size = integer("proj_size", proj_size)
        if proj_size < 0:
            raise ValueError(
                f"proj_size should be a positive integer or zero to disable projections, "
                f"got {proj_size}"
            )
        if proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size has to be smaller than hidden_size = {self.hidden_size}, "
                f"got proj_size = {proj_size}"
            )
        #: P, the width of the state h (0: no projection, h is H wide).
        self.proj_size = proj_size
        #: PyTorch's dropout between layers: on the output of every layer but the last.
        self.dropout = probability("dropout", dropout)
        #: Recurrent dropout (one mask per sequence on h_{t-1}, every layer).
        self.recurrent_dropout = probability("recurrent_dropout", recurrent_dropout)
        #: Weight drop: DropConnect on every ``weight_hh`` (one mask per forward).
        self.weight_drop = probability("weight_drop", weight_drop)
        # The functional API's rule and messages (zoneout[0], zoneout[1] for a pair).
        zoneout_h, zoneout_c = regularisation(zoneout=zoneout, training=False)[:2]
        #: Zoneout of h and c: one probability, or a pair (for h, for c).
        self.zoneout: float | tuple[float, float] = (
            (zoneout_h, zoneout_c)
            if isinstance(zoneout, (tuple, list)) and (zoneout_h or zoneout_c)
            else zoneout_h
        )
        #: The LayerNorm LSTM (docs/variants.md): parameters ``weight_ln_*``, ``bias_ln_*``.
        self.layer_norm = flag("layer_norm", layer_norm)
        #: The LayerNorm LSTM's epsilon, added to each variance (the functional API's
        #: ``layer_norm_eps`` and its rule: a finite number > 0).
        self.layer_norm_eps = checked_eps(layer_norm_eps)
        if not self.layer_norm and self.layer_norm_eps != LAYER_NORM_EPS:
            # As the functional API treats the LayerNorm parameters given without it:
            # an option that would do nothing is refused, not ignored.
            raise ValueError(
                f"layer_norm_eps={self.layer_norm_eps!r} is an option of the LayerNorm "
                f"LSTM: pass layer_norm=True"
            )
        if self.dropout and self.num_layers == 1:
            # PyTorch's warning, word for word: the option then does nothing.
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={self.dropout} "
                f"and num_layers={self.num_layers}",
                UserWarning,
                stacklevel=2,
            )
        #: Training mode (PyTorch's ``Module.training``): the regularisation draws
        #: masks only while it is True. :meth:`train` and :meth:`eval` set it.
        self.training = True

        directions = 2 if self.bidirectional else 1
        self.num_directions = directions
        hidden = self.hidden_size
        state = self.state_size
        per_direction = 4 * hidden * (state + (2 if self.bias else 0)) + proj_size * hidden
        if self.layer_norm:
            per_direction += 2 * (4 * hidden + 4 * hidden + hidden)
        count = directions * (
            self.num_layers * per_direction
            + 4 * hidden * (self.input_size + (self.num_layers - 1) * directions * state)
        )
        check_memory(
            f"input_size = {self.input_size}, hidden_size = {hidden}, num_layers = "
            f"{self.num_layers}" + (f", proj_size = {proj_size}" if proj_size else ""),
            2 * count * self.dtype.itemsize,
            f"the {count} parameters and their gradients",
        )
        # _names[layer][direction] = (w_ih, w_hh, b_ih, b_hh) keys, biases None if off.
        self._names: list[list[tuple[str, str, str | None, str | None]]] = []
        shapes: dict[str, tuple[int, ...]] = {}  # the parameters drawn, in drawing order
        order: list[str] = []  # every parameter but the peepholes, in registration order
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else directions * state
            row = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                names = (
                    "weight_ih" + suffix,
                    "weight_hh" + suffix,
                    "bias_ih" + suffix if self.bias else None,
                    "bias_hh" + suffix if self.bias else None,
                )
                shapes[names[0]] = (4 * hidden, layer_input)
                shapes[names[1]] = (4 * hidden, state)
                if self.bias:
                    shapes[names[2]] = (4 * hidden,)  # type: ignore[index]
                    shapes[names[3]] = (4 * hidden,)  # type: ignore[index]
                if proj_size:  # after the biases, as PyTorch registers (and draws) it
                    shapes[self._projection_name(layer, direction)] = (proj_size, hidden)
                order += [name for name in names if name is not None]
                if proj_size:
                    order.append(self._projection_name(layer, direction))
                if self.layer_norm:  # after the direction's others; not drawn
                    order += self._layer_norm_names(layer, direction)
                row.append(names)
            self._names.append(row)

        # PyTorch's initialisation: every parameter uniform in +-1/sqrt(H), in this order.
        bound = 1.0 / np.sqrt(hidden)
        try:
            #: name -> the live parameter array (an optimizer updates these in place).
            drawn = {
                name: rng.uniform(-bound, bound, size=shape).astype(self.dtype)
                for name, shape in shapes.items()
            }
            # The LayerNorm gains start at 1 and its biases at 0 (torch.nn.LayerNorm),
            # so a seed gives the same other weights with and without it.
            self.parameters: dict[str, np.ndarray] = {
                name: drawn[name] if name in drawn else self._layer_norm_start(name)
                for name in order
            }
            #: name -> gradient of the last :meth:`backward` (zeros before the first).
            self.grads: dict[str, np.ndarray] = {
                name: np.zeros_like(p) for name, p in self.parameters.items()
            }
            # Drawn after the plain parameters: without peepholes a seed gives the
            # same numbers as before they existed.
            for layer in range(self.num_layers):
                for direction in range(directions):
                    if self.peepholes:
                        name = self._peephole_name(layer, direction)
                        self.parameters[name] = rng.uniform(-bound, bound, size=3 * hidden).astype(
                            self.dtype
                        )
                        self.grads[name] = np.zeros_like(self.parameters[name])
                    names = self._names[layer][direction]
                    if forget_bias is not None and names[2] is not None:
                        self.parameters[names[2]][hidden : 2 * hidden] = forget_bias
                        self.parameters[names[3]][hidden : 2 * hidden] = 0  # type: ignore[index]
        except MemoryError:
            raise MemoryError(
                f"input_size = {self.input_size}, hidden_size = {hidden} and num_layers = "
                f"{self.num_layers}: out of memory for the {count} parameters and their "
                f"gradients in {self.dtype}"
            ) from None
        #: ``(dh0, dc0)`` of the last :meth:`backward`, (L*D, B, P) and (L*D, B, H) (P = H
        #: without a projection); None before.
        self.hx_grad: tuple[np.ndarray, np.ndarray] | None = None
        self._tape: _Tape | None = None
        #: (layer, direction) -> the weights as last packed (see _prepared_weights);
        #: (layer, direction, 16) -> their bfloat16 copy.
        self._prepared: dict[tuple[int, ...], Any] = {}
        #: (layer, direction) -> the ``GradientFlow`` of the last ``backward(flow=True)``.
        self.flow: dict[tuple[int, int], Any] = {}
        # The generator that drew the parameters draws each training forward's mask
        # seed next: a seeded layer trains reproducibly.
        self._generator = rng

    # The variant options of a layer made before they existed (an old pickle).
    _VARIANT_DEFAULTS: dict[str, Any] = {
        "proj_size": 0,
        "peepholes": False,
        "clip": None,
        "input_forget": False,
        "forget_gate": True,
        "activations": None,
        "forget_bias": None,
        "dropout": 0.0,
        "recurrent_dropout": 0.0,
        "weight_drop": 0.0,
        "zoneout": 0.0,
        "layer_norm": False,
        "layer_norm_eps": LAYER_NORM_EPS,
    }

    #: Set by from_onnx / from_keras for a model of one reverse direction (ONNX's
    #: direction="reverse", Keras's go_backwards): the one direction runs backwards.
    _reverse = False

    @staticmethod
    def _peephole_name(layer: int, direction: int) -> str:
        return f"weight_p_l{layer}" + ("_reverse" if direction else "")

    @staticmethod
    def _projection_name(layer: int, direction: int) -> str:
        return f"weight_hr_l{layer}" + ("_reverse" if direction else "")

    @staticmethod
    def _layer_norm_names(layer: int, direction: int) -> list[str]:
        """The six LayerNorm parameters of one layer and direction, in the functional
        API's order (w_ln_ih, b_ln_ih, w_ln_hh, b_ln_hh, w_ln_c, b_ln_c)."""
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        return [
            f"{kind}_ln_{part}{suffix}" for part in ("ih", "hh", "c") for kind in ("weight", "bias")
        ]

    def _layer_norm_start(self, name: str) -> np.ndarray:
        """A LayerNorm parameter's initial value: gains 1, biases 0."""
        width = self.hidden_size if "_ln_c_" in name else 4 * self.hidden_size
        start = np.ones if name.startswith("weight_") else np.zeros
        return start(width, dtype=self.dtype)

    @property
    def state_size(self) -> int:
        """The width of the state h, of ``h0``/``h_n`` and of each direction's part of
        ``y``: ``proj_size`` with a projection, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    def _variant(self, layer: int, direction: int) -> dict[str, Any]:
        """The variant keywords of the functional API for one layer and direction."""
        options: dict[str, Any] = {}
        if self.proj_size:
            options["w_hr"] = self.parameters[self._projection_name(layer, direction)]
        if self.peepholes:
            options["peepholes"] = self.parameters[self._peephole_name(layer, direction)]
        if self.clip is not None:
            options["clip"] = self.clip
        if self.input_forget:
            options["input_forget"] = True
        if not self.forget_gate:
            options["forget_gate"] = False
        if self.activations is not None:
            options["activations"] = self.activations
        return options

    @property
    def is_plain(self) -> bool:
        """Whether this is the plain LSTM (no variant option, no layer norm; the
        regularisation, which changes only training, does not count)."""
        return not self._variant(0, 0) and not self.layer_norm

    # ----------------------------------------------------------- training mode

    def train(self, mode: bool = True) -> LSTM:
        """Training mode (``mode=True``) or inference mode; returns the layer (as
        PyTorch's ``Module.train``). Only the regularisation depends on it."""
        self.training = flag("mode", mode)
        return self

    def eval(self) -> LSTM:
        """Inference mode, ``train(False)``: the regularisation computes its
        expectation (no masks): the dropouts are off, zoneout mixes each state with
        the previous one."""
        return self.train(False)

    @property
    def _zoneout_rates(self) -> tuple[float, float]:
        z = self.zoneout
        return z if isinstance(z, tuple) else (z, z)

    def mask_seed(self, seed: Any = None) -> int | None:
        """The mask seed of a forward that starts now: ``None`` when it draws no
        masks (eval mode, or every rate 0; ``dropout`` acts only between layers, so
        with two or more), else ``seed`` when given, or a fresh seed from the
        layer's generator, uniform in [0, 2**64), which moves the generator on.

        :meth:`forward` asks it once its arguments are known to be good, and so
        does ``lstm_fast.distributed.predict``. ``seed``: an integer in
        [0, 2**64), checked in either mode (as ``forward``'s ``seed``).
        """
        if seed is not None:  # the functional API's rule for a mask seed
            seed = regularisation(seed=seed, training=False)[4]
        between = self.dropout and self.num_layers > 1
        rates = (self.recurrent_dropout, self.weight_drop, *self._zoneout_rates)
        if not (self.training and (any(rates) or between)):
            return None
        if seed is None:
            return int(self._generator.integers(0, 1 << 64, dtype=np.uint64))
        return seed

    def _pass_options(
        self, layer: int, direction: int, seed: int | None, training: bool
    ) -> dict[str, Any]:
        """The functional API's keywords beyond the prepared weights' for one layer
        and direction: the LayerNorm parameters and the regularisation of a pass
        with mask seed ``seed`` (None: no masks) in mode ``training``. Empty, or
        layer norm's alone, for a pass the prepared weights run."""
        options: dict[str, Any] = {}
        if self.layer_norm:
            options["layer_norm"] = True
            options["layer_norm_eps"] = self.layer_norm_eps
            for key, name in zip(_LAYER_NORM_KEYS, self._layer_norm_names(layer, direction)):
                options[key] = self.parameters[name]
        zoneout = any(self._zoneout_rates)
        if training and seed is not None:
            # Only the rates that are on: without them the call is the plain one.
            rates = {
                "zoneout": self.zoneout if zoneout else 0.0,
                "recurrent_dropout": self.recurrent_dropout,
                "weight_drop": self.weight_drop,
            }
            on = {key: rate for key, rate in rates.items() if rate}
            if on:
                options.update(on, seed=seed, layer=layer)
        elif zoneout:
            # Inference: zoneout's expectation, z * previous + (1 - z) * new (the
            # dropouts' is the identity: nothing to pass).
            options.update(zoneout=self.zoneout, training=False)
        return options

    @staticmethod
    def _inference_zoneout(options: dict[str, Any]) -> tuple[float, float] | None:
        """The rates ``(z_h, z_c)`` when ``options`` (:meth:`_pass_options`) ask
        only for zoneout at inference, which the prepared weights run; else None."""
        if options.keys() != {"zoneout", "training"} or options["training"]:
            return None
        z_h, z_c = regularisation(zoneout=options["zoneout"], training=False)[:2]
        return z_h, z_c

    def _dropout_keep(
        self, layer: int, seed: int, shape: tuple[int, ...], p: float, batch_first: bool
    ) -> np.ndarray:
        """The scaled keep mask of the dropout (rate ``p``) on layer ``layer``'s
        output, of ``shape`` in the engine's layout: ``reference.dropout``'s, stream 5,
        coordinates (t, b, u) whatever the layout."""
        if batch_first:
            batch, steps, features = shape
        else:
            steps, batch, features = shape
        keep = _masks.scaled_keep(
            seed, _masks.DROPOUT, layer, 0, (steps, batch, features), p, self.dtype
        )
        return keep.transpose(1, 0, 2) if batch_first else keep

    # ------------------------------------------------------------------ helpers

    def __getstate__(self) -> dict[str, Any]:
        # Weights and configuration only: the tape holds the engine's caches of the
        # last forward (per-call work, and they do not pickle), and the gradients
        # belong to that call too. Dask ships layers to its workers this way.
        state = self.__dict__.copy()
        for name in ("grads", "hx_grad", "_tape", "_prepared", "flow"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({**self._VARIANT_DEFAULTS, **state})
        # A pickle from before the regularisation: training mode (PyTorch's default)
        # and a generator of its own (its seed did not survive the pickle).
        if "training" not in state:
            self.training = True
        if "_generator" not in state:
            self._generator = np.random.default_rng()
        self.flow = {}
        # A dict of its own, so that a shallow copy (copy.copy) shares the weight
        # arrays but gets its own tape and gradients.
        self.parameters = dict(self.parameters)
        self.grads = {name: np.zeros_like(p) for name, p in self.parameters.items()}
        self.hx_grad = None
        self._tape = None
        self._prepared = {}

    def __repr__(self) -> str:
        extra = "" if self.num_layers == 1 else f", num_layers={self.num_layers}"
        for option, default in (("bias", True), ("batch_first", False), ("bidirectional", False)):
            if getattr(self, option) != default:
                extra += f", {option}={getattr(self, option)}"
        if self.dtype != np.float32:
            extra += f", dtype={self.dtype.name}"
        for option, default in self._VARIANT_DEFAULTS.items():
            value = getattr(self, option)
            if value != default:
                extra += f", {option}={value!r}"
        reverse = "  # one reverse direction" if self._reverse else ""
        return f"LSTM({self.input_size}, {self.hidden_size}{extra}){reverse}"

    def weights(self, layer: int, direction: int = 0) -> LayerWeights:
        """The weights of one layer and direction: ``LayerWeights(w_ih, w_hh, b_ih, b_hh)``.

        ``direction`` is 0 (forward) or 1 (reverse, with ``bidirectional``). The arrays
        are the live ones of :attr:`parameters`, not copies: writing into them changes
        the layer (as an optimizer does), so ``.copy()`` them to keep a snapshot. The
        biases are None for a layer built with ``bias=False``. PyTorch hands out the
        same arrays as ``all_weights[layer * num_directions + direction]`` (where a
        fifth, the projection, follows; here it is ``parameters["weight_hr_l{k}"]``).
        """
        layer, direction = integer("layer", layer), integer("direction", direction)
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer must lie in 0..{self.num_layers - 1}, got {layer}")
        if not 0 <= direction < self.num_directions:
            raise IndexError(f"direction must lie in 0..{self.num_directions - 1}, got {direction}")
        p = self.parameters
        w_ih, w_hh, b_ih, b_hh = self._names[layer][direction]
        return LayerWeights(
            p[w_ih],
            p[w_hh],
            None if b_ih is None else p[b_ih],
            None if b_hh is None else p[b_hh],
        )

    def _prepared_weights(self, layer: int, direction: int, weight_dtype: Any = None) -> Any:
        """The weights of one layer and direction, packed for the engine (with
        ``weight_dtype="bfloat16"``, bf16 inference's copy, kept beside the other).

        Packing costs a pass over the weights, as much as several time steps, so the
        packed copy is kept across calls, but only while it can be proven current:
        before each use the live arrays are compared, bit for bit, with what was
        packed (a read of the weights, several times cheaper than packing them).
        An optimizer's in-place update, ``load_state_dict`` or a replaced array
        therefore packs again; a stream of ``step`` calls or an inference loop does
        not.
        """
        p = self.parameters
        live = [None if name is None else p[name] for name in self._names[layer][direction]]
        # The projection is packed with the weights (and compared with them).
        projection = {}
        if self.proj_size:
            projection["w_hr"] = p[self._projection_name(layer, direction)]
        key: tuple[int, ...] = (layer, direction)
        options: dict[str, Any] = {"dtype": self.dtype, **projection}
        if weight_dtype is not None and bfloat16_weights(weight_dtype):
            key, options["weight_dtype"] = (layer, direction, 16), "bfloat16"
        kept = self._prepared.get(key)
        # The isinstance test: tests swap the engine for the reference (``_F``).
        if not isinstance(kept, _F.PreparedWeights) or not kept.matches(*live, **projection):
            kept = _F.prepare_weights(*live, **options)
            self._prepared[key] = kept
        return kept

    def _kept_pass(
        self,
        layer: int,
        direction: int,
        weight_dtype: Any,
        x: np.ndarray,
        h0: np.ndarray | None,
        c0: np.ndarray | None,
        out: _Outputs,
        *,
        batch_first: bool = False,
        reverse: bool = False,
    ) -> bool:
        """One pass without a cache of one layer and direction (no zoneout, no
        ``lengths``) from its kept weights, into ``out``; ``x``, ``h0``, ``c0``
        checked, in the layer's dtype. True when it ran. The LayerNorm LSTM's gains
        and biases are read in place, as the peepholes are.

        The per-call work of :meth:`step` and of an inference ``forward``: what
        depends only on the configuration and the weights was done when they were
        packed (``_prepared_weights``), so a call proves the live parameters
        current and runs the pass in one engine call
        (``PreparedWeights._run_kept``), with the bits of the general call. False,
        with nothing computed, when the parameters are not plain arrays of the
        layer's dtype (one replaced by a strided view, say): the general call
        handles those.
        """
        dt = self.dtype
        p = self.parameters
        w_ih, w_hh, b_ih, b_hh = self._names[layer][direction]
        live = (
            p[w_ih],
            p[w_hh],
            None if b_ih is None else p[b_ih],
            None if b_hh is None else p[b_hh],
            p[self._projection_name(layer, direction)] if self.proj_size else None,
        )
        peepholes = p[self._peephole_name(layer, direction)] if self.peepholes else None
        norms = None
        if self.layer_norm:
            gains = [p[name] for name in self._layer_norm_names(layer, direction)]
            norms = LayerNormParams._make([*gains, self.layer_norm_eps])
        variant = (self.clip, self.input_forget, self.forget_gate, self.activations)
        x = contiguous("x", x, dt, own=False)
        if h0 is not None:
            h0 = contiguous("h0", h0, dt, own=False)
        if c0 is not None:
            c0 = contiguous("c0", c0, dt, own=False)
        key = (layer, direction) if weight_dtype is None else (layer, direction, 16)
        prepared = self._prepared.get(key)
        for attempt in range(2):
            if attempt:
                # Not packed yet, or stale: pack again (proven as for the general call).
                prepared = self._prepared_weights(layer, direction, weight_dtype)
            if isinstance(prepared, _functional.PreparedWeights) and prepared._run_kept(
                x, h0, c0, out, live, peepholes, variant, batch_first=batch_first,
                reverse=reverse, layer_norm=norms,
            ):  # fmt: skip
                return True
        return False

    def _prepared_variant(self, layer: int, direction: int) -> dict[str, Any]:
        """:meth:`_variant` for a call of the prepared weights, which hold ``w_hr``."""
        options = self._variant(layer, direction)
        options.pop("w_hr", None)
        return options

    def _cast(self, name: str, value: Any) -> np.ndarray:
        """``value`` in the layer's dtype; only real numbers (and bools) are accepted."""
        return cast(name, value, self.dtype)

    def _concurrent(self, steps: int, batch: int) -> bool:
        """Whether to run the two directions of each layer at the same time."""
        if not self.bidirectional:
            return False
        if CONCURRENT_DIRECTIONS is not None:
            return CONCURRENT_DIRECTIONS
        threads = _engine_threads()
        busy = -(-batch // _ENGINE_ROWS_PER_TASK)
        if threads < 2 or busy >= threads:
            return False
        step_work = batch * 4 * self.hidden_size * (self.input_size + self.state_size)
        return step_work >= _CONCURRENT_MIN_STEP_WORK and steps * step_work >= _CONCURRENT_MIN_WORK

    def _state(
        self, name: str, value: Any, rows: int, batch: int, unbatched: bool, cell: bool = False
    ) -> np.ndarray | None:
        """Check an initial or final-state argument: (rows, B, W), or (rows, W) unbatched,
        W the width of h (``state_size``: P with a projection) or of c (``cell``: H)."""
        if value is None:
            return None
        array = self._cast(name, value)
        width = self.hidden_size if cell else self.state_size
        want = (rows, width) if unbatched else (rows, batch, width)
        if array.shape != want:  # the message only when it is needed (step is hot)
            size = "hidden_size" if cell or not self.proj_size else "proj_size"
            batch_symbol = "" if unbatched else "batch, "
            symbols = f"(num_layers*num_directions, {batch_symbol}{size})"
            raise shape_error(name, symbols, want, array.shape)
        return array[:, None, :] if unbatched else array

    def _features(
        self, name: str, value: Any, layout: str, unbatched_layout: str, batch_axis: int
    ) -> tuple[np.ndarray, bool]:
        """``value`` cast and checked against ``layout`` (its last dimension
        ``input_size``) or, one dimension fewer, ``unbatched_layout``, a batch of 1 then
        put in at ``batch_axis``; and whether it came unbatched."""
        array = self._cast(name, value)
        given = array.shape
        if array.ndim == layout.count(","):
            # Indexing, not np.expand_dims: step is hot.
            array, unbatched = (array[None] if batch_axis == 0 else array[:, None]), True
        elif array.ndim == layout.count(",") + 1:
            unbatched = False
        else:
            raise ValueError(f"{name} must have shape {layout} or {unbatched_layout}, got {given}")
        if given[-1] != self.input_size:
            raise ValueError(
                f"{name} must have shape {layout} with input_size = {self.input_size}, got {given}"
            )
        return array, unbatched

    def _input(self, x: Any) -> tuple[np.ndarray, bool, bool, int, int]:
        """x as (array in the engine's layout, batch_first, unbatched, steps, batch)."""
        layout = (
            "(batch, seq_len, input_size)" if self.batch_first else "(seq_len, batch, input_size)"
        )
        # Unbatched (T, I), PyTorch's convention: batch_first does not apply.
        array, unbatched = self._features("x", x, layout, "(seq_len, input_size)", 1)
        batch_first = self.batch_first and not unbatched
        steps, batch = (array.shape[1], array.shape[0]) if batch_first else array.shape[:2]
        return array, batch_first, unbatched, steps, batch

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x: Any,
        hx: Any = None,
        *,
        lengths: Any = None,
        need_cache: bool = True,
        seed: Any = None,
        weight_dtype: Any = None,
        checkpoint: Any = None,
        memory_budget: Any = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Run the whole stack over ``x``: ``(y, (h_n, c_n))``.

        ``hx = (h0, c0)``, (L*D, B, P) and (L*D, B, H) (P = ``proj_size``, or H without a
        projection), zeros when missing. ``lengths`` (B,) gives
        each row's valid steps (PackedSequence semantics: padded outputs are 0, ``h_n``
        is the state after the row's last valid step, h0 for length 0).
        ``need_cache=False`` keeps nothing for :meth:`backward` (inference).

        In training mode with a regularisation rate > 0 the pass draws masks from
        ``seed`` (an integer in [0, 2**64)), or, when it is None, from a fresh seed of
        the layer's generator; one seed serves every layer and direction (the masks
        are keyed by the layer's index and the direction). Otherwise ``seed`` is
        checked and unused.

        ``weight_dtype="bfloat16"``: bf16 inference (README, 'bf16 inference'; a
        float32 layer, ``need_cache=False``), from a bfloat16 copy of the weights
        kept while the parameters are unchanged.

        ``checkpoint=k`` keeps each layer's state only every k steps and makes
        :meth:`backward` recompute each segment (bitwise the same gradients,
        ``lstm_fast.functional.forward``); ``memory_budget=bytes`` chooses k instead
        (``lstm_fast.functional.checkpoint_for_budget``: the full cache when it
        fits, else the largest k that fits).
        """
        self._tape = None  # a failed call must not leave an older tape for backward
        bf16 = bfloat16_weights(weight_dtype)
        need_cache = flag("need_cache", need_cache)
        if seed is not None:  # the functional API's rule for a mask seed
            seed = regularisation(seed=seed, training=False)[4]
        if bf16 and need_cache:
            raise ValueError(
                "need_cache=True: weight_dtype='bfloat16' is for inference only (pass "
                "need_cache=False; no backward)"
            )
        array, batch_first, unbatched, steps, batch = self._input(x)
        if checkpoint is not None and memory_budget is not None:
            raise ValueError("checkpoint and memory_budget: give one or neither")
        if checkpoint is not None:
            checkpoint = positive_int("checkpoint", checkpoint)
        if memory_budget is not None:
            checkpoint = _F.checkpoint_for_budget(
                memory_budget, steps=steps, batch=batch, hidden=self.hidden_size,
                proj=self.state_size, itemsize=self.dtype.itemsize,
                caches_pre=_F.caches_pre(self.clip, self.activations),
                passes=self.num_layers * self.num_directions, layer_norm=self.layer_norm,
                zoneout_h=self.training and bool(self._zoneout_rates[0]),
                zoneout_c=self.training and bool(self._zoneout_rates[1]),
            )  # fmt: skip
        rows = self.num_layers * self.num_directions
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx must be a tuple (h0, c0)")
            h0 = self._state("h0", hx[0], rows, batch, unbatched)
            c0 = self._state("c0", hx[1], rows, batch, unbatched, cell=True)
        if lengths is not None:
            if unbatched:
                raise ValueError("lengths needs a batched x (seq_len, batch, input_size)")
            lengths = check_lengths(lengths, batch, steps)
        # Drawn once the arguments are known to be good: a failed call leaves the
        # layer's generator where it was.
        pass_seed = self.mask_seed(seed)

        concurrent = self._concurrent(steps, batch)
        # Inference without lengths: each pass from the kept weights in one engine
        # call (``_kept_pass``; the passes with options below take the general one).
        kept = _F is _functional and not need_cache and lengths is None
        # The kept passes write their final states straight into these (np.stack
        # of the passes' states costs as much as a short call's other work); a
        # pass that takes another path returns its own, and they are stacked.
        h_all: np.ndarray | None = None
        c_all: np.ndarray | None = None
        # The (layer, direction) rows whose kept pass wrote h_all, c_all (appended
        # from the reverse direction's thread too: list.append is atomic).
        written: list[int] = []
        if kept:
            h_all = empty("h_n", (rows, batch, self.state_size), self.dtype)
            c_all = empty("c_n", (rows, batch, self.hidden_size), self.dtype)
        caches: list[list[Any]] = []
        h_n: list[np.ndarray] = []
        c_n: list[np.ndarray] = []
        dropouts: list[tuple[tuple[int, ...], float] | None] = []
        layer_input = array
        for layer in range(self.num_layers):

            def run(direction: int, layer: int = layer, inp: np.ndarray = layer_input) -> Any:
                k = layer * self.num_directions + direction
                h0_k = None if h0 is None else h0[k]
                c0_k = None if c0 is None else c0[k]
                reverse = direction == 1 or self._reverse
                options = self._pass_options(layer, direction, pass_seed, self.training)
                zoneout = self._inference_zoneout(options) if bf16 else None
                if zoneout is not None:
                    # bf16 inference with zoneout: the kept bfloat16 copy, as below.
                    return self._prepared_weights(layer, direction, weight_dtype)._forward(
                        inp,
                        h0_k,
                        c0_k,
                        batch_first=batch_first,
                        lengths=lengths,
                        reverse=reverse,
                        need_cache=need_cache,
                        checkpoint=None,
                        variant=self._prepared_variant(layer, direction),
                        zoneout=zoneout,
                    )
                if not options.keys() <= _LAYER_NORM_OPTIONS:
                    # The functional call (prepared weights do not take the
                    # regularisation; weight drop packs W_hh * M anew each pass
                    # anyway).
                    w = self.weights(layer, direction)
                    return _F.forward(
                        inp,
                        w.w_ih,
                        w.w_hh,
                        w.b_ih,
                        w.b_hh,
                        h0_k,
                        c0_k,
                        batch_first=batch_first,
                        lengths=lengths,
                        reverse=reverse,
                        need_cache=need_cache,
                        weight_dtype=weight_dtype,
                        checkpoint=checkpoint if need_cache else None,
                        **self._variant(layer, direction),
                        **options,
                    )
                if h_all is not None and c_all is not None:
                    dt, state = self.dtype, self.state_size
                    y_shape = (batch, steps, state) if batch_first else (steps, batch, state)
                    out = _Outputs(empty("y", y_shape, dt), h_all[k], c_all[k])
                    if self._kept_pass(
                        layer, direction, weight_dtype, inp, h0_k, c0_k, out,
                        batch_first=batch_first, reverse=reverse,
                    ):  # fmt: skip
                        written.append(k)
                        return _Forward(*out, None)
                return self._prepared_weights(layer, direction, weight_dtype).forward(
                    inp,
                    h0_k,
                    c0_k,
                    batch_first=batch_first,
                    lengths=lengths,
                    reverse=reverse,
                    need_cache=need_cache,
                    checkpoint=checkpoint if need_cache else None,
                    **self._prepared_variant(layer, direction),
                    # The LayerNorm LSTM's gains and biases: per call, with the
                    # kept packing of the weights.
                    **options,
                )

            if self.bidirectional:
                results = _both_directions(run, concurrent)
                layer_input = np.concatenate([r.y for r in results], axis=-1)
            else:
                results = [run(0)]
                layer_input = results[0].y
            caches.append([r.cache for r in results])
            h_n.extend(r.h_n for r in results)
            c_n.extend(r.c_n for r in results)
            dropped = None
            if pass_seed is not None and self.dropout and layer < self.num_layers - 1:
                dropped = (layer_input.shape, self.dropout)
                keep = self._dropout_keep(layer, pass_seed, *dropped, batch_first)
                layer_input = layer_input * keep
            dropouts.append(dropped)

        y = layer_input
        every_pass_kept = len(written) == rows
        h_out = h_all if h_all is not None and every_pass_kept else np.stack(h_n)
        c_out = c_all if c_all is not None and every_pass_kept else np.stack(c_n)
        if unbatched:
            y = y[:, 0, :]
            h_out = h_out[:, 0, :]
            c_out = c_out[:, 0, :]
        self._tape = (
            _Tape(caches, y.shape, batch_first, unbatched, steps, batch, dropouts, pass_seed)
            if need_cache
            else None
        )
        return y, (h_out, c_out)

    __call__ = forward

    # ----------------------------------------------------------------- backward

    def backward(
        self, dy: Any, dh_n: Any = None, dc_n: Any = None, *, flow: bool = False
    ) -> np.ndarray:
        """Backpropagate through the last forward; returns ``dx`` and fills :attr:`grads`.

        ``dy`` has ``y``'s shape, ``dh_n``/``dc_n`` ``h_n``'s; ``None`` means zeros.
        Gradients replace (do not add to) the previous ones; ``hx_grad`` receives
        ``(dh0, dc0)``. May be called more than once after one forward. With
        ``flow=True``, :attr:`flow` gets, per ``(layer, direction)``, the
        ``GradientFlow`` of that direction's backward (docs/variants.md, 'Gradient
        flow'; steps in real time); it changes no gradient.
        """
        flow = flag("flow", flow)
        tape = self._tape
        if tape is None:
            raise RuntimeError(
                "backward() needs a preceding forward() with need_cache=True (a forward "
                "with weight_dtype='bfloat16' is inference only)"
            )
        state = self.state_size
        directions = self.num_directions
        rows = self.num_layers * directions
        if dy is not None:
            dy = self._cast("dy", dy)
            if dy.shape != tape.y_shape:
                raise ValueError(f"dy must have the shape of y = {tape.y_shape}, got {dy.shape}")
            if tape.unbatched:
                dy = dy[:, None, :]
        dh = self._state("dh_n", dh_n, rows, tape.batch, tape.unbatched)
        dc = self._state("dc_n", dc_n, rows, tape.batch, tape.unbatched, cell=True)

        grads: dict[str, np.ndarray] = {}
        flows: dict[tuple[int, int], Any] = {}
        dh0: list[np.ndarray] = [np.empty(0)] * rows
        dc0: list[np.ndarray] = [np.empty(0)] * rows
        d_out = dy
        concurrent = self._concurrent(tape.steps, tape.batch)
        dropouts = tape.dropout or [None] * self.num_layers
        for layer in reversed(range(self.num_layers)):
            dropped = dropouts[layer]
            if dropped is not None and d_out is not None and tape.seed is not None:
                # The dropout on this layer's output is linear: its gradient is the
                # same mask (drawn again from the pass's seed: the forward's bits)
                # applied to the gradient of what it gave the next layer.
                d_out = d_out * self._dropout_keep(layer, tape.seed, *dropped, tape.batch_first)

            def run(direction: int, layer: int = layer, d_out: Any = d_out) -> Any:
                k = layer * directions + direction
                d_y = d_out
                if d_out is not None and directions == 2:
                    d_y = d_out[..., direction * state : (direction + 1) * state]
                return _F.backward(
                    tape.caches[layer][direction],
                    d_y,
                    None if dh is None else dh[k],
                    None if dc is None else dc[k],
                    **({"flow": True} if flow else {}),
                )

            if directions == 2:
                results = _both_directions(run, concurrent)
            else:
                results = [run(0)]
            for direction, g in enumerate(results):
                k = layer * directions + direction
                names = self._names[layer][direction]
                grads[names[0]] = g.dw_ih
                grads[names[1]] = g.dw_hh
                if names[2] is not None:
                    grads[names[2]] = g.db_ih
                    grads[names[3]] = g.db_hh  # type: ignore[index]
                if self.proj_size:
                    grads[self._projection_name(layer, direction)] = g.dw_hr
                if self.peepholes:
                    grads[self._peephole_name(layer, direction)] = g.dpeepholes
                if self.layer_norm:
                    fields = ("dw_ln_ih", "db_ln_ih", "dw_ln_hh", "db_ln_hh", "dw_ln_c", "db_ln_c")
                    for field, name in zip(fields, self._layer_norm_names(layer, direction)):
                        grads[name] = getattr(g, field)
                if flow:
                    flows[(layer, direction)] = g.flow
                dh0[k], dc0[k] = g.dh0, g.dc0
            d_out = results[0].dx
            if directions == 2:
                if d_out.flags.writeable:
                    d_out += results[1].dx
                else:
                    d_out = d_out + results[1].dx

        dh0_all = np.stack(dh0)
        dc0_all = np.stack(dc0)
        dx = d_out
        if tape.unbatched:
            dx = dx[:, 0, :]
            dh0_all = dh0_all[:, 0, :]
            dc0_all = dc0_all[:, 0, :]
        # Last, together: a call that fails or is interrupted before here leaves the
        # previous gradients whole.
        self.grads.update(grads)
        self.hx_grad = (dh0_all, dc0_all)
        if flow:
            self.flow = flows
        return dx

    # ---------------------------------------------------------------- streaming

    def step(
        self, x_t: Any, state: tuple[Any, Any] | None = None, *, weight_dtype: Any = None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """One time step of a unidirectional stack: ``(y_t, (h, c))``.

        ``x_t`` (B, I) or (I,); ``state`` is ``(h, c)``, (L, B, P) and (L, B, H) (or
        (L, P) and (L, H); P = H without a projection), zeros when ``None`` - e.g. the
        ``(h_n, c_n)`` of a forward over a prefix. Feeding a sequence step by step gives
        the same ``y`` as one forward over it. ``weight_dtype="bfloat16"``: as in
        :meth:`forward`.

        Streaming is inference: ``step`` computes as in eval mode whatever
        :attr:`training` says (no masks; the dropouts' expectation is the plain cell,
        zoneout's the mix of each state with the previous one), so it matches an
        eval-mode forward.
        """
        bf16 = bfloat16_weights(weight_dtype)  # checked before any work
        if self.bidirectional or self._reverse:
            raise ValueError(
                "step() needs a unidirectional LSTM (the reverse direction would need the future)"
            )
        array, unbatched = self._features("x_t", x_t, "(batch, input_size)", "(input_size,)", 0)
        batch = array.shape[0]
        h = c = None
        if state is not None:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError("state must be a tuple (h, c)")
            h = self._state("state[0]", state[0], self.num_layers, batch, unbatched)
            c = self._state("state[1]", state[1], self.num_layers, batch, unbatched, cell=True)
        layer_input = array[None]
        # Filled layer by layer (np.stack costs more than a small step itself).
        h_new = np.empty((self.num_layers, batch, self.state_size), self.dtype)
        c_new = np.empty((self.num_layers, batch, self.hidden_size), self.dtype)
        # The cell's inference (zoneout's is another pass): each layer's kept
        # weights, proven current and run in one engine call.
        kept = _F is _functional and not any(self._zoneout_rates)
        for layer in range(self.num_layers):
            h_l = None if h is None else h[layer]
            c_l = None if c is None else c[layer]
            if kept:
                y = np.empty((1, batch, self.state_size), self.dtype)
                written = _Outputs(y, h_new[layer], c_new[layer])
                if self._kept_pass(layer, 0, weight_dtype, layer_input, h_l, c_l, written):
                    layer_input = y
                    continue
            options = self._pass_options(layer, 0, None, training=False)
            zoneout = self._inference_zoneout(options) if bf16 else None
            if zoneout:
                # bf16 inference with zoneout: the kept bfloat16 copy, as below.
                out = self._prepared_weights(layer, 0, weight_dtype)._forward(
                    layer_input, h_l, c_l, batch_first=False, lengths=None, reverse=False,
                    need_cache=False, checkpoint=None, variant=self._prepared_variant(layer, 0),
                    zoneout=zoneout,
                )  # fmt: skip
            elif not options.keys() <= _LAYER_NORM_OPTIONS:
                w = self.weights(layer, 0)
                out = _F.forward(
                    layer_input, w.w_ih, w.w_hh, w.b_ih, w.b_hh, h_l, c_l,
                    need_cache=False, weight_dtype=weight_dtype, **self._variant(layer, 0),
                    **options,
                )  # fmt: skip
            else:
                # The kept packing, with layer norm's gains and biases if any.
                out = self._prepared_weights(layer, 0, weight_dtype).forward(
                    layer_input, h_l, c_l, need_cache=False,
                    **self._prepared_variant(layer, 0), **options,
                )  # fmt: skip
            layer_input = out.y
            h_new[layer] = out.h_n
            c_new[layer] = out.c_n
        y_t = layer_input[0]
        if unbatched:
            return y_t[0], (h_new[:, 0, :], c_new[:, 0, :])
        return y_t, (h_new, c_new)

    # --------------------------------------------------------------- state dict

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter under PyTorch's names (safe to keep as a checkpoint)."""
        return {name: p.copy() for name, p in self.parameters.items()}

    def load_state_dict(self, state: Any, strict: bool = True) -> None:
        """Copy parameters into the live arrays; values may be NumPy arrays or torch tensors.

        ``torch.nn.LSTM(...).state_dict()`` loads as is. With ``strict`` every key must
        match; otherwise missing keys are left alone and unknown keys are ignored.
        Nothing changes unless the whole dict is valid.
        """
        mapping("state", state, "arrays")
        strict = flag("strict", strict)
        expected = set(self.parameters)
        given = set(state.keys())
        if strict and given != expected:
            missing = sorted(expected - given)
            unexpected = sorted(given - expected)
            raise ValueError(
                f"state dict does not match the layer: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        staged = {}
        for name in sorted(expected & given):
            value = self._cast(name, state[name])
            if value.shape != self.parameters[name].shape:
                raise ValueError(
                    f"{name} must have shape {self.parameters[name].shape}, got {value.shape}"
                )
            staged[name] = value
        for name, value in staged.items():
            self.parameters[name][...] = value

    # ------------------------------------------------------------------ export

    def export_onnx(self, path: Any, opset: int = 14, *, lstm_dtype: Any = np.float32) -> Any:
        """Write this layer as an ONNX model (needs ``onnx``); returns the ModelProto.

        The only input is ``x`` in the layer's layout; the outputs ``y``, ``h_n``,
        ``c_n`` equal :meth:`forward`'s. Peepholes, ``clip``, ``input_forget`` and the
        activations become the LSTM nodes' ``P`` and attributes; ``forget_gate=False``
        has no ONNX form (``NotImplementedError``). A layer with a projection
        (``proj_size``) becomes a ``Scan`` over time per layer and direction whose body
        is one step of the cell, with every option (opset >= 9). See
        :func:`lstm_fast.export.export_onnx`. The model is the layer at inference:
        ``dropout``, ``recurrent_dropout`` and ``weight_drop`` are the identity there
        and leave no trace in it. ``layer_norm=True`` and zoneout (whose expectation
        is not the identity) have no form in the export yet: ``NotImplementedError``.
        """
        from .export import export_onnx

        return export_onnx(self, path, opset=opset, lstm_dtype=lstm_dtype)

    # ------------------------------------------------------------------ import

    @classmethod
    def from_onnx(cls, model_or_path: Any) -> LSTM:
        """The layer of an ONNX model made of ``LSTM`` nodes (needs ``onnx``).

        ``model_or_path``: an ``onnx.ModelProto``, a path or the model's bytes. The
        graph must be a chain of ONNX ``LSTM`` nodes with only reshaping glue around
        them (as PyTorch's and tf2onnx's exporters write); its options (directions,
        layout, peepholes, clip, input_forget, activations) become the layer's. The
        layer's ``forward(x, (h0, c0), lengths=...)`` equals the model's last node's
        ``Y`` (directions merged into the features) and the stacked ``Y_h``, ``Y_c``.
        Anything else in the graph is a ``ValueError`` naming the node.
        """
        from .onnx_import import read_onnx

        spec = read_onnx(model_or_path)
        layer = cls(
            spec.input_size,
            spec.hidden_size,
            spec.num_layers,
            bias=spec.bias,
            batch_first=spec.batch_first,
            bidirectional=spec.direction == "bidirectional",
            dtype=spec.dtype,
            peepholes=spec.peepholes,
            clip=spec.clip,
            input_forget=spec.input_forget,
            activations=spec.activations,
            seed=0,
        )
        layer._reverse = spec.direction == "reverse"
        for k, row in enumerate(spec.weights):
            for d, (w_ih, w_hh, b_ih, b_hh, peep) in enumerate(row):
                layer._load_direction(k, d, w_ih, w_hh, b_ih, b_hh, peep)
        return layer

    @classmethod
    def from_keras(cls, layer_or_config: Any) -> LSTM:
        """The layer of a Keras 3 ``LSTM`` or ``Bidirectional(LSTM)``.

        ``layer_or_config``: the Keras layer object, or ``(config, weights)`` with its
        ``get_config()`` and ``get_weights()``. The result is ``batch_first=True``
        (Keras's layout) and its ``forward`` returns every step (Keras's
        ``return_sequences=True``), in real time order; with ``go_backwards`` Keras
        returns them reversed. ``activation`` is σ_g and σ_h, ``recurrent_activation``
        σ_f; one that ONNX cannot name either is a ``ValueError``.

        Keras's ``recurrent_dropout`` is the layer's (the same variational dropout of
        h_{t-1}, docs/variants.md). Keras's ``dropout``, on the inputs x_t, has no
        counterpart here: the layer is made without it, with a ``UserWarning`` when it
        is not 0 (inference is the same either way; training drops no input).
        """
        from .convert import _keras_parts, keras_lstm

        spec = keras_lstm(layer_or_config)
        config = _keras_parts(layer_or_config)[0]  # a Bidirectional's: the wrapped LSTM's
        input_dropout = probability("dropout", config.get("dropout", 0.0))
        if input_dropout:
            warnings.warn(
                f"from_keras: Keras's dropout={input_dropout} (on the inputs x_t) has no "
                f"lstm_fast equivalent and is left out; recurrent_dropout is kept",
                UserWarning,
                stacklevel=2,
            )
        layer = cls(
            spec["input_size"],
            spec["hidden_size"],
            bias=spec["bias"],
            batch_first=True,
            bidirectional=len(spec["weights"]) == 2,
            dtype=spec["dtype"],
            activations=spec["activations"],
            recurrent_dropout=probability(
                "recurrent_dropout", config.get("recurrent_dropout", 0.0)
            ),
            seed=0,
        )
        layer._reverse = spec["go_backwards"]
        for d, (w_ih, w_hh, b_ih, b_hh) in enumerate(spec["weights"]):
            layer._load_direction(0, d, w_ih, w_hh, b_ih, b_hh, None)
        return layer

    def _load_direction(
        self, layer: int, direction: int, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any, peep: Any
    ) -> None:
        """Copy one direction's weights in (a missing bias or peephole vector: zeros)."""
        names = [*self._names[layer][direction], None]
        if self.peepholes:
            names[4] = self._peephole_name(layer, direction)
        for name, value in zip(names, (w_ih, w_hh, b_ih, b_hh, peep)):
            if name is None:
                continue
            target = self.parameters[name]
            array = np.zeros_like(target) if value is None else self._cast(name, value)
            check_shape(name, array, str(target.shape), target.shape)
            target[...] = array

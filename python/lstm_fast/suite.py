"""The real-world suite of ``python -m lstm_fast suite``: the shapes users report.

The standard shapes of :mod:`lstm_fast.benchmark` (one layer, I = H, T = 100) are
a floor. Users of PyTorch and Keras report other shapes in those projects' issue
trackers, and this suite times lstm_fast against PyTorch and ONNX Runtime on them,
each case as reported (the source is named in the table; float32, time-major):

* ``wide_in``, keras-team/keras#5030: B=256 T=20 I=512 H=128, 512-d CNN features
  of 20 video frames into a small LSTM (wide input, small hidden, big batch, few
  steps);
* ``stacked``, pytorch/pytorch#81634: B=8 T=2000 I=H=256, two layers (long
  sequences through a stack);
* ``ragged``, pytorch/pytorch#149194 and #1788: B=32 T=100 I=123 H=320, lengths
  1..T; ours with ``lengths``, PyTorch with ``PackedSequence`` (which #149194
  measures at 5 to 110 times the padded time) and padded, for comparison;
* ``ts_b1``, keras-team/keras#5242 and pytorch/pytorch#65597: B=1 T=50000 I=3
  H=64, one long time series with tiny sizes;
* ``bidir``, keras-team/keras#18854: B=8 T=778 I=320, then bidirectional layers
  of 192, 384 and 160 units (Conv1D features into three ``Bidirectional(LSTM)``);
* ``one_step``, keras-team/keras#11006: B=1 I=1 H=10, one step per call with the
  state passed along (a forecast made point by point).

Where a report leaves a size open, the docstring of :data:`CASES` says what was
chosen. Each case is timed for inference (``fwd``: ours ``need_cache=False``,
PyTorch under ``inference_mode``, ONNX Runtime) and training (``fwd+bwd``: the
forward and the backward to the input and every weight; PyTorch through autograd).
ONNX Runtime runs our :func:`lstm_fast.export.to_onnx_model` graph of the case's
layers, with the ``sequence_lens`` input of ONNX's LSTM for ragged batches.

Next to the cases the suite measures:

* per-call cost at B=1, I=H=256: a one-step forward against the marginal cost of
  one step inside a long sequence, ``(T=201 - T=101) / 100``; ``LSTM.step`` against
  ``torch.nn.LSTM`` called one step at a time; ``cell_forward`` against
  ``torch.nn.LSTMCell``; and ``prepare_weights(...).forward`` where it exists;
* latency at S (B=1 T=100 I=H=128): min / median / p90 / p99 of 1,000 calls made
  back to back, and min / median of calls made after 0.25 s idle;
* steadiness: min and median at M and L, every implementation in the same run.

Everything runs in one process with the same thread count for every
implementation (``torch.set_num_threads``, ONNX Runtime's ``intra_op_num_threads``),
all cores unless ``--threads`` says otherwise. A peer that cannot be imported is
skipped and the output says so. Like :mod:`lstm_fast.benchmark`, this is a tool
for measuring lstm_fast, not part of its API. The output is Markdown.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple

import numpy as np

import lstm_fast

from . import benchmark
from .benchmark import PeerUnavailable, Shape, Timing

__all__ = [
    "CASES",
    "FULL",
    "QUICK",
    "Block",
    "Case",
    "Settings",
    "add_arguments",
    "run",
    "run_suite",
]

# ---------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------


class Block(NamedTuple):
    """One ``LSTM`` layer stack of a case: its hidden size, layers and directions
    (its input size is the case's, or the previous block's output)."""

    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False


@dataclass(frozen=True)
class Case:
    """One reported use: sizes, the stacks it runs through, where it was reported.

    ``ragged`` draws each row's length uniformly from 1..steps (one row has all
    the steps). ``one_step`` times one step per call with the state passed along
    (``steps`` is then ignored), calls back to back for the budget. ``quick``
    holds the smaller sizes of ``--quick``.
    """

    name: str
    source: str
    what: str
    batch: int
    steps: int
    input_size: int
    blocks: tuple[Block, ...]
    ragged: bool = False
    one_step: bool = False
    quick: dict[str, int] | None = None

    def shrunk(self) -> Case:
        quick = self.quick or {}
        return replace(
            self,
            batch=quick.get("batch", self.batch),
            steps=quick.get("steps", self.steps),
            quick=None,
        )

    def describe(self) -> str:
        parts = [f"B={self.batch}"]
        if not self.one_step:
            parts.append(f"T={self.steps}")
        parts.append(f"I={self.input_size}")
        for b in self.blocks:
            layers = f"x{b.num_layers}" if b.num_layers > 1 else ""
            parts.append(f"{'bi' if b.bidirectional else ''}H={b.hidden_size}{layers}")
        if self.ragged:
            parts.append("lengths 1..T")
        return " ".join(parts)


#: The cases, each as its source reports it. Sizes a report leaves open:
#: wide_in's batch (the report passes a variable; 256 makes it the big-batch case),
#: ragged's batch and lengths (the speech features and layer width of #1788,
#: L=100 from the table of #149194, 32 rows of uniform lengths), ts_b1's hidden
#: size (#5242 gives the data, (1, 50000, 3); #65597 the width, 64, of a
#: time-series LSTM) and bidir's batch (8: Keras's default of 32 would make this one
#: case take minutes on 2 cores).
CASES: tuple[Case, ...] = (
    Case(
        "wide_in",
        "keras-team/keras#5030",
        "20 video frames of 512-d CNN features into LSTM(128)",
        batch=256,
        steps=20,
        input_size=512,
        blocks=(Block(128),),
        quick={"batch": 64},
    ),
    Case(
        "stacked",
        "pytorch/pytorch#81634",
        "nn.LSTM(256, 256, num_layers=2) over (8, 2000, 256)",
        batch=8,
        steps=2000,
        input_size=256,
        blocks=(Block(256, 2),),
        quick={"steps": 200},
    ),
    Case(
        "ragged",
        "pytorch/pytorch#149194, #1788",
        "variable-length batch: ours with lengths, PyTorch PackedSequence",
        batch=32,
        steps=100,
        input_size=123,
        blocks=(Block(320),),
        ragged=True,
        quick={"batch": 8, "steps": 50},
    ),
    Case(
        "ts_b1",
        "keras-team/keras#5242, pytorch/pytorch#65597",
        "one series of 50,000 steps, 3 features, 64 units",
        batch=1,
        steps=50_000,
        input_size=3,
        blocks=(Block(64),),
        quick={"steps": 5_000},
    ),
    Case(
        "bidir",
        "keras-team/keras#18854",
        "Conv1D(320) features into Bidirectional(LSTM) 192, 384, 160",
        batch=8,
        steps=778,
        input_size=320,
        blocks=(Block(192, 1, True), Block(384, 1, True), Block(160, 1, True)),
        quick={"batch": 8, "steps": 100},
    ),
    Case(
        "one_step",
        "keras-team/keras#11006",
        "LSTM(10) on one feature, predicted point by point",
        batch=1,
        steps=1,
        input_size=1,
        blocks=(Block(10),),
        one_step=True,
    ),
)

# The columns of the case table: benchmark's, and PyTorch on the padded batch
# (ragged cases only), which users compare PackedSequence with.
IMPLS = ("lstm_fast", "torch", "torch_padded", "onnxruntime")
LABELS = {**benchmark.IMPL_LABELS, "torch_padded": "PyTorch padded"}


@dataclass(frozen=True)
class Settings:
    """How long to time each part (``FULL``, ``QUICK``, or tiny ones in the tests)."""

    repeats: int  # at most this many timed calls per cell (cases, steadiness)
    budget_s: float  # and at most about this many seconds of them
    rounds: int  # blocks per implementation, taken in turn (time_interleaved)
    per_call_size: int  # I = H of the per-call section (B = 1)
    per_call_budget_s: float
    latency_shape: Shape
    latency_calls: int  # back-to-back calls per implementation and pass
    idle_calls: int  # calls after a pause, per implementation
    idle_s: float  # the pause
    steady_shapes: tuple[Shape, ...]
    settle_s: float = 0.25  # quiet before each timed block (time_interleaved)


FULL = Settings(
    repeats=10,
    budget_s=2.0,
    rounds=2,
    per_call_size=256,
    per_call_budget_s=0.4,
    latency_shape=benchmark.SHAPES["S"],
    latency_calls=1000,
    idle_calls=20,
    idle_s=0.25,
    steady_shapes=(benchmark.SHAPES["M"], benchmark.SHAPES["L"]),
)
QUICK = Settings(
    repeats=3,
    budget_s=0.3,
    rounds=1,
    per_call_size=256,
    per_call_budget_s=0.1,
    latency_shape=benchmark.SHAPES["S"],
    latency_calls=200,
    idle_calls=5,
    idle_s=0.25,
    steady_shapes=(benchmark.SHAPES["M"],),
)

SECTIONS = ("cases", "per-call", "latency", "steadiness")


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def _say(text: str = "") -> None:
    print(text, flush=True)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(cells: Sequence[str]) -> None:
    _say(_row(cells))
    _say(_row(["---"] * len(cells)))


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1e3
    return f"{ms:.4g}" if ms < 1000 else f"{ms:.0f}"


def _us(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e6:.1f}"


def _ratio(peer: float | None, ours: float | None) -> str:
    if peer is None or ours is None or ours <= 0:
        return "—"
    return f"{peer / ours:.2f}×"


def _max_rel_diff(a: Any, b: Any) -> float:
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    if a64.size == b64.size:  # ONNX's Y has a directions axis, PyTorch's step a time axis
        a64 = a64.reshape(b64.shape)
    if a64.shape != b64.shape:
        return float("inf")
    return float(np.max(np.abs(a64 - b64) / (1.0 + np.abs(b64)))) if a64.size else 0.0


# ---------------------------------------------------------------------------
# Implementations of a case
# ---------------------------------------------------------------------------


@dataclass
class _Model:
    """One case's layers and data, shared by every implementation."""

    case: Case
    layers: list[lstm_fast.LSTM]
    x: np.ndarray  # (T, B, I)
    dy: np.ndarray  # (T, B, D*H of the last block)
    lengths: np.ndarray | None  # (B,) int64


def _build_model(case: Case, seed: int = 0) -> _Model:
    rng = np.random.default_rng(seed)
    layers = []
    width = case.input_size
    for k, block in enumerate(case.blocks):
        layer = lstm_fast.LSTM(
            width,
            block.hidden_size,
            block.num_layers,
            bidirectional=block.bidirectional,
            seed=seed + k,
        )
        layers.append(layer)
        width = block.hidden_size * (2 if block.bidirectional else 1)
    T, B = case.steps, case.batch
    lengths = None
    if case.ragged:
        lengths = rng.integers(1, T + 1, size=B, dtype=np.int64)
        lengths[0] = T  # the padded length is the longest row's
    return _Model(
        case,
        layers,
        rng.standard_normal((T, B, case.input_size), dtype=np.float32),
        rng.standard_normal((T, B, width), dtype=np.float32),
        lengths,
    )


class _Fns(NamedTuple):
    forward: Callable[[], Any]  # returns y (T, B, D*H) as NumPy
    forward_backward: Callable[[], Any] | None


def _ours(m: _Model) -> _Fns:
    def forward() -> np.ndarray:
        y = m.x
        for layer in m.layers:
            y, _ = layer.forward(y, lengths=m.lengths, need_cache=False)
        return y

    def forward_backward() -> Any:
        y = m.x
        for layer in m.layers:
            y, _ = layer.forward(y, lengths=m.lengths)
        d = m.dy
        for layer in reversed(m.layers):
            d = layer.backward(d)
        return d

    return _Fns(forward, forward_backward)


def _torch_layers(m: _Model, threads: int) -> tuple[Any, list[Any]]:
    torch = benchmark._import_peer("torch")
    torch.set_num_threads(threads)
    mods = []
    for layer, block in zip(m.layers, m.case.blocks):
        mod = torch.nn.LSTM(
            layer.input_size,
            block.hidden_size,
            block.num_layers,
            bidirectional=block.bidirectional,
        )
        # The same weights as ours (PyTorch's names are ours).
        mod.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
        mods.append(mod)
    return torch, mods


def _torch(m: _Model, threads: int, packed: bool) -> _Fns:
    torch, mods = _torch_layers(m, threads)
    rnn = torch.nn.utils.rnn
    x = torch.from_numpy(m.x)
    x_grad = x.clone().requires_grad_(True)
    dy = torch.from_numpy(m.dy)
    params = [p for mod in mods for p in mod.parameters()]
    lengths = None if m.lengths is None else torch.from_numpy(m.lengths)
    T = m.case.steps

    def run(inp: Any) -> Any:
        if packed and lengths is not None:
            # What users of variable lengths write: pack (unsorted rows), run, unpack.
            seq = rnn.pack_padded_sequence(inp, lengths, enforce_sorted=False)
            for mod in mods:
                seq, _ = mod(seq)
            return rnn.pad_packed_sequence(seq, total_length=T)[0]
        y = inp
        for mod in mods:
            y, _ = mod(y)
        return y

    def forward() -> np.ndarray:
        with torch.inference_mode():
            return run(x).numpy()

    def forward_backward() -> Any:
        # Gradients of x and every parameter, not accumulated into .grad.
        return torch.autograd.grad(run(x_grad), [x_grad, *params], dy)

    return _Fns(forward, forward_backward)


def _with_sequence_lens(model: Any) -> Any:
    """Give every LSTM node of ``model`` a ``seq_lens`` graph input (ONNX's
    ``sequence_lens``: rows stop at their length, outputs past it are zero)."""
    from onnx import TensorProto, checker, helper

    model.graph.input.append(
        helper.make_tensor_value_info("seq_lens", TensorProto.INT32, ["batch"])
    )
    for node in model.graph.node:
        if node.op_type == "LSTM":
            while len(node.input) < 5:
                node.input.append("")
            node.input[4] = "seq_lens"
    checker.check_model(model)
    return model


def _onnxruntime(m: _Model, threads: int) -> _Fns:
    benchmark._import_peer("onnx")
    from .export import to_onnx_model

    sessions = []
    for layer in m.layers:
        model = to_onnx_model(layer)
        if m.lengths is not None:
            model = _with_sequence_lens(model)
        sessions.append(benchmark.ort_session(model, threads))
    seq_lens = None if m.lengths is None else m.lengths.astype(np.int32)

    def forward() -> np.ndarray:
        y = m.x
        for session in sessions:
            feeds = {"x": y}
            if seq_lens is not None:
                feeds["seq_lens"] = seq_lens
            y = session.run(["y"], feeds)[0]
        return y

    return _Fns(forward, None)


def _case_fns(m: _Model, threads: int) -> tuple[dict[str, _Fns], dict[str, str]]:
    """The implementations of a (sequence) case, and why any peer is missing."""
    lstm_fast.set_num_threads(threads)
    fns: dict[str, _Fns] = {"lstm_fast": _ours(m)}
    skipped: dict[str, str] = {}
    makers: dict[str, Callable[[], _Fns]] = {
        "torch": lambda: _torch(m, threads, packed=True),
        "onnxruntime": lambda: _onnxruntime(m, threads),
    }
    if m.lengths is not None:
        makers["torch_padded"] = lambda: _torch(m, threads, packed=False)
    for impl, make in makers.items():
        try:
            fns[impl] = make()
        except PeerUnavailable as exc:
            skipped[impl] = str(exc)
    return {impl: fns[impl] for impl in IMPLS if impl in fns}, skipped


# ---------------------------------------------------------------------------
# One step per call
# ---------------------------------------------------------------------------


def _step_fns(
    batch: int, input_size: int, hidden: int, threads: int, seed: int = 0
) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """One step per call with the state carried from call to call: ours
    ``LSTM.step``, PyTorch's ``nn.LSTM`` on one step with ``hx`` passed along
    (``inference_mode``), ONNX Runtime's LSTM with ``initial_h``/``initial_c``."""
    lstm_fast.set_num_threads(threads)
    layer = lstm_fast.LSTM(input_size, hidden, seed=seed)
    rng = np.random.default_rng(seed)
    x_t = rng.standard_normal((batch, input_size), dtype=np.float32)
    zeros = np.zeros((1, batch, hidden), dtype=np.float32)
    fns: dict[str, Callable[[], Any]] = {}
    skipped: dict[str, str] = {}

    state_ours: list[Any] = [None]

    def ours() -> Any:
        y, state_ours[0] = layer.step(x_t, state_ours[0])
        return y

    fns["lstm_fast"] = ours

    try:
        torch = benchmark._import_peer("torch")
        torch.set_num_threads(threads)
        mod = torch.nn.LSTM(input_size, hidden)
        mod.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
        x_torch = torch.from_numpy(x_t[None])
        state_torch: list[Any] = [(torch.from_numpy(zeros), torch.from_numpy(zeros))]

        def pytorch() -> Any:
            with torch.inference_mode():
                y, state_torch[0] = mod(x_torch, state_torch[0])
            return y

        fns["torch"] = pytorch
    except PeerUnavailable as exc:
        skipped["torch"] = str(exc)

    try:
        session = benchmark.ort_session(
            _onnx_step_model(*layer.weights(0), batch, input_size, hidden), threads
        )
        x_ort = x_t[None]
        state_ort: list[np.ndarray] = [zeros, zeros]

        def onnx_runtime() -> Any:
            y, state_ort[0], state_ort[1] = session.run(
                None, {"X": x_ort, "H0": state_ort[0], "C0": state_ort[1]}
            )
            return y

        fns["onnxruntime"] = onnx_runtime
    except PeerUnavailable as exc:
        skipped["onnxruntime"] = str(exc)
    return fns, skipped


def _onnx_step_model(
    w_ih: np.ndarray,
    w_hh: np.ndarray,
    b_ih: np.ndarray | None,
    b_hh: np.ndarray | None,
    batch: int,
    input_size: int,
    hidden: int,
) -> Any:
    """An ONNX LSTM over one step whose state is an input and an output (our
    exported graph starts from zeros, so it cannot carry a state across calls)."""
    onnx = benchmark._import_peer("onnx")
    from onnx import TensorProto, helper, numpy_helper

    assert b_ih is not None and b_hh is not None
    gates = benchmark._to_onnx_gates
    bias = np.concatenate([gates(b_ih, hidden), gates(b_hh, hidden)])[None]
    node = helper.make_node(
        "LSTM",
        ["X", "W", "R", "B", "", "H0", "C0"],
        ["Y", "Y_h", "Y_c"],
        hidden_size=hidden,
    )
    state = [1, batch, hidden]
    graph = helper.make_graph(
        [node],
        "lstm_step",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, batch, input_size]),
            helper.make_tensor_value_info("H0", TensorProto.FLOAT, state),
            helper.make_tensor_value_info("C0", TensorProto.FLOAT, state),
        ],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1, batch, hidden]),
            helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, state),
            helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, state),
        ],
        initializer=[
            numpy_helper.from_array(gates(w_ih, hidden)[None], "W"),
            numpy_helper.from_array(gates(w_hh, hidden)[None], "R"),
            numpy_helper.from_array(bias, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # as benchmark's ONNX Runtime runner: LSTM-14, any recent runtime
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def _interleaved(
    fns: dict[str, Callable[[], Any]], settings: Settings, first: dict[str, Any] | None = None
) -> dict[str, Timing]:
    return benchmark.time_interleaved(
        fns,
        repeats=settings.repeats,
        budget_s=settings.budget_s,
        rounds=settings.rounds,
        first_results=first,
        settle_s=settings.settle_s,
    )


def _cold_blocks(
    fns: dict[str, Callable[[], Any]], settings: Settings, first: dict[str, Any]
) -> dict[str, Timing]:
    """One block per implementation, no warm-up call: for calls of seconds.
    Stores each implementation's first result in ``first``."""
    timings = {}
    for name, fn in fns.items():
        time.sleep(settings.settle_s)  # the previous library's threads go quiet
        results: list[Any] = []

        def call(fn: Callable[[], Any] = fn, results: list[Any] = results) -> None:
            out = fn()
            if not results:
                results.append(out)

        timings[name] = benchmark.time_calls(
            call, repeats=settings.repeats, budget_s=settings.budget_s, warmup=0
        )
        first[name] = results[0]
    return timings


def _skip_note(skipped: dict[str, str], seen: set[str]) -> None:
    for impl, why in skipped.items():
        if impl not in seen:
            seen.add(impl)
            _say(f"({LABELS[impl]} skipped: {why})")


def run_cases(cases: Sequence[Case], threads: int, settings: Settings) -> list[str]:
    """The table of the reported cases; returns the cases where lstm_fast's median
    is not below every peer's (printed again at the end)."""
    _say("## Reported cases")
    _say()
    _say(
        "ms per call, min / median of the timed calls; speed-up = the peer's median over "
        "lstm_fast's (above 1×: lstm_fast is faster). `agree` is the largest "
        "|a-b|/(1+|b|) of each peer's forward output against lstm_fast's."
    )
    _say()
    _header(
        [
            "case",
            "source",
            "shape",
            "pass",
            "lstm_fast",
            "PyTorch",
            "PyTorch padded",
            "ONNX RT",
            "vs PyTorch",
            "vs ONNX RT",
            "agree",
        ]
    )
    slower: list[str] = []
    seen: set[str] = set()
    notes: dict[str, str] = {}
    for case in cases:
        if case.one_step:
            fns, skipped = _step_fns(
                case.batch, case.input_size, case.blocks[0].hidden_size, threads
            )
            passes: dict[str, dict[str, Callable[[], Any]]] = {"step": fns}
        else:
            model = _build_model(case)
            impl_fns, skipped = _case_fns(model, threads)
            passes = {"fwd": {k: f.forward for k, f in impl_fns.items()}}
            passes["fwd+bwd"] = {
                k: f.forward_backward for k, f in impl_fns.items() if f.forward_backward is not None
            }
        notes.update(skipped)
        # A case whose calls take a large part of a second (the long sequences:
        # PyTorch's training call there takes tens of seconds on 2 cores) is timed
        # without warm-up calls and rounds, which would add minutes for little:
        # the one-off costs of a first call are small next to such a call.
        # (Not one_step: a call there moves the state, and the peers' first outputs
        # are compared with ours from the same, zero, state.)
        t0 = time.perf_counter()
        if not case.one_step:
            passes["fwd"]["lstm_fast"]()
        heavy = time.perf_counter() - t0 > settings.budget_s / 20
        agree = ""
        # One step per call is a stream: its calls are timed back to back for
        # the case's budget, as the per-call section times its calls; a few
        # calls after each block's quiet would time waking up, not streaming.
        case_settings = replace(settings, repeats=100_000) if case.one_step else settings
        for pass_, fns_ in passes.items():
            first: dict[str, Any] = {}
            timed = _cold_blocks if heavy else _interleaved
            timings = timed(fns_, case_settings, first)
            if pass_ != "fwd+bwd":  # each implementation's first call from the same state
                ref = first["lstm_fast"]
                agree = ", ".join(
                    f"{LABELS[k]} {_max_rel_diff(v, ref):.0e}"
                    for k, v in first.items()
                    if k not in ("lstm_fast", "torch_padded")
                )
            cells = [case.name, case.source, case.describe(), pass_]
            for impl in IMPLS:
                t = timings.get(impl)
                cells.append("—" if t is None else f"{_ms(t.best)} / {_ms(t.median)}")
            ours = timings["lstm_fast"].median
            peer = {k: t.median for k, t in timings.items()}
            cells.append(_ratio(peer.get("torch"), ours))
            cells.append(_ratio(peer.get("onnxruntime"), ours))
            cells.append(agree if pass_ != "fwd+bwd" else "")
            _say(_row(cells))
            rivals = [k for k in ("torch", "onnxruntime") if k in peer]
            if any(peer[k] <= ours for k in rivals):
                slower.append(f"{case.name} {pass_}")
    _say()
    _skip_note(notes, seen)
    _say(
        "fwd: inference; fwd+bwd: training forward + backward to x and all weights; step: one "
        "step per call, the state passed along (ours LSTM.step, PyTorch nn.LSTM on one step "
        "with hx, ONNX RT an LSTM node with initial_h/initial_c). PyTorch on ragged rows runs "
        "pack_padded_sequence(enforce_sorted=False) -> LSTM -> pad_packed_sequence; `PyTorch "
        "padded` runs the padded batch as is (less code, wrong states for short rows), for "
        "comparison. ONNX RT runs the export of our layers (sequence_lens for ragged rows)."
    )
    _say()
    return slower


def run_per_call(threads: int, settings: Settings) -> None:
    """What one call costs beyond its arithmetic, at B=1 and I=H=per_call_size."""
    n = settings.per_call_size
    _say(f"## Per-call cost (B=1, I=H={n})")
    _say()
    _say("µs per call, min / median.")
    _say()
    lstm_fast.set_num_threads(threads)
    per_step: dict[str, dict[int, Callable[[], Any]]] = {}
    skipped: dict[str, str] = {}
    for steps in (1, 101, 201):
        problem = benchmark.make_problem(Shape(f"T{steps}", 1, steps, n, n))
        runners, failed = benchmark.make_runners(
            problem, ("lstm_fast", "torch", "onnxruntime"), threads
        )
        skipped.update(failed)
        for impl, runner in runners.items():
            per_step.setdefault(impl, {})[steps] = runner.forward
    timings: dict[str, dict[int, Timing]] = {}
    quick = replace(settings, repeats=100_000, budget_s=settings.per_call_budget_s, settle_s=0.05)
    for steps in (1, 101, 201):
        fns = {impl: f[steps] for impl, f in per_step.items()}
        for impl, t in _interleaved(fns, quick).items():
            timings.setdefault(impl, {})[steps] = t
    _header(["what", "lstm_fast", "PyTorch", "ONNX RT", "vs PyTorch", "vs ONNX RT"])

    def line(what: str, values: Mapping[str, tuple[float, float] | None]) -> None:
        cells = [what]
        for impl in ("lstm_fast", "torch", "onnxruntime"):
            v = values.get(impl)
            cells.append("—" if v is None else f"{_us(v[0])} / {_us(v[1])}")
        ours = values.get("lstm_fast")
        for impl in ("torch", "onnxruntime"):
            v = values.get(impl)
            cells.append(_ratio(v[1] if v else None, ours[1] if ours else None))
        _say(_row(cells))

    one = {k: (t[1].best, t[1].median) for k, t in timings.items()}
    marginal = {
        k: ((t[201].best - t[101].best) / 100, (t[201].median - t[101].median) / 100)
        for k, t in timings.items()
    }
    line("forward, T=1", one)
    line("one step inside a sequence, (T=201 − T=101)/100", marginal)
    line(
        "per-call overhead, T=1 − one step",
        {k: (one[k][0] - marginal[k][0], one[k][1] - marginal[k][1]) for k in one},
    )

    step_fns, step_skipped = _step_fns(1, n, n, threads)
    skipped.update(step_skipped)
    step = _interleaved(step_fns, quick)
    line(
        "one step per call, state passed (LSTM.step / nn.LSTM / ONNX LSTM)",
        {k: (t.best, t.median) for k, t in step.items()},
    )

    cell = _cell_fns(n, threads, skipped)
    cell_t = _interleaved(cell, quick)
    line(
        "cell_forward / nn.LSTMCell",
        {k: (t.best, t.median) for k, t in cell_t.items()},
    )
    prepared = _prepared_fn(n)
    if isinstance(prepared, str):
        _say(_row(["prepare_weights(...).forward, T=1", prepared, "", "", "", ""]))
    else:
        t = _interleaved({"lstm_fast": prepared}, quick)["lstm_fast"]
        line(
            "prepare_weights(...).forward, T=1",
            {"lstm_fast": (t.best, t.median), "torch": one.get("torch")},
        )
    _say()
    _skip_note(skipped, set())
    _say(
        "forward: lstm_fast.forward(need_cache=False), nn.LSTM under inference_mode, ONNX RT. "
        "cell_forward keeps what cell_backward needs; nn.LSTMCell runs under inference_mode. "
        "The prepared-weights row compares with PyTorch's T=1 forward."
    )
    _say()


def _cell_fns(n: int, threads: int, skipped: dict[str, str]) -> dict[str, Callable[[], Any]]:
    p = benchmark.make_problem(Shape("cell", 1, 1, n, n))
    x_t = p.x[0]
    h = np.zeros((1, n), dtype=np.float32)
    weights = (p.w_ih, p.w_hh, p.b_ih, p.b_hh)
    fns: dict[str, Callable[[], Any]] = {
        "lstm_fast": lambda: lstm_fast.cell_forward(x_t, h, h, *weights)
    }
    try:
        torch = benchmark._import_peer("torch")
        torch.set_num_threads(threads)
        cell = torch.nn.LSTMCell(n, n)
        with torch.no_grad():
            for name, w in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), weights):
                getattr(cell, name).copy_(torch.from_numpy(w))
        xt, ht = torch.from_numpy(x_t), torch.from_numpy(h)

        def pytorch() -> Any:
            with torch.inference_mode():
                return cell(xt, (ht, ht))

        fns["torch"] = pytorch
    except PeerUnavailable as exc:
        skipped["torch"] = str(exc)
    return fns


def _prepared_fn(n: int) -> Callable[[], Any] | str:
    """``prepare_weights(...).forward`` on one step, or why it cannot be timed."""
    prepare = getattr(lstm_fast, "prepare_weights", None)
    if prepare is None:
        return "not in this build"
    p = benchmark.make_problem(Shape("prepared", 1, 1, n, n))
    h = np.zeros((1, n), dtype=np.float32)
    try:
        prepared = prepare(p.w_ih, p.w_hh, p.b_ih, p.b_hh)
        try:
            prepared.forward(p.x, h, h, need_cache=False)
            return lambda: prepared.forward(p.x, h, h, need_cache=False)
        except TypeError:  # no need_cache keyword: an inference-only object
            prepared.forward(p.x, h, h)
            return lambda: prepared.forward(p.x, h, h)
    except Exception as exc:  # a half-built feature must not end the run
        return f"failed: {type(exc).__name__}: {exc}".replace("|", "/")


def _percentiles(times: list[float]) -> tuple[float, float, float, float]:
    a = np.asarray(times)
    return (
        float(a.min()),
        float(np.median(a)),
        float(np.percentile(a, 90)),
        float(np.percentile(a, 99)),
    )


def _back_to_back(fn: Callable[[], Any], calls: int) -> list[float]:
    for _ in range(max(3, calls // 50)):  # warm: pools, caches, the engine's thread choice
        fn()
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def run_latency(threads: int, settings: Settings) -> None:
    shape = settings.latency_shape
    _say(f"## Latency at {shape.name} ({shape.describe()})")
    _say()
    problem = benchmark.make_problem(shape)
    runners, skipped = benchmark.make_runners(
        problem, ("lstm_fast", "torch", "onnxruntime"), threads
    )
    _say(f"{settings.latency_calls} calls back to back, ms: min / median / p90 / p99.")
    _say()
    _header(["impl", "pass", "min", "median", "p90", "p99"])
    medians: dict[tuple[str, str], float] = {}
    for pass_ in benchmark.PASSES:
        for impl, runner in runners.items():
            fn = runner.for_pass(pass_)
            if fn is None:
                continue
            time.sleep(settings.settle_s)  # the previous library's threads go quiet
            stats = _percentiles(_back_to_back(fn, settings.latency_calls))
            medians[(impl, pass_)] = stats[1]
            _say(_row([benchmark.IMPL_LABELS[impl], pass_, *(_ms(s) for s in stats)]))
    _say()
    _say(
        f"After {settings.idle_s:g} s idle (forward, the implementations taking turns), "
        f"{settings.idle_calls} calls each, ms:"
    )
    _say()
    idle: dict[str, list[float]] = {impl: [] for impl in runners}
    for runner in runners.values():
        runner.forward()  # built and warm once; the pauses are what is measured
    for _ in range(settings.idle_calls):
        for impl, runner in runners.items():
            time.sleep(settings.idle_s)
            t0 = time.perf_counter()
            runner.forward()
            idle[impl].append(time.perf_counter() - t0)
    _header(["impl", "min", "median", "back-to-back median"])
    for impl, times in idle.items():
        _say(
            _row(
                [
                    benchmark.IMPL_LABELS[impl],
                    _ms(min(times)),
                    _ms(statistics.median(times)),
                    _ms(medians.get((impl, "fwd"))),
                ]
            )
        )
    _say()
    _skip_note(skipped, set())


def run_steadiness(threads: int, settings: Settings) -> None:
    _say("## Steadiness: min and median in one run")
    _say()
    _say(
        "ms, min / median of up to "
        f"{settings.repeats} calls; speed-up of medians (the peer's over lstm_fast's)."
    )
    _say()
    _header(["shape", "pass", "lstm_fast", "PyTorch", "ONNX RT", "vs PyTorch", "vs ONNX RT"])
    skipped: dict[str, str] = {}
    for shape in settings.steady_shapes:
        problem = benchmark.make_problem(shape)
        runners, failed = benchmark.make_runners(
            problem, ("lstm_fast", "torch", "onnxruntime"), threads
        )
        skipped.update(failed)
        for pass_ in benchmark.PASSES:
            fns = {k: f for k, r in runners.items() if (f := r.for_pass(pass_)) is not None}
            t = _interleaved(fns, settings)
            cells = [f"{shape.name} {shape.describe()}", pass_]
            for impl in ("lstm_fast", "torch", "onnxruntime"):
                cells.append(f"{_ms(t[impl].best)} / {_ms(t[impl].median)}" if impl in t else "—")
            ours = t["lstm_fast"].median
            for impl in ("torch", "onnxruntime"):
                cells.append(_ratio(t[impl].median if impl in t else None, ours))
            _say(_row(cells))
    _say()
    _skip_note(skipped, set())


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def _default_threads() -> int:
    """All cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_suite(
    cases: Sequence[Case],
    threads: int,
    settings: Settings,
    sections: Sequence[str] = SECTIONS,
) -> list[str]:
    """Print the suite's sections; returns the cases where lstm_fast was not the fastest."""
    started = time.perf_counter()
    versions = benchmark.peer_versions()
    _say(f"# lstm_fast {lstm_fast.__version__}: real-world suite")
    _say()
    _say(
        f"CPU: {benchmark.cpu_model()} ({os.cpu_count()} logical CPUs); lstm_fast SIMD path "
        f"{lstm_fast.get_isa()}; {threads} thread(s) for every implementation. "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + "."
    )
    missing = [LABELS[impl] for impl in ("torch", "onnxruntime") if benchmark.missing_modules(impl)]
    if missing:
        _say(f"Not installed, not timed: {', '.join(missing)}.")
    _say()
    slower: list[str] = []
    if "cases" in sections:
        slower = run_cases(cases, threads, settings)
    if "per-call" in sections:
        run_per_call(threads, settings)
    if "latency" in sections:
        run_latency(threads, settings)
    if "steadiness" in sections:
        run_steadiness(threads, settings)
    if "cases" in sections:
        verdict = (
            "lstm_fast's median is below every peer's in every case."
            if not slower
            else "lstm_fast's median is not below every peer's in: " + ", ".join(slower) + "."
        )
        _say(verdict)
    _say(f"Done in {time.perf_counter() - started:.0f} s.")
    return slower


def _names(valid: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in valid]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(valid)}")
        return names

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller cases, fewer calls: well under a minute on 2 cores",
    )
    parser.add_argument(
        "--threads",
        type=benchmark.positive_int,
        metavar="N",
        help="threads for every implementation (default: all cores)",
    )
    parser.add_argument(
        "--cases",
        type=_names([c.name for c in CASES]),
        metavar="NAME,...",
        help=f"the reported cases to time (default: all: {','.join(c.name for c in CASES)})",
    )
    parser.add_argument(
        "--sections",
        type=_names(SECTIONS),
        metavar="NAME,...",
        help=f"the parts to run (default: all: {','.join(SECTIONS)})",
    )


def run(args: argparse.Namespace) -> int:
    """``python -m lstm_fast suite``: always 0 (a slower case is a finding, printed)."""
    quick = bool(getattr(args, "quick", False))
    threads = getattr(args, "threads", None) or _default_threads()
    wanted = getattr(args, "cases", None)
    cases = [c for c in CASES if wanted is None or c.name in wanted]
    if quick:
        cases = [c.shrunk() for c in cases]
    run_suite(
        cases,
        threads,
        QUICK if quick else FULL,
        getattr(args, "sections", None) or SECTIONS,
    )
    return 0

"""The timing harness of ``python -m lstm_fast bench``, ``benches/`` and ``scripts/``.

It defines the standard shapes (:data:`SHAPES`), builds one problem per shape
(:func:`make_problem`), wraps each implementation in a :class:`Runner` and times
callables (:func:`time_calls`, :func:`time_interleaved`). It is a tool for
measuring lstm_fast, not part of the LSTM API (docs/api.md), and may change
between versions. The peers (PyTorch, ONNX Runtime) are imported only inside the
function that builds their runner, so they are never a runtime dependency of
``lstm_fast``: :func:`make_runner` raises :class:`PeerUnavailable` when a peer
cannot be imported.

Every implementation is given the same float32, time-major, one-layer problem
(same weights, same input) and the same number of threads, and is timed the
same way: one untimed warm-up call, then calls until ``repeats`` are done or a
time budget is spent; the minimum is reported (the least disturbed run on a
shared machine). docs/design.md, 'Benchmarks', says how the numbers are read.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import platform
import statistics
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

__all__ = [
    "IMPLS",
    "IMPL_LABELS",
    "PASSES",
    "REFERENCE_SKIP",
    "SHAPES",
    "PeerUnavailable",
    "Problem",
    "Runner",
    "Shape",
    "Timing",
    "cpu_model",
    "flop",
    "fma_peak",
    "on_threads",
    "make_problem",
    "make_runner",
    "make_runners",
    "missing_modules",
    "ort_session",
    "parse_shapes",
    "peer_versions",
    "positive_int",
    "sgemm_gflops",
    "time_calls",
    "time_interleaved",
]


class Shape(NamedTuple):
    """One benchmark problem size: batch B, steps T, input I, hidden H."""

    name: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int

    def describe(self) -> str:
        return f"B={self.batch} T={self.steps} I={self.input_size} H={self.hidden_size}"


# The standard shapes, float32, time-major, one layer. They are a floor, not the
# whole picture (wide inputs with small hidden sizes, long sequences, stacks,
# both directions, ragged batches and streaming matter too):
#   S   B=1   T=100 I=128  H=128   streaming / latency, one sequence
#   M   B=16  T=100 I=256  H=256   small-batch training
#   L   B=64  T=100 I=512  H=512   a typical training batch
#   XL  B=128 T=50  I=1024 H=1024  large, bound by the matrix products
SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("S", 1, 100, 128, 128),
        Shape("M", 16, 100, 256, 256),
        Shape("L", 64, 100, 512, 512),
        Shape("XL", 128, 50, 1024, 1024),
    )
}

# At these shapes the NumPy reference is too slow to be worth waiting for.
REFERENCE_SKIP = frozenset({"XL"})

PASSES = ("fwd", "fwd+bwd")

# Order of the columns everywhere; "reference" is lstm_fast.reference (NumPy).
IMPLS = ("lstm_fast", "reference", "torch", "onnxruntime")
IMPL_LABELS = {
    "lstm_fast": "lstm_fast",
    "reference": "NumPy ref",
    "torch": "PyTorch",
    "onnxruntime": "ONNX RT",
}


def parse_shapes(text: str) -> list[Shape]:
    """``"S,M"`` -> the named shapes; a ValueError names the unknown ones."""
    names = [n.strip().upper() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown or not names:
        raise ValueError(
            f"unknown shape(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(SHAPES)}"
        )
    return [SHAPES[n] for n in names]


def positive_int(text: str) -> int:
    """An ``argparse`` type for counts (threads, repeats, sizes): an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def flop(shape: Shape, pass_: str) -> float:
    """Floating-point operations of one call: forward ``2·T·B·4H·(I+H)`` (the
    products with ``w_ih`` and ``w_hh``), forward+backward three times that (the
    backward repeats that work twice: once for the gradients of x and h, once
    for those of the weights)."""
    B, T, I, H = shape.batch, shape.steps, shape.input_size, shape.hidden_size
    forward = 2.0 * T * B * 4 * H * (I + H)
    if pass_ == "fwd":
        return forward
    if pass_ == "fwd+bwd":
        return 3.0 * forward
    raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")


@dataclass
class Problem:
    """Inputs of one float32 time-major problem; weights initialised as PyTorch
    does (uniform ±1/sqrt(H)), ``dy`` the incoming gradient of ``y``."""

    shape: Shape
    x: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    dy: np.ndarray


def make_problem(shape: Shape, seed: int = 0) -> Problem:
    B, T, I, H = shape.batch, shape.steps, shape.input_size, shape.hidden_size
    rng = np.random.default_rng(seed)
    bound = np.float32(1.0 / np.sqrt(H))

    def uniform(*dims: int) -> np.ndarray:
        # Draw in float32 directly: no float64 temporaries (scripts/peak_memory.py
        # measures the process high-water mark after this).
        return (rng.random(dims, dtype=np.float32) * 2 - 1) * bound

    return Problem(
        shape=shape,
        x=rng.standard_normal((T, B, I), dtype=np.float32),
        w_ih=uniform(4 * H, I),
        w_hh=uniform(4 * H, H),
        b_ih=uniform(4 * H),
        b_hh=uniform(4 * H),
        dy=rng.standard_normal((T, B, H), dtype=np.float32),
    )


class PeerUnavailable(RuntimeError):
    """The peer cannot be imported (not installed, or broken)."""


@dataclass
class Runner:
    """Zero-argument callables for one implementation on one problem.

    ``forward()`` returns ``y`` as a (T, B, H) NumPy array (so results can be
    compared across implementations); ``forward_backward()`` runs a training
    forward and the full backward (gradients of x, weights and biases).
    ``forward_backward`` is None where the peer has no backward (ONNX Runtime).
    """

    impl: str
    forward: Callable[[], np.ndarray]
    forward_backward: Callable[[], Any] | None
    note: str = ""

    def for_pass(self, pass_: str) -> Callable[[], Any] | None:
        return self.forward if pass_ == "fwd" else self.forward_backward


def _lstm_fast_like(impl: str, module: Any, p: Problem) -> Runner:
    args = (p.x, p.w_ih, p.w_hh, p.b_ih, p.b_hh)

    def forward() -> np.ndarray:
        return module.forward(*args, need_cache=False).y

    def forward_backward() -> Any:
        out = module.forward(*args)
        return module.backward(out.cache, p.dy)

    return Runner(impl, forward, forward_backward)


def _runner_lstm_fast(p: Problem, threads: int) -> Runner:
    import lstm_fast

    lstm_fast.set_num_threads(threads)
    # The layer, as PyTorch's runner uses its nn.LSTM module: it keeps its weights
    # packed between calls (proving them unchanged on each), as a user's would.
    H, I = p.shape.hidden_size, p.shape.input_size
    layer = lstm_fast.LSTM(I, H)
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    layer.load_state_dict(dict(zip(names, (p.w_ih, p.w_hh, p.b_ih, p.b_hh))))

    def forward() -> np.ndarray:
        return layer.forward(p.x, need_cache=False)[0]

    def forward_backward() -> Any:
        layer.forward(p.x)
        return layer.backward(p.dy), layer.grads

    return Runner("lstm_fast", forward, forward_backward)


def _runner_reference(p: Problem, threads: int) -> Runner:
    from lstm_fast import reference

    # The reference runs on NumPy's BLAS, with that library's own thread count.
    runner = _lstm_fast_like("reference", reference, p)
    runner.note = "NumPy BLAS threads"
    return runner


def _import_peer(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # ImportError, or a broken install raising anything
        raise PeerUnavailable(f"{name} is not importable: {exc}") from exc


def _runner_torch(p: Problem, threads: int) -> Runner:
    torch = _import_peer("torch")
    torch.set_num_threads(threads)
    H, I = p.shape.hidden_size, p.shape.input_size
    lstm = torch.nn.LSTM(I, H)  # float32, time-major, one layer
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(p.w_ih))
        lstm.weight_hh_l0.copy_(torch.from_numpy(p.w_hh))
        lstm.bias_ih_l0.copy_(torch.from_numpy(p.b_ih))
        lstm.bias_hh_l0.copy_(torch.from_numpy(p.b_hh))
    x = torch.from_numpy(p.x)
    x_grad = x.clone().requires_grad_(True)
    dy = torch.from_numpy(p.dy)
    inputs = [x_grad, *lstm.parameters()]

    def forward() -> np.ndarray:
        with torch.inference_mode():
            y, _ = lstm(x)
        return y.numpy()

    def forward_backward() -> Any:
        y, _ = lstm(x_grad)
        # Gradients of x and of all four weights/biases, without accumulating
        # into .grad (so repeated calls do the same work).
        return torch.autograd.grad(y, inputs, dy)

    return Runner("torch", forward, forward_backward)


# ONNX stacks the gate blocks i, o, f, c; ours (and PyTorch's) are i, f, g, o.
_ONNX_GATE_ORDER = (0, 3, 1, 2)


def _to_onnx_gates(w: np.ndarray, hidden: int) -> np.ndarray:
    return np.concatenate([w[k * hidden : (k + 1) * hidden] for k in _ONNX_GATE_ORDER])


def _runner_onnxruntime(p: Problem, threads: int) -> Runner:
    onnx = _import_peer("onnx")
    _import_peer("onnxruntime")  # unavailable: say so before building the model
    from onnx import TensorProto, helper, numpy_helper

    T, B, I, H = p.shape.steps, p.shape.batch, p.shape.input_size, p.shape.hidden_size
    W = _to_onnx_gates(p.w_ih, H)[None]  # (1, 4H, I)
    R = _to_onnx_gates(p.w_hh, H)[None]  # (1, 4H, H)
    bias = np.concatenate([_to_onnx_gates(p.b_ih, H), _to_onnx_gates(p.b_hh, H)])[None]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=H)
    graph = helper.make_graph(
        [node],
        "lstm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T, 1, B, H])],
        initializer=[
            numpy_helper.from_array(W, "W"),
            numpy_helper.from_array(R, "R"),
            numpy_helper.from_array(bias, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # old enough for any onnxruntime that has LSTM-14
    onnx.checker.check_model(model)
    session = ort_session(model, threads)
    feeds = {"X": p.x}

    def forward() -> np.ndarray:
        return session.run(None, feeds)[0][:, 0]

    return Runner("onnxruntime", forward, None)


def ort_session(model: Any, threads: int) -> Any:
    """An ONNX Runtime CPU session of ``model`` (an ``onnx.ModelProto``) on ``threads``
    intra-op threads: one operator at a time (``ORT_SEQUENTIAL``, one inter-op
    thread), so that the thread count is the same as the other implementations',
    with every graph optimisation on. Raises :class:`PeerUnavailable` without
    onnxruntime."""
    ort = _import_peer("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


_FACTORIES: dict[str, Callable[[Problem, int], Runner]] = {
    "lstm_fast": _runner_lstm_fast,
    "reference": _runner_reference,
    "torch": _runner_torch,
    "onnxruntime": _runner_onnxruntime,
}


# The modules each implementation needs beyond lstm_fast and NumPy.
_PEER_MODULES = {"torch": ("torch",), "onnxruntime": ("onnx", "onnxruntime")}


def missing_modules(impl: str) -> list[str]:
    """The modules ``impl`` needs that are not installed (found without importing)."""
    return [m for m in _PEER_MODULES.get(impl, ()) if importlib.util.find_spec(m) is None]


def make_runner(impl: str, problem: Problem, threads: int) -> Runner:
    """The runner of ``impl`` (one of :data:`IMPLS`) on ``problem``; raises
    :class:`PeerUnavailable` when a peer is not importable."""
    try:
        factory = _FACTORIES[impl]
    except KeyError:
        raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}") from None
    return factory(problem, threads)


def make_runners(
    problem: Problem, impls: Iterable[str], threads: int
) -> tuple[dict[str, Runner], dict[str, str]]:
    """The runners of ``impls`` on ``problem``, without the reference at the shapes
    of :data:`REFERENCE_SKIP`; and, for each peer that is not importable, why."""
    runners: dict[str, Runner] = {}
    unavailable: dict[str, str] = {}
    for impl in impls:
        if impl == "reference" and problem.shape.name in REFERENCE_SKIP:
            continue
        try:
            runners[impl] = make_runner(impl, problem, threads)
        except PeerUnavailable as exc:
            unavailable[impl] = str(exc)
    return runners, unavailable


def peer_versions() -> dict[str, str]:
    """Versions of the importable peers (imports them)."""
    versions = {"numpy": np.__version__}
    for name in ("torch", "onnxruntime"):
        try:
            versions[name] = _import_peer(name).__version__
        except PeerUnavailable:
            pass
    return versions


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows),
    printed with every table: numbers from different CPUs do not compare."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not line.strip():  # the first CPU is enough
                    break
    except OSError:
        pass
    model = fields.get("model name")
    if not model:
        return platform.processor() or platform.machine() or "unknown CPU"
    # Virtual machines often show only the brand ("AMD EPYC"): the family and
    # model numbers tell the generation (AMD family 25 is Zen 3/4, 26 is Zen 5).
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return model


class Timing(NamedTuple):
    """Seconds per call: the minimum and median of ``calls`` timed calls."""

    best: float
    median: float
    calls: int


def time_calls(
    fn: Callable[[], Any],
    *,
    repeats: int = 10,
    budget_s: float = 1.0,
    min_repeats: int = 1,
    warmup: int = 1,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then timed calls until ``repeats``
    are done or ``budget_s`` seconds have passed (but at least ``min_repeats``).
    The garbage collector is off while timing."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        while len(times) < max(1, repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if len(times) >= min_repeats and time.perf_counter() - start >= budget_s:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(min(times), statistics.median(times), len(times))


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int = 10,
    budget_s: float = 1.0,
    rounds: int = 2,
    first_results: dict[str, Any] | None = None,
    settle_s: float = 0.25,
) -> dict[str, Timing]:
    """Time several callables fairly on a machine whose load drifts.

    Each of ``rounds`` rounds gives every callable a block of its own: one untimed
    warm-up call (its thread pool, caches and branch predictors are then its own
    again after the others ran), then back-to-back timed calls, up to
    ``ceil(repeats / rounds)`` or until ``budget_s / rounds`` seconds of them have
    passed (at least one). Back-to-back calls are what a training loop makes;
    taking turns by block spreads any change in the machine's load over all of
    them. Before each block the machine gets ``settle_s`` seconds of quiet: the
    thread pools of PyTorch (OpenMP) and ONNX Runtime keep spinning for a while
    after a call, and a library whose threads meet every time step (lstm_fast at
    small batch) would otherwise be timed against cores still busy with the
    previous library, which is not how anyone runs one library after another.
    The result of each callable's first call is stored in ``first_results``
    when given (to compare outputs without another call).
    """
    rounds = max(1, rounds)
    per_round = max(1, -(-max(1, repeats) // rounds))
    times: dict[str, list[float]] = {name: [] for name in fns}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(rounds):
            for name, fn in fns.items():
                time.sleep(settle_s)
                result = fn()
                if round_ == 0 and first_results is not None:
                    first_results[name] = result
                spent = 0.0
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    fn()
                    took = time.perf_counter() - t0
                    times[name].append(took)
                    spent += took
                    if spent >= budget_s / rounds:
                        break
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(min(ts), statistics.median(ts), len(ts)) for name, ts in times.items()}


def on_threads(threads: int, measure: Callable[[], float]) -> list[float]:
    """``measure()`` on ``threads`` threads started together, its results in
    thread order: how the per-core limits (`_core.fma_peak`,
    `_core.read_bandwidth`, which release the GIL) are measured with every core
    busy at once."""
    results = [0.0] * threads
    start = threading.Barrier(threads)

    def run(i: int) -> None:
        start.wait()
        results[i] = measure()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def fma_peak(seconds: float = 0.2) -> float:
    """The measured single-core f32 FMA peak of the SIMD path in use, GFLOP/s: a
    loop of independent FMAs on registers (rust/src/simd/peak.rs), the fastest
    round of ``seconds``."""
    from lstm_fast import _core

    return float(_core.fma_peak(seconds))


def sgemm_gflops(n: int = 2048, *, repeats: int = 3, budget_s: float = 1.0) -> float:
    """The machine's practical limit: GFLOP/s of an n³ float32 matmul through
    NumPy's BLAS (all its threads)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    timing = time_calls(lambda: np.matmul(a, b, out=out), repeats=repeats, budget_s=budget_s)
    return 2.0 * n**3 / timing.best / 1e9

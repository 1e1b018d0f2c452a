"""Generated bad calls over every public entry point (docs/api.md, 'Bad input').

One table of entry points, each with a recipe for valid arguments, and one table of
bad values. A deterministic sample of calls, each with one argument (in the long
form, beyond every single fault, also two) replaced by a bad value, runs in child
processes, so that a crash (a signal, an abort) or a hang is seen and reported with
the call that caused it. Every call must either succeed or raise ``TypeError``,
``ValueError``, ``IndexError`` or ``MemoryError`` whose message names the argument
(a ``TypeError`` the bad one itself; the others the bad one or one it is checked
against), never another exception and never a Rust panic's text.

The normal run makes a few hundred calls; ``LSTM_FAST_STRESS_CALLS=N`` makes N (the
long form: 10000 covers every single fault and adds pairs), and
``LSTM_FAST_STRESS_REPORT=path`` writes the counts of outcomes there as JSON.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest

from tests.test_rules import CELL, GATES, PYTORCH, SEQ, B, G, H, I, L, T

ROOT = Path(__file__).resolve().parents[1]

CALLS = int(os.environ.get("LSTM_FAST_STRESS_CALLS", "400"))
BATCH = 250 if CALLS <= 1000 else 1000  # calls per child process
SEED = 20240611
ALLOWED = ("TypeError", "ValueError", "IndexError", "MemoryError")
PANIC = ("panicked at", "RUST_BACKTRACE", "PanicException")

HAVE_TORCH = importlib.util.find_spec("torch") is not None


# --------------------------------------------------------------------------
# Valid arguments


def _arrays(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-0.5, 0.5, s) for n, s in shapes.items()}


OPTIM = {"w": (3, 4), "b": (4,)}

# The projection's entries (w_hr, PyTorch's proj_size): P < H, so that a state of
# H where P belongs is a fault.
P = 3
PROJ_SEQ = {**SEQ, "w_hh": (G, P), "h0": (B, P), "w_hr": (P, H)}
PROJ_CELL = {**CELL, "h": (B, P), "w_hh": (G, P), "w_hr": (P, H)}
PROJ_WEIGHTS = {**PYTORCH, "w_hh": (G, P), "w_hr": (P, H)}


def _seq() -> dict[str, Any]:
    return {**_arrays(SEQ), "batch_first": False, "lengths": np.array([T, 1]),
            "reverse": False, "need_cache": True}  # fmt: skip


def _layer() -> Any:
    import lstm_fast

    return lstm_fast.LSTM(I, H, L, dtype=np.float64, seed=0)


def _trained_layer() -> Any:
    m = _layer()
    m(_arrays({"x": (T, B, I)})["x"])
    return m


def _cache(module: Any) -> Any:
    return module.forward(**_arrays(SEQ)).cache


def _cell_cache(module: Any) -> Any:
    return module.cell_forward(**_arrays(CELL)).cache


def _params() -> dict[str, np.ndarray]:
    return _arrays(OPTIM, seed=1)


def _grads() -> dict[str, np.ndarray]:
    return _arrays(OPTIM, seed=2)


def _path() -> str:
    """A file name relative to the child's working directory, a temporary directory
    that ``_run_batch`` removes (the parent only lists the arguments, never writes)."""
    return "m.onnx"


def _threads(n: Any) -> None:
    """set_num_threads(n), the count restored at once: an accepted huge count must
    not start its threads at the next call of the sweep."""
    import lstm_fast

    before = lstm_fast.get_num_threads()
    try:
        lstm_fast.set_num_threads(n)
    finally:
        lstm_fast.set_num_threads(before)


def _nested(prefix: str, a: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The arguments ``prefix[key]`` of ``a`` as the dict they belong to."""
    return {k: a[f"{prefix}['{k}']"] for k in keys}


class Entry(NamedTuple):
    """A public entry point: valid arguments (names starting with ``_`` are not
    targets of a bad value), the call, and the words messages use for an argument
    other than its own name."""

    name: str
    args: Callable[[], dict[str, Any]]
    call: Callable[[dict[str, Any]], Any]
    aliases: dict[str, tuple[str, ...]] = {}
    needs: str = ""  # an optional package the entry needs


def _entries() -> list[Entry]:
    import lstm_fast as lf
    from lstm_fast import LSTM, convert, export, optim
    from lstm_fast import reference as ref

    grads_keys = tuple(OPTIM)
    gradient_aliases = {f"grads['{k}']": (f"'{k}'",) for k in grads_keys}
    param_aliases = {f"params['{k}']": (f"'{k}'",) for k in grads_keys}

    def per_key(prefix: str, values: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        return lambda: {f"{prefix}['{k}']": v for k, v in values().items()}

    entries = [
        Entry("forward", _seq, lambda a: lf.forward(**a)),
        Entry("backward",
              lambda: {"cache": _cache(lf), **_arrays({"dy": (T, B, H), "dh_n": (B, H),
                                                       "dc_n": (B, H)})},
              lambda a: lf.backward(**a)),
        Entry("cell_forward", lambda: _arrays(CELL), lambda a: lf.cell_forward(**a)),
        Entry("cell_backward",
              lambda: {"cache": _cell_cache(lf), **_arrays({"dh_new": (B, H), "dc_new": (B, H)})},
              lambda a: lf.cell_backward(**a)),
        Entry("reference.forward", _seq, lambda a: ref.forward(**a)),
        Entry("reference.backward",
              lambda: {"cache": _cache(ref), **_arrays({"dy": (T, B, H), "dh_n": (B, H),
                                                        "dc_n": (B, H)})},
              lambda a: ref.backward(**a)),
        Entry("reference.cell_forward", lambda: _arrays(CELL), lambda a: ref.cell_forward(**a)),
        Entry("reference.cell_backward",
              lambda: {"cache": _cell_cache(ref), **_arrays({"dh_new": (B, H), "dc_new": (B, H)})},
              lambda a: ref.cell_backward(**a)),
        Entry("LSTM",
              lambda: {"input_size": I, "hidden_size": H, "num_layers": L, "bias": True,
                       "batch_first": False, "bidirectional": True, "dtype": np.float64,
                       "seed": 0},
              lambda a: LSTM(**a)),
        Entry("LSTM.forward",
              lambda: {"_m": _layer(), **_arrays({"x": (T, B, I), "h0": (L, B, H),
                                                  "c0": (L, B, H)}),
                       "lengths": [T, 1], "need_cache": True},
              lambda a: a["_m"](a["x"], (a["h0"], a["c0"]), lengths=a["lengths"],
                                need_cache=a["need_cache"])),
        Entry("LSTM.forward(hx)",
              lambda: {"_m": _layer(), **_arrays({"x": (T, B, I)}),
                       "hx": tuple(_arrays({"h0": (L, B, H), "c0": (L, B, H)}).values())},
              lambda a: a["_m"](a["x"], a["hx"]), {"hx": ("h0", "c0")}),
        Entry("LSTM.backward",
              lambda: {"_m": _trained_layer(), **_arrays({"dy": (T, B, H), "dh_n": (L, B, H),
                                                          "dc_n": (L, B, H)})},
              lambda a: a["_m"].backward(a["dy"], a["dh_n"], a["dc_n"])),
        Entry("LSTM.step",
              lambda: {"_m": _layer(), **_arrays({"x_t": (B, I), "state[0]": (L, B, H),
                                                  "state[1]": (L, B, H)})},
              lambda a: a["_m"].step(a["x_t"], (a["state[0]"], a["state[1]"]))),
        Entry("LSTM.step(state)",
              lambda: {"_m": _layer(), **_arrays({"x_t": (B, I)}),
                       "state": tuple(_arrays({"h": (L, B, H), "c": (L, B, H)}).values())},
              lambda a: a["_m"].step(a["x_t"], a["state"]), {"state": ("state[0]", "state[1]")}),
        Entry("LSTM.load_state_dict",
              lambda: {"_m": _layer(), "state": _layer().state_dict(), "strict": True},
              lambda a: a["_m"].load_state_dict(a["state"], a["strict"])),
        Entry("LSTM.load_state_dict(values)",
              lambda: {"_m": _layer(), **_arrays({"weight_ih_l0": (G, I), "bias_hh_l1": (G,)})},
              lambda a: a["_m"].load_state_dict(
                  {**a["_m"].state_dict(), "weight_ih_l0": a["weight_ih_l0"],
                   "bias_hh_l1": a["bias_hh_l1"]})),
        Entry("LSTM.weights", lambda: {"_m": _layer(), "layer": L - 1, "direction": 0},
              lambda a: a["_m"].weights(a["layer"], a["direction"])),
        Entry("convert.to_keras", lambda: _arrays(PYTORCH), lambda a: convert.to_keras(**a)),
        Entry("convert.to_onnx", lambda: _arrays(PYTORCH), lambda a: convert.to_onnx(**a)),
        Entry("convert.to_gate_matrices", lambda: {**_arrays(PYTORCH), "order": "hx"},
              lambda a: convert.to_gate_matrices(**a)),
        Entry("convert.from_keras",
              lambda: _arrays({"kernel": (I, G), "recurrent_kernel": (H, G), "bias": (G,)}),
              lambda a: convert.from_keras(**a)),
        Entry("convert.from_onnx",
              lambda: _arrays({"W": (1, G, I), "R": (1, G, H), "B": (1, 2 * G)}),
              lambda a: convert.from_onnx(**a)),
        Entry("convert.from_gate_matrices",
              lambda: {**_arrays(GATES), "input_size": I, "order": "xh"},
              lambda a: convert.from_gate_matrices(**a)),
        Entry("export_onnx",
              lambda: {"layer": _layer(), "path": _path(), "opset": 14, "lstm_dtype": np.float32},
              lambda a: export.export_onnx(**a), needs="onnx"),
        Entry("to_onnx_model", lambda: {"layer": _layer(), "opset": 14, "lstm_dtype": np.float64},
              lambda a: export.to_onnx_model(**a), needs="onnx"),
        Entry("LSTM.export_onnx", lambda: {"_m": _layer(), "path": _path(), "opset": 13},
              lambda a: a["_m"].export_onnx(a["path"], a["opset"]), needs="onnx"),
        Entry("SGD",
              lambda: {"params": _params(), "lr": 0.1, "momentum": 0.9, "dampening": 0.0,
                       "nesterov": True, "weight_decay": 0.01},
              lambda a: optim.SGD(**a)),
        Entry("SGD(params)", per_key("params", _params),
              lambda a: optim.SGD(_nested("params", a, grads_keys), 0.1), param_aliases),
        Entry("SGD.step", lambda: {"_o": optim.SGD(_params(), 0.1, 0.9), "grads": _grads()},
              lambda a: a["_o"].step(a["grads"])),
        Entry("SGD.step(grads)",
              lambda: {"_o": optim.SGD(_params(), 0.1), **per_key("grads", _grads)()},
              lambda a: a["_o"].step(_nested("grads", a, grads_keys)), gradient_aliases),
        Entry("Adam",
              lambda: {"params": _params(), "lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-8,
                       "weight_decay": 0.0},
              lambda a: optim.Adam(**a)),
        Entry("Adam.step", lambda: {"_o": optim.Adam(_params()), "grads": _grads()},
              lambda a: a["_o"].step(a["grads"])),
        Entry("Adam.step(grads)",
              lambda: {"_o": optim.Adam(_params()), **per_key("grads", _grads)()},
              lambda a: a["_o"].step(_nested("grads", a, grads_keys)), gradient_aliases),
        Entry("clip_grad_norm", lambda: {"grads": _grads(), "max_norm": 0.5, "norm_type": 2.0},
              lambda a: optim.clip_grad_norm(**a)),
        Entry("clip_grad_norm(grads)", per_key("grads", _grads),
              lambda a: optim.clip_grad_norm(_nested("grads", a, grads_keys), 0.5),
              gradient_aliases),
        Entry("set_num_threads", lambda: {"n": 1}, lambda a: _threads(a["n"])),
        Entry("prepare_weights", lambda: {**_arrays(PYTORCH), "dtype": np.float64},
              lambda a: lf.prepare_weights(**a)),
        Entry("PreparedWeights.forward",
              lambda: {"_p": lf.prepare_weights(**_arrays(PYTORCH)),
                       **_arrays({"x": (T, B, I), "h0": (B, H), "c0": (B, H)}),
                       "batch_first": False, "lengths": np.array([T, 1]), "reverse": False,
                       "need_cache": True},
              lambda a: a["_p"].forward(**{k: v for k, v in a.items() if k != "_p"})),
        Entry("PreparedWeights.cell_forward",
              lambda: {"_p": lf.prepare_weights(**_arrays(PYTORCH)),
                       **_arrays({"x_t": (B, I), "h": (B, H), "c": (B, H)})},
              lambda a: a["_p"].cell_forward(a["x_t"], a["h"], a["c"])),
        Entry("PreparedWeights.matches",
              lambda: {"_p": lf.prepare_weights(**_arrays(PYTORCH)), **_arrays(PYTORCH)},
              lambda a: a["_p"].matches(a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])),
        Entry("forward(variants)",
              lambda: {**_arrays({**SEQ, "peepholes": (3 * H,)}), "clip": 2.0,
                       "input_forget": False, "forget_gate": True,
                       "activations": ("Sigmoid", ("LeakyRelu", 0.1), "Tanh")},
              lambda a: lf.forward(**a)),
        Entry("backward(flow)",
              lambda: {"cache": lf.forward(**_arrays({**SEQ, "peepholes": (3 * H,)})).cache,
                       **_arrays({"dy": (T, B, H)}), "flow": True},
              lambda a: lf.backward(a["cache"], a["dy"], flow=a["flow"])),
        Entry("forward(w_hr)",
              lambda: {**_arrays(PROJ_SEQ), "lengths": np.array([T, 1]), "reverse": True,
                       "peepholes": _arrays({"p": (3 * H,)})["p"]},
              lambda a: lf.forward(**a)),
        Entry("backward(w_hr)",
              lambda: {"cache": lf.forward(**_arrays(PROJ_SEQ)).cache,
                       **_arrays({"dy": (T, B, P), "dh_n": (B, P), "dc_n": (B, H)}),
                       "flow": True},
              lambda a: lf.backward(**a)),
        Entry("cell_forward(w_hr)", lambda: _arrays(PROJ_CELL), lambda a: lf.cell_forward(**a)),
        Entry("cell_backward(w_hr)",
              lambda: {"cache": lf.cell_forward(**_arrays(PROJ_CELL)).cache,
                       **_arrays({"dh_new": (B, P), "dc_new": (B, H)})},
              lambda a: lf.cell_backward(**a)),
        Entry("prepare_weights(w_hr)", lambda: {**_arrays(PROJ_WEIGHTS), "dtype": np.float32},
              lambda a: lf.prepare_weights(**a)),
        Entry("PreparedWeights.forward(w_hr)",
              lambda: {"_p": lf.prepare_weights(**_arrays(PROJ_WEIGHTS)),
                       **_arrays({"x": (T, B, I), "h0": (B, P), "c0": (B, H)}),
                       "lengths": np.array([T, 0])},
              lambda a: a["_p"].forward(**{k: v for k, v in a.items() if k != "_p"})),
        Entry("PreparedWeights.matches(w_hr)",
              lambda: {"_p": lf.prepare_weights(**_arrays(PROJ_WEIGHTS)),
                       **_arrays(PROJ_WEIGHTS)},
              lambda a: a["_p"].matches(a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                                        w_hr=a["w_hr"])),
        Entry("LSTM(variants)",
              lambda: {"input_size": I, "hidden_size": H, "num_layers": L, "peepholes": True,
                       "clip": 2.0, "input_forget": False, "forget_gate": True,
                       "activations": ("HardSigmoid", "Tanh", "Tanh"), "forget_bias": 1.0},
              lambda a: LSTM(**a)),
    ]  # fmt: skip
    return [e for e in entries if not e.needs or importlib.util.find_spec(e.needs) is not None]


# --------------------------------------------------------------------------
# Bad values: each made from the argument's valid value


def _nd(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.ndim > 0 and v.size > 0


def _masked(v: Any, masked: bool) -> np.ndarray:
    a = np.asarray(v, dtype=float) if _nd(v) else np.ones(2)
    mask = np.zeros(a.shape, bool)
    mask.flat[0] = masked
    return np.ma.masked_array(a, mask=mask)


def _huge(v: Any) -> Any:
    """A view of about 2**62 int8 zeros with ``v``'s trailing axes: its float copy
    would overflow the address space, so every entry point must refuse it before
    allocating or looping over it."""
    rest = v.shape[1:] if _nd(v) else ()
    inner = math.prod(rest) or 1
    return np.broadcast_to(np.int8(0), (2**62 // inner, *rest))


def _torch(make: Callable[[Any, Any], Any]) -> Callable[[Any], Any]:
    def value(v: Any) -> Any:
        import torch

        return make(torch, np.asarray(v, dtype=float) if _nd(v) else np.ones(2))

    return value


BAD: dict[str, Callable[[Any], Any]] = {
    "none": lambda v: None,
    "extra-axis": lambda v: v[None] if _nd(v) else [v],
    "drop-axis": lambda v: v[0] if _nd(v) else (),
    "short": lambda v: v[..., :-1] if _nd(v) else -1,
    "long": lambda v: np.concatenate([v, v[..., :1]], axis=-1) if _nd(v) else (v, v),
    "transposed": lambda v: v.T if _nd(v) else v,
    "empty": lambda v: np.zeros(0),
    "zero-rows": lambda v: np.zeros((0, *v.shape[1:])) if _nd(v) else 0,
    "0-d": lambda v: np.float64(0.5),
    "complex": lambda v: v.astype(complex) if _nd(v) else 1 + 2j,
    "object": lambda v: v.astype(object) if _nd(v) else object(),
    "str": lambda v: "abc",
    "bytes": lambda v: b"abc",
    "str-array": lambda v: np.full(v.shape if _nd(v) else 2, "a"),
    "bytes-array": lambda v: np.full(v.shape if _nd(v) else 2, b"a"),
    "datetime": lambda v: np.zeros(v.shape if _nd(v) else 2, "datetime64[s]"),
    "masked": lambda v: _masked(v, True),
    "masked-nothing": lambda v: _masked(v, False),
    "matrix": lambda v: np.asmatrix(v.reshape(v.shape[0], -1)) if _nd(v) else np.asmatrix([[1]]),
    "nan": lambda v: math.nan,
    "inf": lambda v: math.inf,
    "nan-array": lambda v: np.full(v.shape if _nd(v) else 2, math.nan),
    "lengths-inf": lambda v: [math.inf, 1.0],
    "lengths-nan": lambda v: [math.nan, 1.0],
    "int-1": lambda v: -1,
    "int0": lambda v: 0,
    "int2**31": lambda v: 2**31,
    "int2**63": lambda v: 2**63,
    "int2**70": lambda v: 2**70,
    "int-2**70": lambda v: -(2**70),
    "true": lambda v: True,
    "false": lambda v: False,
    "np.bool": lambda v: np.True_,
    "float1.5": lambda v: 1.5,
    "float2.0": lambda v: 2.0,
    "np.int64": lambda v: np.int64(2),
    "np.float32": lambda v: np.float32(0.5),
    "dict": lambda v: {},
    "list": lambda v: [],
    "ragged": lambda v: [[1.0, 2.0], [3.0]],
    "tuple3": lambda v: (1, 2, 3),
    "set": lambda v: {1, 2},
    "object-instance": lambda v: object(),
    "callable": lambda v: print,
    "big-endian": lambda v: v.astype(">f8") if _nd(v) else v,
    "fortran": lambda v: np.asfortranarray(v) if _nd(v) else v,
    "read-only": lambda v: np.broadcast_to(v, v.shape) if _nd(v) else v,
    "huge-view": _huge,
}
if HAVE_TORCH:
    BAD.update({
        "torch-complex": _torch(lambda torch, a: torch.from_numpy(a).to(torch.complex64)),
        "torch-requires-grad": _torch(lambda torch, a: torch.from_numpy(a).requires_grad_()),
        "torch-float16": _torch(lambda torch, a: torch.from_numpy(a).half()),
        "torch-int": _torch(lambda torch, a: torch.from_numpy(a).long()),
        "torch-bool": _torch(lambda torch, a: torch.from_numpy(a) > 0),
        "torch-meta": _torch(lambda torch, a: torch.empty(a.shape, device="meta")),
    })  # fmt: skip


# --------------------------------------------------------------------------
# The sample, the child that runs it and the verdict

Call = tuple[str, tuple[tuple[str, str], ...]]  # (entry, ((argument, bad value), ...))


def _targets(entry: Entry) -> list[str]:
    return [n for n in entry.args() if not n.startswith("_")]


def _sample(n: int) -> list[Call]:
    """``n`` calls: every single fault in a seeded order that takes the entry points in
    turn (so that a short sample touches each of them), then pairs of faults."""
    entries = _entries()
    rng = np.random.default_rng(SEED)
    per_entry: list[list[Call]] = []
    for e in entries:
        singles: list[Call] = [(e.name, ((arg, bad),)) for arg in _targets(e) for bad in BAD]
        per_entry.append([singles[k] for k in rng.permutation(len(singles))])
    longest = max(len(s) for s in per_entry)
    calls = [s[k] for k in range(longest) for s in per_entry if k < len(s)][:n]
    bads = list(BAD)
    targets = {e.name: _targets(e) for e in entries}
    while len(calls) < n:
        entry = entries[rng.integers(len(entries))].name
        if len(targets[entry]) < 2:
            continue
        first, second = rng.choice(targets[entry], 2, replace=False)
        calls.append(
            (entry, ((str(first), bads[rng.integers(len(bads))]),
                     (str(second), bads[rng.integers(len(bads))])))
        )  # fmt: skip
    return calls


def _child() -> None:
    """Run the calls read from stdin; one line before and one after each call."""
    import warnings

    warnings.simplefilter("ignore")
    entries = {e.name: e for e in _entries()}
    calls = json.load(sys.stdin)
    out = sys.stdout
    for k, (name, faults) in enumerate(calls):
        entry = entries[name]
        out.write(f"@@start {k}\n")
        out.flush()
        result: dict[str, Any] = {"k": k, "type": None, "message": ""}
        try:
            args = entry.args()
            for arg, bad in faults:
                args[arg] = BAD[bad](args[arg])
            entry.call(args)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a PyO3 PanicException is a BaseException
            result["type"] = type(exc).__name__
            result["message"] = str(exc)[:2000]
        out.write("@@done " + json.dumps(result) + "\n")
        out.flush()


def _naming(word: str) -> str:
    """A regex for ``word`` as a word of a message (names such as ``state[0]`` too)."""
    return rf"(?<![\w\[]){re.escape(word)}(?![\w\]])"


def _verdict(entry: Entry, faults: tuple[tuple[str, str], ...], kind: str | None, message: str):
    """None when the outcome keeps the rule, else what is wrong with it."""
    if kind is None:
        return None
    if kind not in ALLOWED:
        return f"{kind} is not one of {ALLOWED}: {message}"
    if any(p in message for p in PANIC):
        return f"Rust panic text: {message}"
    bad_names = [w for arg, _ in faults for w in (arg, *entry.aliases.get(arg, ()))]
    if kind != "TypeError":  # a value may be reported where it is checked against another
        bad_names += [w for arg in _targets(entry) for w in (arg, *entry.aliases.get(arg, ()))]
    if not any(re.search(_naming(w), message) for w in bad_names):
        return f"{kind} does not name {bad_names if kind == 'TypeError' else faults}: {message}"
    return None


def _run_batch(calls: list[Call], timeout: float) -> tuple[list[tuple[int, str | None, str]], str]:
    """Run ``calls`` in a child; its results and, if it died or hung, why."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from tests.test_bad_calls import _child; _child()"
    )
    with tempfile.TemporaryDirectory(prefix="lstm_fast_bad_calls_") as cwd:  # paths land here
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code], input=json.dumps(calls), capture_output=True,
                text=True, timeout=timeout, cwd=cwd,
            )  # fmt: skip
            stdout, stderr, died = proc.stdout, proc.stderr, proc.returncode != 0
            why = f"exit status {proc.returncode}" if died else ""
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
            died, why = True, f"no answer within {timeout} s (hang)"
    results, started = [], None
    for line in stdout.splitlines():
        if line.startswith("@@start "):
            started = int(line.split()[1])
        elif line.startswith("@@done "):
            r = json.loads(line[len("@@done ") :])
            results.append((r["k"], r["type"], r["message"]))
            started = None
    if died:
        at = f"during call {calls[started]}" if started is not None else "outside any call"
        return results, f"child process: {why} {at}; stderr: {stderr[-3000:]}"
    return results, ""


@pytest.mark.timeout(3600)
def test_bad_calls():
    pytest.importorskip("lstm_fast._core")
    entries = {e.name: e for e in _entries()}
    calls = _sample(CALLS)
    failures: list[str] = []
    outcomes: collections.Counter[str] = collections.Counter()
    remaining = list(range(len(calls)))
    while remaining:
        batch, remaining = remaining[:BATCH], remaining[BATCH:]
        results, death = _run_batch([calls[k] for k in batch], timeout=30 + 0.5 * len(batch))
        for k, kind, message in results:
            name, faults = calls[batch[k]]
            outcomes[kind or "ok"] += 1
            problem = _verdict(entries[name], faults, kind, message)
            if problem:
                failures.append(f"{name} {faults}: {problem}")
        if death:
            failures.append(death)
            outcomes["crash or hang"] += 1
            # The calls after the one that killed the child run in the next one.
            remaining = batch[len(results) + 1 :] + remaining
    report = os.environ.get("LSTM_FAST_STRESS_REPORT")
    if report:
        Path(report).write_text(json.dumps({"calls": len(calls), "outcomes": outcomes}, indent=1))
    print(f"{len(calls)} bad calls: {dict(outcomes)}")
    assert not failures, f"{len(failures)} of {len(calls)} calls broke the rule:\n" + "\n".join(
        failures[:40]
    )


def test_the_sample_covers_every_entry_and_value():
    """The normal run's sample touches every entry point; the long form every pair
    of (argument, bad value) of every entry once."""
    entries = _entries()
    names = {name for name, _ in _sample(CALLS)}
    if CALLS >= 400:
        assert names == {e.name for e in entries}
    singles = sum(len(_targets(e)) for e in entries) * len(BAD)
    assert len(set(_sample(singles))) == singles

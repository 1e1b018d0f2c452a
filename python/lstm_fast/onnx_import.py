"""Reading a whole ONNX model of ``LSTM`` nodes: what :meth:`lstm_fast.LSTM.from_onnx` uses.

A model is accepted when its graph is a chain of ONNX ``LSTM`` nodes and every other
node only moves data around them (the glue PyTorch's and tf2onnx's exporters write:
Transpose, Reshape, Squeeze, Concat, Slice, Shape, zero initial states, ...). The glue
is not matched against a fixed list of patterns: each piece of it is run, with
``onnx.reference.ReferenceEvaluator``, on probe values, and must give exactly what
the layer computes in its place: the graph input (or its transpose) as the first
node's ``X``, the previous node's ``Y`` with its directions merged into the features
as the next node's ``X``, rows of one graph input (or zeros) as a node's initial
states, and one graph input as its ``sequence_lens``. Anything else is a
``ValueError`` naming the node.

The result is a description (:class:`OnnxLSTM`): the layer's options and, per layer
and direction, its weights in lstm_fast's layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._checks import ACTIVATION_PARAMETERS, Spec, activation_spec
from .convert import from_onnx as _weights_from_onnx
from .export import _import_onnx

__all__ = ["GLUE_OPS", "OnnxLSTM", "read_onnx"]

#: The operators accepted between, before and after the LSTM nodes.
GLUE_OPS = frozenset(
    {
        "Cast",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Expand",
        "Flatten",
        "Gather",
        "Identity",
        "Reshape",
        "Shape",
        "Slice",
        "Split",
        "Squeeze",
        "Transpose",
        "Unsqueeze",
    }
)

_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
# Probe sizes: steps and batch differ, so that a transpose cannot pass for the identity.
_PROBE_A, _PROBE_B = 3, 5


@dataclass
class OnnxLSTM:
    """What a model says about the layer (see :func:`read_onnx`)."""

    input_size: int
    hidden_size: int
    num_layers: int
    direction: str  # "forward", "reverse" or "bidirectional"
    batch_first: bool
    bias: bool
    dtype: np.dtype
    clip: float | None
    input_forget: bool
    activations: tuple[Spec, Spec, Spec]
    # [layer][direction] -> (w_ih, w_hh, b_ih, b_hh, peepholes or None)
    weights: list[list[tuple[Any, ...]]] = field(default_factory=list)
    peepholes: bool = False
    #: The graph inputs the layer's forward arguments come from (None: not used).
    x: str = ""
    initial_h: str | None = None
    initial_c: str | None = None
    sequence_lens: str | None = None


def _load(model_or_path: Any) -> Any:
    onnx = _import_onnx("from_onnx")
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if isinstance(model_or_path, (bytes, bytearray, memoryview)):
        what, load = "these bytes do", lambda: onnx.load_from_string(bytes(model_or_path))
    else:
        try:
            path = os.fspath(model_or_path)
        except TypeError:
            raise TypeError(
                f"model_or_path must be an onnx.ModelProto, a path (str or os.PathLike) or "
                f"the model's bytes, got {type(model_or_path).__name__}"
            ) from None
        what, load = f"the file {path!r} does", lambda: onnx.load(path)
    try:
        return load()
    except OSError:
        raise  # a missing or unreadable file says so itself, with its path
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX model
        raise ValueError(
            f"model_or_path: {what} not hold an ONNX model ({type(e).__name__}: {e})"
        ) from None


def _node_name(node: Any, index: int) -> str:
    return f"{node.op_type} node {node.name or f'#{index}'!r}"


class _Graph:
    """The model's graph, with a way to run a piece of it on probe values."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        graph = model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {i.name: i for i in graph.input if i.name not in self.initializers}
        self.producer: dict[str, tuple[int, Any]] = {}
        for index, node in enumerate(graph.node):
            for name in node.output:
                if name:
                    self.producer[name] = (index, node)
        self._to_array = numpy_helper.to_array

    def elem_dtype(self, name: str) -> np.dtype:
        from onnx import helper

        elem = self.inputs[name].type.tensor_type.elem_type
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))

    def probe_sizes(self, name: str) -> tuple[int, int]:
        """Sizes for the first two axes of the graph input ``name``: its own where it
        declares them (an export without dynamic axes may build zeros of that batch
        size), else two different ones, so that a transpose cannot pass for the
        identity."""
        dims = list(self.inputs[name].type.tensor_type.shape.dim)[:2]
        sizes = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 0 for d in dims]
        sizes += [0] * (2 - len(sizes))
        a = sizes[0] or (_PROBE_A if sizes[1] != _PROBE_A else _PROBE_B)
        b = sizes[1] or (_PROBE_B if a != _PROBE_B else _PROBE_A)
        return a, b

    def sources(self, name: str) -> set[str]:
        """The graph inputs ``name`` is computed from (through glue only)."""
        found: set[str] = set()
        seen: set[str] = set()
        stack = [name]
        while stack:
            current = stack.pop()
            if not current or current in seen:
                continue
            seen.add(current)
            if current in self.inputs:
                found.add(current)
            elif current in self.producer and self.producer[current][1].op_type != "LSTM":
                stack.extend(self.producer[current][1].input)
        return found

    def evaluate(self, target: str, feeds: dict[str, np.ndarray], what: str) -> np.ndarray:
        """``target`` computed from ``feeds``, the initializers and glue nodes.

        Reaching anything else (an unfed graph input, another LSTM node's output)
        is a ``ValueError`` that names ``what`` is being computed."""
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        if target in feeds:
            return feeds[target]
        if target in self.initializers:
            return np.asarray(self._to_array(self.initializers[target]))
        needed: dict[int, Any] = {}
        used_initializers = []
        seen: set[str] = set()
        stack = [target]
        while stack:
            name = stack.pop()
            if not name or name in seen or name in feeds:
                continue
            seen.add(name)
            if name in self.initializers:
                used_initializers.append(self.initializers[name])
                continue
            if name in self.producer and self.producer[name][1].op_type != "LSTM":
                index, node = self.producer[name]
                needed[index] = node
                stack.extend(node.input)
                continue
            if name in self.producer:
                index, node = self.producer[name]
                origin = f"the output {name!r} of {_node_name(node, index)}"
            else:
                origin = f"the graph input {name!r}"
            raise ValueError(
                f"{what} is computed from {origin}: from_onnx reads a chain of LSTM nodes "
                f"in which each node's input is the graph input or the previous node's Y"
            )
        graph = helper.make_graph(
            [needed[k] for k in sorted(needed)],
            "probe",
            [
                helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                for k, v in feeds.items()
            ],
            [helper.make_tensor_value_info(target, 0, None)],
            initializer=used_initializers,
        )
        probe = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        probe.ir_version = self.model.ir_version
        try:
            (out,) = ReferenceEvaluator(probe).run([target], feeds)
        except Exception as exc:  # noqa: BLE001 - any failure is "not the expected glue"
            raise ValueError(
                f"{what}: the nodes that compute it fail on probe values ({exc})"
            ) from exc
        return np.asarray(out)


def _decimal(value: float) -> float:
    """A float attribute (stored as float32) as its shortest decimal: 0.7, not
    0.699999988 (the same float32, so the same numbers in a float32 layer)."""
    return float(str(np.float32(value)))


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    for key, value in values.items():
        if isinstance(value, bytes):
            values[key] = value.decode()
        elif isinstance(value, list):
            values[key] = [v.decode() if isinstance(v, bytes) else v for v in value]
    return values


def _activations(attrs: dict[str, Any], directions: int, where: str) -> tuple[Spec, Spec, Spec]:
    """The node's activations (one set for every direction), ONNX's defaults where absent."""
    names = attrs.get("activations") or ["Sigmoid", "Tanh", "Tanh"] * directions
    if len(names) != 3 * directions:
        raise ValueError(
            f"{where}: activations must list 3 per direction ({3 * directions}), got {len(names)}"
        )
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    specs: list[Spec] = []
    for name in names:
        known = {k.lower(): k for k in ACTIVATION_PARAMETERS}
        takes = len(ACTIVATION_PARAMETERS.get(known.get(str(name).lower(), ""), ()))
        # ONNX Runtime's rule: each activation that takes an alpha (beta) gets the next
        # value of activation_alpha (activation_beta).
        alpha = _decimal(alphas.pop(0)) if takes >= 1 and alphas else None
        beta = _decimal(betas.pop(0)) if takes >= 2 and betas else None
        try:
            specs.append(activation_spec(name, alpha, beta))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    first = tuple(specs[:3])
    if directions == 2 and tuple(specs[3:]) != first:
        raise ValueError(
            f"{where}: the two directions have different activations ({names[:3]} and "
            f"{names[3:]}, with their alpha/beta); an lstm_fast LSTM has one set"
        )
    return first  # type: ignore[return-value]


def _canonical(array: np.ndarray, layout: int) -> np.ndarray:
    """A node's X (or initial state) in layout 0 (time-major; directions first)."""
    return array if layout == 0 else np.swapaxes(array, 0, 1)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def read_onnx(model_or_path: Any) -> OnnxLSTM:
    """Read a model made of ``LSTM`` nodes (see the module's doc); ``ValueError`` if it
    is anything else."""
    model = _load(model_or_path)
    graph = _Graph(model)
    nodes = list(model.graph.node)
    lstms = []
    for index, node in enumerate(nodes):
        if node.domain not in ("", "ai.onnx"):
            raise ValueError(
                f"the graph has a {_node_name(node, index)} of domain {node.domain!r}: "
                f"from_onnx reads chains of ONNX LSTM nodes"
            )
        if node.op_type == "LSTM":
            lstms.append((index, node))
        elif node.op_type not in GLUE_OPS:
            raise ValueError(
                f"the graph has a {_node_name(node, index)}: from_onnx reads chains of "
                f"ONNX LSTM nodes, with only reshaping glue ({', '.join(sorted(GLUE_OPS))}) "
                f"around them"
            )
    if not lstms:
        raise ValueError("the graph has no LSTM node")

    rng = np.random.default_rng(0)
    result: OnnxLSTM | None = None
    steps = batch = 0
    x_probe: dict[str, np.ndarray] = {}
    # x and the earlier nodes' outputs: what the glue may read shapes from.
    probes: dict[str, np.ndarray] = {}
    state_sources: dict[str, str | None] = {"initial_h": None, "initial_c": None}
    state_probes: dict[str, np.ndarray] = {}
    for k, (index, node) in enumerate(lstms):
        where = _node_name(node, index)
        attrs = _attributes(node)
        inputs = list(node.input) + [""] * (8 - len(node.input))
        x_in, w_in, r_in, b_in, lens_in, h_in, c_in, p_in = inputs[:8]
        direction = attrs.get("direction", "forward")
        if direction not in _DIRECTIONS:
            raise ValueError(f"{where}: unknown direction {direction!r}")
        directions = _DIRECTIONS[direction]
        layout = int(attrs.get("layout", 0))
        w = graph.evaluate(w_in, {}, f"W of {where}")
        r = graph.evaluate(r_in, {}, f"R of {where}")
        b = None if not b_in else graph.evaluate(b_in, {}, f"B of {where}")
        p = None if not p_in else graph.evaluate(p_in, {}, f"P of {where}")
        if w.ndim != 3 or w.shape[0] != directions or w.shape[1] % 4:
            raise ValueError(
                f"{where}: W must be ({directions}, 4*hidden_size, input_size), got {w.shape}"
            )
        hidden = int(attrs.get("hidden_size", w.shape[1] // 4))
        if w.shape[1] != 4 * hidden:
            raise ValueError(f"{where}: W has {w.shape[1]} rows, hidden_size = {hidden}")
        if p is not None and p.shape != (directions, 3 * hidden):
            raise ValueError(f"{where}: P must be ({directions}, {3 * hidden}), got {p.shape}")
        per_direction = _weights_from_onnx(w, r, b)
        clip = attrs.get("clip")
        clip = None if clip is None else _decimal(clip)
        input_forget = bool(attrs.get("input_forget", 0))
        activations = _activations(attrs, directions, where)
        dtype = np.dtype(np.float64 if w.dtype == np.float64 else np.float32)
        if result is None:
            x_sources = graph.sources(x_in)
            if len(x_sources) != 1:
                raise ValueError(
                    f"X of {where} must come from one graph input, it comes from "
                    f"{sorted(x_sources) or 'none'}"
                )
            (x_name,) = x_sources
            x = rng.standard_normal((*graph.probe_sizes(x_name), w.shape[2]))
            x = x.astype(graph.elem_dtype(x_name))
            x_probe = {x_name: x}
            got = _canonical(graph.evaluate(x_in, x_probe, f"X of {where}"), layout)
            if _same(got, x.astype(got.dtype)):
                batch_first = False
            elif _same(got, np.swapaxes(x, 0, 1).astype(got.dtype)):
                batch_first = True
            else:
                raise ValueError(
                    f"X of {where} must be the graph input {x_name!r} or its first two axes "
                    f"swapped; the nodes between them compute something else"
                )
            steps, batch = got.shape[:2]
            result = OnnxLSTM(
                input_size=w.shape[2],
                hidden_size=hidden,
                num_layers=len(lstms),
                direction=direction,
                batch_first=batch_first,
                bias=False,
                dtype=dtype,
                clip=clip,
                input_forget=input_forget,
                activations=activations,
                x=x_name,
            )
        else:
            same = {
                "hidden_size": (result.hidden_size, hidden),
                "direction": (result.direction, direction),
                "clip": (result.clip, clip),
                "input_forget": (result.input_forget, input_forget),
                "activations": (result.activations, activations),
            }
            for name, (first, this) in same.items():
                if first != this:
                    raise ValueError(
                        f"{where} has {name} {this!r}, the first LSTM node {first!r}: an "
                        f"lstm_fast LSTM has one {name} for all its layers"
                    )
            prev_index, prev = lstms[k - 1]
            prev_layout = int(_attributes(prev).get("layout", 0))
            y = rng.standard_normal((steps, directions, batch, hidden)).astype(dtype)
            y_fed = y if prev_layout == 0 else y.transpose(2, 0, 1, 3)
            got = _canonical(
                graph.evaluate(x_in, {**x_probe, prev.output[0]: y_fed}, f"X of {where}"),
                layout,
            )
            want = y.transpose(0, 2, 1, 3).reshape(steps, batch, directions * hidden)
            if not _same(got, want.astype(got.dtype)):
                raise ValueError(
                    f"X of {where} must be the Y of {_node_name(prev, prev_index)} with its "
                    f"directions next to the features (seq_len, batch, num_directions*"
                    f"hidden_size); the nodes between them compute something else"
                )
        assert result is not None
        result.bias = result.bias or b is not None
        result.peepholes = result.peepholes or p is not None
        result.dtype = np.promote_types(result.dtype, dtype)
        result.weights.append(
            [(*per_direction[d], None if p is None else p[d]) for d in range(directions)]
        )

        rows = len(lstms) * directions
        probes.update(x_probe)
        for key, name in (("initial_h", h_in), ("initial_c", c_in)):
            what = f"{key} of {where}"
            if not name:
                continue
            sources = graph.sources(name) - set(x_probe)
            if not sources:
                value = graph.evaluate(name, probes, what)
                if np.any(value):
                    raise ValueError(
                        f"{what} is a constant that is not zero: an lstm_fast LSTM takes "
                        f"initial states as forward()'s hx; make them a graph input"
                    )
                continue
            if len(sources) > 1 or state_sources[key] not in (None, *sources):
                raise ValueError(f"{what} must come from one graph input for all nodes")
            (source,) = sources
            state_sources[key] = source
            if source not in state_probes:
                full = rng.standard_normal((rows, batch, hidden))
                state_probes[source] = full.astype(graph.elem_dtype(source))
            full = state_probes[source]
            fed = full if layout == 0 else np.swapaxes(full, 0, 1)
            got = _canonical(graph.evaluate(name, {**probes, source: fed}, what), layout)
            want = full[k * directions : (k + 1) * directions]
            if not _same(got, want.astype(got.dtype)):
                raise ValueError(
                    f"{what} must be rows {k * directions}..{(k + 1) * directions - 1} of the "
                    f"graph input {source!r} (num_layers*num_directions, batch, hidden_size)"
                )
        if lens_in and not (graph.sources(lens_in) - set(x_probe)):
            # A constant or one computed from x's shape (tf2onnx writes these): fine
            # when it is the full length of every row.
            got = graph.evaluate(lens_in, probes, f"sequence_lens of {where}")
            if not _same(np.asarray(got, np.int64), np.full(batch, steps, np.int64)):
                raise ValueError(
                    f"sequence_lens of {where} is a constant that is not every row's full "
                    f"length: an lstm_fast LSTM takes lengths as forward()'s lengths; make "
                    f"them a graph input"
                )
        elif lens_in:
            sources = graph.sources(lens_in) - set(x_probe)
            if len(sources) != 1 or result.sequence_lens not in (None, *sources):
                raise ValueError(
                    f"sequence_lens of {where} must be one graph input (the same for every node)"
                )
            (source,) = sources
            lengths = (np.arange(batch) % steps + 1).astype(graph.elem_dtype(source))
            got = graph.evaluate(lens_in, {**probes, source: lengths}, f"sequence_lens of {where}")
            if not _same(np.asarray(got, np.int64), lengths.astype(np.int64)):
                raise ValueError(f"sequence_lens of {where} must be the graph input {source!r}")
            result.sequence_lens = source
        y_shape = (steps, directions, batch, hidden)
        state_shape = (directions, batch, hidden)
        if layout:
            y_shape, state_shape = (batch, steps, directions, hidden), (batch, directions, hidden)
        for name, shape in zip(node.output, (y_shape, state_shape, state_shape)):
            if name:
                probes[name] = rng.standard_normal(shape).astype(dtype)
    assert result is not None
    result.initial_h = state_sources["initial_h"]
    result.initial_c = state_sources["initial_c"]
    return result

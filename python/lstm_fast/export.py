"""ONNX export of an :class:`lstm_fast.LSTM` (needs the optional ``onnx`` package).

The graph has one input, ``x``, in the layer's layout ((T, B, I), or (B, T, I) with
``batch_first``; T and B are dynamic), and three outputs with the shapes of
``LSTM.forward``: ``y`` (T, B, D*H) in x's layout, ``h_n`` and ``c_n`` (L*D, B, H).
Each layer is one ONNX ``LSTM`` node (``direction="bidirectional"`` for two
directions) with the weights as initializers, reordered to ONNX's i, o, f, c gates.
ONNX's ``Y`` is (T, D, B, H); a Transpose and a Reshape turn it into PyTorch's
(T, B, D*H), which is also the next layer's input. Initial states are zeros (the
ONNX inputs ``initial_h``/``initial_c`` are left out), so the model equals
``LSTM.forward(x)`` with ``hx=None`` and no ``lengths``.

The variant options ONNX's operator has are written as its own: peepholes as the
``P`` input, ``clip``, ``input_forget`` and the activations (with every alpha and
beta written out) as attributes, and a layer of one reverse direction (from ONNX's
``direction="reverse"`` or Keras's ``go_backwards``) as ``direction="reverse"``.
``forget_gate=False`` and a projection have no form there: ``NotImplementedError``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ._checks import activation_entry, float_dtype, integer
from ._types import LayerWeights
from .convert import to_onnx

__all__ = ["export_onnx", "to_onnx_model"]


class _Layer(Protocol):
    """What the export reads of a layer: :class:`lstm_fast.LSTM` is one.

    Typed structurally so that this module need not import the layer's (the layer
    imports this one when asked to export), and the imports go one way.
    """

    input_size: int
    hidden_size: int
    num_layers: int
    num_directions: int
    bias: bool
    batch_first: bool
    dtype: np.dtype

    def weights(self, layer: int, direction: int = 0) -> LayerWeights: ...


def _check_layer(layer: Any) -> None:
    missing = [a for a in ("weights", *_Layer.__annotations__) if not hasattr(layer, a)]
    if missing:
        raise TypeError(
            f"layer must be an lstm_fast.LSTM (or have its weights() and sizes), got "
            f"{type(layer).__name__} (without {', '.join(missing)})"
        )


def _check_path(path: Any) -> str | bytes:
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(
            f"path must be a str, bytes or os.PathLike, got {type(path).__name__}"
        ) from None


# The LSTM operator exists since opset 1 (v1, v7, v14, v22 in onnx's history); v7 is
# the first whose semantics ONNX Runtime implements and which the other nodes here
# (Transpose, Reshape with 0/-1, Concat) share.
_MIN_OPSET = 7


def _attributes(options: dict[str, Any], directions: int) -> dict[str, Any]:
    """The LSTM node's attributes for a layer's variant options (the functional API's
    keywords, as ``LSTM._variant`` gives them)."""
    if options.get("forget_gate", True) is False:
        raise NotImplementedError(
            "export_onnx: forget_gate=False (f = 1) has no form in ONNX's LSTM operator"
        )
    attributes: dict[str, Any] = {}
    if options.get("clip") is not None:
        attributes["clip"] = float(options["clip"])
    if options.get("input_forget"):
        attributes["input_forget"] = 1
    acts = options.get("activations")
    if acts is not None:
        specs = [activation_entry(a) for a in acts]
        attributes["activations"] = [name for name, _, _ in specs] * directions
        # ONNX Runtime gives each activation that takes an alpha (beta) the next value.
        alphas = [a for _, a, _ in specs if a is not None]
        betas = [b for _, _, b in specs if b is not None]
        if alphas:
            attributes["activation_alpha"] = [float(a) for a in alphas] * directions
        if betas:
            attributes["activation_beta"] = [float(b) for b in betas] * directions
    return attributes


def _import_onnx(what: str = "export_onnx") -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{what} needs the optional 'onnx' package: pip install onnx "
            "(or pip install 'lstm_fast[peers]')"
        ) from exc
    return onnx


def to_onnx_model(layer: _Layer, opset: int = 14, *, lstm_dtype: Any = np.float32) -> Any:
    """The ``onnx.ModelProto`` of ``layer`` (checked with ``onnx.checker``); see
    :func:`export_onnx`."""
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    _check_layer(layer)
    opset = integer("opset", opset)
    latest = onnx.defs.onnx_opset_version()
    if not _MIN_OPSET <= opset <= latest:
        raise ValueError(f"opset must lie in {_MIN_OPSET}..{latest}, got {opset}")

    elem_types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}
    io_dtype = np.dtype(layer.dtype)
    dtype = float_dtype("lstm_dtype", lstm_dtype)
    elem_type = elem_types[io_dtype]
    cast = dtype != io_dtype
    hidden = layer.hidden_size
    directions = layer.num_directions
    rows = layer.num_layers * directions

    if getattr(layer, "proj_size", 0):
        raise NotImplementedError(
            "export_onnx: a layer with a projection (proj_size) is not exported yet (ONNX's "
            "LSTM operator has no projection)"
        )
    variant: Callable[[int, int], dict[str, Any]] = getattr(
        layer, "_variant", lambda layer, direction: {}
    )
    attributes = _attributes(variant(0, 0), directions)
    if directions == 2:
        direction = "bidirectional"
    else:
        direction = "reverse" if getattr(layer, "_reverse", False) else "forward"

    nodes = []
    initializers = []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    # The engine-side layout is time-major; batch_first is a Transpose at each end.
    current = "x"
    if layer.batch_first:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_time_major"], perm=[1, 0, 2]))
        current = "x_time_major"
    if cast:
        nodes.append(helper.make_node("Cast", [current], ["x_cast"], to=elem_types[dtype]))
        current = "x_cast"
    # Reshape (T, B, D, H) -> (T, B, D*H): 0 copies that dimension from the input.
    merge_shape = const("merge_directions_shape", np.array([0, 0, -1], dtype=np.int64))

    h_outputs, c_outputs = [], []
    for layer_index in range(layer.num_layers):
        per_direction = [
            to_onnx(*layer.weights(layer_index, direction)) for direction in range(directions)
        ]
        w = np.concatenate([wrb[0] for wrb in per_direction]).astype(dtype, copy=False)
        r = np.concatenate([wrb[1] for wrb in per_direction]).astype(dtype, copy=False)
        prefix = f"l{layer_index}"
        inputs = [current, const(f"{prefix}_W", w), const(f"{prefix}_R", r)]
        if layer.bias:
            b = np.concatenate([wrb[2] for wrb in per_direction]).astype(dtype, copy=False)
            inputs.append(const(f"{prefix}_B", b))
        options = [variant(layer_index, d) for d in range(directions)]
        if "peepholes" in options[0]:
            p = np.stack([o["peepholes"] for o in options]).astype(dtype, copy=False)
            inputs += [""] * (7 - len(inputs)) + [const(f"{prefix}_P", p)]
        y_name, h_name, c_name = f"{prefix}_Y", f"{prefix}_Y_h", f"{prefix}_Y_c"
        nodes.append(
            helper.make_node(
                "LSTM",
                inputs,
                [y_name, h_name, c_name],
                name=f"lstm_{prefix}",
                hidden_size=hidden,
                direction=direction,
                **attributes,
            )
        )
        # Y is (T, D, B, H); PyTorch's layout puts the directions next to the features.
        nodes.append(
            helper.make_node("Transpose", [y_name], [f"{prefix}_Y_tbdh"], perm=[0, 2, 1, 3])
        )
        nodes.append(
            helper.make_node("Reshape", [f"{prefix}_Y_tbdh", merge_shape], [f"{prefix}_out"])
        )
        current = f"{prefix}_out"
        h_outputs.append(h_name)
        c_outputs.append(c_name)

    def finish(source: str, name: str) -> None:
        if cast:
            nodes.append(helper.make_node("Cast", [source], [name], to=elem_type))
        else:
            nodes.append(helper.make_node("Identity", [source], [name]))

    if layer.batch_first:
        nodes.append(helper.make_node("Transpose", [current], ["y_batch_major"], perm=[1, 0, 2]))
        current = "y_batch_major"
    finish(current, "y")
    # Y_h of one layer is (D, B, H), forward direction first: stacking the layers gives
    # PyTorch's (L*D, B, H) with row l*D + d.
    for outputs, name in ((h_outputs, "h_n"), (c_outputs, "c_n")):
        if len(outputs) == 1:
            finish(outputs[0], name)
        else:
            nodes.append(helper.make_node("Concat", outputs, [f"{name}_all"], axis=0))
            finish(f"{name}_all", name)

    steps, batch = "seq_len", "batch"
    x_shape: list[str | int] = (
        [batch, steps, layer.input_size] if layer.batch_first else [steps, batch, layer.input_size]
    )
    y_shape: list[str | int] = (
        [batch, steps, directions * hidden]
        if layer.batch_first
        else [steps, batch, directions * hidden]
    )
    graph = helper.make_graph(
        nodes,
        "lstm_fast_LSTM",
        [helper.make_tensor_value_info("x", elem_type, x_shape)],
        [
            helper.make_tensor_value_info("y", elem_type, y_shape),
            helper.make_tensor_value_info("h_n", elem_type, [rows, batch, hidden]),
            helper.make_tensor_value_info("c_n", elem_type, [rows, batch, hidden]),
        ],
        initializer=initializers,
    )
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opset_ids, producer_name="lstm_fast")
    # The newest IR version onnx writes may be newer than the runtime reading it; the
    # oldest one that knows the opset is the most portable choice.
    # (At least 4: older IR versions want every initializer listed as a graph input.)
    model.ir_version = max(4, helper.find_min_ir_version_for(opset_ids))
    model.doc_string = repr(layer)
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(
    layer: _Layer,
    path: str | os.PathLike[str],
    opset: int = 14,
    *,
    lstm_dtype: Any = np.float32,
) -> Any:
    """Write ``layer`` as an ONNX model to ``path``; returns the ``onnx.ModelProto``.

    Run by ONNX Runtime, the model's outputs ``y``, ``h_n``, ``c_n`` equal
    ``layer.forward(x)``'s (zero initial state, full-length rows). ``x`` and the
    outputs have the layer's dtype. ``lstm_dtype`` is the dtype the ``LSTM`` nodes
    compute in: ONNX Runtime implements that operator for float32 only, so a float64
    layer is exported with Casts around float32 nodes (float32 accuracy) unless
    ``lstm_dtype=np.float64`` asks for double nodes, for runtimes that have them.
    """
    onnx = _import_onnx()
    target = _check_path(path)
    model = to_onnx_model(layer, opset=opset, lstm_dtype=lstm_dtype)
    onnx.save(model, target)
    return model

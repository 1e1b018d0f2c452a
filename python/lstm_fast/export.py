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
``forget_gate=False`` has no form there: ``NotImplementedError``.

A layer with a projection (``proj_size``, PyTorch's LSTMP) has no form in ONNX's
``LSTM`` operator either, and PyTorch's exporter refuses it. Here each of its
layers and directions is written out as the cell itself: the input product of
every step at once (``MatMul`` with ``W_ih^T`` plus the summed biases, (T, B, 4H)),
then a ``Scan`` over time whose body runs one step, ``a = xp_t + h_{t-1} R``,
``Split`` into the gates i, f, g, o (the layer's order), the activations, ``c_t``,
``m_t = o ⊙ σ_h(c_t)`` and ``h_t = m_t W_hr^T`` (P wide). The reverse direction
is the same Scan with ``scan_input_directions``/``scan_output_directions`` = 1.
Every variant option works in that body: peepholes, ``clip`` (as ``Max``/``Min``),
``input_forget``, ``forget_gate=False`` and the activations (those that are not
Sigmoid, Tanh or Relu as the elementwise operators that define them, so that they
run in both dtypes). The graph's input and outputs are those above, with ``y``
(T, B, D*P) and ``h_n`` (L*D, B, P); ``c_n`` stays H wide. It needs opset 9
(``Scan`` with directions, ``ConstantOfShape``) or later.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ._checks import PLAIN_ACTIVATIONS, activation_entry, float_dtype, integer
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
    # Neither has an ONNX form in the export yet; writing the model without them
    # would compute something else (zoneout's expectation at inference is not the
    # identity, as the dropouts' are).
    if getattr(layer, "layer_norm", False):
        raise NotImplementedError(
            "export_onnx: layer_norm=True (the LayerNorm LSTM) cannot be exported yet"
        )
    zoneout = getattr(layer, "zoneout", 0.0)
    if any(np.atleast_1d(np.asarray(zoneout, dtype=float))):
        raise NotImplementedError(
            f"export_onnx: zoneout={zoneout!r} cannot be exported yet (at "
            f"inference it mixes each state with the previous one)"
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
    proj = int(getattr(layer, "proj_size", 0) or 0)
    state = proj or hidden  # the width of h: y, h_n

    variant: Callable[[int, int], dict[str, Any]] = getattr(
        layer, "_variant", lambda layer, direction: {}
    )
    if proj and opset < _MIN_SCAN_OPSET:
        raise ValueError(
            f"opset must be >= {_MIN_SCAN_OPSET} for a layer with a projection (proj_size: "
            f"written as a Scan over time, as ONNX's LSTM operator has no projection), got {opset}"
        )

    nodes: list[Any] = []
    initializers: list[Any] = []

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

    if proj:
        current, h_outputs, c_outputs = _scan_layers(
            layer, variant, current, dtype, elem_types[dtype], opset, nodes, const
        )
    else:
        current, h_outputs, c_outputs = _lstm_layers(layer, variant, current, dtype, nodes, const)

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
        [batch, steps, directions * state]
        if layer.batch_first
        else [steps, batch, directions * state]
    )
    graph = helper.make_graph(
        nodes,
        "lstm_fast_LSTM",
        [helper.make_tensor_value_info("x", elem_type, x_shape)],
        [
            helper.make_tensor_value_info("y", elem_type, y_shape),
            helper.make_tensor_value_info("h_n", elem_type, [rows, batch, state]),
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


_Const = Callable[[str, np.ndarray], str]


def _lstm_layers(
    layer: _Layer,
    variant: Callable[[int, int], dict[str, Any]],
    current: str,
    dtype: np.dtype,
    nodes: list[Any],
    const: _Const,
) -> tuple[str, list[str], list[str]]:
    """One ONNX ``LSTM`` node per layer; returns (y, [Y_h per layer], [Y_c per layer])."""
    from onnx import helper

    directions = layer.num_directions
    attributes = _attributes(variant(0, 0), directions)
    if directions == 2:
        direction = "bidirectional"
    else:
        direction = "reverse" if getattr(layer, "_reverse", False) else "forward"
    # Reshape (T, B, D, H) -> (T, B, D*H): 0 copies that dimension from the input.
    merge_shape = const("merge_directions_shape", np.array([0, 0, -1], dtype=np.int64))
    h_outputs: list[str] = []
    c_outputs: list[str] = []
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
                hidden_size=layer.hidden_size,
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
    return current, h_outputs, c_outputs


# Scan with scan_input_directions / scan_output_directions (v9) and ConstantOfShape (9).
_MIN_SCAN_OPSET = 9


def _scan_layers(
    layer: _Layer,
    variant: Callable[[int, int], dict[str, Any]],
    current: str,
    dtype: np.dtype,
    elem: int,
    opset: int,
    nodes: list[Any],
    const: _Const,
) -> tuple[str, list[str], list[str]]:
    """The layers of a layer with a projection, each direction a ``Scan`` over time
    whose body is one step of the cell (module docstring); returns
    (y, [h_n (1, B, P) per layer and direction], [c_n (1, B, H) ...])."""
    from onnx import helper

    hidden = layer.hidden_size
    proj = int(layer.proj_size)  # type: ignore[attr-defined]
    directions = layer.num_directions
    # Zero initial states (B, P) and (B, H), B read from x at run time.
    nodes.append(helper.make_node("Shape", [current], ["x_shape"]))
    nodes.append(
        helper.make_node("Gather", ["x_shape", const("batch_axis", np.array([1]))], ["batch_dim"])
    )
    zero_states = []
    for width, name in ((proj, "h"), (hidden, "c")):
        nodes.append(
            helper.make_node(
                "Concat",
                ["batch_dim", const(f"{name}_width", np.array([width], np.int64))],
                [f"{name}0_shape"],
                axis=0,
            )
        )
        nodes.append(
            helper.make_node(
                "ConstantOfShape",
                [f"{name}0_shape"],
                [f"{name}0_zeros"],
                value=helper.make_tensor("value", elem, [1], [0.0]),
            )
        )
        zero_states.append(f"{name}0_zeros")
    # (B, W) -> (1, B, W), for stacking the final states; -1: B.
    row_shapes = {
        width: const(f"state_row_shape_{width}", np.array([1, -1, width], np.int64))
        for width in {proj, hidden}
    }

    h_outputs: list[str] = []
    c_outputs: list[str] = []
    for layer_index in range(layer.num_layers):
        ys = []
        for d in range(directions):
            prefix = f"l{layer_index}" + ("_reverse" if d else "")
            w_ih, w_hh, b_ih, b_hh = layer.weights(layer_index, d)
            options = variant(layer_index, d)
            w_hr = options.get("w_hr")
            if w_hr is None or np.shape(w_hr) != (proj, hidden):
                raise ValueError(
                    f"export_onnx: layer {layer_index} direction {d} has proj_size = {proj} "
                    f"but no projection weights w_hr of shape ({proj}, {hidden})"
                )
            # The input product of every step at once, outside the loop.
            xp = f"{prefix}_xp"
            w_t = np.asarray(w_ih, dtype).T
            nodes.append(
                helper.make_node("MatMul", [current, const(f"{prefix}_W_ih_T", w_t)], [xp])
            )
            if b_ih is not None or b_hh is not None:
                bias = np.zeros(4 * hidden, dtype)
                for b in (b_ih, b_hh):
                    if b is not None:
                        bias = bias + np.asarray(b, dtype)
                nodes.append(
                    helper.make_node("Add", [xp, const(f"{prefix}_bias", bias)], [f"{xp}_b"])
                )
                xp = f"{xp}_b"
            body = _step_body(
                prefix,
                hidden,
                np.asarray(w_hh, dtype),
                np.asarray(w_hr, dtype),
                options,
                dtype,
                elem,
                opset,
                const,
            )
            reverse = int(d == 1 or bool(getattr(layer, "_reverse", False)))
            h_last, c_last, y = f"{prefix}_h_n", f"{prefix}_c_n", f"{prefix}_y"
            nodes.append(
                helper.make_node(
                    "Scan",
                    [*zero_states, xp],
                    [h_last, c_last, y],
                    name=f"scan_{prefix}",
                    body=body,
                    num_scan_inputs=1,
                    scan_input_directions=[reverse],
                    scan_output_directions=[reverse],
                )
            )
            for last, width, outputs in ((h_last, proj, h_outputs), (c_last, hidden, c_outputs)):
                nodes.append(
                    helper.make_node("Reshape", [last, row_shapes[width]], [f"{last}_row"])
                )
                outputs.append(f"{last}_row")
            ys.append(y)
        if len(ys) == 1:
            current = ys[0]
        else:
            current = f"l{layer_index}_out"
            nodes.append(helper.make_node("Concat", ys, [current], axis=2))
    return current, h_outputs, c_outputs


def _step_body(
    prefix: str,
    hidden: int,
    w_hh: np.ndarray,
    w_hr: np.ndarray,
    options: dict[str, Any],
    dtype: np.dtype,
    elem: int,
    opset: int,
    const: _Const,
) -> Any:
    """The Scan body of one direction: (h_{t-1}, c_{t-1}, xp_t) -> (h_t, c_t, y_t).

    The weights are initializers of the main graph, which the body reads from the
    outer scope. Every name carries ``prefix``: the bodies of a model share one
    name space with the main graph.
    """
    from onnx import helper

    body_nodes: list[Any] = []
    count = [0]

    def node(op: str, inputs: list[str], **attributes: Any) -> str:
        count[0] += 1
        out = f"{prefix}_s{count[0]}_{op.lower()}"
        body_nodes.append(helper.make_node(op, inputs, [out], **attributes))
        return out

    scalars: dict[str, str] = {}

    def scalar(name: str, value: float) -> str:
        if name not in scalars:
            scalars[name] = const(f"{prefix}_{name}", np.array(value, dtype))
        return scalars[name]

    clip = options.get("clip")
    lower = upper = ""
    if clip is not None:
        lower, upper = scalar("clip_low", -float(clip)), scalar("clip_high", float(clip))

    def clamp(z: str) -> str:
        return z if clip is None else node("Min", [node("Max", [z, lower]), upper])

    specs = [activation_entry(a) for a in (options.get("activations") or PLAIN_ACTIVATIONS)]

    def activate(which: int, z: str) -> str:
        return _activation(specs[which], z, f"act{which}", node, scalar)

    h_prev, c_prev, xp_t = f"{prefix}_h_prev", f"{prefix}_c_prev", f"{prefix}_xp_t"
    recurrent = node("MatMul", [h_prev, const(f"{prefix}_W_hh_T", w_hh.T)])
    a = node("Add", [xp_t, recurrent])
    gates = [f"{prefix}_z_{g}" for g in "ifgo"]
    split = [hidden] * 4
    if opset >= 13:  # the sizes became an input in opset 13
        body_nodes.append(
            helper.make_node(
                "Split", [a, const(f"{prefix}_split", np.array(split, np.int64))], gates, axis=1
            )
        )
    else:
        body_nodes.append(helper.make_node("Split", [a], gates, axis=1, split=split))
    z_i, z_f, z_g, z_o = gates
    peepholes = options.get("peepholes")
    if peepholes is not None:
        p = np.asarray(peepholes, dtype)
        # ONNX's order [p_i, p_o, p_f].
        p_i, p_o, p_f = (
            const(f"{prefix}_p_{g}", p[k * hidden : (k + 1) * hidden]) for k, g in enumerate("iof")
        )
        z_i = node("Add", [z_i, node("Mul", [c_prev, p_i])])
        z_f = node("Add", [z_f, node("Mul", [c_prev, p_f])])
    i = activate(0, clamp(z_i))
    g = activate(1, clamp(z_g))
    i_g = node("Mul", [i, g])
    if options.get("forget_gate", True) is False:
        c = node("Add", [c_prev, i_g])  # f = 1
    else:
        if options.get("input_forget"):
            f = node("Sub", [scalar("one", 1.0), i])
        else:
            f = activate(0, clamp(z_f))
        c = node("Add", [node("Mul", [f, c_prev]), i_g])
    if peepholes is not None:
        z_o = node("Add", [z_o, node("Mul", [c, p_o])])
    o = activate(0, clamp(z_o))
    m = node("Mul", [o, activate(2, c)])
    h = node("MatMul", [m, const(f"{prefix}_W_hr_T", w_hr.T)])
    outputs = [f"{prefix}_h", f"{prefix}_c", f"{prefix}_y_t"]
    body_nodes.append(helper.make_node("Identity", [h], [outputs[0]]))
    body_nodes.append(helper.make_node("Identity", [c], [outputs[1]]))
    body_nodes.append(helper.make_node("Identity", [h], [outputs[2]]))
    proj = w_hr.shape[0]
    return helper.make_graph(
        body_nodes,
        f"{prefix}_step",
        [
            helper.make_tensor_value_info(h_prev, elem, ["batch", proj]),
            helper.make_tensor_value_info(c_prev, elem, ["batch", hidden]),
            helper.make_tensor_value_info(xp_t, elem, ["batch", 4 * hidden]),
        ],
        [
            helper.make_tensor_value_info(outputs[0], elem, ["batch", proj]),
            helper.make_tensor_value_info(outputs[1], elem, ["batch", hidden]),
            helper.make_tensor_value_info(outputs[2], elem, ["batch", proj]),
        ],
    )


def _activation(
    spec: tuple[str, float | None, float | None],
    z: str,
    tag: str,
    node: Callable[..., str],
    scalar: Callable[[str, float], str],
) -> str:
    """The nodes of one activation applied to ``z`` (docs/variants.md, 'Activations').

    Sigmoid, Tanh and Relu are ONNX operators in both dtypes; the others are built
    from the elementwise operators that define them (ONNX Runtime implements
    HardSigmoid, Elu, Softplus, ... for float32 only), with the reference's
    branches: ``a >= 0`` as ``not (a < 0)``, Elu's exponential of ``min(a, 0)`` and
    Softplus as ``max(a, 0) + log(1 + exp(-|a|))``, which cannot overflow.
    """
    name, alpha, beta = spec
    if name in ("Sigmoid", "Tanh", "Relu"):
        return node(name, [z])
    if name == "Softsign":
        return node("Div", [z, node("Add", [scalar("one", 1.0), node("Abs", [z])])])
    if name == "Softplus":
        tail = node(
            "Log",
            [node("Add", [scalar("one", 1.0), node("Exp", [node("Neg", [node("Abs", [z])])])])],
        )
        return node("Add", [node("Max", [z, scalar("zero", 0.0)]), tail])
    assert alpha is not None
    a = scalar(f"{tag}_alpha", alpha)
    if name == "LeakyRelu":
        return node("Where", [node("Less", [z, scalar("zero", 0.0)]), node("Mul", [z, a]), z])
    if name == "ThresholdedRelu":
        return node("Where", [node("Greater", [z, a]), z, scalar("zero", 0.0)])
    if name == "Elu":
        negative = node("Min", [z, scalar("zero", 0.0)])
        expm1 = node("Sub", [node("Exp", [negative]), scalar("one", 1.0)])
        return node("Where", [node("Less", [z, scalar("zero", 0.0)]), node("Mul", [expm1, a]), z])
    assert beta is not None
    b = scalar(f"{tag}_beta", beta)
    if name == "Affine":
        return node("Add", [node("Mul", [z, a]), b])
    if name == "ScaledTanh":
        return node("Mul", [node("Tanh", [node("Mul", [z, b])]), a])
    if name == "HardSigmoid":
        linear = node("Add", [node("Mul", [z, a]), b])
        return node("Min", [node("Max", [linear, scalar("zero", 0.0)]), scalar("one", 1.0)])
    # The activations were checked against ONNX's eleven names, all handled above.
    raise AssertionError(f"export_onnx: activation {name} has no Scan form")  # pragma: no cover


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
    A layer with a projection is written as Scans over the cell (module docstring);
    their bodies compute in ``lstm_dtype`` too, and ONNX Runtime runs them in both.
    """
    onnx = _import_onnx()
    target = _check_path(path)
    model = to_onnx_model(layer, opset=opset, lstm_dtype=lstm_dtype)
    onnx.save(model, target)
    return model

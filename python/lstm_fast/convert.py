"""Weight layouts of other LSTM implementations, to and from lstm_fast's.

lstm_fast stores one direction of one layer the way PyTorch does: ``w_ih`` (4H, I),
``w_hh`` (4H, H), ``b_ih`` and ``b_hh`` (4H,), gate blocks in the order i, f, g, o.
The functions here rearrange (never recompute) weights so that a model trained in one
framework runs unchanged in another:

* Keras / TensorFlow ``LSTM``: ``kernel`` (I, 4H), ``recurrent_kernel`` (H, 4H) and one
  ``bias`` (4H,), gate order i, f, c, o (the same order, transposed matrices, the two
  biases summed). Keras's defaults ``activation="tanh"``, ``recurrent_activation="sigmoid"``
  are the activations lstm_fast computes.
* ONNX ``LSTM``: ``W`` (D, 4H, I), ``R`` (D, 4H, H), ``B`` (D, 8H), gate order i, o, f, c,
  one slice of the leading axis per direction (forward first).
* The textbook form ``f_t = sigmoid(W_f @ [x_t, h_{t-1}] + b_f)`` with one (H, I+H) matrix
  per gate.

Every function accepts NumPy arrays, anything :func:`numpy.asarray` understands, and
torch tensors (without importing torch), and returns new C-contiguous arrays in the
dtype the functional API would compute those inputs in (docs/api.md, 'Dtypes'): the
widest floating input, float16 as float32, float64 when none is floating.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._checks import (
    check_shape,
    compute_dtype,
    flag,
    hidden_from_gate_rows,
    mapping,
    one_of,
    positive_int,
    real_array,
)

__all__ = [
    "from_gate_matrices",
    "from_keras",
    "from_onnx",
    "keras_activation",
    "keras_lstm",
    "to_gate_matrices",
    "to_keras",
    "to_onnx",
]

# Block k of the ONNX layout (i, o, f, c) is block _ONNX_FROM_TORCH[k] of ours (i, f, g, o).
_ONNX_FROM_TORCH = (0, 3, 1, 2)
# ...and the inverse permutation: block k of ours is block _TORCH_FROM_ONNX[k] of ONNX's.
_TORCH_FROM_ONNX = (0, 2, 3, 1)


def _optional(name: str, value: Any) -> np.ndarray | None:
    return None if value is None else real_array(name, value)


def _dtype(*arrays: np.ndarray | None) -> np.dtype:
    return compute_dtype(a.dtype for a in arrays if a is not None)


def _check_pytorch(
    w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, int, np.dtype]:
    w_ih_a = real_array("w_ih", w_ih)
    w_hh_a = real_array("w_hh", w_hh)
    b_ih_a = _optional("b_ih", b_ih)
    b_hh_a = _optional("b_hh", b_hh)
    dtype = _dtype(w_ih_a, w_hh_a, b_ih_a, b_hh_a)
    hidden = hidden_from_gate_rows("w_ih", w_ih_a.shape, "(4*hidden_size, input_size)")
    check_shape("w_hh", w_hh_a, "(4*hidden_size, hidden_size)", (4 * hidden, hidden))
    for name, bias in (("b_ih", b_ih_a), ("b_hh", b_hh_a)):
        if bias is not None:
            check_shape(name, bias, "(4*hidden_size,)", (4 * hidden,))
    return w_ih_a, w_hh_a, b_ih_a, b_hh_a, hidden, dtype


def _permute_gates(array: np.ndarray, order: tuple[int, ...], axis: int) -> np.ndarray:
    """Reorder the four gate blocks of ``array`` along ``axis`` (a new contiguous array)."""
    blocks = np.split(array, 4, axis=axis)
    return np.ascontiguousarray(np.concatenate([blocks[k] for k in order], axis=axis))


# ---------------------------------------------------------------------------- Keras


def to_keras(w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None) -> list[np.ndarray]:
    """PyTorch-layout weights as ``[kernel, recurrent_kernel, bias]`` for Keras.

    The list is what ``keras.layers.LSTM(hidden_size).set_weights`` takes: ``kernel``
    (I, 4H), ``recurrent_kernel`` (H, 4H), ``bias`` (4H,) = ``b_ih + b_hh`` (zeros when
    both are ``None``; drop it for a layer built with ``use_bias=False``).
    """
    w_ih_a, w_hh_a, b_ih_a, b_hh_a, hidden, dtype = _check_pytorch(w_ih, w_hh, b_ih, b_hh)
    bias = np.zeros(4 * hidden, dtype=dtype)
    for b in (b_ih_a, b_hh_a):
        if b is not None:
            bias += b
    return [
        np.ascontiguousarray(w_ih_a.T, dtype=dtype),
        np.ascontiguousarray(w_hh_a.T, dtype=dtype),
        bias,
    ]


def from_keras(
    kernel: Any, recurrent_kernel: Any, bias: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Keras ``LSTM`` weights (``layer.get_weights()``) as ``(w_ih, w_hh, b_ih, b_hh)``.

    Keras has one bias; it becomes ``b_ih`` and ``b_hh`` is zeros (both are ``None``
    when ``bias`` is ``None``). A bias of shape (8H,), as CuDNN-style layers store it,
    is split into ``b_ih`` (first half) and ``b_hh``.
    """
    kernel_a = real_array("kernel", kernel)
    recurrent_a = real_array("recurrent_kernel", recurrent_kernel)
    bias_a = _optional("bias", bias)
    dtype = _dtype(kernel_a, recurrent_a, bias_a)
    symbols = "(hidden_size, 4*hidden_size)"
    hidden = hidden_from_gate_rows("recurrent_kernel", recurrent_a.shape, symbols, axis=1)
    check_shape("recurrent_kernel", recurrent_a, symbols, (hidden, 4 * hidden))
    if kernel_a.ndim != 2 or kernel_a.shape[1] != 4 * hidden:
        raise ValueError(
            f"kernel must have shape (input_size, 4*hidden_size) = (input_size, {4 * hidden}), "
            f"got {kernel_a.shape}"
        )
    w_ih_out = np.ascontiguousarray(kernel_a.T, dtype=dtype)
    w_hh_out = np.ascontiguousarray(recurrent_a.T, dtype=dtype)
    if bias_a is None:
        return w_ih_out, w_hh_out, None, None
    if bias_a.shape == (4 * hidden,):
        return w_ih_out, w_hh_out, bias_a.astype(dtype, copy=True), np.zeros(4 * hidden, dtype)
    if bias_a.shape == (8 * hidden,):
        return (
            w_ih_out,
            w_hh_out,
            bias_a[: 4 * hidden].astype(dtype, copy=True),
            bias_a[4 * hidden :].astype(dtype, copy=True),
        )
    raise ValueError(
        f"bias must have shape (4*hidden_size,) = ({4 * hidden},) or "
        f"(8*hidden_size,) = ({8 * hidden},), got {bias_a.shape}"
    )


# Keras 3's activations that are ONNX activations, as (ONNX name, alpha, beta).
# hard_sigmoid is relu6(x + 3) / 6 in Keras 3 (Keras 2 had ONNX's 0.2 x + 0.5);
# leaky_relu's default negative_slope is 0.2.
_KERAS_ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "sigmoid": ("Sigmoid", None, None),
    "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None),
    "hard_sigmoid": ("HardSigmoid", 1 / 6, 0.5),
    "linear": ("Affine", 1.0, 0.0),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
    "elu": ("Elu", 1.0, None),
    "leaky_relu": ("LeakyRelu", 0.2, None),
}


def keras_activation(name: str, activation: Any) -> tuple[str, float | None, float | None]:
    """A Keras activation (its name, serialized form or function) as ``(ONNX name, alpha,
    beta)``; one that ONNX cannot name is a ``ValueError`` naming ``name``."""
    if activation is None:
        key: Any = "linear"
    elif isinstance(activation, str):
        key = activation
    elif isinstance(activation, Mapping):  # Keras's serialized form of a function
        key = activation.get("config")
    else:
        key = getattr(activation, "__name__", None)
    if not isinstance(key, str) or key not in _KERAS_ACTIVATIONS:
        raise ValueError(
            f"{name} {activation!r:.80} has no ONNX LSTM equivalent; lstm_fast runs the "
            f"Keras activations {', '.join(_KERAS_ACTIVATIONS)}"
        )
    return _KERAS_ACTIVATIONS[key]


def _keras_parts(layer_or_config: Any) -> tuple[Mapping[str, Any], list[Any], bool]:
    """``(LSTM config, weights, bidirectional)`` of a Keras layer or ``(config, weights)``."""
    if isinstance(layer_or_config, (tuple, list)):
        if len(layer_or_config) != 2:
            raise ValueError(
                f"layer_or_config must be a Keras layer or (config, weights), got a "
                f"{type(layer_or_config).__name__} of {len(layer_or_config)}"
            )
        config, weights = layer_or_config
        mapping("layer_or_config[0]", config, "values (a Keras layer's get_config())")
        weights = list(weights)
    elif hasattr(layer_or_config, "get_config") and hasattr(layer_or_config, "get_weights"):
        config = layer_or_config.get_config()
        weights = list(layer_or_config.get_weights())
        if not weights:
            raise ValueError("layer_or_config: the Keras layer has no weights yet: build it first")
    else:
        raise TypeError(
            f"layer_or_config must be a keras.layers.LSTM, Bidirectional(LSTM) or "
            f"(config, weights), got {type(layer_or_config).__name__}"
        )
    inner = config.get("layer")
    if inner is None:
        return config, weights, False
    # Bidirectional: the wrapped LSTM's config (serialized as {"class_name", "config"}).
    merge = config.get("merge_mode", "concat")
    if merge != "concat":
        raise ValueError(
            f"Bidirectional merge_mode {merge!r}: lstm_fast concatenates the directions "
            f"(merge_mode='concat')"
        )
    if isinstance(inner, Mapping) and "config" in inner:
        if inner.get("class_name", "LSTM") != "LSTM":
            raise ValueError(f"Bidirectional wraps a {inner.get('class_name')}, not an LSTM")
        inner = inner["config"]
    backward = config.get("backward_layer")
    if isinstance(backward, Mapping):
        back = backward.get("config", backward)
        for key in ("units", "activation", "recurrent_activation", "use_bias"):
            if back.get(key) != inner.get(key):
                raise ValueError(
                    f"Bidirectional: the backward layer's {key} differs from the forward "
                    f"layer's; an lstm_fast LSTM has one"
                )
    return inner, weights, True


def keras_lstm(layer_or_config: Any) -> dict[str, Any]:
    """What a Keras 3 ``LSTM`` or ``Bidirectional(LSTM)`` is, in lstm_fast's terms.

    ``layer_or_config`` is the layer or ``(config, weights)`` (its ``get_config()`` and
    ``get_weights()``). Returns a dict: ``input_size``, ``hidden_size``, ``bias``,
    ``dtype``, ``activations`` (σ_f = ``recurrent_activation``, σ_g = σ_h =
    ``activation``), ``go_backwards`` and ``weights``, one ``(w_ih, w_hh, b_ih, b_hh)``
    per direction. ``unit_forget_bias``, dropout and ``return_sequences`` do not change
    loaded weights' outputs and are ignored.
    """
    config, weights, bidirectional = _keras_parts(layer_or_config)
    hidden = positive_int("units", config.get("units"))
    use_bias = flag("use_bias", config.get("use_bias", True))
    activations = (
        keras_activation("recurrent_activation", config.get("recurrent_activation", "sigmoid")),
        keras_activation("activation", config.get("activation", "tanh")),
        keras_activation("activation", config.get("activation", "tanh")),
    )
    go_backwards = flag("go_backwards", config.get("go_backwards", False))
    per = 3 if use_bias else 2
    directions = 2 if bidirectional else 1
    if len(weights) != per * directions:
        raise ValueError(
            f"weights must hold {per * directions} arrays (kernel, recurrent_kernel"
            f"{', bias' if use_bias else ''}{' per direction' if bidirectional else ''}), "
            f"got {len(weights)}"
        )
    converted = []
    for d in range(directions):
        part = weights[d * per : (d + 1) * per]
        w_ih, w_hh, b_ih, b_hh = from_keras(*part)
        if w_hh.shape[1] != hidden:
            raise ValueError(
                f"recurrent_kernel must be ({hidden}, {4 * hidden}), got {w_hh.T.shape}"
            )
        converted.append((w_ih, w_hh, b_ih, b_hh))
    return {
        "input_size": converted[0][0].shape[1],
        "hidden_size": hidden,
        "bias": use_bias,
        "dtype": _dtype(*converted[0]),
        "activations": activations,
        "go_backwards": go_backwards and not bidirectional,
        "weights": converted,
    }


# ----------------------------------------------------------------------------- ONNX


def to_onnx(
    w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One direction's weights as ONNX ``LSTM`` inputs ``(W, R, B)``.

    ``W`` (1, 4H, I), ``R`` (1, 4H, H), ``B`` (1, 8H) = ``[Wb, Rb]``, gate order i, o, f, c.
    A missing bias is zeros. For a bidirectional ONNX LSTM concatenate the forward and
    the reverse direction's arrays along axis 0.
    """
    w_ih_a, w_hh_a, b_ih_a, b_hh_a, hidden, dtype = _check_pytorch(w_ih, w_hh, b_ih, b_hh)
    w = _permute_gates(w_ih_a.astype(dtype, copy=False), _ONNX_FROM_TORCH, axis=0)[None]
    r = _permute_gates(w_hh_a.astype(dtype, copy=False), _ONNX_FROM_TORCH, axis=0)[None]
    zeros = np.zeros(4 * hidden, dtype=dtype)
    b = np.concatenate(
        [
            _permute_gates(
                (zeros if b_ih_a is None else b_ih_a).astype(dtype, copy=False),
                _ONNX_FROM_TORCH,
                axis=0,
            ),
            _permute_gates(
                (zeros if b_hh_a is None else b_hh_a).astype(dtype, copy=False),
                _ONNX_FROM_TORCH,
                axis=0,
            ),
        ]
    )[None]
    return w, r, b


def from_onnx(
    W: Any,
    R: Any,
    B: Any = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """ONNX ``LSTM`` inputs as one ``(w_ih, w_hh, b_ih, b_hh)`` per direction.

    ``W`` (D, 4H, I), ``R`` (D, 4H, H), ``B`` (D, 8H) or ``None`` (then both biases are
    ``None``); the list has the forward direction first. A 2-D ``W``/``R`` (and 1-D
    ``B``) is read as a single direction. Peepholes (``P``) and the attributes that
    change the cell (``input_forget``, other activations) have no lstm_fast equivalent.
    """
    w_a = real_array("W", W)
    r_a = real_array("R", R)
    b_a = _optional("B", B)
    dtype = _dtype(w_a, r_a, b_a)
    if w_a.ndim == 2:
        w_a = w_a[None]
    if r_a.ndim == 2:
        r_a = r_a[None]
    if b_a is not None and b_a.ndim == 1:
        b_a = b_a[None]
    symbols = "(num_directions, 4*hidden_size, input_size)"
    hidden = hidden_from_gate_rows("W", w_a.shape, symbols, ndim=3, axis=1)
    directions = w_a.shape[0]
    symbols = "(num_directions, 4*hidden_size, hidden_size)"
    check_shape("R", r_a, symbols, (directions, 4 * hidden, hidden))
    if b_a is not None:
        check_shape("B", b_a, "(num_directions, 8*hidden_size)", (directions, 8 * hidden))
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] = []
    for d in range(directions):
        w_ih_out = _permute_gates(w_a[d].astype(dtype, copy=False), _TORCH_FROM_ONNX, axis=0)
        w_hh_out = _permute_gates(r_a[d].astype(dtype, copy=False), _TORCH_FROM_ONNX, axis=0)
        if b_a is None:
            out.append((w_ih_out, w_hh_out, None, None))
            continue
        bias = b_a[d].astype(dtype, copy=False)
        out.append(
            (
                w_ih_out,
                w_hh_out,
                _permute_gates(bias[: 4 * hidden], _TORCH_FROM_ONNX, axis=0),
                _permute_gates(bias[4 * hidden :], _TORCH_FROM_ONNX, axis=0),
            )
        )
    return out


# ------------------------------------------------------------------- textbook gates


def from_gate_matrices(
    W_i: Any,
    W_f: Any,
    W_c: Any,
    W_o: Any,
    b_i: Any = None,
    b_f: Any = None,
    b_c: Any = None,
    b_o: Any = None,
    *,
    input_size: int,
    order: str = "xh",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Textbook per-gate weights as ``(w_ih, w_hh, b_ih, b_hh)``.

    Each ``W_*`` is (H, I+H) and multiplies the concatenation ``[x_t, h_{t-1}]``
    (``order="xh"``) or ``[h_{t-1}, x_t]`` (``order="hx"``); ``W_c``/``b_c`` are the
    cell candidate's (PyTorch's ``g``). The biases go to ``b_ih`` and ``b_hh`` is zeros;
    a ``None`` bias is zeros, and when all four are ``None`` both results are ``None``.
    """
    one_of("order", order, ("xh", "hx"))
    inputs = positive_int("input_size", input_size)
    names = ("W_i", "W_f", "W_c", "W_o")
    mats = [real_array(n, m) for m, n in zip((W_i, W_f, W_c, W_o), names)]
    bias_names = ("b_i", "b_f", "b_c", "b_o")
    biases = [_optional(n, b) for b, n in zip((b_i, b_f, b_c, b_o), bias_names)]
    dtype = _dtype(*mats, *biases)
    if mats[0].ndim != 2 or mats[0].shape[0] == 0:
        raise ValueError(
            f"W_i must have shape (hidden_size, input_size+hidden_size), got {mats[0].shape}"
        )
    hidden = mats[0].shape[0]
    expected = (hidden, inputs + hidden)
    for m, n in zip(mats, names):
        check_shape(n, m, "(hidden_size, input_size+hidden_size)", expected)
    for b, n in zip(biases, bias_names):
        if b is not None:
            check_shape(n, b, "(hidden_size,)", (hidden,))
    if order == "xh":
        x_part = [m[:, :inputs] for m in mats]
        h_part = [m[:, inputs:] for m in mats]
    else:
        h_part = [m[:, :hidden] for m in mats]
        x_part = [m[:, hidden:] for m in mats]
    w_ih_out = np.concatenate(x_part, axis=0).astype(dtype, copy=False)
    w_hh_out = np.concatenate(h_part, axis=0).astype(dtype, copy=False)
    if all(b is None for b in biases):
        return w_ih_out, w_hh_out, None, None
    b_ih_out = np.concatenate(
        [np.zeros(hidden, dtype) if b is None else b.astype(dtype, copy=False) for b in biases]
    )
    return w_ih_out, w_hh_out, b_ih_out, np.zeros(4 * hidden, dtype=dtype)


def to_gate_matrices(
    w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None, *, order: str = "xh"
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The inverse of :func:`from_gate_matrices`: ``([W_i, W_f, W_c, W_o], [b_i, b_f, b_c, b_o])``.

    Each ``W_*`` is (H, I+H) acting on ``[x_t, h_{t-1}]`` (``order="xh"``) or
    ``[h_{t-1}, x_t]`` (``order="hx"``); each ``b_*`` is the gate's ``b_ih + b_hh``.
    """
    one_of("order", order, ("xh", "hx"))
    w_ih_a, w_hh_a, b_ih_a, b_hh_a, hidden, dtype = _check_pytorch(w_ih, w_hh, b_ih, b_hh)
    bias = np.zeros(4 * hidden, dtype=dtype)
    for b in (b_ih_a, b_hh_a):
        if b is not None:
            bias += b
    parts = (w_ih_a, w_hh_a) if order == "xh" else (w_hh_a, w_ih_a)
    mats = [
        np.concatenate([p[k * hidden : (k + 1) * hidden] for p in parts], axis=1).astype(
            dtype, copy=False
        )
        for k in range(4)
    ]
    return mats, [bias[k * hidden : (k + 1) * hidden].copy() for k in range(4)]

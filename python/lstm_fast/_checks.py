"""The rules every entry point applies to its arguments, each written once.

Array coercion, the compute dtype, the ``lengths`` check, shape and size errors,
positive integers, the two dtypes the engine computes in and the memory layout it
reads. The functional API, the ``LSTM`` layer, the converters, the ONNX export and
the NumPy reference all call these, so that what one entry point accepts the others
accept too (docs/api.md, 'Dtypes' and 'Bad input'). This module imports nothing
else of the package.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "as_array",
    "check_lengths",
    "check_shape",
    "check_size",
    "compute_dtype",
    "contiguous",
    "float_dtype",
    "hidden_from_gate_rows",
    "positive_int",
    "real_array",
    "shape_error",
]

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_INT64 = np.dtype(np.int64)
# The torch dtypes whose NumPy twin holds them exactly; other floating tensors
# (bfloat16, the float8 kinds) become float32, which holds every one of their values.
_TORCH_EXACT_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


# ---------------------------------------------------------------------------
# Coercion and the dtype rule
# ---------------------------------------------------------------------------


def as_array(name: str, value: Any) -> np.ndarray:
    """``value`` as an ndarray, without a copy when it already is one.

    Anything :func:`numpy.asarray` understands is accepted (lists, scalars, objects
    with ``__array__``), and torch tensors go through ``.detach().cpu()``. A tensor is
    recognised by its type's module, so torch is never imported here: a caller that
    passes a tensor has already imported it. Whether the dtype is acceptable is
    :func:`real_array`'s business.
    """
    if isinstance(value, np.ndarray):
        return value
    try:
        if type(value).__module__.split(".", 1)[0] == "torch":
            tensor = value.detach().cpu()
            if tensor.dtype.is_floating_point and str(tensor.dtype) not in _TORCH_EXACT_FLOATS:
                tensor = tensor.float()
            return np.asarray(tensor.numpy())
        return np.asarray(value)
    except Exception as exc:  # ragged lists, tensors NumPy has no dtype for, other junk
        raise TypeError(
            f"{name} must be an array of numbers, got {type(value).__name__} ({exc})"
        ) from None


def real_array(name: str, value: Any) -> np.ndarray:
    """:func:`as_array`, refusing every dtype but floats, integers and bools.

    Complex, object, string, bytes, datetime and the like are a ``TypeError`` naming
    the argument.
    """
    array = as_array(name, value)
    if array.dtype.kind not in "biuf":
        got = (
            f"dtype {array.dtype}"
            if isinstance(value, np.ndarray)
            else f"{type(value).__name__} of dtype {array.dtype}"
        )
        raise TypeError(f"{name} must be a real numeric array (float, integer or bool), got {got}")
    return array


def compute_dtype(dtypes: Iterable[np.dtype]) -> np.dtype:
    """The dtype a call computes in, from the dtypes of its (real) inputs.

    ``np.result_type`` of the floating inputs, which for floats is the widest of
    them, narrowed to the two the engine has: float16 (anything under 4 bytes)
    computes in float32, longdouble in float64. Integers and bools decide only when
    no input is floating, and then the call computes in float64. The result is
    always native-endian.
    """
    widest = max((d.itemsize for d in dtypes if d.kind == "f"), default=0)
    if widest == 0:
        return _FLOAT64
    return _FLOAT32 if widest <= 4 else _FLOAT64


def float_dtype(name: str, value: Any) -> np.dtype:
    """``value`` as float32 or float64, the dtypes a layer can hold and compute in."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {value!r}") from None
    if dtype not in (_FLOAT32, _FLOAT64):
        raise TypeError(f"{name} must be float32 or float64, got {dtype}")
    return dtype


# ---------------------------------------------------------------------------
# Shapes, sizes and integers
# ---------------------------------------------------------------------------


def shape_error(name: str, symbols: str, want: tuple[int, ...], got: tuple[int, ...]) -> ValueError:
    """The message every shape error has: the argument, the shape in symbols and in
    numbers, and what was given."""
    return ValueError(f"{name} must have shape {symbols} = {want}, got {got}")


def check_shape(name: str, array: np.ndarray, symbols: str, want: tuple[int, ...]) -> None:
    if array.shape != want:
        raise shape_error(name, symbols, want, array.shape)


def hidden_from_gate_rows(
    name: str, shape: tuple[int, ...], symbols: str, *, ndim: int = 2, axis: int = 0
) -> int:
    """hidden_size from an array whose ``axis`` holds the four gate blocks."""
    if len(shape) != ndim or shape[axis] % 4 or shape[axis] == 0:
        raise ValueError(
            f"{name} must have shape {symbols} with hidden_size >= 1 "
            f"(a positive multiple of 4 gate rows), got {shape}"
        )
    return shape[axis] // 4


def check_size(*shapes: tuple[int, ...]) -> None:
    """A ``ValueError`` for a buffer whose size in bytes (at 8 per element) would not
    fit the address space, before anything is allocated or indexed."""
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        if n * 8 > sys.maxsize:
            raise ValueError(f"a buffer of shape {shape} would overflow the address space")


def positive_int(name: str, value: Any) -> int:
    """An integer >= 1; bools and floats (even whole ones) are a ``TypeError``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if result < 1:
        raise ValueError(f"{name} must be at least 1, got {result}")
    return result


# ---------------------------------------------------------------------------
# lengths
# ---------------------------------------------------------------------------


def check_lengths(value: Any, batch: int, steps: int, *, own: bool = False) -> np.ndarray:
    """``lengths`` as a C-contiguous int64 (batch,) array, every value in [0, steps].

    Any integer dtype is accepted, signed or unsigned; a float array, even of whole
    numbers, is a ``TypeError`` (a length of 2.5 is a bug upstream, not a rounding
    question). An empty list has no dtype of its own and reads as integers. The
    array is the caller's when it already is one (a private copy with ``own``).
    """
    array = as_array("lengths", value)
    if array.dtype.kind not in "iu":
        if isinstance(value, (list, tuple)) and array.size == 0:
            array = array.astype(_INT64)
        else:
            got = (
                f"dtype {array.dtype}"
                if isinstance(value, np.ndarray)
                else f"{type(value).__name__} of dtype {array.dtype}"
            )
            raise TypeError(f"lengths must be integers (an integer dtype), got {got}")
    if array.shape != (batch,):
        raise shape_error("lengths", "(batch,)", (batch,), array.shape)
    if array.size and (array.min() < 0 or array.max() > steps):
        bad = array[(array < 0) | (array > steps)][0]
        raise ValueError(f"lengths must lie in 0..seq_len = 0..{steps}, got {int(bad)}")
    return contiguous(array, _INT64, own=own)


# ---------------------------------------------------------------------------
# Memory layout
# ---------------------------------------------------------------------------


def contiguous(array: np.ndarray, dtype: np.dtype, *, own: bool) -> np.ndarray:
    """``array`` C-contiguous, aligned and of ``dtype``, the layout the engine reads;
    a private copy when ``own`` (what a cache keeps must not change with the
    caller's array)."""
    if array.dtype == dtype and array.flags.c_contiguous and array.flags.aligned:
        return array.copy() if own else array  # the common case, without np.require's cost
    out = np.require(array, dtype=dtype, requirements=["C", "A"])
    if own and np.may_share_memory(out, array):
        out = out.copy()
    return out

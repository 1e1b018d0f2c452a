"""The rules every entry point applies to its arguments, each written once.

Array coercion (torch tensors, masked arrays, ndarray subclasses), the compute
dtype, the shapes of a sequence pass, the ``lengths`` check, shape and size errors,
integers, real numbers, flags, mappings, the two dtypes the engine computes in and
the memory layout it reads. The functional API, the ``LSTM`` layer, the converters,
the ONNX export, the optimizers and the NumPy reference all call these, so that what
one entry point accepts the others accept too (docs/api.md, 'Dtypes' and 'Bad
input'). Every error names the argument and what it must be. This module imports
nothing else of the package but ``_memory``.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import _memory

__all__ = [
    "ACTIVATION_PARAMETERS",
    "LAYER_NORM_EPS",
    "LAYER_NORM_NAMES",
    "CELL_NAMES",
    "NEEDS_INPUT",
    "PLAIN_ACTIVATIONS",
    "activation_entry",
    "activation_spec",
    "as_array",
    "bfloat16_weights",
    "cast",
    "cell_arguments",
    "check_lengths",
    "check_memory",
    "check_shape",
    "check_size",
    "compute_dtype",
    "contiguous",
    "empty",
    "flag",
    "float_dtype",
    "hidden_from_gate_rows",
    "integer",
    "layer_norm_arrays",
    "layer_norm_eps",
    "layer_norm_flag",
    "mapping",
    "one_of",
    "pass_arguments",
    "positive_int",
    "projected_arguments",
    "projection",
    "random_generator",
    "real_array",
    "real_number",
    "shape_error",
    "shaped_array",
    "variant_options",
]

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_INT64 = np.dtype(np.int64)
# The most elements a buffer of 8-byte numbers can have (see check_size).
_MAX_ELEMENTS = sys.maxsize // 8
_MAX_INT_BITS = 1024
# The torch dtypes whose NumPy twin holds them exactly; other floating tensors
# (bfloat16, the float8 kinds) become float32, which holds every one of their values.
_TORCH_EXACT_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


# ---------------------------------------------------------------------------
# Coercion and the dtype rule
# ---------------------------------------------------------------------------


def as_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a base-class ndarray, without a copy when it already is one.

    Anything :func:`numpy.asarray` understands is accepted (lists, scalars, objects
    with ``__array__``). Torch tensors go through ``.detach().cpu()``, so one that
    requires grad is read as its values, as everywhere in the package (nothing here
    takes part in autograd). A tensor is recognised by its type's module, so torch is
    never imported here: a caller that passes a tensor has already imported it.

    ndarray subclasses become the base class, which they view (an ``np.matrix`` is
    its 2-D array, whose shape then gets the usual checks): their own operators and
    indexing would change what the package computes. A masked array with no masked
    element is its data; one with a masked element is a ``TypeError``, since what a
    masked step should be is the caller's choice (fill it, and give ``lengths`` for
    padded steps). Whether the dtype is acceptable is :func:`real_array`'s business.
    """
    if type(value) is np.ndarray:
        return value
    if isinstance(value, np.ndarray):
        if np.ma.is_masked(value):
            raise TypeError(
                f"{name} must not have masked elements: fill them first (e.g. "
                f"{name}.filled(0)), and give lengths for padded time steps"
            )
        return np.asarray(np.ma.getdata(value))
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
    the argument; an array whose float64 copy would overflow the address space (a
    broadcast view) is a ``ValueError`` (:func:`check_size`), since every entry point
    copies or converts what it reads.
    """
    array = as_array(name, value)
    if array.size > _MAX_ELEMENTS:  # only a broadcast view can be this large
        check_size(name, array.shape)
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


def cast(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """:func:`real_array` in ``dtype`` (a copy only when the dtype differs); running out
    of memory for the copy is a ``MemoryError`` naming the argument."""
    if type(value) is np.ndarray and value.dtype == dtype and value.size <= _MAX_ELEMENTS:
        return value  # what the lines below return for it, without their calls
    array = real_array(name, value)
    if array.dtype == dtype:
        return array
    check_size(name, array.shape)
    _check_buffer(name, array.shape, dtype)
    try:
        return array.astype(dtype)
    except MemoryError:
        raise _memory_error(name, array.shape, dtype) from None


def float_dtype(name: str, value: Any) -> np.dtype:
    """``value`` as float32 or float64, the dtypes a layer can hold and compute in."""
    try:
        dtype = np.dtype(value)
    except Exception:  # TypeError for most junk; ValueError, KeyError for malformed specs
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


def shaped_array(name: str, value: Any, symbols: str, want: tuple[int, ...]) -> np.ndarray:
    """:func:`real_array` of shape ``want`` (a gradient seed, a state)."""
    array = real_array(name, value)
    check_shape(name, array, symbols, want)
    return array


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


def check_size(name: str, *shapes: tuple[int, ...]) -> None:
    """A ``ValueError`` naming ``name`` when a buffer it needs, of one of ``shapes``,
    would not fit the address space at 8 bytes per element; checked before anything
    is allocated or indexed."""
    for shape in shapes:
        if math.prod(shape) > _MAX_ELEMENTS:
            raise ValueError(
                f"{name} is too large: a buffer of shape {shape} it needs would overflow "
                f"the address space"
            )


def check_memory(name: str, nbytes: int, what: str) -> None:
    """A ``MemoryError`` naming ``name`` when ``what`` would take more than this
    machine's physical memory, checked before the work of building it starts (a
    layer with 2**31 layers would otherwise loop for hours before running out)
    and before every buffer this package allocates (a system that overcommits,
    such as a sandbox, grants terabytes and kills the process when they are
    touched, rather than failing the allocation)."""
    if _PHYSICAL_MEMORY and nbytes > _PHYSICAL_MEMORY:
        raise MemoryError(
            f"{name}: {what} would take {nbytes} bytes, more than the "
            f"{_PHYSICAL_MEMORY} bytes of memory of this machine"
        )


def _physical_memory() -> int:
    """Bytes of physical memory; 0 where unknown (then the allocation decides)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # no sysconf
        return 0


_PHYSICAL_MEMORY = _physical_memory()  # read once: checked before every buffer


def _check_buffer(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """:func:`check_memory` for a buffer of ``shape`` in ``dtype`` about to be allocated
    (the message built only when it is needed: this is on every call's path)."""
    nbytes = math.prod(shape) * dtype.itemsize
    if _PHYSICAL_MEMORY and nbytes > _PHYSICAL_MEMORY:
        check_memory(name, nbytes, f"a buffer of shape {shape} in {dtype}")


def empty(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` for the result or buffer called ``name``, a large
    one from memory kept for reuse (``_memory.py``: no page faults on every call);
    when the allocation fails the ``MemoryError`` says which one and how large it
    is."""
    dtype = np.dtype(dtype)
    # Small (every buffer of a short call, on every call's path): neither a
    # check against the machine's memory nor a kept block.
    small = math.prod(shape) * dtype.itemsize < _memory.MIN_BYTES
    if not small:
        _check_buffer(name, shape, dtype)
    try:
        return np.empty(shape, dtype) if small else _memory.empty(shape, dtype)
    except MemoryError:
        raise _memory_error(name, shape, dtype) from None


def _memory_error(name: str, shape: tuple[int, ...], dtype: np.dtype) -> MemoryError:
    return MemoryError(
        f"{name}: out of memory for a buffer of shape {shape} in {np.dtype(dtype)} "
        f"({math.prod(shape) * np.dtype(dtype).itemsize} bytes)"
    )


def integer(name: str, value: Any) -> int:
    """An integer (Python's or NumPy's); bools and floats, even whole ones, are a
    ``TypeError``: ``True`` for a count or ``2.0`` for an index is a bug upstream."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if result.bit_length() > _MAX_INT_BITS:
        # Far beyond any count or index, and beyond what messages can print (Python
        # refuses to turn an int of more than 4300 digits into a string).
        raise ValueError(f"{name} is out of range: an integer of {result.bit_length()} bits")
    return result


def positive_int(name: str, value: Any) -> int:
    """An integer >= 1 (:func:`integer`)."""
    result = integer(name, value)
    if result < 1:
        raise ValueError(f"{name} must be at least 1, got {result}")
    return result


def real_number(name: str, value: Any, *, minimum: float | None = None) -> float:
    """A real number as a float (NaN refused), at least ``minimum`` if given.

    Python and NumPy ints and floats are accepted; bools, strings, complex numbers,
    arrays and ``None`` are a ``TypeError``.
    """
    kind = type(value)
    # Python's float and int first: the ABC check costs more than the rest of a
    # short call's option checks (bool, a subclass of int, is not `int` here).
    if (
        kind is not float
        and kind is not int
        and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real))
    ):
        raise TypeError(f"{name} must be a real number, got {kind.__name__}")
    try:
        result = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a number a float holds, got one beyond 1.8e308") from None
    bound = "" if minimum is None else f" >= {minimum}"
    if result != result:
        raise ValueError(f"{name} must be a number{bound}, got nan")
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be{bound}, got {result}")
    return result


def flag(name: str, value: Any) -> bool:
    """``True`` or ``False`` (NumPy bools and the integers 0 and 1 too); a string
    such as ``"False"``, which ``bool()`` reads as true, is a ``TypeError``."""
    if value is True or value is False:  # the common case first: flags sit on hot paths
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r:.80}")


def one_of(name: str, value: Any, options: tuple[str, ...]) -> str:
    """One of the strings ``options``."""
    if not isinstance(value, str) or value not in options:
        listed = " or ".join(repr(o) for o in options)
        raise ValueError(f"{name} must be {listed}, got {value!r:.80}")
    return value


def mapping(name: str, value: Any, what: str) -> Mapping[Any, Any]:
    """A mapping (a dict, an ``OrderedDict``, a torch state dict) of ``what``."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict of {what}, got {type(value).__name__}")
    return value


# NumPy digests a seed array element by element (2**16 integers take 0.3 s, 2**20 take
# 4 s): a longer one is refused rather than hanging the constructor. SeedSequence keeps
# 128 bits of it anyway.
_MAX_SEED_SIZE = 1 << 16


def random_generator(name: str, seed: Any) -> np.random.Generator:
    """``numpy.random.default_rng(seed)``, its errors naming the argument."""
    if isinstance(seed, np.ndarray):
        # As every array argument: NumPy's SeedSequence recurses without end (and
        # crashes the process) on an np.matrix, which stays 2-D however indexed.
        seed = as_array(name, seed)
        if seed.size > _MAX_SEED_SIZE:
            raise ValueError(f"{name} must have at most {_MAX_SEED_SIZE} entries, got {seed.size}")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(
            f"{name} must be None, a non-negative integer, a sequence of them, a "
            f"SeedSequence or a Generator (what numpy.random.default_rng takes), "
            f"got {seed!r:.80} ({exc})"
        ) from None


# ---------------------------------------------------------------------------
# The arguments of a sequence pass and of a cell step
# ---------------------------------------------------------------------------


#: How the cell API names the arguments of the one-step pass it runs.
CELL_NAMES = {"x": "x_t", "h0": "h", "c0": "c", "x_symbols": "(batch, input_size)"}

_REQUIRED = ("x", "w_ih", "w_hh")


def pass_arguments(
    raw: dict[str, Any], *, batch_first: bool, names: dict[str, str]
) -> tuple[dict[str, np.ndarray], tuple[int, int, int, int]]:
    """The arrays of one sequence pass and its sizes ``(steps, batch, input_size,
    hidden_size)``, every shape checked.

    ``raw`` holds ``x``, ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh``, ``h0``, ``c0`` (the
    last four may be None, and are then left out of the result); ``names`` renames
    them in messages (and gives ``x_symbols``), for the cell API. Each is a real
    array (:func:`real_array`, which also bounds each one's size); the shapes must
    agree, and the gate buffer of the pass must fit the address space.
    """
    for k in _REQUIRED:
        if raw[k] is None:
            raise TypeError(f"{names.get(k, k)} is required: expected an array, got None")
    arrays = {k: real_array(names.get(k, k), v) for k, v in raw.items() if v is not None}
    xa, wih, whh = arrays["x"], arrays["w_ih"], arrays["w_hh"]
    xname = names.get("x", "x")
    x_symbols = names.get(
        "x_symbols",
        "(batch, seq_len, input_size)" if batch_first else "(seq_len, batch, input_size)",
    )
    if xa.ndim != 3:
        raise ValueError(f"{xname} must have shape {x_symbols} (3 dimensions), got {xa.shape}")
    if batch_first:
        batch, steps, inp = xa.shape
    else:
        steps, batch, inp = xa.shape
    hidden = hidden_from_gate_rows("w_hh", whh.shape, "(4*hidden_size, hidden_size)")
    check_shape("w_hh", whh, "(4*hidden_size, hidden_size)", (4 * hidden, hidden))
    check_shape("w_ih", wih, "(4*hidden_size, input_size)", (4 * hidden, inp))
    for k in ("b_ih", "b_hh"):
        if k in arrays:
            check_shape(k, arrays[k], "(4*hidden_size,)", (4 * hidden,))
    for k in ("h0", "c0"):
        if k in arrays:
            check_shape(names.get(k, k), arrays[k], "(batch, hidden_size)", (batch, hidden))
    check_size(xname, (steps, batch, 4 * hidden))
    return arrays, (steps, batch, inp, hidden)


def projection(w_hh: np.ndarray, w_hr: Any) -> tuple[np.ndarray, int, int]:
    """``w_hr`` as a real array, with hidden_size H and proj_size P, checked
    against ``w_hh`` (a real array): ``w_hr`` must be (P, H) with P >= 1 and H
    from w_hh's 4H rows, and ``w_hh`` then (4H, P)."""
    hidden = hidden_from_gate_rows("w_hh", w_hh.shape, "(4*hidden_size, proj_size)")
    w_hr = real_array("w_hr", w_hr)
    if w_hr.ndim != 2 or w_hr.shape[0] < 1 or w_hr.shape[1] != hidden:
        raise ValueError(
            f"w_hr must have shape (proj_size, hidden_size) with proj_size >= 1 and "
            f"hidden_size = {hidden} (from w_hh's 4*hidden_size rows), got {w_hr.shape}"
        )
    proj = w_hr.shape[0]
    check_shape("w_hh", w_hh, "(4*hidden_size, proj_size)", (4 * hidden, proj))
    return w_hr, hidden, proj


def projected_arguments(
    raw: dict[str, Any], w_hr: Any, *, batch_first: bool, names: dict[str, str]
) -> tuple[dict[str, np.ndarray], tuple[int, int, int, int]]:
    """:func:`pass_arguments` for a layer with a projection ``w_hr`` (P, H): there
    ``w_hh`` is (4H, P) and ``h0`` (B, P); every other shape is a plain layer's of
    hidden_size H, so they are checked by ``pass_arguments`` with a stand-in w_hh of
    shape (4H, H) (a broadcast view: nothing is allocated) and without h0. The
    result holds ``w_hr`` too; the sizes are ``(steps, batch, input_size,
    hidden_size)`` (P is ``w_hr.shape[0]``)."""
    if raw["w_hh"] is None:
        raise TypeError("w_hh is required: expected an array, got None")
    w_hh = real_array("w_hh", raw["w_hh"])
    w_hr, hidden, proj = projection(w_hh, w_hr)
    stand_in = dict(
        raw, w_hh=np.broadcast_to(np.zeros((), w_hh.dtype), (4 * hidden, hidden)), h0=None
    )
    arrays, sizes = pass_arguments(stand_in, batch_first=batch_first, names=names)
    arrays["w_hh"] = w_hh
    arrays["w_hr"] = w_hr
    if raw["h0"] is not None:
        h0_name = names.get("h0", "h0")
        arrays["h0"] = shaped_array(h0_name, raw["h0"], "(batch, proj_size)", (sizes[1], proj))
    return arrays, sizes


def cell_arguments(
    x_t: Any, h: Any, c: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any
) -> dict[str, Any]:
    """The arguments of one cell step as those of a one-step sequence pass (``x`` of
    shape (1, batch, input_size)), for :func:`pass_arguments` with :data:`CELL_NAMES`."""
    for name, value in (("h", h), ("c", c)):
        if value is None:
            raise TypeError(
                f"{name} is required: expected an array, got None (use zeros for a fresh state)"
            )
    xa = real_array("x_t", x_t)
    if xa.ndim != 2:
        raise ValueError(f"x_t must have shape (batch, input_size) (2 dimensions), got {xa.shape}")
    return {"x": xa[None], "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "h0": h, "c0": c}


# ---------------------------------------------------------------------------
# The options of the LSTM variants (docs/variants.md)
# ---------------------------------------------------------------------------

#: ONNX's activations, in ONNX's spelling, with the parameters each takes
#: (alpha, then beta) and ONNX's defaults for them (None: ONNX has none, the
#: caller must give it).
ACTIVATION_PARAMETERS: dict[str, tuple[float | None, ...]] = {
    "Sigmoid": (),
    "Tanh": (),
    "Relu": (),
    "HardSigmoid": (0.2, 0.5),
    "Affine": (None, None),
    "LeakyRelu": (0.01,),
    "ThresholdedRelu": (1.0,),
    "ScaledTanh": (None, None),
    "Elu": (1.0,),
    "Softsign": (),
    "Softplus": (),
}
_ACTIVATION_BY_LOWER_NAME = {name.lower(): name for name in ACTIVATION_PARAMETERS}

#: The activations whose derivative needs the pre-activation, not only the
#: activation's output (rust/src/variant.rs, ``Activation::needs_input``).
NEEDS_INPUT = frozenset(ACTIVATION_PARAMETERS) - {"Sigmoid", "Tanh", "HardSigmoid", "Affine"}

Spec = tuple[str, "float | None", "float | None"]


def activation_spec(name: Any, alpha: Any = None, beta: Any = None) -> Spec:
    """One activation as ``(ONNX name, alpha, beta)``: the name matched without
    regard to case, each parameter it takes a real number (ONNX's default where
    not given), those it does not take None. An unknown name, a missing required
    parameter or an extra one is a ``ValueError``."""
    if not isinstance(name, str) or name.lower() not in _ACTIVATION_BY_LOWER_NAME:
        known = ", ".join(ACTIVATION_PARAMETERS)
        raise ValueError(f"activations: unknown activation {name!r:.80}; known: {known}")
    name = _ACTIVATION_BY_LOWER_NAME[name.lower()]
    defaults = ACTIVATION_PARAMETERS[name]
    params: dict[str, Any] = {"alpha": alpha, "beta": beta}
    for k, (param, value) in enumerate(list(params.items())):
        if k >= len(defaults):
            if value is not None:
                raise ValueError(f"activations: {name} takes no {param}, got {value!r:.80}")
            continue
        if value is None and defaults[k] is None:
            raise ValueError(f"activations: {name} needs its {param} (ONNX has no default)")
        number = defaults[k] if value is None else value
        params[param] = real_number(f"activations: {name}'s {param}", number)
    return name, params["alpha"], params["beta"]


def activation_entry(value: Any) -> Spec:
    """An entry of ``activations``: a name, ``(name, alpha)``, ``(name, alpha,
    beta)`` or an object with ``name``, ``alpha`` and ``beta`` (the reference's
    ``Activation``), as :func:`activation_spec` gives it."""
    if isinstance(value, str):
        return activation_spec(value)
    if isinstance(value, (tuple, list)) and 1 <= len(value) <= 3:
        return activation_spec(*value)
    if all(hasattr(value, k) for k in ("name", "alpha", "beta")):
        return activation_spec(value.name, value.alpha, value.beta)
    raise TypeError(
        f"activations: each entry must be a name, (name, alpha), (name, alpha, beta) "
        f"or an Activation, got {value!r:.80}"
    )


#: The plain LSTM's activations (f, g, h).
PLAIN_ACTIVATIONS: tuple[Spec, Spec, Spec] = (
    ("Sigmoid", None, None),
    ("Tanh", None, None),
    ("Tanh", None, None),
)


def variant_options(
    *, clip: Any, input_forget: Any, forget_gate: Any, activations: Any
) -> tuple[float | None, bool, bool, tuple[Spec, Spec, Spec]]:
    """The options of a variant that are not arrays, checked: ``clip`` a number
    > 0 or None, the two flags (not both coupling and removing the forget gate)
    and the three activations (f for the gates, g for the cell candidate, h for
    the output; None: the plain ones)."""
    if clip is not None:
        clip = real_number("clip", clip)
        if not clip > 0:
            raise ValueError(f"clip must be > 0 (or None for no clip), got {clip}")
    input_forget = flag("input_forget", input_forget)
    forget_gate = flag("forget_gate", forget_gate)
    if input_forget and not forget_gate:
        raise ValueError(
            "input_forget=True couples the forget gate to the input gate (f = 1 - i), "
            "forget_gate=False removes it (f = 1): give one or the other"
        )
    if activations is None:
        return clip, input_forget, forget_gate, PLAIN_ACTIVATIONS
    if isinstance(activations, str) or not isinstance(activations, (tuple, list)):
        raise TypeError(
            f"activations must be a sequence of 3 activations (f, g, h), "
            f"got {type(activations).__name__}"
        )
    if len(activations) != 3:
        raise ValueError(
            f"activations must have 3 entries (f for the gates, g for the cell "
            f"candidate, h for the output), got {len(activations)}"
        )
    f, g, h = (activation_entry(a) for a in activations)
    return clip, input_forget, forget_gate, (f, g, h)


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
    return contiguous("lengths", array, _INT64, own=own)


# ---------------------------------------------------------------------------
# Memory layout
# ---------------------------------------------------------------------------


def contiguous(name: str, array: np.ndarray, dtype: np.dtype, *, own: bool) -> np.ndarray:
    """``array`` C-contiguous, aligned and of ``dtype``, the layout the engine reads;
    a private copy when ``own`` (what a cache keeps must not change with the
    caller's array). Running out of memory for the copy is a ``MemoryError`` naming
    the argument."""
    ready = array.dtype == dtype and array.flags.c_contiguous and array.flags.aligned
    if ready and not own:
        return array  # the common case, without np.require's cost
    _check_buffer(name, array.shape, dtype)
    try:
        if not ready:
            out = np.require(array, dtype=dtype, requirements=["C", "A"])
            if not (own and np.may_share_memory(out, array)):
                return out
        # A private copy, a large one into memory kept for reuse (`empty`).
        out = _memory.empty(array.shape, dtype)
        np.copyto(out, array)
        return out
    except MemoryError:
        raise _memory_error(name, array.shape, dtype) from None


def private_copy(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    """A private, read-only, C-contiguous copy of ``value`` in ``dtype``: what a
    cache or prepared weights keep."""
    out = contiguous(name, value, dtype, own=True)
    out.flags.writeable = False
    return out


def probability(name: str, value: Any) -> float:
    """A probability of the regularisation, in [0, 1) (docs/variants.md,
    'Regularisation'): NaN, 1 and negative values are a ValueError naming it,
    a non-number a TypeError."""
    p = real_number(name, value)
    if not 0 <= p < 1:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return p


def regularisation(
    *, zoneout: Any = 0.0, recurrent_dropout: Any = 0.0, weight_drop: Any = 0.0,
    seed: Any = None, layer: Any = 0, training: Any = True,
) -> tuple[float, float, float, float, int | None, int, bool]:  # fmt: skip
    """The training-only options of ``forward`` checked: (zoneout_h, zoneout_c,
    recurrent_dropout, weight_drop, seed, layer, training). ``zoneout`` is one
    probability for both states or a pair ``(zoneout_h, zoneout_c)``; a seed is
    required in training with any rate > 0. The reference and the engine share
    these rules."""
    if isinstance(zoneout, (tuple, list)):
        if len(zoneout) != 2:
            raise ValueError(
                f"zoneout must be a probability or a pair (for h, for c), got {len(zoneout)} values"
            )
        z_h, z_c = (probability(f"zoneout[{k}]", z) for k, z in enumerate(zoneout))
    else:
        z_h = z_c = probability("zoneout", zoneout)
    rates = (z_h, z_c, probability("recurrent_dropout", recurrent_dropout),
             probability("weight_drop", weight_drop))  # fmt: skip
    layer = integer("layer", layer)
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    training = flag("training", training)
    if seed is not None:
        seed = integer("seed", seed)
        if not 0 <= seed < 1 << 64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    elif training and any(rates):
        raise ValueError(
            "seed must be given (an integer in [0, 2**64)) for zoneout, recurrent_dropout "
            "or weight_drop in training"
        )
    return (*rates, seed, layer, training)


# ---------------------------------------------------------------------------
# LayerNorm LSTM (docs/variants.md, 'LayerNorm LSTM')

#: haste's epsilon (and torch.nn.LayerNorm's default), added to the variance.
LAYER_NORM_EPS = 1e-5
#: The gains and biases of the three normalisations, in their argument order.
LAYER_NORM_NAMES = ("w_ln_ih", "b_ln_ih", "w_ln_hh", "b_ln_hh", "w_ln_c", "b_ln_c")


def layer_norm_flag(layer_norm: Any, arrays: Mapping[str, Any]) -> bool:
    """``layer_norm`` checked; a gain or bias of ``arrays`` (name -> value) given
    without it is a ``ValueError`` naming it."""
    layer_norm = flag("layer_norm", layer_norm)
    if not layer_norm:
        for name, value in arrays.items():
            if value is not None:
                raise ValueError(
                    f"{name} is a parameter of the LayerNorm LSTM: pass layer_norm=True"
                )
    return layer_norm


def layer_norm_arrays(norms: Mapping[str, Any], hidden: int) -> dict[str, np.ndarray]:
    """The given gains and biases as arrays of their shapes: (4H,) for those of
    the products, (H,) for ``w_ln_c`` and ``b_ln_c``."""
    arrays = {}
    for name, value in norms.items():
        if value is not None:
            width, symbols = (
                (hidden, "(hidden_size,)") if name.endswith("_c") else
                (4 * hidden, "(4*hidden_size,)")
            )  # fmt: skip
            arrays[name] = shaped_array(name, value, symbols, (width,))
    return arrays


def layer_norm_eps(eps: Any) -> float:
    """``layer_norm_eps``: a finite number > 0."""
    eps = real_number("layer_norm_eps", eps)
    if not 0 < eps < math.inf:
        raise ValueError(f"layer_norm_eps must be a finite number > 0, got {eps}")
    return eps


def bfloat16_weights(weight_dtype: Any) -> bool:
    """``weight_dtype`` checked: False for None (the weights in the compute
    dtype), True for bfloat16 (``"bfloat16"``, ``"bf16"`` or ml_dtypes' bfloat16
    dtype); anything else names the argument."""
    if weight_dtype is None:
        return False
    if isinstance(weight_dtype, str):
        if weight_dtype.lower() in ("bfloat16", "bf16"):
            return True
    else:
        try:
            name = np.dtype(weight_dtype).name
        except (TypeError, ValueError):
            raise TypeError(
                f"weight_dtype must be None or 'bfloat16', got {type(weight_dtype).__name__}"
            ) from None
        if name == "bfloat16":  # ml_dtypes.bfloat16
            return True
    raise ValueError(f"weight_dtype must be None or 'bfloat16' (also 'bf16'), got {weight_dtype!r}")

"""The NumPy reference against two independent oracles.

1. Central finite differences in float64: every output of ``backward`` and
   ``cell_backward`` (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh), with lengths,
   reverse and batch_first.
2. ``torch.nn.LSTM`` (when torch is installed), PackedSequence for lengths.

Everything else in the suite trusts the reference, so it is checked here
against things that do not share its code.
"""

from __future__ import annotations

import ast

import numpy as np
import pytest

from tests.helpers import (
    TORCH_CASES,
    Case,
    assert_close,
    assert_matches_torch,
    forward_kwargs,
    make_arrays,
    numeric_gradient,
    ref,
    run_both,
    valid_mask,
)


def _loss(out, arrays, batch_first):
    """sum(dy * y) + sum(dh_n * h_n) + sum(dc_n * c_n): its gradient is backward's."""
    total = 0.0
    for value, weight in (
        (out.y, arrays["dy"]),
        (out.h_n, arrays["dh_n"]),
        (out.c_n, arrays["dc_n"]),
    ):
        if weight is not None:
            total += float(np.sum(value * weight))
    return total


def _fill_missing(case: Case, arrays):
    """Arrays with missing biases and states replaced by explicit zeros."""
    full = dict(arrays)
    H, B = case.H, case.B
    for name, shape in (("b_ih", (4 * H,)), ("b_hh", (4 * H,)), ("h0", (B, H)), ("c0", (B, H))):
        if full[name] is None:
            full[name] = np.zeros(shape)
    return full


def _assert_gradient(analytic, numeric, name):
    # Central differences: truncation ~ step^2 * f''' ~ 1e-12, rounding
    # ~ eps * |loss| / step ~ 1e-9 for |loss| ~ 10; 1e-6 leaves a wide margin
    # and is still far below the size of any mistake in the math (~1e-2).
    assert analytic.shape == numeric.shape, name
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6, err_msg=name)


FD_CASES = [
    Case(3, 2, 2, 3),
    Case(3, 2, 2, 3, lengths="mixed"),
    Case(4, 3, 2, 2, lengths="mixed", reverse=True),
    Case(3, 3, 3, 2, lengths="random", batch_first=True, seed=3),
    Case(4, 3, 2, 2, lengths="random", reverse=True, batch_first=True, seed=5),
    Case(2, 2, 1, 1, bias="none", state="none"),
    Case(3, 2, 2, 3, bias="ih", state="h0", grads="dy", reverse=True, lengths="mixed"),
    Case(3, 2, 2, 3, bias="hh", state="c0", grads="final", seed=7),
    Case(1, 1, 3, 4, scale=3.0),
    Case(0, 2, 2, 3),
    Case(3, 2, 2, 3, lengths="zeros"),
]


@pytest.mark.parametrize("case", FD_CASES, ids=lambda c: c.id)
def test_backward_matches_finite_differences(case):
    arrays = make_arrays(case)
    out, grads = run_both(ref, case, arrays)

    full = _fill_missing(case, arrays)

    def loss():
        o = ref.forward(full["x"], full["w_ih"], full["w_hh"], **forward_kwargs(case, full))
        return _loss(o, arrays, case.batch_first)

    # missing bias/state gives the same outputs as explicit zeros
    np.testing.assert_array_equal(
        ref.forward(full["x"], full["w_ih"], full["w_hh"], **forward_kwargs(case, full)).y, out.y
    )
    bias_grad = {"b_ih": "db_ih", "b_hh": "db_hh"}
    for name, grad_name in (("x", "dx"), ("w_ih", "dw_ih"), ("w_hh", "dw_hh"), ("h0", "dh0"),
                            ("c0", "dc0"), ("b_ih", "db_ih"), ("b_hh", "db_hh")):  # fmt: skip
        analytic = getattr(grads, grad_name)
        if name in bias_grad and arrays[name] is None:
            assert analytic is None, f"{grad_name} must be None for a missing bias"
            continue
        _assert_gradient(analytic, numeric_gradient(loss, full[name]), grad_name)

    # no gradient reaches x at padded steps
    mask = valid_mask(case, arrays["lengths"])
    dx_tm = grads.dx.transpose(1, 0, 2) if case.batch_first else grads.dx
    assert np.all(dx_tm[~mask] == 0)


@pytest.mark.parametrize("bias", [True, False])
def test_cell_backward_matches_finite_differences(bias):
    rng = np.random.default_rng(11)
    B, I, H = 3, 2, 4
    arrays = {
        "x_t": rng.standard_normal((B, I)),
        "h": rng.standard_normal((B, H)),
        "c": rng.standard_normal((B, H)),
        "w_ih": rng.uniform(-1, 1, (4 * H, I)),
        "w_hh": rng.uniform(-1, 1, (4 * H, H)),
        "b_ih": rng.uniform(-1, 1, 4 * H),
        "b_hh": rng.uniform(-1, 1, 4 * H),
    }
    dh_new = rng.standard_normal((B, H))
    dc_new = rng.standard_normal((B, H))
    biases = (arrays["b_ih"], arrays["b_hh"]) if bias else (None, None)

    def loss():
        h_new, c_new, _ = ref.cell_forward(
            arrays["x_t"], arrays["h"], arrays["c"], arrays["w_ih"], arrays["w_hh"], *biases
        )
        return float(np.sum(h_new * dh_new) + np.sum(c_new * dc_new))

    cell = ref.cell_forward(
        arrays["x_t"], arrays["h"], arrays["c"], arrays["w_ih"], arrays["w_hh"], *biases
    )
    grads = ref.cell_backward(cell.cache, dh_new, dc_new)
    for name, grad_name in (("x_t", "dx"), ("h", "dh"), ("c", "dc"), ("w_ih", "dw_ih"),
                            ("w_hh", "dw_hh"), ("b_ih", "db_ih"), ("b_hh", "db_hh")):  # fmt: skip
        analytic = getattr(grads, grad_name)
        if name.startswith("b_") and not bias:
            assert analytic is None
            continue
        _assert_gradient(analytic, numeric_gradient(loss, arrays[name]), grad_name)


def test_missing_output_gradients_are_zeros():
    case = Case(4, 3, 2, 3, lengths="mixed", reverse=True)
    arrays = make_arrays(case)
    out = ref.forward(arrays["x"], arrays["w_ih"], arrays["w_hh"], **forward_kwargs(case, arrays))
    zeros_y = np.zeros_like(out.y)
    zeros_bh = np.zeros_like(out.h_n)
    a = ref.backward(out.cache)
    b = ref.backward(out.cache, zeros_y, zeros_bh, zeros_bh)
    for name in a._fields:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert not np.any(getattr(a, name)), name


def test_cell_equals_one_step_sequence():
    case = Case(1, 4, 3, 5)
    arrays = make_arrays(case)
    out, grads = run_both(ref, case, arrays)
    cell = ref.cell_forward(
        arrays["x"][0], arrays["h0"], arrays["c0"], arrays["w_ih"], arrays["w_hh"],
        arrays["b_ih"], arrays["b_hh"],
    )  # fmt: skip
    assert_close(cell.h_new, out.h_n, np.float64)
    assert_close(cell.c_new, out.c_n, np.float64)
    for name in "ifgoc":
        assert_close(getattr(cell.cache, name), getattr(out.cache, name)[0], np.float64)
    dh_last = arrays["dh_n"] + arrays["dy"][0]
    cell_grads = ref.cell_backward(cell.cache, dh_last, arrays["dc_n"])
    assert_close(cell_grads.dx, grads.dx[0], np.float64)
    for name in ("dw_ih", "dw_hh", "db_ih", "db_hh"):
        assert_close(getattr(cell_grads, name), getattr(grads, name), np.float64, what=name)
    assert_close(cell_grads.dh, grads.dh0, np.float64)
    assert_close(cell_grads.dc, grads.dc0, np.float64)


def test_compute_dtype_rules():
    f16, f32, f64 = (np.zeros(1, t) for t in (np.float16, np.float32, np.float64))
    i32, b = np.zeros(1, np.int32), np.zeros(1, bool)
    assert ref.compute_dtype(f32, f32) == np.float32
    assert ref.compute_dtype(f32, f64) == np.float64
    assert ref.compute_dtype(f16, f16) == np.float32
    assert ref.compute_dtype(f16, f64) == np.float64
    assert ref.compute_dtype(i32, i32) == np.float64
    assert ref.compute_dtype(b, i32) == np.float64
    assert ref.compute_dtype(i32, f32) == np.float32
    assert ref.compute_dtype(None, f32) == np.float32


def test_reference_does_not_import_torch():
    source = (ref.__file__ if ref.__file__ else "").strip()
    tree = ast.parse(open(source, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "dataclasses", "typing", "numpy"}, imported


def test_cache_is_time_major_and_read_only():
    case = Case(3, 2, 4, 5, batch_first=True, lengths="mixed", reverse=True)
    arrays = make_arrays(case)
    out, _ = run_both(ref, case, arrays)
    assert out.y.shape == (2, 3, 5)
    for name in "ifgoc":
        a = getattr(out.cache, name)
        assert a.shape == (3, 2, 5)
        assert not a.flags.writeable
    with pytest.raises(TypeError):
        ref.backward(object())


# --------------------------------------------------------------------------
# PyTorch


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.id)
def test_reference_matches_torch(case):
    pytest.importorskip("torch")
    arrays = make_arrays(case)
    out, grads = run_both(ref, case, arrays)
    assert_matches_torch(case, arrays, out, grads)

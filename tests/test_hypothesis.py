"""Randomised engine-vs-reference cases: hypothesis draws the shapes and options."""

from __future__ import annotations

import lstm_fast as lf
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import (
    Case,
    assert_close,
    assert_matches_reference,
    make_arrays,
    ref,
    relayout,
    run_both,
)

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def cases(draw):
    return Case(
        T=draw(st.integers(0, 6)),
        B=draw(st.integers(0, 5)),
        I=draw(st.integers(1, 20)),
        H=draw(st.integers(1, 20)),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        bias=draw(st.sampled_from(["both", "none", "ih", "hh"])),
        state=draw(st.sampled_from(["both", "none", "h0", "c0"])),
        lengths=draw(st.sampled_from(["none", "random", "mixed", "full", "zeros"])),
        reverse=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        grads=draw(st.sampled_from(["all", "none", "dy", "final"])),
        seed=draw(st.integers(0, 2**32 - 1)),
        scale=draw(st.sampled_from([0.5, 1.5, 4.0])),
    )


@SETTINGS
@given(
    case=cases(),
    isa=st.sampled_from(lf.available_isas()),
    layout=st.sampled_from(["C", "F", "strided", "reversed", "transposed", "unaligned"]),
)
def test_engine_matches_reference(case, isa, layout):
    previous = lf.get_isa()
    lf._set_isa(isa)
    try:
        arrays = make_arrays(case)
        laid_out = {name: relayout(value, layout) for name, value in arrays.items()}
        out, grads = run_both(lf, case, laid_out)
    finally:
        lf._set_isa(previous)
    assert_matches_reference(case, arrays, out, grads)


@SETTINGS
@given(
    B=st.integers(0, 6),
    I=st.integers(1, 24),
    H=st.integers(1, 24),
    dtype=st.sampled_from([np.float32, np.float64]),
    bias=st.booleans(),
    isa=st.sampled_from(lf.available_isas()),
    seed=st.integers(0, 2**32 - 1),
)
def test_cell_matches_one_step(B, I, H, dtype, bias, isa, seed):  # noqa: E741
    """cell_forward/cell_backward against the reference's one-step sequence."""
    case = Case(1, B, I, H, dtype=dtype, bias="both" if bias else "none", seed=seed)
    a = make_arrays(case)
    previous = lf.get_isa()
    lf._set_isa(isa)
    try:
        cell = lf.cell_forward(
            a["x"][0], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"]
        )
        grads = lf.cell_backward(cell.cache, a["dh_n"], a["dc_n"])
    finally:
        lf._set_isa(previous)
    a64 = {k: (v if v is None else np.asarray(v, np.float64)) for k, v in a.items()}
    want = ref.cell_forward(
        a64["x"][0], a64["h0"], a64["c0"], a64["w_ih"], a64["w_hh"], a64["b_ih"], a64["b_hh"]
    )
    want_grads = ref.cell_backward(want.cache, a64["dh_n"], a64["dc_n"])
    assert_close(cell.h_new, want.h_new, dtype, what="h_new")
    assert_close(cell.c_new, want.c_new, dtype, what="c_new")
    for name in want_grads._fields:
        expected = getattr(want_grads, name)
        if expected is None:
            assert getattr(grads, name) is None, name
        else:
            assert_close(getattr(grads, name), expected, dtype, what=name)

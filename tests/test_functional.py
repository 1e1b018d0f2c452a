"""The compiled engine against the NumPy reference, through the functional API.

Every case checks y, h_n, c_n, the cache's gates and cells and every gradient,
on every instruction set this machine supports (the ``isa`` fixture).
"""

from __future__ import annotations

import lstm_fast as lf
import numpy as np
import pytest

from tests.helpers import (
    LAYOUTS,
    Case,
    as_float64,
    assert_close,
    assert_matches_reference,
    assert_same_bits,
    each_dtype,
    forward_kwargs,
    make_arrays,
    ref,
    relayout,
    run_both,
)

# T and B include 0 and 1; I and H include 1 and sizes that are not multiples
# of a SIMD width (8 floats for AVX2, 16 for AVX-512) next to ones that are.
SHAPES = [
    (0, 3, 4, 5),
    (3, 0, 4, 5),
    (0, 0, 2, 3),
    (1, 1, 1, 1),
    (1, 2, 3, 7),
    (2, 1, 33, 3),
    (5, 3, 7, 9),
    (4, 2, 17, 33),
    (6, 5, 9, 17),
    (3, 8, 16, 16),
    (7, 4, 1, 8),
    (2, 3, 9, 1),
    (4, 17, 3, 24),
    (3, 2, 40, 65),
    (2, 6, 31, 32),
    # long enough for errors to accumulate; big enough for threaded/tiled paths
    (40, 3, 5, 8),
    (3, 64, 32, 96),
    (2, 37, 70, 129),
]


def _cases() -> list[Case]:
    # Options are drawn (seeded) so that each value of each option occurs with
    # many shapes and the others' values; 3 cases per shape.
    rng = np.random.default_rng(20240601)
    cases = []
    for k, (T, B, I, H) in enumerate(SHAPES):
        for j in range(3):
            cases.append(
                Case(
                    T,
                    B,
                    I,
                    H,
                    bias=("both", "none", "ih", "hh")[rng.integers(4)],
                    state=("both", "none", "h0", "c0")[rng.integers(4)],
                    lengths=("none", "mixed", "random", "full", "zeros")[(k + j) % 5],
                    reverse=bool((k + j) % 2),
                    batch_first=bool(rng.integers(2)),
                    grads=("all", "all", "none", "dy", "final")[rng.integers(5)],
                    seed=100 * k + j,
                )
            )
    return cases


CASES = _cases()


@each_dtype
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id.replace("-float64", ""))
def test_matches_reference(isa, case, dtype):
    case = case.with_(dtype=dtype)
    arrays = make_arrays(case)
    out, grads = run_both(lf, case, arrays)
    assert_matches_reference(case, arrays, out, grads)


@each_dtype
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_memory_layouts(isa, layout, batch_first, dtype):
    case = Case(
        5, 4, 7, 9, dtype=dtype, lengths="mixed", reverse=batch_first, batch_first=batch_first
    )
    arrays = make_arrays(case)
    laid_out = {name: relayout(value, layout) for name, value in arrays.items()}
    out, grads = run_both(lf, case, laid_out)
    assert_matches_reference(case, arrays, out, grads)
    # and the same bits as from contiguous inputs
    out_c, grads_c = run_both(lf, case, arrays)
    for name in ("y", "h_n", "c_n"):
        assert_same_bits(getattr(out, name), getattr(out_c, name), name)
    for name in grads._fields:
        assert_same_bits(getattr(grads, name), getattr(grads_c, name), name)


@each_dtype
def test_mixed_layouts(isa, dtype):
    """Every argument in a different layout at once."""
    case = Case(6, 5, 17, 12, dtype=dtype, lengths="random", reverse=True, seed=8)
    arrays = make_arrays(case)
    kinds = dict(
        zip(
            ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "lengths", "dy", "dh_n", "dc_n"],
            ["swapped", "F", "transposed", "strided", "reversed", "unaligned", "F",
             "strided", "transposed", "reversed", "strided"],
        )
    )  # fmt: skip
    laid_out = {name: relayout(value, kinds[name]) for name, value in arrays.items()}
    out, grads = run_both(lf, case, laid_out)
    assert_matches_reference(case, arrays, out, grads)


def test_python_lists_and_scalars_types_accepted():
    """Array-likes work like arrays (lengths as a list of ints, weights as lists)."""
    case = Case(3, 2, 2, 3, lengths="mixed")
    arrays = make_arrays(case)
    out = lf.forward(
        arrays["x"].tolist(),
        arrays["w_ih"].tolist(),
        arrays["w_hh"],
        arrays["b_ih"].tolist(),
        arrays["b_hh"],
        arrays["h0"],
        arrays["c0"],
        lengths=[int(n) for n in arrays["lengths"]],
    )
    want = ref.forward(arrays["x"], arrays["w_ih"], arrays["w_hh"], **forward_kwargs(case, arrays))
    assert_close(out.y, want.y, np.float64)
    assert_close(out.h_n, want.h_n, np.float64)


def test_positional_and_keyword_calls_agree():
    case = Case(4, 3, 5, 6)
    a = make_arrays(case)
    by_position = lf.forward(a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"], a["c0"])
    by_keyword = lf.forward(
        x=a["x"], w_ih=a["w_ih"], w_hh=a["w_hh"], b_ih=a["b_ih"], b_hh=a["b_hh"], h0=a["h0"],
        c0=a["c0"], batch_first=False, lengths=None, reverse=False, need_cache=True,
    )  # fmt: skip
    for name in ("y", "h_n", "c_n"):
        assert_same_bits(getattr(by_position, name), getattr(by_keyword, name), name)
    g1 = lf.backward(by_position.cache, a["dy"], a["dh_n"], a["dc_n"])
    g2 = lf.backward(cache=by_keyword.cache, dy=a["dy"], dh_n=a["dh_n"], dc_n=a["dc_n"])
    for name in g1._fields:
        assert_same_bits(getattr(g1, name), getattr(g2, name), name)
    assert isinstance(by_position, tuple) and by_position._fields == ("y", "h_n", "c_n", "cache")
    assert g1._fields == ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh")


# --------------------------------------------------------------------------
# The cache


def _case_for_cache(dtype=np.float64):
    return Case(5, 4, 6, 7, dtype=dtype, lengths="mixed", reverse=True, batch_first=True, seed=3)


@each_dtype
def test_backward_twice_gives_same_bits(isa, dtype):
    case = _case_for_cache(dtype)
    a = make_arrays(case)
    out = lf.forward(a["x"], a["w_ih"], a["w_hh"], **forward_kwargs(case, a))
    first = lf.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    lf.backward(out.cache)  # a different call in between
    second = lf.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    for name in first._fields:
        assert_same_bits(getattr(first, name), getattr(second, name), name)


def test_cache_holds_copies(isa):
    """Changing the caller's arrays (inputs and outputs) after forward changes nothing."""
    case = _case_for_cache()
    a = make_arrays(case)
    out = lf.forward(a["x"], a["w_ih"], a["w_hh"], **forward_kwargs(case, a))
    gates_before = {name: getattr(out.cache, name).copy() for name in "ifgoc"}
    before = lf.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    for name in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"):
        a[name][...] = 1e3
    a["lengths"][...] = 0
    out.y[...] = 7.0
    out.h_n[...] = 7.0
    out.c_n[...] = 7.0
    after = lf.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    for name in before._fields:
        assert_same_bits(getattr(before, name), getattr(after, name), name)
    for name in "ifgoc":
        assert_same_bits(getattr(out.cache, name), gates_before[name], f"cache.{name}")
    # and the gradients computed now still match the reference of the original values
    original = make_arrays(case)
    ref_out, ref_grads = run_both(ref, case, as_float64(original))
    for name in before._fields:
        assert_close(getattr(after, name), getattr(ref_grads, name), np.float64, what=name)


def test_gradient_arguments_are_not_kept(isa):
    """backward does not write into dy/dh_n/dc_n nor keep them."""
    case = _case_for_cache()
    a = make_arrays(case)
    out = lf.forward(a["x"], a["w_ih"], a["w_hh"], **forward_kwargs(case, a))
    saved = {name: a[name].copy() for name in ("dy", "dh_n", "dc_n")}
    lf.backward(out.cache, a["dy"], a["dh_n"], a["dc_n"])
    for name, value in saved.items():
        assert_same_bits(a[name], value, name)


@pytest.mark.parametrize("kind", ["sequence", "cell"])
def test_cache_arrays_are_read_only(kind):
    case = _case_for_cache()
    a = make_arrays(case)
    if kind == "sequence":
        cache = lf.forward(a["x"], a["w_ih"], a["w_hh"], **forward_kwargs(case, a)).cache
        assert isinstance(cache, lf.Cache)
        shape = (case.T, case.B, case.H)
    else:
        cache = lf.cell_forward(a["x"][:, 0], a["h0"], a["c0"], a["w_ih"], a["w_hh"]).cache
        assert isinstance(cache, lf.CellCache)
        shape = (case.B, case.H)
    for name in "ifgoc":
        gate = getattr(cache, name)
        assert isinstance(gate, np.ndarray), name
        assert gate.shape == shape, name
        assert not gate.flags.writeable, name
        with pytest.raises(ValueError):
            gate[...] = 0
        with pytest.raises(ValueError):
            gate += 1


def test_results_are_new_writeable_arrays(isa):
    case = Case(3, 2, 4, 5)
    a = make_arrays(case)
    out, grads = run_both(lf, case, a)
    results = [out.y, out.h_n, out.c_n, *grads]
    for r in results:
        assert isinstance(r, np.ndarray)
        assert r.flags.writeable
        for name, value in a.items():
            if value is not None:
                assert not np.shares_memory(r, value), name
    for name in "ifgoc":
        for r in results:
            assert not np.shares_memory(r, getattr(out.cache, name))


@each_dtype
@pytest.mark.parametrize(
    "options", [{}, {"lengths": "mixed", "reverse": True}, {"batch_first": True}]
)
def test_need_cache_false(isa, dtype, options):
    case = Case(5, 4, 9, 17, dtype=dtype, **options)
    a = make_arrays(case)
    kwargs = forward_kwargs(case, a)
    with_cache = lf.forward(a["x"], a["w_ih"], a["w_hh"], **kwargs)
    without = lf.forward(a["x"], a["w_ih"], a["w_hh"], **kwargs, need_cache=False)
    assert without.cache is None
    assert with_cache.cache is not None
    for name in ("y", "h_n", "c_n"):
        assert_same_bits(getattr(without, name), getattr(with_cache, name), name)


# --------------------------------------------------------------------------
# The cell API

CELL_SHAPES = [(1, 1, 1), (3, 7, 9), (5, 17, 33), (0, 3, 4), (8, 16, 64), (2, 40, 3), (9, 1, 31)]


def _cell_arrays(B, I, H, dtype, seed, bias):
    rng = np.random.default_rng(seed)
    k = 1.5 / np.sqrt(H)
    arrays = {
        "x_t": rng.standard_normal((B, I)),
        "h": rng.standard_normal((B, H)) * 0.5,
        "c": rng.standard_normal((B, H)),
        "w_ih": rng.uniform(-k, k, (4 * H, I)),
        "w_hh": rng.uniform(-k, k, (4 * H, H)),
        "b_ih": rng.uniform(-k, k, 4 * H) if bias in ("both", "ih") else None,
        "b_hh": rng.uniform(-k, k, 4 * H) if bias in ("both", "hh") else None,
        "dh_new": rng.standard_normal((B, H)),
        "dc_new": rng.standard_normal((B, H)),
    }
    return {n: (None if v is None else v.astype(dtype)) for n, v in arrays.items()}


def _cell_call(module, a):
    return module.cell_forward(a["x_t"], a["h"], a["c"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])


@each_dtype
@pytest.mark.parametrize("bias", ["both", "none", "ih", "hh"])
@pytest.mark.parametrize("shape", CELL_SHAPES, ids=lambda s: "B{}I{}H{}".format(*s))
def test_cell_matches_reference(isa, shape, bias, dtype):
    B, I, H = shape
    a = _cell_arrays(B, I, H, dtype, seed=B * 100 + I + H, bias=bias)
    a64 = {n: (None if v is None else v.astype(np.float64)) for n, v in a.items()}
    cell = _cell_call(lf, a)
    want = _cell_call(ref, a64)
    for name in ("h_new", "c_new"):
        got = getattr(cell, name)
        assert got.dtype == dtype and got.shape == (B, H), name
        assert_close(got, getattr(want, name), dtype, what=name)
    for name in "ifgoc":
        assert_close(getattr(cell.cache, name), getattr(want.cache, name), dtype, what=name)
    grads = lf.cell_backward(cell.cache, a["dh_new"], a["dc_new"])
    want_grads = ref.cell_backward(want.cache, a64["dh_new"], a64["dc_new"])
    assert grads._fields == ("dx", "dh", "dc", "dw_ih", "dw_hh", "db_ih", "db_hh")
    for name in want_grads._fields:
        got, expected = getattr(grads, name), getattr(want_grads, name)
        if expected is None:
            assert got is None, name
        else:
            assert got.dtype == dtype, name
            assert_close(got, expected, dtype, what=name)
    # missing dh_new / dc_new are zeros
    for dh, dc in ((None, a["dc_new"]), (a["dh_new"], None), (None, None)):
        partial = lf.cell_backward(cell.cache, dh, dc)
        zeros = np.zeros((B, H), dtype)
        explicit = lf.cell_backward(
            cell.cache, zeros if dh is None else dh, zeros if dc is None else dc
        )
        for name in partial._fields:
            assert_same_bits(getattr(partial, name), getattr(explicit, name), name)


@each_dtype
@pytest.mark.parametrize("shape", [(1, 1, 1), (4, 3, 5), (8, 17, 64), (3, 33, 9)], ids=str)
def test_cell_equals_sequence_of_one_step(isa, shape, dtype):
    B, I, H = shape
    a = _cell_arrays(B, I, H, dtype, seed=7, bias="both")
    cell = _cell_call(lf, a)
    seq = lf.forward(a["x_t"][None], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h"], a["c"])
    assert_close(cell.h_new, seq.h_n, dtype, what="h_new", factor=0.1)
    assert_close(cell.c_new, seq.c_n, dtype, what="c_new", factor=0.1)
    assert_close(cell.h_new, seq.y[0], dtype, what="y", factor=0.1)
    for name in "ifgoc":
        assert_close(getattr(cell.cache, name), getattr(seq.cache, name)[0], dtype, what=name)
    cell_grads = lf.cell_backward(cell.cache, a["dh_new"], a["dc_new"])
    seq_grads = lf.backward(seq.cache, None, a["dh_new"], a["dc_new"])
    pairs = [("dx", "dx"), ("dh", "dh0"), ("dc", "dc0"), ("dw_ih", "dw_ih"), ("dw_hh", "dw_hh"),
             ("db_ih", "db_ih"), ("db_hh", "db_hh")]  # fmt: skip
    for cell_name, seq_name in pairs:
        c, s = getattr(cell_grads, cell_name), getattr(seq_grads, seq_name)
        if seq_name == "dx":
            s = s[0]
        assert_close(c, s, dtype, what=cell_name)


def test_cell_cache_reused(isa):
    a = _cell_arrays(4, 5, 6, np.float64, seed=1, bias="both")
    cell = _cell_call(lf, a)
    first = lf.cell_backward(cell.cache, a["dh_new"], a["dc_new"])
    for name in ("x_t", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh"):
        a[name][...] = -3.0
    cell.h_new[...] = 0
    cell.c_new[...] = 0
    second = lf.cell_backward(cell.cache, a["dh_new"], a["dc_new"])
    for name in first._fields:
        assert_same_bits(getattr(first, name), getattr(second, name), name)

"""bf16 inference on the BF16 dot products (the ``avx512bf16`` instruction set).

There the input and recurrent products multiply bfloat16 by bfloat16: x and h are
rounded to bfloat16 as their operands (the state, the gate math and the sums stay
float32), so the results are not the float32 engine's on the rounded weights that
the other instruction sets give (tests/test_bf16.py). Checked here:

- every step is the NumPy reference's step (float64) on the rounded operands: x_t,
  the h the engine carried and the weight matrices rounded to bfloat16, c as it is,
  to float32's tolerance; and not the step on unrounded x and h (so the rounding
  is real, and the check could fail);
- a sequence (one-off and prepared weights) is, bit for bit, its steps chained;
- the same bits for any thread count and split: tests/test_bf16.py's thread test
  hashes this instruction set's results too.

The kernels themselves are checked against the instruction's definition bit for
bit by ``cargo test`` (``kernels/bf16_dot.rs``).
"""

from __future__ import annotations

import lstm_fast
import numpy as np
import pytest
from lstm_fast.functional import bfloat16_round

from tests.conftest import BF16_DOT_ISAS
from tests.helpers import assert_close, assert_same_bits, assert_same_hashes, ref
from tests.test_bf16 import SHAPES, VARIANTS, _case, _rounded

DOT = [name for name in lstm_fast.available_isas() if name in BF16_DOT_ISAS]
pytestmark = pytest.mark.skipif(not DOT, reason="this CPU has no AVX-512 BF16")

# The reference's cell takes the variants, not the regularisation.
STEP_VARIANTS = [v for v in VARIANTS if not v.startswith("zoneout")]
# tests/test_bf16.py's shapes, and the edges of the pairs of depths: no input,
# one input, a hidden size of one tile or less (one panel at batch 1).
DOT_SHAPES = SHAPES + [
    (4, 3, 0, 16, {}),
    (5, 1, 1, 8, {"state": True}),
    (3, 2, 2, 5, {"reverse": True}),
]
# Sequences chained from cells: every row runs all T steps, in order.
CHAIN_SHAPES = [s for s in DOT_SHAPES if "lengths" not in s[4]]


@pytest.fixture(autouse=True)
def dot_isa():
    previous = lstm_fast.get_isa()
    lstm_fast._set_isa(DOT[-1])
    try:
        yield
    finally:
        lstm_fast._set_isa(previous)


def _split(x, w, call):
    call = dict(call)
    h0, c0 = call.pop("h0", None), call.pop("c0", None)
    peepholes = call.pop("peepholes", None)
    zoneout = call.pop("zoneout", None)
    for k in ("recurrent_dropout", "weight_drop"):
        call.pop(k, None)
    variant = {k: v for k, v in call.items() if k not in ("batch_first", "reverse", "lengths")}
    return h0, c0, peepholes, zoneout, variant, call


def _steps(x, call):
    T = x.shape[1] if call["batch_first"] else x.shape[0]
    order = range(T - 1, -1, -1) if call["reverse"] else range(T)
    return [(t, x[:, t] if call["batch_first"] else x[t]) for t in order]


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


@pytest.mark.parametrize("shape", DOT_SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s[:4]))
@pytest.mark.parametrize("variant", STEP_VARIANTS)
def test_each_step_is_the_reference_on_rounded_operands(variant, shape):
    x, w, call = _case(variant, shape, seed=hash((variant, shape[3])) % 1000 + 3)
    h0, c0, peepholes, _, options, _ = _split(x, w, call)
    r = _rounded(w)
    pw = lstm_fast.prepare_weights(w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"],
                                   peepholes=peepholes, w_hr=w.get("w_hr"),
                                   weight_dtype="bfloat16")  # fmt: skip
    B = x.shape[0] if call["batch_first"] else x.shape[1]
    P = w["w_hh"].shape[1]
    H = w["w_hh"].shape[0] // 4
    h = h0 if h0 is not None else np.zeros((B, P), np.float32)
    c = c0 if c0 is not None else np.zeros((B, H), np.float32)
    weights = [_f64(r[k]) for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    extra = dict(w_hr=_f64(r.get("w_hr")), peepholes=_f64(peepholes), **options)
    near = far = 0.0
    for t, x_t in _steps(x, call):
        got = pw.cell_forward(x_t, h, c, **options)
        want = ref.cell_forward(_f64(bfloat16_round(x_t)), _f64(bfloat16_round(h)), _f64(c),
                                *weights, **extra)  # fmt: skip
        assert_close(got.h_new, want.h_new, np.float32, what=f"{variant} step {t} h")
        assert_close(got.c_new, want.c_new, np.float32, what=f"{variant} step {t} c")
        exact = ref.cell_forward(_f64(x_t), _f64(h), _f64(c), *weights, **extra)
        near = max(near, float(np.abs(got.h_new - want.h_new).max()))
        far = max(far, float(np.abs(got.h_new - exact.h_new).max()))
        h, c = got.h_new, got.c_new
    # The step on unrounded x and h is much farther: float32's error is some
    # 1e-7, bfloat16's rounding of an operand 2^-9 relative.
    assert far > 16 * near, f"rounding x and h: {far:.2e} vs {near:.2e}"


@pytest.mark.parametrize("shape", CHAIN_SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s[:4]))
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "zoneout_dropouts"])
def test_a_sequence_is_its_steps_chained(variant, shape):
    x, w, call = _case(variant, shape, seed=hash((variant, shape[3])) % 1000 + 4)
    h0, c0, peepholes, zoneout, options, place = _split(x, w, call)
    mats = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    pw = lstm_fast.prepare_weights(*mats, peepholes=peepholes, w_hr=w.get("w_hr"),
                                   weight_dtype="bfloat16")  # fmt: skip
    reg = {} if zoneout is None else {"zoneout": zoneout, "training": False}
    seq = pw.forward(x, h0, c0, need_cache=False, **place, **reg)
    one_off = lstm_fast.forward(x, *mats, h0, c0, weight_dtype="bfloat16", need_cache=False,
                                w_hr=w.get("w_hr"), peepholes=peepholes, **place,
                                **reg)  # fmt: skip
    for a, b, what in zip(one_off[:3], seq[:3], ("y", "h_n", "c_n")):
        assert_same_bits(a, b, f"one-off {what}")
    B = x.shape[0] if call["batch_first"] else x.shape[1]
    P, H = seq.h_n.shape[1], seq.c_n.shape[1]
    h = h0 if h0 is not None else np.zeros((B, P), np.float32)
    c = c0 if c0 is not None else np.zeros((B, H), np.float32)
    for t, x_t in _steps(x, call):
        step = pw.cell_forward(x_t, h, c, **options, **reg)
        h, c = step.h_new, step.c_new
        y_t = seq.y[:, t] if call["batch_first"] else seq.y[t]
        assert_same_bits(y_t, h, f"{variant} y step {t}")
    assert_same_bits(seq.h_n, h, "h_n")
    assert_same_bits(seq.c_n, c, "c_n")


def test_differs_from_the_widening_path():
    """The other instruction sets' bf16 inference (float32 bits on the rounded
    weights) is not this one's; both stay within bfloat16's error of float32."""
    x, w, call = _case("plain", SHAPES[3], seed=11)
    _, _, _, _, _, place = _split(x, w, call)
    mats = (w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"])
    dot = lstm_fast.forward(x, *mats, weight_dtype="bfloat16", need_cache=False, **place)
    lstm_fast._set_isa("avx512")
    widened = lstm_fast.forward(x, *mats, weight_dtype="bfloat16", need_cache=False, **place)
    exact = lstm_fast.forward(x, *mats, need_cache=False, **place)
    assert not np.array_equal(dot.y, widened.y)
    # Each within a few bfloat16 roundings (2^-9 relative, |y| < 1) of the
    # float32 result over these 5 steps (measured: 7.5e-4 and 5.1e-4).
    for out in (dot, widened):
        assert np.abs(out.y - exact.y).max() < 4 * 2.0**-9


_SPLIT_SCRIPT = """
lstm_fast._set_isa("avx512bf16")
rng = np.random.default_rng(21)
for T, B, I, H in [(5, 16, 40, 64), (4, 13, 9, 100), (3, 64, 33, 48), (6, 1, 17, 130)]:
    k = 1 / np.sqrt(H)
    w = [rng.uniform(-k, k, s).astype(np.float32) for s in ((4 * H, I), (4 * H, H), (4 * H,))]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = rng.integers(0, T + 1, B) if B > 1 else None
    pw = lstm_fast.prepare_weights(w[0], w[1], w[2], weight_dtype="bfloat16")
    got = pw.forward(x, lengths=lengths, need_cache=False)
    out[f"{{T}}x{{B}}x{{I}}x{{H}}"] = hashlib.sha256(
        got.y.tobytes() + got.h_n.tobytes() + got.c_n.tobytes()).hexdigest()
"""


def test_same_bits_for_any_thread_count_and_split_at_larger_batches():
    """Batches the 6-row tile splits unevenly (16, 13, 64 rows, ragged), and batch
    1 over many tiles: the same bits at 1, 2 and 3 threads, either split."""
    assert_same_hashes(
        _SPLIT_SCRIPT,
        (
            {"LSTM_FAST_NUM_THREADS": "2", "LSTM_FAST_SPLIT": "hidden"},
            {"LSTM_FAST_NUM_THREADS": "2", "LSTM_FAST_SPLIT": "batch"},
            {"LSTM_FAST_NUM_THREADS": "3", "LSTM_FAST_SPLIT": "hidden"},
            {"LSTM_FAST_NUM_THREADS": "3", "LSTM_FAST_SPLIT": "batch"},
            {"LSTM_FAST_NUM_THREADS": "2", "LSTM_FAST_CHUNK_ROWS": "1"},
        ),
    )

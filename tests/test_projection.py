"""The projection (LSTMP, PyTorch's ``proj_size``: ``w_hr`` (P, H)) in the engine.

- Forward values and every gradient (dw_hr, dx, dh0 included) and the
  gradient-flow norms against the NumPy reference, both dtypes, every ISA this
  machine runs, with lengths (0 included), reverse, batch_first, h0/c0 given or
  not, B = 1 and B > 1, P = 1 and P > H, combined with peepholes, clip,
  input_forget, no forget gate and other activations; T = 0, B = 0.
- ``torch.nn.LSTM(proj_size=...)`` (outputs, dx, every gradient; both
  directions, lengths through PackedSequence), skipped without torch.
- Central finite differences in float64 for dw_hr, dx and dh0 through the
  projection.
- The same bits for 1 and 2 threads (in process, and in subprocesses under
  LSTM_FAST_NUM_THREADS and LSTM_FAST_SPLIT); prepared weights give the plain
  call's bits and keep private copies; the cell API; bad input names the
  argument.

The reference runs in float64 on the same input values, so only the engine's
error is judged.
"""

from __future__ import annotations

import importlib.util

import lstm_fast
import numpy as np
import pytest

from tests.helpers import (
    GRADIENTS,
    assert_close,
    assert_engine_matches_reference,
    assert_same_bits,
    assert_same_bits_for_thread_counts,
    assert_same_hashes,
    lstm_problem,
    ref,
)
from tests.helpers import float64_values as _f64
from tests.helpers import forward_backward as _run

HAVE_TORCH = importlib.util.find_spec("torch") is not None

VARIANTS = {
    "plain-gates": {},
    "peepholes": {"peepholes": True},
    "clip": {"clip": 0.6},
    "input_forget": {"input_forget": True},
    "no_forget_gate": {"forget_gate": False},
    "acts": {"activations": [("HardSigmoid", 0.25, 0.45), ("Softsign",), ("Elu", 0.8)]},
    "h=Relu": {"activations": [("Sigmoid",), ("Tanh",), ("Relu",)]},
    "everything": {
        "peepholes": True,
        "clip": 0.9,
        "activations": [("LeakyRelu", 0.2), ("ScaledTanh", 1.2, 0.9), ("Softplus",)],
    },
    "peep+coupled": {"peepholes": True, "input_forget": True},
}

# (T, B, I, H, P, lengths, reverse, batch_first, h0c0)
SETTINGS = {
    "basic": (5, 3, 4, 7, 3, None, False, False, False),
    "lengths-reverse-h0c0": (6, 4, 3, 20, 5, [6, 0, 3, 5], True, False, True),
    "batch_first-lengths": (5, 3, 5, 9, 4, [2, 5, 4], False, True, True),
    "B1-P1": (7, 1, 3, 17, 1, None, False, False, True),
    "P>H": (4, 2, 3, 5, 40, [4, 3], True, True, True),
    "many-rows": (4, 19, 3, 33, 12, [4, 1, 0, 4, 2, 3, 4, 4, 1, 2, 3, 4, 0, 4, 2, 1, 3, 4, 4],
                  False, False, True),
}  # fmt: skip


def _problem(variant: dict, setting: tuple, dtype, seed: int = 0):
    return lstm_problem(variant, setting, dtype, seed, projection=True)


def _assert_matches_reference(arrays, options, seeds, dtype):
    _, g, _ = assert_engine_matches_reference(arrays, options, seeds, dtype)
    assert type(g).__name__ == "VariantGradients"


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_engine_matches_reference(isa, dtype, name, setting):
    arrays, options, seeds = _problem(VARIANTS[name], SETTINGS[setting], dtype)
    _assert_matches_reference(arrays, options, seeds, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_without_h0_c0_and_seeds(isa, dtype):
    """No initial state and seeds left out (None: zeros), one at a time."""
    arrays, options, seeds = _problem({}, SETTINGS["lengths-reverse-h0c0"], dtype, seed=5)
    arrays["h0"] = arrays["c0"] = None
    for drop in ("dy", "dh_n", "dc_n"):
        partial = dict(seeds, **{drop: None})
        _assert_matches_reference(arrays, options, partial, dtype)


@pytest.mark.parametrize(
    "T, B, lengths", [(0, 3, None), (4, 0, None), (4, 3, [0, 0, 0])], ids=["T0", "B0", "len0"]
)
def test_no_steps(T, B, lengths):
    """A call with nothing to run: y is zeros (P wide), the final states are the
    initial ones, dh0/dc0 are the seeds and every other gradient is zero."""
    setting = (T, B, 3, 6, 2, lengths, False, False, True)
    arrays, options, seeds = _problem({"peepholes": True}, setting, np.float64)
    out, g = _run(lstm_fast, arrays, options, seeds)
    r_out, r = _run(ref, arrays, options, seeds)
    assert out.y.shape == (T, B, 2)
    for a, b in zip(out[:3], r_out[:3]):
        assert_same_bits(a, b)
    for field in GRADIENTS:
        np.testing.assert_array_equal(getattr(g, field), getattr(r, field), err_msg=field)
    assert g.dw_hr.shape == (2, 6) and not g.dw_hr.any()


def test_result_types_and_dtype():
    arrays, options, seeds = _problem({}, SETTINGS["basic"], np.float32)
    _, g = _run(lstm_fast, arrays, options, seeds, flow=False)
    assert isinstance(g, ref.VariantGradients)
    assert g.flow is None and g.dpeepholes is None and g.dw_hr.shape == (3, 7)
    assert g.dw_hh.shape == (28, 3) and g.dh0.shape == (3, 3) and g.dc0.shape == (3, 7)
    # w_hr counts among the inputs of the dtype rule.
    options["w_hr"] = options["w_hr"].astype(np.float64)
    out = lstm_fast.forward(*arrays.values(), **options)
    assert out.y.dtype == np.float64 and out.y.shape == (5, 3, 3)
    assert out.h_n.shape == (3, 3) and out.c_n.shape == (3, 7)


def test_flow_moves_no_bit():
    arrays, options, seeds = _problem(
        VARIANTS["everything"], SETTINGS["lengths-reverse-h0c0"], np.float32
    )
    _, with_flow = _run(lstm_fast, arrays, options, seeds, flow=True)
    _, without = _run(lstm_fast, arrays, options, seeds, flow=False)
    for k, field in enumerate(without[:9]):
        assert_same_bits(with_flow[k], field, what=str(k))


# ---------------------------------------------------------------------------
# PyTorch


def _torch_projected(arrays, options, seeds, dtype):
    """The same call through torch.nn.LSTM(proj_size=P): y, h_n, c_n and the
    gradients as NumPy arrays. ``reverse`` is the second direction of a
    bidirectional LSTM (its first direction gets zero weights and no gradient);
    lengths go through a PackedSequence (rows of length 0 are left out and
    filled in by lstm_fast's rule: y = 0, h_n = h0, dh0 = dh_n, dx = 0)."""
    import torch

    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
        np.dtype(dtype)
    ]
    x = arrays["x"]
    batch_first, reverse = options["batch_first"], options["reverse"]
    x_tm = x.transpose(1, 0, 2) if batch_first else x
    T, B, I = x_tm.shape  # noqa: E741
    P, H = options["w_hr"].shape
    lengths = options["lengths"]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    keep = np.flatnonzero(lengths > 0)
    dy = seeds["dy"].transpose(1, 0, 2) if batch_first else seeds["dy"]
    module = torch.nn.LSTM(I, H, proj_size=P, bidirectional=reverse, dtype=tdtype)
    suffix = "_reverse" if reverse else ""
    names = {"w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0", "b_ih": "bias_ih_l0",
             "b_hh": "bias_hh_l0", "w_hr": "weight_hr_l0"}  # fmt: skip
    params = {k: getattr(module, v + suffix) for k, v in names.items()}
    given = {**arrays, "w_hr": options["w_hr"]}
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        for k, p in params.items():
            p.copy_(torch.tensor(given[k]))

    def tensor(a):
        return torch.tensor(np.ascontiguousarray(a), dtype=tdtype, requires_grad=True)

    D = 2 if reverse else 1
    x_t = tensor(x_tm[:, keep])
    h0_t = tensor(np.stack([arrays["h0"][keep]] * D))
    c0_t = tensor(np.stack([arrays["c0"][keep]] * D))
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x_t, torch.tensor(lengths[keep]), enforce_sorted=False
    )
    y_packed, (hn_t, cn_t) = module(packed, (h0_t, c0_t))
    y_t, _ = torch.nn.utils.rnn.pad_packed_sequence(y_packed, total_length=T)
    y_t = y_t[..., P:] if reverse else y_t
    loss = (
        (y_t * torch.tensor(dy[:, keep])).sum()
        + (hn_t[-1] * torch.tensor(seeds["dh_n"][keep])).sum()
        + (cn_t[-1] * torch.tensor(seeds["dc_n"][keep])).sum()
    )
    loss.backward()
    y = np.zeros((T, B, P), dtype)
    y[:, keep] = y_t.detach().numpy()
    h_n, c_n = arrays["h0"].copy(), arrays["c0"].copy()
    h_n[keep], c_n[keep] = hn_t[-1].detach().numpy(), cn_t[-1].detach().numpy()
    dx = np.zeros_like(x_tm)
    dx[:, keep] = x_t.grad.numpy()
    dh0, dc0 = seeds["dh_n"].copy(), seeds["dc_n"].copy()
    dh0[keep], dc0[keep] = h0_t.grad[-1].numpy(), c0_t.grad[-1].numpy()
    if batch_first:
        y, dx = y.transpose(1, 0, 2), dx.transpose(1, 0, 2)
    grads = {"dx": dx, "dh0": dh0, "dc0": dc0}
    grads.update({"d" + k: p.grad.numpy() for k, p in params.items()})
    return (y, h_n, c_n), grads


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
@pytest.mark.parametrize(
    "setting", ["lengths-reverse-h0c0", "batch_first-lengths", "B1-P1", "many-rows"]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch(dtype, setting):
    arrays, options, seeds = _problem({}, SETTINGS[setting], dtype, seed=7)
    out, g = _run(lstm_fast, arrays, options, seeds, flow=False)
    (y, h_n, c_n), tg = _torch_projected(
        _f64(arrays), _f64(options), _f64(seeds), np.float64
    )  # float64 torch: only the engine's error is judged
    for mine, theirs, what in zip(out[:3], (y, h_n, c_n), ("y", "h_n", "c_n")):
        assert_close(mine, theirs, dtype, what=what)
    for field in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr"):
        assert_close(getattr(g, field), tg[field], dtype, what=field)


# ---------------------------------------------------------------------------
# Finite differences


def _loss(arrays, options, seeds) -> float:
    out = lstm_fast.forward(*arrays.values(), **options, need_cache=False)
    dy, dh, dc = seeds.values()
    return float((out.y * dy).sum() + (out.h_n * dh).sum() + (out.c_n * dc).sum())


@pytest.mark.parametrize("name", ["plain-gates", "peep+coupled"])
def test_finite_differences(name):
    """dw_hr, dx and dh0 against central differences of the engine's own forward
    (float64) through the projection."""
    arrays, options, seeds = _problem(
        VARIANTS[name], (5, 3, 3, 6, 4, [5, 2, 4], True, False, True), np.float64, seed=11
    )
    _, g = _run(lstm_fast, arrays, options, seeds, flow=False)
    rng = np.random.default_rng(1)
    step = 1e-6

    def check(container, key, grad, what):
        base = container[key]
        for _ in range(6):
            index = tuple(int(rng.integers(n)) for n in base.shape)
            plus, minus = base.copy(), base.copy()
            plus[index] += step
            minus[index] -= step
            numeric = (
                _loss(*_swap(arrays, options, container, key, plus), seeds)
                - _loss(*_swap(arrays, options, container, key, minus), seeds)
            ) / (2 * step)
            assert abs(numeric - grad[index]) <= 1e-6 * max(1.0, abs(numeric)), (what, index)

    check(options, "w_hr", g.dw_hr, "dw_hr")
    check(arrays, "x", g.dx, "dx")
    check(arrays, "h0", g.dh0, "dh0")
    check(arrays, "w_hh", g.dw_hh, "dw_hh")


def _swap(arrays, options, container, key, value):
    if container is arrays:
        return dict(arrays, **{key: value}), options
    return arrays, dict(options, **{key: value})


# ---------------------------------------------------------------------------
# Threads: the same bits

_THREAD_SCRIPT = r"""
from tests.test_projection import VARIANTS, SETTINGS, _problem, _run
for isa in lstm_fast.available_isas():
    lstm_fast._set_isa(isa)
    for name in ("plain-gates", "everything", "acts"):
        for dtype in (np.float32, np.float64):
            for setting in ("many-rows", "lengths-reverse-h0c0", "P>H"):
                arrays, options, seeds = _problem(VARIANTS[name], SETTINGS[setting], dtype, seed=3)
                fwd, g = _run(lstm_fast, arrays, options, seeds)
                h = digest(*fwd[:3], *g[:9], *g.flow)
                out[f"{{isa}}/{{name}}/{{np.dtype(dtype).name}}/{{setting}}"] = h
"""


def test_same_bits_for_any_thread_count_and_split():
    assert_same_hashes(_THREAD_SCRIPT)


def test_same_bits_for_any_thread_count_in_process(threads):
    # 40 rows: 1, 2 and 3 threads give 1, 2 and 3 batch chunks.
    lengths = [int(n) for n in np.random.default_rng(4).integers(0, 8, 40)]
    setting = (7, 40, 4, 33, 9, lengths, True, False, True)
    arrays, options, seeds = _problem(VARIANTS["everything"], setting, np.float32)

    def run():
        fwd, g = _run(lstm_fast, arrays, options, seeds)
        return [*fwd[:3], *g[:9], *g.flow]

    assert_same_bits_for_thread_counts(run)


# ---------------------------------------------------------------------------
# Prepared weights and the cell API


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prepared_weights_give_the_plain_calls_bits(dtype):
    arrays, options, seeds = _problem(VARIANTS["peepholes"], SETTINGS["many-rows"], dtype)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = arrays.values()
    w_hr = options.pop("w_hr")
    prepared = lstm_fast.prepare_weights(w_ih, w_hh, b_ih, b_hh, w_hr=w_hr)
    assert prepared.proj_size == 12 and prepared.hidden_size == 33
    assert "proj_size=12" in repr(prepared)
    for _ in range(2):  # the second call reuses the kept panels
        got = prepared.forward(x, h0, c0, **options)
        want = lstm_fast.forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr=w_hr, **options)
        for a, b in zip(got[:3], want[:3]):
            assert_same_bits(a, b)
        ga = lstm_fast.backward(got.cache, *seeds.values())
        gb = lstm_fast.backward(want.cache, *seeds.values())
        for a, b in zip(ga, gb):
            assert_same_bits(a, b)
    cell = prepared.cell_forward(x[0], h0, c0, peepholes=options["peepholes"])
    plain = lstm_fast.cell_forward(
        x[0], h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr=w_hr, peepholes=options["peepholes"]
    )
    assert_same_bits(cell.h_new, plain.h_new)
    assert_same_bits(cell.c_new, plain.c_new)
    with pytest.raises(TypeError, match="unexpected keyword argument 'w_hr'"):
        prepared.forward(x, w_hr=w_hr)


def test_prepared_weights_keep_private_copies_and_match():
    arrays, options, seeds = _problem({}, SETTINGS["basic"], np.float64)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = arrays.values()
    w_hr = options.pop("w_hr")
    prepared = lstm_fast.prepare_weights(w_ih, w_hh, b_ih, b_hh, w_hr=w_hr)
    before = prepared.forward(x, h0, c0, **options)
    assert prepared.matches(w_ih, w_hh, b_ih, b_hh, w_hr=w_hr)
    assert not prepared.matches(w_ih, w_hh, b_ih, b_hh)
    assert not lstm_fast.prepare_weights(w_ih[:, :], np.zeros((28, 7))).matches(
        w_ih, np.zeros((28, 7)), w_hr=w_hr
    )
    w_hr *= 1.5  # in place: the prepared copy is not the caller's array
    assert not prepared.matches(w_ih, w_hh, b_ih, b_hh, w_hr=w_hr)
    again = prepared.forward(x, h0, c0, **options)
    for a, b in zip(before[:3], again[:3]):
        assert_same_bits(a, b)
    # Prepared again: packed from the new w_hr, the plain call's bits.
    repacked = lstm_fast.prepare_weights(w_ih, w_hh, b_ih, b_hh, w_hr=w_hr)
    assert repacked.matches(w_ih, w_hh, b_ih, b_hh, w_hr=w_hr)
    got = repacked.forward(x, h0, c0, **options)
    want = lstm_fast.forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_hr=w_hr, **options)
    for a, b in zip(got[:3], want[:3]):
        assert_same_bits(a, b)
    assert not np.array_equal(got.y, before.y)


@pytest.mark.parametrize("name", ["plain-gates", "peepholes", "everything", "no_forget_gate"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cell_api(isa, dtype, name):
    arrays, options, seeds = _problem(VARIANTS[name], (1, 3, 4, 7, 2, None, False, False, True),
                                      dtype)  # fmt: skip
    for k in ("batch_first", "reverse", "lengths"):
        options.pop(k)
    x, w_ih, w_hh, b_ih, b_hh, h, c = arrays.values()
    cell = lstm_fast.cell_forward(x[0], h, c, w_ih, w_hh, b_ih, b_hh, **options)
    r_cell = ref.cell_forward(*_f64({"x": x[0], "h": h, "c": c}).values(),
                              *_f64({"a": w_ih, "b": w_hh, "c": b_ih, "d": b_hh}).values(),
                              **_f64(options))  # fmt: skip
    assert cell.h_new.shape == (3, 2) and cell.c_new.shape == (3, 7)
    assert_close(cell.h_new, r_cell.h_new, dtype)
    assert_close(cell.c_new, r_cell.c_new, dtype)
    dh, dc = seeds["dh_n"], seeds["dc_n"]
    g = lstm_fast.cell_backward(cell.cache, dh, dc)
    r = ref.cell_backward(r_cell.cache, dh.astype(np.float64), dc.astype(np.float64))
    assert type(g).__name__ == type(r).__name__ == "CellVariantGradients"
    assert g.dw_hr.shape == (2, 7)
    for k, (mine, theirs) in enumerate(zip(g, r)):
        if theirs is None:
            assert mine is None
        else:
            assert_close(mine, theirs, dtype, what=str(k))


# ---------------------------------------------------------------------------
# Bad input


def _bad_call(change: dict, entry: str):
    arrays, options, seeds = _problem({}, (3, 2, 4, 5, 3, None, False, False, True), np.float32)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = arrays.values()
    a = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "h0": h0, "c0": c0,
         "w_hr": options["w_hr"]}  # fmt: skip
    a.update({k: v for k, v in change.items() if k in a})
    if entry == "forward":
        lstm_fast.forward(**a)
    elif entry == "cell_forward":
        lstm_fast.cell_forward(a["x"][0], a["h0"], a["c0"], a["w_ih"], a["w_hh"],
                               a["b_ih"], a["b_hh"], w_hr=a["w_hr"])  # fmt: skip
    elif entry == "prepare_weights":
        lstm_fast.prepare_weights(a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], w_hr=a["w_hr"])
    elif entry == "backward":
        cache = lstm_fast.forward(x, w_ih, w_hh, w_hr=options["w_hr"]).cache
        seeds = {"dy": np.zeros((3, 2, 3)), "dh_n": np.zeros((2, 3)), "dc_n": np.zeros((2, 5))}
        seeds.update({k: v for k, v in change.items() if k in seeds})
        lstm_fast.backward(cache, **seeds)
    elif entry == "cell_backward":
        cache = lstm_fast.cell_forward(x[0], h0, c0, w_ih, w_hh, w_hr=options["w_hr"]).cache
        seeds = {"dh_new": np.zeros((2, 3)), "dc_new": np.zeros((2, 5))}
        seeds.update({k: v for k, v in change.items() if k in seeds})
        lstm_fast.cell_backward(cache, **seeds)


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"w_hr": np.zeros((3, 4))}, ValueError, r"w_hr must have shape \(proj_size, hidden_size"),
        ({"w_hr": np.zeros((0, 5))}, ValueError, "w_hr must have shape"),
        ({"w_hr": np.zeros(15)}, ValueError, "w_hr must have shape"),
        ({"w_hr": np.zeros((1, 3, 5))}, ValueError, "w_hr must have shape"),
        ({"w_hr": np.zeros((3, 5), complex)}, TypeError, "w_hr"),
        ({"w_hr": "abc"}, TypeError, "w_hr"),
        ({"w_hr": np.zeros((4, 5))}, ValueError, r"w_hh must have shape \(4\*hidden_size, proj"),
        ({"w_hh": np.zeros((20, 5))}, ValueError, r"w_hh must have shape \(4\*hidden_size, proj"),
        ({"w_hh": np.zeros((19, 3))}, ValueError, "w_hh"),
        ({"h0": np.zeros((2, 5))}, ValueError, r"h0 must have shape \(batch, proj_size\)"),
        ({"c0": np.zeros((2, 3))}, ValueError, r"c0 must have shape \(batch, hidden_size\)"),
    ],
)
@pytest.mark.parametrize("entry", ["forward", "cell_forward", "prepare_weights"])
def test_bad_arguments(entry, change, error, match):
    if entry == "cell_forward":
        match = match.replace("h0", "h").replace("c0", "c")
    if entry == "prepare_weights" and ("h0" in change or "c0" in change):
        pytest.skip("prepare_weights takes no state")
    with pytest.raises(error, match=match):
        _bad_call(change, entry)


@pytest.mark.parametrize(
    "entry, change, match",
    [
        ("backward", {"dy": np.zeros((3, 2, 5))}, r"dy must have shape \(seq_len, batch, proj"),
        ("backward", {"dh_n": np.zeros((2, 5))}, r"dh_n must have shape \(batch, proj_size\)"),
        ("backward", {"dc_n": np.zeros((2, 3))}, r"dc_n must have shape \(batch, hidden_size\)"),
        ("cell_backward", {"dh_new": np.zeros((2, 5))}, r"dh_new must have shape \(batch, proj"),
        ("cell_backward", {"dc_new": np.zeros((2, 3))}, r"dc_new must have shape \(batch, hid"),
    ],
)
def test_bad_seeds(entry, change, match):
    with pytest.raises(ValueError, match=match):
        _bad_call(change, entry)


def test_prepared_matches_refuses_a_bad_w_hr():
    arrays, options, _ = _problem({}, SETTINGS["basic"], np.float64)
    _, w_ih, w_hh, b_ih, b_hh, _, _ = arrays.values()
    prepared = lstm_fast.prepare_weights(w_ih, w_hh, b_ih, b_hh, w_hr=options["w_hr"])
    assert not prepared.matches(w_ih, w_hh, b_ih, b_hh, w_hr=options["w_hr"][:2])
    with pytest.raises(TypeError, match="w_hr"):
        prepared.matches(w_ih, w_hh, b_ih, b_hh, w_hr="abc")

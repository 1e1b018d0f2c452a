"""The compiled engine against ``torch.nn.LSTM`` (skipped when torch is missing).

Outputs, dx, dh0, dc0 and every parameter gradient; ``lengths`` through
``pack_padded_sequence(enforce_sorted=False)``; ``reverse`` as the second
direction of a bidirectional LSTM. Both sides compute in the same dtype, so the
float32 tolerance covers two different float32 implementations.
"""

from __future__ import annotations

import lstm_fast as lf
import numpy as np
import pytest
from conftest import Case, assert_close, make_arrays, run_both, torch_lstm

pytest.importorskip("torch")

CASES = [
    Case(5, 3, 4, 6),
    Case(6, 5, 7, 9, lengths="mixed"),
    Case(6, 5, 7, 9, lengths="mixed", reverse=True),
    Case(7, 4, 3, 17, lengths="random", reverse=True, batch_first=True, seed=2),
    Case(4, 8, 33, 16, lengths="random", batch_first=True, seed=4),
    Case(3, 2, 1, 1, bias="none", state="none"),
    Case(4, 3, 3, 4, bias="ih", state="h0", grads="dy", lengths="mixed", reverse=True),
    Case(4, 3, 3, 4, bias="hh", state="c0", grads="final", lengths="full"),
    Case(8, 2, 9, 33, scale=3.0, seed=9),
    Case(3, 4, 2, 3, lengths="zeros"),
    Case(1, 1, 1, 1),
    Case(10, 16, 24, 64, lengths="random", seed=12),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id.replace("-float64", ""))
def test_engine_matches_torch(isa, case, dtype):
    case = case.with_(dtype=dtype)
    arrays = make_arrays(case)
    out, grads = run_both(lf, case, arrays)
    y, h_n, c_n, torch_grads = torch_lstm(arrays, case)
    assert_close(out.y, y, dtype, what="y")
    assert_close(out.h_n, h_n, dtype, what="h_n")
    assert_close(out.c_n, c_n, dtype, what="c_n")
    for name, want in torch_grads.items():
        got = getattr(grads, name)
        if want is None:
            assert got is None, name
        else:
            assert got.dtype == dtype, name
            assert_close(got, want, dtype, what=name)


def test_engine_matches_torch_module_defaults():
    """A plain ``nn.LSTM`` call (its own initialisation, no h0/c0) through our API."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.LSTM(10, 20, dtype=torch.float64)
    x = torch.randn(6, 3, 10, dtype=torch.float64, requires_grad=True)
    y, (h_n, c_n) = module(x)
    (y.sum() + 2 * h_n.sum() - c_n.sum()).backward()
    params = {name: p.detach().numpy() for name, p in module.named_parameters()}
    out = lf.forward(
        x.detach().numpy(), params["weight_ih_l0"], params["weight_hh_l0"],
        params["bias_ih_l0"], params["bias_hh_l0"],
    )  # fmt: skip
    assert_close(out.y, y.detach().numpy(), np.float64)
    grads = lf.backward(
        out.cache, np.ones(out.y.shape), np.full((3, 20), 2.0), np.full((3, 20), -1.0)
    )
    assert_close(grads.dx, x.grad.numpy(), np.float64)
    named = {"dw_ih": "weight_ih_l0", "dw_hh": "weight_hh_l0", "db_ih": "bias_ih_l0",
             "db_hh": "bias_hh_l0"}  # fmt: skip
    for ours, theirs in named.items():
        grad = dict(module.named_parameters())[theirs].grad.numpy()
        assert_close(getattr(grads, ours), grad, np.float64, what=ours)

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

from tests.helpers import (
    TORCH_CASES,
    assert_close,
    assert_matches_torch,
    each_dtype,
    make_arrays,
    run_both,
)

pytest.importorskip("torch")


@each_dtype
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.id.replace("-float64", ""))
def test_engine_matches_torch(isa, case, dtype):
    case = case.with_(dtype=dtype)
    arrays = make_arrays(case)
    out, grads = run_both(lf, case, arrays)
    assert_matches_torch(case, arrays, out, grads)


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

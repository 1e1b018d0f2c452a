"""``python -m lstm_fast suite`` at tiny sizes: every section and kind of case runs.

No timing is asserted (that is the suite's job, on a quiet machine); these tests
check that each path (stacks, both directions, ragged rows, one step per call, the
per-call, latency and steadiness sections, the peers where installed) runs and
prints its table, and that the peers compute what lstm_fast computes.
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
from lstm_fast import __main__ as cli
from lstm_fast import suite
from lstm_fast.benchmark import Shape

TINY_SHAPE = Shape("tiny", 2, 5, 6, 4)

TINY = suite.Settings(
    repeats=2,
    budget_s=0.01,
    rounds=1,
    per_call_size=8,
    per_call_budget_s=0.005,
    latency_shape=TINY_SHAPE,
    latency_calls=10,
    idle_calls=2,
    idle_s=0.001,
    steady_shapes=(TINY_SHAPE,),
    settle_s=0.0,
)

TINY_CASES = (
    suite.Case("wide", "test", "wide", 4, 3, 10, (suite.Block(3),)),
    suite.Case("stack", "test", "stack", 2, 6, 4, (suite.Block(5, 2),)),
    suite.Case("ragged", "test", "ragged", 5, 7, 3, (suite.Block(4),), ragged=True),
    suite.Case(
        "bidir",
        "test",
        "bidir",
        3,
        4,
        5,
        (suite.Block(3, 1, True), suite.Block(4, 2, True)),
        ragged=True,
    ),
    suite.Case("step", "test", "step", 1, 1, 1, (suite.Block(3),), one_step=True),
)

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def test_every_section_prints_its_table(capsys):
    suite.run_suite(TINY_CASES, 1, TINY)
    out = capsys.readouterr().out
    assert "CPU: " in out and "1 thread(s)" in out
    for heading in ("## Reported cases", "## Per-call cost", "## Latency at tiny", "## Steadiness"):
        assert heading in out
    for case in TINY_CASES:
        assert f"| {case.name} | test | {case.describe()} |" in out
    assert "| cell_forward / nn.LSTMCell |" in out
    assert "prepare_weights(...).forward" in out
    assert "Done in" in out
    # The peers' forward outputs agree with ours in every case.
    agreement = re.findall(r"(?:PyTorch|ONNX RT) ([0-9.]+e[-+][0-9]+|inf|nan)\b", out)
    assert len(agreement) >= 4 * (HAVE_TORCH + HAVE_ORT)
    assert all(float(value) < 1e-4 for value in agreement)


@pytest.mark.parametrize("case", [c for c in TINY_CASES if not c.one_step], ids=lambda c: c.name)
def test_peers_compute_what_lstm_fast_computes(case):
    model = suite._build_model(case)
    fns, skipped = suite._case_fns(model, 1)
    ours = fns["lstm_fast"].forward()
    for impl, f in fns.items():
        if impl == "torch_padded":  # runs the padding too: a timing reference only
            continue
        np.testing.assert_allclose(f.forward(), ours, rtol=1e-4, atol=1e-5, err_msg=impl)
    if case.ragged and "torch" in fns:
        # Packed (and ours) leave the padded steps at zero; padded PyTorch does not.
        short = int(np.argmin(model.lengths))
        assert not ours[int(model.lengths[short]) :, short].any()
    assert set(fns) | set(skipped) >= {"lstm_fast", "torch", "onnxruntime"}
    fb = fns["lstm_fast"].forward_backward
    assert fb is not None and fb().shape == model.x.shape


def test_quick_cases_are_smaller():
    for case in suite.CASES:
        small = case.shrunk()
        assert small.batch * small.steps <= case.batch * case.steps
        assert small.quick is None and small.name == case.name


def test_cli_wires_the_suite(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["suite", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--quick", "--threads", "--cases", "--sections"):
        assert option in out
    with pytest.raises(SystemExit):
        cli.main(["suite", "--cases", "nosuchcase"])

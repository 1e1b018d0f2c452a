"""Forward+backward (training step) benchmarks: a forward that keeps the cache,
then the full backward through time (gradients of x, h0, c0, weights, biases).
ONNX Runtime has no backward and is not in this file.

See ``conftest.py`` for how to run them and what the smoke mode does.
"""

from __future__ import annotations

from typing import Callable

import pytest
from lstm_fast.benchmark import SHAPES

TRAINING_IMPLS = ("lstm_fast", "reference", "torch")
CASES = [pytest.param(s, i, id=f"{s}-{i}") for s in SHAPES for i in TRAINING_IMPLS]


@pytest.mark.parametrize(("shape_name", "impl"), CASES)
def test_forward_backward(
    measure: Callable[[str, str, str], None], shape_name: str, impl: str
) -> None:
    measure(shape_name, impl, "fwd+bwd")

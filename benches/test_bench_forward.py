"""Forward (inference) benchmarks, and the sgemm rate they are judged against.

See ``conftest.py`` for how to run them and what the smoke mode does.
"""

from __future__ import annotations

from typing import Callable

import pytest
from lstm_fast.benchmark import IMPLS, SHAPES

CASES = [pytest.param(s, i, id=f"{s}-{i}") for s in SHAPES for i in IMPLS]


@pytest.mark.parametrize(("shape_name", "impl"), CASES)
def test_forward(measure: Callable[[str, str, str], None], shape_name: str, impl: str) -> None:
    measure(shape_name, impl, "fwd")


def test_sgemm_2048(measure_sgemm: Callable[[int], None]) -> None:
    """NumPy float32 matmul on all of BLAS's threads: the machine's practical limit."""
    measure_sgemm(2048)

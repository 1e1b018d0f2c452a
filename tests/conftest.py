"""Fixtures and hooks: the engine, one run per instruction set, the thread count.

The helpers the test modules share are in ``tests/helpers.py``.
"""

from __future__ import annotations

import pytest


def _engine():
    import lstm_fast

    return lstm_fast


@pytest.fixture(scope="session")
def lf():
    """The compiled engine (``import lstm_fast``)."""
    return _engine()


# Instruction sets whose bf16 inference multiplies on the BF16 dot products,
# rounding x and h to bfloat16 too (tests/test_bf16_dot.py); on the others it
# gives the float32 engine's bits on the rounded weights.
BF16_DOT_ISAS = ("avx512bf16",)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "bf16_widening: run the `isa` parametrisation only over the instruction sets whose "
        "bf16 inference widens the weights (the float32 engine's bits on rounded weights)",
    )


def pytest_generate_tests(metafunc):
    # `isa` runs a test once per instruction set this machine supports.
    if "isa" in metafunc.fixturenames:
        isas = list(_engine().available_isas())
        if metafunc.definition.get_closest_marker("bf16_widening"):
            isas = [name for name in isas if name not in BF16_DOT_ISAS]
        metafunc.parametrize("isa", isas, indirect=True, ids=[f"isa-{name}" for name in isas])


@pytest.fixture
def bf16_widening_isa():
    """For a test of the float32-bits contract of bf16 inference: the best
    instruction set whose bf16 inference widens the weights, restored after."""
    lstm_fast = _engine()
    previous = lstm_fast.get_isa()
    widening = [name for name in lstm_fast.available_isas() if name not in BF16_DOT_ISAS]
    lstm_fast._set_isa(widening[-1])
    try:
        yield widening[-1]
    finally:
        lstm_fast._set_isa(previous)


@pytest.fixture
def isa(request):
    """Select one kernel family for the test, restoring the previous one after."""
    lstm_fast = _engine()
    previous = lstm_fast.get_isa()
    lstm_fast._set_isa(request.param)
    assert lstm_fast.get_isa() == request.param
    try:
        yield request.param
    finally:
        lstm_fast._set_isa(previous)


@pytest.fixture
def threads():
    """Restore the engine's thread count after a test that changes it."""
    lstm_fast = _engine()
    previous = lstm_fast.get_num_threads()
    try:
        yield lstm_fast
    finally:
        lstm_fast.set_num_threads(previous)

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


def pytest_generate_tests(metafunc):
    # `isa` runs a test once per instruction set this machine supports.
    if "isa" in metafunc.fixturenames:
        isas = list(_engine().available_isas())
        metafunc.parametrize("isa", isas, indirect=True, ids=[f"isa-{name}" for name in isas])


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

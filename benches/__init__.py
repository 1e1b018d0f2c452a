"""pytest-benchmark suites.

A package, like tests/, so that pytest imports its conftest as ``benches.conftest``,
apart from ``tests.conftest``.
"""

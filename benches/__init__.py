"""pytest-benchmark suites.

A package, so that its conftest is not the module ``conftest`` that tests/ imports from.
"""

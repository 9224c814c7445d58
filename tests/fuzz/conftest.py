"""Fuzz tests (each module is marked `fuzz`): `-m fuzz` runs them with the long budget."""

from __future__ import annotations

import pytest

from . import budget


def pytest_configure(config: pytest.Config) -> None:
    budget.choose(config.getoption("markexpr", ""))


def pytest_report_header(config: pytest.Config) -> str:
    return f"fuzz budget: {'long' if budget.is_long() else 'short'} (see tests/fuzz/budget.py)"

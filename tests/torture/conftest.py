"""Prints the totals of the torture run (tests/torture/test_torture.py) at the end of the session."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tests.torture.harness import TOTALS

if TYPE_CHECKING:
    import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # The default short run (part of `uv run pytest`) stays quiet; a sized run reports.
    if not TOTALS or "CONCRESCE_TORTURE_CALLS" not in os.environ:
        return
    terminalreporter.section("concresce torture run")
    for mode, totals in sorted(TOTALS.items()):
        terminalreporter.write_line(f"{mode}: {totals.line()}")
        terminalreporter.write_line(f"    outcomes: {dict(totals.outcomes.most_common())}")

"""The contract suite: the same tests on every runtime concresce supports.

Tests here are written against anyio, never against asyncio or trio directly, and run on
four backends: ``asyncio`` and ``asyncio+eager`` (the virtual clock of ``tests/support.py``),
``uvloop`` (real clock; with the slow set only, ``CONCRESCE_SLOW_TESTS=1``) and ``trio``
(``trio.testing.MockClock`` with autojump: time jumps to the next deadline whenever every
task is blocked). Tests that need a virtual clock are marked ``virtual_clock``: their uvloop
variant is deselected, as in the rest of the suite.

Helpers for the tests are in ``kit.py`` beside this file.
"""

from __future__ import annotations

import pytest
from tests.conftest import BACKENDS, AnyioBackend
from tests.support import slow_tests

#: The backends of this folder: the suite's asyncio ones, and trio. uvloop's variants run
#: with the slow set (``CONCRESCE_SLOW_TESTS=1``, as CI does): they are a third of this
#: folder's time, and the rest of the suite runs on uvloop in every run.
RUNTIME_BACKENDS = [backend for backend in [*BACKENDS, "trio"] if backend != "uvloop" or slow_tests()]


@pytest.fixture(scope="module", params=RUNTIME_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> AnyioBackend:
    """The backend of the tests of this folder."""
    if request.param == "trio":
        import trio.testing  # noqa: PLC0415 -- a test dependency, imported for this backend only

        # A clock per module: anyio runs a module's tests in one trio run.
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return BACKENDS[request.param]

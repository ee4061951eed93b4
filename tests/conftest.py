"""Backends, the virtual clock, and the leak and hygiene checks every test gets.

* ``anyio_backend`` runs each ``@pytest.mark.anyio`` test on ``asyncio`` (virtual
  clock), ``asyncio+eager`` (same, with ``asyncio.eager_task_factory``; Python 3.12+
  only) and ``uvloop`` (real clock), all in debug mode.
* Tests marked ``@pytest.mark.virtual_clock``, or requesting the ``clock`` fixture, only
  run on the virtual-clock backends: the others are deselected, not skipped.
* After every passing test: no task left pending on its loop, no call to the loop's
  exception handler ("Task exception was never retrieved", "Task was destroyed but it is
  pending", ...), and, after garbage collection, no engine object (``_Call``,
  ``_Batch``, ``_Partition``) created by the test still alive.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import sys
from typing import TYPE_CHECKING, Any, Final

import hypothesis  # noqa: F401 -- first: its plugins (trio's) load before trio is imported elsewhere
import pytest
from tests.support import (
    VirtualClock,
    VirtualClockEventLoop,
    cancel_and_wait,
    current_clock,
    describe_objects,
    describe_tasks,
    gc_collect_harder,
    live_engine_objects,
    new_virtual_loop,
    pending_tasks,
    record_exception_handler_calls,
    slow_tests,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Generator, Iterator

pytest_plugins = ("pytester",)

AnyioBackend = tuple[str, dict[str, Any]]

#: anyio backend parameters by test id: ``("asyncio", options)``, the options going to
#: anyio's asyncio test runner (``debug``, ``loop_factory``, ``use_uvloop``).
BACKENDS: Final[dict[str, AnyioBackend]] = {
    "asyncio": ("asyncio", {"debug": True, "loop_factory": VirtualClockEventLoop}),
}
if sys.version_info >= (3, 12):
    BACKENDS["asyncio+eager"] = (
        "asyncio",
        {
            "debug": True,
            "loop_factory": functools.partial(new_virtual_loop, eager=True),
        },
    )
if sys.platform != "win32":  # uvloop is a test dependency everywhere else
    BACKENDS["uvloop"] = ("asyncio", {"debug": True, "use_uvloop": True})

#: The backends whose loop is a VirtualClockEventLoop.
VIRTUAL_CLOCK_BACKENDS: Final = frozenset({"asyncio", "asyncio+eager", "trio"})

_call_passed = pytest.StashKey[bool]()
_clock_deselected = pytest.StashKey[int]()
_runtimes_collected = pytest.StashKey[bool]()

#: The folder whose tests need real servers, relative to the rootdir.
INTEGRATION_PREFIX: Final = "tests/integration/"
#: How to run them, for the summary line of a run that skipped them.
RUN_THE_SERVERS: Final = (
    'd="$(mktemp -d)"; eval "$(.ci/servers start "$d")"; uv run pytest; .ci/servers stop "$d" '
    "(README: 'Integration tests')"
)
_engine_baseline = pytest.StashKey[frozenset[int]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "virtual_clock: the test needs the virtual clock; it runs only on the "
        "virtual-clock backends (asyncio, asyncio+eager), the others are deselected.",
    )


def _backend_id(item: pytest.Item) -> str | None:
    if not isinstance(item, pytest.Function) or not hasattr(item, "callspec"):
        return None  # not parametrized
    backend: str | None = item.callspec.params.get("anyio_backend")
    return backend


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        needs_clock = item.get_closest_marker("virtual_clock") is not None or (
            "clock" in getattr(item, "fixturenames", ())
        )
        backend = _backend_id(item)
        if needs_clock and backend is not None and backend not in VIRTUAL_CLOCK_BACKENDS:
            deselected.append(item)
        else:
            selected.append(item)
    config.stash[_clock_deselected] = len(deselected)
    config.stash[_runtimes_collected] = any(item.nodeid.startswith("tests/runtimes/") for item in items)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say in one line what was skipped and why, and what the deselected tests are.

    Replaces pytest's ``-rs`` list (``addopts`` asks for ``-rfExX``), whose line per skipped
    test hides the one fact that matters on a new clone: the integration tests need servers.
    """
    parts: list[str] = []
    integration: set[str] = set()
    n_integration = 0
    others: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        if hasattr(report, "wasxfail"):
            continue
        reason = _skip_reason(report)
        if report.nodeid.startswith(INTEGRATION_PREFIX):
            n_integration += 1
            integration.add(reason.partition(":")[0])
        else:
            others[reason] = others.get(reason, 0) + 1
    if n_integration:
        why = "; ".join(sorted(integration))
        parts.append(
            f"{n_integration} integration tests need PostgreSQL and Redis ({why}); to run them: {RUN_THE_SERVERS}"
        )
    parts.extend(f"{count} test{'s' * (count != 1)}: {reason}" for reason, count in sorted(others.items()))
    if parts:
        terminalreporter.write_line("skipped: " + " | ".join(parts))
    n_clock = terminalreporter.config.stash.get(_clock_deselected, 0)
    if n_clock:
        terminalreporter.write_line(
            f"deselected: {n_clock} uvloop variants of virtual-clock tests (uvloop's clock cannot be replaced)"
        )
    if not slow_tests() and terminalreporter.config.stash.get(_runtimes_collected, False):
        terminalreporter.write_line(
            "not run: the uvloop variants of tests/runtimes (the contract suite), which run with the "
            "slow set: CONCRESCE_SLOW_TESTS=1 uv run pytest"
        )


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        # The hygiene checks judge passing tests only: a failure's traceback keeps its
        # frames (and their tasks and batches) alive, and its leftovers are noise.
        item.stash[_call_passed] = report.passed
    return report


@pytest.fixture(scope="module", params=list(BACKENDS))
def anyio_backend(request: pytest.FixtureRequest) -> AnyioBackend:
    """The anyio backend and options for ``@pytest.mark.anyio`` tests, by backend id."""
    return BACKENDS[request.param]


@pytest.fixture
def backend_id(request: pytest.FixtureRequest, anyio_backend: AnyioBackend) -> str:
    """The running backend's id: ``"asyncio"``, ``"asyncio+eager"``, ``"uvloop"`` (or ``"trio"``)."""
    backend: str = request.node.callspec.params["anyio_backend"]
    return backend


@pytest.fixture
async def clock() -> VirtualClock:
    """The running loop's virtual clock (requesting it implies ``virtual_clock``)."""
    # The loop is the test's own: ``_loop_hygiene`` holds anyio's runner open from
    # before this fixture until after the test.
    try:
        return current_clock()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(autouse=True)
def _hygiene(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a passing test that leaked tasks, loop errors or engine objects."""
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        # pytest keeps the last failure here for post-mortems; it may hold old batches.
        if hasattr(sys, name):
            delattr(sys, name)
    request.node.stash[_engine_baseline] = frozenset(map(id, live_engine_objects()))
    # Every test ends with full collections. Move what is alive now (modules, pytest's
    # items, hypothesis' internals, earlier tests' leftovers) out of the collector's sight
    # so that they scan only what this test creates: milliseconds instead of a whole heap.
    # (So a test should not call gc.unfreeze(); it has no need to freeze either.)
    gc.collect()
    gc.freeze()
    if "anyio_backend" in request.fixturenames:
        # Checked on the test's loop, before anyio's runner cancels leftovers and closes
        # it. An autouse async fixture would break sync tests, hence this indirection.
        request.getfixturevalue("_loop_hygiene")
    yield
    if "anyio_backend" not in request.fixturenames and request.node.stash.get(_call_passed, False):
        gc_collect_harder()
        _check_engine_objects(request.node)


@pytest.fixture
async def _loop_hygiene(request: pytest.FixtureRequest, anyio_backend: AnyioBackend) -> AsyncIterator[None]:
    if anyio_backend[0] == "trio":
        # Structured concurrency: no task outlives its nursery, and what a task raises is
        # raised, not logged. What is left to check: no engine object outlives the test.
        yield
        if request.node.stash.get(_call_passed, False):
            gc_collect_harder()
            _check_engine_objects(request.node)
        return
    loop = asyncio.get_running_loop()
    handler_calls = record_exception_handler_calls(loop)
    yield
    leftovers = [task for task in pending_tasks(loop) if not _is_anyio_runner(task)]
    description = describe_tasks(leftovers)
    stuck = await cancel_and_wait(leftovers)
    del leftovers
    if not request.node.stash.get(_call_passed, False):
        return
    if description:
        pytest.fail(
            "tasks still pending when the test ended (now cancelled"
            f"{f', {len(stuck)} refused' if stuck else ''}):\n{description}",
            pytrace=False,
        )
    # Collect first: finalizers of lost futures and tasks call the exception handler.
    gc_collect_harder()
    if handler_calls:
        pytest.fail(
            f"the loop's exception handler was called {len(handler_calls)} time(s):\n" + "\n---\n".join(handler_calls),
            pytrace=False,
        )
    _check_engine_objects(request.node)


def _is_anyio_runner(task: asyncio.Task[Any]) -> bool:
    # anyio's test runner drives fixtures and tests from a task of its own (the current
    # one in _loop_hygiene) and awaits each step from another: both belong to anyio.
    coro = task.get_coro()
    frame = getattr(coro, "cr_frame", None)
    return (
        frame is not None
        and frame.f_globals.get("__name__") == "anyio._backends._asyncio"
        and getattr(coro, "__qualname__", "").startswith("TestRunner.")
    )


def _check_engine_objects(node: pytest.Item) -> None:
    baseline = node.stash[_engine_baseline]
    leaked = live_engine_objects(ignore=baseline)
    if leaked:
        description = describe_objects(leaked)
        count = len(leaked)
        del leaked
        pytest.fail(
            f"{count} engine object(s) still alive after the test:\n{description}",
            pytrace=False,
        )

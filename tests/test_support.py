"""The test infrastructure itself: virtual clock, backends, hygiene checks, helpers."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests import support
from tests.conftest import BACKENDS, VIRTUAL_CLOCK_BACKENDS
from tests.support import (
    EAGER_TASKS_AVAILABLE,
    Recorder,
    VirtualClock,
    VirtualClockEventLoop,
    cancel_and_wait,
    current_clock,
    live_engine_objects,
    pending_tasks,
    record_exception_handler_calls,
    run_virtual,
    settle,
    wait_all_tasks_blocked,
)

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio


# -- backends ---------------------------------------------------------------------------


async def test_backend_runs_the_promised_loop(backend_id: str) -> None:
    """Each backend id runs its loop: virtual clock or not, eager or not, debug on."""
    loop = asyncio.get_running_loop()
    assert loop.get_debug()
    assert isinstance(loop, VirtualClockEventLoop) is (backend_id in VIRTUAL_CLOCK_BACKENDS)
    if sys.version_info >= (3, 12):
        eager = loop.get_task_factory() is asyncio.eager_task_factory
        assert eager is (backend_id == "asyncio+eager")
    if backend_id == "uvloop":
        assert type(loop).__module__.startswith("uvloop")


def test_backends_exist_on_this_python() -> None:
    """``asyncio+eager`` exists exactly where eager_task_factory does; uvloop off Windows."""
    assert ("asyncio+eager" in BACKENDS) is EAGER_TASKS_AVAILABLE
    assert ("uvloop" in BACKENDS) is (sys.platform != "win32")
    assert "asyncio" in BACKENDS


async def test_gather_of_sleeps_returns_in_order(backend_id: str) -> None:
    """Concurrent sleeps overlap: the gather takes as long as the longest one."""
    loop = asyncio.get_running_loop()

    async def sleep_then(delay: float) -> float:
        await asyncio.sleep(delay)
        return delay

    start = loop.time()
    assert await asyncio.gather(*(sleep_then(d) for d in (0.03, 0.01, 0.02))) == [0.03, 0.01, 0.02]
    elapsed = loop.time() - start
    if backend_id in VIRTUAL_CLOCK_BACKENDS:
        assert elapsed == 0.03
    else:
        # uvloop's timers have a resolution of 1 ms (libuv), and loop.time() is a float of its own.
        assert 0.028 <= elapsed < 5


@pytest.mark.virtual_clock
async def test_virtual_clock_marker_runs_on_virtual_backends_only(backend_id: str) -> None:
    """A ``virtual_clock`` test never runs on uvloop (it is deselected, not skipped)."""
    assert backend_id in VIRTUAL_CLOCK_BACKENDS
    assert isinstance(asyncio.get_running_loop(), VirtualClockEventLoop)


async def test_clock_fixture_implies_virtual_clock(clock: VirtualClock, backend_id: str) -> None:
    """Requesting ``clock`` is enough to be deselected on uvloop."""
    assert backend_id in VIRTUAL_CLOCK_BACKENDS
    assert clock is current_clock()


# -- the virtual clock ------------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_sleep_completes_at_once_with_exact_virtual_time(clock: VirtualClock) -> None:
    """``sleep(10)`` takes no real time and moves the clock by exactly 10."""
    assert clock.now() == 0.0
    real_start = time.monotonic()
    await asyncio.sleep(10)
    assert clock.now() == 10
    assert asyncio.get_running_loop().time() == 10
    assert anyio.current_time() == 10
    assert time.monotonic() - real_start < 1


@pytest.mark.virtual_clock
async def test_clock_lands_exactly_on_deadlines(clock: VirtualClock) -> None:
    """The clock jumps to the timer's own deadline, so no rounding creeps in."""
    await asyncio.sleep(0.1)
    await asyncio.sleep(10)
    assert clock.now() == 0.1 + 10
    await asyncio.sleep(0.05)
    assert clock.now() == 0.1 + 10 + 0.05


@pytest.mark.virtual_clock
async def test_timers_fire_at_huge_virtual_times(clock: VirtualClock) -> None:
    """Far in the future (where 1 ns vanishes in rounding) timers still fire on time."""
    await asyncio.sleep(1e9)
    assert clock.now() == 1e9
    record = Recorder()
    asyncio.get_running_loop().call_later(1e9, record, "fired")
    clock.advance_to(2e9)
    await wait_all_tasks_blocked()
    assert record == ["fired"]
    await asyncio.sleep(0.5)
    assert clock.now() == 2e9 + 0.5


@pytest.mark.virtual_clock
async def test_call_later_runs_in_deadline_order(clock: VirtualClock) -> None:
    """Timers fire in deadline order (FIFO for equal deadlines), each at its deadline."""
    loop = asyncio.get_running_loop()
    record = Recorder()

    def fire(name: str) -> None:
        record(name, clock.now())

    for name, delay in [("c", 3.0), ("a", 1.0), ("b", 2.0), ("b2", 2.0), ("now", 0.0)]:
        loop.call_later(delay, fire, name)
    await asyncio.sleep(5)
    assert record == [("now", 0.0), ("a", 1.0), ("b", 2.0), ("b2", 2.0), ("c", 3.0)]


@pytest.mark.virtual_clock
async def test_timeouts_fire_at_their_virtual_deadline(clock: VirtualClock) -> None:
    """``wait_for`` times out after exactly its timeout, without waiting for real."""
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), 5)
    assert clock.now() == 5


@pytest.mark.virtual_clock
async def test_advance_makes_due_timers_fire(clock: VirtualClock) -> None:
    """``advance`` moves time at once; timers now due fire on the next loop turn."""
    record = Recorder()
    asyncio.get_running_loop().call_later(5, record, "fired")
    clock.advance(4.5)
    assert clock.now() == 4.5
    await settle(2)
    assert record == []
    clock.advance_to(6)
    await wait_all_tasks_blocked()
    assert record == ["fired"]
    assert clock.now() == 6


def test_advance_rejects_negative_or_non_finite_steps() -> None:
    """Virtual time never goes backwards or to infinity."""
    clock = VirtualClock()
    clock.advance(1)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="seconds must be >= 0 and finite"):
            clock.advance(bad)
    with pytest.raises(ValueError, match=r"cannot move the clock from 1\.0 to 0\.5"):
        clock.advance_to(0.5)
    assert clock.now() == 1
    assert repr(clock) == "<VirtualClock now=1.0>"


@pytest.mark.virtual_clock
async def test_to_thread_works_on_the_virtual_clock(clock: VirtualClock) -> None:
    """Threads wake the loop through its self-pipe; with no timer the clock stays put."""
    loop = asyncio.get_running_loop()
    assert await asyncio.to_thread(threading.get_ident) != threading.get_ident()
    assert await loop.run_in_executor(None, sum, [1, 2, 3]) == 6
    assert clock.now() == 0


@pytest.mark.virtual_clock
async def test_pending_timer_jumps_ahead_of_a_running_thread(clock: VirtualClock) -> None:
    """Autojump caveat: a timer pending while a thread works fires without waiting."""
    release = threading.Event()
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(release.wait), 10)
        assert clock.now() == 10
    finally:
        release.set()


def test_current_clock_refuses_a_loop_without_virtual_time() -> None:
    """``current_clock`` names the fix when the loop has a real clock."""

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"mark the test @pytest\.mark\.virtual_clock"):
            current_clock()

    asyncio.run(main())


# -- run_virtual ------------------------------------------------------------------------


def test_run_virtual_returns_the_result_on_a_fresh_clock() -> None:
    """Each run starts its own loop with the clock at 0."""

    async def main() -> float:
        await asyncio.sleep(7)
        return current_clock().now()

    assert run_virtual(main) == 7
    assert run_virtual(main) == 7


@pytest.mark.parametrize("eager", [False, True])
def test_run_virtual_eager_flag_takes_effect_where_available(eager: bool) -> None:
    """``eager=True`` runs new tasks eagerly (to their first suspension) on 3.12+."""
    record = Recorder()

    async def child() -> None:
        record("child started")

    async def main() -> None:
        task = asyncio.create_task(child())
        record("create_task returned")
        await task

    run_virtual(main, eager=eager)
    if eager and EAGER_TASKS_AVAILABLE:
        assert record == ["child started", "create_task returned"]
    else:
        assert record == ["create_task returned", "child started"]


def test_run_virtual_cancels_and_reports_leftover_tasks() -> None:
    """A task still pending when main() returns is cancelled, then reported."""
    record = Recorder()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            record("cleaned up")

    async def main() -> None:
        asyncio.get_running_loop().create_task(forever(), name="the-leak")
        await asyncio.sleep(0)

    with pytest.raises(AssertionError, match=r"1 task\(s\) still pending(.|\n)*the-leak"):
        run_virtual(main)
    assert record == ["cleaned up"]


def test_run_virtual_reports_unretrieved_task_exceptions() -> None:
    """ "Task exception was never retrieved" makes the run fail."""

    async def boom() -> None:
        msg = "lost"
        raise ValueError(msg)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(boom())
        await asyncio.sleep(0)
        assert task.done()
        del task

    with pytest.raises(AssertionError, match=r"never retrieved(.|\n)*ValueError: lost"):
        run_virtual(main)


def test_run_virtual_propagates_main_errors_and_still_cleans_up() -> None:
    """An exception from main() propagates as is; leftovers are cancelled anyway."""
    record = Recorder()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            record("cleaned up")

    async def main() -> None:
        asyncio.get_running_loop().create_task(forever())
        await asyncio.sleep(0)
        msg = "main failed"
        raise KeyError(msg)

    with pytest.raises(KeyError, match="main failed"):
        run_virtual(main)
    assert record == ["cleaned up"]


@settings(max_examples=25)
@given(delays=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=10))
def test_property_tests_get_a_fresh_loop_per_example(delays: list[int]) -> None:
    """Example of a hypothesis test: concurrent sleeps end at the longest one."""

    async def main() -> float:
        await asyncio.gather(*(asyncio.sleep(d / 100) for d in delays))
        return current_clock().now()

    assert run_virtual(main) == max(delays) / 100


# -- hygiene checks, called directly -----------------------------------------------------


async def test_pending_tasks_lists_other_unfinished_tasks() -> None:
    """The calling task is left out; a leaked task is listed until it is cancelled."""
    finished = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    leaked = asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="leaked")
    await finished
    assert asyncio.current_task() not in pending_tasks()
    assert leaked in pending_tasks()
    assert await cancel_and_wait([leaked]) == []
    assert leaked.cancelled()
    assert leaked not in pending_tasks()


async def test_cancel_and_wait_retrieves_outcomes() -> None:
    """A task that ends with an error while being cancelled is not "never retrieved"."""

    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            msg = "cleanup failed"
            raise RuntimeError(msg) from None

    task = asyncio.get_running_loop().create_task(fails_on_cancel())
    await settle(1)
    assert await cancel_and_wait([task]) == []
    assert isinstance(task.exception(), RuntimeError)


async def test_exception_handler_calls_are_recorded_and_passed_on() -> None:
    """The recorder keeps a description and still calls the previous handler."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    try:
        calls = record_exception_handler_calls(loop)
        loop.call_exception_handler({"message": "something odd", "exception": ValueError("x")})
    finally:
        loop.set_exception_handler(previous)
    assert len(calls) == 1
    assert calls[0].startswith("something odd\n")
    assert "ValueError: x" in calls[0]
    assert [context["message"] for context in seen] == ["something odd"]


def test_live_engine_objects_finds_new_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    """Live instances of the engine classes are found; a baseline can be ignored."""

    class Tracked:
        __slots__ = ("ref",)

        def __init__(self) -> None:
            self.ref: object = self

    monkeypatch.setattr(support, "_engine_classes", (Tracked,))
    old = Tracked()
    baseline = frozenset(map(id, live_engine_objects()))
    new = Tracked()
    assert live_engine_objects(ignore=baseline) == [new]
    assert {id(obj) for obj in live_engine_objects()} == {id(old), id(new)}
    del old, new
    gc.collect()
    assert live_engine_objects() == []


def test_engine_classes_are_found_once_the_engine_exists() -> None:
    """The engine's classes, when its state module exists, have the expected names."""
    classes = support.engine_classes()
    assert [cls.__name__.lstrip("_") for cls in classes] in ([], ["Call", "Batch", "Partition"])


# -- recording and scheduling helpers --------------------------------------------------


def test_recorder_records_events_in_order() -> None:
    """One argument is recorded as is, several as a tuple; ``take`` drains."""
    record = Recorder()
    record("start")
    record("join", 3)
    record.append("manual")
    assert record == ["start", ("join", 3), "manual"]
    assert record.take() == ["start", ("join", 3), "manual"]
    assert record == []


async def test_settle_yields_exactly_n_times() -> None:
    """``settle(n)`` lets a chain of ``call_soon`` callbacks advance by about n links."""
    loop = asyncio.get_running_loop()
    record = Recorder()

    def link(n: int) -> None:
        record(n)
        if n < 5:
            loop.call_soon(link, n + 1)

    loop.call_soon(link, 1)
    await settle(0)
    assert record == []
    await settle(1)
    assert record == [1]
    await settle(2)
    assert record == [1, 2, 3]
    await settle()
    assert record == [1, 2, 3, 4, 5]


async def test_wait_all_tasks_blocked_waits_for_tasks_and_callbacks() -> None:
    """Returns only once every task is blocked and queued callbacks have run."""
    loop = asyncio.get_running_loop()
    record = Recorder()
    gate = asyncio.Event()

    async def worker(n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(0)
        record(("blocked", n))
        await gate.wait()

    def chain(n: int) -> None:
        if n:
            loop.call_soon(chain, n - 1)
        else:
            record("callbacks done")

    tasks = [loop.create_task(worker(n)) for n in (0, 3, 6)]
    loop.call_soon(chain, 3)
    await wait_all_tasks_blocked()
    assert len(record) == 4
    assert set(record) == {("blocked", 0), ("blocked", 3), ("blocked", 6), "callbacks done"}
    gate.set()
    await asyncio.gather(*tasks)


@pytest.mark.virtual_clock
async def test_wait_all_tasks_blocked_never_moves_the_clock(clock: VirtualClock) -> None:
    """Busy tasks are waited for turn by turn; a pending timer does not fire."""
    fired = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, fired.set)

    async def busy() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(busy())
    await wait_all_tasks_blocked()
    assert task.done()
    assert not fired.is_set()
    assert clock.now() == 0
    await fired.wait()
    assert clock.now() == 0.05


async def test_wait_all_tasks_blocked_gives_up_on_a_task_that_never_blocks() -> None:
    """A task that spins forever is reported instead of hanging the test."""

    async def spin() -> None:
        for _ in range(1_000_000):
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(spin(), name="spinner")
    try:
        with pytest.raises(AssertionError, match=r"still busy after 50 turns(.|\n)*spinner"):
            await wait_all_tasks_blocked(max_turns=50)
    finally:
        assert await cancel_and_wait([task]) == []


async def test_anyio_wait_all_tasks_blocked_sees_asyncio_tasks() -> None:
    """anyio's version also works on tasks made with ``create_task`` (all backends)."""
    gate = asyncio.Event()
    record = Recorder()

    async def worker(n: int) -> None:
        await asyncio.sleep(0)
        record(n)
        await gate.wait()

    tasks = [asyncio.get_running_loop().create_task(worker(n)) for n in range(3)]
    await anyio.wait_all_tasks_blocked()
    assert len(record) == 3
    assert set(record) == {0, 1, 2}
    gate.set()
    await asyncio.gather(*tasks)


# -- the autouse hygiene fixture, end to end (pytester) ----------------------------------

_INNER_CONFTEST = """
import pytest
from tests import support

pytest_plugins = ["tests.conftest"]


class Leaky:
    pass


def pytest_configure(config: pytest.Config) -> None:
    config.stash[saved] = support._engine_classes
    support._engine_classes = (Leaky,)


def pytest_unconfigure(config: pytest.Config) -> None:
    support._engine_classes = config.stash[saved]


saved = pytest.StashKey()
"""


@pytest.fixture
def run_inner(pytester: pytest.Pytester) -> Callable[[str], pytest.RunResult]:
    """Run a test file under this suite's conftest, in process."""
    pytester.makeconftest(_INNER_CONFTEST)
    pytester.makeini("[pytest]\nfilterwarnings = error\naddopts = --import-mode=importlib -p no:cacheprovider\n")

    def run(source: str) -> pytest.RunResult:
        pytester.makepyfile(test_inner=source)
        return pytester.runpytest_inprocess()

    return run


N_BACKENDS = len(BACKENDS)
N_VIRTUAL = len(VIRTUAL_CLOCK_BACKENDS & BACKENDS.keys())


def test_hygiene_fails_a_test_that_leaves_a_task_pending(run_inner: Callable[[str], pytest.RunResult]) -> None:
    """A leaked task is an error at teardown, naming the task; it gets cancelled."""
    result = run_inner(
        """
import asyncio
import pytest

@pytest.mark.anyio
async def test_leaks() -> None:
    asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="leaked-task")
    await asyncio.sleep(0)
"""
    )
    result.assert_outcomes(passed=N_BACKENDS, errors=N_BACKENDS)
    result.stdout.fnmatch_lines(["*tasks still pending when the test ended*", "*leaked-task*"])


def test_hygiene_fails_a_test_that_lost_a_pending_task(run_inner: Callable[[str], pytest.RunResult]) -> None:
    """ "Task was destroyed but it is pending" (only logged by asyncio) is an error."""
    result = run_inner(
        """
import asyncio
import gc
import pytest

@pytest.mark.anyio
async def test_loses_a_task() -> None:
    async def wait_forever() -> None:
        await asyncio.get_running_loop().create_future()

    asyncio.get_running_loop().create_task(wait_forever())
    await asyncio.sleep(0)
    gc.collect()  # the task and its future only refer to each other
"""
    )
    result.assert_outcomes(passed=N_BACKENDS, errors=N_BACKENDS)
    result.stdout.fnmatch_lines(["*exception handler was called*", "*Task was destroyed but it is pending*"])


def test_hygiene_fails_a_test_that_never_retrieved_an_exception(
    run_inner: Callable[[str], pytest.RunResult],
) -> None:
    """ "Task exception was never retrieved" fails the test, or errors at its teardown.

    anyio re-raises the exception if the task is freed during the test; under eager
    tasks, the task is part of a cycle through the test's frame, freed by the hygiene
    check's collection.
    """
    result = run_inner(
        """
import asyncio
import pytest

async def boom() -> None:
    raise ValueError("lost error")

@pytest.mark.anyio
async def test_drops_an_error() -> None:
    task = asyncio.get_running_loop().create_task(boom())
    await asyncio.sleep(0)
    del task
"""
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == N_BACKENDS
    result.stdout.fnmatch_lines(["*ValueError: lost error*"])


def test_hygiene_fails_tests_that_leak_engine_objects(run_inner: Callable[[str], pytest.RunResult]) -> None:
    """Engine objects still alive after a test are an error, sync or async; garbage is not."""
    result = run_inner(
        """
import pytest
from conftest import Leaky

kept = []

def test_sync_leak() -> None:
    kept.append(Leaky())

@pytest.mark.anyio
async def test_async_leak() -> None:
    kept.append(Leaky())

def test_cyclic_garbage_is_fine() -> None:
    a, b = Leaky(), Leaky()
    a.other, b.other = b, a
"""
    )
    result.assert_outcomes(passed=2 + N_BACKENDS, errors=1 + N_BACKENDS)
    result.stdout.fnmatch_lines(["*1 engine object(s) still alive after the test*", "*<conftest.Leaky object*"])


def test_hygiene_stays_quiet_about_failing_tests(run_inner: Callable[[str], pytest.RunResult]) -> None:
    """A failing test reports its own failure only, not its leftovers."""
    result = run_inner(
        """
import asyncio
import pytest

@pytest.mark.anyio
async def test_fails_and_leaks() -> None:
    asyncio.get_running_loop().create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    assert False, "the real failure"
"""
    )
    result.assert_outcomes(failed=N_BACKENDS)


def test_virtual_clock_tests_are_deselected_on_uvloop(run_inner: Callable[[str], pytest.RunResult]) -> None:
    """Virtual-clock tests are deselected, not skipped, on real-clock backends."""
    result = run_inner(
        """
import pytest

pytestmark = pytest.mark.anyio

@pytest.mark.virtual_clock
async def test_marked() -> None:
    pass

async def test_uses_clock(clock) -> None:
    pass

async def test_anywhere() -> None:
    pass
"""
    )
    n_real = N_BACKENDS - N_VIRTUAL
    result.assert_outcomes(passed=2 * N_VIRTUAL + N_BACKENDS, deselected=2 * n_real)
    if n_real:
        result.stdout.fnmatch_lines([f"deselected: {2 * n_real} uvloop variants of virtual-clock tests*"])


def test_skips_are_summarised_in_one_line_that_says_how_to_run_the_servers(
    run_inner: Callable[[str], pytest.RunResult], pytester: pytest.Pytester
) -> None:
    """Skipped integration tests are counted, not listed, with the command that runs them; other skips by reason."""
    folder = pytester.path / "tests" / "integration"
    folder.mkdir(parents=True)
    (folder / "test_servers.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.parametrize('n', [1, 2])\n"
        "def test_postgres(n):\n    pytest.skip('CONCRESCE_TEST_POSTGRES_DSN is not set: set it')\n\n"
        "def test_redis():\n    pytest.skip('CONCRESCE_TEST_REDIS_URL is not set: set it')\n"
    )
    result = run_inner(
        """
import pytest

@pytest.mark.skip(reason="for a reason of its own")
@pytest.mark.parametrize("n", [1, 2])
def test_other(n: int) -> None:
    pass
"""
    )
    result.assert_outcomes(skipped=5)
    (line,) = [line for line in result.outlines if line.startswith("skipped: ")]
    assert line.startswith(
        "skipped: 3 integration tests need PostgreSQL and Redis "
        "(CONCRESCE_TEST_POSTGRES_DSN is not set; CONCRESCE_TEST_REDIS_URL is not set); "
        'to run them: d="$(mktemp -d)"; eval "$(.ci/servers start "$d")"; uv run pytest;'
    )
    assert line.endswith("| 2 tests: for a reason of its own")
    assert not any(line.startswith("SKIPPED") for line in result.outlines)


def test_unawaited_coroutines_and_resource_warnings_fail(run_inner: Callable[[str], pytest.RunResult]) -> None:
    """Warnings from finalizers (unraisable exceptions) fail the test under -W error."""
    result = run_inner(
        """
import gc
import socket

async def coroutine() -> None:
    pass

def test_never_awaited() -> None:
    coroutine()
    gc.collect()

def test_unclosed_socket() -> None:
    socket.socket()
    gc.collect()
"""
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*was never awaited*", "*ResourceWarning: unclosed*"])


def test_describe_objects_names_what_keeps_them_alive() -> None:
    """Referrers are listed by type; the checked list and the caller's frame are not."""

    class Thing:
        pass

    kept = {"key": Thing()}
    loose = Thing()
    description = support.describe_objects([kept["key"], loose])
    first, second = description.splitlines()
    assert first.endswith("(referred to by: dict)")
    assert second.endswith("(referred to by: nothing visible)")

"""What the thread API's torture mode (tests/torture, mode ``sync``) found, as deterministic tests.

Each test is the smallest schedule that shows one problem, played step by step (threads
released by events, the engine's state polled between steps), so that it fails the same way
every time; each was fixed and stays as a regression test. A test that finds its threads
blocked lets them go (``configure()``) before failing, so that nothing stays behind. A call
from a thread that a bulk section starts without its context cannot be told apart (a limit,
docs/threads.md): with the context it is refused.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import pytest
from tests.support import partitions_of

import concresce
from concresce.threads import batch, collect, scatter

#: Seconds a step may take at most (the whole test takes well under a second when it passes).
STEP = 5.0


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + STEP
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.001)


def _start(target: Any, *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def _join(threads: list[threading.Thread], seconds: float) -> list[threading.Thread]:
    """Join ``threads`` within ``seconds`` in all; return those still running."""
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    return [thread for thread in threads if thread.is_alive()]


class Nesting:
    """A thread-batched function (2 slots) whose bulk sections wait for a gate, then call it again."""

    def __init__(self) -> None:
        self.gates = {"a": threading.Event(), "b": threading.Event()}
        self.nests = {"a": "a2", "c": "c2"}  # the item whose bulk section calls the function, and with what
        self.outcomes: dict[str, object] = {}
        self.work = batch(max_concurrency=2)(self.body)

    def body(self, item: str) -> str:
        items = collect(item)
        if item in self.gates:
            self.gates[item].wait(STEP)
        if item in self.nests:
            self.call(self.nests[item])  # a call of its own, from the bulk section
        return scatter([f"result {i}" for i in items])

    def call(self, item: str) -> None:
        try:
            self.outcomes[item] = self.work(item)
        except Exception as error:  # noqa: BLE001 -- the outcome is the point
            self.outcomes[item] = error

    def running(self) -> int:
        return _running(self.work)

    def queued(self) -> int:
        return _queued(self.work)


def _running(work: Any) -> int:
    """The bulk sections of ``work`` running (slots held)."""
    return sum(part.running for part in list(partitions_of(work).values()))


def _queued(work: Any) -> int:
    """The members of the batches of ``work`` queued for a slot."""
    parts = list(partitions_of(work).values())
    return sum(len(queued.members) for part in parts for queued in (part.pending or ()))


async def _until_async(condition: Any) -> None:
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail("a step never came")


def test_a_call_from_a_bulk_section_that_could_never_run_is_refused_through_a_running_batch():
    """Two slots, held by A's and C's bulk sections; A's call a2 waits in C's batch; C's call c2 waits for a slot.

    A waits for a2, a2 for C's scatter(), C for c2, c2 for a slot that A or C would free: no
    slot can ever free. Like the direct case (every running bulk section waits for a call
    queued in this partition), c2 must fail at once with RuntimeError, not wait for ever.
    Finding 1 of the torture mode (FINDINGS.md): both threads blocked for ever until 90ee4a5.
    """
    nesting = Nesting()
    threads = [_start(nesting.call, "a")]
    _until(lambda: nesting.running() == 1, "A leads")
    threads.append(_start(nesting.call, "b"))
    _until(lambda: nesting.running() == 2, "B leads: both slots are busy")
    threads.append(_start(nesting.call, "c"))
    _until(lambda: nesting.queued() == 1, "C waits in a batch queued for a slot")
    nesting.gates["a"].set()
    _until(lambda: nesting.queued() == 2, "A's call a2 joined C's batch")
    nesting.gates["b"].set()  # B scatters: C's batch takes its slot, and C leads it

    stuck = _join(threads, 0.5)
    if stuck:
        # Deadlocked: let the queued batch in (and every thread end) before failing.
        nesting.work.configure(max_concurrency=None)
        _join(threads, STEP)
    outcomes = nesting.outcomes
    assert not stuck, f"{len(stuck)} thread(s) blocked: {outcomes}"
    assert isinstance(outcomes["c2"], RuntimeError), outcomes
    assert outcomes["a"] == "result a"
    assert outcomes["a2"] == "result a2"
    assert outcomes["c"] == "result c"


def test_the_same_cycle_is_refused_on_asyncio():
    """The scenario above with tasks: A's call a2 waits in C's batch, C's call c2 for a slot A or C holds."""
    gates: dict[str, asyncio.Event] = {}
    nests = {"a": "a2", "c": "c2"}
    outcomes: dict[str, object] = {}

    @concresce.batch(max_concurrency=2)
    async def work(item: str) -> str:
        items = await concresce.collect(item)
        if item in gates:
            await gates[item].wait()
        if item in nests:
            await call(nests[item])
        return concresce.scatter([f"result {i}" for i in items])

    async def call(item: str) -> None:
        try:
            outcomes[item] = await work(item)
        except Exception as error:  # noqa: BLE001 -- the outcome is the point
            outcomes[item] = error

    async def main() -> set[asyncio.Task[None]]:
        gates.update(a=asyncio.Event(), b=asyncio.Event())
        tasks = [asyncio.create_task(call("a"))]
        await _until_async(lambda: _running(work) == 1)
        tasks.append(asyncio.create_task(call("b")))
        await _until_async(lambda: _running(work) == 2)
        tasks.append(asyncio.create_task(call("c")))
        await _until_async(lambda: _queued(work) == 1)
        gates["a"].set()
        await _until_async(lambda: _queued(work) == 2)
        gates["b"].set()
        _, stuck = await asyncio.wait(tasks, timeout=0.5)
        if stuck:
            work.configure(max_concurrency=None)  # let every task end before failing
            await asyncio.wait(tasks, timeout=STEP)
        return stuck

    stuck = asyncio.run(main())
    assert not stuck, f"{len(stuck)} task(s) blocked: {outcomes}"
    assert isinstance(outcomes["c2"], RuntimeError), outcomes


def _call_from_a_thread_of_the_bulk_section(*, with_context: bool) -> tuple[bool, dict[str, object]]:
    """One slot; the leader's bulk section starts a thread that calls the function, and joins it.

    Returns whether the thread ended within half a second, and the outcomes.
    """
    outcomes: dict[str, object] = {}

    def nested() -> None:
        try:
            outcomes["a2"] = work("a2")
        except Exception as error:  # noqa: BLE001 -- the outcome is the point
            outcomes["a2"] = error

    @batch(max_concurrency=1)
    def work(item: str) -> str:
        items = collect(item)
        if item == "a":
            target = contextvars.copy_context().run if with_context else (lambda run: run())
            thread = _start(target, nested)
            outcomes["ended"] = not _join([thread], 0.5)
            if not outcomes["ended"]:
                work.configure(max_concurrency=None)  # let it in (and end) before failing
                _join([thread], STEP)
        return scatter(items)

    outcomes["a"] = work("a")
    return bool(outcomes["ended"]), outcomes


def test_a_call_from_a_thread_the_bulk_section_starts_with_its_context_is_refused():
    """With the bulk section's context (contextvars.copy_context().run), the engine sees where the call comes from."""
    ended, outcomes = _call_from_a_thread_of_the_bulk_section(with_context=True)
    assert ended, outcomes
    assert isinstance(outcomes["a2"], RuntimeError), outcomes
    assert outcomes["a"] == "a"


def test_a_call_from_a_bulk_section_is_refused_after_configure_sets_max_concurrency():
    """No limit as A leads, then max_concurrency=1: a call from its bulk section is refused, not a deadlock."""
    gate = threading.Event()
    outcomes: dict[str, object] = {}

    @batch(max_concurrency=None)
    def work(item: str) -> str:
        items = collect(item)
        if item == "a":
            gate.wait(STEP)
            try:
                outcomes["a2"] = work("a2")
            except Exception as error:  # noqa: BLE001 -- the outcome is the point
                outcomes["a2"] = error
        return scatter(items)

    thread = _start(lambda: outcomes.__setitem__("a", work("a")))
    _until(lambda: _running(work) == 1, "A leads")
    work.configure(max_concurrency=1)  # A holds the only slot now
    gate.set()
    stuck = _join([thread], 0.5)
    if stuck:
        work.configure(max_concurrency=None)  # let a2 in (and A end) before failing
        _join([thread], STEP)
    assert not stuck, f"A and its call a2 blocked: {outcomes}"
    assert isinstance(outcomes["a2"], RuntimeError), outcomes
    assert outcomes["a"] == "a"


def test_a_call_from_a_bulk_section_is_refused_after_configure_sets_max_concurrency_on_asyncio():
    """The same with a task: the leader resumed (took its items) before configure(max_concurrency=1)."""
    outcomes: dict[str, object] = {}

    @concresce.batch(max_concurrency=None)
    async def work(item: str) -> str:
        items = await concresce.collect(item)
        if item == "a":
            outcomes["took"] = True
            await gate.wait()
            try:
                outcomes["a2"] = await work("a2")
            except Exception as error:  # noqa: BLE001 -- the outcome is the point
                outcomes["a2"] = error
        return concresce.scatter(items)

    async def main() -> set[asyncio.Task[str]]:
        task = asyncio.create_task(work("a"))
        await _until_async(lambda: "took" in outcomes)
        work.configure(max_concurrency=1)  # A holds the only slot now
        gate.set()
        _, stuck = await asyncio.wait([task], timeout=0.5)
        if stuck:
            work.configure(max_concurrency=None)  # let a2 in (and A end) before failing
            await asyncio.wait([task], timeout=STEP)
        return stuck

    gate = asyncio.Event()
    stuck = asyncio.run(main())
    assert not stuck, f"A and its call a2 blocked: {outcomes}"
    assert isinstance(outcomes["a2"], RuntimeError), outcomes

"""Flow control on every runtime: ``max_concurrency`` and group commit (SPEC.md "Coalescing and flow control").

``@batch(max_concurrency=k)`` bounds the batches of one partition in flight at once. While
``k`` run, the next batch stays open and keeps collecting (up to ``max_size``; a full one
waits closed and the next opens behind it), and is dispatched as soon as a slot frees, in
order. A batch holds its slot from its dispatch until ``scatter()`` routed it (or it failed),
a handed-over batch included. A call that would wait for a slot its own bulk section holds is
a ``RuntimeError``, never a deadlock.

Each test records every leader run with the virtual time it started and ended, and asserts
the whole record. Arrivals are at distinct virtual times, so their order is the same on every
runtime.
"""

from __future__ import annotations

import functools

import anyio
import pytest
from tests.runtimes import kit

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


class Timeline:
    """Leader runs and call returns, with virtual times relative to the test's start."""

    def __init__(self):
        self.t0 = kit.now()
        self.events = []
        self.returned = {}  # item -> when its call returned
        self.running = {}  # partition -> batches in flight now
        self.peak = {}

    def at(self):
        return round(kit.now() - self.t0, 6)

    def __call__(self, *event):
        self.events.append((self.at(), *event))

    def started(self, key=None):
        self.running[key] = self.running.get(key, 0) + 1
        self.peak[key] = max(self.peak.get(key, 0), self.running[key])

    def ended(self, key=None):
        self.running[key] -= 1

    async def arrive(self, at, call, *args):
        """Call ``call(*args)`` at virtual time ``at``; note when it returns."""
        await anyio.sleep_until(self.t0 + at)
        try:
            return await call(*args)
        finally:
            self.returned[args[0]] = self.at()

    async def run(self, fn, arrivals):
        """Make every ``(at, *args)`` call of ``arrivals``; return their results in that order."""
        return await kit.gather(*(functools.partial(self.arrive, at, fn, *args) for at, *args in arrivals))


def timed_work(line, *, bulk=0.1, key=lambda item: None, **options):
    """A ``@batch(**options)`` echo whose bulk call lasts ``bulk`` seconds."""

    @batch(**options)
    async def work(item, *_):
        items = await collect(item)
        line("start", items)
        line.started(key(item))
        await anyio.sleep(bulk)
        line.ended(key(item))
        line("end", items)
        return scatter([("ok", x) for x in items])

    return work


@pytest.mark.virtual_clock
async def test_a_queued_batch_keeps_collecting_up_to_max_size_and_runs_in_order_when_the_slot_frees():
    """One slot: [a] runs; [b c d] fills while it waits (closed); [e f] opens behind it; each runs in turn."""
    line = Timeline()
    work = timed_work(line, max_window=0.01, max_size=3, max_concurrency=1)
    # [a] runs .01-.11. [b...] opens at .02, is due at .03 with no slot, keeps collecting and
    # fills at .04. [e...] opens at .05, is due at .06 with no slot, and f joins it at .07.
    arrivals = [(0.0, "a"), (0.02, "b"), (0.035, "c"), (0.04, "d"), (0.05, "e"), (0.07, "f")]

    results = await line.run(work, arrivals)

    assert results == [("ok", x) for _, x in arrivals]
    assert line.events == [
        (0.01, "start", ["a"]),
        (0.11, "end", ["a"]),
        (0.11, "start", ["b", "c", "d"]),
        (0.21, "end", ["b", "c", "d"]),
        (0.21, "start", ["e", "f"]),
        (0.31, "end", ["e", "f"]),
    ]
    assert line.returned == {"a": 0.11, "b": 0.21, "c": 0.21, "d": 0.21, "e": 0.31, "f": 0.31}
    assert line.peak == {None: 1}


@pytest.mark.virtual_clock
async def test_k_batches_of_a_partition_run_at_once_and_each_partition_has_its_own_slots():
    """Two slots per partition: x's third batch waits (still collecting) while y's first runs at once."""
    line = Timeline()
    work = timed_work(line, key=lambda item: item[0], max_concurrency=2, group_by=lambda item: item[0])
    # Tick batching: x1 runs 0-.1 and x2 .01-.11; x3 opens at .02 and waits, x4 joins it at
    # .04; y1 runs at once at .03 (its own slots). x1's slot frees at .1: [x3 x4] runs.
    arrivals = [(0.0, "x1"), (0.01, "x2"), (0.02, "x3"), (0.03, "y1"), (0.04, "x4")]

    results = await line.run(work, arrivals)

    assert results == [("ok", x) for _, x in arrivals]
    assert line.events == [
        (0.0, "start", ["x1"]),
        (0.01, "start", ["x2"]),
        (0.03, "start", ["y1"]),
        (0.1, "end", ["x1"]),
        (0.1, "start", ["x3", "x4"]),
        (0.11, "end", ["x2"]),
        (0.13, "end", ["y1"]),
        (0.2, "end", ["x3", "x4"]),
    ]
    assert line.returned == {"x1": 0.1, "x2": 0.11, "y1": 0.13, "x3": 0.2, "x4": 0.2}
    assert line.peak == {"x": 2, "y": 1}


@pytest.mark.virtual_clock
async def test_group_commit_serves_a_lone_call_at_once_and_grows_batches_under_load():
    """max_window=0, max_concurrency=1: no timer; a batch of one at low load, everyone waiting at high load."""
    line = Timeline()
    commit = timed_work(line, max_window=0, max_concurrency=1)
    # A lone call at 0 is dispatched at once. At .2 a burst starts: its first call runs at
    # once, the five that arrive while it runs share the next batch, dispatched at .3.
    arrivals = [(0.0, 0), *((0.2 + 0.01 * i, 1 + i) for i in range(6))]

    results = await line.run(commit, arrivals)

    assert results == [("ok", x) for _, x in arrivals]
    assert [event for event in line.events if event[1] == "start"] == [
        (0.0, "start", [0]),
        (0.2, "start", [1]),
        (0.3, "start", [2, 3, 4, 5, 6]),
    ]
    assert line.returned == {0: 0.1, 1: 0.3, **dict.fromkeys(range(2, 7), 0.4)}


@pytest.mark.virtual_clock
async def test_a_slot_is_held_until_scatter_or_failure_not_by_code_after_scatter():
    """A leader's work after scatter() holds no slot; a failed batch frees its slot at once."""
    line = Timeline()

    @batch(max_window=0, max_concurrency=1)
    async def work(item):
        items = await collect(item)
        line("start", items)
        await anyio.sleep(0.1)
        if "fail" in items:
            raise LookupError(items)
        own = scatter(items)
        await anyio.sleep(0.5)  # after scatter(): the slot is free already
        line("leader done", items)
        return own

    arrivals = [(0.0, "fail"), (0.05, "a"), (0.15, "b")]
    results = await kit.outcomes(*(functools.partial(line.arrive, at, work, x) for at, x in arrivals))

    assert [type(r) for r in results] == [LookupError, str, str]
    assert results[1:] == ["a", "b"]
    assert line.events == [
        (0.0, "start", ["fail"]),
        (0.1, "start", ["a"]),  # the failed batch freed its slot at .1
        (0.2, "start", ["b"]),  # a's scatter at .2 freed it, though its leader runs until .7
        (0.7, "leader done", ["a"]),
        (0.8, "leader done", ["b"]),
    ]
    assert line.returned == {"fail": 0.1, "a": 0.7, "b": 0.8}


@pytest.mark.virtual_clock
async def test_a_handed_over_batch_keeps_its_slot_until_the_next_leader_scatters():
    """The leader cancelled in its bulk call hands over; the batch queued behind waits for the new leader."""
    line = Timeline()
    work = timed_work(line, max_window=0.01, max_concurrency=1)
    scopes = {}

    async def call(at, item):
        await anyio.sleep_until(line.t0 + at)
        with anyio.CancelScope() as scopes[item]:
            return await work(item)
        return "cancelled"

    async def cancel_a_at(at):
        await anyio.sleep_until(line.t0 + at)
        scopes["a"].cancel()

    # [a b] runs from .01; c opens at .02 (due .03, queued); a is cancelled at .05: b leads
    # [b] again until .15, then [c] runs.
    results = await kit.gather(
        functools.partial(call, 0.0, "a"),
        functools.partial(call, 0.001, "b"),
        functools.partial(call, 0.02, "c"),
        functools.partial(cancel_a_at, 0.05),
    )

    assert results == ["cancelled", ("ok", "b"), ("ok", "c"), None]
    assert line.events == [
        (0.01, "start", ["a", "b"]),
        (0.05, "start", ["b"]),
        (0.15, "end", ["b"]),
        (0.15, "start", ["c"]),
        (0.25, "end", ["c"]),
    ]


# --------------------------------------------------------------------------------------
# Re-entrancy
# --------------------------------------------------------------------------------------


def nesting(max_concurrency, *, in_tasks):
    """A function whose bulk section, for item "outer", calls it again for "inner" (twice, in tasks)."""
    runs = []
    inner = []

    @batch(max_concurrency=max_concurrency)
    async def tree(item):
        items = await collect(item)
        runs.append(items)
        if "outer" in items:
            if in_tasks:
                inner.extend(await kit.outcomes(lambda: tree("inner 1"), lambda: tree("inner 2")))
            else:
                try:
                    inner.append(await tree("inner"))
                except RuntimeError as error:
                    inner.append(error)
        return scatter([f"{x} done" for x in items])

    return tree, runs, inner


@pytest.mark.parametrize("in_tasks", [False, True], ids=["in-the-leader", "in-tasks-it-starts"])
async def test_a_call_that_would_wait_for_its_own_slot_is_a_runtime_error_not_a_deadlock(in_tasks):
    """max_concurrency=1: a call from the bulk section fails at once, and the outer batch completes."""
    tree, runs, inner = nesting(1, in_tasks=in_tasks)

    with anyio.fail_after(10):
        assert await tree("outer") == "outer done"

    assert runs == [["outer"]]  # the refused calls never ran
    assert [type(error) for error in inner] == [RuntimeError] * (2 if in_tasks else 1)
    for error in inner:
        assert "tree" in str(error)
        assert "max_concurrency=1" in str(error)
        assert "deadlock" in str(error)
    assert tree.stats().in_flight_now == 0


async def test_a_call_from_the_bulk_section_runs_in_a_free_slot():
    """max_concurrency=2: the nested call forms its own batch and runs in the second slot."""
    tree, runs, inner = nesting(2, in_tasks=False)

    with anyio.fail_after(10):
        assert await tree("outer") == "outer done"

    assert runs == [["outer"], ["inner"]]
    assert inner == ["inner done"]

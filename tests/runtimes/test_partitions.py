"""Isolation and partitions on every runtime (SPEC.md "Isolation and partitions").

Batches never span runs: the same decorated function used by two runs at once (one per
thread) or by successive runs keeps separate state per run, and keeps nothing of a finished
run alive. Within a run, calls whose ``group_by`` keys differ never share a batch, and each
partition has its own window and size. (Methods, batched per instance, are covered elsewhere.)

Arrivals are made sequential wherever the order of a batch's items matters: trio starts the
tasks of one scheduling round in a random order, so a test either starts one call at a time
(``kit.quiesce()`` or a distinct virtual time between them) or records the join order in the
body, just before ``collect()``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
import weakref

import anyio
import anyio.to_thread
import pytest
from tests.runtimes import kit
from tests.support import partitions_of

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio

NEVER = 3600.0  # a window no test waits for


def _eager_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]  # 3.12+, as is the backend
    return loop


def thread_backend(backend_id: str) -> tuple[str, dict[str, object]]:
    """The test's runtime, for a run of its own in another thread (with a real clock)."""
    if backend_id == "trio":
        return "trio", {}
    if backend_id == "uvloop":
        return "asyncio", {"use_uvloop": True}
    if backend_id == "asyncio+eager":
        return "asyncio", {"loop_factory": _eager_loop}
    return "asyncio", {}


def run_in_thread(backend_id: str, main, *args):
    """``anyio.run(main, *args)`` on the test's runtime, in a thread of its own."""
    backend, options = thread_backend(backend_id)
    return anyio.to_thread.run_sync(functools.partial(anyio.run, main, *args, backend=backend, backend_options=options))


class Token:
    """An item or a result: weak-referenceable, to see that nothing keeps it alive."""

    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return isinstance(other, Token) and other.name == self.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return f"Token({self.name!r})"


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------


async def test_two_runs_at_once_never_share_a_batch(backend_id):
    """Two runs in two threads, each with a batch open at the same moment: one batch per run."""
    batches = []

    @batch(max_window=NEVER, max_size=3)  # flushed by size only: a shared batch would fill early
    async def echo(item):
        items = await collect(item)
        batches.append(items)
        return scatter([("ok", x) for x in items])

    both_open = []
    # The last thread to arrive runs the action while the other waits: both batches are open.
    barrier = threading.Barrier(
        2, action=lambda: both_open.append((echo.stats().open_now, echo.stats().calls)), timeout=10
    )

    async def main(tag):
        results = {}

        async def call(i):
            results[i] = await echo((tag, i))

        async with anyio.create_task_group() as tg:
            for i in range(2):
                tg.start_soon(call, i)
                await kit.quiesce()  # joined: the next call joins after it
            await anyio.to_thread.run_sync(barrier.wait)
            tg.start_soon(call, 2)
        return [results[i] for i in range(3)]

    results = {}

    async def run(tag):
        results[tag] = await run_in_thread(backend_id, main, tag)

    async with anyio.create_task_group() as tg:
        for tag in "AB":
            tg.start_soon(run, tag)

    assert both_open == [(2, 4)]  # two open batches of two calls each, one per run
    assert sorted(batches) == [[("A", 0), ("A", 1), ("A", 2)], [("B", 0), ("B", 1), ("B", 2)]]
    assert results == {tag: [("ok", (tag, i)) for i in range(3)] for tag in "AB"}
    assert partitions_of(echo) == {}
    stats = echo.stats()
    assert (stats.calls, stats.batches, stats.items, stats.open_now, stats.in_flight_now) == (6, 2, 6, 0, 0)


async def test_successive_runs_get_fresh_batches_and_keep_nothing_alive(backend_id):
    """Run after run: each run's calls form a batch of their own; no item or result outlives its run."""
    batches = []
    left_over = []
    refs = []

    @batch  # tick batching: each run's concurrent calls share one batch
    async def echo(item):
        items = await collect(item)
        batches.append(sorted(token.name for token in items))
        results = [Token(("ok", token.name)) for token in items]
        refs.extend(map(weakref.ref, [*items, *results]))
        return scatter(results)

    async def main(n):
        results = await kit.gather(*(functools.partial(echo, Token(i)) for i in range(n)))
        return [result.name for result in results]

    backend, options = thread_backend(backend_id)

    def runs():
        outcomes = []
        for n in (3, 2):
            outcomes.append(anyio.run(main, n, backend=backend, backend_options=options))
            left_over.append(dict(partitions_of(echo)))
        return outcomes

    outcomes = await anyio.to_thread.run_sync(runs)
    gc.collect()

    assert outcomes == [[("ok", i) for i in range(3)], [("ok", i) for i in range(2)]]
    assert batches == [[0, 1, 2], [0, 1]]
    assert left_over == [{}, {}]
    assert [ref() for ref in refs] == [None] * 10
    stats = echo.stats()
    assert (stats.calls, stats.batches, stats.items, stats.open_now, stats.in_flight_now) == (5, 2, 5, 0, 0)


# --------------------------------------------------------------------------------------
# group_by
# --------------------------------------------------------------------------------------

CALLS = (("acme", 1), ("globex", 2), ("acme", 3), ("initech", 4), ("globex", 5), ("acme", 6))


def tenant_lookup(**options):
    """A ``lookup(item, *, tenant)`` whose bulk section answers with its own (the leader's) tenant."""
    joined = []
    runs = []

    @batch(**options)
    async def lookup(item, *, tenant):
        joined.append((tenant, item))
        items = await collect(item)
        runs.append((tenant, items))
        return scatter([f"{tenant}:{x}" for x in items])

    return lookup, joined, runs


async def test_group_by_keys_never_share_a_batch_and_each_tenant_is_served_with_its_own_arguments():
    """Calls with different keys batch apart, calls with equal keys together; the bulk sees its tenant."""
    lookup, joined, runs = tenant_lookup(group_by=lambda item, *, tenant: tenant)

    results = await kit.gather(*(functools.partial(lookup, item, tenant=tenant) for tenant, item in CALLS))

    assert results == [f"{tenant}:{item}" for tenant, item in CALLS]
    assert sorted(joined) == sorted(CALLS)
    # One batch per tenant, each with the tenant's items in the order they joined.
    tenants = sorted({tenant for tenant, _ in CALLS})
    assert sorted(runs) == [(t, [item for tenant, item in joined if tenant == t]) for t in tenants]


async def test_without_group_by_the_leaders_arguments_serve_the_whole_batch():
    """The reason group_by exists: one batch, run with its leader's tenant for every caller."""
    lookup, joined, runs = tenant_lookup()

    results = await kit.gather(*(functools.partial(lookup, item, tenant=tenant) for tenant, item in CALLS))

    leader_tenant = joined[0][0]
    assert runs == [(leader_tenant, [item for _, item in joined])]
    assert results == [f"{leader_tenant}:{item}" for _, item in CALLS]


@pytest.mark.virtual_clock
async def test_each_partition_has_its_own_window_and_size():
    """Partitions open, fill and expire on their own: a key's batch never waits for another key's."""
    record = []

    @batch(max_window=0.05, max_size=2, group_by=lambda item, key: key)
    async def work(item, key):
        items = await collect(item)
        record.append((key, items, round(kit.now() - t0, 6)))
        return scatter(items)

    t0 = kit.now()
    # a opens at 0 and fills at .02; b opens at .01 and expires at .06; a opens again at .03.
    arrivals = ((0.0, 1, "a"), (0.01, 2, "b"), (0.02, 3, "a"), (0.03, 4, "a"))

    async def arrive(at, item, key):
        await anyio.sleep_until(t0 + at)
        return await work(item, key)

    results = await kit.gather(*(functools.partial(arrive, *arrival) for arrival in arrivals))

    assert results == [1, 2, 3, 4]
    assert record == [("a", [1, 3], 0.02), ("b", [2], 0.06), ("a", [4], 0.08)]


async def test_group_by_runs_once_per_call_with_exactly_its_arguments_before_its_body():
    """``group_by`` gets each call's positional and keyword arguments as given, before the body runs."""
    record = []

    def key_of(*args, **kwargs):
        record.append(("group_by", args, kwargs))
        return kwargs.get("tenant")

    @batch(group_by=key_of)
    async def fetch(key, extra=None, *, tenant=None):
        record.append(("body", key))
        keys = await collect(key)
        return scatter(keys)

    for call in (lambda: fetch(1, tenant="a"), lambda: fetch(2, "x", tenant="a"), lambda: fetch(key=3)):
        await call()

    assert record == [
        ("group_by", (1,), {"tenant": "a"}),
        ("body", 1),
        ("group_by", (2, "x"), {"tenant": "a"}),
        ("body", 2),
        ("group_by", (), {"key": 3}),
        ("body", 3),
    ]


async def test_flush_and_drain_act_on_their_own_run_only(backend_id):
    """Two runs with a batch open each: one run's flush() and drain() leave the other's batch alone."""
    batches = []

    @batch(max_window=NEVER)
    async def echo(item):
        items = await collect(item)
        batches.append(items)
        return scatter([("ok", x) for x in items])

    a_open, b_done = threading.Event(), threading.Event()
    seen = {}

    async def run_a():
        async with anyio.create_task_group() as tg:
            tg.start_soon(echo, "a")
            await kit.quiesce()
            a_open.set()
            assert await anyio.to_thread.run_sync(b_done.wait, 10)
            seen["a still open"] = (echo.stats().open_now, list(batches))
            seen["a flushed"] = echo.flush()

    async def run_b():
        assert await anyio.to_thread.run_sync(a_open.wait, 10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(echo, "b")
            await kit.quiesce()
            seen["b flushed"] = echo.flush()
            tg.start_soon(echo, "b2")
            await kit.quiesce()
            await echo.drain()  # waits for b2's batch, not for run a's
            seen["b drained"] = list(batches)
        b_done.set()

    # No fail_after() here: a virtual clock would jump to its deadline while the threads run.
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_in_thread, backend_id, run_a)
        tg.start_soon(run_in_thread, backend_id, run_b)

    assert seen == {
        "b flushed": 1,
        "b drained": [["b"], ["b2"]],
        "a still open": (1, [["b"], ["b2"]]),
        "a flushed": 1,
    }
    assert batches == [["b"], ["b2"], ["a"]]

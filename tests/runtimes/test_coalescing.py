"""Coalescing on every runtime: ``dedupe`` (SPEC.md "Coalescing and flow control").

With ``@batch(dedupe=True)`` equal (hashable) items in one batch are collected once: the
leader sees each distinct item once, in first-arrival order, and every duplicate caller gets
the result routed to that item (an exception result is raised in each of them). Unhashable
items are never merged. ``max_size`` counts distinct items (docs/decisions.md, 1).

Calls made in one tick join in an order that trio chooses at random, so these tests record
the join order in the body, just before ``collect()``, and derive what to expect from it.
"""

from __future__ import annotations

import functools

import anyio
import pytest
from tests.runtimes import kit

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


def distinct(items):
    """``items`` without repeats, in first-arrival order."""
    return list(dict.fromkeys(items))


def deduping(answer, **options):
    """A ``@batch(dedupe=True)`` function whose bulk section returns ``answer(items)``."""
    joined = []
    runs = []

    @batch(dedupe=True, **options)
    async def lookup(item):
        joined.append(item)
        items = await collect(item)
        runs.append(items)
        return scatter(answer(items))

    return lookup, joined, runs


ITEMS = (3, 1, 3, 2, 1, 3)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda items: [f"r{x}" for x in items], id="positional"),
        pytest.param(lambda items: {x: f"r{x}" for x in items}, id="keyed"),
    ],
)
async def test_equal_items_are_collected_once_in_first_arrival_order_and_every_duplicate_gets_the_result(answer):
    """Six calls, three distinct items: one bulk run over [distinct items], each caller its item's result."""
    lookup, joined, runs = deduping(answer)

    results = await kit.gather(*(functools.partial(lookup, item) for item in ITEMS))

    assert sorted(joined) == sorted(ITEMS)
    assert runs == [distinct(joined)]
    assert results == [f"r{item}" for item in ITEMS]
    stats = lookup.stats()
    assert (stats.calls, stats.batches, stats.items) == (6, 1, 3)


async def test_an_exception_result_is_raised_in_every_caller_of_that_item():
    """The exception routed to an item reaches each of its duplicate callers; the other items are unaffected."""
    lookup, joined, runs = deduping(lambda items: [LookupError(f"no {x}") if x == 1 else f"r{x}" for x in items])

    results = await kit.outcomes(*(functools.partial(lookup, item) for item in (1, 2, 1)))

    assert runs == [distinct(joined)]
    assert [type(result) for result in results] == [LookupError, str, LookupError]
    assert [str(result) for result in results] == ["no 1", "r2", "no 1"]


async def test_unhashable_items_are_never_merged():
    """Equal lists are collected apart: the leader gets every one of them, and each caller its own result."""
    lookup, joined, runs = deduping(lambda items: [("at", index) for index in range(len(items))])
    items = ([1], [1], [2], [1])

    results = await kit.gather(*(functools.partial(lookup, item) for item in items))

    (received,) = runs
    assert len(received) == 4
    assert all(got is sent for got, sent in zip(received, joined, strict=True))  # join order, every object
    assert results == [("at", next(i for i, x in enumerate(joined) if x is item)) for item in items]


async def test_hashable_duplicates_merge_beside_unhashable_items():
    """In one batch, equal hashable items are merged while equal unhashable ones stay apart."""
    lookup, joined, runs = deduping(lambda items: [repr(x) for x in items])
    items = ("a", [1], "a", [1])

    results = await kit.gather(*(functools.partial(lookup, item) for item in items))

    first_a = joined.index("a")
    expected = [x for i, x in enumerate(joined) if x != "a" or i == first_a]
    assert runs == [expected]
    assert sum(x is items[1] or x is items[3] for x in runs[0]) == 2
    assert results == ["'a'", "[1]", "'a'", "[1]"]


@pytest.mark.virtual_clock
async def test_max_size_counts_distinct_items():
    """max_size=2: three calls for one item and one for another fill a batch; duplicates do not count."""
    t0 = kit.now()
    record = []

    @batch(dedupe=True, max_size=2, max_window=0.05)
    async def lookup(item):
        items = await collect(item)
        record.append((items, round(kit.now() - t0, 6)))
        return scatter([f"r{x}" for x in items])

    async def arrive(at, item):
        await anyio.sleep_until(t0 + at)
        return await lookup(item)

    arrivals = ((0.0, 1), (0.01, 1), (0.02, 1), (0.03, 2), (0.04, 3))
    results = await kit.gather(*(functools.partial(arrive, *arrival) for arrival in arrivals))

    assert results == ["r1", "r1", "r1", "r2", "r3"]
    assert record == [([1, 2], 0.03), ([3], 0.09)]  # full at .03 with 2 distinct items; [3] by its window


async def test_without_dedupe_equal_items_are_collected_separately():
    """The default: every call's item reaches the leader, duplicates included."""
    joined = []
    runs = []

    @batch
    async def lookup(item):
        joined.append(item)
        items = await collect(item)
        runs.append(items)
        return scatter([(x, i) for i, x in enumerate(items)])

    results = await kit.gather(*(functools.partial(lookup, item) for item in ITEMS))

    assert runs == [joined]
    assert sorted(results) == sorted((x, i) for i, x in enumerate(joined))
    assert [item for item, _ in results] == list(ITEMS)

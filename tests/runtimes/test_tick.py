"""Tick batching (``max_window=0``), the defaults, and successive batches, on every runtime.

SPEC.md "Batches and the barrier": with ``max_window=0`` a batch is flushed on the next turn of
the event loop (one trio scheduler round), holding every call that reached ``collect()`` in the
current turn; the defaults are ``max_window=0`` and ``max_size=100``; calls that arrive after a
flush open the next batch, which never waits for an earlier batch's bulk section.

Join order is the runtime's (trio starts tasks in a random order): bodies record their join just
before ``collect()``, and the expected batches are written in terms of it.
"""

from __future__ import annotations

import functools

import anyio
import anyio.lowlevel
import pytest
from tests.runtimes import kit
from tests.support import Recorder

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


def calls(fn, *items: object) -> list[functools.partial]:
    return [functools.partial(fn, item) for item in items]


# --------------------------------------------------------------------------------------
# Tick (max_window=0) and the defaults
# --------------------------------------------------------------------------------------


async def test_a_tick_batch_holds_the_calls_that_reach_collect_in_the_same_turn() -> None:
    """With max_window=0, calls started together share a batch; one reaching collect() turns later opens the next."""
    joins: list[object] = []
    batches: list[list[object]] = []

    @batch(max_window=0, max_size=None)
    async def fetch(item: object, checkpoints: int) -> object:
        for _ in range(checkpoints):
            await anyio.lowlevel.checkpoint()
        joins.append(item)
        items = await collect(item)
        batches.append(items)
        return scatter(items)

    together = [functools.partial(fetch, x, 0) for x in range(5)]
    results = await kit.gather(*together, functools.partial(fetch, "late", 2))

    assert results == [0, 1, 2, 3, 4, "late"]
    assert sorted(joins[:5]) == [0, 1, 2, 3, 4]
    assert sorted(batches, key=lambda items: joins.index(items[0])) == [joins[:5], ["late"]]


async def test_a_tick_flush_does_not_wait_for_busy_tasks() -> None:
    """The tick is the next turn of the loop: a task that keeps running (a checkpoint per turn) does not delay it."""
    turns = 0
    seen: list[tuple[list[int], int]] = []
    done = anyio.Event()

    async def spin() -> None:
        nonlocal turns
        while not done.is_set() and turns < 1000:
            turns += 1
            await anyio.lowlevel.checkpoint()

    @batch(max_window=0)
    async def fetch(item: int) -> int:
        started = turns
        items = await collect(item)
        seen.append((sorted(items), turns - started))
        return scatter(items)

    async with anyio.create_task_group() as tg:
        tg.start_soon(spin)
        await anyio.lowlevel.checkpoint()
        results = await kit.gather(*calls(fetch, 1, 2, 3))
        done.set()

    assert results == [1, 2, 3]
    ((items, waited),) = seen
    assert items == [1, 2, 3]
    assert waited <= 3  # a turn or so, nowhere near the spinner's 1000


@pytest.mark.virtual_clock
@pytest.mark.parametrize("decorate", [batch, batch()], ids=["@batch", "@batch()"])
async def test_the_defaults_are_tick_batching_and_max_size_100(decorate) -> None:
    """Without options: batches of at most 100 flushed on the next turn (no time passes): 250 calls make 100+100+50."""
    start = kit.now()
    joins: list[int] = []
    leads: list[tuple[float, int, list[int]]] = []

    @decorate
    async def fetch(item: int) -> int:
        joins.append(item)
        items = await collect(item)
        leads.append((kit.now() - start, item, items))
        return scatter([10 * x for x in items])

    results = await kit.gather(*calls(fetch, *range(250)))

    assert results == [10 * x for x in range(250)]
    assert sorted(joins) == list(range(250))
    assert sorted(leads, key=lambda lead: joins.index(lead[1])) == [
        (0, joins[0], joins[:100]),
        (0, joins[100], joins[100:200]),
        (0, joins[200], joins[200:]),
    ]


# --------------------------------------------------------------------------------------
# Successive batches
# --------------------------------------------------------------------------------------


async def test_calls_after_a_flush_open_the_next_batch_which_does_not_wait_for_the_first() -> None:
    """While a flushed batch's leader is busy, later calls form a new batch that runs and returns meanwhile."""
    joins: list[str] = []
    record = Recorder()
    release = anyio.Event()

    @batch
    async def work(item: str) -> str:
        joins.append(item)
        items = await collect(item)
        record("start", items)
        if "a" in items:
            await release.wait()
        record("end", items)
        return scatter([x.upper() for x in items])

    first: list[object] = []

    async def first_call(item: str) -> None:
        first.append(await work(item))

    async with anyio.create_task_group() as tg:
        for item in "ab":
            tg.start_soon(first_call, item)
        await kit.quiesce()  # [a, b] was flushed; its leader waits for `release`
        second = await kit.gather(*calls(work, "c", "d"))
        record("second returned", second)
        release.set()

    one, two = joins[:2], joins[2:]
    assert (sorted(one), sorted(two)) == (["a", "b"], ["c", "d"])
    assert record == [
        ("start", one),
        ("start", two),
        ("end", two),
        ("second returned", ["C", "D"]),
        ("end", one),
    ]
    assert sorted(first) == ["A", "B"]

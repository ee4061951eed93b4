"""Leader and followers, on every runtime (SPEC.md "Leader and followers").

At the flush exactly one member, the earliest still waiting, resumes from ``collect()`` with the
items in join order; the followers stay inside ``collect()`` until ``scatter()`` routes their
results, and code after ``scatter()`` changes the leader's own value only.

Join order is the runtime's (trio starts tasks in a random order): bodies record their join just
before ``collect()``, and the expected record is written in terms of it.
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


async def test_exactly_one_member_resumes_from_collect_with_every_item_in_join_order() -> None:
    """The earliest member leads; collect() gives it the items of all members in the order they joined."""
    joins: list[int] = []
    resumed = Recorder()

    @batch
    async def fetch(item: int) -> str:
        joins.append(item)
        items = await collect(item)
        resumed(item, items)
        return scatter([f"r{x}" for x in items])

    results = await kit.gather(*calls(fetch, *range(6)))

    assert sorted(joins) == list(range(6))
    assert resumed == [(joins[0], joins)]
    assert results == [f"r{x}" for x in range(6)]


@pytest.mark.virtual_clock
async def test_the_leader_is_the_earliest_member_not_the_first_call_started() -> None:
    """Calls started a, b, c, d but reaching collect() b, c, a, d: b leads, with the items in that order."""
    start = kit.now()
    resumed = Recorder()

    @batch(max_window=1)
    async def fetch(item: str, delay: float) -> str:
        await anyio.sleep(delay)
        items = await collect(item)
        resumed(round(kit.now() - start, 6), item, items)
        return scatter([x.upper() for x in items])

    started = [("a", 0.3), ("b", 0.1), ("c", 0.2), ("d", 0.4)]
    results = await kit.gather(*(functools.partial(fetch, *call) for call in started))

    assert resumed == [(1.1, "b", ["b", "c", "a", "d"])]  # the window opened at 0.1
    assert results == ["A", "B", "C", "D"]


@pytest.mark.virtual_clock
async def test_the_leader_is_the_earliest_member_still_waiting() -> None:
    """The call that opened the batch was cancelled before the flush: the next member leads, without its item."""
    start = kit.now()
    record = Recorder()

    @batch(max_window=1)
    async def fetch(item: str) -> str:
        items = await collect(item)
        record(round(kit.now() - start, 6), "lead", item, items)
        return scatter([x.upper() for x in items])

    async def call(item: str, at: float, patience: float) -> None:
        await anyio.sleep_until(start + at)
        with anyio.move_on_after(patience) as scope:
            result = await fetch(item)
            record(round(kit.now() - start, 6), "returned", item, result)
        if scope.cancelled_caught:
            record(round(kit.now() - start, 6), "gave up", item)

    async with anyio.create_task_group() as tg:
        for item, at, patience in (("a", 0, 0.5), ("b", 0.2, 5), ("c", 0.3, 5)):
            tg.start_soon(call, item, at, patience)

    assert record[:2] == [(0.5, "gave up", "a"), (1, "lead", "b", ["b", "c"])]  # the window still ran from 0
    assert sorted(record[2:]) == [(1, "returned", "b", "B"), (1, "returned", "c", "C")]


@pytest.mark.parametrize("max_window", [0, 0.5], ids=["tick", "window"])
async def test_a_call_cancelled_while_its_batch_is_open_never_leads_it(max_window: float) -> None:
    """A call whose scope is cancelled as it reaches collect() leaves its batch: no leader ever runs for it."""
    runs: list[list[str]] = []

    @batch(max_window=max_window)
    async def fetch(item: str) -> str:
        items = await collect(item)
        runs.append(items)  # no checkpoint before scatter(): a cancelled leader would not notice
        return scatter([x.upper() for x in items])

    returned: list[str] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        returned.append(await fetch("a"))

    assert (scope.cancelled_caught, returned, runs) == (True, [], [])
    assert await fetch("b") == "B"  # the function works on: the next call leads its own batch
    assert runs == [["b"]]


async def test_followers_stay_in_collect_until_their_result_is_routed() -> None:
    """Followers' context managers and finally blocks exit when scatter() routes their results, not before."""
    joins: list[int] = []
    record = Recorder()
    release = anyio.Event()
    returned: dict[int, str] = {}

    class Exits:
        def __init__(self, item: int) -> None:
            self.item = item

        async def __aenter__(self) -> None:
            record("enter", self.item)

        async def __aexit__(self, *exc_info: object) -> None:
            record("exit", self.item)

    @batch(max_window=0)
    async def fetch(item: int) -> str:
        try:
            async with Exits(item):
                joins.append(item)
                items = await collect(item)
                record("bulk", item, items)
                await release.wait()
                record("scatter")
                return scatter([f"r{x}" for x in items])
        finally:
            record("finally", item)

    async def call(item: int) -> None:
        returned[item] = await fetch(item)

    async with anyio.create_task_group() as tg:
        for item in range(4):
            tg.start_soon(call, item)
        await kit.quiesce()  # every member joined, the leader waits in its bulk section
        waiting = record.take()
        nothing_returned = dict(returned)
        release.set()

    leader, followers = joins[0], joins[1:]
    assert sorted(joins) == [0, 1, 2, 3]
    assert waiting == [*(("enter", x) for x in joins), ("bulk", leader, joins)]
    assert nothing_returned == {}
    # scatter() returns to the leader at once, so it unwinds first; then each follower unwinds
    # from collect(), its context manager then its finally (followers in the runtime's order).
    assert record[:3] == ["scatter", ("exit", leader), ("finally", leader)]
    unwound = [tuple(record[i : i + 2]) for i in range(3, len(record), 2)]
    assert sorted(unwound) == [(("exit", x), ("finally", x)) for x in sorted(followers)]
    assert returned == {x: f"r{x}" for x in range(4)}


async def test_code_after_collect_runs_once_per_batch_never_in_a_follower() -> None:
    """Five calls with max_size=2 make three batches: three runs of the code after collect(), one per leader."""
    joins: list[int] = []
    after = Recorder()

    @batch(max_size=2)
    async def fetch(item: int) -> int:
        joins.append(item)
        items = await collect(item)
        after(item, items)
        return scatter([-x for x in items])

    results = await kit.gather(*calls(fetch, *range(5)))

    assert results == [0, -1, -2, -3, -4]
    assert sorted(after, key=lambda run: joins.index(run[0])) == [
        (joins[0], joins[0:2]),
        (joins[2], joins[2:4]),
        (joins[4], joins[4:]),
    ]


async def test_scatter_delivers_every_followers_share_at_once_and_returns_the_leaders_own() -> None:
    """Followers return their very share while the leader still runs after scatter(); scatter() gave it its own."""
    shares = {x: object() for x in range(4)}
    joins: list[int] = []
    returned: dict[int, object] = {}
    followers_returned = anyio.Event()
    record = Recorder()

    @batch
    async def fetch(item: int) -> object:
        joins.append(item)
        items = await collect(item)
        own = scatter([shares[x] for x in items])
        record("own share", own is shares[item])
        await followers_returned.wait()  # would never end if the followers waited for the leader
        record("followers had returned", sorted(returned))
        return own

    async def call(item: int) -> None:
        returned[item] = await fetch(item)
        if len(returned) == len(shares) - 1:
            followers_returned.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for item in shares:
                tg.start_soon(call, item)

    assert record == [("own share", True), ("followers had returned", sorted(joins[1:]))]
    assert sorted(returned) == sorted(shares)
    assert all(returned[x] is shares[x] for x in shares)


async def test_code_after_scatter_changes_only_the_leaders_own_value() -> None:
    """After scatter() the leader may mutate or rebind the results and replace its own return; followers keep theirs."""
    joins: list[int] = []

    @batch
    async def fetch(item: int) -> object:
        joins.append(item)
        items = await collect(item)
        results = [f"r{x}" for x in items]
        own = scatter(results)
        results[:] = ["mutated"] * len(results)
        results = ["rebound"] * len(items)
        await anyio.lowlevel.checkpoint()
        return ("replaced", own, results[0])

    results = await kit.gather(*calls(fetch, *range(4)))

    leader = joins[0]
    assert results == [("replaced", f"r{x}", "rebound") if x == leader else f"r{x}" for x in range(4)]

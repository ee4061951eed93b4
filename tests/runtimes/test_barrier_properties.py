"""The flush rule against a model, over random schedules, on every runtime.

* In virtual time (asyncio, asyncio+eager, trio): calls arrive at random whole seconds, some give
  up (a cancel scope around the call) a quarter second off the grid, and the options are a
  random ``max_size`` and a tick or half-second-aligned window, so that no arrival, departure or
  flush ever falls at the same instant as another kind of event. A model replays the recorded
  joins and the departures and says which batches close when (the first of size, window and
  tick), who leads each (its earliest member still waiting), with which items, and what each
  call gets; the whole record must match it.
* In scheduler turns (every backend, uvloop included): groups of calls reach ``collect()``
  two turns apart with ``max_window=0``; each group's calls make batches of ``max_size`` in
  join order, and no batch spans two groups.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.runtimes import kit
from tests.support import describe_objects, gc_collect_harder, live_engine_objects, property_examples

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio

SETTINGS = settings(
    max_examples=property_examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Schedule:
    max_window: float
    max_size: int | None
    arrivals: tuple[int, ...]  # call i reaches collect() at arrivals[i] seconds
    patience: tuple[float | None, ...]  # call i gives up at arrivals[i] + patience[i], if not None


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    n = draw(st.integers(1, 10))
    return Schedule(
        max_window=draw(st.sampled_from([0, 0.5, 1.5, 2.5])),
        max_size=draw(st.sampled_from([None, 1, 2, 3, 4])),
        arrivals=tuple(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))),
        patience=tuple(draw(st.lists(st.none() | st.sampled_from([0.25, 0.75, 1.25, 2.75]), min_size=n, max_size=n))),
    )


@dataclass
class Model:
    """The batches (close time, leader, items) and each call's outcome that the contract predicts."""

    batches: list[tuple[float, int, list[int]]] = field(default_factory=list)
    outcomes: dict[int, tuple[str, float]] = field(default_factory=dict)
    opened: float = 0.0
    members: list[int] = field(default_factory=list)

    def close(self, at: float) -> None:
        self.batches.append((at, self.members[0], self.members))
        self.outcomes.update(dict.fromkeys(self.members, ("ok", at)))
        self.members = []


def model(schedule: Schedule, joins: list[int]) -> Model:
    """Replay the joins (in the order they happened) and the departures, in time order."""
    events = [(schedule.arrivals[call], 0, order, call) for order, call in enumerate(joins)]
    events += [
        (schedule.arrivals[call] + patience, 1, 0, call)
        for call, patience in enumerate(schedule.patience)
        if patience is not None
    ]
    m = Model()
    for at, departs, _, call in sorted(events):
        if m.members and at > m.opened + schedule.max_window:
            m.close(m.opened + schedule.max_window)  # its window (or tick) ended first
        if departs:
            if call not in m.outcomes:  # still in the open batch: it leaves it
                m.members.remove(call)
                m.outcomes[call] = ("cancelled", at)
            continue
        if not m.members:
            m.opened = at
        m.members.append(call)
        if schedule.max_size is not None and len(m.members) == schedule.max_size:
            m.close(at)
    if m.members:
        m.close(m.opened + schedule.max_window)
    return m


@pytest.mark.virtual_clock
@SETTINGS
@given(schedule=schedules())
@example(schedule=Schedule(max_window=0.5, max_size=None, arrivals=(0,), patience=(0.25,)))  # its batch is discarded
async def test_every_batch_closes_at_the_first_of_size_window_and_tick(schedule: Schedule) -> None:
    """Batches, leaders, items, times and every call's outcome are the model's, departures included."""
    start = kit.now()
    baseline = {id(obj) for obj in live_engine_objects()}
    joins: list[tuple[float, int]] = []
    batches: list[tuple[float, int, list[int]]] = []
    outcomes: dict[int, tuple[str, float]] = {}

    def now() -> float:
        return round(kit.now() - start, 6)

    @batch(max_window=schedule.max_window, max_size=schedule.max_size)
    async def fetch(call: int) -> int:
        joins.append((now(), call))
        calls = await collect(call)
        batches.append((now(), call, calls))
        return scatter([100 + c for c in calls])

    async def call(index: int) -> None:
        await anyio.sleep_until(start + schedule.arrivals[index])
        patience = schedule.patience[index]
        with anyio.move_on_after(float("inf") if patience is None else patience):
            assert await fetch(index) == 100 + index
            outcomes[index] = ("ok", now())
            return
        outcomes[index] = ("cancelled", now())

    async with anyio.create_task_group() as tg:
        for index in range(len(schedule.arrivals)):
            tg.start_soon(call, index)

    assert sorted(joins) == sorted((float(at), call) for call, at in enumerate(schedule.arrivals))
    expected = model(schedule, [call for _, call in joins])
    first_join = {call: order for order, (_, call) in enumerate(joins)}
    assert sorted(batches, key=lambda b: (b[0], first_join[b[1]])) == sorted(
        expected.batches, key=lambda b: (b[0], first_join[b[1]])
    )
    assert outcomes == expected.outcomes
    gc_collect_harder()
    assert describe_objects(live_engine_objects(ignore=baseline)) == ""  # every caller returned: nothing is kept


@SETTINGS
@given(
    groups=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    max_size=st.sampled_from([None, 1, 2, 3]),
)
async def test_tick_batches_hold_the_calls_of_one_turn_up_to_max_size(groups: list[int], max_size: int | None) -> None:
    """Groups two turns apart: each batch is a ``max_size`` run of one group's joins, led by its first."""
    joins: list[tuple[int, int]] = []
    batches: list[list[tuple[int, int]]] = []

    @batch(max_window=0, max_size=max_size)
    async def fetch(group: int, index: int) -> tuple[int, int]:
        for _ in range(2 * group):
            await anyio.lowlevel.checkpoint()
        joins.append((group, index))
        calls = await collect((group, index))
        batches.append(calls)
        return scatter(calls)

    plan = [(group, index) for group, size in enumerate(groups) for index in range(size)]
    with anyio.fail_after(30):  # no window to wait for: virtual seconds, or a hang on uvloop
        results = await kit.gather(*(functools.partial(fetch, *call) for call in plan))

    assert results == plan
    assert [group for group, _ in joins] == sorted(group for group, _ in plan)  # groups in turn order
    step = max_size or len(plan)
    expected: list[list[tuple[int, int]]] = []
    for group in range(len(groups)):
        in_group = [call for call in joins if call[0] == group]
        expected += [in_group[i : i + step] for i in range(0, len(in_group), step)]
    assert sorted(batches, key=lambda calls: joins.index(calls[0])) == expected

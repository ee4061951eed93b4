"""Property tests of the production controls: weighted batches and load shedding (issue 5).

Each example runs a random schedule of arrivals (with random items, partitions, weights,
cancellations and leader faults) on a fresh virtual-clock loop and checks:

* weights (``max_weight``): every batch a leader receives weighs at most ``max_weight``
  unless it holds one item; every caller gets its own result or its own exception (its
  item's error, or its leader's error), ``CancelledError`` if and only if it was cancelled;
  nothing hangs; nothing is left in the partition table;
* shedding (``max_pending``, with or without ``max_concurrency``): a call is refused with
  ``OverloadedError`` exactly when ``max_pending`` calls of its partition already wait in
  batches not dispatched yet (recounted from the members themselves at each arrival), and the
  others are unaffected; the statistics add up (calls, shed, batches, items, cancellations,
  handovers, failures) against an observer's records and the run's own counts.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.strategies import ARRIVAL_STEPS
from tests.support import live_engine_objects, partitions_of, property_examples, run_virtual

from concresce import OverloadedError, batch, collect, scatter
from concresce._calls import MEMBER

#: Virtual seconds after which a call that has not ended is taken to hang.
HORIZON = 1000.0

EAGER = pytest.param(
    True,
    id="eager",
    marks=pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in Python 3.12"),
)
LOOPS = pytest.mark.parametrize("eager", [pytest.param(False, id="lazy"), EAGER])
SPLIT = 2 if sys.version_info >= (3, 12) else 1

SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

#: An item's value and its weight: small values are light, 6 is heavier than any budget.
WEIGHTS = (0, 1, 2, 3, 5, 8, 13)


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One call: when it starts (after the previous one), its partition and value, its cancellation."""

    step: float
    key: int
    value: int
    cancel_after: float | None


@dataclass(frozen=True)
class Run:
    """The options of one run, its calls and what its leaders do."""

    max_window: float
    max_size: int | None
    max_concurrency: int | None
    dedupe: bool
    max_weight: float | None
    max_pending: int | None
    arrivals: tuple[Arrival, ...]
    durations: tuple[float, ...]  # the n-th leader's bulk call lasts durations[n % len]
    faults: frozenset[int]  # leaders (by number) that raise before scatter()
    failing: frozenset[int]  # values whose result is an exception instance


_CANCEL = st.one_of(st.none(), st.none(), st.none(), st.sampled_from((0.0, 0.001, 0.004, 0.01, 0.03)))


def arrivals(max_calls):
    return st.lists(
        st.builds(
            Arrival,
            step=st.sampled_from(ARRIVAL_STEPS),
            key=st.sampled_from((0, 0, 1)),
            value=st.integers(0, len(WEIGHTS) - 1),
            cancel_after=_CANCEL,
        ),
        min_size=1,
        max_size=max_calls,
    ).map(tuple)


@st.composite
def runs(draw, *, weighted, shedding, max_calls=14):
    return Run(
        max_window=draw(st.sampled_from((0.0, 0.0, 0.005, 0.02))),
        max_size=draw(st.sampled_from((None, 2, 3, 5))),
        max_concurrency=draw(st.sampled_from((None, None, 1, 2))),
        dedupe=draw(st.booleans()),
        max_weight=draw(st.sampled_from((5, 10, 10.5))) if weighted else None,
        max_pending=draw(st.sampled_from((1, 2, 3, 5))) if shedding else None,
        arrivals=draw(arrivals(max_calls)),
        durations=tuple(draw(st.lists(st.sampled_from((0.0, 0.001, 0.02)), min_size=1, max_size=3))),
        faults=draw(st.frozensets(st.integers(0, 5), max_size=2)),
        failing=draw(st.frozensets(st.integers(0, len(WEIGHTS) - 1), max_size=2)),
    )


# --------------------------------------------------------------------------------------
# Running one
# --------------------------------------------------------------------------------------


class Item:
    """A collected item; under dedupe equal to the items of the same partition and value."""

    __slots__ = ("dedupe", "index", "key", "value")

    def __init__(self, index, key, value, dedupe):
        self.index = index
        self.key = key
        self.value = value
        self.dedupe = dedupe

    def __eq__(self, other):
        if self.dedupe:
            return isinstance(other, Item) and (self.key, self.value) == (other.key, other.value)
        return self is other

    def __hash__(self):
        return hash((self.key, self.value)) if self.dedupe else id(self)

    def __repr__(self):
        return f"Item(#{self.index}, key={self.key}, value={self.value})"

    def result(self):
        """What this item's caller must get (by value under dedupe, where one result serves several)."""
        return ("r", self.key, self.value) if self.dedupe else ("r", self.index)


class ItemError(Exception):
    """A per-item exception result."""

    def __init__(self, key, value):
        super().__init__(key, value)
        self.key = key
        self.value = value


class LeaderError(Exception):
    """What a faulty leader raises before scatter()."""


@dataclass
class Record:
    problems: list[str] = field(default_factory=list)
    leads: list[tuple[Item, ...]] = field(default_factory=list)
    records: list[object] = field(default_factory=list)
    cancelled: set[int] = field(default_factory=set)
    joined: int = 0
    shed: int = 0
    left_in_collect: int = 0
    outcomes: list[object] = field(default_factory=list)


def waiting_now(work, loop, key):
    """Recount the calls of partition ``key`` waiting in batches not dispatched yet, member by member."""
    part = partitions_of(work).get((loop, key))
    if part is None:
        return 0
    batches = list(part.pending or ())
    if part.open is not None and all(b is not part.open for b in batches):
        batches.append(part.open)
    return sum(member.state == MEMBER for b in batches for member in b.members)


class Runner:
    """Runs one ``Run`` on the running virtual-clock loop and records what happens."""

    def __init__(self, run):
        self.run = run
        self.rec = Record()
        self.loop = asyncio.get_running_loop()
        self.leaders = iter(range(10_000))
        self.work = batch(
            max_window=run.max_window,
            max_size=run.max_size,
            max_concurrency=run.max_concurrency,
            dedupe=run.dedupe,
            group_by=lambda index, key: key,
            weight=None if run.max_weight is None else (lambda item: WEIGHTS[item.value]),
            max_weight=run.max_weight,
            max_pending=run.max_pending,
            observer=self.rec.records.append,
        )(self.body)

    async def body(self, index, key):
        run, rec = self.run, self.rec
        item = Item(index, key, run.arrivals[index].value, run.dedupe)
        before = waiting_now(self.work, self.loop, key)
        limit = run.max_pending
        if limit is not None and before > limit:
            rec.problems.append(f"#{index}: {before} calls waiting in partition {key}, max_pending={limit}")
        try:
            items = await collect(item)
        except OverloadedError:
            rec.shed += 1
            if limit is None or before < limit:
                rec.problems.append(f"#{index} shed with {before} waiting, max_pending={limit}")
            raise
        except BaseException as error:  # cancelled, or a follower unwinding with its result
            rec.joined += 1
            rec.left_in_collect += isinstance(error, asyncio.CancelledError)
            raise
        rec.joined += 1
        if limit is not None and before >= limit:
            rec.problems.append(f"#{index} admitted with {before} waiting, max_pending={limit}")
        del item
        return await self.lead(key, items)

    async def lead(self, key, items):
        run, rec = self.run, self.rec
        number = next(self.leaders)
        rec.leads.append(tuple(items))
        weight = sum(WEIGHTS[it.value] for it in items)
        if run.max_weight is not None and len(items) > 1 and weight > run.max_weight:
            rec.problems.append(f"lead {number}: {items} weigh {weight} > max_weight={run.max_weight}")
        if any(it.key != key for it in items):
            rec.problems.append(f"lead {number}: items of another partition: {items}")
        await asyncio.sleep(run.durations[number % len(run.durations)])
        if number in run.faults:
            raise LeaderError(number)
        return scatter([ItemError(it.key, it.value) if it.value in run.failing else it.result() for it in items])

    def cancel(self, index, task):
        if task.cancel():
            self.rec.cancelled.add(index)

    async def main(self):
        rec = self.rec
        tasks = []
        timers = []
        for index, arrival in enumerate(self.run.arrivals):
            if arrival.step:
                await asyncio.sleep(arrival.step)
            task = asyncio.create_task(self.work(index, arrival.key))
            tasks.append(task)
            if arrival.cancel_after is not None:
                timers.append(self.loop.call_later(arrival.cancel_after, self.cancel, index, task))
        _, pending = await asyncio.wait(tasks, timeout=HORIZON)
        for timer in timers:
            timer.cancel()
        if pending:
            rec.problems.append(f"calls still running after {HORIZON} s: {sorted(tasks.index(t) for t in pending)}")
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
        rec.outcomes = [outcome(task) for task in tasks]
        if partitions_of(self.work):
            rec.problems.append("the partition table is not empty after the run")
        return rec, self.work.stats()


async def run_one(run):
    asyncio.get_running_loop().set_debug(False)  # debug mode triples the time of an example
    return await Runner(run).main()


def outcome(task):
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return ("raised", error) if error is not None else ("returned", task.result())


def explain(run, rec, index, result):
    """Why call ``index`` may not end with ``result`` (None if it may)."""
    arrival = run.arrivals[index]
    cancelled = index in rec.cancelled
    if result == "cancelled" or cancelled:
        return None if result == "cancelled" and cancelled else f"cancelled={cancelled} but ended with {result!r}"
    kind, value = result
    own = Item(index, arrival.key, arrival.value, run.dedupe).result()
    if kind == "returned":
        return None if value == own else f"returned {value!r}, not its own result {own!r}"
    if isinstance(value, ItemError):
        mine = (value.key, value.value) == (arrival.key, arrival.value) and arrival.value in run.failing
        return None if mine else f"got another item's error {value!r}"
    if isinstance(value, OverloadedError):
        return None if run.max_pending is not None else "shed without max_pending"
    return None if isinstance(value, LeaderError) else f"raised {value!r}"


def check_stats(rec, stats):
    """The problems with the statistics: they must add up with the records and the run's own counts."""
    problems = []
    records = rec.records
    expected = {
        "calls": rec.joined,
        "shed": rec.shed,
        "batches": len(records),
        "items": sum(r.size for r in records),
        "cancellations": rec.left_in_collect,
        "handovers": sum(r.handovers for r in records),
        "leader_failures": sum(r.outcome == "error" for r in records),
        "open_now": 0,
        "in_flight_now": 0,
    }
    actual = {name: getattr(stats, name) for name in expected}
    if actual != expected:
        problems.append(f"stats {actual} != {expected}")
    if sum(stats.flushes.values()) != stats.batches or stats.batch_size.count != stats.batches:
        problems.append(f"flushes {dict(stats.flushes)} / batch_size.count do not add up to {stats.batches} batches")
    served = sum(r.calls for r in records)
    if served > stats.calls or (not rec.cancelled and served != stats.calls):
        problems.append(f"records' calls {served} vs stats.calls {stats.calls}")
    return problems


def check(run, rec, stats):
    problems = list(rec.problems)
    for index, result in enumerate(rec.outcomes):
        why = explain(run, rec, index, result)
        if why is not None:
            problems.append(f"#{index}: {why}")
    problems += check_stats(rec, stats)
    assert not problems, "\n".join([repr(run), *problems])


def run_and_check(run, *, eager):
    before = {id(obj) for obj in live_engine_objects()}
    rec, stats = run_virtual(lambda: run_one(run), eager=eager)
    check(run, rec, stats)
    del rec, stats
    gc.collect()
    leaked = live_engine_objects(ignore=before)
    assert leaked == [], f"engine objects still alive after the run: {leaked}"
    gc.freeze()


@pytest.fixture
def heap():
    """Hide the objects alive now from the collector: each example's leak check stays cheap."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# --------------------------------------------------------------------------------------
# The properties
# --------------------------------------------------------------------------------------


@LOOPS
@settings(SETTINGS, max_examples=property_examples(400 // SPLIT))
@given(run=runs(weighted=True, shedding=False))
def test_weighted_batches_stay_within_budget_and_route_every_caller(heap, eager, run):
    """Under max_weight every batch of several items weighs at most the budget; each caller gets its own outcome."""
    run_and_check(run, eager=eager)


@LOOPS
@settings(SETTINGS, max_examples=property_examples(400 // SPLIT))
@given(run=runs(weighted=False, shedding=True))
def test_shedding_refuses_exactly_the_calls_beyond_max_pending(heap, eager, run):
    """A call is refused iff max_pending calls of its partition wait; the rest are served; the stats add up."""
    run_and_check(run, eager=eager)


@LOOPS
@settings(SETTINGS, max_examples=property_examples(250 // SPLIT))
@given(run=runs(weighted=True, shedding=True))
def test_weights_and_shedding_together(heap, eager, run):
    run_and_check(run, eager=eager)

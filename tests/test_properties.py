"""Property tests: random schedules of calls, cancellations and faults on the virtual clock.

Each example runs one :class:`tests.strategies.Schedule` on a fresh virtual-clock loop
(:func:`tests.support.run_virtual`), records what every call and every leader did, and
checks SPEC.md's invariants on the record:

* every call ends exactly once, and nothing hangs;
* its outcome is its own result (computed from its item and partition, so misrouting shows),
  or the default / ``MissingResultError`` for its missing key, or its own per-item exception,
  or the exception its batch's leader raised before ``scatter()``, or (leader only) the
  leader's later exception, or ``RuntimeError`` from a leader that skipped ``scatter()``;
  ``CancelledError`` if and only if that very task was cancelled;
* each batch a leader receives holds at most ``max_size`` items (distinct with dedupe), of
  one partition, in arrival order, with no two equal items under dedupe, the leader's own
  first;
* without ``max_concurrency``, a batch is flushed no later than ``max_window`` after it
  opened; with ``max_concurrency=k``, no more than ``k`` bulk sections of a partition run at
  once;
* afterwards: no pending task, the function's partition table is empty, and no item, call,
  batch or partition is left alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import sys
import weakref
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from tests.strategies import batch_options, schedules
from tests.support import copy_of, live_engine_objects, partitions_of, property_examples, run_virtual

from concresce import MissingResultError, batch, collect, scatter

#: Virtual seconds after which a call that has not ended is taken to hang.
HORIZON = 1000.0
#: Slack for comparing virtual times (sums of float delays).
EPSILON = 1e-9

EAGER = pytest.param(
    True,
    id="eager",
    marks=pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in Python 3.12"),
)
LOOPS = pytest.mark.parametrize("eager", [pytest.param(False, id="lazy"), EAGER])

#: On Python 3.12+ each property also runs with eager tasks: the examples are split between
#: the two loops, so that the file keeps its running time (and its 3000+ examples with
#: ``CONCRESCE_SLOW_TESTS=1``; a tenth by default, see ``tests.support.property_examples``)
#: everywhere.
SPLIT = 2 if sys.version_info >= (3, 12) else 1

#: Shrinking a failure can take minutes (Hypothesis gives up after five), far beyond the
#: 60 s pytest-timeout; a passing property takes 2-15 s.
SHRINK_TIMEOUT = pytest.mark.timeout(420)

PROPERTY_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
}

DEFAULT = "<default>"
NO_SCATTER = "<returned without scatter>"


# --------------------------------------------------------------------------------------
# Items, results and the exceptions leaders raise
# --------------------------------------------------------------------------------------


class Item:
    """A collected item: which call made it, its partition and value. Equal only to itself."""

    __slots__ = ("__weakref__", "index", "key", "value")

    def __init__(self, index, key, value):
        self.index = index
        self.key = key
        self.value = value

    def __repr__(self):
        return f"{type(self).__name__}(#{self.index}, key={self.key}, value={self.value})"


class ValueItem(Item):
    """An item equal to every item of the same partition and value (for dedupe)."""

    __slots__ = ()

    def __eq__(self, other):
        return isinstance(other, ValueItem) and (self.key, self.value) == (other.key, other.value)

    def __hash__(self):
        return hash((self.key, self.value))


def value_result(key, value):
    """The result a call's item gets when results are computed from its value alone."""
    return 1000 * key + 10 * value


def own_result(index, key, value):
    """The result only this call's own item gets (so that a result routed to the wrong call shows)."""
    return 100_000 * (index + 1) + value_result(key, value)


class ItemError(Exception):
    """A per-item exception result, naming the leader that made it and the item it is for."""

    def __init__(self, lead, key, value):
        super().__init__(lead, key, value)
        self.lead = lead
        self.key = key
        self.value = value


class LeaderError(Exception):
    """What a leader raises before scatter()."""

    def __init__(self, lead):
        super().__init__(lead)
        self.lead = lead


class LeaderAfterError(Exception):
    """What a leader raises after scatter()."""

    def __init__(self, lead):
        super().__init__(lead)
        self.lead = lead


# --------------------------------------------------------------------------------------
# Running a schedule
# --------------------------------------------------------------------------------------


@dataclass
class CallRecord:
    """What happened to one call."""

    index: int
    key: int  # its partition (0 for all calls without group_by)
    value: int
    started: int = 0
    ended: int = 0
    join_time: float | None = None
    join_seq: int | None = None
    cancelled_by_us: bool = False  # some task.cancel() on it returned True
    cancel_seq: int | None = None  # the run's event number of the first such cancel()
    item: weakref.ref[Item] | None = None


@dataclass
class Lead:
    """One leader's resumption from collect() and how its bulk section ended."""

    number: int
    seq: int  # the run's event number (cancellations and leads are numbered in one sequence)
    leader: int
    key: int
    time: float
    indices: tuple[int, ...]  # the call index of each item received
    values: tuple[int, ...]
    keys: tuple[int, ...]
    plan: object
    end: str | None = None  # "aborted", "raised", "no_scatter" or "scattered"
    end_time: float | None = None
    error: BaseException | None = None


@dataclass
class Run:
    """The record of one run."""

    calls: list[CallRecord]
    leads: list[Lead] = field(default_factory=list)
    outcomes: list[object] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def outcome_of(task):
    """``("returned", value)``, ``("raised", exception)`` or ``"cancelled"``."""
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    if error is not None:
        return ("raised", error)
    return ("returned", task.result())


def build_results(plan, items, number):
    """The leader's results for ``items`` following ``plan``, and scatter()'s keyword arguments."""

    def result(item, by_value):
        if item.value in plan.failing:
            return ItemError(number, item.key, item.value)
        if by_value:
            return value_result(item.key, item.value)
        return own_result(item.index, item.key, item.value)

    by_value = isinstance(items[0], ValueItem) if items else False
    if plan.routing == "list":
        return [result(item, by_value) for item in items], {}
    present = [item for item in items if item.value not in plan.missing]
    if plan.routing == "dict_key":
        # Keyed by (partition, value): equal values share one entry, so the result is by value.
        return {(item.key, item.value): result(item, True) for item in present}, {
            "key": lambda item: (item.key, item.value)
        }
    results = {item: result(item, by_value) for item in present}
    if plan.routing == "dict_default":
        return results, {"default": DEFAULT}
    return results, {}


class Runner:
    """Runs one schedule on the running (virtual-clock) loop and records what happens."""

    def __init__(self, schedule):
        self.schedule = schedule
        self.opts = opts = schedule.options
        self.loop = asyncio.get_running_loop()
        calls = schedule.calls
        self.run = Run([CallRecord(i, plan.key if opts.group_by else 0, plan.value) for i, plan in enumerate(calls)])
        self.tasks = []
        self.waiting = {}  # partition -> indices of the calls suspended in collect()
        self.running = {}  # partition -> bulk sections running now
        self.join_seq = itertools.count()
        self.events = itertools.count()
        self.make_item = ValueItem if opts.dedupe else Item
        self.work = batch(
            max_window=opts.max_window,
            max_size=opts.max_size,
            dedupe=opts.dedupe,
            max_concurrency=opts.max_concurrency,
            group_by=(lambda index, key: key) if opts.group_by else None,
        )(self.body)

    # -- cancelling ------------------------------------------------------------------------

    def cancel(self, index, task=None):
        if (task or self.tasks[index]).cancel():
            call = self.run.calls[index]
            if not call.cancelled_by_us:
                call.cancelled_by_us = True
                call.cancel_seq = next(self.events)

    def cancel_flagged(self, phase, key):
        """Cancel the calls of partition ``key`` waiting in collect() and flagged for ``phase``."""
        for index in sorted(self.waiting.get(key, ())):
            cancel = self.schedule.calls[index].cancel
            if cancel is not None and cancel.phase == phase:
                self.cancel(index)

    # -- the decorated function ----------------------------------------------------------

    async def body(self, index, key):
        """The body of the batched function (``key`` is only for ``group_by``)."""
        call = self.run.calls[index]
        plan = self.schedule.calls[index]
        if plan.wait:
            await asyncio.sleep(plan.wait)
        item = self.make_item(index, call.key, call.value)
        call.item = weakref.ref(item)
        call.join_time = self.loop.time()
        call.join_seq = next(self.join_seq)
        self.waiting.setdefault(call.key, set()).add(index)
        try:
            items = await collect(item)
        finally:
            self.waiting[call.key].discard(index)
        del item
        return await self.lead(call, plan, items)

    async def lead(self, call, plan, items):
        """The leader's part: a bulk call, then scatter(), following the next leader plan."""
        number = len(self.run.leads)
        leader_plan = self.schedule.plans[number % len(self.schedule.plans)]
        lead = Lead(
            number=number,
            seq=next(self.events),
            leader=call.index,
            key=call.key,
            time=self.loop.time(),
            indices=tuple(it.index for it in items),
            values=tuple(it.value for it in items),
            keys=tuple(it.key for it in items),
            plan=leader_plan,
        )
        self.run.leads.append(lead)
        self.start_bulk(lead)
        try:
            self.cancel_flagged("on_flush", call.key)
            if plan.cancel is not None and plan.cancel.phase == "as_leader":
                # Its own task: an eager task may lead before create_task() has returned it.
                self.cancel(call.index, asyncio.current_task())
            await asyncio.sleep(leader_plan.duration / 2)
            self.cancel_flagged("during_bulk", call.key)
            await asyncio.sleep(leader_plan.duration / 2)
        except BaseException:
            self.end_bulk(lead, "aborted")
            raise
        if leader_plan.fault == "before":
            self.end_bulk(lead, "raised")
            lead.error = LeaderError(number)
            raise lead.error
        if leader_plan.fault == "no_scatter":
            self.end_bulk(lead, "no_scatter")
            return NO_SCATTER
        results, options = build_results(leader_plan, items, number)
        del items
        self.end_bulk(lead, "scattered")
        try:
            own = scatter(results, **options)
        finally:
            self.cancel_flagged("after_scatter", call.key)
        if leader_plan.fault == "after":
            raise LeaderAfterError(number)
        return own

    def start_bulk(self, lead):
        running = self.running[lead.key] = self.running.get(lead.key, 0) + 1
        limit = self.opts.max_concurrency
        if limit is not None and running > limit:
            self.run.problems.append(f"{running} bulk sections at once in partition {lead.key}, limit {limit}")

    def end_bulk(self, lead, how):
        lead.end = how
        lead.end_time = self.loop.time()
        self.running[lead.key] -= 1

    # -- the scheduler ---------------------------------------------------------------------

    async def call(self, index):
        """One call of the batched function, counting how often it starts and ends."""
        call = self.run.calls[index]
        call.started += 1
        try:
            return await self.work(index, self.schedule.calls[index].key)
        finally:
            call.ended += 1

    async def main(self):
        """Start every call at its time, schedule its cancellation, wait for all; return the record."""
        loop = self.loop
        timers = []
        for index, plan in enumerate(self.schedule.calls):
            if plan.start > loop.time():
                await asyncio.sleep(plan.start - loop.time())
            self.tasks.append(asyncio.create_task(self.call(index)))
            if plan.cancel is not None and plan.cancel.phase in {"at", "before_collect"}:
                timers.append(loop.call_later(plan.cancel.delay, self.cancel, index))
        _, pending = await asyncio.wait(self.tasks, timeout=HORIZON)
        for timer in timers:
            timer.cancel()
        if pending:
            hung = sorted(self.tasks.index(task) for task in pending)
            self.run.problems.append(f"calls still running after {HORIZON} virtual seconds: {hung}")
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
        self.run.outcomes = [outcome_of(task) for task in self.tasks]
        if partitions_of(self.work):
            self.run.problems.append(f"the partition table is not empty after the run: {partitions_of(self.work)!r}")
        return self.run


async def run_schedule(schedule):
    """Run ``schedule`` on the running (virtual-clock) loop; return its record."""
    # Debug mode captures a stack for every callback and task, which triples the time of an
    # example; what it adds is diagnostics, not checks (run_virtual still reports leftover
    # tasks and every call of the loop's exception handler).
    asyncio.get_running_loop().set_debug(False)
    return await Runner(schedule).main()


# --------------------------------------------------------------------------------------
# Checking a run
# --------------------------------------------------------------------------------------


def final_lead(run, call, opts):
    """The last leader of the batch ``call`` was in: the one that routed its outcome (None if none).

    The batches of a partition are consecutive in arrival (join) order, and a batch handed
    over keeps only members that joined later than the leader who left, so the last lead of
    a call's batch is the partition's lead with the latest first item that joined no later
    than the call. The call is in it if its item is (under dedupe: an equal item that
    arrived no later, the first arrival among the members still waiting).
    """
    if call.join_seq is None:
        return None
    seqs = [c.join_seq for c in run.calls]
    candidates = [
        lead for lead in run.leads if lead.key == call.key and min(seqs[i] for i in lead.indices) <= call.join_seq
    ]
    if not candidates:
        return None
    lead = max(candidates, key=lambda lead: min(seqs[i] for i in lead.indices))
    if call.index in lead.indices:
        return lead
    if opts.dedupe and any(
        lead.values[slot] == call.value and seqs[i] <= call.join_seq for slot, i in enumerate(lead.indices)
    ):
        return lead
    return None


def routed_value(lead, call, opts):
    """What ``lead`` routed to ``call``: ``("value", v)``, ``("default",)``, ``("failing",)`` or ``("missing",)``."""
    plan = lead.plan
    if plan.routing != "list" and call.value in plan.missing:
        return ("default",) if plan.routing == "dict_default" else ("missing",)
    if call.value in plan.failing:
        return ("failing",)
    if opts.dedupe or plan.routing == "dict_key":
        return ("value", value_result(call.key, call.value))
    return ("value", own_result(call.index, call.key, call.value))


def explain_returned(value, call, lead, opts):
    if lead.end == "scattered" and not (lead.leader == call.index and lead.plan.fault == "after"):
        routed = routed_value(lead, call, opts)
        if routed == ("value", value) or (routed == ("default",) and value == DEFAULT):
            return None
    return f"returned {value!r}, which its batch's leader (lead {lead.number}) did not route to it"


def explain_item_error(error, call, lead, opts):
    if (
        error.lead == lead.number
        and lead.end == "scattered"
        and (error.key, error.value) == (call.key, call.value)
        and routed_value(lead, call, opts) == ("failing",)
    ):
        return None
    return f"got {error!r}, which is not its own item's error from lead {lead.number}"


def explain_missing(error, call, lead, opts):
    key = error.key
    if lead.end == "scattered" and routed_value(lead, call, opts) == ("missing",):
        if lead.plan.routing == "dict_key":
            return None if key == (call.key, call.value) else f"got {error!r} for another key"
        if isinstance(key, Item):
            same = (key.key, key.value) == (call.key, call.value) if opts.dedupe else key.index == call.index
            if same:
                return None
    return f"got {error!r}, but lead {lead.number} did not miss its key"


def explain_leader_error(error, call, lead, opts):
    # The leader's caller gets its exception, each follower a copy of it.
    own = error is lead.error if lead.leader == call.index else copy_of(error, lead.error)
    if error.lead == lead.number and lead.plan.fault == "before" and own:
        return None
    return f"got {error!r}, not the error of its batch's leader (lead {lead.number})"


def explain_leader_after_error(error, call, lead, opts):
    if error.lead == lead.number and lead.leader == call.index and lead.plan.fault == "after":
        return None
    return f"got {error!r}, raised after scatter() by another call's leader"


def explain_runtime_error(error, call, lead, opts):
    if "without calling scatter()" in str(error) and lead.end == "no_scatter":
        return None
    return f"got {error!r}, but its batch's leader (lead {lead.number}) did call scatter()"


EXPLAIN_ERROR = {
    ItemError: explain_item_error,
    MissingResultError: explain_missing,
    LeaderError: explain_leader_error,
    LeaderAfterError: explain_leader_after_error,
    RuntimeError: explain_runtime_error,
}


def second_leader_cancelled_on_310(run, call):
    """Python 3.10 only: whether ``call``'s batch lost a second leader to a cancellation.

    Without ``Task.cancelling()`` only the first leader's ``CancelledError`` hands the batch
    over; a second one is a fault that every member still waiting gets (decision 6).
    """
    if sys.version_info >= (3, 11):
        return False
    aborted = [lead for lead in run.leads if lead.end == "aborted"]
    return any(
        call.index in second.indices
        and any(first.number < second.number and second.leader in first.indices for first in aborted)
        for second in aborted
    )


def explain(run, call, outcome, opts):
    """Return None if ``outcome`` is one that ``call`` may end with, else why not."""
    if outcome == "cancelled":
        allowed = call.cancelled_by_us or second_leader_cancelled_on_310(run, call)
        return None if allowed else "CancelledError, but this task was never cancelled"
    if call.cancelled_by_us:
        return f"its task was cancelled, yet it ended with {outcome!r}"
    kind, value = outcome
    lead = final_lead(run, call, opts)
    if lead is None:
        return f"ended with {outcome!r} but was in no batch a leader received"
    if kind == "returned":
        return explain_returned(value, call, lead, opts)
    explainer = EXPLAIN_ERROR.get(type(value))
    if explainer is None:
        return f"ended with an unexpected {value!r}"
    return explainer(value, call, lead, opts)


def check_calls(run, opts):
    """The problems with how calls ended."""
    problems = []
    for call, outcome in zip(run.calls, run.outcomes, strict=True):
        if call.ended != call.started or call.started > 1:
            problems.append(f"call #{call.index} started {call.started} and ended {call.ended} times")
        if call.started == 0 and outcome != "cancelled":
            problems.append(f"call #{call.index} never started but ended with {outcome!r}")
        why = explain(run, call, outcome, opts)
        if why is not None:
            problems.append(f"call #{call.index} ({call.key}, {call.value}): {why}")
    return problems


def check_lead(run, lead, opts):
    """The problems with the batch one leader received and when it received it."""
    problems = []
    calls = run.calls
    if opts.max_size is not None and len(lead.indices) > opts.max_size:
        problems.append(f"more than max_size={opts.max_size} items")
    if set(lead.keys) != {lead.key}:
        problems.append(f"items of partitions {set(lead.keys)} in partition {lead.key}")
    if opts.dedupe and len(set(lead.values)) != len(lead.values):
        problems.append(f"equal items under dedupe: {lead.values}")
    seqs = [calls[index].join_seq for index in lead.indices]
    if seqs != sorted(set(seqs)):
        problems.append(f"items not in arrival order ({seqs})")
    # decisions.md 9: the items are those of the members still waiting when the leader resumes.
    gone = [i for i in lead.indices if calls[i].cancel_seq is not None and calls[i].cancel_seq < lead.seq]
    if gone:
        problems.append(f"items of calls cancelled before the leader resumed: {gone}")
    if not lead.indices or lead.indices[0] != lead.leader:
        problems.append("the leader's own item is not first")
        return problems
    # The batch opened when its first member joined: at the latest when the first of these did.
    opened = min(calls[index].join_time for index in lead.indices)
    handed_over = any(
        other.key == lead.key and other.end == "aborted" and other.end_time == lead.time for other in run.leads
    )
    late = lead.time - opened - opts.max_window
    if opts.max_concurrency is None and not handed_over and late > EPSILON:
        problems.append(f"flushed {lead.time - opened}s after it opened, window {opts.max_window}")
    # Early flushes show only when no member left: a departed first member opened it earlier.
    full = opts.max_size is not None and len(lead.indices) >= opts.max_size
    some_cancelled = any(call.cancelled_by_us for call in calls)
    if not some_cancelled and not full and late < -EPSILON:
        problems.append(f"flushed {lead.time - opened}s after it opened, before its window {opts.max_window}")
    return [f"lead {lead.number} by #{lead.leader} at {lead.time}, items {lead.indices}: {p}" for p in problems]


def check_run(schedule, run):
    """Assert every invariant on the record of a run."""
    opts = schedule.options
    problems = [*run.problems, *check_calls(run, opts)]
    for lead in run.leads:
        problems += check_lead(run, lead, opts)
    assert not problems, "\n".join([repr(schedule), *problems])


@contextlib.contextmanager
def frozen_heap():
    """Hide every object alive now from the garbage collector, for cheap per-example leak checks.

    ``gc.collect()`` and ``gc.get_objects()`` (hence ``live_engine_objects()``) then only
    look at objects created since; :func:`run_and_check` freezes again after each example.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_and_check(schedule, *, eager):
    """Run ``schedule`` on a fresh virtual-clock loop, check its record and leaks; return each call's outcome kind."""
    # Objects that a failing example's traceback keeps alive are not this example's leaks.
    before = {id(obj) for obj in live_engine_objects()}
    run = run_virtual(lambda: run_schedule(schedule), eager=eager)
    check_run(schedule, run)
    items = [call.item for call in run.calls if call.item is not None]
    stats(schedule, run)
    kinds = [
        outcome if outcome == "cancelled" else outcome[0] if outcome[0] == "returned" else type(outcome[1]).__name__
        for outcome in run.outcomes
    ]
    del run
    gc.collect()
    alive = [ref() for ref in items if ref() is not None]
    assert alive == [], f"items still alive after the run: {alive}"
    leaked = live_engine_objects(ignore=before)
    assert leaked == [], f"engine objects still alive after the run: {leaked}"
    # Everything alive now passed the check: keep it out of the next example's.
    gc.freeze()
    return kinds


def stats(schedule, run):
    """Label the example for ``--hypothesis-show-statistics``."""
    if any(call.cancelled_by_us for call in run.calls):
        event("some call was cancelled")
    if any(lead.end == "aborted" for lead in run.leads):
        event("a leader was cancelled in its bulk call")
    if any(lead.end in {"raised", "no_scatter"} for lead in run.leads):
        event("a leader failed before scatter()")
    if any(len(lead.indices) > 1 for lead in run.leads):
        event("some batch had several items")
    if schedule.options.max_concurrency is not None and len(run.leads) > 1:
        event("max_concurrency with several batches")


# --------------------------------------------------------------------------------------
# The properties
# --------------------------------------------------------------------------------------


@pytest.fixture
def heap():
    """Freeze the objects alive before the test, so that each example's leak check is cheap."""
    with frozen_heap():
        yield


@SHRINK_TIMEOUT
@LOOPS
@settings(max_examples=property_examples(1100 // SPLIT), **PROPERTY_SETTINGS)
@given(schedule=schedules())
def test_every_call_ends_once_with_an_outcome_it_may_have(heap, eager, schedule):
    """Under any schedule of arrivals, cancellations and faults, each call ends once, with an outcome it may have."""
    run_and_check(schedule, eager=eager)


@SHRINK_TIMEOUT
@LOOPS
@settings(max_examples=property_examples(900 // SPLIT), **PROPERTY_SETTINGS)
@given(schedule=schedules(cancellations=False, faults=False, max_calls=16))
def test_without_faults_every_call_gets_its_own_result(heap, eager, schedule):
    """Without cancellations or faults every call gets its own result, in batches that respect size and window."""
    outcomes = run_and_check(schedule, eager=eager)
    # The invariants allow leader errors and cancellations; here there are none to allow.
    assert set(outcomes) <= {"returned", "MissingResultError"}, outcomes


@SHRINK_TIMEOUT
@LOOPS
@settings(max_examples=property_examples(800 // SPLIT), **PROPERTY_SETTINGS)
@given(
    schedule=schedules(
        options=batch_options(max_concurrencies=(1, 2), max_sizes=(None, 2, 3, 100)),
        min_calls=3,
        max_calls=16,
    )
)
def test_max_concurrency_bounds_the_batches_running_at_once(heap, eager, schedule):
    """With max_concurrency=k, no more than k bulk sections of a partition run at once, whatever else happens."""
    run_and_check(schedule, eager=eager)


@SHRINK_TIMEOUT
@settings(max_examples=property_examples(250), **PROPERTY_SETTINGS)
@given(schedule=schedules(cancellations=False, faults=False, min_calls=2))
def test_properties_detect_a_misrouted_result(heap, schedule):
    """The checker is not vacuous: swapping the results of two calls in a run's record is reported."""
    run = run_virtual(lambda: run_schedule(schedule))
    check_run(schedule, run)
    outcomes = run.outcomes
    pairs = (
        (i, j)
        for i, j in itertools.combinations(range(len(outcomes)), 2)
        if outcomes[i][0] == outcomes[j][0] == "returned" and outcomes[i][1] != outcomes[j][1]
    )
    pair = next(pairs, None)
    if pair is not None:
        event("two calls got different results")
        i, j = pair
        outcomes[i], outcomes[j] = outcomes[j], outcomes[i]
        with pytest.raises(AssertionError, match="did not route to it"):
            check_run(schedule, run)
    del run, outcomes
    gc.collect()
    gc.freeze()  # as run_and_check does: keep the next example's garbage collection short

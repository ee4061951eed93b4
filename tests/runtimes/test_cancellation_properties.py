"""A property over random schedules of arrivals, cancellations and leader faults, on every runtime.

Each example starts calls at random virtual times; some are cancelled (their own cancel scope)
at a random time after they start (before ``collect()``, in an open batch, as a follower or a
leader...) or by the leader of their batch, when it resumes or halfway through its bulk call;
some leaders raise before ``scatter()``, some cancel their own call halfway through their
bulk call. The record of what every
call and every leader did is checked against the contract (SPEC.md "Faults and misuse",
"Cancellation and time-outs"):

* nobody hangs, and every call ends once;
* a call that was not cancelled gets its own item's result from the last leader that received
  its item, or that leader's fault (the original for the leader's caller, a copy for the
  others); a cancelled call ends cancelled or with what it would have got;
* only cancelled calls see a cancellation;
* a leader leaves (its bulk section ends without a result) only if its call was cancelled,
  and the bulk section runs again only then: each run after the first is a hand-over, with
  the items of the members still waiting, in order; so a batch runs at most once per departed
  leader, plus one;
* no item of a member cancelled while it waited in ``collect()`` reaches a later leader.

Times are virtual (``virtual_clock``): the examples take no real time.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests.runtimes import kit
from tests.runtimes.callers import Caller
from tests.support import copy_of, partitions_of, property_examples

from concresce import batch, collect, scatter

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_clock]

#: Virtual seconds after which a call that has not ended is taken to hang.
HORIZON = 100.0

CANCELS = st.one_of(
    st.none(),
    st.none(),
    st.tuples(st.just("at"), st.sampled_from((0.0, 0.001, 0.004, 0.01, 0.03))),
    st.tuples(st.sampled_from(("on_flush", "during_bulk")), st.just(0.0)),
)
CALLS = st.lists(
    st.tuples(st.sampled_from((0.0, 0.0, 0.001, 0.005, 0.02)), CANCELS),  # (start step, cancel)
    min_size=1,
    max_size=7,
)
#: What the n-th leader of a run does: scatter, raise before scatter(), or cancel its own
#: call halfway through its bulk call (it leaves); and how long its bulk call takes.
PLANS = st.lists(
    st.tuples(st.sampled_from(("scatter", "scatter", "fault", "leave")), st.sampled_from((0.0, 0.002, 0.01))),
    min_size=1,
    max_size=3,
)


class LeaderError(Exception):
    """What a leader raises before scatter()."""


@dataclass
class Lead:
    number: int
    seq: int  # in the run's sequence of leads and cancellations
    leader: int
    items: tuple[int, ...]
    end: str | None = None  # "aborted", "raised" or "scattered"
    error: BaseException | None = None


@dataclass
class Run:
    calls: list[tuple[float, tuple[str, float] | None]]
    plans: list[tuple[str, float]]
    callers: list[Caller] = field(default_factory=list)
    leads: list[Lead] = field(default_factory=list)
    joined: dict[int, int] = field(default_factory=dict)  # call -> join order
    waiting: set[int] = field(default_factory=set)  # calls suspended in collect()
    cancelled: dict[int, tuple[int, bool]] = field(default_factory=dict)  # call -> (seq, waiting then)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    hung: bool = False

    def cancel(self, index):
        if index not in self.cancelled:
            self.cancelled[index] = (next(self.seq), index in self.waiting)
        self.callers[index].cancel()

    def cancel_flagged(self, phase):
        for index in sorted(self.waiting):
            if self.calls[index][1] is not None and self.calls[index][1][0] == phase:
                self.cancel(index)


async def execute(run, max_window, max_size):
    @batch(max_window=max_window, max_size=max_size)
    async def work(index):
        run.joined[index] = len(run.joined)
        run.waiting.add(index)
        try:
            items = await collect(index)
        finally:
            run.waiting.discard(index)
        plan, duration = run.plans[len(run.leads) % len(run.plans)]
        lead = Lead(len(run.leads), next(run.seq), index, tuple(items))
        run.leads.append(lead)
        try:
            run.cancel_flagged("on_flush")
            await anyio.sleep(duration / 2)
            run.cancel_flagged("during_bulk")
            if plan == "leave":
                run.cancel(index)
            await anyio.sleep(duration / 2)
        except BaseException:
            lead.end = "aborted"
            raise
        if plan == "fault":
            lead.end, lead.error = "raised", LeaderError(lead.number)
            raise lead.error
        lead.end = "scattered"
        return scatter([(lead.number, item) for item in items])

    async def cancel_later(index, delay):
        await anyio.sleep(delay)
        run.cancel(index)

    run.callers = [Caller(index, lambda index=index: work(index)) for index in range(len(run.calls))]
    with anyio.move_on_after(HORIZON) as guard:
        async with anyio.create_task_group() as tg:
            for caller, (step, cancel) in zip(run.callers, run.calls, strict=True):
                if step:
                    await anyio.sleep(step)
                tg.start_soon(caller.run)
                if cancel is not None and cancel[0] == "at":
                    tg.start_soon(cancel_later, caller.name, cancel[1])
    run.hung = guard.cancelled_caught
    assert partitions_of(work) == {}


def fault_on_310(run, lead):
    """asyncio on 3.10: a second leader of one batch cancelled in its bulk call is a fault (decisions.md 6)."""
    if kit.runtime() != "asyncio" or sys.version_info >= (3, 11):
        return False
    return any(other.end == "aborted" and lead.leader in other.items[1:] for other in run.leads[: lead.number])


def problems_of_call(run, index):
    outcome = run.callers[index].outcome
    cancelled = index in run.cancelled
    if outcome == "cancelled":
        return [] if cancelled else ["ended cancelled, but nobody cancelled it"]
    if outcome is None:
        return ["never ended"]
    final = next((lead for lead in reversed(run.leads) if index in lead.items), None)
    if final is None:
        return [] if cancelled else [f"ended with {outcome!r} but no leader received its item"]
    kind, value = outcome
    if final.end == "scattered":
        expected = outcome == ("returned", (final.number, index))
    elif final.end == "raised":
        own = value is final.error if final.leader == index else copy_of(value, final.error)
        expected = kind == "raised" and own
    else:
        cancellation = isinstance(value, anyio.get_cancelled_exc_class())
        expected = kind == "raised" and cancellation and fault_on_310(run, final)
    return [] if expected else [f"ended with {outcome!r}, but lead {final.number} (its last) ended {final.end}"]


def problems_of_lead(run, lead):
    problems = []
    if not lead.items or lead.items[0] != lead.leader:
        problems.append("the leader's own item is not first")
    if [run.joined[item] for item in lead.items] != sorted(run.joined[item] for item in lead.items):
        problems.append("items not in join order")
    if lead.end is None:
        problems.append("its bulk section never ended")
    if lead.end == "aborted" and lead.leader not in run.cancelled:
        problems.append("the leader left its batch, but its call was never cancelled")
    gone = [
        item
        for item in lead.items[1:]
        if item in run.cancelled and run.cancelled[item][1] and run.cancelled[item][0] < lead.seq
    ]
    if gone:
        problems.append(f"items of members cancelled while waiting, before the leader resumed: {gone}")
    earlier = [other for other in run.leads[: lead.number] if set(other.items) & set(lead.items)]
    if earlier:
        # A re-run of a batch: only after its previous leader left, for the members still waiting.
        previous = earlier[-1]
        still_waiting = [item for item in previous.items[1:] if item not in run.cancelled]
        if previous.end != "aborted" or fault_on_310(run, previous):
            problems.append(f"re-ran the items of lead {previous.number}, which ended {previous.end}")
        elif not set(still_waiting) <= set(lead.items) <= set(previous.items[1:]):
            problems.append(f"a hand-over of lead {previous.number} {previous.items} without its waiting members")
    return [f"lead {lead.number} by #{lead.leader} of {lead.items}: {problem}" for problem in problems]


@settings(
    max_examples=property_examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    calls=CALLS,
    plans=PLANS,
    max_window=st.sampled_from((0.0, 0.0, 0.003, 0.01)),
    max_size=st.sampled_from((None, 2, 3, 100)),
)
async def test_random_arrivals_cancellations_and_faults_end_every_call_as_the_contract_says(
    calls, plans, max_window, max_size
):
    """Every call ends once with an outcome the contract allows; leaders leave only when cancelled."""
    run = Run(calls, plans)
    await execute(run, max_window, max_size)

    for lead in run.leads:
        event(f"a lead ended {lead.end}{' (handed over)' if lead.end == 'aborted' and len(lead.items) > 1 else ''}")
    if any(outcome == "cancelled" for outcome in (caller.outcome for caller in run.callers)):
        event("some call ended cancelled")
    problems = ["some call never ended"] if run.hung else []
    for index in range(len(calls)):
        problems += [f"call #{index}: {problem}" for problem in problems_of_call(run, index)]
    for lead in run.leads:
        problems += problems_of_lead(run, lead)
    assert not problems, "\n".join([repr(run.leads), repr([c.outcome for c in run.callers]), *problems])

"""Random schedules of thread-batched calls, with faults and time-outs, against the contract.

Threads are scheduled by the OS, so the expected outcome of each call is derived from what
happened: each bulk section records the items it received and what its leader's plan made
of them, and each call's outcome must follow from the last run that served it. What must hold
for every interleaving: every call ends; a call gets its own result, its own exception result
or its batch's fault, and a ``TimeoutError`` only if it asked for a time-out; no batch is
bigger than ``max_size``; no more than ``max_concurrency`` bulk sections run at once; the
statistics add up; nothing is left behind.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support import property_examples
from tests.threads.kit import Caller

from concresce._calls import CALLS
from concresce.threads import batch, collect, scatter

PLANS = ("ok", "ok", "ok", "error", "dying", "no_scatter", "own_error")


class BoomError(Exception):
    pass


class Dying(BaseException):
    pass


@dataclass(frozen=True)
class Plan:
    item: int
    plan: str  # what this call does if it leads
    timeout: float | None  # collect()'s time-out
    delay: float  # seconds before the call starts


plans = st.builds(
    Plan,
    item=st.just(0),
    plan=st.sampled_from(PLANS),
    timeout=st.sampled_from([None, None, None, 0.0005, 0.005]),
    delay=st.sampled_from([0.0, 0.0, 0.0005, 0.002]),
)


@settings(
    max_examples=property_examples(1000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    calls=st.lists(plans, min_size=1, max_size=12),
    max_size=st.sampled_from([1, 2, 3, None]),
    max_concurrency=st.sampled_from([1, 2, None]),
    window=st.sampled_from([0.0, 0.0, 0.001]),
)
def test_every_call_ends_with_the_outcome_its_batch_gives_it(calls, max_size, max_concurrency, window):
    calls = [Plan(index, call.plan, call.timeout, call.delay) for index, call in enumerate(calls)]
    by_item = {call.item: call for call in calls}
    lock = threading.Lock()
    runs: list[tuple[int, list[int], str]] = []  # (leader's item, items, plan)
    running = 0
    most = 0

    @batch(max_size=max_size, max_concurrency=max_concurrency, max_window=window)
    def work(item: int, timeout: float | None) -> int:
        nonlocal running, most
        items = collect(item, timeout=timeout)
        plan = by_item[item].plan
        with lock:
            runs.append((item, items, plan))
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.0005)
        finally:
            with lock:
                running -= 1
        if plan == "error":
            raise BoomError(item)
        if plan == "dying":
            raise Dying(item)
        if plan == "no_scatter":
            return -1
        if plan == "own_error":
            return scatter([ValueError(i) if i == item else i * 10 for i in items])
        return scatter([i * 10 for i in items])

    def call(plan: Plan) -> int:
        time.sleep(plan.delay)
        return work(plan.item, plan.timeout)

    callers = [Caller(call, plan) for plan in calls]
    outcomes = {plan.item: caller.outcome() for plan, caller in zip(calls, callers, strict=True)}
    assert max_concurrency is None or most <= max_concurrency
    _check_outcomes(calls, outcomes, runs, max_size)
    _check_stats(work, outcomes, runs, calls)
    assert work.stats.__self__.batcher.partitions == {}
    idents = {caller.thread.ident for caller in callers}
    assert not idents & set(CALLS)


#: What a call whose batch's (last) leader had a plan gets: as the leader, and as a follower.
AS_LEADER = {
    "ok": "ok",
    "error": "BoomError",
    "dying": "Dying",
    "no_scatter": "RuntimeError",
    "own_error": "ValueError",
}
AS_FOLLOWER = {"ok": "ok", "error": "BoomError", "no_scatter": "RuntimeError", "own_error": "ok"}


def _check_outcomes(calls, outcomes, runs, max_size):
    # The last run that served each item, and the plan of its leader.
    served: dict[int, tuple[int, str]] = {}
    for leader, items, plan in runs:
        for item in items:
            served[item] = (leader, plan)
        assert max_size is None or len(items) <= max_size
        assert leader in items
        assert len(set(items)) == len(items)
    for plan in calls:
        kind, value = outcomes[plan.item]
        if kind == "TimeoutError":
            assert plan.timeout is not None
            continue
        leader, leader_plan = served[plan.item]
        # A follower whose run's leader died was handed over to a later run, which served it
        # (its last run): so the leader of its last run did not die.
        expected = AS_LEADER[leader_plan] if leader == plan.item else AS_FOLLOWER[leader_plan]
        assert kind == expected, (plan, outcomes[plan.item], runs)
        if kind == "ok":
            assert value == plan.item * 10


def _check_stats(work, outcomes, runs, calls):
    stats = work.stats()
    assert stats.calls == len(calls)
    assert stats.cancellations == sum(kind == "TimeoutError" for kind, _ in outcomes.values())
    assert stats.handovers == sum(plan == "dying" for _, _, plan in runs)
    assert stats.leader_failures == sum(plan in {"error", "no_scatter"} for _, _, plan in runs)
    # A batch counts the items of its last leader's run (a run handed over counts only then).
    finished = sum(len(items) for _, items, plan in runs if plan != "dying")
    assert finished <= stats.items <= sum(len(items) for _, items, _ in runs)
    assert (stats.open_now, stats.in_flight_now) == (0, 0)

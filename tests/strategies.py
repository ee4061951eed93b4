"""Hypothesis strategies for concresce: schedules of concurrent calls on the virtual clock.

A :class:`Schedule` is everything one run needs: the ``@batch`` options, the calls (when each
one starts, its partition key, its item, whether and when it is cancelled) and the plans its
leaders follow (how they route results, which items fail, whether the leader itself fails).
``tests/test_properties.py`` runs a schedule and checks the invariants of SPEC.md on what
happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hypothesis import strategies as st

__all__ = [
    "CANCEL_PHASES",
    "CallPlan",
    "Cancel",
    "LeaderPlan",
    "Options",
    "Schedule",
    "batch_options",
    "leader_plans",
    "schedules",
]

#: Virtual seconds between two consecutive arrivals: mostly none (same loop turn).
ARRIVAL_STEPS = (0.0, 0.0, 0.0, 0.001, 0.01, 0.05)
#: Item values: few, so that equal items (dedupe, keyed routing) are common.
VALUES = range(5)
#: Partition keys (group_by's result).
KEYS = range(3)

CancelPhase = Literal["at", "before_collect", "on_flush", "during_bulk", "as_leader", "after_scatter"]

#: When a call may be cancelled:
#:
#: * ``at``: by the scheduler, ``delay`` virtual seconds after the call started (wherever
#:   it is then: before collect(), in an open batch, a follower after the flush...);
#: * ``before_collect``: while the call waits (``delay``) before it awaits collect();
#: * ``on_flush``: by the leader of a batch of its partition, as soon as that leader has
#:   resumed from collect() (so, as a follower of that batch, after the snapshot of its items;
#:   or as a member of the next open batch);
#: * ``during_bulk``: likewise, halfway through that leader's bulk call;
#: * ``as_leader``: by itself, if it becomes a leader, during its bulk call;
#: * ``after_scatter``: by the leader of a batch of its partition right after scatter(),
#:   before the followers it routed have resumed.
CANCEL_PHASES: tuple[CancelPhase, ...] = (
    "at",
    "before_collect",
    "on_flush",
    "during_bulk",
    "as_leader",
    "after_scatter",
)

Routing = Literal["list", "dict", "dict_default", "dict_key"]
Fault = Literal["before", "after", "no_scatter"] | None


@dataclass(frozen=True)
class Options:
    """The ``@batch`` options of one run (``group_by`` on or off)."""

    max_window: float
    max_size: int | None
    dedupe: bool
    max_concurrency: int | None
    group_by: bool


@dataclass(frozen=True)
class Cancel:
    """When one call is cancelled (see :data:`CANCEL_PHASES`)."""

    phase: CancelPhase
    delay: float = 0.0  # for "at" and "before_collect": virtual seconds after the call started


@dataclass(frozen=True)
class CallPlan:
    """One call: when it starts, its partition key, its item value and its cancellation."""

    start: float  # absolute virtual time
    key: int
    value: int
    wait: float  # virtual seconds the body waits before collect()
    cancel: Cancel | None


@dataclass(frozen=True)
class LeaderPlan:
    """What one leader does with its batch.

    ``routing``: ``list`` (positional), ``dict`` (keyed by item), ``dict_default`` (keyed,
    with a default for missing keys), ``dict_key`` (keyed by ``(partition, value)`` through
    scatter's ``key=``). ``failing``: item values whose result is an exception instance.
    ``missing``: item values left out of keyed results. ``fault``: the leader raises before
    scatter(), raises after scatter(), or returns without calling scatter().
    ``duration``: virtual seconds the bulk call takes.
    """

    routing: Routing
    failing: frozenset[int]
    missing: frozenset[int]
    fault: Fault
    duration: float


@dataclass(frozen=True)
class Schedule:
    """One run: options, calls in start order, and the leaders' plans.

    The n-th leader to resume from collect() in the run (counting every leader, the ones
    a batch is handed over to included) follows ``plans[n % len(plans)]``.
    """

    options: Options
    calls: tuple[CallPlan, ...]
    plans: tuple[LeaderPlan, ...]


def batch_options(
    *,
    max_windows: tuple[float, ...] = (0.0, 0.0, 0.005, 0.02),
    max_sizes: tuple[int | None, ...] = (None, 1, 2, 3, 5, 100),
    max_concurrencies: tuple[int | None, ...] = (None, None, 1, 2),
) -> st.SearchStrategy[Options]:
    """``@batch`` options drawn from small sets of values."""
    return st.builds(
        Options,
        max_window=st.sampled_from(max_windows),
        max_size=st.sampled_from(max_sizes),
        dedupe=st.booleans(),
        max_concurrency=st.sampled_from(max_concurrencies),
        group_by=st.booleans(),
    )


_CANCELS = st.one_of(
    st.builds(Cancel, phase=st.just("at"), delay=st.sampled_from((0.0, 0.001, 0.005, 0.01, 0.03, 0.06))),
    st.builds(Cancel, phase=st.just("before_collect"), delay=st.sampled_from((0.001, 0.005))),
    st.sampled_from(("on_flush", "during_bulk", "as_leader", "after_scatter")).map(Cancel),
)
#: About one call in four is cancelled (and shrinking goes towards none).
_CANCELLED = st.sampled_from((False, False, False, True))
_STEPS = st.sampled_from(ARRIVAL_STEPS)
_WAITS = st.sampled_from((0.0, 0.0, 0.0, 0.0, 0.002))
_KEYS = st.sampled_from(KEYS)
_VALUES = st.sampled_from(VALUES)
_VALUE_SETS = st.frozensets(_VALUES, max_size=2)
_ROUTINGS = st.sampled_from(("list", "dict", "dict_default", "dict_key"))
_FAULTS = st.sampled_from((None, None, None, None, None, None, None, "before", "after", "no_scatter"))
_DURATIONS = st.sampled_from((0.0, 0.001, 0.02))


@st.composite
def _calls(
    draw: st.DrawFn,
    *,
    min_calls: int,
    max_calls: int,
    cancellations: bool,
) -> tuple[CallPlan, ...]:
    count = draw(st.integers(min_calls, max_calls))
    calls: list[CallPlan] = []
    start = 0.0
    for _ in range(count):
        start = round(start + draw(_STEPS), 6)
        cancel = draw(_CANCELS) if cancellations and draw(_CANCELLED) else None
        wait = 2 * cancel.delay if cancel is not None and cancel.phase == "before_collect" else draw(_WAITS)
        calls.append(CallPlan(start=start, key=draw(_KEYS), value=draw(_VALUES), wait=wait, cancel=cancel))
    return tuple(calls)


@st.composite
def leader_plans(draw: st.DrawFn, *, faults: bool = True) -> LeaderPlan:
    """What one leader does: routing mode, failing and missing items, a fault, a duration."""
    routing = draw(_ROUTINGS)
    failing = draw(_VALUE_SETS) if faults else frozenset()
    missing = draw(_VALUE_SETS) if routing != "list" else frozenset()
    fault: Fault = draw(_FAULTS) if faults else None
    return LeaderPlan(
        routing=routing,
        failing=failing,
        missing=missing,
        fault=fault,
        duration=draw(_DURATIONS),
    )


@st.composite
def schedules(
    draw: st.DrawFn,
    *,
    options: st.SearchStrategy[Options] | None = None,
    min_calls: int = 1,
    max_calls: int = 12,
    cancellations: bool = True,
    faults: bool = True,
) -> Schedule:
    """A run: options, calls and leader plans.

    Args:
        options: The ``@batch`` options to draw (default: every option varies).
        min_calls: Fewest calls.
        max_calls: Most calls.
        cancellations: Whether calls may be cancelled.
        faults: Whether leaders may fail (before or after scatter(), or without it) and
            results may be exception instances. Keyed results may miss keys either way.
    """
    opts = draw(batch_options() if options is None else options)
    calls = draw(_calls(min_calls=min_calls, max_calls=max_calls, cancellations=cancellations))
    plans = draw(st.lists(leader_plans(faults=faults), min_size=1, max_size=4))
    return Schedule(options=opts, calls=calls, plans=tuple(plans))

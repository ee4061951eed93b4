"""What one torture schedule is, and how a seeded generator draws one.

A :class:`Schedule` is plain, frozen data with a compact ``repr`` that is valid Python: a
failing schedule printed by the suite can be pasted into a test and replayed with
``tests.torture.harness.run_one(schedule)``.

Times are in *schedule seconds*: on the virtual clock they are seconds; on a real clock
(uvloop) the harness multiplies them by a small scale so that a schedule stays short.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import random

__all__ = [
    "HAS_CANCELLING",
    "TRIO_FAULTS",
    "CallPlan",
    "Cancel",
    "Features",
    "LeaderPlan",
    "Options",
    "Schedule",
    "draw_options",
    "draw_schedule",
]

#: ``asyncio.timeout``, ``asyncio.TaskGroup`` and ``Task.cancelling()`` (Python 3.11+).
HAS_CANCELLING: Final = sys.version_info >= (3, 11)


class _Compact:
    """A dataclass ``repr`` that leaves out the fields still at their default value."""

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class Options(_Compact):
    """The ``@batch`` options of one schedule (``configure()`` sets the run-time ones)."""

    max_window: float = 0.0
    max_size: int | None = 100
    max_concurrency: int | None = None
    dedupe: bool = False
    group_by: bool = False
    method: bool = False
    max_weight: float | None = None
    max_pending: int | None = None
    observer: bool = False  # an observer that sometimes raises; group keys whose repr() may raise


@dataclass(frozen=True, repr=False)
class Cancel(_Compact):
    """When the scheduler cancels a call's task.

    ``at``: ``delay`` seconds after the call started, wherever it is then. ``on_flush``,
    ``during_bulk``, ``after_scatter``: when a leader of the call's partition resumes from
    ``collect()``, halfway through its bulk section, or right after its ``scatter()``, if the
    call is then suspended in ``collect()``.
    """

    phase: str = "at"
    delay: float = 0.0


@dataclass(frozen=True, repr=False)
class CallPlan(_Compact):
    """One call of the batched function.

    Attributes:
        start: When the call starts, in schedule seconds from the start of the schedule.
        value: Its item's value (equal values are duplicates under ``dedupe``).
        group: Its ``group_by`` key (with ``group_by``).
        instance: Which of the two instances it calls the method on (with ``method``).
        weight: Its item's weight (with ``max_weight``).
        wait: Seconds the body sleeps before ``collect()``.
        structure: What surrounds ``collect()`` in the body: ``None``, ``"finally_await"``
            (a ``finally`` that awaits), ``"finally_sleep"`` (one that sleeps), ``"acm"`` (an
            ``async with`` whose ``__aexit__`` awaits), ``"cancel_in_finally"`` (a ``finally``
            that cancels its own task, then awaits), ``"taskgroup"`` (an ``asyncio.TaskGroup``).
        wrap: What surrounds the call: ``None``, ``"wait_for"``, ``"timeout"`` (an
            ``asyncio.timeout``) or ``"taskgroup"`` (a ``TaskGroup`` whose other task fails).
        wrap_delay: The time-out of ``wrap``, or when the failing sibling task raises.
        body_timeout: An ``asyncio.timeout`` opened in the body around ``collect()`` and the
            bulk section (so, in a leader, around the shared work).
        cancel: When the scheduler cancels the call (``None``: never).
        style: How the call passes its arguments: positionally (0, 1) or by keyword (2, 3);
            for a method, 1 and 2 call it on the class with the instance as ``self`` (2: by
            keyword), 3 passes the argument by keyword.
        group_fails: ``group_by`` raises for this call.
    """

    start: float = 0.0
    value: int = 0
    group: int = 0
    instance: int = 0
    weight: float = 0.0
    wait: float = 0.0
    structure: str | None = None
    wrap: str | None = None
    wrap_delay: float = 0.0
    body_timeout: float | None = None
    cancel: Cancel | None = None
    style: int = 0
    group_fails: bool = False


@dataclass(frozen=True, repr=False)
class LeaderPlan(_Compact):
    """What one leader does with its batch.

    Attributes:
        steps: The delays of the awaits of its bulk section (``sleep``), in order.
        fault: ``None``, or a fault of the bulk section: before ``scatter()``, at the await
            ``fault_step``: ``"raise"`` (an exception), ``"spurious"`` (``raise
            CancelledError()`` without any cancellation request), ``"cancelled_future"``
            (awaits a future someone else cancels), ``"self_cancel"`` (cancels its own task:
            a real departure); ``"no_scatter"`` (returns without ``scatter()``);
            ``"key_raises"`` (``scatter(key=...)`` whose key function raises);
            ``"wrong_length"`` (one result too many); ``"gen_raises"`` (a results generator
            that raises); ``"after"`` (raises after ``scatter()``). On trio (``TRIO_FAULTS``),
            ``"spurious"`` raises a ``trio.Cancelled`` outside any cancelled scope,
            ``"cancelled_future"`` awaits in a cancel scope of its own that another task
            cancels, then raises ``trio.ClosedResourceError`` (a driver closed under it),
            and two more: ``"cancel_converted"`` (cancels its own call's scope and turns the
            ``Cancelled`` into an error of its own: still a departure) and
            ``"nursery_fails"`` (a task the bulk section starts in a nursery fails: the
            nursery cancels the bulk code and raises an ``ExceptionGroup``, a fault).
        fault_step: Before which await (0..len(steps)) the bulk fault happens.
        routing: ``"list"``, ``"tuple"``, ``"gen"`` (positional), ``"dict"``,
            ``"dict_default"``, ``"dict_key"`` (keyed).
        failing: Item values whose result is an ``Exception`` instance.
        missing: Item values left out of keyed results.
        after: Seconds the leader sleeps after ``scatter()`` before returning.
    """

    steps: tuple[float, ...] = ()
    fault: str | None = None
    fault_step: int = 0
    routing: str = "list"
    failing: frozenset[int] = frozenset()
    missing: frozenset[int] = frozenset()
    after: float | None = None


@dataclass(frozen=True, repr=False)
class Schedule(_Compact):
    """One run: options, calls in start order, the leaders' plans, ``drain()`` times.

    The n-th leader to resume from ``collect()`` in the run follows ``plans[n % len(plans)]``.
    ``stop``: the loop is stopped and closed by hand at that time, with calls still pending
    (on trio: every call still running is cancelled at that time, as at a shutdown).
    """

    options: Options = Options()
    calls: tuple[CallPlan, ...] = ()
    plans: tuple[LeaderPlan, ...] = (LeaderPlan(),)
    drains: tuple[float, ...] = ()
    stop: float | None = None


@dataclass(frozen=True)
class Features:
    """What a driver allows in its schedules."""

    timeouts: bool = HAS_CANCELLING  # asyncio.timeout, TaskGroup (3.11+)
    awaiting_cleanup: bool = True  # finally blocks and __aexit__ that await (not when coroutines are closed by GC)
    wrappers: tuple[str | None, ...] = (None, "wait_for", "timeout", "taskgroup")
    drains: bool = True
    stop: bool = False
    stop_share: float = 1.0  # with stop: the share of schedules that have a stop time
    faults: tuple[str, ...] = ()  # the leaders' faults (FAULTS when empty)


WINDOWS: Final = (0.0, 0.0, 0.0, 0.001, 0.005, 0.02)
SIZES: Final = (None, 1, 2, 3, 5, 8, 100, 100)
CONCURRENCIES: Final = (None, None, None, 1, 2, 3)
ARRIVALS: Final = (0.0, 0.0, 0.0, 0.0, 0.0, 0.001, 0.003, 0.01)
STEP_DELAYS: Final = (0.0, 0.001, 0.005, 0.02)
FAULTS: Final = (
    "raise",
    "spurious",
    "cancelled_future",
    "self_cancel",
    "no_scatter",
    "key_raises",
    "wrong_length",
    "gen_raises",
    "after",
)
#: The faults of the trio mode: the same, and two that only a cancel scope can make.
TRIO_FAULTS: Final = (*FAULTS, "cancel_converted", "nursery_fails")
ROUTINGS: Final = ("list", "list", "tuple", "gen", "dict", "dict_default", "dict_key")
STRUCTURES: Final = ("finally_await", "finally_sleep", "acm", "cancel_in_finally", "taskgroup")
#: (fewest, most) calls of a schedule, and how often each size is drawn.
SIZES_OF_SCHEDULES: Final = (((1, 6), 3), ((5, 20), 4), ((15, 60), 3), ((60, 200), 1))


def _maybe(rng: random.Random, p: float) -> bool:
    return rng.random() < p


def draw_options(rng: random.Random) -> Options:
    """Draw ``@batch`` options: every option varies, with 1 and None among the sizes."""
    weighted = _maybe(rng, 0.2)
    return Options(
        max_window=rng.choice(WINDOWS),
        max_size=rng.choice(SIZES),
        max_concurrency=rng.choice(CONCURRENCIES),
        dedupe=_maybe(rng, 0.3),
        group_by=_maybe(rng, 0.3),
        method=_maybe(rng, 0.3),
        max_weight=rng.choice((1.0, 2.5)) if weighted else None,
        max_pending=rng.choice((1, 2, 4, 8)) if _maybe(rng, 0.15) else None,
        observer=_maybe(rng, 0.15),
    )


def _draw_call(rng: random.Random, start: float, values: int, options: Options, features: Features) -> CallPlan:
    cancel = None
    if _maybe(rng, 0.15):
        phase = rng.choice(("at", "at", "on_flush", "during_bulk", "after_scatter"))
        cancel = Cancel(phase, rng.choice((0.0, 0.001, 0.004, 0.01, 0.03)) if phase == "at" else 0.0)
    wrap = rng.choice(features.wrappers) if _maybe(rng, 0.15) else None
    if wrap in {"timeout", "taskgroup"} and not features.timeouts:
        wrap = "wait_for"
    structures = list(STRUCTURES) if features.awaiting_cleanup else []
    if not features.timeouts:
        structures = [s for s in structures if s != "taskgroup"]
    structure = rng.choice(structures) if structures and _maybe(rng, 0.25) else None
    return CallPlan(
        start=start,
        value=rng.randrange(values),
        group=rng.randrange(3) if options.group_by else 0,
        instance=rng.randrange(2) if options.method else 0,
        weight=rng.choice((0.0, 0.1, 0.5, 1.0, 1.5)) if options.max_weight is not None else 0.0,
        wait=0.002 if _maybe(rng, 0.1) else 0.0,
        structure=structure,
        wrap=wrap,
        wrap_delay=rng.choice((0.0, 0.001, 0.005, 0.02, 0.05)) if wrap is not None else 0.0,
        body_timeout=rng.choice((0.001, 0.004, 0.01, 0.03)) if features.timeouts and _maybe(rng, 0.08) else None,
        cancel=cancel,
        style=rng.randrange(4),
        group_fails=options.group_by and _maybe(rng, 0.02),
    )


def _draw_plan(rng: random.Random, values: int, faults: tuple[str, ...] = FAULTS) -> LeaderPlan:
    steps = tuple(rng.choice(STEP_DELAYS) for _ in range(rng.choice((0, 1, 1, 2, 3))))
    fault = rng.choice(faults) if _maybe(rng, 0.35) else None
    routing = rng.choice(ROUTINGS)
    if fault == "gen_raises":
        routing = "gen"
    elif fault == "key_raises":
        routing = "dict_key"
    elif fault == "wrong_length" and routing not in {"list", "tuple", "gen"}:
        routing = "list"
    keyed = routing.startswith("dict")

    def some_values() -> frozenset[int]:
        return frozenset(rng.randrange(values) for _ in range(rng.choice((0, 0, 1, 2))))

    return LeaderPlan(
        steps=steps,
        fault=fault,
        fault_step=rng.randrange(len(steps) + 1),
        routing=routing,
        failing=some_values(),
        missing=some_values() if keyed else frozenset(),
        after=rng.choice((0.0, 0.001)) if _maybe(rng, 0.2) else None,
    )


def draw_schedule(rng: random.Random, features: Features, options: Options | None = None) -> Schedule:
    """Draw a schedule: its options (unless given), calls, leader plans, drains and stop time."""
    if options is None:
        options = draw_options(rng)
    (low, high) = rng.choices([size for size, _ in SIZES_OF_SCHEDULES], [w for _, w in SIZES_OF_SCHEDULES])[0]
    count = rng.randint(low, high)
    values = rng.choice((2, 5, 20))
    calls: list[CallPlan] = []
    start = 0.0
    for _ in range(count):
        start = round(start + rng.choice(ARRIVALS), 6)
        calls.append(_draw_call(rng, start, values, options, features))
    plans = tuple(_draw_plan(rng, values, features.faults or FAULTS) for _ in range(rng.randint(1, 4)))
    drains: tuple[float, ...] = ()
    if features.drains and _maybe(rng, 0.1):
        drains = tuple(sorted(round(rng.uniform(0.0, start + 0.01), 4) for _ in range(rng.randint(1, 2))))
    stopped = features.stop and (features.stop_share >= 1.0 or _maybe(rng, features.stop_share))
    stop = round(rng.uniform(0.0, start + 0.03), 4) if stopped else None
    return Schedule(options=options, calls=tuple(calls), plans=plans, drains=drains, stop=stop)


def simpler(value: Any) -> list[Any]:
    """Simpler variants of one part of a schedule, for the minimizer (most drastic first)."""
    if isinstance(value, CallPlan):
        defaults = CallPlan(start=value.start, value=value.value, group=value.group, instance=value.instance)
        return [
            dataclasses.replace(value, **{f.name: getattr(defaults, f.name)})
            for f in dataclasses.fields(value)
            if getattr(value, f.name) != getattr(defaults, f.name)
        ]
    if isinstance(value, LeaderPlan):
        variants = [
            dataclasses.replace(value, **{f.name: f.default})
            for f in dataclasses.fields(value)
            if f.default is not dataclasses.MISSING and getattr(value, f.name) != f.default and f.name != "fault_step"
        ]
        return [v for v in variants if v.fault_step <= len(v.steps)]
    if isinstance(value, Options):
        default = Options()
        return [
            dataclasses.replace(value, **{f.name: getattr(default, f.name)})
            for f in dataclasses.fields(value)
            if getattr(value, f.name) != getattr(default, f.name)
        ]
    return []

"""The schedules of the thread API's torture mode (``sync``): ``concresce.threads`` from a pool of threads.

A :class:`SyncSchedule` is a :class:`~tests.torture.schedules.Schedule` (drawn by the same
generator: options, calls in bursts, leader plans) with what only threads have: the size of
the pool of threads that makes the calls, and controls (``drain()``, ``flush()``,
``configure()``) called from threads of their own at set times. Some fields of a
``CallPlan`` mean something else here (``harness_threads_api.py`` plays them):

* ``body_timeout``: the call's ``collect(timeout=...)``, in schedule seconds;
* ``cancel``: an interruption (a private ``BaseException``, like ``KeyboardInterrupt``) raised
  in the call's thread while it waits in ``collect()``: ``Cancel("at", delay)`` if it still
  waits ``delay`` seconds after it joined, ``Cancel("on_wake")`` as soon as it is woken
  (chosen to lead, routed its result, or handed the window), before it looks at why;
* ``structure``, ``wrap``, ``wrap_delay``: unused (they are asyncio's and trio's).

The leaders' faults are ``SYNC_FAULTS``: those of asyncio that a thread can make, and
``"departure"`` and ``"exit"``: the leader dies of a ``BaseException`` that is not an
``Exception`` (a private one, ``SystemExit``) before ``scatter()``, so the batch is handed over;
``"drain_inside"``: the bulk section calls the function's ``drain()``, which refuses with a
``RuntimeError`` (a fault); ``"nested"``: the bulk section calls the function itself, in the
leader's thread (a call of its own, served or refused as a deadlock; not a fault), and
``"nested_thread"`` the same from a thread it starts with its context and joins;
``"controls_inside"``: the bulk section calls ``flush()``, ``stats()`` and ``configure()``
(not a fault).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from tests.torture.schedules import (
    CallPlan,
    Cancel,
    Features,
    Schedule,
    _Compact,
    draw_options,
    draw_schedule,
)

if TYPE_CHECKING:
    import random

__all__ = ["SYNC_FAULTS", "Control", "SyncSchedule", "draw_sync_schedule"]

#: The leaders' faults on threads (no cancellation: a thread dies of a BaseException instead).
SYNC_FAULTS: Final = (
    "raise",
    "departure",
    "exit",
    "drain_inside",
    "controls_inside",
    "nested",
    "nested_thread",
    "no_scatter",
    "key_raises",
    "wrong_length",
    "gen_raises",
    "after",
)
#: ``max_concurrency``: the thread API's default is 4 (the size of a connection pool).
SYNC_CONCURRENCIES: Final = (None, 1, 2, 3, 4, 4)
#: How many threads make the calls of a schedule (each makes its calls one after the other).
POOLS: Final = (1, 2, 4, 8, 16, 32, 64)
TIMEOUTS: Final = (0.0, 0.001, 0.005, 0.02, 0.1, 1.0)
#: What ``configure()`` sets at run time, and the values it may set.
CONFIGURABLE: Final = {
    "max_size": (None, 1, 2, 5, 100),
    "max_concurrency": (None, 1, 2, 4),
    "max_window": (0.0, 0.001, 0.005),
}


@dataclass(frozen=True, repr=False)
class Control(_Compact):
    """A control called from a thread of its own ``at`` schedule seconds: ``drain``, ``flush``, ``configure``.

    ``configure`` sets ``option`` to ``value``. A ``drain`` with the ``option`` ``"timeout"``
    has a time-out of ``value`` seconds; with ``"interrupt"``, its thread is interrupted
    ``value`` seconds after it called it, if it still waits.
    """

    at: float = 0.0
    action: str = "drain"
    option: str = ""
    value: float | None = None


@dataclass(frozen=True, repr=False)
class SyncSchedule(Schedule):
    """A schedule of the thread API: ``threads`` threads make the calls; ``controls`` run meanwhile."""

    threads: int = 8
    controls: tuple[Control, ...] = ()


def _maybe(rng: random.Random, p: float) -> bool:
    return rng.random() < p


def _sync_call(rng: random.Random, plan: CallPlan) -> CallPlan:
    interrupt = None
    if _maybe(rng, 0.08):
        interrupt = Cancel("on_wake") if _maybe(rng, 0.4) else Cancel("at", rng.choice((0.0, 0.002, 0.01, 0.05)))
    return dataclasses.replace(
        plan,
        structure=None,
        wrap=None,
        wrap_delay=0.0,
        body_timeout=rng.choice(TIMEOUTS) if _maybe(rng, 0.2) else None,
        cancel=interrupt,
    )


def _control(rng: random.Random, end: float) -> Control:
    at = round(rng.uniform(0.0, end + 0.01), 4)
    action = rng.choice(("drain", "drain", "flush", "configure", "configure"))
    if action == "drain" and _maybe(rng, 0.4):
        return Control(at, action, rng.choice(("timeout", "interrupt")), rng.choice((0.0, 0.002, 0.01)))
    if action != "configure":
        return Control(at, action)
    option = rng.choice(sorted(CONFIGURABLE))
    return Control(at, action, option, rng.choice(CONFIGURABLE[option]))


def draw_sync_schedule(rng: random.Random) -> SyncSchedule:
    """Draw a schedule of the thread API: the shared generator's, adapted to threads."""
    options = dataclasses.replace(draw_options(rng), max_concurrency=rng.choice(SYNC_CONCURRENCIES))
    drawn = draw_schedule(
        rng,
        Features(timeouts=False, awaiting_cleanup=False, wrappers=(None,), drains=False, faults=SYNC_FAULTS),
        options,
    )
    calls = tuple(_sync_call(rng, plan) for plan in drawn.calls)
    end = calls[-1].start if calls else 0.0
    controls = tuple(sorted((_control(rng, end) for _ in range(rng.choice((0, 0, 1, 2, 4)))), key=lambda c: c.at))
    return SyncSchedule(
        options=options,
        calls=calls,
        plans=drawn.plans,
        threads=min(rng.choice(POOLS), len(calls)),
        controls=controls,
    )

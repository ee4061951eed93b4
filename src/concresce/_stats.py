"""What a decorated function reports: statistics, batch records and observers.

The engine pays for all of this once per batch, never per call: a batch's calls, items,
wait and bulk duration are known when it is dispatched and when it ends. The gauges (batches
open and in flight now) are read from the live partitions when a snapshot is taken.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, cast, final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "FLUSH_REASONS",
    "BatchRecord",
    "BatchStats",
    "Counters",
    "Histogram",
    "Summary",
    "Tuning",
    "add_observer",
    "remove_observer",
]

logger: Final = logging.getLogger("concresce")

#: Why a batch stopped collecting: it was full (``size``), its window expired (``window``),
#: the loop turned (``tick``, ``max_window=0``), its items reached ``max_weight``
#: (``weight``), or ``flush()``/``drain()`` closed it (``flush``).
FlushReason = Literal["size", "window", "tick", "weight", "flush"]
FLUSH_REASONS: Final[tuple[FlushReason, ...]] = ("size", "window", "tick", "weight", "flush")

#: How a dispatched batch ended: ``scatter()`` routed it (``ok``); the leader raised, returned
#: without ``scatter()`` or ``scatter()`` could not route (``error``); or its leader left
#: (cancelled) and no member was left waiting to lead it (``handover``).
Outcome = Literal["ok", "error", "handover"]

#: Upper bounds of the histogram buckets; the last bucket is unbounded.
SIZE_BOUNDS: Final = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, math.inf)
SECONDS_BOUNDS: Final = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, math.inf)


@final
@dataclass(frozen=True, slots=True)
class Summary:
    """Count, mean, maximum and a fixed-bucket histogram of one measure.

    Attributes:
        count: How many values were recorded.
        total: Their sum.
        max: The largest value (0 when none).
        buckets: ``(upper_bound, count)`` pairs, not cumulative: the count of values ``v`` with
            ``previous_bound < v <= upper_bound``; the last bound is ``math.inf``.

    Added in version 0.3.
    """

    count: int
    total: float
    max: float
    buckets: tuple[tuple[float, int], ...]

    @property
    def mean(self) -> float:
        """The mean value (0 when none was recorded)."""
        return self.total / self.count if self.count else 0.0


@final
@dataclass(frozen=True, slots=True)
class Tuning:
    """What ``max_window="auto"`` chooses, and the estimates it chooses from.

    A batch due while ``in_flight_limit`` batches of its partition are in flight is held
    (keeps collecting) until one of them ends, for at most ``hold_limit`` seconds, if at
    least one more call is expected meanwhile (``arrival_rate * hold_limit >= 1``);
    otherwise it is dispatched at once, as with ``max_window=0``.

    Attributes:
        in_flight_limit: Batches of one partition the tuner lets run at once before it holds
            the next (hill-climbed on ``power``; within 1 and ``max_concurrency``).
        hold_limit: The longest hold, in seconds: the estimated duration of a batch of
            ``mean_size`` items, capped by ``Auto(ceiling=...)`` (0 before any estimate).
        round_trip: Estimated seconds of a batch's fixed cost (the cost model's intercept).
        per_item: Estimated seconds each item adds to a batch (the cost model's slope).
        arrival_rate: Items per second, from the recent batch ends.
        mean_size: The recent mean batch size.
        power: The last epoch's throughput (items/s) divided by its mean item latency (s),
            the score the in-flight limit climbs (0 before the first epoch).
        batches: Batches the estimates were made from.

    Added in version 0.3.
    """

    in_flight_limit: int
    hold_limit: float
    round_trip: float
    per_item: float
    arrival_rate: float
    mean_size: float
    power: float
    batches: int


@final
@dataclass(frozen=True, slots=True)
class BatchStats:
    """A snapshot of one decorated function's batching, returned by ``fn.stats()``.

    Counters run from the decoration (or the last ``stats(reset=True)``) and cover every
    event loop the function ran on; the two gauges are read when the snapshot is taken.

    Attributes:
        calls: Calls that joined a batch (awaited ``collect()``).
        batches: Batches whose leader resumed with their items (a batch whose members all
            left before that never ran, and does not count).
        items: Items passed to leaders (after cancellations and ``dedupe``).
        flushes: Dispatched batches by the reason they stopped collecting: ``size``,
            ``window``, ``tick``, ``weight``, ``flush`` (every reason is a key).
        leader_failures: Batches that ended in an error: the leader raised before
            ``scatter()``, returned without it, or ``scatter()`` could not route.
        handovers: Leaders whose task was cancelled while they ran the bulk section, before
            ``scatter()`` (the next member still waiting, if any, runs it again).
        cancellations: Members cancelled while waiting in ``collect()``, a member chosen to
            lead but cancelled before it resumed included.
        shed: Calls refused with ``OverloadedError`` (``max_pending``).
        open_now: Batches collecting or waiting for a concurrency slot now.
        in_flight_now: Batches dispatched and not yet routed now.
        batch_size: Items per dispatched batch, counted when the batch ends.
        wait_time: Seconds from a batch's first ``collect()`` to its dispatch.
        bulk_duration: Seconds from a batch's dispatch to its end (``scatter()`` or failure).
        tuning: With ``max_window="auto"``, what the tuner chooses now and its estimates
            (shared by the function's partitions); ``None`` otherwise.

    Added in version 0.3.
    """

    calls: int
    batches: int
    items: int
    flushes: Mapping[str, int]
    leader_failures: int
    handovers: int
    cancellations: int
    shed: int
    open_now: int
    in_flight_now: int
    batch_size: Summary
    wait_time: Summary
    bulk_duration: Summary
    tuning: Tuning | None = None


@final
@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What an observer receives once for every dispatched batch, when it ends.

    Attributes:
        function: The decorated function's qualified name.
        partition: ``repr()`` of the partition key (``group_by``'s key; for a method, the
            instance's ``id()``), or ``None`` for a function with one partition per loop.
        calls: Members of the batch.
        size: Items the (last) leader received.
        reason: Why the batch stopped collecting (see ``BatchStats.flushes``).
        waited: Seconds from the first member's ``collect()`` to the dispatch.
        duration: Seconds from the dispatch to the end.
        outcome: ``"ok"``, ``"error"`` or ``"handover"`` (see ``BatchStats``).
        error: The exception's type when ``outcome`` is ``"error"``, else ``None``.
        handovers: How many leaders left (cancelled) while they ran the bulk section.
        tuning: With ``max_window="auto"``, the tuner's state when the batch ended, its
            ``in_flight_limit`` the one in force when the batch was due; ``None`` otherwise.

    Added in version 0.3.
    """

    function: str
    partition: str | None
    calls: int
    size: int
    reason: FlushReason
    waited: float
    duration: float
    outcome: Outcome
    error: type[BaseException] | None
    handovers: int
    tuning: Tuning | None = None


#: Observers of every decorated function, in registration order.
OBSERVERS: Final[list[Callable[[BatchRecord], object]]] = []


def add_observer(observer: Callable[[BatchRecord], object], /) -> None:
    """Call ``observer(record)`` when any batch of any decorated function ends.

    An observer runs on the event loop, synchronously, when the batch ends (inside the
    leader's ``scatter()``, or where the failure happened): keep it quick and non-blocking.
    Whatever it raises is logged on the ``concresce`` logger and never reaches a caller.
    Adding the same observer twice registers it once.

    Args:
        observer: A callable taking a ``BatchRecord``.

    Raises:
        TypeError: ``observer`` is not callable.

    Added in version 0.3.
    """
    if not callable(cast("object", observer)):  # checked for callers without a type checker
        msg = f"observer must be callable, got {observer!r}"
        raise TypeError(msg)
    if observer not in OBSERVERS:
        OBSERVERS.append(observer)


def remove_observer(observer: Callable[[BatchRecord], object], /) -> None:
    """Stop calling an observer added with ``add_observer()``.

    Raises:
        ValueError: ``observer`` was not added.

    Added in version 0.3.
    """
    try:
        OBSERVERS.remove(observer)
    except ValueError:
        msg = f"{observer!r} is not a registered observer"
        raise ValueError(msg) from None


def notify(observers: list[Callable[[BatchRecord], object]], record: BatchRecord) -> None:
    """Pass ``record`` to every observer; log, never raise, what they raise.

    Whatever an observer raises, a ``BaseException`` included, is logged: the batch has been
    routed already, and its callers must get their results.
    """
    for observer in observers:
        try:
            observer(record)
        except BaseException:  # noqa: PERF203 -- a failing observer must not skip the next one
            logger.exception("concresce: observer %r raised for a batch of %s", observer, record.function)


@final
class Histogram:
    """A running total, maximum and fixed-bucket histogram (the count is their sum)."""

    __slots__ = ("bounds", "counts", "max", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.total = 0.0
        self.max = 0.0
        self.counts = [0] * len(bounds)

    def add(self, value: float) -> None:
        """Record one value."""
        self.total += value
        if value > self.max:  # noqa: PLR1730 -- max() parses its arguments: 3x the cost
            self.max = value
        self.counts[bisect_left(self.bounds, value)] += 1

    def summary(self) -> Summary:
        """Return a frozen copy."""
        counts = self.counts
        return Summary(sum(counts), float(self.total), float(self.max), tuple(zip(self.bounds, counts, strict=False)))


@final
class Counters:
    """The mutable counters behind ``BatchStats`` (one per decorated function)."""

    __slots__ = (
        "batch_size",
        "batches",
        "bulk_duration",
        "calls",
        "cancellations",
        "flushes",
        "handovers",
        "items",
        "leader_failures",
        "shed",
        "wait_time",
    )

    def __init__(self) -> None:
        self.calls = 0
        self.batches = 0
        self.items = 0
        self.flushes: dict[str, int] = dict.fromkeys(FLUSH_REASONS, 0)
        self.leader_failures = 0
        self.handovers = 0
        self.cancellations = 0
        self.shed = 0
        self.batch_size = Histogram(SIZE_BOUNDS)
        self.wait_time = Histogram(SECONDS_BOUNDS)
        self.bulk_duration = Histogram(SECONDS_BOUNDS)

    def snapshot(
        self, *, open_calls: int, open_now: int, in_flight_now: int, tuning: Tuning | None = None
    ) -> BatchStats:
        """Return a frozen snapshot; ``open_calls`` are members of batches not dispatched yet."""
        return BatchStats(
            calls=self.calls + open_calls,
            batches=self.batches,
            items=self.items,
            flushes=MappingProxyType(dict(self.flushes)),
            leader_failures=self.leader_failures,
            handovers=self.handovers,
            cancellations=self.cancellations,
            shed=self.shed,
            open_now=open_now,
            in_flight_now=in_flight_now,
            batch_size=self.batch_size.summary(),
            wait_time=self.wait_time.summary(),
            bulk_duration=self.bulk_duration.summary(),
            tuning=tuning,
        )

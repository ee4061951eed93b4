"""Reporting: what is recorded when a batch ends, and the tracing hooks of a batch.

A batch that ran ends with one ``BatchRecord`` for the function's observer and the global
observers (``_stats.py`` keeps the counters and delivers records); a traced batch has a
``Trace`` (``_otel.py``). Nothing here may raise into a caller: a key's ``repr()`` that
fails is reported in the label, and what observers raise is logged by ``notify()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol, cast, final

from ._stats import OBSERVERS, BatchRecord, notify

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._batches import Batch, Partition
    from ._stats import Outcome


class Trace(Protocol):
    """The tracing of one batch (``_otel.py``): links every member, spans every leader's run."""

    def join(self) -> None:
        """A member joins the batch: remember the span current in its task."""

    def start(self, batch: Batch) -> None:
        """A leader resumed with the batch's items: start a span, child of the leader's span."""

    def end(self, batch: Batch, outcome: Outcome, error: BaseException | None) -> None:
        """The leader's run ended (routed, failed, or handed over): end its span."""

    def release(self) -> None:
        """The leader's call returned after scatter(): its span is no longer current."""


@final
class Tracing:
    """Holds the tracer while tracing is enabled (``enable_tracing()``); read once per batch."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        # Returns the Trace of a new batch; None while tracing is disabled.
        self.open: Callable[[Batch], Trace] | None = None


TRACING: Final = Tracing()


def report(batch: Batch, outcome: Outcome, error: BaseException | None, duration: float, calls: int) -> None:
    """Pass the batch's record to its function's observer and the global observers."""
    part = batch.part
    tuner = part.batcher.tuner
    record = BatchRecord(
        function=part.batcher.name,
        partition=partition_label(part),
        calls=calls,
        size=batch.count,
        reason=batch.reason,
        waited=batch.dispatched - batch.opened,
        duration=duration,
        outcome=outcome,
        error=None if error is None else type(error),
        handovers=batch.handovers,
        # A batch that filled before it was due was not limited: the limit then is the tuner's.
        tuning=None if tuner is None else tuner.tuning(getattr(batch, "tuned", None)),
    )
    observers = list(OBSERVERS)
    if part.batcher.observer is not None:
        observers.insert(0, part.batcher.observer)
    notify(observers, record)


def partition_label(part: Partition) -> str | None:
    """``repr()`` of a partition's key for records and spans (None for a loop's only one).

    Never raises: the key is the user's (``group_by``), and its ``repr()`` may fail.
    """
    key = part.key
    if key is part.loop:
        return None
    value: object = cast("tuple[object, object]", key)[1]  # (loop, partition key)
    try:
        return repr(value)
    except BaseException as error:  # noqa: BLE001 -- reported in the label instead, whatever it is
        return f"<{type(value).__name__} key, repr() raised {type(error).__name__}>"

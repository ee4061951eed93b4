"""What a decorated function offers besides being called: statistics and runtime controls.

``@batch`` returns a function carrying four attributes (``stats``, ``configure``, ``flush``,
``drain``), bound methods of one ``Controls`` per decorated function. For type checkers the
decorated function is a ``Batched[P, R]``: callable like the original, with the controls,
and bound like a method when it is one.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Concatenate, Final, Literal, ParamSpec, Protocol, TypeVar, final, overload

from ._batches import DONE, Partition
from ._calls import MEMBER, calls_of
from ._options import check_limit, check_weight_limit, check_window, unknown_option
from ._runtime import current_task, running_loop

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from datetime import timedelta

    from ._batcher import Batcher
    from ._batches import Batch
    from ._calls import Call
    from ._options import Auto
    from ._runtime import Loop
    from ._stats import BatchStats

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is new in 3.11

__all__ = ["UNSET", "Batched", "Controls", "in_progress", "settled"]

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")
S = TypeVar("S")


@final
class _Unset:
    """The default of ``configure()``'s options: leave this option as it is."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unchanged>"


UNSET: Final = _Unset()

#: What configure() can change.
_CONFIGURABLE: Final = ("max_window", "max_size", "max_concurrency", "max_weight", "max_pending")


# R is invariant: it appears in __get__'s self types, where mypy refuses a covariant one.
class Batched(Protocol[P, R]):  # pyright: ignore[reportInvalidTypeVarUse]
    """The type of a function decorated with ``@batch``.

    Called like the original ``async def`` (same parameters, same result type), with the
    statistics and controls of its batching as attributes. A decorated method binds like a
    method; the controls are shared by every instance (they act on every partition).

    Added in version 0.3.
    """

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """Call the function: the call joins a batch when it awaits ``collect()``."""
        ...

    def stats(self, *, reset: bool = False) -> BatchStats:
        """Return a snapshot of the function's batching; with ``reset=True``, restart the counters."""
        ...

    def configure(
        self,
        *,
        max_window: float | timedelta | Literal["auto"] | Auto = ...,
        max_size: int | None = ...,
        max_concurrency: int | None = ...,
        max_weight: float | None = ...,
        max_pending: int | None = ...,
    ) -> None:
        """Change batching options at run time; they apply from the next batch on."""
        ...

    def flush(self) -> int:
        """Close the function's open batches on the running loop now; return how many."""
        ...

    def drain(self) -> Coroutine[Any, Any, None]:
        """Flush, then wait until no batch of the function is open or in flight on this loop."""
        ...

    # Accessed on an instance, a decorated method binds its first parameter; accessed on the
    # class, it is unbound, except under @classmethod, which binds the class.
    @overload
    def __get__(self: Batched[Concatenate[type[S], Q], R], instance: None, owner: type[S], /) -> Batched[Q, R]: ...
    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...
    @overload
    def __get__(self: Batched[Concatenate[S, Q], R], instance: S, owner: type[Any], /) -> Batched[Q, R]: ...
    @overload
    def __get__(self: Batched[Concatenate[type[S], Q], R], instance: S, owner: type[S], /) -> Batched[Q, R]: ...
    @overload
    def __get__(self, instance: object, owner: type[Any], /) -> Self: ...


@final
class Controls:
    """The statistics and controls of one decorated function (its ``Batcher``)."""

    __slots__ = ("batcher",)

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher

    def stats(self, *, reset: bool = False) -> BatchStats:
        """Return a frozen snapshot of this function's batching, on every event loop.

        Args:
            reset: Restart the counters and summaries after taking the snapshot (the gauges
                ``open_now`` and ``in_flight_now`` are never reset). A batch is counted in
                parts: its calls and flush when it is dispatched, its items, size and bulk
                duration when it ends. So a batch in flight at the reset counts only its end
                in the next interval, and a batch still collecting counts its calls there.

        Returns:
            A ``BatchStats``.

        Added in version 0.3.
        """
        batcher = self.batcher
        open_calls = open_now = in_flight_now = 0
        for part in list(batcher.partitions.values()):
            in_flight_now += part.running
            waiting = list(part.pending or ())
            if part.open is not None and not part.open.queued:
                waiting.append(part.open)
            open_now += len(waiting)
            open_calls += sum(len(batch.members) for batch in waiting)
        tuner = batcher.tuner
        snapshot = batcher.counters.snapshot(
            open_calls=open_calls,
            open_now=open_now,
            in_flight_now=in_flight_now,
            tuning=None if tuner is None else tuner.tuning(),
        )
        if reset:
            batcher.reset_counters()
        return snapshot

    def configure(
        self,
        *,
        max_window: float | timedelta | Literal["auto"] | Auto | _Unset = UNSET,
        max_size: int | _Unset | None = UNSET,
        max_concurrency: int | _Unset | None = UNSET,
        max_weight: float | _Unset | None = UNSET,
        max_pending: int | _Unset | None = UNSET,
        **unknown: object,
    ) -> None:
        """Change batching options at run time, validated like ``@batch``'s.

        The window, size and weight limits apply from the next batch on: a batch already
        collecting keeps the limits it opened with. ``max_pending`` applies to the next call.
        A raised ``max_concurrency`` dispatches queued batches into the new slots at once; a
        lowered one lets the batches in flight finish.

        Args:
            max_window: Seconds (a number or a ``datetime.timedelta``) a batch stays open at
                most (``0``: the next loop turn), or ``"auto"`` / ``Auto(ceiling=...)`` for the
                self-tuning flush (switching to a number drops the tuner's estimates).
            max_size: Items per batch at most, or ``None``.
            max_concurrency: Batches of one partition in flight at most, or ``None``.
            max_weight: The weight budget of a batch, or ``None`` (needs ``weight=``).
            max_pending: Calls of one partition waiting at most, or ``None``.
            **unknown: Not options: a keyword ``configure()`` does not have (``window=`` of
                other releases, a typo) is a ``TypeError`` naming the option meant.

        Raises:
            TypeError: An option has the wrong type, or is not an option of ``configure()``
                (nothing is changed).
            ValueError: An option is out of range, or ``max_weight`` is set on a function
                decorated without ``weight=`` (nothing is changed).

        Added in version 0.3.
        """
        batcher = self.batcher
        if unknown:  # the keyword of another release (window=), or a typo
            raise TypeError(unknown_option(f"{batcher.name}.configure()", next(iter(unknown)), _CONFIGURABLE))
        # Validate everything before changing anything.
        window = (
            batcher.window
            if isinstance(max_window, _Unset)
            else check_window(max_window, threads=batcher.home is not None)
        )
        size = batcher.max_size if isinstance(max_size, _Unset) else check_limit("max_size", max_size)
        concurrency = (
            batcher.max_concurrency
            if isinstance(max_concurrency, _Unset)
            else check_limit("max_concurrency", max_concurrency)
        )
        weight = batcher.max_weight if isinstance(max_weight, _Unset) else check_weight_limit(max_weight)
        pending = batcher.max_pending if isinstance(max_pending, _Unset) else check_limit("max_pending", max_pending)
        if weight is not None and batcher.weight is None:
            msg = (
                f"{batcher.name}: max_weight needs a weight function; decorate with @batch(weight=..., max_weight=...)"
            )
            raise ValueError(msg)
        raised = concurrency is None or (batcher.max_concurrency is not None and concurrency > batcher.max_concurrency)
        batcher.set_limits(window, size, concurrency, weight, pending)
        if raised:
            _release_all(batcher)

    def flush(self) -> int:
        """Close every open batch of this function on the running event loop now.

        Each closed batch is dispatched (or, with ``max_concurrency``, queued for the next
        free slot) as if it had filled up, with the flush reason ``"flush"``. Calls that
        arrive afterwards open new batches as usual.

        Returns:
            How many batches were closed.

        Raises:
            RuntimeError: No event loop is running in this thread.

        Added in version 0.3.
        """
        loop = running_loop()
        closed = 0
        for part in list(self.batcher.partitions.values()):
            if part.loop is loop and part.open is not None:
                part.open.close("flush")
                closed += 1
        return closed

    async def drain(self) -> None:
        """Flush, then wait until every call that had joined a batch has its outcome.

        ``drain()`` flushes the function's open batches on this loop and waits for them and
        for the batches already queued or in flight here to end, so it returns once every
        call that had reached ``collect()`` when it was called has its result (or failure).
        Calls that arrive later open new batches, which it does not wait for: under steady
        traffic it still returns. Use it in tests with long windows and at shutdown.

        Raises:
            RuntimeError: Called inside a call of the same function, which would wait for
                itself.

        Added in version 0.3.
        """
        batcher = self.batcher
        loop = running_loop()
        if any(call.batcher is batcher for call in calls_of(current_task())):
            msg = (
                f"{batcher.name}: drain() was awaited inside a call of the same function; it would wait "
                "for its own batch forever (drain from outside, e.g. at shutdown)"
            )
            raise RuntimeError(msg)
        batches, members = in_progress(batcher, loop)
        self.flush()  # now every batch of this loop is queued for a slot, running or ended
        while not settled(batches, members):
            fut = loop.create_future()
            batcher.drainers.append(fut)
            try:
                await fut
            finally:
                # Gone already if its loop was closed by hand (_closed_loops.py).
                with contextlib.suppress(ValueError):
                    batcher.drainers.remove(fut)


def in_progress(batcher: Batcher, loop: Loop) -> tuple[list[Batch], list[Call]]:
    """Every batch of ``batcher`` on ``loop`` (open, queued or running), and their members.

    Taken before drain() flushes: a flushed batch whose members were all cancelled in this
    loop turn ends at once, and so leaves no trace.
    """
    parts = [part for part in list(batcher.partitions.values()) if part.loop is loop]
    batches = [batch for part in parts for batch in (*part.running_batches(), *(part.pending or ()))]
    batches += [part.open for part in parts if part.open is not None and not part.open.queued]
    return batches, [call for batch in batches for call in batch.members]


def settled(batches: list[Batch], members: list[Call]) -> bool:
    """Whether every batch drain() waits for ended, and every member of them has its outcome.

    A member cancelled just before its batch was dispatched or ended is skipped by it, and
    leaves collect() when its task next runs: drain() waits for that too.
    """
    return all(batch.state == DONE for batch in batches) and all(call.state != MEMBER for call in members)


def _release_all(batcher: Batcher) -> None:
    """Let queued batches into the slots a raised max_concurrency opened, on their own loops."""
    try:
        loop = running_loop()
    except RuntimeError:
        loop = None
    for part in list(batcher.partitions.values()):
        if not part.pending:
            continue
        if part.loop is loop:
            part.release()
        else:
            _release_later(part)


def _release_later(part: Partition) -> None:
    # A closed loop refuses the callback: its batches will never run anyway.
    with contextlib.suppress(RuntimeError):
        part.loop.call_soon_threadsafe(part.release)

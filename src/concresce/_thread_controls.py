"""The statistics and controls of a thread-batched function, and its type for type checkers.

They are asyncio's (``_controls.py``), run under the function's lock; ``flush()`` acts on every
partition (there is one loop, the function's), and ``drain()`` blocks the calling thread.
"""

from __future__ import annotations

import os
from _thread import get_ident
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, final, overload

from ._batcher import BATCHERS
from ._calls import CALLS, OUTER, calls_of
from ._controls import UNSET, Controls, in_progress, settled
from ._options import check_timeout

if TYPE_CHECKING:
    from datetime import timedelta

    from typing_extensions import Self

    from ._batcher import Batcher
    from ._controls import _Unset  # pyright: ignore[reportPrivateUsage]
    from ._stats import BatchStats
    from ._threads import ThreadLoop

__all__ = ["ThreadBatched", "ThreadControls"]

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")
S = TypeVar("S")


# R is invariant, as in Batched.
class ThreadBatched(Protocol[P, R]):  # pyright: ignore[reportInvalidTypeVarUse]
    """The type of a function decorated with ``concresce.threads.batch``.

    Called like the original ``def`` (same parameters, same result type), with the statistics
    and controls of its batching as attributes. A decorated method binds like a method.

    Added in version 0.3.
    """

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function: the call joins a batch when it reaches ``collect()``."""
        ...

    def stats(self, *, reset: bool = False) -> BatchStats:
        """Return a snapshot of the function's batching; with ``reset=True``, restart the counters."""
        ...

    def configure(
        self,
        *,
        max_window: float | timedelta = ...,
        max_size: int | None = ...,
        max_concurrency: int | None = ...,
        max_weight: float | None = ...,
        max_pending: int | None = ...,
    ) -> None:
        """Change batching options at run time; they apply from the next batch on."""
        ...

    def flush(self) -> int:
        """Close the function's open batches now; return how many."""
        ...

    def drain(self, timeout: float | None = None) -> None:
        """Flush, then block until no batch of the function is open or in flight."""
        ...

    @overload
    def __get__(
        self: ThreadBatched[Concatenate[type[S], Q], R], instance: None, owner: type[S], /
    ) -> ThreadBatched[Q, R]: ...
    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...
    @overload
    def __get__(self: ThreadBatched[Concatenate[S, Q], R], instance: S, owner: type[Any], /) -> ThreadBatched[Q, R]: ...
    @overload
    def __get__(
        self: ThreadBatched[Concatenate[type[S], Q], R], instance: S, owner: type[S], /
    ) -> ThreadBatched[Q, R]: ...
    @overload
    def __get__(self, instance: object, owner: type[Any], /) -> Self: ...


@final
class ThreadControls:
    """The statistics and controls of one thread-batched function."""

    __slots__ = ("batcher", "controls", "loop")

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.controls = Controls(batcher)
        self.loop: ThreadLoop = batcher.home

    def stats(self, *, reset: bool = False) -> BatchStats:
        """Return a snapshot of this function's batching, taken under its lock.

        The same ``BatchStats`` as an async function's (see ``Batched.stats()``): consistent,
        since no thread changes the counters while it is taken. A member that timed out in
        ``collect()`` counts as a cancellation.

        Added in version 0.3.
        """
        with self.loop.lock:
            return self.controls.stats(reset=reset)

    def configure(
        self,
        *,
        max_window: float | timedelta | _Unset = UNSET,
        max_size: int | _Unset | None = UNSET,
        max_concurrency: int | _Unset | None = UNSET,
        max_weight: float | _Unset | None = UNSET,
        max_pending: int | _Unset | None = UNSET,
        **unknown: object,
    ) -> None:
        """Change batching options at run time, from any thread (see ``Batched.configure()``).

        A raised ``max_concurrency`` dispatches batches waiting for a slot at once.

        Added in version 0.3.
        """
        with self.loop.lock:
            self.controls.configure(
                max_window=max_window,
                max_size=max_size,
                max_concurrency=max_concurrency,
                max_weight=max_weight,
                max_pending=max_pending,
                **unknown,
            )

    def flush(self) -> int:
        """Close every open batch of this function now, from any thread.

        Each closed batch is dispatched (or queued for the next free ``max_concurrency``
        slot) as if it had filled up, with the flush reason ``"flush"``.

        Returns:
            How many batches were closed.

        Added in version 0.3.
        """
        with self.loop.lock:
            return self._flush()

    def _flush(self) -> int:
        closed = 0
        for part in list(self.batcher.partitions.values()):
            if part.open is not None:
                part.open.close("flush")
                closed += 1
        return closed

    def drain(self, timeout: float | None = None) -> None:
        """Flush, then block until every call that had joined a batch has its outcome.

        Like ``await fn.drain()`` on asyncio: calls that arrive later open new batches, which
        it does not wait for. Use it at shutdown, and in tests with long windows.

        Args:
            timeout: Seconds to wait at most (``None``: no limit).

        Raises:
            TimeoutError: ``timeout`` passed first (the batches go on).
            RuntimeError: Called inside a call of the same function, which would wait for
                itself.

        Added in version 0.3.
        """
        batcher = self.batcher
        loop = self.loop
        if any(call.batcher is batcher for call in calls_of(get_ident())):
            msg = (
                f"{batcher.name}: drain() was called inside a call of the same function; it would wait "
                "for its own batch forever (drain from outside, e.g. at shutdown)"
            )
            raise RuntimeError(msg)
        seconds = None if timeout is None else check_timeout(f"{batcher.name}.drain()", timeout)
        loop.refuse_reentry("drain()")
        with loop.lock:
            until = None if seconds is None else loop.time() + seconds
            batches, members = in_progress(batcher, loop)
            self._flush()
        while True:
            with loop.lock:
                if settled(batches, members):
                    return
                if until is not None and loop.time() >= until:
                    msg = f"{batcher.name}: drain() timed out with batches still in flight"
                    raise TimeoutError(msg)
                fut = loop.create_future()
                batcher.drainers.append(fut)
            try:
                loop.clock.wait(fut, until)
            finally:
                with loop.lock:
                    batcher.drainers.remove(fut)


def _start_afresh_after_fork() -> None:
    """In a child process made by ``os.fork()``: no batch of the parent's threads goes on.

    Only the thread that forked exists in the child; the calls of the others, their batches,
    and a lock one of them may have held at the fork would wait for ever. Each thread-batched
    function starts with a new lock and no partitions, and the other threads' calls are
    forgotten.
    """
    me = get_ident()
    for batcher in list(BATCHERS):
        loop: ThreadLoop | None = batcher.home
        if loop is not None:
            loop.reset_lock()
            batcher.partitions.clear()
            batcher.drainers.clear()
    for task in list(CALLS):
        if isinstance(task, int) and task != me:
            CALLS.pop(task, None)
            OUTER.pop(task, None)


if hasattr(os, "register_at_fork"):  # pragma: no branch -- every POSIX CPython has it
    os.register_at_fork(after_in_child=_start_afresh_after_fork)

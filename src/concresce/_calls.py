"""The table of current calls: which call of a decorated function each task is running.

One ``Call`` exists per call of a decorated function. The wrapper enters it in ``CALLS``
(keyed by the task running the body) for the duration of the body, so that ``collect()`` and
``scatter()`` find it; a nested call of another decorated function in the same task replaces
the entry and puts the outer one back (``OUTER`` keeps the calls a task interrupted). The
states below are a call's role in its batch.
"""

from __future__ import annotations

from _thread import get_ident
from typing import TYPE_CHECKING, Any, Final, final

from ._runtime import current_task, misplaced

if TYPE_CHECKING:
    from collections.abc import Hashable
    from types import TracebackType

    from ._batcher import Batcher
    from ._batches import Batch
    from ._runtime import Waiter

# The call whose body each task is running. Keyed by task rather than held in a context
# variable (docs/performance.md): a task started by the body, which would inherit a context
# variable, cannot mistake itself for the call.
CALLS: Final[dict[Hashable, Call]] = {}

# The calls each task interrupted to make a nested call (CALLS holds the innermost one),
# outermost first; only tasks running nested calls have an entry.
OUTER: Final[dict[Hashable, list[Call]]] = {}

# Call states. A call moves IDLE -> MEMBER -> (LEADING -> SCATTERED | RESUMED | FAILED),
# or to GONE when it leaves (cancelled, or a leader that aborted and handed over). A call
# made inside another call in the same task starts NESTED instead of IDLE, so that the calls
# a task runs can be listed (``calls_of()``).
IDLE: Final[int] = 0  # running its body, has not awaited collect()
MEMBER: Final[int] = 1  # suspended in collect(), in an open or dispatched batch
LEADING: Final[int] = 2  # chosen as the leader; collect() returns (or returned) the items
SCATTERED: Final[int] = 3  # the leader whose scatter() routed the batch (or failed to)
RESUMED: Final[int] = 4  # a follower that was routed a value
FAILED: Final[int] = 5  # a follower that was routed an exception
GONE: Final[int] = 6  # left the batch: cancelled, or a leader that handed the batch over
NESTED: Final[int] = 7  # like IDLE, for a call made while its task runs another call


@final
class Call:
    """One call of a decorated function: its role in a batch and, for a follower, its outcome."""

    __slots__ = ("batch", "batcher", "fut", "item", "pkey", "slot", "state", "tb", "value", "weight")

    # No __init__ (a Python-level one costs a frame on the hot path, once per call): the
    # wrapper sets batcher, pkey and state; the rest is set when the call joins a batch (item,
    # batch, fut), when its leader resumes (slot) or when a result is routed to it (value, tb),
    # and read only after that.
    batcher: Batcher
    pkey: Hashable
    state: int
    item: Any
    batch: Batch
    fut: Waiter
    slot: int  # index of this call's item in the list the leader received
    value: Any  # the routed result or exception
    tb: TracebackType | None  # the routed exception's traceback at routing time
    weight: float  # with max_weight: the item's weight, while the batch is open


class Resume(BaseException):
    """Unwinds a follower from ``collect()`` once its result has been routed.

    A ``BaseException`` so that ``except Exception`` in user code lets it through; the
    wrapper of the decorated function catches it and returns the routed value.
    """


def current_call(what: str) -> Call:
    """Return the call whose body the current task is running, or raise a RuntimeError about ``what``."""
    call = CALLS.get(current_task())
    if call is None:
        raise RuntimeError(outside_message(what))
    return call


def calls_of(task: Hashable) -> list[Call]:
    """The calls ``task`` is running, innermost first."""
    call = CALLS.get(task)
    return [] if call is None else [call, *reversed(OUTER.get(task, ()))]


def nest(task: Hashable, outer: Call) -> None:
    """``task`` starts a call inside ``outer``: keep ``outer`` for calls_of()."""
    OUTER.setdefault(task, []).append(outer)


def unnest(task: Hashable) -> None:
    """``task`` returns to the call it interrupted."""
    stack = OUTER[task]
    stack.pop()
    if not stack:
        del OUTER[task]


def routed_error(call: Call) -> BaseException:
    """Return the exception routed to follower ``call``, with its traceback as at routing.

    The call forgets it: the traceback will hold the frame that raises it.
    """
    error: BaseException = call.value
    error = error.with_traceback(call.tb)
    call.value = call.tb = None
    return error


def outside_message(what: str) -> str:
    """Explain that ``what`` was used outside a call of a decorated function."""
    why = misplaced()
    if why is not None:
        return why
    message = (
        f"{what} was used outside a call of a @batch function: await collect(item) in the body "
        "of an `async def` decorated with @batch, in the task that made the call (not in a task "
        "it started), then return scatter(results)"
    )
    thread_call = CALLS.get(get_ident())
    if thread_call is not None:
        message += (
            f". This thread is running a call of {thread_call.batcher.name}, a plain `def` decorated "
            "with concresce.threads.batch: use concresce.threads.collect() and scatter() in it"
        )
    elif current_task() is None:
        message += (
            ". No asyncio event loop or trio run is running here: concresce batches the calls "
            "made in tasks of asyncio (uvloop too) or trio, not a coroutine driven by hand "
            "(coroutine.send()) or by another framework"
        )
    return message

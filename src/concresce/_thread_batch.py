"""``concresce.threads.batch`` and ``scatter``: the thread API's decorator and routing."""

from __future__ import annotations

import inspect
from _thread import get_ident
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, overload

from ._batch import build
from ._calls import CALLS
from ._scatter import MISSING, scatter_call
from ._thread_collect import outside_message

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Mapping
    from datetime import timedelta

    from ._stats import BatchRecord
    from ._thread_controls import ThreadBatched

__all__ = ["DEFAULT_CONCURRENCY", "batch", "scatter"]

P = ParamSpec("P")
R = TypeVar("R")
D = TypeVar("D")

#: ``max_concurrency`` by default: batches of one partition in flight at once. Group commit
#: needs a bound (without one every call is dispatched alone at once); 4 is the default size
#: of psycopg's ``ConnectionPool`` and close to SQLAlchemy's (5). Set it to your pool size.
DEFAULT_CONCURRENCY: Final = 4


@overload
def batch(fn: Callable[P, R], /) -> ThreadBatched[P, R]: ...
@overload
def batch(
    *,
    max_window: float | timedelta = 0,
    max_size: int | None = 100,
    group_by: Callable[..., Hashable] | None = None,
    dedupe: bool = False,
    max_concurrency: int | None = DEFAULT_CONCURRENCY,
    weight: Callable[[Any], float] | None = None,
    max_weight: float | None = None,
    max_pending: int | None = None,
    observer: Callable[[BatchRecord], object] | None = None,
) -> Callable[[Callable[P, R]], ThreadBatched[P, R]]: ...
def batch(
    fn: Any = None,
    /,
    *misplaced: object,
    max_window: float | timedelta = 0,
    max_size: int | None = 100,
    group_by: Callable[..., Hashable] | None = None,
    dedupe: bool = False,
    max_concurrency: int | None = DEFAULT_CONCURRENCY,
    weight: Callable[[Any], float] | None = None,
    max_weight: float | None = None,
    max_pending: int | None = None,
    observer: Callable[[BatchRecord], object] | None = None,
    **unknown: object,
) -> Any:
    """Make concurrent calls of a plain ``def``, made from many threads, share one bulk operation.

    The thread version of ``concresce.batch``. Each call runs its body until it calls
    ``collect(item)`` (``concresce.threads.collect``), where it joins the open batch of the
    function and blocks. One member, the leader, returns from ``collect()`` with every item,
    makes the bulk call and returns ``scatter(results)``, which routes each member its result.

    The flush rule is *group commit*: a batch is dispatched as soon as one of the
    ``max_concurrency`` slots is free, so a lone thread never waits, and it keeps collecting
    while every slot is busy (up to ``max_size``): the busier the backend, the bigger the
    batches. ``max_window`` adds a wait: a batch is dispatched once it is that old (and a slot
    is free) or full.

    Args:
        fn: The plain ``def`` function (bare ``@batch`` only).
        max_window: Seconds (a number or a ``datetime.timedelta``) a batch collects before it
            is due; ``0`` (the default) makes it due at once.
        max_size: Items per batch at most (``None``: no limit; ``1``: no batching).
        group_by: Called with each call's arguments; calls with different (hashable)
            results never share a batch.
        dedupe: Collect equal (hashable) items once per batch; every duplicate caller
            receives the result routed to its item.
        max_concurrency: Batches of one partition running at once at most; set it to the size
            of the connection pool the bulk call uses (default 4). ``None``: no limit, so with
            ``max_window=0`` every call is dispatched alone.
        weight: Called with each item; returns its weight, a number >= 0. Needs ``max_weight``.
        max_weight: A batch also closes when its items' weights reach this sum. Needs ``weight``.
        max_pending: Calls of one partition waiting (in batches not dispatched yet) at most;
            a call beyond it fails at once with ``OverloadedError``.
        observer: Called with a ``BatchRecord`` when each batch of this function ends. It runs
            under the function's lock: it must not call the function.
        *misplaced: Not options: options given by position are a ``TypeError``.
        **unknown: Not options: an unknown keyword is a ``TypeError`` naming the option meant.

    Returns:
        The batching function (or, with options only, a decorator that makes one). It keeps the
        name, docstring, signature and ``__wrapped__`` of ``fn``, and has the methods
        ``stats()``, ``configure()``, ``flush()`` and ``drain()`` (see ``ThreadBatched``).

    Raises:
        TypeError: ``fn`` is an ``async def`` (use ``concresce.batch``), a generator function,
            or not callable; or an option has the wrong type.
        ValueError: An option is out of range, or only one of ``weight`` and ``max_weight``
            was given.

    Example:
        ```python
        from concresce.threads import batch, collect, scatter

        @batch(max_concurrency=4)  # the size of the connection pool
        def get_user(user_id: int) -> User | None:
            ids = collect(user_id)
            rows = db.fetch_users(ids)
            return scatter({row.id: row for row in rows}, default=None)
        ```

    Added in version 0.3.
    """
    options: dict[str, object] = {
        "max_window": max_window,
        "max_size": max_size,
        "group_by": group_by,
        "dedupe": dedupe,
        "max_concurrency": max_concurrency,
        "weight": weight,
        "max_weight": max_weight,
        "max_pending": max_pending,
        "observer": observer,
    }
    return build(fn, misplaced, unknown, options, _DEFAULTS, threads=True)


#: Each option's default, to tell which options a call of ``batch()`` passed.
_DEFAULTS: Final[dict[str, object]] = {
    name: parameter.default
    for name, parameter in inspect.signature(batch).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}


@overload
def scatter(results: Mapping[Any, R], /, *, key: Callable[[Any], Any] | None = None) -> R: ...
@overload
def scatter(results: Mapping[Any, R], /, *, key: Callable[[Any], Any] | None = None, default: D) -> R | D: ...
@overload
def scatter(results: Iterable[R], /) -> R: ...
def scatter(
    results: Any,
    /,
    *,
    key: Callable[[Any], Any] | None = None,
    default: Any = MISSING,
) -> Any:
    """Route one result to each member of the leader's batch and return the leader's own.

    The thread version of ``concresce.scatter``, with the same modes and rules: positional
    (one result per collected item, in ``collect()`` order) or keyed (a mapping; ``key`` maps
    an item to its key, ``default`` stands in for a missing one). A result that is an
    ``Exception`` is raised in its caller alone. Each follower's thread is woken with its
    share; the leader's own share is returned (or raised).

    Args:
        results: The bulk call's results, positional or keyed.
        key: Keyed mode only: maps an item to its key in ``results``.
        default: Keyed mode only: the result for an item whose key is missing.

    Returns:
        The leader's own share.

    Raises:
        BatchRoutingError: The results cannot be routed; every member of the batch gets it.
        MissingResultError: Keyed mode, no ``default``, and the leader's own key is missing.
        RuntimeError: Not called by the leader of a thread-batched call, or called twice.

    Added in version 0.3.
    """
    call = CALLS.get(get_ident())
    if call is None:
        raise RuntimeError(outside_message("scatter()"))
    with call.batcher.home:
        return scatter_call(call, results, key, default)

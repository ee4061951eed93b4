"""``scatter()``: route the leader's bulk results to every member of its batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

from ._calls import GONE, IDLE, LEADING, NESTED, SCATTERED, Call, current_call
from ._errors import BatchRoutingError, MissingResultError
from ._routing import deliver, fail, slot_items

if TYPE_CHECKING:
    from ._batches import Batch

__all__ = ["MISSING", "scatter", "scatter_call"]

R = TypeVar("R")
D = TypeVar("D")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()


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

    **Positional**: ``results`` is a list, tuple or other finite iterable (not ``str``,
    ``bytes``, ``bytearray``, a set or a mapping) with one result per collected item, in
    ``collect()`` order. **Keyed**: ``results`` is a mapping and each caller receives
    ``results[key(item)]`` (``key`` defaults to the item itself); extra keys are ignored, and
    a missing key gives ``default`` when one is passed, or a ``MissingResultError`` for that
    caller alone.

    A result that is an ``Exception`` instance is raised in its caller alone. Every
    follower's share is delivered at once; the leader's own share is returned (or raised).
    Code after ``scatter()`` may still change what the leader returns, never what the
    followers received.

    Args:
        results: The bulk call's results, positional or keyed.
        key: Keyed mode only: maps an item to its key in ``results``.
        default: Keyed mode only: the result for an item whose key is missing.

    Returns:
        The leader's own share.

    Raises:
        BatchRoutingError: The results cannot be routed (wrong count, unsupported type,
            unhashable item, ``key`` raised); every member of the batch gets it.
        MissingResultError: Keyed mode, no ``default``, and the leader's own key is missing.
        RuntimeError: Not called by the leader of a batch, or called twice.

    Example:
        ```python
        @batch
        async def get_score(user_id: int) -> int:
            ids = await collect(user_id)
            return scatter(await db.bulk_scores(ids))  # one score per id, same order
        ```

    Added in version 0.3.
    """
    return scatter_call(current_call("scatter()"), results, key, default)


def scatter_call(call: Call, results: Any, key: Callable[[Any], Any] | None, default: Any) -> Any:
    """``scatter()`` for the call ``call`` (asyncio, trio, or a thread under its function's lock)."""
    state = call.state
    if state != LEADING:
        raise RuntimeError(_misuse(call, state))
    batch = call.batch
    try:
        shares = _route(call.batcher.name, batch, results, key=key, default=default)
    except BatchRoutingError as error:
        call.state = SCATTERED
        fail(batch, error, call)
        raise
    # Any other exception (say, a results generator that raised) leaves this call the
    # leader: it propagates like any fault of the leader, to every follower.
    call.state = SCATTERED
    own = shares[call.slot]
    deliver(batch, shares, own)
    if isinstance(own, Exception):
        raise own
    return own


def _misuse(call: Call, state: int) -> str:
    name = call.batcher.name
    if state == SCATTERED:
        return f"{name}: scatter() was already called for this batch; call it once, with every result"
    if state in {IDLE, NESTED} and call.batcher.home is not None:
        return (
            f"{name}: scatter() was called before this call called collect(): write "
            "`items = collect(item)` first, then `return scatter(results)`"
        )
    if state in {IDLE, NESTED}:
        return (
            f"{name}: scatter() was called before this call awaited collect(): is `await` missing "
            "before collect(item)? Write `items = await collect(item)`, then `return scatter(results)`"
        )
    if state == GONE:
        return f"{name}: scatter() was called by a leader that was cancelled; the batch was handed to another member"
    return f"{name}: scatter() can only be called by the leader of a batch"


def _route(
    name: str,
    batch: Batch,
    results: Any,
    *,
    key: Callable[[Any], Any] | None,
    default: Any,
) -> list[Any]:
    """Return one share per slot (distinct item) of the batch, or raise BatchRoutingError."""
    if type(results) is list and key is None and default is MISSING:
        # The common case, without the abstract base class checks below (each one a call).
        shares: list[Any] = results  # pyright: ignore[reportUnknownVariableType]
    else:
        shares = _shares(name, batch, results, key, default)
    count = batch.count
    if len(shares) != count:
        callers = batch.callers
        what = "callers" if count == len(callers) else f"distinct items ({len(callers)} callers)"
        msg = f"{name}: scatter() got {len(shares)} results for {count} {what}"
        raise BatchRoutingError(msg)
    return shares


def _shares(name: str, batch: Batch, results: Any, key: Callable[[Any], Any] | None, default: Any) -> list[Any]:
    """``results`` as a list of shares: one per slot, if the results are right."""
    if isinstance(results, Mapping):
        return _route_keyed(name, slot_items(batch), results, key, default)  # pyright: ignore[reportUnknownArgumentType]
    kind = type(results).__name__
    if key is not None or default is not MISSING:
        msg = f"{name}: scatter() got key= or default= with {kind} results; they apply to a mapping only"
        raise BatchRoutingError(msg)
    if isinstance(results, (str, bytes, bytearray, AbstractSet)):
        msg = (
            f"{name}: scatter() got a {kind}; pass a list with one result per "
            "collected item, in collect() order, or a mapping keyed by item"
        )
        raise BatchRoutingError(msg)
    if isinstance(results, list):
        shares: list[Any] = results  # pyright: ignore[reportUnknownVariableType]
    else:
        try:
            iterator = iter(results)
        except TypeError as error:
            msg = f"{name}: scatter() got {kind}, which is neither a mapping nor an iterable of results"
            raise BatchRoutingError(msg) from error
        shares = list(iterator)
    return shares


def _route_keyed(
    name: str,
    items: list[Any],
    results: Mapping[Any, Any],
    key: Callable[[Any], Any] | None,
    default: Any,
) -> list[Any]:
    shares: list[Any] = []
    for item in items:
        if key is None:
            wanted = item
        else:
            try:
                wanted = key(item)
            except Exception as error:
                what = f"{type(error).__name__} for item {_repr(item)}: {_str(error)}"
                msg = f"{name}: scatter()'s key function raised {what}"
                raise BatchRoutingError(msg) from error
        try:
            share = results[wanted]
        except KeyError:
            if default is MISSING:
                share = MissingResultError(
                    f"{name}: scatter() has no result for key {_repr(wanted)}; if a missing key is not an "
                    "error, pass a default for it: scatter(results, default=None)",
                    wanted,
                )
            else:
                share = default
        except Exception as error:
            if key is None and isinstance(error, TypeError):
                msg = (
                    f"{name}: scatter() got a mapping but item {_repr(item)} cannot be looked up in it "
                    f"({_str(error)}); pass key= to map each item to a hashable key"
                )
            else:
                msg = f"{name}: scatter() could not look up key {_repr(wanted)}: {type(error).__name__}: {_str(error)}"
            raise BatchRoutingError(msg) from error
        shares.append(share)
    return shares


def _repr(value: object) -> str:
    """``repr(value)`` for a message; never raises (the value is the user's)."""
    try:
        return repr(value)
    except Exception as error:  # noqa: BLE001 -- reported in the text instead
        return f"<{type(value).__name__} object; its repr() raised {type(error).__name__}>"


def _str(error: BaseException) -> str:
    """``str(error)`` for a message; never raises."""
    try:
        return str(error)
    except Exception as failure:  # noqa: BLE001 -- reported in the text instead
        return f"<str() raised {type(failure).__name__}>"

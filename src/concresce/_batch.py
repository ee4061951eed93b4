"""``@batch``: turn an ``async def`` written for one item into a batching function."""

from __future__ import annotations

import functools
import inspect
from numbers import Real
from typing import TYPE_CHECKING, Any, Final, Literal, ParamSpec, TypeVar, cast, overload

from . import _closed_loops  # noqa: F401 # pyright: ignore[reportUnusedImport] -- installs the sweep of closed loops
from ._batcher import Batcher
from ._controls import Batched, Controls
from ._options import (
    RENAMED,
    Auto,
    check_callable,
    check_flag,
    check_limit,
    check_weight_limit,
    check_window,
    unknown_option,
)
from ._thread_controls import ThreadControls
from ._threads import ThreadLoop
from ._wrapper import instance_key, make_wrapper

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Hashable
    from datetime import timedelta

    from ._stats import BatchRecord

__all__ = ["batch", "build"]

P = ParamSpec("P")
R = TypeVar("R")


@overload
def batch(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Batched[P, R]: ...
@overload
def batch(
    *,
    max_window: float | timedelta | Literal["auto"] | Auto = 0,
    max_size: int | None = 100,
    group_by: Callable[..., Hashable] | None = None,
    dedupe: bool = False,
    max_concurrency: int | None = None,
    weight: Callable[[Any], float] | None = None,
    max_weight: float | None = None,
    max_pending: int | None = None,
    observer: Callable[[BatchRecord], object] | None = None,
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Batched[P, R]]: ...
def batch(
    fn: Any = None,
    /,
    *misplaced: object,
    max_window: float | timedelta | Literal["auto"] | Auto = 0,
    max_size: int | None = 100,
    group_by: Callable[..., Hashable] | None = None,
    dedupe: bool = False,
    max_concurrency: int | None = None,
    weight: Callable[[Any], float] | None = None,
    max_weight: float | None = None,
    max_pending: int | None = None,
    observer: Callable[[BatchRecord], object] | None = None,
    **unknown: object,
) -> Any:
    """Make concurrent calls of an ``async def`` share one bulk operation.

    The function is written for one item. Each call runs its body until it awaits
    ``collect(item)``, where it joins the open batch of the function. The batch is flushed
    when it holds ``max_size`` items, when ``max_window`` seconds have passed since it
    opened, or, with ``max_window=0``, on the next turn of the event loop. At the flush
    one member, the leader, resumes with every item, makes the bulk call and returns
    ``scatter(results)``, which routes each member its own result.

    Use it bare (``@batch``) or with options (``@batch(max_window=0.01)``), on functions and
    methods (a method batches per instance; under ``@classmethod`` per class).

    Args:
        fn: The ``async def`` function (bare ``@batch`` only).
        max_window: Seconds (a number or a ``datetime.timedelta``) a batch stays open at most;
            ``0`` flushes on the next loop turn. ``"auto"`` (or ``Auto(ceiling=...)``) tunes
            the flush from what it observes: a batch is due on the next loop turn, and one due
            while the tuner's in-flight limit is reached is held until a running batch ends
            (at most a batch's estimated duration, or the ceiling); ``max_size`` and
            ``max_concurrency`` bound it. ``stats().tuning`` shows its choices.
        max_size: Items per batch at most (``None``: no limit; ``1``: no batching).
        group_by: Called with each call's arguments; calls with different (hashable)
            results never share a batch.
        dedupe: Collect equal (hashable) items once per batch; every duplicate caller
            receives the result routed to its item.
        max_concurrency: Batches of one partition running at once at most (``None``: no
            limit). While every slot is busy, the next batch keeps collecting.
        weight: Called with each item; returns its weight, a number >= 0 (tokens, bytes).
            Needs ``max_weight``.
        max_weight: A batch also closes when its items' weights reach this sum; an item that
            would tip an open batch over it starts the next batch, and an item heavier than
            the whole budget forms a batch of its own. Needs ``weight``.
        max_pending: Calls of one partition waiting (in batches not dispatched yet) at most;
            a call beyond it fails at once with ``OverloadedError``.
        observer: Called with a ``BatchRecord`` when each batch of this function ends (see
            ``add_observer()`` for every function).
        *misplaced: Not options: options given by position (concresce 0.1.0's
            ``@batch(0.05, 100)``) are a ``TypeError`` that shows the keyword form.
        **unknown: Not options: an unknown keyword (1.x-5.x's ``window=``) is a ``TypeError``
            that names the option to use.

    Returns:
        The batching function (or, with options only, a decorator that makes one). It keeps
        the name, docstring, signature and ``__wrapped__`` of ``fn``, and has the methods
        ``stats()``, ``configure()``, ``flush()`` and ``drain()`` (see ``Batched``).

    Raises:
        TypeError: ``fn`` is not an ``async def`` function, or an option has the wrong type.
        ValueError: An option is out of range, or only one of ``weight`` and ``max_weight``
            was given.

    Example:
        ```python
        @batch(max_window=0.05, max_size=100)
        async def fetch_user_score(user_id: int) -> int:
            user_ids = await collect(user_id)
            scores = await db.bulk_fetch_scores(user_ids)
            return scatter(scores)
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
    return build(fn, misplaced, unknown, options, _DEFAULTS, threads=False)


def build(
    fn: Any,
    misplaced: tuple[object, ...],
    unknown: dict[str, object],
    options: dict[str, Any],
    defaults: dict[str, object],
    *,
    threads: bool,
) -> Any:
    """Check the options of ``batch()`` (async) or ``concresce.threads.batch()``, and decorate.

    ``defaults`` are the options' defaults in the decorator called, to tell which were given.
    """
    if misplaced or unknown or isinstance(fn, Real):
        # Options are keyword-only (the overloads say so to type checkers). These parameters
        # exist only to answer the spellings of other releases with the exact fix, keeping
        # the options that were given by keyword.
        keywords = {name: value for name, value in options.items() if value is not defaults[name]}
        if misplaced or unknown or keywords:
            raise TypeError(_misspelled(fn, misplaced, unknown, keywords))
    weigh = check_callable("weight", options["weight"])
    budget = check_weight_limit(options["max_weight"])
    if (weigh is None) != (budget is None):
        given, missing = ("weight", "max_weight") if budget is None else ("max_weight", "weight")
        msg = f"{given} needs {missing}: pass both, e.g. @batch(weight=len, max_weight=4096)"
        raise ValueError(msg)
    decorate = functools.partial(
        _decorate,
        threads=threads,
        max_window=check_window(options["max_window"], threads=threads),
        max_size=check_limit("max_size", options["max_size"]),
        group_by=check_callable("group_by", options["group_by"]),
        dedupe=check_flag("dedupe", options["dedupe"]),
        max_concurrency=check_limit("max_concurrency", options["max_concurrency"]),
        weight=weigh,
        max_weight=budget,
        max_pending=check_limit("max_pending", options["max_pending"]),
        observer=check_callable("observer", options["observer"]),
    )
    return decorate if fn is None else decorate(fn)


def _decorate(
    fn: Any,
    *,
    threads: bool,
    max_window: float | Auto,
    max_size: int | None,
    group_by: Callable[..., Hashable] | None,
    dedupe: bool,
    max_concurrency: int | None,
    weight: Callable[[Any], float] | None,
    max_weight: float | None,
    max_pending: int | None,
    observer: Callable[[BatchRecord], object] | None,
) -> Callable[..., Any]:
    _check_function(fn, threads=threads)
    name = _name_of(fn)
    method = _is_method(fn)
    batcher = Batcher(
        name,
        max_window=max_window,
        max_size=max_size,
        group_by=group_by,
        dedupe=dedupe,
        max_concurrency=max_concurrency,
        weight=weight,
        max_weight=max_weight,
        max_pending=max_pending,
        observer=observer,
        home=ThreadLoop(name) if threads else None,
    )
    instance = _first_parameter(fn) if method else None
    partition = _partitioner(name, instance, group_by)
    wrapper: Any = functools.wraps(fn)(make_wrapper(fn, batcher, partition, instance=instance, threads=threads))
    if not hasattr(fn, "__qualname__"):  # a functools.partial: name it after its function
        wrapper.__name__ = wrapper.__qualname__ = name
    controls = ThreadControls(batcher) if threads else Controls(batcher)
    wrapper.stats = controls.stats
    wrapper.configure = controls.configure
    wrapper.flush = controls.flush
    wrapper.drain = controls.drain
    return cast("Callable[..., Any]", wrapper)


def _partitioner(
    name: str,
    instance: str | None,
    group_by: Callable[..., Hashable] | None,
) -> Callable[[tuple[Any, ...], dict[str, Any]], Hashable] | None:
    """Return the function that computes a call's partition key, or None for one partition.

    ``instance`` names a method's first parameter (``self`` or ``cls``); a method's calls are
    partitioned by ``instance_key()`` of the object passed there, by position or by keyword.
    """
    if group_by is None:
        if instance is None:
            return None

        def by_instance(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
            return instance_key(args[0] if args else kwargs.get(instance))

        return by_instance

    def by_group(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        key = group_by(*args, **kwargs)
        try:
            hash(key)
        except TypeError as error:
            msg = f"{name}: group_by returned an unhashable key {key!r}; return a hashable value"
            raise TypeError(msg) from error
        if instance is not None:
            return (instance_key(args[0] if args else kwargs.get(instance)), key)
        return key

    return by_group


def _first_parameter(fn: Callable[..., Any]) -> str:
    """The name under which a method's calls pass the instance (see ``_is_method``).

    That is the first parameter of ``fn`` itself: a decorator under ``@batch`` may call it
    otherwise than the method it wraps (``inst`` for ``self``). If ``fn`` takes ``*args``
    first, the instance is the first positional argument or, by keyword, the wrapped
    method's ``self``/``cls``.
    """
    own = next(iter(inspect.signature(fn, follow_wrapped=False).parameters.values()), None)
    if own is not None and own.kind is not inspect.Parameter.VAR_POSITIONAL:
        return own.name
    return next(iter(inspect.signature(fn).parameters))


def _is_method(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is defined in a class body and takes ``self`` or ``cls`` first."""
    owner, _, _ = getattr(fn, "__qualname__", "").rpartition(".")
    if not owner or owner.endswith("<locals>"):
        return False
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return (
        bool(parameters)
        and parameters[0].name in {"self", "cls"}
        and parameters[0].kind
        in {
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        }
    )


def _name_of(fn: object) -> str:
    """The name a decorated function goes by, in messages and statistics."""
    if isinstance(fn, functools.partial):  # it has no name of its own
        return f"partial({_name_of(fn.func)})"
    return getattr(fn, "__qualname__", None) or repr(fn)


def _check_function(fn: object, *, threads: bool) -> None:
    kind = type(fn).__name__
    if isinstance(fn, (classmethod, staticmethod)):
        what = "plain `def`" if threads else "async def"
        msg = f"@batch must decorate the {what} function itself; put @{kind} above @batch, not below"
        raise TypeError(msg)
    asynchronous = inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
    if threads and callable(fn) and not asynchronous and not inspect.isgeneratorfunction(fn):
        # A callable object: what its __call__ is decides.
        call = _call_of(fn)
        kinds = (inspect.iscoroutinefunction, inspect.isasyncgenfunction, inspect.isgeneratorfunction)
        if call is fn or not any(kind(call) for kind in kinds):
            return
        fn = call
    if not threads and inspect.iscoroutinefunction(fn):
        return
    if isinstance(fn, Real):
        # Which option a lone number meant is a guess: show the readings that are valid.
        got = f"{fn!r}; options are keyword-only: @batch(max_window={fn!r}) for a window of {fn!r} seconds"
        size = float(fn)
        if size.is_integer() and size >= 1:
            got += f", or @batch(max_size={size:.0f}) for batches of {size:.0f} items"
        msg = f"@batch needs {'a plain `def`' if threads else 'an `async def`'} function, got {got}"
    else:
        msg = _not_for_threads(fn) if threads else _not_async(fn)
    raise TypeError(msg)


def _call_of(fn: object) -> object:
    """What runs when ``fn`` is called: ``fn`` itself, or a callable object's ``__call__``."""
    if inspect.isroutine(fn):
        return fn
    return inspect.getattr_static(type(fn), "__call__", None)


def _not_for_threads(fn: object) -> str:
    """Why ``concresce.threads.batch`` cannot decorate ``fn``."""
    if inspect.iscoroutinefunction(fn):
        return (
            f"concresce.threads.batch decorates a plain `def` function called from threads, got the "
            f"`async def` {fn!r}: decorate it with concresce.batch (and `await collect(item)` in it)"
        )
    if inspect.isasyncgenfunction(fn):
        return f"concresce.threads.batch needs a plain `def` function, got an async generator function {fn!r}"
    if inspect.isgeneratorfunction(fn):
        return (
            f"concresce.threads.batch needs a plain `def` function, got a generator function {fn!r} "
            "(its body would run after the call returned, outside the call)"
        )
    return f"concresce.threads.batch needs a plain `def` function, got {fn!r} of type {type(fn).__name__}"


def _not_async(fn: object) -> str:
    """Why ``concresce.batch`` cannot decorate ``fn``."""
    if inspect.isasyncgenfunction(fn):
        return f"@batch needs an `async def` function, got an async generator function {fn!r}"
    if inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, functools.partial):
        return (
            f"@batch needs an `async def` function, got a plain (not async) function {fn!r}: for a plain "
            "`def` called from threads use concresce.threads.batch (with concresce.threads.collect and "
            "scatter), or make it an `async def`"
        )
    return f"@batch needs an `async def` function, got {fn!r} of type {type(fn).__name__}"


#: The keyword options of ``batch()``, in the order its signature lists them.
_OPTIONS: Final = (
    "max_window",
    "max_size",
    "group_by",
    "dedupe",
    "max_concurrency",
    "weight",
    "max_weight",
    "max_pending",
    "observer",
)
#: Each option's default, to tell which options a call of ``batch()`` passed.
_DEFAULTS: Final[dict[str, object]] = {name: inspect.signature(batch).parameters[name].default for name in _OPTIONS}
#: The options concresce 0.1.0 took by position, in that order: ``@batch(0.05, 100)``.
_POSITIONAL_0_1: Final = ("max_window", "max_size")
#: Keywords of other releases and what they are here (1.x to 5.x: ``window=timedelta(...)``).


def _spelled(options: dict[str, object]) -> str:
    """``@batch(...)`` with these keyword options, in the order of the signature."""
    return ", ".join(f"{name}={options[name]!r}" for name in _OPTIONS if name in options)


def _misspelled(fn: object, misplaced: tuple[object, ...], unknown: dict[str, object], given: dict[str, object]) -> str:
    """The message for options given by position or under a name ``batch()`` does not have.

    ``given`` holds the options passed by keyword (those not at their default): the fix it
    suggests keeps them.
    """
    if unknown:
        name, value = next(iter(unknown.items()))
        option = RENAMED.get(name)
        if option is not None:
            fixed = _spelled({**given, option: value})
            return (
                f"@batch has no option {name}=; it is called {option}= here: @batch({fixed}) "
                "(max_window takes seconds or a datetime.timedelta). Coming from concresce 1.x-5.x? "
                "The leader must also route its results: `return scatter(results)`, not `return results`"
            )
        return unknown_option("@batch", name, _OPTIONS)
    positional = (fn, *misplaced)
    if len(positional) <= len(_POSITIONAL_0_1):
        fixed = _spelled({**dict(zip(_POSITIONAL_0_1, positional, strict=False)), **given})
        return f"@batch takes its options by keyword only: write @batch({fixed}) (0.1.0 took them by position)"
    count = len(positional)
    return f"@batch takes its options by keyword only ({', '.join(_OPTIONS)}); got {count} positional arguments"

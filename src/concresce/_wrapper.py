"""The function ``@batch`` returns: generated, like attrs' methods, with the wrapped signature.

A wrapper written as ``async def wrapper(*args, **kwargs)`` builds an argument tuple and a
keyword dict on every call and unpacks them again to call the body (its cost is measured in
docs/performance.md). So the wrapper is compiled
once per decorated function from ``_TEMPLATE``, with the function's own parameters, and
passes them on by name. Where that cannot be done faithfully (``group_by`` must see the
arguments as the caller passed them; a parameter named like a name the template uses), the
same template is compiled with ``*args, **kwargs``.
"""

from __future__ import annotations

import inspect
import linecache
import sys
from _thread import get_ident
from typing import TYPE_CHECKING, Any, Final, cast

from ._batcher import NO_PARTITION
from ._calls import CALLS, IDLE, LEADING, NESTED, RESUMED, SCATTERED, Call, Resume, nest, unnest
from ._routing import fail
from ._runtime import current_task, departs

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from ._batcher import Batcher

__all__ = ["instance_key", "make_wrapper"]

#: The partition of a method's calls on an instance: its identity, not equality or hash, so
#: unhashable instances work and equal ones stay apart. The members' frames hold the instance
#: while the partition exists, so the id is stable. The one rule for both kinds of wrapper.
instance_key: Final = id

_TEMPLATE: Final = """\
{async_}def wrapper({parameters}):
    task = current_task()
    if task is None:
        # Not inside a task of a runtime concresce knows: an ordinary call (collect() would
        # say why it cannot batch). A thread-batched function's "task" is its thread.
        return {await_}fn({arguments})
    # Call() has no __init__ (a Python-level one costs a frame per call): set its fields.
    call = Call()
    call.batcher = batcher
    # group_by runs here, before the body: if it fails, this call alone fails.
    call.pkey = {pkey}
    # The current call of this task, found by collect() and scatter(). A task runs one
    # call at a time; a nested call of a batched function stacks on top of it.
    outer = CALLS.get(task)
    if outer is None:
        call.state = IDLE
    else:
        call.state = NESTED
        nest(task, outer)  # drain() and the re-entrancy check see every call of the task
    CALLS[task] = call
    try:
        result = {await_}fn({arguments})
    except Resume:
        # A follower unwound from collect(): its result was routed by the leader.
        result = call.value
    except BaseException:
        if not ended_by_error(call):
            raise
        result = call.value
    else:
        if call.state != SCATTERED:  # the leader that routed its batch: nothing to check
            ended_by_return(call)
        elif call.batch.trace is not None:
            call.batch.trace.release()
    finally:
        # After its loop was closed by hand, the entry may be gone already (_closed_loops.py)
        # and must not come back.
        if outer is None:
            try:
                del CALLS[task]
            except KeyError:
                pass
        elif CALLS.get(task) is call:
            CALLS[task] = outer
            unnest(task)
        # This frame may live on in a traceback that the task itself holds: no cycle.
        del task, outer
    return result
"""

# Names the template binds or reads: a parameter of the same name would shadow them.
_RESERVED: Final = frozenset({
    "BaseException", "CALLS", "Call", "IDLE", "KeyError", "NESTED", "NO_PARTITION", "Resume", "RuntimeError",
    "SCATTERED", "args", "batcher", "call", "current_task", "ended_by_error", "ended_by_return", "fn",
    "instance_key", "kwargs", "nest", "outer", "partition", "result", "task", "unnest", "wrapper",
})  # fmt: skip


class _Default:
    """Stands for a default value in the generated ``def``; its repr is the global holding it."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def make_wrapper(
    fn: Callable[..., Any],
    batcher: Batcher,
    partition: Callable[[tuple[Any, ...], dict[str, Any]], Hashable] | None,
    *,
    instance: str | None,
    threads: bool = False,
) -> Callable[..., Any]:
    """Compile the wrapper of ``fn`` (``functools.wraps`` is applied by the caller).

    ``instance`` names a method's ``self``/``cls`` parameter (None for a function): the
    wrapper partitions by ``instance_key()`` of it. With ``threads``, ``fn`` is a plain
    ``def`` (``concresce.threads``): the wrapper is one too, its calls are keyed by thread,
    and it settles batches under the function's lock.
    """
    # The wrapper's globals: a namespace of its own, so fn, batcher and partition are globals
    # rather than closure variables (which would take three slots in the frame of every
    # waiting call).
    namespace: dict[str, Any] = {
        "fn": fn,
        "batcher": batcher,
        "partition": partition,
        "CALLS": CALLS,
        "Call": Call,
        "IDLE": IDLE,
        "NESTED": NESTED,
        "nest": nest,
        "unnest": unnest,
        "Resume": Resume,
        "current_task": get_ident if threads else current_task,
        "ended_by_error": thread_ended_by_error if threads else ended_by_error,
        "ended_by_return": thread_ended_by_return if threads else ended_by_return,
        "instance_key": instance_key,
        "SCATTERED": SCATTERED,
    }
    exact = _exact_signature(fn, namespace) if batcher.group_by is None else None
    if exact is not None and instance is not None and exact[2] != instance:
        # A method under a decorator that hides `self` (say, `*args, **kwargs`): the
        # partition function finds the instance by position or by name.
        exact = None
    if exact is None:
        parameters = arguments = "*args, **kwargs"
        pkey = "NO_PARTITION" if partition is None else "partition(args, kwargs)"
    else:
        parameters, arguments, _ = exact
        pkey = "NO_PARTITION" if instance is None else f"instance_key({instance})"
    namespace["NO_PARTITION"] = NO_PARTITION
    source = _TEMPLATE.format(
        async_="" if threads else "async ",
        await_="" if threads else "await ",
        parameters=parameters,
        arguments=arguments,
        pkey=pkey,
    )
    filename = f"<concresce wrapper of {getattr(fn, '__qualname__', 'a function')} at {id(fn):#x}>"
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 -- our own template
    # Tracebacks through the wrapper show its source lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    wrapper: Callable[..., Any] = namespace["wrapper"]
    return wrapper


def _exact_signature(fn: Callable[..., Any], namespace: dict[str, Any]) -> tuple[str, str, str] | None:
    """Return the ``def`` parameters, the call arguments and the first parameter's name.

    The signature is ``fn``'s own, not that of the function it wraps (``__wrapped__``): a
    decorator built with ``functools.wraps`` may take other parameters than the function
    it decorates, and the wrapper must accept exactly what ``fn`` accepts.
    """
    try:
        signature = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
    parameters: list[inspect.Parameter] = []
    arguments: list[str] = []
    for index, parameter in enumerate(signature.parameters.values()):
        name = parameter.name
        if name in _RESERVED or name.startswith("default_"):
            return None
        default = parameter.default
        if default is not inspect.Parameter.empty:
            holder = f"default_{index}"
            namespace[holder] = default
            default = _Default(holder)
        parameters.append(parameter.replace(annotation=inspect.Parameter.empty, default=default))
        kind = parameter.kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            arguments.append(f"*{name}")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            arguments.append(f"**{name}")
        elif kind is inspect.Parameter.KEYWORD_ONLY:
            arguments.append(f"{name}={name}")
        else:
            arguments.append(name)
    rendered = str(inspect.Signature(parameters))[1:-1]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    first = parameters[0].name if parameters and parameters[0].kind in positional else ""
    return rendered, ", ".join(arguments), first


def ended_by_error(call: Call) -> bool:
    """Settle the batch after the body raised; True if the call returns its routed value.

    Called from the wrapper's ``except`` clause: the exception is the one being handled
    (not a parameter, which would take a slot in the frame of every waiting call).
    """
    error = cast("BaseException", sys.exc_info()[1])
    state = call.state
    if state == LEADING:
        batch = call.batch
        # Its coroutine closed outside its task (a loop closed by hand, the garbage
        # collector): it can never finish. A GeneratorExit the bulk code raised in its own
        # task is a fault like any other exception.
        closing = isinstance(error, GeneratorExit) and CALLS.get(current_task()) is not call
        if closing or departs(error, batch.handovers):
            # The leader's task was cancelled: the followers are not at fault. The earliest
            # one still waiting leads instead and runs the bulk section again.
            batch.hand_over(call)
        else:
            # A fault before scatter(): every follower still waiting gets the exception.
            fail(batch, error, call)
        return False
    return state == RESUMED and _resumed(error)


def _resumed(error: BaseException) -> bool:
    """Whether ``error`` is the resume signal wrapped in a group (re-raise what else it holds).

    User structure may wrap it: a TaskGroup around collect() raises
    BaseExceptionGroup([Resume()]).
    """
    group: Any = error  # BaseExceptionGroup, or the exceptiongroup backport on 3.10
    if isinstance(getattr(group, "exceptions", None), tuple) and hasattr(group, "split"):
        match, rest = group.split(Resume)
        if match is not None:
            if rest is None:
                return True
            raise rest
    return False


def thread_ended_by_error(call: Call) -> bool:
    """``ended_by_error()`` for a thread-batched call: settle the batch under its lock.

    A leader that raised an ``Exception`` before scatter() fails its batch; one that died of
    another ``BaseException`` (``KeyboardInterrupt``, ``SystemExit``) leaves it, and the
    earliest member still waiting runs the bulk section again (at-least-once).
    """
    error = cast("BaseException", sys.exc_info()[1])
    state = call.state
    if state == LEADING:
        batch = call.batch
        with call.batcher.home.lock:
            if isinstance(error, Exception):
                fail(batch, error, call)
            else:
                batch.hand_over(call)
        return False
    return state == RESUMED and _resumed(error)


def thread_ended_by_return(call: Call) -> None:
    """``ended_by_return()`` for a thread-batched call, under its function's lock."""
    if call.state == LEADING:
        with call.batcher.home.lock:  # it fails the batch, which the other threads see
            ended_by_return(call)
    else:
        ended_by_return(call)


def ended_by_return(call: Call) -> None:
    """Check how a call that returned normally left its batch."""
    state = call.state
    name = call.batcher.name
    if state == LEADING:
        batch = call.batch
        error = RuntimeError(
            f"{name}: the leader returned without calling scatter(), so the other members of "
            "its batch got no result; end the leader's code with `return scatter(results)` "
            "(returning the list of results itself, as concresce 1.x-5.x did, routes nothing)",
        )
        fail(batch, error, call)
        raise error
    if state == RESUMED:
        msg = (
            f"{name}: this call was a follower whose result had been routed, but its code "
            "swallowed the internal signal that unwinds it from collect() (an `except "
            "BaseException` around collect()?) and returned; let BaseException propagate"
        )
        raise RuntimeError(msg)

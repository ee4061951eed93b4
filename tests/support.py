"""Test helpers: a virtual-clock event loop, hygiene checks and event recording.

Import what you need with ``from tests.support import ...``. ``conftest.py`` wires
these helpers into the ``anyio_backend``, ``clock`` and autouse hygiene fixtures; the
functions are public so that tests (and property tests driving their own loops with
:func:`run_virtual`) can use them directly.

Which "let the loop run" helper to use:

* :func:`wait_all_tasks_blocked` (this module's, not anyio's): returns once every
  other task of the loop is blocked (waiting on a future, a lock, a timer, a thread...)
  and no callback is queued. Use it to say "everything that can happen without time
  passing has happened". It never advances the virtual clock. anyio's function of the
  same name polls with ``sleep(0.1)``, so on the virtual clock up to 0.1 s of virtual
  time may pass (a batch window may fire during the wait) and on uvloop it sleeps for
  real; and it ignores queued callbacks (it may return before a ``call_soon`` flush).
* :func:`settle`: yields to the loop exactly ``n`` times. Use it when the number of loop
  turns is the point (``max_window=0`` flushes "on the next turn of the loop") or when a
  task is never blocked (it spins on ``sleep(0)``).
* ``await asyncio.sleep(t)`` on the virtual clock: let exactly ``t`` virtual seconds
  pass, running every timer that falls due on the way, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import importlib.util
import inspect
import itertools
import math
import os
import selectors
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Iterator, Mapping, Sequence

    from _typeshed import FileDescriptorLike

__all__ = [
    "EAGER_TASKS_AVAILABLE",
    "SLOW_TESTS_VAR",
    "Recorder",
    "VirtualClock",
    "VirtualClockEventLoop",
    "batcher_of",
    "call_open_on_another_loop",
    "cancel_and_wait",
    "copy_of",
    "current_clock",
    "describe_objects",
    "describe_tasks",
    "engine_classes",
    "gc_collect_harder",
    "live_engine_objects",
    "make_echo",
    "new_virtual_loop",
    "partitions_of",
    "pending_tasks",
    "property_examples",
    "record_exception_handler_calls",
    "run_virtual",
    "settle",
    "slow_tests",
    "wait_all_tasks_blocked",
]

T = TypeVar("T")

#: ``asyncio.eager_task_factory`` exists (Python 3.12+).
EAGER_TASKS_AVAILABLE: Final = sys.version_info >= (3, 12)

#: Set to a true value (``CONCRESCE_SLOW_TESTS=1``, as ``.ci/run`` does) to run the property
#: tests with their full numbers of examples; by default they run a tenth, so that
#: ``uv run pytest`` stays fast on a new clone.
SLOW_TESTS_VAR: Final = "CONCRESCE_SLOW_TESTS"


def slow_tests() -> bool:
    """Whether ``CONCRESCE_SLOW_TESTS`` asks for the full property runs."""
    return os.environ.get(SLOW_TESTS_VAR, "").strip().lower() not in {"", "0", "false", "no", "off"}


def property_examples(full: int) -> int:
    """Hypothesis' ``max_examples`` for a property whose full run is ``full`` examples.

    ``full`` with ``CONCRESCE_SLOW_TESTS`` set, a tenth of it (at least 10) otherwise.
    """
    return full if slow_tests() else max(10, full // 10)


#: The engine's internal per-call, per-batch and per-partition classes, by the private module
#: that defines each.
ENGINE_CLASSES: Final = {"Call": "concresce._calls", "Batch": "concresce._batches", "Partition": "concresce._batches"}


# --------------------------------------------------------------------------------------
# Virtual clock
# --------------------------------------------------------------------------------------


@final
class VirtualClock:
    """The virtual time of one :class:`VirtualClockEventLoop`, starting at 0.0.

    Time only moves when the loop has nothing to run (it then jumps straight to the next
    timer) or when a test calls :meth:`advance` / :meth:`advance_to`.
    """

    __slots__ = ("_now",)

    def __init__(self) -> None:
        self._now = 0.0

    def __repr__(self) -> str:
        return f"<VirtualClock now={self._now!r}>"

    def now(self) -> float:
        """Return the current virtual time (what ``loop.time()`` returns)."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by ``seconds`` (>= 0).

        Timers that fall due run on the loop's next iteration, in deadline order.
        Prefer ``await asyncio.sleep(seconds)``, which lets every timer on the way run
        at its own deadline; use this to make time pass "behind the loop's back".
        """
        if not (seconds >= 0 and math.isfinite(seconds)):
            msg = f"seconds must be >= 0 and finite, got {seconds!r}"
            raise ValueError(msg)
        self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        """Move virtual time forward to the absolute time ``when`` (>= :meth:`now`)."""
        if not (when >= self._now and math.isfinite(when)):
            msg = f"cannot move the clock from {self._now!r} to {when!r}"
            raise ValueError(msg)
        self._now = when


@final
class _AutojumpSelector(selectors.BaseSelector):
    """The loop's real selector, except that idle waits jump the virtual clock.

    ``select(timeout)`` first polls for I/O without blocking: threads finishing
    ``run_in_executor``/``to_thread`` work and ``call_soon_threadsafe`` wake the loop
    through its self-pipe, so they still work. If nothing is ready and ``timeout`` is
    positive, the loop was about to sleep until its next timer: the clock jumps to that
    deadline instead (trio's ``MockClock(autojump_threshold=0)``). With
    ``timeout=None`` no timer exists at all, so only I/O or a thread can make progress:
    block for real (a deadlock then trips pytest-timeout instead of spinning).
    """

    def __init__(self, loop: VirtualClockEventLoop) -> None:
        self._selector = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: FileDescriptorLike, events: int, data: object = None) -> selectors.SelectorKey:
        return self._selector.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._selector.unregister(fileobj)

    def modify(self, fileobj: FileDescriptorLike, events: int, data: object = None) -> selectors.SelectorKey:
        return self._selector.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._selector.select(0)
        if ready:
            return ready
        if timeout is None:
            return self._selector.select(None)
        if timeout > 0:
            self._loop.autojump(timeout)
        return []

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._selector.get_map()

    def close(self) -> None:
        self._selector.close()


class VirtualClockEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is a :class:`VirtualClock`.

    ``asyncio.sleep(10)`` returns at once with ``loop.time()`` exactly 10.0 later;
    timers run in deadline order; I/O and worker threads work as usual. Caveat of any
    autojump clock: while a worker thread runs and a timer is pending, the clock jumps
    to the timer rather than waiting for the thread (``wait_for(to_thread(f), 5)``
    times out).
    """

    # BaseEventLoop's heap of TimerHandles; declared for type checkers only.
    _scheduled: list[asyncio.TimerHandle]

    def __init__(self) -> None:
        self.clock: Final = VirtualClock()
        super().__init__(_AutojumpSelector(self))

    def time(self) -> float:
        """Return the virtual time."""
        return self.clock.now()

    # BaseEventLoop runs the timers due before ``time() + _clock_resolution``. At large
    # virtual times a fixed resolution (1 ns) vanishes in rounding (1e9 + 1e-9 == 1e9),
    # so a timer due exactly now would never run and the loop would spin: never count
    # less than one unit in the last place of the current time.
    @property
    def _clock_resolution(self) -> float:
        return max(self._resolution, math.ulp(self.clock.now()))

    @_clock_resolution.setter
    def _clock_resolution(self, value: float) -> None:  # set by BaseEventLoop.__init__
        self._resolution = value

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        """Join the executor's threads without a time limit.

        Python 3.12+ runners pass a timeout (300 s); on the virtual clock those seconds would
        pass at once while the joining thread works, and the join would be abandoned with a
        RuntimeWarning. Joining a finished executor takes real milliseconds, so no limit is
        needed here.
        """
        del timeout
        await super().shutdown_default_executor()

    def autojump(self, timeout: float) -> None:
        """Let ``timeout`` seconds pass at once; called when the loop would sleep."""
        now = self.clock.now()
        # _run_once computed ``timeout = heap[0].when() - time()`` (capped at a day):
        # land exactly on that deadline, since ``now + (when - now)`` may round.
        if self._scheduled and self._scheduled[0].when() - now <= timeout:
            self.clock.advance_to(max(now, self._scheduled[0].when()))
        else:
            self.clock.advance_to(now + timeout)


def copy_of(error: object, original: BaseException) -> bool:
    """Whether ``error`` is a follower's copy of the leader's ``original`` exception.

    A follower gets its own copy (decision 8): another object of the same type, with the same
    arguments and message, and no traceback of the leader's.
    """
    return (
        isinstance(error, BaseException)
        and error is not original
        and type(error) is type(original)
        and error.args == original.args
        and str(error) == str(original)
    )


def batcher_of(fn: Any) -> Any:
    """The engine's per-function state behind a decorated function's controls."""
    return fn.stats.__self__.batcher


def partitions_of(fn: Any) -> dict[object, Any]:
    """The engine's table of the live partitions of a decorated function (empty when idle)."""
    partitions: dict[object, Any] = batcher_of(fn).partitions
    return partitions


def new_virtual_loop(*, eager: bool = False, debug: bool = True) -> VirtualClockEventLoop:
    """Return a new :class:`VirtualClockEventLoop` in debug mode.

    With ``eager=True`` the loop uses ``asyncio.eager_task_factory`` when the Python
    version has it (see :data:`EAGER_TASKS_AVAILABLE`) and is otherwise unchanged.
    """
    loop = VirtualClockEventLoop()
    loop.set_debug(debug)
    if eager and sys.version_info >= (3, 12):
        loop.set_task_factory(asyncio.eager_task_factory)
    return loop


def current_clock() -> VirtualClock:
    """Return the virtual clock of the running loop.

    Raises:
        RuntimeError: the running loop has no virtual clock (e.g. uvloop).
    """
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualClockEventLoop):
        msg = (
            f"the running loop ({type(loop).__name__}) has no virtual clock: mark the "
            "test @pytest.mark.virtual_clock or drive it with run_virtual()"
        )
        raise RuntimeError(msg)  # noqa: TRY004 -- a wrong runtime state, not a wrong argument
    return loop.clock


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]], *, eager: bool = False) -> T:
    """Run ``main()`` on a fresh virtual-clock loop, like ``asyncio.run``, and check it.

    Meant for hypothesis tests that need one fresh loop (and clock at 0.0) per example.
    Tasks still pending when ``main()`` returns are cancelled, then async generators and
    the default executor are shut down and the loop is closed. If ``main()`` returned,
    leftover tasks or calls to the loop's exception handler ("Task exception was never
    retrieved", "Task was destroyed but it is pending", ...) raise ``AssertionError``.
    If ``main()`` raised, that exception propagates unchanged.
    """
    loop = new_virtual_loop(eager=eager)
    handler_calls = record_exception_handler_calls(loop)
    problems: list[str] = []
    try:
        result = loop.run_until_complete(main())
        leftovers = pending_tasks(loop)
        if leftovers:
            problems.append(
                f"{len(leftovers)} task(s) still pending after main() returned:\n" + describe_tasks(leftovers)
            )
        del leftovers
    finally:
        try:
            loop.run_until_complete(cancel_and_wait(pending_tasks(loop)))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            # Finalize unreachable futures/tasks now, while calls are still recorded.
            gc.collect()
    if handler_calls:
        problems.append(_describe_handler_calls(handler_calls))
    if problems:
        raise AssertionError("\n".join(problems))
    return result


# --------------------------------------------------------------------------------------
# Hygiene checks
# --------------------------------------------------------------------------------------


def record_exception_handler_calls(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Record every call to ``loop.call_exception_handler`` from now on.

    Returns a list that receives one formatted description per call; the loop's previous
    handler (or the default one) still runs. Only strings are kept, so the record does
    not keep the exception, its frames or the task alive.
    """
    calls: list[str] = []
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        calls.append(_format_context(context))
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    loop.set_exception_handler(handler)
    return calls


def _format_context(context: Mapping[str, Any]) -> str:
    lines = [str(context.get("message", "<no message>"))]
    lines.extend(
        f"{key}: {value!r}" for key, value in context.items() if key not in {"message", "exception", "source_traceback"}
    )
    exception = context.get("exception")
    if isinstance(exception, BaseException):
        lines.extend(traceback.format_exception(exception))
    return "\n".join(lines)


def _describe_handler_calls(calls: Iterable[str]) -> str:
    calls = list(calls)
    body = "\n---\n".join(calls)
    return f"the loop's exception handler was called {len(calls)} time(s):\n{body}"


def pending_tasks(
    loop: asyncio.AbstractEventLoop | None = None,
) -> list[asyncio.Task[Any]]:
    """Return the tasks of ``loop`` (default: the running loop) that are not done.

    The calling task, if any, is left out.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    current = asyncio.current_task(loop) if loop.is_running() else None
    tasks = [task for task in asyncio.all_tasks(loop) if task is not current]
    return sorted(tasks, key=lambda task: task.get_name())


def describe_tasks(tasks: Iterable[asyncio.Task[Any]]) -> str:
    """Describe tasks one per line (in debug mode, with where each was created)."""
    return "\n".join(f"  {task!r}" for task in tasks)


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]], *, timeout: float = 5.0) -> list[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait for them to end; return those that did not.

    Their outcomes (results, exceptions) are retrieved, so none is reported as "never
    retrieved".
    """
    if not tasks:
        return []
    for task in tasks:
        task.cancel()
    done, stuck = await asyncio.wait(tasks, timeout=timeout)
    for task in done:
        if not task.cancelled():
            task.exception()
    return list(stuck)


def gc_collect_harder() -> None:
    """Run the garbage collector until finalizers have had their chance (trio's)."""
    for _ in range(3):
        gc.collect()


_engine_classes: tuple[type[object], ...] | None = None


def engine_classes() -> tuple[type[object], ...]:
    """Return the engine's internal call, batch and partition classes."""
    global _engine_classes  # noqa: PLW0603 -- import once, lazily
    if _engine_classes is None:
        _engine_classes = tuple(
            getattr(importlib.import_module(module), name) for name, module in ENGINE_CLASSES.items()
        )
    return _engine_classes


def live_engine_objects(ignore: Collection[int] = ()) -> list[object]:
    """Return the live instances of :func:`engine_classes` not listed in ``ignore``.

    ``ignore`` holds the ``id()`` of objects to leave out (those alive before a test).

    Call :func:`gc_collect_harder` first to not count garbage awaiting collection.
    """
    classes = set(engine_classes())
    if not classes:
        return []
    return [obj for obj in gc.get_objects() if type(obj) in classes and id(obj) not in ignore]


def describe_objects(objects: Sequence[object], *, limit: int = 10) -> str:
    """Describe objects one per line, with the types of what refers to them.

    The ``objects`` sequence itself and the frames of the calling stack are left out of
    the referrers. A referrer may also be invisible to the collector: a frame that is
    executing, or an object frozen by ``gc.freeze()``.
    """
    stack: set[int] = set()
    frame = inspect.currentframe()
    while frame is not None:
        stack.add(id(frame))
        frame = frame.f_back
    lines: list[str] = []
    for obj in itertools.islice(objects, limit):  # a slice would be one more referrer
        referrers = sorted(
            {
                type(referrer).__qualname__
                for referrer in gc.get_referrers(obj)
                if referrer is not objects and id(referrer) not in stack
            }
        )
        lines.append(f"  {obj!r} (referred to by: {', '.join(referrers) or 'nothing visible'})")
    if len(objects) > limit:
        lines.append(f"  ... and {len(objects) - limit} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Recording and scheduling helpers
# --------------------------------------------------------------------------------------


class Recorder(list[object]):
    """A list of events, in the order they happened.

    ``record("start")`` appends ``"start"``; ``record("join", 3)`` appends
    ``("join", 3)``. Assert the whole history at once: ``assert record == [...]``.
    """

    def __call__(self, *event: object) -> None:
        """Append one event: the single argument, or the tuple of all of them."""
        if len(event) == 1:
            self.append(event[0])
        else:
            self.append(event)

    def take(self) -> list[object]:
        """Return the events recorded so far and forget them (for staged asserts)."""
        events = list(self)
        self.clear()
        return events


async def settle(n: int = 10) -> None:
    """Yield to the event loop ``n`` times (``await asyncio.sleep(0)``)."""
    for _ in range(n):
        await asyncio.sleep(0)


def make_echo(
    record: Callable[[list[Any]], object] | None = None,
    *,
    gate: asyncio.Event | None = None,
    bulk: float = 0.0,
    **options: Any,
) -> Any:
    """A ``@batch(**options)`` function that echoes ``("ok", item)`` to every caller.

    Its leader passes each batch's items to ``record`` (if given), then waits for ``gate``
    (if given) and sleeps ``bulk`` seconds (if not 0) before it scatters.
    """
    from concresce import batch, collect, scatter  # noqa: PLC0415 -- support works without the engine

    @batch(**options)
    async def echo(item: Any) -> Any:
        items = await collect(item)
        if record is not None:
            record(items)
        if gate is not None:
            await gate.wait()
        if bulk:
            await asyncio.sleep(bulk)
        return scatter([("ok", x) for x in items])

    return echo


@contextlib.contextmanager
def call_open_on_another_loop(
    fn: Callable[[str], Awaitable[Any]], end: Callable[[], Awaitable[object]]
) -> Iterator[list[Any]]:
    """Run ``fn("other")`` on an event loop in another thread; enter once it waits in its open batch.

    On exit, that loop runs ``await end()``, which must let the batch go (a flush, a drain),
    and the call's result is appended to the list the context manager gives.
    """
    opened = threading.Event()
    release = threading.Event()
    results: list[Any] = []

    async def other() -> Any:
        task = asyncio.create_task(fn("other"))
        await wait_all_tasks_blocked()
        opened.set()
        await asyncio.get_running_loop().run_in_executor(None, release.wait)
        await end()
        return await task

    thread = threading.Thread(target=lambda: results.append(asyncio.run(other())))
    thread.start()
    try:
        assert opened.wait(10)
        yield results
    finally:
        release.set()
        thread.join(10)


async def wait_all_tasks_blocked(*, max_turns: int = 10_000) -> None:
    """Return once nothing can run on the loop before time passes or I/O arrives.

    That is: every other task is blocked (on a future, a lock, an event, a timer, a
    thread...) and, on asyncio loops, no callback is queued (``call_soon``) or due. On
    loops whose queue cannot be seen (uvloop), the tasks must stay blocked for a few
    consecutive turns instead. Unlike ``anyio.wait_all_tasks_blocked`` (which polls with
    ``sleep(0.1)`` and ignores queued callbacks), this polls with ``sleep(0)``: it never
    moves the virtual clock and never sleeps for real.

    Raises:
        AssertionError: the loop was still busy after ``max_turns`` turns.
    """
    loop = asyncio.get_running_loop()
    this_task = asyncio.current_task()
    needed = 1 if _has_queued_callbacks(loop) is not None else _OPAQUE_LOOP_QUIET_TURNS
    quiet = 0
    runnable: list[asyncio.Task[Any]] = []
    for _ in range(max_turns):
        await asyncio.sleep(0)
        runnable = [task for task in asyncio.all_tasks(loop) if task is not this_task and not _is_blocked(task)]
        if runnable or _has_queued_callbacks(loop):
            quiet = 0
            continue
        quiet += 1
        if quiet >= needed:
            return
    msg = f"the loop was still busy after {max_turns} turns; runnable tasks:\n" + describe_tasks(runnable)
    raise AssertionError(msg)


# Consecutive quiet turns required where queued callbacks are invisible: covers chains of
# call_soon callbacks a few links long (a flush that resolves a future that wakes a task).
_OPAQUE_LOOP_QUIET_TURNS: Final = 5


def _is_blocked(task: asyncio.Task[Any]) -> bool:
    # Task has no public "what am I waiting on"; anyio reads the same attribute.
    waiter = getattr(task, "_fut_waiter", None)
    return isinstance(waiter, asyncio.Future) and not waiter.done()


def _has_queued_callbacks(loop: asyncio.AbstractEventLoop) -> bool | None:
    """Whether callbacks are queued or timers due; ``None`` if the loop does not say."""
    # asyncio's BaseEventLoop keeps them in _ready (a deque of Handles, our own wake-up
    # not yet among them while we run) and _scheduled (a heap of TimerHandles).
    ready = getattr(loop, "_ready", None)
    scheduled = getattr(loop, "_scheduled", None)
    if not isinstance(loop, asyncio.BaseEventLoop) or ready is None or scheduled is None:
        return None
    return bool(ready) or (bool(scheduled) and scheduled[0].when() <= loop.time())

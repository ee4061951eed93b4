"""The torture harness: runs schedules of calls with faults everywhere and checks every outcome.

One :class:`Runner` plays one :class:`~tests.torture.schedules.Schedule` on the running loop.
The batched function's body records, for every leader run, the items it received, its
partition and how its bulk section ended (routed, fault, departure); every result is a pure
function of the run and the item (``("r", run, call, value)``), and every exception a leader
makes names its run, so a result that reaches the wrong caller shows. The oracle then works
out, for each call, the run that must have served it (the last run that received its item,
or under ``dedupe`` the run that received the latest equal item that arrived before it) and
checks the call's outcome against that run's end; plus the global invariants: every call
resolves exactly once (a schedule that does not finish within its horizon is a hang), a bulk
section runs again for a member only after a real departure, no batch exceeds ``max_size``
(distinct) items or ``max_weight``, mixes partitions or loops, or breaks ``max_concurrency``;
no traceback grows with the batch; ``drain()`` returns once the calls it waited for are done.

The drivers here run asyncio loops; ``harness_trio.py`` runs the same schedules and oracle on
trio (``run_one(schedule, "trio")``).

After each schedule (drivers :func:`run_one`, :func:`run_threads`): no engine object
(``Call``/``Batch``/``Partition``), item, task or loop is left alive, the function's
partition table is empty, and nothing reached the loop's exception handler or
``sys.unraisablehook``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import gc
import itertools
import logging
import random
import re
import sys
import threading
import time
import traceback
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from tests.support import gc_collect_harder, live_engine_objects, new_virtual_loop, partitions_of
from tests.torture.functions import Arg, GroupError, Host, batch_options, function_for
from tests.torture.schedules import (
    HAS_CANCELLING,
    TRIO_FAULTS,
    Features,
    Options,
    Schedule,
    draw_options,
    draw_schedule,
    simpler,
)
from tests.torture.schedules_threads_api import draw_sync_schedule

from concresce import BatchRoutingError, MissingResultError, OverloadedError, batch, collect, scatter

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

__all__ = ["TOTALS", "Failure", "Totals", "minimize", "run_abandoned", "run_one", "run_threads", "torture"]

#: Schedule seconds after which a call that has not ended is taken to hang (virtual clock).
HORIZON: Final = 1000.0
#: Real seconds after which a call on a real-clock loop is taken to hang.
REAL_HORIZON: Final = 20.0
#: Schedule seconds are multiplied by this on a real clock (uvloop): windows of 0.1-2 ms.
REAL_SCALE: Final = 0.1
#: The most traceback entries an outcome's exception (with its causes and contexts) may have.
#: Independent of the batch size: about 15 frames are the caller's own; a traceback that
#: grows with the number of followers goes far past it in batches of 60-200 calls.
MAX_TRACEBACK: Final = 40
EPSILON: Final = 1e-9

_RUN_TAG: Final = re.compile(r"\[run (\d+)\]")
_TAGGED: Final = re.compile(r"^[a-z]+: ")
_TIMEOUT_ERRORS: Final = (TimeoutError, asyncio.TimeoutError)


# --------------------------------------------------------------------------------------
# Items, arguments, results and the exceptions of the schedule
# --------------------------------------------------------------------------------------


class Item:
    """A collected item: which runner and call made it, its partition, value and weight."""

    __slots__ = ("__weakref__", "index", "part", "runner", "value", "weight")

    def __init__(self, runner: int, index: int, part: tuple[Any, Any], value: int, weight: float) -> None:
        self.runner = runner
        self.index = index
        self.part = part
        self.value = value
        self.weight = weight

    def __repr__(self) -> str:
        return f"Item(#{self.index}, value={self.value})"


class DedupeItem(Item):
    """An item equal to every item of the same runner, partition and value."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DedupeItem)
            and other.value == self.value
            and other.part == self.part
            and other.runner == self.runner
        )

    def __hash__(self) -> int:
        return hash((self.value, self.part))


class TortureError(Exception):
    """An exception made by the schedule; its message names the run (``[run N]``)."""

    def __init__(self, run: int, what: str) -> None:
        super().__init__(f"[run {run}] {what}")
        self.run = run


class ItemError(TortureError):
    """A per-item exception result."""

    def __init__(self, run: int, index: int) -> None:
        super().__init__(run, f"item of call {index}")
        self.index = index


class LeaderError(TortureError):
    """A bulk section's fault before ``scatter()``."""


class LeaderAfterError(TortureError):
    """What a leader raises after ``scatter()``."""


class KeyFunctionError(TortureError):
    """What ``scatter(key=...)``'s key function raises."""


class SiblingError(Exception):
    """What the failing sibling task of a ``TaskGroup`` raises."""


NO_SCATTER: Final = "<returned without scatter()>"


class AwaitingExit:
    """An async context manager whose ``__aexit__`` awaits (a checkpoint of the runner's runtime)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def __aenter__(self) -> None:
        await self.runner.sleep(0)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.runner.sleep(0)


# --------------------------------------------------------------------------------------
# The batched functions
# --------------------------------------------------------------------------------------

RUNNER: Final[contextvars.ContextVar[Runner]] = contextvars.ContextVar("torture_runner")


async def _body(host: object, arg: Arg) -> Any:
    return await RUNNER.get().body(host, arg)


def _make_function(kind: tuple[bool, ...]) -> Any:
    """The ``async def`` batched function of a kind (see ``functions.function_for()``)."""
    decorate = batch(**batch_options(kind))
    if kind[1]:  # a method

        class Method(Host):
            __slots__ = ()

            @decorate
            async def work(self, arg: Arg) -> Any:
                return await _body(self, arg)

        return Method

    @decorate
    async def work(arg: Arg) -> Any:
        return await _body(None, arg)

    return work


# --------------------------------------------------------------------------------------
# What one run records
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Run:
    """One leader's resumption from ``collect()`` with its items, and how its bulk section ended.

    ``end``: ``None`` (still running), ``"scattered"``, ``"routing"`` (``scatter()`` raised a
    BatchRoutingError), ``"no_scatter"``, ``"fault"`` (an Exception), ``"departed"`` (a
    CancelledError with a cancellation request, 3.11+), ``"ce_fault"`` (a CancelledError
    without one, 3.11+), ``"cancelled"`` (a CancelledError, 3.10), ``"closed"`` (another
    BaseException: the coroutine was closed).
    """

    number: int
    seq: int
    leader: int
    part: tuple[Any, Any]
    items: list[Any]
    plan: Any
    end: str | None = None
    end_seq: int | None = None
    end_time: float | None = None
    error: tuple[type[BaseException], str] | None = None

    def describe(self) -> str:
        indices = [getattr(item, "index", item) for item in self.items]
        return f"run {self.number} (leader #{self.leader}, items of {indices}, ended {self.end})"


@dataclass(eq=False)
class Record:
    """What happened to one call."""

    index: int
    plan: Any
    part: tuple[Any, Any]
    task: asyncio.Task[Any] | None = None
    started: int = 0
    join_seq: int | None = None
    waiting_at_join: int = 0
    in_collect: bool = False
    refused: bool = False
    exit_time: float | None = None
    exit_seq: int | None = None
    leading: Run | None = None
    own_timeout: bool = False
    cancel_requests: int = 0
    cancel_seq: int | None = None
    wrapper_timed_out: bool = False
    outcome: tuple[str, Any] = ("pending", None)
    scope: Any = None  # trio: the call's own cancel scope (the scheduler's cancellations)
    end_seq: int | None = None  # trio: when its outcome was recorded


@dataclass
class Totals:
    """What a torture run did and found, summed over its schedules."""

    calls: int = 0
    schedules: int = 0
    runs: int = 0
    hangs: int = 0
    misroutes: int = 0
    leaks: int = 0
    other: int = 0
    failed_schedules: int = 0
    max_traceback: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, other: Totals) -> None:
        for f in dataclasses.fields(self):
            if f.name == "outcomes":
                self.outcomes.update(other.outcomes)
            elif f.name == "max_traceback":
                self.max_traceback = max(self.max_traceback, other.max_traceback)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def line(self) -> str:
        return (
            f"{self.calls} calls, {self.schedules} schedules, {self.runs} leader runs: "
            f"{self.hangs} hangs, {self.misroutes} misroutes, {self.leaks} leaks, {self.other} other "
            f"problems ({self.failed_schedules} failing schedules); longest traceback "
            f"{self.max_traceback} entries; {self.seconds:.1f} s"
        )


#: Every torture test adds its totals here; tests/torture/conftest.py prints them.
TOTALS: Final[dict[str, Totals]] = {}
_TOTALS_LOCK: Final = threading.Lock()


@dataclass
class Failure:
    """A schedule that failed: where it came from, what went wrong, and the schedule itself."""

    mode: str
    seed: str
    index: int
    problems: list[str]
    schedule: Schedule
    minimal: Schedule | None = None

    def describe(self) -> str:
        shown = self.problems[:12]
        more = len(self.problems) - len(shown)
        lines = [
            f"--- {self.mode} schedule {self.index} of seed {self.seed!r}: {len(self.problems)} problem(s)",
            *(f"  * {p}" for p in shown),
            *([f"  ... and {more} more"] if more > 0 else []),
            f"  replay: tests.torture.harness.replay({self.mode!r}, {self.seed!r}, {self.index})",
            f"  schedule: {self.schedule!r}",
        ]
        if self.minimal is not None:
            lines.append(f"  minimal (same kind of problem): {self.minimal!r}")
        return "\n".join(lines)


def category(problem: str) -> str:
    """The kind of a problem, from its first word: hang, misroute, leak, or other."""
    head = problem.split(":", 1)[0]
    return head if head in {"hang", "misroute", "leak"} else "other"


# --------------------------------------------------------------------------------------
# Running one schedule
# --------------------------------------------------------------------------------------

_runner_ids = itertools.count()


class Runner:
    """Plays one schedule on the running loop; :meth:`check` then lists the problems.

    This one plays it on asyncio; ``harness_trio.TrioRunner`` on trio. What differs between
    runtimes is in the methods marked so (``sleep()``, ``group()``, ``cancel_self()``,
    ``departure()``, ``member_within()``, ``request_cancel()``, ``requested()``, ``now()``,
    ``main()``...) and in these attributes; the oracle is shared.
    """

    #: What a deadline the body opened raises when it expires.
    timeout_errors: tuple[type[BaseException], ...] = _TIMEOUT_ERRORS
    #: Whether a call whose task was cancelled must end cancelled. Not on trio, where a
    #: cancellation is delivered at the next checkpoint: a call that reaches none ends as it
    #: would have.
    cancel_is_final: bool = True
    #: The code of a runtime's own parts of a bulk section (besides lead(), results_for()...).
    bulk_codes: frozenset[Any] = frozenset()

    def __init__(
        self,
        schedule: Schedule,
        *,
        scale: float = 1.0,
        sabotage: bool = False,
        configure: bool = True,
    ) -> None:
        self.schedule = schedule
        self.options = options = schedule.options
        self.scale = scale
        self.sabotage = sabotage  # misroute on purpose (to test the oracle)
        self.ident = next(_runner_ids)
        self.fn, self.host_class = function_for(options, _make_function, configure=configure)
        self.hosts = [self.host_class(n) for n in range(2)] if self.host_class is not None else []
        self.item_class = DedupeItem if options.dedupe else Item
        self.records = [
            Record(
                index,
                plan,
                (plan.group if options.group_by else None, plan.instance if options.method else None),
            )
            for index, plan in enumerate(schedule.calls)
        ]
        self.runs: list[Run] = []
        self.seq = itertools.count(1)
        self.suspended: dict[tuple[Any, Any], set[int]] = defaultdict(set)
        self.running: dict[tuple[Any, Any], int] = defaultdict(int)
        self.problems: list[str] = []
        self.drain_reports: list[tuple[float, set[int], float, int]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.outer: list[asyncio.Task[Any]] = []
        self.timers: list[asyncio.TimerHandle] = []
        self.max_traceback = 0

    # -- the batched function's body ------------------------------------------------------

    async def body(self, host: object, arg: Arg) -> Any:
        """The body of the batched function: optional wait and time-out, then member()."""
        rec = self.records[arg.index]
        rec.started += 1
        if host is not None and host is not self.hosts[rec.plan.instance]:
            self.problems.append(f"misroute: call #{rec.index} runs with self={host!r}")
        try:
            if rec.plan.wait:
                await self.sleep(rec.plan.wait)
            if rec.plan.body_timeout is None:
                return await self.member(rec)
            return await self.member_within(rec, rec.plan.body_timeout)
        except BaseException as error:
            run = rec.leading
            if run is not None and run.end is None:
                self.end_run(run, error)
            raise

    async def member_within(self, rec: Record, seconds: float) -> Any:
        """``member()`` under a deadline the body opens (around collect() and the bulk section)."""
        cm = asyncio.timeout(seconds * self.scale)
        try:
            async with cm:
                return await self.member(rec)
        finally:
            rec.own_timeout = cm.expired()

    async def member(self, rec: Record) -> Any:
        plan = rec.plan
        item = self.item_class(self.ident, rec.index, rec.part, plan.value, plan.weight)
        items = await self.gather(rec, item)
        del item
        return await self.lead(rec, items)

    async def collect(self, rec: Record, item: Item) -> list[Any]:
        """``collect(item)``, noting when the call joins and when it leaves."""
        suspended = self.suspended[rec.part]
        rec.waiting_at_join = len(suspended)
        rec.join_seq = next(self.seq)
        rec.in_collect = True
        suspended.add(rec.index)
        try:
            items = await collect(item)
        except OverloadedError:
            rec.refused = True
            raise
        finally:
            rec.in_collect = False
            rec.exit_time = self.now()
            rec.exit_seq = next(self.seq)
            self.suspended[rec.part].discard(rec.index)
        # A leader: its run starts now, with the members still waiting (the structure
        # around collect() may still await, or fail, before the bulk section).
        self.begin_run(rec, items)
        return items

    async def gather(self, rec: Record, item: Item) -> list[Any]:
        """``await collect(item)`` inside the structure the call's plan asks for."""
        structure = rec.plan.structure
        if structure is None:
            return await self.collect(rec, item)
        if structure == "finally_await":
            try:
                return await self.collect(rec, item)
            finally:
                await self.sleep(0)
        if structure == "finally_sleep":
            try:
                return await self.collect(rec, item)
            finally:
                await self.sleep(0.001)
        if structure == "acm":
            async with AwaitingExit(self):
                return await self.collect(rec, item)
        if structure == "cancel_in_finally":
            try:
                return await self.collect(rec, item)
            finally:
                self.cancel_self(rec)
                await self.sleep(0)
        async with self.group():
            return await self.collect(rec, item)

    # -- what differs between runtimes (asyncio here; see harness_trio.py) -----------------

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` schedule seconds (a checkpoint when 0)."""
        await asyncio.sleep(seconds * self.scale)

    def group(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A task group, around collect() (the ``taskgroup`` structure)."""
        return asyncio.TaskGroup()

    def cancel_self(self, rec: Record) -> None:
        """The call cancels its own task (it is running)."""
        self.request_cancel(rec, asyncio.current_task())

    def departure(self, error: BaseException) -> str:
        """How a leader's run ended that raised ``error`` before scatter() (see Run.end)."""
        if isinstance(error, asyncio.CancelledError):
            if HAS_CANCELLING:
                task = asyncio.current_task()
                return "departed" if task is not None and task.cancelling() else "ce_fault"
            return "cancelled"
        return "fault" if isinstance(error, Exception) else "closed"

    async def lead(self, rec: Record, items: list[Any]) -> Any:
        """The leader's part: the bulk section (with its faults), then scatter()."""
        del items
        run = rec.leading
        assert run is not None
        plan = run.plan
        steps = plan.steps
        for step in range(len(steps) + 1):
            if step == plan.fault_step:
                await self.bulk_fault(run)
            if step == 1:
                self.cancel_flagged("during_bulk", run.part)
            if step < len(steps):
                await self.sleep(steps[step])
        if plan.fault == "no_scatter":
            self.end_run(run, None, "no_scatter")
            return NO_SCATTER
        own = self.route(run)
        if plan.after is not None:
            await self.sleep(plan.after)
        if plan.fault == "after":
            raise LeaderAfterError(run.number, "after scatter()")
        return own

    def route(self, run: Run) -> Any:
        """``scatter()`` the run's results; then cancel the calls flagged for right after it."""
        results, options = self.results_for(run)
        failure: BaseException | None = None
        try:
            own = scatter(results, **options)
        except (ItemError, MissingResultError) as error:
            # The leader's own share: every follower's was routed first.
            self.end_run(run, None, "scattered")
            failure = error
        except BatchRoutingError as error:
            self.end_run(run, error, "routing")
            failure = error
        except BaseException as error:  # noqa: BLE001 -- a results generator's, raised below
            failure = error
        else:
            self.end_run(run, None, "scattered")
        # Outside the except clauses: trio makes the Cancelled it delivers to another task at
        # once, and gives it the exception being handled here as its __context__.
        self.cancel_flagged("after_scatter", run.part)
        if failure is not None:
            try:
                raise failure
            finally:
                del failure
        return own

    async def bulk_fault(self, run: Run) -> None:
        fault = run.plan.fault
        if fault == "raise":
            raise LeaderError(run.number, "bulk section fault")
        if fault == "spurious":
            msg = f"[run {run.number}] spurious"
            raise asyncio.CancelledError(msg)
        if fault == "cancelled_future":
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            loop.call_soon(functools.partial(fut.cancel, msg=f"[run {run.number}] cancelled future"))
            await fut
        if fault == "self_cancel":
            self.request_cancel(self.records[run.leader], asyncio.current_task())
            await self.sleep(0)

    def results_for(self, run: Run) -> tuple[Any, dict[str, Any]]:
        """The leader's results for its items, and scatter()'s keyword arguments."""
        plan = run.plan
        number = run.number
        items = run.items

        def share(item: Item) -> object:
            if item.value in plan.failing:
                return ItemError(number, item.index)
            return ("r", number, item.index, item.value)

        shares = [share(item) for item in items]
        if self.sabotage and len(shares) > 1:
            shares.reverse()
        routing = plan.routing
        if plan.fault == "wrong_length":
            shares.append(None)
        if routing == "list":
            return shares, {}
        if routing == "tuple":
            return tuple(shares), {}
        if routing == "gen":
            return _generate(shares, number, fail=plan.fault == "gen_raises"), {}
        present = [(item, s) for item, s in zip(items, shares, strict=False) if item.value not in plan.missing]
        if routing == "dict_key":
            # Equal items must have equal keys: under dedupe the key is the value alone.
            dedupe = self.options.dedupe
            return {_key(item, dedupe=dedupe): s for item, s in present}, {
                "key": functools.partial(_key_of, number=number, fail=plan.fault == "key_raises", dedupe=dedupe)
            }
        results = dict(present)
        if routing == "dict_default":
            return results, {"default": ("default", number)}
        return results, {}

    # -- bookkeeping of runs ----------------------------------------------------------------

    def begin_run(self, rec: Record, items: list[Any]) -> Run:
        number = len(self.runs)
        plans = self.schedule.plans
        run = Run(number, next(self.seq), rec.index, rec.part, list(items), plans[number % len(plans)])
        self.runs.append(run)
        rec.leading = run
        part = rec.part
        running = self.running[part] = self.running[part] + 1
        limit = self.options.max_concurrency
        if limit is not None and running > limit:
            self.problems.append(f"concurrency: {running} bulk sections at once in partition {part}, limit {limit}")
        self.cancel_flagged("on_flush", part)
        return run

    def end_run(self, run: Run, error: BaseException | None, end: str | None = None) -> None:
        self.running[run.part] -= 1
        run.end_seq = next(self.seq)
        run.end_time = self.now()
        if error is not None:
            run.error = (type(error), _safe_str(error))
            with contextlib.suppress(AttributeError, TypeError):
                error.torture_run = run.number  # type: ignore[attr-defined]
        if end is None:
            end = self.departure(error) if error is not None else "closed"
        run.end = end

    # -- cancelling -------------------------------------------------------------------------

    def request_cancel(self, rec: Record, task: asyncio.Task[Any] | None = None) -> None:
        task = task or rec.task
        if task is not None and task.cancel():
            rec.cancel_requests += 1
            if rec.cancel_seq is None:
                rec.cancel_seq = next(self.seq)

    def cancel_flagged(self, phase: str, part: tuple[Any, Any]) -> None:
        for index in sorted(self.suspended.get(part, ())):
            cancel = self.records[index].plan.cancel
            if cancel is not None and cancel.phase == phase:
                self.request_cancel(self.records[index])

    # -- the scheduler ----------------------------------------------------------------------

    def now(self) -> float:
        loop = self.loop
        return loop.time() if loop is not None else 0.0

    def invoke(self, rec: Record) -> Coroutine[Any, Any, Any]:
        plan = rec.plan
        arg = Arg(rec.index, plan.group, plan.group_fails, self.options.observer)
        style = plan.style
        if self.host_class is None:
            return self.fn(arg=arg) if style >= 2 else self.fn(arg)
        host = self.hosts[plan.instance]
        if style == 0:
            return host.work(arg)  # type: ignore[no-any-return]
        if style == 1:
            return self.host_class.work(host, arg)  # type: ignore[no-any-return]
        if style == 2:
            return self.host_class.work(self=host, arg=arg)  # type: ignore[no-any-return]
        return host.work(arg=arg)  # type: ignore[no-any-return]

    def launch(self, rec: Record) -> None:
        plan = rec.plan
        wrap = plan.wrap
        delay = plan.wrap_delay * self.scale
        if wrap == "taskgroup":
            self.outer.append(asyncio.create_task(self.in_taskgroup(rec, delay)))
        else:
            rec.task = asyncio.create_task(self.invoke(rec))
            if wrap == "wait_for":
                self.outer.append(asyncio.create_task(self.with_wait_for(rec, rec.task, delay)))
            elif wrap == "timeout":
                self.outer.append(asyncio.create_task(self.with_timeout(rec.task, delay)))
            else:
                self.outer.append(rec.task)
        if plan.cancel is not None and plan.cancel.phase == "at":
            loop = asyncio.get_running_loop()
            self.timers.append(loop.call_later(plan.cancel.delay * self.scale, self.request_cancel, rec))

    async def with_wait_for(self, rec: Record, task: asyncio.Task[Any], delay: float) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):  # the outcome is read from the task
            try:
                await asyncio.wait_for(task, delay)
            except asyncio.TimeoutError:
                rec.wrapper_timed_out = True
                raise

    async def with_timeout(self, task: asyncio.Task[Any], delay: float) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(delay):
                await task

    async def in_taskgroup(self, rec: Record, delay: float) -> None:
        async def sibling() -> None:
            await asyncio.sleep(delay)
            msg = f"sibling of call {rec.index} fails"
            raise SiblingError(msg)

        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.TaskGroup() as group:
                # The sibling first: an eager call may end (and abort the group) as it starts.
                group.create_task(sibling())
                rec.task = group.create_task(self.invoke(rec))

    async def drain_at(self) -> None:
        # The calls that joined a batch that has not ended: in collect(), or leading a batch.
        members = {rec.index for rec in self.records if rec.in_collect}
        members |= {run.leader for run in self.runs if run.end is None}
        started = self.now()
        await self.fn.drain()
        self.drain_reports.append((started, members, self.now(), next(self.seq)))

    async def main(self, *, horizon: float = HORIZON) -> None:
        """Start every call and drain at its time, then wait for all of them (up to ``horizon``)."""
        RUNNER.set(self)
        self.loop = loop = asyncio.get_running_loop()
        start = loop.time()
        events = sorted(
            [(plan.start, 1, index) for index, plan in enumerate(self.schedule.calls)]
            + [(when, 0, -1) for when in self.schedule.drains]
        )
        drains: list[asyncio.Task[None]] = []
        for when, kind, index in events:
            due = start + when * self.scale
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if kind == 0:
                drains.append(asyncio.create_task(self.drain_at()))
            else:
                self.launch(self.records[index])
        waited = [*self.outer, *drains]
        _, pending = await asyncio.wait(waited, timeout=horizon * self.scale) if waited else (set(), set())
        for timer in self.timers:
            timer.cancel()
        if pending:
            self.report_hang(pending)
            for task in pending:
                task.cancel()
            _, stuck = await asyncio.wait(pending, timeout=horizon * self.scale)
            if stuck:
                self.problems.append(f"hang: {len(stuck)} task(s) still pending after being cancelled")
        for task in drains:
            if not task.cancelled() and task.exception() is not None:
                self.problems.append(f"drain: drain() raised {task.exception()!r}")
        self.read_outcomes()

    def read_outcomes(self) -> None:
        for rec in self.records:
            rec.outcome = _outcome_of(rec.task)

    def forget_tasks(self) -> None:
        """Drop the tasks and outcomes (of a loop closed by hand: its tasks are garbage now)."""
        for rec in self.records:
            rec.task = None
            rec.outcome = ("dropped", None)

    def report_hang(self, pending: set[asyncio.Task[Any]]) -> None:
        hung = [rec.index for rec in self.records if rec.task is not None and not rec.task.done()]
        states = {
            i: (
                "in collect()"
                if self.records[i].in_collect
                else "leading"
                if self.records[i].leading is not None
                else "not in collect()"
            )
            for i in hung
        }
        self.problems.append(
            f"hang: calls {hung} (and {len(pending)} task(s) in all) still pending after {HORIZON} "
            f"schedule seconds: {states}"
        )

    # -- the oracle -------------------------------------------------------------------------

    def check(self, *, finished: bool = True) -> list[str]:
        """Every problem of the run (after main() returned, or on the calls done so far)."""
        problems = list(self.problems)
        by_call: dict[int, list[Run]] = defaultdict(list)
        runs_of_part: dict[tuple[Any, Any], list[Run]] = defaultdict(list)
        for run in self.runs:
            problems += self.check_run(run)
            runs_of_part[run.part].append(run)
            for item in run.items:
                if isinstance(item, Item) and item.runner == self.ident:
                    by_call[item.index].append(run)
        for rec in self.records:
            if rec.outcome[0] in {"pending", "unstarted"} and not finished:
                continue
            why = self.check_call(rec, by_call, runs_of_part)
            if why is not None:
                tag, _, rest = why.partition(": ") if _TAGGED.match(why) else ("other", "", why)
                problems.append(f"{tag}: call #{rec.index} ({_plan_summary(rec.plan)}): {rest}")
        problems += self.check_drains(by_call, runs_of_part)
        return problems

    def check_drains(
        self,
        by_call: dict[int, list[Run]],
        runs_of_part: dict[tuple[Any, Any], list[Run]],
    ) -> list[str]:
        """drain() returned once the calls that had joined when it was called had their outcome, not later."""
        problems = []
        for _, members, _, returned_seq in self.drain_reports:
            for index in sorted(members):
                rec = self.records[index]
                if rec.leading is not None and (rec.leading.end_seq or returned_seq + 1) > returned_seq:
                    problems.append(f"drain: returned while call #{index} still led {rec.leading.describe()}")
                if (rec.exit_seq or returned_seq + 1) < returned_seq:
                    continue
                run, _, _ = self.serving_run(rec, by_call, runs_of_part)
                if run is None or (run.end_seq or returned_seq + 1) > returned_seq:
                    problems.append(f"drain: returned while call #{index}, which it waited for, had no outcome yet")
        if self.scale != 1.0:
            return problems  # a real clock: no exact times to compare
        for started, members, returned, _ in self.drain_reports:
            times = [self.records[i].exit_time or started for i in members]
            times += [run.end_time or started for run in self.runs if run.leader in members]
            done = max(times, default=started)
            if returned > max(done, started) + EPSILON:
                problems.append(
                    f"drain: drain() called at {started} returned at {returned}, though the calls it "
                    f"waited for ({sorted(members)}) had left collect() by {done}"
                )
        return problems

    def check_run(self, run: Run) -> list[str]:
        options = self.options
        problems = []
        items = run.items
        foreign = [item for item in items if not isinstance(item, Item) or item.runner != self.ident]
        if foreign:
            return [f"misroute: {run.describe()} received items of other loops or schedules: {foreign!r}"]
        if any(item.part != run.part for item in items):
            problems.append(f"partitions {sorted({repr(i.part) for i in items})} mixed in one batch")
        if options.max_size is not None and len(items) > options.max_size:
            problems.append(f"{len(items)} items, more than max_size={options.max_size}")
        values = [item.value for item in items]
        if options.dedupe and len(set(values)) != len(values):
            problems.append(f"equal items under dedupe: values {values}")
        if options.max_weight is not None and len(items) > 1:
            weight = sum(item.weight for item in items)
            if weight > options.max_weight + EPSILON:
                problems.append(f"weight {weight} over max_weight={options.max_weight}")
        seqs = [self.records[item.index].join_seq or 0 for item in items]
        if seqs != sorted(seqs):
            problems.append("items not in arrival order")
        if not items or items[0].index != run.leader:
            problems.append("the leader's own item is not the first")
        gone = [item.index for item in items if self.gone_before(self.records[item.index], run)]
        if gone:
            problems.append(f"items of calls {gone}, cancelled before the leader resumed")
        return [f"batch: {run.describe()}: {p}" for p in problems]

    def foreign_frames(self, rec: Record, error: BaseException) -> list[str]:
        """The frames of other calls, or of a bulk section ``rec`` never ran, that its outcome holds.

        Each caller's traceback is its own (decision 8): an exception routed to several
        callers as one object collects the frames of each, and keeps them (and the leader's,
        with its items) alive.
        """
        found: dict[str, None] = {}
        for link in _chain(error):
            tb = link.__traceback__
            while tb is not None:
                frame = tb.tb_frame
                code = frame.f_code
                if code is _BODY_CODE:
                    other = frame.f_locals.get("rec")
                    if isinstance(other, Record) and other.index != rec.index:
                        found[f"call #{other.index}"] = None
                elif (code in _BULK_CODES or code in self.bulk_codes) and rec.leading is None:
                    found[f"a bulk section ({code.co_name})"] = None
                tb = tb.tb_next
        return list(found)

    def gone_before(self, rec: Record, run: Run) -> bool:
        """Whether ``rec`` had left its batch when ``run``'s leader resumed (its item must not be there)."""
        return rec.cancel_seq is not None and rec.cancel_seq < run.seq

    def serving_run(
        self,
        rec: Record,
        by_call: dict[int, list[Run]],
        runs_of_part: dict[tuple[Any, Any], list[Run]],
    ) -> tuple[Run | None, list[Run], Item | None]:
        """The run whose end decides ``rec``'s outcome, the earlier runs that had its item, and its slot's item."""
        own = by_call.get(rec.index)
        if own:
            run = own[-1]
            return run, own[:-1], next(item for item in run.items if item.index == rec.index)
        if not self.options.dedupe or rec.join_seq is None:
            return None, [], None
        best: tuple[int, int] | None = None
        found: tuple[Run, Item] | None = None
        for run in runs_of_part.get(rec.part, ()):
            if run.seq < rec.join_seq:
                continue
            for item in run.items:
                if not isinstance(item, Item) or item.runner != self.ident:
                    continue
                seq = self.records[item.index].join_seq or 0
                if item.value == rec.plan.value and seq < rec.join_seq:
                    key = (seq, run.number)
                    if best is None or key > best:
                        best, found = key, (run, item)
        if found is None:
            return None, [], None
        return found[0], [], found[1]

    def requested(self, rec: Record) -> bool:
        """Whether somebody asked to cancel the call's task (its outcome may then be CancelledError)."""
        if HAS_CANCELLING:
            return rec.task is not None and rec.task.cancelling() > 0
        return rec.cancel_requests > 0 or rec.wrapper_timed_out

    def check_call(  # noqa: C901, PLR0911, PLR0912 -- one rule per outcome
        self,
        rec: Record,
        by_call: dict[int, list[Run]],
        runs_of_part: dict[tuple[Any, Any], list[Run]],
    ) -> str | None:
        kind, value = rec.outcome
        if rec.started > 1:
            return f"its body ran {rec.started} times"
        if kind == "pending":
            return "hang: its task never ended"
        if kind == "unstarted":
            return "its task was never created"
        if kind in {"exc", "cancelled"}:
            frames = _traceback_size(value)
            self.max_traceback = max(self.max_traceback, frames)
            if frames > MAX_TRACEBACK:
                return f"traceback: {type(value).__name__} with {frames} traceback entries"
            foreign = self.foreign_frames(rec, value)
            if foreign:
                return f"traceback: {_show(kind, value)} holds the frames of {', '.join(foreign)}"
        # A task group around collect() may wrap what the call raised in groups (trio's
        # nursery wraps a follower's error, not the leader's, raised after it): judge each level.
        levels = [value]
        if kind == "exc" and rec.plan.structure == "taskgroup":
            levels = _group_levels(value)
            value = levels[-1]
        timeouts = self.timeout_errors
        if self.requested(rec):
            if kind == "cancelled" or (kind == "exc" and isinstance(value, timeouts) and rec.own_timeout):
                return None
            if self.cancel_is_final:
                return f"its task was cancelled, yet it ended with {_show(kind, value)}"
        if rec.own_timeout and kind == "exc" and isinstance(value, timeouts):
            return None
        if rec.refused:
            limit = self.options.max_pending
            if limit is None or rec.waiting_at_join < limit or rec.index in by_call:
                return f"OverloadedError with {rec.waiting_at_join} calls waiting, max_pending={limit}"
            if kind == "exc" and isinstance(value, OverloadedError):
                return None
            return f"refused with OverloadedError, yet ended with {_show(kind, value)}"
        if rec.plan.group_fails and self.options.group_by:
            if kind == "exc" and isinstance(value, GroupError) and rec.join_seq is None:
                return None
            return f"group_by raised for it, yet it ended with {_show(kind, value)}"
        run, prior, slot_item = self.serving_run(rec, by_call, runs_of_part)
        if run is None or slot_item is None:
            return f"ended with {_show(kind, value)} but no leader received its item"
        why = self.check_prior(rec, run, prior)
        if why is not None:
            return why
        first = None
        for level in reversed(levels):
            tagged = _run_of(level) if kind in {"exc", "cancelled"} else None
            if tagged is not None and tagged != run.number and not (kind == "cancelled" and run.end == "departed"):
                why = f"misroute: got {_show(kind, level)} from run {tagged}, but was served by {run.describe()}"
            else:
                why = self.check_outcome(rec, run, prior=prior, slot_item=slot_item, kind=kind, value=level)
            if why is None:
                return None
            first = first or why
        return first

    def check_prior(self, rec: Record, run: Run, prior: list[Run]) -> str | None:
        if HAS_CANCELLING:
            rerun = [r for r in prior if r.end != "departed"]
            if rerun:
                return (
                    f"rerun: its item was in {rerun[0].describe()}, which did not depart, and again in {run.describe()}"
                )
        elif len(prior) > 1 or any(r.end != "cancelled" for r in prior):
            return f"rerun: its item was in {[r.describe() for r in prior]} before {run.describe()}"
        return None

    def check_outcome(  # noqa: C901, PLR0911, PLR0912 -- one rule per end of a run
        self,
        rec: Record,
        run: Run,
        *,
        prior: list[Run],
        slot_item: Item,
        kind: str,
        value: Any,
    ) -> str | None:
        end = run.end
        shown = _show(kind, value)
        leader = run.leader == rec.index
        if end == "scattered":
            expected = self.share(run, slot_item)
            if leader and not isinstance(expected, BaseException) and run.plan.fault == "after":
                expected = LeaderAfterError(run.number, "after scatter()")
            if isinstance(expected, MissingResultError):
                key = expected.key
                if kind == "exc" and isinstance(value, MissingResultError) and _same_key(value.key, key):
                    return None
            elif isinstance(expected, BaseException):
                if kind == "exc" and type(value) is type(expected) and _safe_str(value) == str(expected):
                    return None
            elif kind == "ok" and value == expected:
                return None
            what = "misroute" if kind == "ok" or isinstance(value, TortureError) else "other"
            return f"{what}: got {shown}, but {run.describe()} routed it {expected!r}"
        if end in {"fault", "routing"} and run.error is not None:
            error_type, message = run.error
            if kind == "exc" and type(value) is error_type and _safe_str(value) == message:
                return None
            return f"other: got {shown}, but {run.describe()} raised {error_type.__name__}({message!r})"
        if end == "no_scatter":
            if kind == "exc" and isinstance(value, RuntimeError) and "scatter()" in str(value):
                return None
            return f"other: got {shown}, but {run.describe()} returned without scatter()"
        if end == "ce_fault":
            # Every member gets the leader's exception: its type and message (an asyncio task
            # gives its CancelledError's message to the first to read it, the others get none).
            if kind == "cancelled" and (run.error is None or not _safe_str(value) or _same_error(value, run.error)):
                return None
            if not leader and kind == "exc" and _is_stray_cancellation(value, run.error):
                return None  # trio: a Cancelled the leader raised reaches followers as a RuntimeError
            return f"other: got {shown}, but {run.describe()} raised {_error_text(run.error)} (a fault)"
        if end == "cancelled":  # Python 3.10: the second CancelledError in a batch is a fault
            if kind == "cancelled" and (leader or prior or self.options.dedupe):
                return None
            return f"other: got {shown}, but {run.describe()} was cancelled"
        if end == "departed":
            if leader and run.error is not None and kind == "exc" and _same_error(value, run.error):
                # Its task was cancelled, and its bulk code raised an error of its own (trio:
                # the leader departs whatever it raised while its cancel scope is cancelled).
                return None
            return f"hang: ({shown}) was left behind by {run.describe()}; no member re-ran it"
        if end is None:
            return f"hang: ({shown}) is in {run.describe()}, which never ended"
        return f"other: got {shown} from {run.describe()}"

    def share(self, run: Run, item: Item) -> object:
        """What ``run`` routed to the slot of ``item`` (see results_for())."""
        plan = run.plan
        keyed = plan.routing.startswith("dict")
        if keyed and item.value in plan.missing:
            if plan.routing == "dict_default":
                return ("default", run.number)
            key = _key(item, dedupe=self.options.dedupe) if plan.routing == "dict_key" else item
            return MissingResultError("missing", key)
        if item.value in plan.failing:
            return ItemError(run.number, item.index)
        return ("r", run.number, item.index, item.value)


def _plan_summary(plan: Any) -> str:
    """The call's plan in a few words, for problem messages."""
    parts = [f"value {plan.value}"]
    parts += [
        f"{name} {getattr(plan, name)!r}" for name in ("structure", "wrap", "body_timeout") if getattr(plan, name)
    ]
    if plan.cancel is not None:
        parts.append(f"cancel {plan.cancel.phase}")
    return ", ".join(parts)


def _generate(shares: list[object], number: int, *, fail: bool) -> Iterator[object]:
    for position, share in enumerate(shares):
        if fail and position == len(shares) // 2:
            raise LeaderError(number, "results generator fails")
        yield share


def _key(item: Item, *, dedupe: bool) -> object:
    return ("k", item.value) if dedupe else ("k", item.index, item.value)


def _key_of(item: Item, *, number: int, fail: bool, dedupe: bool) -> object:
    if fail:
        raise KeyFunctionError(number, "key function fails")
    return _key(item, dedupe=dedupe)


def _is_stray_cancellation(value: object, error: Any) -> bool:
    """A follower's RuntimeError caused by the trio.Cancelled its leader raised as a fault."""
    cause = getattr(value, "__cause__", None)
    return (
        isinstance(value, RuntimeError)
        and "raised trio.Cancelled while its task was not cancelled" in _safe_str(value)
        and type(cause).__name__ == "Cancelled"
        and (error is None or _same_error(cause, error))
    )


def _same_key(got: object, expected: object) -> bool:
    if isinstance(expected, DedupeItem):
        return got == expected  # under dedupe the engine may look up any of the equal items
    if isinstance(expected, Item):
        return got is expected
    return got == expected


def _outcome_of(task: asyncio.Task[Any] | None) -> tuple[str, Any]:
    if task is None:
        return ("unstarted", None)
    if not task.done():
        return ("pending", None)
    if task.cancelled():
        try:
            task.result()
        except asyncio.CancelledError as error:
            return ("cancelled", error)
        return ("cancelled", None)  # pragma: no cover -- result() of a cancelled task raises
    error = task.exception()
    if error is not None:
        return ("exc", error)
    return ("ok", task.result())


def _unwrap_group(error: BaseException) -> BaseException:
    while isinstance(getattr(error, "exceptions", None), tuple) and len(error.exceptions) == 1:  # type: ignore[attr-defined]
        error = error.exceptions[0]  # type: ignore[attr-defined]
    return error


#: The code of a call's body (its frame names the call) and of a leader's bulk section.
_BODY_CODE: Final = Runner.body.__code__
_BULK_CODES: Final = frozenset(
    {
        Runner.lead.__code__,
        Runner.bulk_fault.__code__,
        Runner.results_for.__code__,
        _generate.__code__,
        _key_of.__code__,
    }
)


def _group_levels(error: BaseException) -> list[BaseException]:
    """``error``, and while it is a group of one exception, that exception (outermost first)."""
    levels = [error]
    while isinstance(getattr(error, "exceptions", None), tuple) and len(error.exceptions) == 1:  # type: ignore[attr-defined]
        error = error.exceptions[0]  # type: ignore[attr-defined]
        levels.append(error)
    return levels


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen or len(seen) > 20:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__, *getattr(current, "exceptions", ())]


def _traceback_size(error: BaseException | None) -> int:
    return sum(len(traceback.extract_tb(e.__traceback__, limit=1000)) for e in _chain(error))


def _run_of(error: BaseException | None) -> int | None:
    """The run an exception names (``torture_run`` or ``[run N]``), following ``__cause__``."""
    current = error
    for _ in range(5):
        if current is None:
            return None
        tagged = getattr(current, "torture_run", None)
        if isinstance(tagged, int):
            return tagged
        match = _RUN_TAG.search(_safe_str(current))
        if match is not None:
            return int(match.group(1))
        current = current.__cause__
    return None


def _safe_str(value: object) -> str:
    """``str(value)``, or what its ``__str__`` raised (an exception copied without its fields)."""
    try:
        return str(value)
    except Exception as error:  # noqa: BLE001 -- shown in the problem, not raised
        return f"<str() raised {error!r}>"


def _same_error(value: object, error: tuple[type[BaseException], str]) -> bool:
    """Whether ``value`` is of the type and has the message the leader's exception had."""
    return type(value) is error[0] and _safe_str(value) == error[1]


def _error_text(error: tuple[type[BaseException], str] | None) -> str:
    return "an exception" if error is None else f"{error[0].__name__}({error[1]!r})"


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as error:  # noqa: BLE001 -- GroupKey(2) has no repr, on purpose
        return f"<{type(value).__name__} whose repr() raised {error!r}>"


def _show(kind: str, value: object) -> str:
    if kind == "ok":
        return f"result {_safe_repr(value)}"
    if kind == "cancelled":
        name = "CancelledError" if value is None else type(value).__name__
        text = "" if value is None else _safe_str(value)
        return name + (f"({text!r})" if text else "")
    return f"{type(value).__name__}({_safe_str(value)!r})"


# --------------------------------------------------------------------------------------
# Drivers: one schedule on a fresh loop, with every leak check
# --------------------------------------------------------------------------------------


class Hooks:
    """Records what reaches a loop's exception handler and ``sys.unraisablehook`` meanwhile."""

    def __init__(self, *, expect_destroyed: bool = False) -> None:
        self.calls: list[str] = []
        self.expect_destroyed = expect_destroyed
        self.previous_hook = sys.unraisablehook

    def handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if self.expect_destroyed and message.startswith("Task was destroyed but it is pending"):
            return
        exception = context.get("exception")
        text = "".join(traceback.format_exception(exception)) if isinstance(exception, BaseException) else ""
        self.calls.append(f"loop exception handler: {message} {text}".strip())

    def unraisable(self, unraisable: Any) -> None:
        text = "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))
        self.calls.append(f"unraisable exception in {unraisable.object!r}: {text}")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        sys.unraisablehook = self.unraisable
        try:
            yield
        finally:
            sys.unraisablehook = self.previous_hook


@contextlib.contextmanager
def quiet_observer_logs() -> Iterator[None]:
    """Keep the observer's (expected) failures out of the test log: a long run makes thousands."""
    logger = logging.getLogger("concresce")
    handler = logging.NullHandler()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.propagate = propagate
        logger.removeHandler(handler)


def new_loop(mode: str) -> asyncio.AbstractEventLoop:
    """A fresh event loop of the mode, in release mode (debug mode triples the cost of a call)."""
    if mode == "uvloop":
        import uvloop  # noqa: PLC0415 -- not on Windows

        loop = uvloop.new_event_loop()
    else:
        loop = new_virtual_loop(eager=mode == "eager", debug=False)
    loop.set_debug(False)
    return loop


def _finish_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers, timeout=5))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


def run_one(
    schedule: Schedule,
    mode: str = "default",
    *,
    sabotage: bool = False,
    check_table: bool = True,
) -> tuple[list[str], Totals]:
    """Run ``schedule`` on a fresh loop of ``mode``; return its problems and totals.

    Modes: ``default`` (virtual clock), ``eager`` (virtual clock, eager tasks on 3.12+), ``uvloop``
    (real clock, times scaled down), ``trio`` (``harness_trio.py``), ``sync`` (``harness_threads_api.py``).
    """
    if mode in {"trio", "sync"}:
        from tests.torture import harness_threads_api, harness_trio  # noqa: PLC0415 -- they import this module

        run = harness_trio.run_trio if mode == "trio" else harness_threads_api.run_sync
        return run(schedule, sabotage=sabotage, check_table=check_table)
    if schedule.stop is not None:
        return run_abandoned(schedule)
    totals = Totals(schedules=1, calls=len(schedule.calls))
    hooks = Hooks()
    baseline = {id(obj) for obj in live_engine_objects()}
    real = mode == "uvloop"
    loop = new_loop(mode)
    loop.set_exception_handler(hooks.handler)
    runner = Runner(schedule, scale=REAL_SCALE if real else 1.0, sabotage=sabotage)
    fn = runner.fn
    fn.stats(reset=True)
    with hooks.installed():
        try:
            loop.run_until_complete(runner.main(horizon=REAL_HORIZON / REAL_SCALE if real else HORIZON))
            problems = runner.check()
        finally:
            _finish_loop(loop)
        stats_problems = [] if sabotage else _check_stats(fn, runner)
        totals.runs = len(runner.runs)
        totals.max_traceback = runner.max_traceback
        totals.outcomes.update(_kind(rec.outcome) for rec in runner.records)
        items = [weakref.ref(item) for run in runner.runs for item in run.items if isinstance(item, Item)]
        loop_ref = weakref.ref(loop)
        del runner, loop
        gc.collect()
    problems += stats_problems + [f"other: {call}" for call in hooks.calls]
    problems += _leaks(baseline, loop_ref, items, fn if check_table else None)
    return problems, _count(totals, problems)


def _check_stats(fn: Any, runner: Runner) -> list[str]:
    """The function's statistics over the schedule agree with what its calls did."""
    stats = fn.stats(reset=True)
    refused = sum(rec.refused for rec in runner.records)
    joined = sum(rec.join_seq is not None for rec in runner.records) - refused
    problems = []
    if stats.calls != joined:
        problems.append(f"stats: {stats.calls} calls counted, {joined} calls joined a batch")
    if stats.shed != refused:
        problems.append(f"stats: {stats.shed} calls counted as shed, {refused} were refused")
    if stats.open_now or stats.in_flight_now:
        problems.append(f"stats: {stats.open_now} open and {stats.in_flight_now} in-flight batches after the run")
    return problems


def _kind(outcome: tuple[str, Any]) -> str:
    kind, value = outcome
    if kind == "exc":
        return type(_unwrap_group(value)).__name__
    return kind


def _leaks(
    baseline: set[int],
    loop_ref: weakref.ref[Any],
    items: list[weakref.ref[Any]],
    fn: Any,
) -> list[str]:
    problems = []
    leaked = live_engine_objects(ignore=baseline)
    if leaked:
        problems.append(f"leak: {len(leaked)} engine object(s) alive after the schedule: {leaked[:5]!r}")
    del leaked
    if loop_ref() is not None:
        problems.append("leak: the closed loop is still alive")
    alive = [ref() for ref in items if ref() is not None]
    if alive:
        problems.append(f"leak: {len(alive)} item(s) still alive: {alive[:5]!r}")
    if fn is not None and partitions_of(fn):
        problems.append(f"leak: the partition table is not empty: {_safe_repr(list(partitions_of(fn))[:5])}")
        partitions_of(fn).clear()  # so that the next schedules are judged on their own
    return problems


def _count(totals: Totals, problems: list[str]) -> Totals:
    kinds = Counter(category(p) for p in problems)
    totals.hangs += kinds["hang"]
    totals.misroutes += kinds["misroute"]
    totals.leaks += kinds["leak"]
    totals.other += kinds["other"]
    totals.failed_schedules += bool(problems)
    return totals


def run_abandoned(schedule: Schedule) -> tuple[list[str], Totals]:
    """Run ``schedule`` until ``schedule.stop``, then close its loop by hand with calls pending.

    The calls that ended by then are checked; after the loop is closed and its tasks are
    collected, nothing may stay alive (engine objects, items, the loop) nor stay in the
    function's partition table, and nothing may be reported as unraisable.
    """
    totals = Totals(schedules=1, calls=len(schedule.calls))
    hooks = Hooks(expect_destroyed=True)
    baseline = {id(obj) for obj in live_engine_objects()}
    loop = new_loop("default")
    loop.set_exception_handler(hooks.handler)
    runner = Runner(schedule)
    fn = runner.fn
    with hooks.installed():
        main = loop.create_task(runner.main())
        loop.run_until_complete(asyncio.sleep(schedule.stop or 0.0))
        done = main.done()
        if not done:
            runner.read_outcomes()
        problems = runner.check(finished=done)
        totals.runs = len(runner.runs)
        totals.outcomes.update(_kind(rec.outcome) for rec in runner.records)
        loop.close()  # by hand: pending tasks are neither cancelled nor awaited
        items = [weakref.ref(item) for run in runner.runs for item in run.items if isinstance(item, Item)]
        loop_ref = weakref.ref(loop)
        runner.forget_tasks()
        del runner, loop, main
        gc_collect_harder()
    problems += [f"other: {call}" for call in hooks.calls]
    problems += _leaks(baseline, loop_ref, items, fn)
    return problems, _count(totals, problems)


def run_threads(schedules: list[list[tuple[str, Schedule]]]) -> tuple[list[str], Totals]:  # noqa: PLR0915 -- asyncio and trio threads
    """Run each list of schedules in a thread of its own, each schedule on a fresh loop, all at once.

    The schedules share their options, hence one batched function (configured once, here).
    Each schedule's problems end with its label; a schedule labelled ``threads-trio ...``
    runs in a ``trio.run`` (``harness_trio.py``) instead of an asyncio loop.
    """
    totals = Totals()
    problems: list[str] = []
    lock = threading.Lock()
    loop_refs: list[weakref.ref[Any]] = []
    hooks = Hooks()
    fn, _ = function_for(schedules[0][0][1].options, _make_function)
    trio_baseline: set[int] | None = None
    if any(label.startswith("threads-trio") for mine in schedules for label, _ in mine):
        from tests.torture import harness_trio  # noqa: PLC0415 -- it imports this module

        trio_baseline = harness_trio.baseline()

    def work(mine: list[tuple[str, Schedule]]) -> None:
        for label, schedule in mine:
            if label.startswith("threads-trio"):
                found, counted = harness_trio.play_in_thread(schedule, label)
                with lock:
                    problems.extend(found)
                    totals.add(counted)
                continue
            loop = new_loop("default")
            loop.set_exception_handler(hooks.handler)
            runner = Runner(schedule, configure=False)
            try:
                loop.run_until_complete(runner.main())
                found = runner.check()
            except BaseException as error:  # noqa: BLE001 -- reported as a problem of the schedule
                found = [f"other: the schedule raised {error!r}"]
            finally:
                _finish_loop(loop)
            found = [f"{problem} [{label}]" for problem in found]
            counted = Totals(
                schedules=1, calls=len(schedule.calls), runs=len(runner.runs), max_traceback=runner.max_traceback
            )
            counted.outcomes.update(_kind(rec.outcome) for rec in runner.records)
            with lock:
                problems.extend(found)
                totals.add(_count(counted, found))
                loop_refs.append(weakref.ref(loop))
            del runner, loop

    baseline = {id(obj) for obj in live_engine_objects()}
    with hooks.installed():
        threads = [threading.Thread(target=work, args=(mine,)) for mine in schedules]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        gc_collect_harder()
    more = [f"other: {call}" for call in hooks.calls]
    alive = sum(ref() is not None for ref in loop_refs)
    if alive:
        more.append(f"leak: {alive} closed loop(s) still alive after the threads")
    more += _leaks(baseline, _dead, [], fn)
    if trio_baseline is not None:
        more += harness_trio.trio_leaks(trio_baseline, fn)
    problems += more
    _count(totals, more)
    totals.failed_schedules = min(totals.failed_schedules, totals.schedules)
    return problems, totals


def _dead() -> None:
    return None


# --------------------------------------------------------------------------------------
# Whole torture runs: many schedules, failures collected, the first one minimized
# --------------------------------------------------------------------------------------


#: Threads (each with its own loops) sharing one batched function, and schedules per thread.
THREADS: Final = 3
PER_THREAD: Final = 3


def features_for(mode: str) -> Features:
    if mode == "abandon":
        return Features(awaiting_cleanup=False, wrappers=(None, "wait_for", "timeout"), drains=False, stop=True)
    if mode == "threads":
        return Features(drains=False)
    if mode == "threads-trio":
        return Features(timeouts=True, drains=False, faults=TRIO_FAULTS)
    if mode == "trio":
        # Cancel scopes and nurseries on every Python; a tenth of the schedules shut down.
        return Features(timeouts=True, stop=True, stop_share=0.1, faults=TRIO_FAULTS)
    return Features()


def schedule_for(mode: str, seed: str, index: int, options: Options | None = None) -> Schedule:
    """The ``index``-th schedule of ``mode`` for ``seed`` (deterministic).

    The threads' schedules share the options of their group of ``THREADS * PER_THREAD``
    (``threads_options()``), which they are drawn with unless ``options`` is given.
    """
    rng = random.Random(f"{seed}/{mode}/{index}")  # noqa: S311 -- a test schedule, not a secret
    if mode == "sync":  # the thread API (schedules_threads_api.py)
        return draw_sync_schedule(rng)
    if options is None and mode in {"threads", "threads-trio"}:
        options = threads_options(seed, index - index % (THREADS * PER_THREAD))
    return draw_schedule(rng, features_for(mode), options)


def threads_options(seed: str, first: int) -> Options:
    """The options the threads' schedules from ``first`` on share (one batched function)."""
    return draw_options(random.Random(f"{seed}/threads/{first}"))  # noqa: S311 -- not a secret


#: The run_one() mode that replays a schedule of a torture mode (alone, on one thread).
RUN_MODES: Final = {"abandon": "default", "threads": "default", "threads-trio": "trio"}


def replay(mode: str, seed: str, index: int) -> list[str]:
    """Run one schedule of a torture run again; return its problems."""
    schedule = schedule_for(mode, seed, index)
    with quiet_observer_logs():
        problems, _ = run_one(schedule, RUN_MODES.get(mode, mode))
    return problems


def minimize(  # noqa: C901, PLR0912 -- one greedy pass per part of a schedule
    schedule: Schedule, mode: str, kind: str, *, budget: float = 20.0
) -> Schedule:
    """A smaller schedule that still has a problem of ``kind`` (greedy, within ``budget`` seconds)."""
    deadline = time.monotonic() + budget

    def fails(candidate: Schedule) -> bool:
        if time.monotonic() > deadline:
            return False
        try:
            problems, _ = run_one(candidate, mode)
        except Exception:  # noqa: BLE001 -- a candidate that breaks the harness is not kept
            return False
        return any(category(p) == kind for p in problems)

    best = schedule
    changed = True
    while changed and time.monotonic() < deadline:
        changed = False
        calls = list(best.calls)
        chunk = max(1, len(calls) // 2)
        while chunk >= 1:
            start = 0
            while start < len(calls):
                candidate = dataclasses.replace(best, calls=tuple(calls[:start] + calls[start + chunk :]))
                if candidate.calls and fails(candidate):
                    best, calls, changed = candidate, list(candidate.calls), True
                else:
                    start += chunk
            chunk //= 2
        for position in range(len(best.plans)):
            if len(best.plans) > 1:
                candidate = dataclasses.replace(best, plans=best.plans[:position] + best.plans[position + 1 :])
                if fails(candidate):
                    best, changed = candidate, True
                    break
        for name in ("drains",):
            if getattr(best, name):
                candidate = dataclasses.replace(best, **{name: ()})
                if fails(candidate):
                    best, changed = candidate, True
        for variant in simpler(best.options):
            if fails(candidate := dataclasses.replace(best, options=variant)):
                best, changed = candidate, True
                break
        for position, plan in enumerate(best.plans):
            for variant in simpler(plan):
                plans = (*best.plans[:position], variant, *best.plans[position + 1 :])
                if fails(candidate := dataclasses.replace(best, plans=plans)):
                    best, changed = candidate, True
                    break
        for position, call in enumerate(best.calls):
            for variant in simpler(call):
                calls_ = (*best.calls[:position], variant, *best.calls[position + 1 :])
                if fails(candidate := dataclasses.replace(best, calls=calls_)):
                    best, changed = candidate, True
                    break
    return best


def torture(mode: str, seed: str, calls: int, *, first: int = 0) -> tuple[Totals, list[Failure]]:
    """Run schedules of ``mode`` until ``calls`` calls were made; return the totals and failures."""
    totals = Totals()
    failures: list[Failure] = []
    started = time.monotonic()
    index = first
    with quiet_observer_logs():
        if mode == "threads":
            while totals.calls < calls:
                options = threads_options(seed, index)
                labelled = {
                    index + k: schedule_for(mode, seed, index + k, options) for k in range(THREADS * PER_THREAD)
                }
                per_thread = [
                    [
                        (f"threads schedule {i}", labelled[i])
                        for i in range(index + t, index + THREADS * PER_THREAD, THREADS)
                    ]
                    for t in range(THREADS)
                ]
                # And a thread of trio runs calling the same function meanwhile (a seed stream
                # of its own: the asyncio threads' schedules are those they always were).
                per_thread.append(
                    [
                        (f"threads-trio schedule {i}", schedule_for("threads-trio", seed, i, options))
                        for i in range(index, index + PER_THREAD)
                    ]
                )
                problems, found = run_threads(per_thread)
                totals.add(found)
                if problems:
                    # The first failing schedule, by its label (replay() plays it alone).
                    label = re.search(r"\[(threads(?:-trio)?) schedule (\d+)\]$", problems[0])
                    which, number = (label.group(1), int(label.group(2))) if label else (mode, index)
                    shown = schedule_for(which, seed, number, options)
                    failures.append(Failure(which, seed, number, problems, shown))
                index += THREADS * PER_THREAD
                gc.freeze()
        else:
            while totals.calls < calls:
                schedule = schedule_for(mode, seed, index)
                problems, found = run_one(schedule, "default" if mode == "abandon" else mode)
                totals.add(found)
                if problems:
                    failures.append(Failure(mode, seed, index, problems, schedule))
                index += 1
                # Everything alive now passed the leak check: hide it from the next collections.
                gc.freeze()
        if failures and mode in {"default", "eager", "abandon", "trio"}:
            first_failure = failures[0]
            kind = category(first_failure.problems[0])
            run_mode = "default" if mode == "abandon" else mode
            first_failure.minimal = minimize(first_failure.schedule, run_mode, kind)
    totals.seconds = time.monotonic() - started
    with _TOTALS_LOCK:
        TOTALS.setdefault(mode, Totals()).add(totals)
    return totals, failures


def run_forever(fn: Callable[[], None]) -> None:  # pragma: no cover -- debugging aid
    """Call ``fn`` again and again (for a profiler)."""
    while True:
        fn()

"""The torture harness on trio: each schedule in a ``trio.run`` of its own, on a MockClock.

:class:`TrioRunner` plays a schedule as ``harness.Runner`` does on asyncio, and is judged by
the same oracle; what differs is how trio cancels, times out and groups tasks:

* every call runs in a task of the run's root nursery, inside a cancel scope of its own: the
  scheduler cancels a call with ``scope.cancel()`` (``task.cancel()`` on asyncio). A call's
  ``wrap`` ``"wait_for"`` is played by ``trio.fail_after`` around the call, ``"timeout"`` by
  ``trio.move_on_after``, ``"taskgroup"`` by a nursery whose other task fails; a deadline the
  body opens (``body_timeout``) is ``trio.fail_after`` (``TooSlowError``), and the
  ``"taskgroup"`` structure a nursery around ``collect()``;
* trio's cancellation is level-triggered and delivered at checkpoints: a call counts as
  cancelled when a scope around it was cancelled while it ran (``requested()``), and such a
  call may also end as it would have, if it reached no checkpoint since. A leader's run
  *departed* when its task was inside a cancelled scope as it raised
  (``trio.current_effective_deadline() == -inf``), whatever it raised; anything else it
  raised is a fault, a ``trio.Cancelled`` included;
* ``stop`` is a shutdown: at that time the root nursery is cancelled, so every call still
  running is cancelled (wherever it is: waiting, leading, in its bulk section), and calls
  not started by then never start. Nothing may be left behind either way;
* trio runs the tasks of one scheduler round in an order drawn from the private
  ``trio._core._run._r``. Each run seeds it from the schedule (its ``repr``), and importing
  hypothesis (below) turns on trio's deterministic-scheduling mode (each round sorted by
  task creation, then shuffled with ``_r``) in pytest and outside alike: a schedule, replayed
  or pasted, runs the same way.

A schedule that has not ended after ``HORIZON`` virtual seconds is a hang, and so is one
that runs ``ROUND_LIMIT`` scheduler rounds (time stands still: a livelock); its calls are
then cancelled so that the run ends.
"""

from __future__ import annotations

import gc
import math
import traceback
import weakref
from typing import TYPE_CHECKING, Any, Final

# Importing hypothesis runs trio's hypothesis plugin, which turns on trio's deterministic
# scheduling; imported here, at collection, before any gc.freeze() (hypothesis then checks
# that trio's random is referred to, and would warn if the referrer were frozen).
import hypothesis  # noqa: F401
import trio
import trio.abc
import trio.lowlevel
import trio.testing
from tests.support import live_engine_objects
from tests.torture.harness import (
    HORIZON,
    RUNNER,
    Hooks,
    Item,
    LeaderError,
    Runner,
    SiblingError,
    Totals,
    _check_stats,
    _count,
    _dead,
    _kind,
    _leaks,
)
from trio._core import _run as trio_scheduler

from concresce import _calls, _trio

if TYPE_CHECKING:
    from tests.torture.harness import Record, Run
    from tests.torture.schedules import Schedule

__all__ = ["ROUND_LIMIT", "TrioRunner", "baseline", "play", "play_in_thread", "run_trio", "trio_leaks"]

#: Scheduler rounds after which a schedule is taken to livelock (a schedule takes thousands).
ROUND_LIMIT: Final = 1_000_000
#: The objects of the trio backend; none may outlive its run.
TRIO_CLASSES: Final = (_trio.TrioLoop, _trio.TrioWaiter, _trio.Timer)
_CANCELLED_DEADLINE: Final = -math.inf


def _cancelled(error: BaseException) -> bool:
    """Whether ``error`` is a ``trio.Cancelled``, or a group of nothing else (a nursery's)."""
    if isinstance(error, trio.Cancelled):
        return True
    if not isinstance(getattr(error, "exceptions", None), tuple):
        return False
    _, rest = error.split(trio.Cancelled)  # type: ignore[attr-defined]
    return rest is None


def _first_cancelled(error: BaseException) -> BaseException:
    while not isinstance(error, trio.Cancelled) and getattr(error, "exceptions", None):
        error = error.exceptions[0]  # type: ignore[attr-defined]
    return error


def _spurious(number: int) -> BaseException:
    """A ``trio.Cancelled`` made by the bulk code itself, outside any cancelled scope."""
    reason = f"[run {number}] spurious"
    try:
        return trio.Cancelled._create(source="explicit", reason=reason)  # type: ignore[call-arg]
    except TypeError:  # trio < 0.30: a Cancelled has no source or reason
        error = trio.Cancelled._create()
        error.torture_run = number  # type: ignore[attr-defined]
        return error


async def _fail(number: int) -> None:
    raise LeaderError(number, "a task of the bulk section fails")


class RoundLimit(trio.abc.Instrument):
    """Counts scheduler rounds; at ``ROUND_LIMIT`` the schedule is a livelock and is stopped."""

    def __init__(self, runner: TrioRunner) -> None:
        self.runner = runner
        self.rounds = 0

    def before_io_wait(self, timeout: float) -> None:
        self.rounds += 1
        if self.rounds == ROUND_LIMIT:
            self.runner.give_up(f"{ROUND_LIMIT} scheduler rounds without the schedule ending (a livelock)")


class TrioRunner(Runner):
    """Plays one schedule in the running ``trio.run``; :meth:`check` (the shared oracle) then judges it."""

    timeout_errors = (trio.TooSlowError,)
    cancel_is_final = False

    def __init__(self, schedule: Schedule, *, sabotage: bool = False, configure: bool = True) -> None:
        super().__init__(schedule, sabotage=sabotage, configure=configure)
        self.root: trio.Nursery | None = None
        self.outstanding = 0  # call and drain tasks still running
        self.all_done: trio.Event | None = None
        self.stopped: float | None = None  # when the shutdown (``stop``) cancelled every call
        self.hung: list[int] = []

    # -- what differs from asyncio ----------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def group(self) -> Any:
        return trio.open_nursery()

    def cancel_self(self, rec: Record) -> None:
        self.request_cancel(rec)

    def departure(self, error: BaseException) -> str:
        # Level-triggered: the task is cancelled while it runs inside a cancelled scope.
        if trio.current_effective_deadline() == _CANCELLED_DEADLINE:
            return "departed"
        if isinstance(error, trio.Cancelled):
            return "ce_fault"
        return "fault" if isinstance(error, Exception) else "closed"

    async def member_within(self, rec: Record, seconds: float) -> Any:
        scope = None
        try:
            with trio.fail_after(seconds) as scope:
                return await self.member(rec)
        finally:
            rec.own_timeout = scope is not None and scope.cancelled_caught

    async def bulk_fault(self, run: Run) -> None:
        fault = run.plan.fault
        number = run.number
        if fault == "raise":
            raise LeaderError(number, "bulk section fault")
        if fault == "spurious":
            raise _spurious(number)
        if fault == "cancelled_future":
            # A scope of the bulk code (a driver's) that another task cancels: it catches the
            # Cancelled, and the driver raises an error of its own.
            with trio.CancelScope() as inner:
                self.root_nursery().start_soon(self.cancel_scope, inner)
                await trio.sleep_forever()
            msg = f"[run {number}] closed under the bulk section"
            raise trio.ClosedResourceError(msg)
        if fault in {"self_cancel", "cancel_converted"}:
            self.request_cancel(self.records[run.leader])
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled:
                if fault == "cancel_converted":
                    # Still a departure: its task is inside a cancelled scope.
                    raise LeaderError(number, "cancelled, and said so in an error of its own") from None
                raise
        if fault == "nursery_fails":
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_fail, number)
                await trio.sleep_forever()

    bulk_codes = frozenset({bulk_fault.__code__, _fail.__code__})

    @staticmethod
    async def cancel_scope(scope: trio.CancelScope) -> None:
        scope.cancel()

    def request_cancel(self, rec: Record, task: object = None) -> None:
        if rec.scope is None or rec.end_seq is not None:
            return  # not started, or ended: asyncio's task.cancel() returns False then
        rec.scope.cancel()
        self.note_cancel(rec)

    def note_cancel(self, rec: Record) -> None:
        """A scope around the running call ``rec`` is cancelled (by the scheduler or else)."""
        rec.cancel_requests += 1
        if rec.cancel_seq is None:
            rec.cancel_seq = next(self.seq)

    def requested(self, rec: Record) -> bool:
        return rec.cancel_requests > 0 or rec.wrapper_timed_out

    def check_prior(self, rec: Record, run: Run, prior: list[Run]) -> str | None:
        # trio's departure rule is the same on every Python version (decision 39): an item
        # runs again only after its leader departed, even on 3.10.
        rerun = [r for r in prior if r.end != "departed"]
        if rerun:
            return f"rerun: its item was in {rerun[0].describe()}, which did not depart, and again in {run.describe()}"
        return None

    def gone_before(self, rec: Record, run: Run) -> bool:
        # On trio a member's cancellation is delivered when it next waits: one that is
        # runnable then (woken to keep a batch's timer, or to lead) leaves later, or leads.
        # What must hold: a member that had left collect() is not among the items.
        return rec.index != run.leader and rec.exit_seq is not None and rec.exit_seq < run.seq

    def now(self) -> float:
        return trio.current_time()

    def root_nursery(self) -> trio.Nursery:
        assert self.root is not None
        return self.root

    # -- the scheduler ----------------------------------------------------------------------

    def launch(self, rec: Record) -> None:
        root = self.root_nursery()
        plan = rec.plan
        rec.scope = trio.CancelScope()
        self.outstanding += 1
        if plan.wrap == "taskgroup":
            root.start_soon(self.in_nursery, rec, plan.wrap_delay)
        else:
            root.start_soon(self.call_task, rec)
        if plan.cancel is not None and plan.cancel.phase == "at":
            root.start_soon(self.cancel_at, rec, plan.cancel.delay)

    async def cancel_at(self, rec: Record, delay: float) -> None:
        await trio.sleep(delay)
        self.request_cancel(rec)

    async def play(self, rec: Record) -> None:
        """Make the call and record its outcome; a cancellation goes on to its scope."""
        try:
            value = await self.invoke(rec)
        except BaseException as error:
            rec.end_seq = next(self.seq)
            if not _cancelled(error):
                rec.outcome = ("exc", error)
                return
            rec.outcome = ("cancelled", _first_cancelled(error))
            if trio.current_effective_deadline() == _CANCELLED_DEADLINE:
                raise  # to the cancelled scope it belongs to (a Cancelled of no scope stops here)
        else:
            rec.end_seq = next(self.seq)
            rec.outcome = ("ok", value)

    async def call_task(self, rec: Record) -> None:
        plan = rec.plan
        try:
            with rec.scope:
                if plan.wrap == "wait_for":
                    wrapper = None
                    try:
                        with trio.fail_after(plan.wrap_delay) as wrapper:
                            await self.play(rec)
                    except trio.TooSlowError:
                        pass
                    finally:
                        rec.wrapper_timed_out = wrapper is not None and wrapper.cancel_called
                elif plan.wrap == "timeout":
                    wrapper = None
                    try:
                        with trio.move_on_after(plan.wrap_delay) as wrapper:
                            await self.play(rec)
                    finally:
                        rec.wrapper_timed_out = wrapper is not None and wrapper.cancel_called
                else:
                    await self.play(rec)
        finally:
            self.task_done()

    async def in_nursery(self, rec: Record, delay: float) -> None:
        """The call in a nursery whose other task fails after ``delay``: the nursery cancels the call."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.sibling, rec, delay)
                nursery.start_soon(self.call_in_scope, rec)
        except Exception as error:  # noqa: BLE001 -- the sibling's, checked below
            if not isinstance(error, SiblingError) and not all(
                isinstance(e, SiblingError) for e in getattr(error, "exceptions", (error,))
            ):
                self.problems.append(f"other: the nursery of call #{rec.index} raised {error!r}")
        finally:
            self.task_done()

    async def call_in_scope(self, rec: Record) -> None:
        with rec.scope:
            await self.play(rec)

    async def sibling(self, rec: Record, delay: float) -> None:
        await trio.sleep(delay)
        if rec.end_seq is None:
            self.note_cancel(rec)  # the nursery cancels the call as this raises
        msg = f"sibling of call {rec.index} fails"
        raise SiblingError(msg)

    async def drain_at(self) -> None:
        try:
            await super().drain_at()
        except Exception as error:  # noqa: BLE001 -- reported
            self.problems.append(f"drain: drain() raised {error!r}")
        finally:
            self.task_done()

    def task_done(self) -> None:
        self.outstanding -= 1
        if not self.outstanding and self.all_done is not None:
            self.all_done.set()

    async def main(self, *, horizon: float = HORIZON) -> None:
        """Start every call and drain at its time (shut down at ``stop``), then wait for them all."""
        RUNNER.set(self)
        start = trio.current_time()
        schedule = self.schedule
        events = sorted(
            [(plan.start, 1, index) for index, plan in enumerate(schedule.calls)]
            + [(when, 0, -1) for when in schedule.drains]
            + ([(schedule.stop, 2, -1)] if schedule.stop is not None else [])
        )
        async with trio.open_nursery() as root:
            self.root = root
            for when, kind, index in events:
                due = start + when
                if due > trio.current_time():
                    await trio.sleep_until(due)
                if kind == 2:
                    self.shut_down()
                    break
                if kind == 0:
                    self.outstanding += 1
                    root.start_soon(self.drain_at)
                else:
                    self.launch(self.records[index])
            else:
                if self.outstanding:
                    self.all_done = trio.Event()
                    with trio.move_on_after(horizon):
                        await self.all_done.wait()
                if self.outstanding:
                    self.give_up(f"still running after {horizon} schedule seconds")
            root.cancel_scope.cancel()  # "at" cancellations still sleeping

    def shut_down(self) -> None:
        """Cancel every call still running (and the drains), as a shutdown does."""
        self.stopped = trio.current_time()
        for rec in self.records:
            if rec.scope is not None and rec.end_seq is None:
                self.note_cancel(rec)
        self.root_nursery().cancel_scope.cancel()

    def crashed(self) -> None:
        """The run ended with an error: trio cancelled every call, at a time nobody recorded."""
        for rec in self.records:
            if rec.scope is not None:
                self.note_cancel(rec)

    def give_up(self, why: str) -> None:
        """A hang: report the calls still running, then cancel everything so that the run ends."""
        hung = [rec.index for rec in self.records if rec.scope is not None and rec.end_seq is None]
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
        self.problems.append(f"hang: calls {hung} ({self.outstanding} task(s) in all) {why}: {states}")
        self.hung = hung
        if self.root is not None:
            self.root.cancel_scope.cancel()

    def mark_hung(self) -> None:
        """After the run: the calls that hung have no outcome (they were cancelled to end it)."""
        for index in self.hung:
            self.records[index].outcome = ("pending", None)
        for rec in self.records:
            if rec.scope is None:
                rec.outcome = ("unstarted", None)  # after a shutdown


def _live_trio_objects(ignore: set[int] | frozenset[int] = frozenset()) -> list[object]:
    return [obj for obj in gc.get_objects() if type(obj) in TRIO_CLASSES and id(obj) not in ignore]


def trio_leaks(baseline: set[int], fn: Any) -> list[str]:
    """What the trio backend and the engine's global tables must not keep after a run."""
    problems = []
    alive = _live_trio_objects(baseline)
    if alive:
        problems.append(f"leak: {len(alive)} object(s) of the trio backend alive after its run: {alive[:5]!r}")
    del alive
    tasks = [task for task in _calls.CALLS if isinstance(task, trio.lowlevel.Task)]
    if tasks:
        problems.append(f"leak: {len(tasks)} trio task(s) still in the table of current calls: {tasks[:5]!r}")
        for task in tasks:  # so that the next schedules are judged on their own
            del _calls.CALLS[task]
    nested = [task for task in _calls.OUTER if isinstance(task, trio.lowlevel.Task)]
    if nested:
        problems.append(f"leak: {len(nested)} trio task(s) still in the table of nested calls")
        for task in nested:
            del _calls.OUTER[task]
    drainers = fn.stats.__self__.batcher.drainers
    if drainers:
        problems.append(f"leak: {len(drainers)} drain() waiter(s) left in the function's list")
        drainers.clear()
    return problems


def play(runner: TrioRunner) -> list[str]:
    """Play the runner's schedule in a ``trio.run`` of its own (MockClock, autojump); return what the oracle found."""
    problems: list[str] = []
    trio_scheduler._r.seed(repr(runner.schedule))
    try:
        trio.run(
            runner.main,
            clock=trio.testing.MockClock(autojump_threshold=0),
            instruments=[RoundLimit(runner)],
        )
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise
        shown = "".join(traceback.format_exception(error))
        problems.append(f"other: the trio run raised {error!r}:\n{shown}")
        runner.crashed()
    runner.mark_hung()
    # After a shutdown, or a run that ended with an error, some calls never started or ended.
    return problems + runner.check(finished=runner.stopped is None and not problems)


def play_in_thread(schedule: Schedule, label: str) -> tuple[list[str], Totals]:
    """Play ``schedule`` (in a thread of ``run_threads()``); return its problems, each labelled, and totals."""
    runner = TrioRunner(schedule, configure=False)
    found = [f"{problem} [{label}]" for problem in play(runner)]
    counted = Totals(schedules=1, calls=len(schedule.calls), runs=len(runner.runs), max_traceback=runner.max_traceback)
    counted.outcomes.update(_kind(rec.outcome) for rec in runner.records)
    return found, _count(counted, found)


def baseline() -> set[int]:
    """The objects of the trio backend alive now (none should be), for trio_leaks()."""
    return {id(obj) for obj in _live_trio_objects()}


def run_trio(schedule: Schedule, *, sabotage: bool = False, check_table: bool = True) -> tuple[list[str], Totals]:
    """Run ``schedule`` in a ``trio.run`` of its own (MockClock, autojump); return its problems and totals."""
    totals = Totals(schedules=1, calls=len(schedule.calls))
    hooks = Hooks()
    engine_baseline = {id(obj) for obj in live_engine_objects()}
    trio_baseline = baseline()
    runner = TrioRunner(schedule, sabotage=sabotage)
    fn = runner.fn
    fn.stats(reset=True)
    with hooks.installed():
        problems = play(runner)
        stats_problems = [] if sabotage else _check_stats(fn, runner)
        totals.runs = len(runner.runs)
        totals.max_traceback = runner.max_traceback
        totals.outcomes.update(_kind(rec.outcome) for rec in runner.records)
        items = [weakref.ref(item) for run in runner.runs for item in run.items if isinstance(item, Item)]
        del runner
        gc.collect()
    problems += stats_problems + [f"other: {call}" for call in hooks.calls]
    problems += _leaks(engine_baseline, _dead, items, fn if check_table else None)
    problems += trio_leaks(trio_baseline, fn)
    return problems, _count(totals, problems)

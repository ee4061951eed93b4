"""The torture suite: randomized schedules over every option, with faults injected everywhere.

Each test draws schedules from a seed (see ``tests/torture/schedules.py``), runs them
(``tests/torture/harness.py``) and fails, after running all of them, if any schedule had a
problem, printing each failing schedule with its seed and index (and the first one
minimized), so that it can be replayed and turned into a deterministic test.

The size of the run comes from the environment:

* ``CONCRESCE_TORTURE_CALLS``: the number of calls over all the tests of this file
  (default 3000: a second or two, part of ``uv run pytest``). CI runs 100000 (``.ci/run``);
  the long run is 1000000 or more::

      CONCRESCE_TORTURE_CALLS=1000000 uv run pytest tests/torture -p no:randomly

* ``CONCRESCE_TORTURE_SEED``: the seed (default ``concresce``; any string).

Modes: asyncio's default loop, eager tasks, uvloop, threads and loops closed by hand
(``harness.py``), trio (``harness_trio.py``) and the thread API, ``concresce.threads``, called
from a pool of threads (``sync``, ``harness_threads_api.py``), each with its share of the calls.

With ``CONCRESCE_TORTURE_CALLS`` set, the totals (calls, schedules, hangs, misroutes, leaks)
are printed at the end of the pytest run. See docs/torture.md.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest
import trio
import trio.lowlevel
from tests.torture import harness_threads_api, harness_trio
from tests.torture.harness import Failure, run_one, schedule_for, torture
from tests.torture.harness_threads_api import SyncRunner
from tests.torture.harness_trio import TrioRunner
from tests.torture.schedules import CallPlan, LeaderPlan, Options, Schedule
from tests.torture.schedules_threads_api import SyncSchedule

#: Calls over the whole file, and the seed.
CALLS = int(os.environ.get("CONCRESCE_TORTURE_CALLS", "3000"))
SEED = os.environ.get("CONCRESCE_TORTURE_SEED", "concresce")

EAGER = sys.version_info >= (3, 12)
UVLOOP = sys.platform != "win32"

#: Each mode's share of the calls; eager tasks' share goes to the default loop before 3.12.
SHARES = {
    "default": 0.31 if EAGER else 0.49,
    "eager": 0.18 if EAGER else 0.0,
    "uvloop": 0.05,
    "threads": 0.11,
    "abandon": 0.12,
    "trio": 0.15,
    "sync": 0.08,
}
#: Calls per second at the least (the real clock of uvloop is the slowest), for time-outs.
SLOWEST_RATE = {"default": 500, "eager": 500, "uvloop": 200, "threads": 400, "abandon": 500, "trio": 300, "sync": 200}


def calls_of(mode: str) -> int:
    return max(1, int(CALLS * SHARES[mode]))


def timeout_of(mode: str) -> pytest.MarkDecorator:
    """A pytest time-out for the mode's share of the run: generous, plus the minimizer's budget."""
    return pytest.mark.timeout(60 + calls_of(mode) // SLOWEST_RATE[mode])


def report(failures: list[Failure], mode: str) -> None:
    if failures:
        shown = "\n".join(failure.describe() for failure in failures[:5])
        more = f"\n... and {len(failures) - 5} more failing schedules" if len(failures) > 5 else ""
        pytest.fail(
            f"{len(failures)} {mode} schedule(s) of seed {SEED!r} failed:\n{shown}{more}",
            pytrace=False,
        )


@timeout_of("default")
def test_every_call_gets_exactly_its_outcome_on_the_default_loop():
    """Random schedules with faults everywhere, on the default loop (virtual clock): each outcome is as expected."""
    totals, failures = torture("default", SEED, calls_of("default"))
    assert totals.calls >= calls_of("default")
    report(failures, "default")


@pytest.mark.skipif(not EAGER, reason="asyncio.eager_task_factory is new in Python 3.12")
@timeout_of("eager")
def test_every_call_gets_exactly_its_outcome_with_eager_tasks():
    """The same, with asyncio.eager_task_factory: calls run their body synchronously as they start."""
    _, failures = torture("eager", SEED, calls_of("eager"))
    report(failures, "eager")


@pytest.mark.skipif(not UVLOOP, reason="uvloop does not support Windows")
@timeout_of("uvloop")
def test_every_call_gets_exactly_its_outcome_on_uvloop():
    """The same on uvloop, a real clock, with windows and bulk sections of a fraction of a millisecond."""
    pytest.importorskip("uvloop")
    _, failures = torture("uvloop", SEED, calls_of("uvloop"))
    report(failures, "uvloop")


@timeout_of("threads")
def test_loops_in_several_threads_share_one_function_without_mixing():
    """Asyncio loops in three threads and trio runs in a fourth call one function: no batch mixes loops or runs."""
    _, failures = torture("threads", SEED, calls_of("threads"))
    report(failures, "threads")


@timeout_of("abandon")
def test_a_loop_closed_by_hand_with_calls_pending_leaves_nothing_behind():
    """Schedules stopped at a random time and their loop closed by hand: nothing stays alive or in the tables."""
    _, failures = torture("abandon", SEED, calls_of("abandon"))
    report(failures, "abandon")


@timeout_of("trio")
def test_every_call_gets_exactly_its_outcome_on_trio():
    """The same on trio (MockClock): cancel scopes, nurseries, deadlines, shutdowns, in a seeded task order."""
    _, failures = torture("trio", SEED, calls_of("trio"))
    report(failures, "trio")


@timeout_of("sync")
def test_every_call_gets_exactly_its_outcome_on_threads_with_the_thread_api():
    """concresce.threads from a pool of threads: time-outs, interruptions, handovers, controls; no thread hangs."""
    _, failures = torture("sync", SEED, calls_of("sync"))
    report(failures, "sync")


@pytest.mark.parametrize("mode", ["default", "trio"])
def test_the_oracle_reports_a_misrouted_result(mode):
    """The checker is not vacuous: a bulk section that routes the results in reverse is reported as misroutes."""
    schedule = Schedule(
        options=Options(),
        calls=tuple(CallPlan(value=value) for value in range(4)),
        plans=(LeaderPlan(),),
    )
    problems, _ = run_one(schedule, mode)
    assert problems == []
    problems, totals = run_one(schedule, mode, sabotage=True)
    assert totals.misroutes == 4, problems


def test_the_thread_api_oracle_reports_a_misrouted_result():
    """The sync mode's checker is not vacuous either: results routed in reverse are misroutes."""
    schedule = SyncSchedule(
        options=Options(max_window=20.0, max_size=4),  # one batch: full at 4 (the window is a second)
        calls=tuple(CallPlan(value=value) for value in range(4)),
        threads=4,
    )
    problems, _ = run_one(schedule, "sync")
    assert problems == []
    problems, totals = run_one(schedule, "sync", sabotage=True)
    assert totals.misroutes == 4, problems


def test_a_thread_api_call_that_never_ends_is_reported_as_a_hang(monkeypatch):
    """A bulk section that blocks past the bound is a hang of its schedule, not a stuck test."""
    release = threading.Event()

    def stuck(runner: SyncRunner, run: object) -> None:
        release.wait(10)

    monkeypatch.setattr(SyncRunner, "lead", stuck)
    monkeypatch.setattr(harness_threads_api, "HANG_BOUND", 0.3)
    schedule = SyncSchedule(
        options=Options(max_window=20.0, max_size=2), calls=(CallPlan(), CallPlan(value=1)), threads=2
    )
    try:
        problems, totals = run_one(schedule, "sync", check_table=False)
    finally:
        release.set()  # the threads end (the leader returns without scatter())
        for thread in threading.enumerate():
            if thread.name == harness_threads_api.THREAD_NAME:
                thread.join(10)
    assert totals.hangs >= 1, problems
    assert "'in the bulk section of run 0'" in problems[0], problems
    assert "'in collect()'" in problems[0], problems  # its follower


@pytest.mark.parametrize("structure", [None, "taskgroup"])
def test_trio_followers_get_the_spurious_cancelled_their_leader_raised(structure):
    """Found by the trio mode (minimized): a leader raises a trio.Cancelled outside any cancelled scope, a fault.

    Its follower must get a RuntimeError caused by it (a Cancelled raised in the follower's
    task would be taken for a cancellation of its own scopes: decision 41), also through a
    nursery around collect(), and the run must end cleanly.
    """
    schedule = Schedule(
        options=Options(max_window=0.01),
        calls=(CallPlan(), CallPlan(start=0.001, value=1, structure=structure)),
        plans=(LeaderPlan(fault="spurious"),),
    )
    problems, _ = run_one(schedule, "trio")
    assert problems == []


@pytest.mark.parametrize("mode", ["default", "trio"])
@pytest.mark.parametrize("result", ["exception", "missing key"])
def test_duplicates_get_their_exception_result_with_a_traceback_of_their_own(mode, result):
    """Found by the trio mode (a 53-entry traceback), minimized: under dedupe, duplicates share an exception result.

    Each caller must get it with a traceback of its own, holding no other caller's frames
    (decision 8), whether it is an Exception result or a MissingResultError for the key.
    """
    failing = LeaderPlan(failing=frozenset({0}))
    plan = failing if result == "exception" else LeaderPlan(routing="dict", missing=frozenset({0}))
    schedule = Schedule(
        options=Options(max_window=0.01, dedupe=True),
        calls=(CallPlan(), CallPlan(start=0.001)),
        plans=(plan,),
    )
    problems, _ = run_one(schedule, mode)
    assert problems == []


def test_trio_followers_get_an_exception_group_without_the_frames_of_the_bulk_section():
    """Found by the trio mode: a nursery of the bulk section fails, and its ExceptionGroup is a fault.

    Each follower's copy must hold no frame of the bulk section's tasks (their locals hold
    the items): the sub-exceptions are copied, like the cause and the context.
    """
    schedule = Schedule(
        options=Options(max_window=0.01),
        calls=(CallPlan(), CallPlan(start=0.001, value=1)),
        plans=(LeaderPlan(fault="nursery_fails"),),
    )
    problems, _ = run_one(schedule, "trio")
    assert problems == []


@pytest.mark.parametrize("stuck", ["waits forever", "spins"])
def test_a_trio_schedule_that_never_ends_is_reported_as_a_hang(stuck, monkeypatch):
    """The trio mode's hang checks are not vacuous: a bulk section that waits forever, or spins without time passing."""

    async def never(runner: TrioRunner, rec: object, items: object) -> None:
        while stuck == "spins":  # a livelock, on purpose
            await trio.lowlevel.checkpoint()
        await trio.sleep_forever()

    monkeypatch.setattr(TrioRunner, "lead", never)
    monkeypatch.setattr(harness_trio, "ROUND_LIMIT", 2000)
    problems, totals = run_one(Schedule(calls=(CallPlan(), CallPlan(value=1))), "trio")
    assert totals.hangs == 3, problems
    assert totals.leaks == totals.other == 0, problems


def test_a_trio_schedule_replays_exactly():
    """trio's task order is seeded from the schedule: a schedule played twice makes the same runs and outcomes."""

    def trace(index: int) -> list[object]:
        seen: list[object] = []
        check = TrioRunner.check

        def recording(runner: TrioRunner, **kwargs: bool) -> list[str]:
            seen.extend((run.leader, [item.index for item in run.items], run.end, run.end_time) for run in runner.runs)
            seen.extend((rec.outcome[0], type(rec.outcome[1]).__name__, rec.exit_time) for rec in runner.records)
            return check(runner, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(TrioRunner, "check", recording)
            run_one(schedule_for("trio", "replay", index), "trio")
        return seen

    for index in (3, 7, 11):
        first = trace(index)
        assert len(first) > 10
        assert trace(index) == first

"""What the thread API's torture mode (tests/torture, mode ``sync``) found, as deterministic tests.

Each test is the smallest schedule that shows one problem, played step by step (threads
released by events, the engine's state polled between steps), so that it fails the same way
every time; it is marked ``xfail(strict=True)`` until the engine is fixed. See FINDINGS.md.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from tests.support import partitions_of

from concresce.threads import batch, collect, scatter

#: Seconds a step may take at most (the whole test takes well under a second when it passes).
STEP = 5.0


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + STEP
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.001)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "refuse_deadlock() (_admission.py) misses a cycle through a running batch: a call from a "
        "bulk section waits for a slot held by a bulk section that waits for a member of the "
        "first one's batch; the call waits for ever instead of failing with RuntimeError"
    ),
)
def test_a_call_from_a_bulk_section_that_could_never_run_is_refused_through_a_running_batch():
    """Two slots, held by A's and C's bulk sections; A's nested call a2 waits in C's batch; C's nested call c2 waits for a slot.

    A waits for a2, a2 for C's scatter(), C for c2, c2 for a slot that A or C would free: no
    slot can ever free. Like the direct case (every running bulk section waits for a call
    queued in this partition), c2 must fail at once with RuntimeError, not wait for ever.
    """
    gates = {"a": threading.Event(), "b": threading.Event()}
    outcomes: dict[str, object] = {}

    def nested(item: str) -> None:
        try:
            outcomes[item] = work(item)
        except Exception as error:  # noqa: BLE001 -- the outcome is the point
            outcomes[item] = error

    @batch(max_concurrency=2)
    def work(item: str) -> str:
        items = collect(item)
        if item in gates:
            gates[item].wait(STEP)
        if item == "a":
            nested("a2")  # joins C's batch, queued for a slot
        if item == "c":
            nested("c2")  # no slot: A's and C's bulk sections hold both
        return scatter([f"result {i}" for i in items])

    def call(item: str) -> threading.Thread:
        def run() -> None:
            try:
                outcomes[item] = work(item)
            except Exception as error:  # noqa: BLE001 -- the outcome is the point
                outcomes[item] = error

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def part() -> Any:
        parts = list(partitions_of(work).values())
        return parts[0] if parts else None

    def queued_members() -> int:
        p = part()
        return sum(len(b.members) for b in (p.pending or ())) if p is not None else 0

    threads = [call("a")]
    _until(lambda: part() is not None and part().running == 1, "A leads")
    threads.append(call("b"))
    _until(lambda: part().running == 2, "B leads: both slots are busy")
    threads.append(call("c"))
    _until(lambda: queued_members() == 1, "C waits in a batch queued for a slot")
    gates["a"].set()
    _until(lambda: queued_members() == 2, "A's nested call a2 joined C's batch")
    gates["b"].set()  # B scatters: C's batch takes its slot, and C leads it

    for thread in threads:
        thread.join(0.5)
    stuck = [thread for thread in threads if thread.is_alive()]
    if stuck:
        # Deadlocked: let the queued batch in (and every thread end) before failing.
        work.configure(max_concurrency=None)
        for thread in threads:
            thread.join(STEP)
    assert not stuck, f"{len(stuck)} thread(s) blocked: {outcomes}"
    assert isinstance(outcomes["c2"], RuntimeError), outcomes
    assert outcomes["a"] == "result a"
    assert outcomes["a2"] == "result a2"
    assert outcomes["c"] == "result c"

"""The thread runtime's parts: waiters, timers, the loop's lock and clock."""

from __future__ import annotations

import threading
import time

import pytest
from tests.threads.kit import PATIENCE

from concresce._threads import SOON, ThreadLoop, ThreadTimer, ThreadWaiter


def test_a_waiter_is_released_once_however_often_it_is_signalled_and_woken():
    loop = ThreadLoop("f")
    waiter = ThreadWaiter(loop)
    assert (waiter.done(), waiter.get_loop()) == (False, loop)
    waiter.signal()
    waiter.signal()
    waiter.set_result(None)  # a pending signal already lets the thread through
    assert waiter.done()
    assert waiter.lock.acquire(blocking=False)
    assert not waiter.lock.acquire(blocking=False)  # released once, not three times
    waiter.consumed()
    waiter.signal()  # released again once the thread went through the first signal
    assert waiter.lock.acquire(blocking=False)


def test_a_timer_runs_its_callback_once_and_never_after_cancel():
    runs: list[str] = []
    timer = ThreadTimer(1.0, lambda: runs.append("a"))
    timer.run()
    timer.run()
    cancelled = ThreadTimer(SOON, lambda: runs.append("b"))
    cancelled.cancel()
    cancelled.run()
    assert runs == ["a"]


def test_the_loop_schedules_ticks_now_and_windows_on_its_clock():
    loop = ThreadLoop("f")
    before = loop.time()
    window = loop.call_later(5.0, lambda: None)
    assert before + 5.0 <= window.deadline <= loop.time() + 5.0
    assert loop.call_soon(lambda: None).deadline == SOON
    assert not loop.is_closed()
    assert isinstance(loop.create_future(), ThreadWaiter)


def test_call_soon_threadsafe_runs_the_callback_under_the_lock_from_any_thread():
    loop = ThreadLoop("f")
    held: list[bool] = []
    loop.call_soon_threadsafe(lambda: held.append(loop.holds()))
    with loop:
        loop.call_soon_threadsafe(lambda: held.append(loop.holds()))
    assert held == [True, True]
    assert not loop.lock.locked()


def test_the_lock_refuses_its_own_thread_instead_of_deadlocking():
    loop = ThreadLoop("f")
    with loop, pytest.raises(RuntimeError, match="f: called from code that concresce runs while it holds"):
        loop.__enter__()
    assert not loop.lock.locked()


def test_the_real_clock_parks_until_a_signal_or_the_time_given():
    loop = ThreadLoop("f")
    waiter = loop.create_future()
    assert loop.clock.wait(waiter, loop.time() - 1.0) is False  # already past: no wait
    start = time.monotonic()
    assert loop.clock.wait(waiter, loop.time() + 0.01) is False
    assert time.monotonic() - start >= 0.009
    threading.Timer(0.01, lambda: waiter.set_result(None)).start()
    assert loop.clock.wait(waiter, loop.time() + PATIENCE) is True
    waiter.signal()  # consumed() was not called: a pending release is not repeated
    other = loop.create_future()
    threading.Timer(0.01, other.signal).start()
    assert loop.clock.wait(other, None) is True

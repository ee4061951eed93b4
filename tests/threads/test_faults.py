"""Faults of thread-batched calls: the leader's, and members that stop waiting."""

from __future__ import annotations

import threading

import pytest
from tests.threads.kit import PATIENCE, Caller, Gate, gated, held, virtual_clock

from concresce.threads import batch, collect, scatter


class BoomError(Exception):
    pass


class Dying(BaseException):
    """Stands for KeyboardInterrupt or SystemExit in a leader's thread."""


def test_the_leaders_exception_reaches_every_member_as_a_copy_and_the_next_batch_works():
    log: list[object] = []
    gate = Gate(log)

    @batch(max_concurrency=1)
    def get(x: int) -> int:
        xs = collect(x)
        gate("bulk", xs)
        if 13 in xs:
            raise BoomError(xs)
        return scatter(xs)

    clock = virtual_clock(get)
    leader, callers = held(get, clock, gate, 0, 13, 14, 15)
    gate.open()
    assert leader.join() == 0
    errors = []
    for caller in callers:
        with pytest.raises(BoomError) as info:
            caller.join()
        errors.append(info.value)
    assert [error.args for error in errors] == [([13, 14, 15],)] * 3
    assert len({id(error) for error in errors}) == 3  # the leader's own, and a copy each
    assert get(1) == 1
    stats = get.stats()
    assert (stats.batches, stats.leader_failures, stats.handovers) == (3, 1, 0)


def test_a_leader_that_returns_without_scatter_fails_everyone_with_a_runtime_error():
    log: list[object] = []
    gate = Gate(log)

    @batch(max_concurrency=1)
    def get(x: int) -> object:
        xs = collect(x)
        gate("bulk", xs)
        if len(xs) > 1:
            return xs  # 1.x-5.x style: routes nothing
        return scatter(xs)

    clock = virtual_clock(get)
    leader, callers = held(get, clock, gate, 0, 1, 2)
    gate.open()
    assert leader.join() == 0
    for caller in callers:
        with pytest.raises(RuntimeError, match="returned without calling scatter"):
            caller.join()


def test_a_leader_dying_of_a_base_exception_hands_the_batch_to_the_next_member():
    log: list[object] = []
    gate = Gate(log)
    runs: list[tuple[str, list[int]]] = []

    @batch(max_concurrency=1)
    def get(x: int) -> int:
        xs = collect(x)
        gate("bulk", xs)
        runs.append((threading.current_thread().name, xs))
        if x == 1:
            raise Dying
        return scatter([v * 10 for v in xs])

    clock = virtual_clock(get)
    leader, callers = held(get, clock, gate, 0, 1, 2, 3)
    gate.open()
    assert leader.join() == 0
    with pytest.raises(Dying):
        callers[0].join()  # the leader of [1, 2, 3] dies; its own call ends with it
    assert [c.join() for c in callers[1:]] == [20, 30]
    # 2 led the batch again, with the items of the members still waiting (1 is gone).
    assert [xs for _, xs in runs] == [[0], [1, 2, 3], [2, 3]]
    stats = get.stats()
    assert (stats.handovers, stats.leader_failures, stats.batches) == (1, 0, 2)


def test_a_follower_that_times_out_leaves_an_open_batch_and_its_item_is_not_passed_on():
    get, gate, log = gated(max_concurrency=1)

    clock = virtual_clock(get)
    leader = Caller(get, 0)
    gate.wait_reached()
    impatient = Caller(get, 1, timeout=0.5)
    clock.wait_parked(1)
    patient = Caller(get, 2)
    clock.wait_parked(2)
    clock.advance(0.5)
    with pytest.raises(TimeoutError, match="timed out"):
        impatient.join()
    clock.wait_parked(1)
    gate.open()
    assert leader.join() == 0
    assert patient.join() == 2
    assert log == [("bulk", [0]), ("bulk", [2])]
    assert get.stats().cancellations == 1


def test_a_timeout_that_has_not_passed_changes_nothing():
    get, gate, _ = gated(max_concurrency=1)
    clock = virtual_clock(get)
    leader, callers = held(get, clock, gate, 0, 1, 2, timeout=5)
    clock.advance(4.9)
    clock.wait_parked(2)
    gate.open()
    assert [c.join() for c in (leader, *callers)] == [0, 1, 2]


def test_a_timeout_does_not_bound_the_leaders_bulk_call_once_it_leads():
    get, gate, _ = gated(max_concurrency=1)
    clock = virtual_clock(get)
    leader, callers = held(get, clock, gate, 0, 1, timeout=1)
    gate.open()
    gate.wait_reached()  # [1] leads its batch now
    clock.advance(10)
    assert [c.join() for c in (leader, *callers)] == [0, 1]


def test_every_member_of_a_batch_timing_out_discards_it():
    get, gate, log = gated(max_concurrency=1)
    clock = virtual_clock(get)
    leader, callers = held(get, clock, gate, 0, 1, 2, timeout=1)
    clock.advance(1)
    for caller in callers:
        with pytest.raises(TimeoutError):
            caller.join()
    gate.open()
    assert leader.join() == 0
    assert get(3) == 3
    assert log == [("bulk", [0]), ("bulk", [3])]
    stats = get.stats()
    assert (stats.calls, stats.batches, stats.cancellations) == (4, 2, 2)


def test_the_member_keeping_a_window_times_out_and_another_member_keeps_it():
    log: list[object] = []

    @batch(max_window=2.0, max_concurrency=None)
    def get(x: int, timeout: float | None = None) -> int:
        xs = collect(x, timeout=timeout)
        log.append(("bulk", xs, clock.now))
        return scatter(xs)

    clock = virtual_clock(get)
    host = Caller(get, 1, timeout=1.0)  # opens the batch: keeps its window
    clock.wait_parked(1)
    other = Caller(get, 2)
    clock.wait_parked(2)
    clock.advance(1.0)
    with pytest.raises(TimeoutError):
        host.join()
    clock.wait_parked(1)
    clock.advance(1.0)  # the window ends: kept by the member left
    assert other.join() == 2
    assert log == [("bulk", [2], 2.0)]
    assert get.stats().flushes["window"] == 1


def test_bad_timeouts_are_refused_before_the_call_joins():
    @batch
    def get(x: object, timeout: object) -> object:
        return scatter(collect(x, timeout=timeout))  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="timeout must be a number of seconds or None, got '1'"):
        get(1, "1")
    with pytest.raises(TypeError, match="got True"):
        get(1, True)
    with pytest.raises(ValueError, match="timeout must be >= 0 and finite, got -1"):
        get(1, -1)
    with pytest.raises(ValueError, match="got inf"):
        get(1, float("inf"))
    assert get(5, 0) == 5  # a lone call leads at once: no wait, so no time-out
    assert get.stats().calls == 1


def test_keyboard_interrupt_in_the_main_thread_while_it_waits_leaves_the_batch():
    import signal  # noqa: PLC0415

    get, gate, log = gated(max_concurrency=1)

    clock = virtual_clock(get)
    leader = Caller(get, 0)
    gate.wait_reached()
    other = Caller(get, 1)
    clock.wait_parked(1)
    main = threading.main_thread().ident
    assert main == threading.get_ident()
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        # Once: a signal that lands just before the thread blocks is only seen at the next
        # one (CPython checks for signals when a blocking acquire is interrupted), so the
        # interrupter repeats it until the main thread has left.
        if not interrupted.is_set():
            interrupted.set()
            raise KeyboardInterrupt

    def interrupt() -> None:
        clock.wait_parked(2)  # the main thread is parked in collect()
        while not interrupted.wait(0.05):
            signal.pthread_kill(main, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, on_sigint)
    killer = threading.Thread(target=interrupt)
    try:
        killer.start()
        with pytest.raises(KeyboardInterrupt):
            get(2)
        killer.join(PATIENCE)
    finally:
        signal.signal(signal.SIGINT, previous)
    clock.wait_parked(1)
    gate.open()
    assert leader.join() == 0
    assert other.join() == 1
    assert log == [("bulk", [0]), ("bulk", [1])]
    assert get.stats().cancellations == 1


class _InterruptingTrace:
    """A batch trace whose join() raises KeyboardInterrupt once: an interrupt right after a join."""

    fired = False

    def join(self) -> None:
        if not _InterruptingTrace.fired:
            _InterruptingTrace.fired = True
            raise KeyboardInterrupt

    def start(self, batch: object) -> None: ...
    def end(self, batch: object, outcome: object, error: object) -> None: ...
    def release(self) -> None: ...


def test_an_interrupt_right_after_a_call_joined_leaves_no_member_behind(monkeypatch):
    from concresce._reporting import TRACING  # noqa: PLC0415

    get, gate, log = gated(max_concurrency=1)
    clock = virtual_clock(get)
    leader = Caller(get, 0)
    gate.wait_reached()
    monkeypatch.setattr(TRACING, "open", lambda batch: _InterruptingTrace())
    with pytest.raises(KeyboardInterrupt):
        get(1)  # joined the open batch, then interrupted before it could wait
    follower = Caller(get, 2)
    clock.wait_parked(1)
    gate.open()
    assert [leader.join(), follower.join()] == [0, 2]
    assert log == [("bulk", [0]), ("bulk", [2])]
    assert get.stats().cancellations == 1


def test_a_followers_copy_of_an_os_error_keeps_its_file_names():
    @batch(max_concurrency=1)
    def read(x: int) -> int:
        xs = collect(x)
        gate("bulk", xs)
        if len(xs) > 1:
            raise FileNotFoundError(2, "No such file or directory", "/missing/a", None, "/missing/b")
        return scatter(xs)

    log: list[object] = []
    gate = Gate(log)
    clock = virtual_clock(read)
    leader, callers = held(read, clock, gate, 0, 1, 2)
    gate.open()
    assert leader.join() == 0
    errors = []
    for caller in callers:
        with pytest.raises(FileNotFoundError) as info:
            caller.join()
        errors.append(info.value)
    assert [(e.errno, e.filename, e.filename2) for e in errors] == [(2, "/missing/a", "/missing/b")] * 2
    assert all("/missing/a" in str(e) for e in errors)


def test_a_followers_copy_of_an_import_error_keeps_its_name_and_path():
    @batch(max_concurrency=1)
    def load(x: int) -> int:
        xs = collect(x)
        gate("bulk", xs)
        if len(xs) > 1:
            message = "no plugin"
            raise ImportError(message, name="plugin", path="/plugins/plugin.py")
        return scatter(xs)

    log: list[object] = []
    gate = Gate(log)
    clock = virtual_clock(load)
    leader, callers = held(load, clock, gate, 0, 1, 2)
    gate.open()
    assert leader.join() == 0
    for caller in callers:
        with pytest.raises(ImportError) as info:
            caller.join()
        assert (info.value.name, info.value.path, info.value.args) == ("plugin", "/plugins/plugin.py", ("no plugin",))

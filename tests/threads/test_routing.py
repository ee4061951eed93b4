"""What each thread gets: its own result, its own exception result, or the batch's fault."""

from __future__ import annotations

import pytest
from tests.threads.kit import Caller, Gate, virtual_clock

from concresce import BatchRoutingError, MissingResultError
from concresce.threads import batch, collect, scatter


def _batch_of(fn, items, *, clock, gate):
    """Run ``fn`` over ``items``: the first call holds the slot until the others joined."""
    callers = [Caller(fn, items[0])]
    gate.wait_reached()
    for item in items[1:]:
        callers.append(Caller(fn, item))
        clock.wait_parked(len(callers) - 1)
    gate.open()
    return callers


def test_keyed_results_reach_their_callers_and_a_missing_key_gets_the_default():
    log: list[object] = []
    gate = Gate(log)
    rows = {1: "one", 3: "three"}

    @batch(max_concurrency=1)
    def get(key: int) -> str | None:
        keys = collect(key)
        if keys == [0]:
            gate("hold", keys)
        return scatter({k: rows[k] for k in keys if k in rows}, default=None)

    clock = virtual_clock(get)
    callers = _batch_of(get, [0, 3, 1, 2], clock=clock, gate=gate)
    assert [c.join() for c in callers] == [None, "three", "one", None]


def test_a_missing_key_without_default_fails_that_caller_alone():
    log: list[object] = []
    gate = Gate(log)

    @batch(max_concurrency=1)
    def get(key: int) -> int:
        keys = collect(key)
        if keys == [0]:
            gate("hold", keys)
        return scatter({k: k * 10 for k in keys if k != 2})

    clock = virtual_clock(get)
    callers = _batch_of(get, [0, 1, 2, 3], clock=clock, gate=gate)
    outcomes = [c.outcome() for c in callers]
    assert outcomes[0] == ("ok", 0)
    assert outcomes[1] == ("ok", 10)
    assert outcomes[2][0] == "MissingResultError"
    assert outcomes[3] == ("ok", 30)
    with pytest.raises(MissingResultError):
        callers[2].join()


def _parsed(text: str) -> int | Exception:
    try:
        return int(text)
    except ValueError as error:
        return error


def test_an_exception_result_is_raised_in_its_own_thread_only():
    log: list[object] = []
    gate = Gate(log)

    @batch(max_concurrency=1)
    def parse(text: str) -> int:
        texts = collect(text)
        if texts == ["0"]:
            gate("hold", texts)
        return scatter([_parsed(t) for t in texts])

    clock = virtual_clock(parse)
    callers = _batch_of(parse, ["0", "7", "x", "9"], clock=clock, gate=gate)
    assert [c.outcome()[0] for c in callers] == ["ok", "ok", "ValueError", "ok"]
    assert callers[1].join() == 7
    assert callers[3].join() == 9


def test_a_leaders_own_exception_result_is_raised_in_the_leader():
    log: list[object] = []
    gate = Gate(log)

    @batch(max_concurrency=1)
    def check(x: int) -> int:
        xs = collect(x)
        if x == 5:
            gate("bulk", xs)
        return scatter([ValueError(v) if v == 5 else v for v in xs])

    clock = virtual_clock(check)
    callers = _batch_of(check, [5, 6], clock=clock, gate=gate)
    # 5 led its own batch of one; 6 got its value.
    assert callers[0].outcome() == ("ValueError", "5")
    assert callers[1].join() == 6


def test_results_that_cannot_be_routed_fail_every_member_with_a_routing_error():
    log: list[object] = []
    gate = Gate(log)

    @batch(max_concurrency=1)
    def get(x: int) -> int:
        xs = collect(x)
        if xs == [0]:
            gate("hold", xs)
            return scatter(xs)
        return scatter([*xs, 99])  # one result too many

    clock = virtual_clock(get)
    callers = _batch_of(get, [0, 1, 2], clock=clock, gate=gate)
    assert callers[0].join() == 0
    for caller in callers[1:]:
        with pytest.raises(BatchRoutingError, match="3 results for 2 callers"):
            caller.join()
    stats = get.stats()
    assert (stats.batches, stats.leader_failures) == (2, 1)


def test_dedupe_gives_equal_items_one_slot_and_each_caller_its_result():
    log: list[object] = []
    gate = Gate(log)

    @batch(max_concurrency=1, dedupe=True)
    def get(x: str) -> str:
        xs = collect(x)
        if xs == ["first"]:
            gate("hold", xs)
        else:
            log.append(("bulk", xs))
        return scatter([v * 2 for v in xs])

    clock = virtual_clock(get)
    callers = _batch_of(get, ["first", "a", "b", "a", "a"], clock=clock, gate=gate)
    assert [c.join() for c in callers] == ["firstfirst", "aa", "bb", "aa", "aa"]
    assert log == [("hold", ["first"]), ("bulk", ["a", "b"])]


def test_an_exception_result_shared_by_duplicates_is_a_copy_in_each_other_thread():
    log: list[object] = []
    gate = Gate(log)
    shared = KeyError("gone")

    @batch(max_concurrency=1, dedupe=True)
    def get(x: str) -> str:
        xs = collect(x)
        if xs == ["first"]:
            gate("hold", xs)
            return scatter(xs)
        return scatter([shared for _ in xs])

    clock = virtual_clock(get)
    callers = _batch_of(get, ["first", "k", "k", "k"], clock=clock, gate=gate)
    errors = []
    for caller in callers[1:]:
        with pytest.raises(KeyError) as info:
            caller.join()
        errors.append(info.value)
    assert sum(error is shared for error in errors) == 1  # one raised as it is, two copies
    assert all(error.args == ("gone",) for error in errors)

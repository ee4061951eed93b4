"""Observers: ``@batch(observer=...)``, ``add_observer()`` / ``remove_observer()`` (issue 5, "hooks").

An observer is called once per dispatched batch, when the batch ends, with a ``BatchRecord``.
Each test asserts whole records. The global registry is emptied before each test and restored
after it by the autouse ``registry`` fixture.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
from tests.support import Recorder, wait_all_tasks_blocked

from concresce import BatchRecord, add_observer, batch, collect, remove_observer, scatter
from concresce._stats import OBSERVERS

pytestmark = pytest.mark.anyio

NEVER = 3600.0


@pytest.fixture(autouse=True)
def registry():
    """Start every test with no global observer; put back whatever was registered before."""
    saved = list(OBSERVERS)
    OBSERVERS.clear()
    yield OBSERVERS
    OBSERVERS[:] = saved


class BoomError(Exception):
    pass


class AnySeconds:
    """Equal to any float >= 0: a time measured on a real clock (uvloop)."""

    def __eq__(self, other):
        return isinstance(other, float) and other >= 0

    def __hash__(self):
        return 0

    def __repr__(self):
        return "<any seconds>"


def record_of(fn_name, **fields):
    """A BatchRecord with the defaults of a plain successful batch.

    ``waited`` and ``duration`` are compared with ``pytest.approx`` when given (virtual
    clock), else they may be any number of seconds.
    """
    defaults = {
        "function": fn_name,
        "partition": None,
        "calls": 1,
        "size": 1,
        "reason": "size",
        "outcome": "ok",
        "error": None,
        "handovers": 0,
    }
    values = {**defaults, **fields}
    for name in ("waited", "duration"):
        values[name] = pytest.approx(values[name], abs=1e-9) if name in values else AnySeconds()
    return BatchRecord(**values)


# --------------------------------------------------------------------------------------
# What an observer receives
# --------------------------------------------------------------------------------------


async def test_a_function_observer_gets_one_record_per_batch(clock):
    """The record names the function, counts calls and items, says why and how long."""
    records = Recorder()

    @batch(max_window=0.03, max_size=10, observer=records)
    async def work(item):
        items = await collect(item)
        await asyncio.sleep(0.25)
        return scatter([x * 2 for x in items])

    assert await asyncio.gather(work(1), work(2), work(3)) == [2, 4, 6]
    assert await work(4) == 8

    name = work.__qualname__
    assert records == [
        record_of(name, calls=3, size=3, reason="window", waited=0.03, duration=0.25),
        record_of(name, calls=1, size=1, reason="window", waited=0.03, duration=0.25),
    ]
    assert name.endswith("test_a_function_observer_gets_one_record_per_batch.<locals>.work")


async def test_the_record_of_a_failed_batch_names_the_error_type():
    """A leader that raises before scatter() ends its batch with outcome error and the exception's type."""
    records = Recorder()

    @batch(max_window=NEVER, max_size=2, observer=records)
    async def work(item):
        await collect(item)
        raise BoomError

    results = await asyncio.gather(work(1), work(2), return_exceptions=True)

    assert [type(result) for result in results] == [BoomError, BoomError]
    assert records == [record_of(work.__qualname__, calls=2, size=2, outcome="error", error=BoomError)]


async def test_the_record_of_a_leader_without_scatter_is_a_runtime_error():
    records = Recorder()

    @batch(max_window=NEVER, max_size=1, observer=records)
    async def work(item):
        await collect(item)
        return item

    with pytest.raises(RuntimeError, match="without calling scatter"):
        await work(1)
    assert records == [record_of(work.__qualname__, outcome="error", error=RuntimeError)]


async def test_dedupe_counts_calls_and_size_apart():
    records = Recorder()

    @batch(max_window=NEVER, max_size=2, dedupe=True, observer=records)
    async def work(item):
        items = await collect(item)
        return scatter(items)

    assert await asyncio.gather(work("a"), work("a"), work("b")) == ["a", "a", "b"]
    assert records == [record_of(work.__qualname__, calls=3, size=2)]


async def test_a_handover_then_success_is_one_ok_record_with_the_handover_counted(clock):
    """The leader cancelled in its bulk call: one record, for the run that routed the batch."""
    records = Recorder()

    @batch(max_window=NEVER, max_size=3, observer=records)
    async def work(item):
        items = await collect(item)
        await asyncio.sleep(1.0)
        return scatter(items)

    tasks = [asyncio.create_task(work(x)) for x in (1, 2, 3)]
    await asyncio.sleep(0.4)
    tasks[0].cancel()
    await asyncio.wait(tasks)

    assert tasks[0].cancelled()
    assert [task.result() for task in tasks[1:]] == [2, 3]
    assert records == [record_of(work.__qualname__, calls=3, size=2, duration=1.4, handovers=1)]


async def test_a_leader_leaving_with_nobody_to_take_over_ends_with_outcome_handover(clock):
    """The only member, cancelled in its bulk call: the batch ends with outcome handover."""
    records = Recorder()

    @batch(max_window=0.01, observer=records)
    async def work(item):
        items = await collect(item)
        await asyncio.sleep(1.0)
        return scatter(items)

    task = asyncio.create_task(work(1))
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.wait([task])

    assert task.cancelled()
    assert records == [
        record_of(work.__qualname__, reason="window", waited=0.01, duration=0.49, outcome="handover", handovers=1)
    ]


async def test_a_batch_whose_members_all_left_before_the_dispatch_has_no_record():
    records = Recorder()

    @batch(max_window=NEVER, observer=records)
    async def work(item):
        items = await collect(item)
        return scatter(items)

    task = asyncio.create_task(work(1))
    await wait_all_tasks_blocked()
    task.cancel()
    await asyncio.wait([task])

    assert records == []
    assert work.stats().cancellations == 1


async def test_the_partition_is_the_repr_of_the_group_by_key():
    records = Recorder()

    @batch(max_window=NEVER, max_size=2, group_by=lambda item, tenant: tenant, observer=records)
    async def work(item, tenant):
        items = await collect(item)
        return scatter([(tenant, x) for x in items])

    results = await asyncio.gather(work(1, "acme"), work(2, 7), work(3, "acme"), work(4, 7))

    assert results == [("acme", 1), (7, 2), ("acme", 3), (7, 4)]
    name = work.__qualname__
    assert records == [
        record_of(name, partition="'acme'", calls=2, size=2),
        record_of(name, partition="7", calls=2, size=2),
    ]


async def test_the_partition_of_a_method_names_its_instance():
    """A method batches per instance: the partition is the repr of the instance's id."""
    records = Recorder()

    class Store:
        @batch(max_window=NEVER, max_size=1, observer=records)
        async def get(self, key):
            keys = await collect(key)
            return scatter(keys)

        @batch(max_window=NEVER, max_size=1, group_by=lambda self, key, *, shard: shard, observer=records)
        async def sharded(self, key, *, shard):
            keys = await collect(key)
            return scatter(keys)

    store = Store()
    assert await store.get(1) == 1
    assert await store.sharded(2, shard="s1") == 2

    assert records == [
        record_of(Store.get.__qualname__, partition=repr(id(store))),
        record_of(Store.sharded.__qualname__, partition=repr((id(store), "s1"))),
    ]


# --------------------------------------------------------------------------------------
# Global observers, order, registration
# --------------------------------------------------------------------------------------


async def test_the_function_observer_runs_first_then_global_ones_in_registration_order(registry):
    calls = Recorder()

    def first(record):
        calls("first", record.function)

    def second(record):
        calls("second", record.function)

    @batch(max_size=1, observer=lambda record: calls("own", record.function))
    async def work(item):
        items = await collect(item)
        return scatter(items)

    @batch(max_size=1)
    async def other(item):
        items = await collect(item)
        return scatter(items)

    add_observer(second)
    add_observer(first)
    assert registry == [second, first]
    assert await work(1) == 1
    assert await other(2) == 2

    assert calls == [
        ("own", work.__qualname__),
        ("second", work.__qualname__),
        ("first", work.__qualname__),
        ("second", other.__qualname__),
        ("first", other.__qualname__),
    ]


async def test_adding_an_observer_twice_registers_it_once(registry):
    records = Recorder()

    @batch(max_size=1)
    async def work(item):
        items = await collect(item)
        return scatter(items)

    add_observer(records)
    add_observer(records)
    assert await work(1) == 1

    assert registry == [records]
    assert records == [record_of(work.__qualname__)]


async def test_a_removed_observer_is_no_longer_called(registry):
    records = Recorder()

    @batch(max_size=1)
    async def work(item):
        items = await collect(item)
        return scatter(items)

    add_observer(records)
    assert await work(1) == 1
    remove_observer(records)
    assert await work(2) == 2

    assert registry == []
    assert len(records) == 1


def test_removing_an_unknown_observer_is_a_value_error():
    def observer(record):
        pass

    with pytest.raises(ValueError, match="is not a registered observer") as info:
        remove_observer(observer)
    assert "observer" in str(info.value)


@pytest.mark.parametrize("value", [1, "log", None])
def test_a_non_callable_observer_is_a_type_error(value, registry):
    with pytest.raises(TypeError, match="observer must be callable"):
        add_observer(value)  # type: ignore[arg-type]
    assert registry == []


@pytest.mark.parametrize("value", [1, "log"])
def test_a_non_callable_observer_option_is_a_type_error_at_decoration(value):
    with pytest.raises(TypeError, match="observer must be a callable or None"):
        batch(observer=value)  # type: ignore[arg-type]


def test_the_record_is_frozen():
    record = record_of("f")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.size = 2  # type: ignore[misc]


# --------------------------------------------------------------------------------------
# Observers that fail
# --------------------------------------------------------------------------------------


async def test_an_observer_that_raises_is_logged_and_callers_still_get_results(caplog, registry):
    """The exception goes to the "concresce" logger; the next observer still runs; nobody sees it."""
    records = Recorder()

    def broken(record):
        raise BoomError(record.function)

    @batch(max_window=NEVER, max_size=2, observer=broken)
    async def work(item):
        items = await collect(item)
        return scatter([x * 10 for x in items])

    add_observer(broken)
    add_observer(records)
    with caplog.at_level(logging.ERROR, logger="concresce"):
        assert await asyncio.gather(work(1), work(2)) == [10, 20]

    assert records == [record_of(work.__qualname__, calls=2, size=2)]
    logged = [(r.levelno, r.getMessage(), r.exc_info[0]) for r in caplog.records if r.name == "concresce"]
    # The records' tracebacks hold the frames that ended the batch: let them go.
    caplog.clear()
    message = f"concresce: observer {broken!r} raised for a batch of {work.__qualname__}"
    assert logged == [(logging.ERROR, message, BoomError)] * 2


async def test_an_observer_failing_on_a_failed_batch_does_not_change_the_callers_error(caplog):
    def broken(record):
        raise BoomError

    @batch(max_window=NEVER, max_size=2, observer=broken)
    async def work(item):
        await collect(item)
        raise KeyError(item)

    with caplog.at_level(logging.ERROR, logger="concresce"):
        results = await asyncio.gather(work(1), work(2), return_exceptions=True)

    assert [type(result) for result in results] == [KeyError, KeyError]
    assert [r.exc_info[0] for r in caplog.records if r.name == "concresce"] == [BoomError]
    caplog.clear()
    del results

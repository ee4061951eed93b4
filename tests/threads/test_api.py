"""The thread API's shape: what it decorates, its options, misuse, partitions, nesting."""

from __future__ import annotations

import functools
import inspect
import logging
import threading

import pytest
from tests.threads.kit import Caller, Gate, gated, virtual_clock

import concresce
from concresce import OverloadedError
from concresce.threads import ThreadBatched, batch, collect, scatter


def test_the_decorated_function_keeps_its_name_signature_and_docstring():
    @batch(max_size=10)
    def get_user(user_id: int, *, verbose: bool = False) -> str:
        """Fetch a user."""
        return scatter([f"user {i}" for i in collect(user_id)])

    assert get_user.__name__ == "get_user"
    assert get_user.__doc__ == "Fetch a user."
    assert str(inspect.signature(get_user)) == "(user_id: 'int', *, verbose: 'bool' = False) -> 'str'"
    assert not inspect.iscoroutinefunction(get_user)
    assert get_user(3, verbose=True) == "user 3"
    assert batch.__module__ == collect.__module__ == scatter.__module__ == "concresce.threads"
    assert ThreadBatched.__module__ == "concresce.threads"


def test_the_async_decorator_on_a_plain_def_is_a_type_error_naming_the_thread_one():
    def get(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"concresce.threads.batch"):
        concresce.batch(get)
    with pytest.raises(TypeError, match=r"plain \(not async\) function"):
        concresce.batch(max_size=3)(get)


def test_the_thread_decorator_on_an_async_def_is_a_type_error_naming_the_async_one():
    async def get(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"got the `async def`.*decorate it with concresce.batch"):
        batch(get)
    with pytest.raises(TypeError, match=r"concresce.batch"):
        batch(max_size=3)(get)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda: (yield), "generator function"),
        (42, "options are keyword-only: @batch\\(max_window=42\\)"),
        ("get", "of type str"),
        (staticmethod(lambda x: x), "put @staticmethod above @batch"),
    ],
)
def test_what_the_thread_decorator_refuses(fn, message):
    with pytest.raises(TypeError, match=message):
        batch(fn)


def test_an_async_generator_function_is_refused_by_both():
    async def agen(x: int):
        yield x

    with pytest.raises(TypeError, match="async generator"):
        batch(agen)
    with pytest.raises(TypeError, match="async generator"):
        concresce.batch(agen)


def test_options_are_checked_like_the_async_decorators():
    with pytest.raises(TypeError, match="has no option window="):
        batch(window=0.1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="keyword only"):
        batch(0.05, 100)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="max_concurrency"):
        batch(max_concurrency=0)
    with pytest.raises(ValueError, match="weight needs max_weight"):
        batch(weight=len)


def test_the_default_max_concurrency_is_four():
    @batch
    def get(x: int) -> int:
        return scatter(collect(x))

    assert get.stats.__self__.batcher.max_concurrency == 4


def test_a_callable_object_and_a_partial_can_be_decorated():
    class Doubler:
        def __call__(self, x: int) -> int:
            return scatter([v * 2 for v in collect(x)])

    def scale(factor: int, x: int) -> int:
        return scatter([v * factor for v in collect(x)])

    assert batch(Doubler())(4) == 8
    tripled = batch(functools.partial(scale, 3))
    assert tripled(5) == 15
    assert tripled.__name__ == "partial(test_a_callable_object_and_a_partial_can_be_decorated.<locals>.scale)"


def test_collect_and_scatter_outside_a_thread_batched_call_say_what_to_do():
    with pytest.raises(RuntimeError, match=r"outside a call of a function decorated with concresce.threads.batch"):
        collect(1)
    with pytest.raises(RuntimeError, match=r"concresce.threads.scatter\(\) was used outside"):
        scatter([1])


def test_the_async_collect_and_scatter_in_a_thread_batched_call_point_to_the_thread_ones():
    @batch
    def get(x: int) -> int:
        concresce.scatter([x])
        return x

    with pytest.raises(RuntimeError, match=r"use concresce.threads.collect\(\) and scatter\(\) in it"):
        get(1)


def test_collect_twice_and_scatter_twice_or_by_a_follower_are_refused():
    @batch
    def twice(x: int) -> int:
        collect(x)
        return scatter(collect(x))

    with pytest.raises(RuntimeError, match=r"collect\(\) was called twice in one call"):
        twice(1)

    @batch
    def scatter_twice(x: int) -> int:
        xs = collect(x)
        scatter(xs)
        return scatter(xs)

    with pytest.raises(RuntimeError, match=r"scatter\(\) was already called"):
        scatter_twice(1)

    @batch
    def early(x: int) -> int:
        return scatter([x])

    with pytest.raises(RuntimeError, match="before this call called collect"):
        early(1)


def test_a_call_that_never_collects_is_an_ordinary_call():
    @batch
    def cached(x: int) -> int:
        if x < 0:
            return 0
        return scatter(collect(x))

    assert cached(-1) == 0
    assert cached.stats().calls == 0


def test_methods_batch_per_instance_and_group_by_per_key():
    log: list[object] = []
    gate = Gate(log)

    class Repo:
        def __init__(self, name: str) -> None:
            self.name = name

        @batch(max_concurrency=1)
        def get(self, x: int) -> str:
            xs = collect(x)
            gate(self.name, xs)
            return scatter([f"{self.name}{v}" for v in xs])

    first, second = Repo("a"), Repo("b")
    clock = virtual_clock(Repo.get)
    holders = [Caller(first.get, 0), Caller(second.get, 0)]
    gate.wait_reached()
    gate.wait_reached()  # one batch per instance runs: each holds its partition's slot
    callers = [Caller(first.get, 1), Caller(second.get, 2), Caller(first.get, 3)]
    clock.wait_parked(3)
    gate.open()
    assert [c.join() for c in (*holders, *callers)] == ["a0", "b0", "a1", "b2", "a3"]
    assert sorted(log[2:]) == [("a", [1, 3]), ("b", [2])]


def test_group_by_partitions_calls_and_a_failing_group_by_fails_that_call_alone():
    @batch(group_by=lambda table, key: table)
    def get(table: str, key: int) -> str:
        keys = collect(key)
        return scatter([f"{table}:{k}" for k in keys])

    assert get("users", 1) == "users:1"
    with pytest.raises(TypeError, match="unhashable"):
        batch(group_by=lambda x: [x])(lambda x: scatter(collect(x)))([1])


def test_max_pending_sheds_calls_beyond_it_with_overloaded_error():
    get, gate, _ = gated(max_concurrency=1, max_pending=1)

    clock = virtual_clock(get)
    leader = Caller(get, 0)
    gate.wait_reached()
    waiting = Caller(get, 1)
    clock.wait_parked(1)
    with pytest.raises(OverloadedError):
        get(2)
    gate.open()
    assert [leader.join(), waiting.join()] == [0, 1]
    assert get.stats().shed == 1


def test_weights_close_a_batch_before_an_item_would_tip_it_over():
    get, gate, log = gated(max_concurrency=1, weight=len, max_weight=5)

    clock = virtual_clock(get)
    leader = Caller(get, "")
    gate.wait_reached()
    callers = []
    for item in ("aa", "bbb", "cc"):
        callers.append(Caller(get, item))
        clock.wait_parked(len(callers))
    gate.open()
    assert [c.join() for c in (leader, *callers)] == ["", "aa", "bbb", "cc"]
    assert log == [("bulk", [""]), ("bulk", ["aa", "bbb"]), ("bulk", ["cc"])]


def test_an_observer_sees_each_batch_and_one_that_calls_the_function_is_refused_not_deadlocked(caplog):
    records = []

    def observe(record: object) -> None:
        records.append(record)
        get(0)  # runs under the function's lock: refused

    @batch(observer=observe)
    def get(x: int) -> int:
        return scatter(collect(x))

    with caplog.at_level(logging.ERROR, logger="concresce"):
        assert get(5) == 5
    assert [(r.function, r.size, r.outcome) for r in records] == [(get.__qualname__, 1, "ok")]
    assert "a call of the function from code that concresce runs while it holds this function's lock" in caplog.text
    caplog.clear()  # its traceback holds the frames of the calls


def test_a_bulk_section_may_call_other_thread_batched_functions_and_itself_when_a_slot_is_free():
    @batch
    def inner(x: int) -> int:
        return scatter([v + 1 for v in collect(x)])

    @batch(max_concurrency=2)
    def outer(x: int) -> int:
        xs = collect(x)
        if x > 0:
            nested = outer(x - 1)  # a second slot is free
            return scatter([inner(v) + nested for v in xs])
        return scatter([inner(v) for v in xs])

    assert outer(0) == 1
    assert outer(1) == 3


def test_a_bulk_section_calling_its_own_function_while_every_slot_is_held_is_refused():
    @batch(max_concurrency=1)
    def get(x: int) -> int:
        xs = collect(x)
        if x > 0:
            get(x - 1)
        return scatter(xs)

    with pytest.raises(RuntimeError, match=r"could never run \(a deadlock\)"):
        get(1)
    assert get(0) == 0


def test_the_auto_flush_is_for_async_functions_and_threads_say_what_to_set_instead():
    from concresce import Auto  # noqa: PLC0415

    with pytest.raises(ValueError, match="already adapts to its load by group commit"):
        batch(max_window="auto")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="is for async functions"):
        batch(max_window=Auto())  # type: ignore[call-overload]

    @batch
    def get(x: int) -> int:
        return scatter(collect(x))

    with pytest.raises(ValueError, match="group commit"):
        get.configure(max_window="auto")  # type: ignore[arg-type]
    assert get.stats.__self__.batcher.max_window == 0


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_a_chain_of_calls_from_bulk_sections_deeper_than_the_slots_is_refused(limit):
    served: list[int] = []

    @batch(max_concurrency=limit)
    def rec(x: int) -> int:
        items = collect(x)
        if x > 0:
            rec(x - 1)
        served.append(x)
        return scatter(items)

    assert rec(limit - 1) == limit - 1  # as deep as the slots: every level gets one
    assert served == list(range(limit))
    with pytest.raises(RuntimeError, match=r"could never run \(a deadlock\)"):
        rec(limit)  # one level more: the innermost call could never get a slot
    assert rec.stats().in_flight_now == 0


def test_the_same_chain_is_refused_on_asyncio():
    import asyncio  # noqa: PLC0415

    @concresce.batch(max_concurrency=2)
    async def rec(x: int) -> int:
        items = await concresce.collect(x)
        if x > 0:
            await rec(x - 1)
        return concresce.scatter(items)

    async def main() -> None:
        assert await rec(1) == 1
        with pytest.raises(RuntimeError, match=r"could never run \(a deadlock\)"):
            await asyncio.wait_for(rec(2), 10)

    asyncio.run(main())


def test_a_callable_object_whose_call_is_async_or_a_generator_is_refused():
    class AsyncCall:
        async def __call__(self, x: int) -> int:
            return x

    class GeneratorCall:
        def __call__(self, x: int):
            yield x

    with pytest.raises(TypeError, match=r"got the `async def`.*concresce\.batch"):
        batch(AsyncCall())
    with pytest.raises(TypeError, match="generator function"):
        batch(GeneratorCall())


def test_scatter_before_collect_in_a_thread_batched_call_does_not_talk_of_await():
    @batch
    def early(x: int) -> int:
        return scatter([x])

    with pytest.raises(RuntimeError, match=r"called before this call called collect\(\)") as info:
        early(1)
    assert "await collect" not in str(info.value)


def test_time_outs_may_be_timedeltas():
    from datetime import timedelta  # noqa: PLC0415

    @batch
    def get(x: int) -> int:
        return scatter(collect(x, timeout=timedelta(seconds=1)))

    assert get(3) == 3
    get.drain(timeout=timedelta(milliseconds=10))


def test_a_call_from_another_functions_bulk_section_waits_for_a_slot_like_any_call():
    """Not a deadlock: the caller leads a batch of another function, which holds no slot here."""
    import asyncio  # noqa: PLC0415

    order: list[str] = []

    @concresce.batch(max_concurrency=1)
    async def inner(x: int) -> int:
        items = await concresce.collect(x)
        order.append(f"inner {items}")
        if x == 0:
            started.set()
            await held.wait()
        return concresce.scatter(items)

    @concresce.batch
    async def outer(x: int) -> int:
        items = await concresce.collect(x)
        result = await inner(x)  # every slot of inner is held: it waits, and is served
        return concresce.scatter([result for _ in items])

    async def main() -> None:
        holder = asyncio.ensure_future(inner(0))
        await started.wait()
        caller = asyncio.ensure_future(outer(1))
        for _ in range(10):
            await asyncio.sleep(0)
        held.set()
        assert await asyncio.wait_for(asyncio.gather(holder, caller), 10) == [0, 1]

    held = asyncio.Event()
    started = asyncio.Event()
    asyncio.run(main())
    assert order == ["inner [0]", "inner [1]"]


def test_a_forked_childs_fresh_start_gives_new_locks_and_forgets_other_threads_calls():
    from concresce._calls import CALLS  # noqa: PLC0415
    from concresce._thread_controls import _start_afresh_after_fork  # noqa: PLC0415

    @batch
    def get(x: int) -> int:
        return scatter(collect(x))

    @concresce.batch
    async def unaffected(x: int) -> int:  # an async function: no lock, its partitions are per loop
        return concresce.scatter(await concresce.collect(x))

    loop = get.stats.__self__.batcher.home
    lock = loop.lock
    ghost = -12345  # a thread of the parent's that does not exist in the child
    task = object()  # a task of an event loop, which the fork hook leaves alone
    me = threading.get_ident()  # the thread that forked: its own call stays
    for key in (ghost, task, me):
        CALLS[key] = object()  # type: ignore[assignment]
    try:
        _start_afresh_after_fork()
        assert ghost not in CALLS
        assert task in CALLS
        assert me in CALLS
    finally:
        for key in (ghost, task, me):
            CALLS.pop(key, None)
    assert loop.lock is not lock
    assert not loop.holds()
    assert get(4) == 4
    assert unaffected.stats.__self__.batcher.home is None

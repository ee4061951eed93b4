"""Isolation and partitions: loops, instances, classes and group_by keys (SPEC.md "Isolation and partitions").

A batch only ever holds calls of one partition: one event loop, and within it one instance
(methods), one class (classmethods) or one ``group_by`` key. Each test records the items of
every batch together with the partition its leader saw, and asserts the whole record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import weakref

import pytest
from tests.support import Recorder, gc_collect_harder, partitions_of, wait_all_tasks_blocked

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


def echo_batch(record, **options):
    """Return a ``@batch(**options)`` function that records each batch's items and returns ``("ok", item)``."""

    @batch(**options)
    async def echo(item):
        items = await collect(item)
        record(items)
        return scatter([("ok", x) for x in items])

    return echo


# --------------------------------------------------------------------------------------
# Event loops
# --------------------------------------------------------------------------------------


def new_eager_loop():
    loop = asyncio.new_event_loop()
    loop.set_task_factory(asyncio.eager_task_factory)
    return loop


LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop}
if sys.version_info >= (3, 12):
    LOOP_FACTORIES["asyncio+eager"] = new_eager_loop
if sys.platform != "win32":
    import uvloop

    LOOP_FACTORIES["uvloop"] = uvloop.new_event_loop


@pytest.mark.parametrize("new_loop", LOOP_FACTORIES.values(), ids=LOOP_FACTORIES.keys())
def test_two_loops_in_two_threads_never_share_a_batch(new_loop):
    """The same function used at once from two loops in two threads keeps one batch per loop."""
    batches = Recorder()
    # Flushed by size, never by the window: no real time passes unless batches were mixed.
    echo = echo_batch(batches, max_window=10, max_size=3)
    partitions = partitions_of(echo)
    open_partitions = []
    # Each thread reaches the barrier with two calls waiting in its open batch; the action
    # runs while both loops are blocked there, i.e. while both batches are open.
    barrier = threading.Barrier(2, action=lambda: open_partitions.append(len(partitions)), timeout=10)
    results = {}
    errors = []

    async def main(tag):
        first = [asyncio.create_task(echo((tag, i))) for i in range(2)]
        await wait_all_tasks_blocked()
        barrier.wait()
        return await asyncio.gather(*first, echo((tag, 2)))

    def run(tag):
        loop = new_loop()
        try:
            results[tag] = loop.run_until_complete(asyncio.wait_for(main(tag), 10))
        except BaseException as error:  # noqa: BLE001 -- reported by the test below
            errors.append(error)
        finally:
            loop.close()

    threads = [threading.Thread(target=run, args=(tag,)) for tag in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert open_partitions == [2]
    assert sorted(batches) == [[("A", 0), ("A", 1), ("A", 2)], [("B", 0), ("B", 1), ("B", 2)]]
    assert results == {tag: [("ok", (tag, i)) for i in range(3)] for tag in "AB"}
    assert partitions == {}


def test_successive_asyncio_run_calls_work_and_leave_no_state():
    """Each ``asyncio.run`` gets fresh batches; afterwards no partition is left and no loop is kept alive."""
    batches = Recorder()
    echo = echo_batch(batches)
    partitions = partitions_of(echo)
    loops = []
    left_over = []

    async def main(n):
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await asyncio.gather(*(echo(i) for i in range(n)))

    for n in (3, 2):
        assert asyncio.run(main(n)) == [("ok", i) for i in range(n)]
        left_over.append(dict(partitions))
    gc_collect_harder()

    assert batches == [[0, 1, 2], [0, 1]]
    assert left_over == [{}, {}]
    assert [loop() for loop in loops] == [None, None]


async def test_no_partition_outlives_its_batches():
    """Once every call has returned, the function's partition table is empty again."""

    release = asyncio.Event()

    class Repo:
        @batch(group_by=lambda self, key, *, tenant: tenant)
        async def get(self, key, *, tenant):
            keys = await collect(key)
            await release.wait()
            return scatter([f"{tenant}:{k}" for k in keys])

    a, b = Repo(), Repo()
    partitions = partitions_of(Repo.get)
    calls = [a.get(1, tenant="x"), a.get(2, tenant="y"), b.get(3, tenant="x")]

    tasks = [asyncio.create_task(call) for call in calls]
    await wait_all_tasks_blocked()  # three batches (two instances, two tenants) are running
    while_running = len(partitions)
    release.set()
    assert await asyncio.gather(*tasks) == ["x:1", "y:2", "x:3"]

    assert while_running == 3
    assert partitions == {}


# --------------------------------------------------------------------------------------
# Methods, classmethods, staticmethods
# --------------------------------------------------------------------------------------


class Named:
    """An instance with a name, whose ``fetch`` method is batched."""

    def __init__(self, name, record):
        self.name = name
        self.record = record

    @batch
    async def fetch(self, key):
        members = await collect((self, key))
        self.record(self.name, [key for _, key in members], [member is self for member, _ in members])
        return scatter([f"{self.name}:{key}" for _, key in members])


async def test_method_calls_on_different_instances_never_share_a_batch():
    """A decorated method batches per instance: interleaved calls on two instances make two batches."""
    record = Recorder()
    a, b = Named("a", record), Named("b", record)

    results = await asyncio.gather(a.fetch(1), b.fetch(2), a.fetch(3), b.fetch(4))

    assert results == ["a:1", "b:2", "a:3", "b:4"]
    assert record == [("a", [1, 3], [True, True]), ("b", [2, 4], [True, True])]


async def test_method_leaders_self_is_every_members_self():
    """Every member of a method's batch was called on the instance its leader runs with."""
    record = Recorder()
    instances = [Named(f"n{i}", record) for i in range(3)]

    await asyncio.gather(*(instance.fetch(key) for key in range(3) for instance in instances))

    assert [same for _, _, same in record] == [[True, True, True]] * 3
    assert [name for name, _, _ in record] == ["n0", "n1", "n2"]


async def test_instances_are_not_kept_alive():
    """After its calls returned, an instance whose method was batched can be garbage collected."""
    record = Recorder()
    instance = Named("gone", record)
    ref = weakref.ref(instance)

    assert await asyncio.gather(instance.fetch(1), instance.fetch(2)) == ["gone:1", "gone:2"]
    del instance
    gc_collect_harder()

    assert ref() is None
    assert record == [("gone", [1, 2], [True, True])]


async def test_unhashable_instances_batch_per_identity():
    """Equal but distinct unhashable instances (dataclasses) work, and never share a batch."""
    record = Recorder()

    @dataclasses.dataclass
    class Account:
        name: str

        @batch
        async def balance(self, currency):
            currencies = await collect(currency)
            record(self, currencies)
            return scatter([f"{self.name}:{c}" for c in currencies])

    first, second = Account("x"), Account("x")
    assert first == second
    assert Account.__hash__ is None

    results = await asyncio.gather(first.balance("eur"), second.balance("usd"), first.balance("usd"))

    assert results == ["x:eur", "x:usd", "x:usd"]
    assert [(account is first, currencies) for account, currencies in record] == [
        (True, ["eur", "usd"]),
        (False, ["usd"]),
    ]


async def test_classmethod_batches_per_class():
    """A batched classmethod batches per class: a subclass has its own batches, through class or instance."""
    record = Recorder()

    class Base:
        @classmethod
        @batch
        async def load(cls, key):
            keys = await collect(key)
            record(cls.__name__, keys)
            return scatter([f"{cls.__name__}:{k}" for k in keys])

    class Sub(Base):
        pass

    results = await asyncio.gather(Base.load(1), Sub.load(2), Base().load(3), Sub().load(4))

    assert results == ["Base:1", "Sub:2", "Base:3", "Sub:4"]
    assert record == [("Base", [1, 3]), ("Sub", [2, 4])]


async def test_staticmethod_shares_one_batch():
    """A batched staticmethod has one batch for every call, through any class or instance."""
    batches = Recorder()

    class Tools:
        @staticmethod
        @batch
        async def ping(key):
            keys = await collect(key)
            batches(keys)
            return scatter([f"pong:{k}" for k in keys])

    class MoreTools(Tools):
        pass

    results = await asyncio.gather(Tools.ping(1), Tools().ping(2), MoreTools.ping(3), MoreTools().ping(4))

    assert results == ["pong:1", "pong:2", "pong:3", "pong:4"]
    assert batches == [[1, 2, 3, 4]]


# --------------------------------------------------------------------------------------
# group_by
# --------------------------------------------------------------------------------------


async def test_group_by_keys_never_share_a_batch():
    """Calls with different ``group_by`` keys are batched apart; calls with the same key together."""
    record = Recorder()

    @batch(group_by=lambda key, *, tenant: tenant)
    async def fetch(key, *, tenant):
        keys = await collect(key)
        record(tenant, keys)
        return scatter([f"{tenant}:{k}" for k in keys])

    results = await asyncio.gather(
        fetch(1, tenant="a"), fetch(2, tenant="b"), fetch(3, tenant="a"), fetch(4, tenant="b")
    )

    assert results == ["a:1", "b:2", "a:3", "b:4"]
    assert record == [("a", [1, 3]), ("b", [2, 4])]


async def test_group_by_receives_exactly_the_calls_arguments():
    """``group_by`` is called once per call with that call's positional and keyword arguments, as given."""
    seen = Recorder()

    def key_of(*args, **kwargs):
        seen(args, kwargs)
        return kwargs.get("tenant")

    @batch(group_by=key_of)
    async def fetch(key, extra=None, *, tenant=None):
        keys = await collect(key)
        return scatter(keys)

    assert await asyncio.gather(fetch(1, tenant="a"), fetch(2, "x", tenant="a"), fetch(key=3)) == [1, 2, 3]
    assert seen == [((1,), {"tenant": "a"}), ((2, "x"), {"tenant": "a"}), ((), {"key": 3})]


async def test_group_by_on_a_method_receives_self():
    """For a method, ``group_by`` receives ``self`` first, then the call's arguments."""
    seen = Recorder()

    class Repo:
        @batch(group_by=lambda *args, **kwargs: seen(args, kwargs))
        async def get(self, key, *, fields=()):
            keys = await collect(key)
            return scatter(keys)

    repo = Repo()
    assert await asyncio.gather(repo.get(1), repo.get(2, fields=("a",))) == [1, 2]
    assert seen == [((repo, 1), {}), ((repo, 2), {"fields": ("a",)})]


async def test_group_by_on_a_method_still_batches_per_instance():
    """Two instances never share a batch, even when ``group_by`` gives their calls the same key."""
    record = Recorder()

    class Repo:
        def __init__(self, name):
            self.name = name

        @batch(group_by=lambda self, key: "same")
        async def get(self, key):
            keys = await collect(key)
            record(self.name, keys)
            return scatter(keys)

    a, b = Repo("a"), Repo("b")
    assert await asyncio.gather(a.get(1), b.get(2), a.get(3)) == [1, 2, 3]
    assert record == [("a", [1, 3]), ("b", [2])]


async def test_group_by_raising_fails_that_call_alone_before_its_body_runs():
    """A ``group_by`` that raises fails its own call, whose body never runs; the others batch as usual."""
    record = Recorder()

    def key_of(key):
        if key == 2:
            msg = "no tenant for 2"
            raise LookupError(msg)
        return "tenant"

    @batch(group_by=key_of)
    async def fetch(key):
        record("body", key)
        keys = await collect(key)
        record("bulk", keys)
        return scatter([k * 10 for k in keys])

    results = await asyncio.gather(fetch(1), fetch(2), fetch(3), return_exceptions=True)

    assert results[0] == 10
    assert type(results[1]) is LookupError
    assert str(results[1]) == "no tenant for 2"
    assert results[2] == 30
    assert record == [("body", 1), ("body", 3), ("bulk", [1, 3])]


async def test_group_by_unhashable_key_fails_that_call_alone_with_a_type_error_naming_the_function():
    """A ``group_by`` returning an unhashable key is a TypeError for that call alone, naming the function."""
    record = Recorder()

    @batch(group_by=lambda key: ["unhashable"] if key == 2 else "tenant")
    async def fetch(key):
        record("body", key)
        keys = await collect(key)
        record("bulk", keys)
        return scatter([k * 10 for k in keys])

    results = await asyncio.gather(fetch(1), fetch(2), fetch(3), return_exceptions=True)

    assert results[0] == 10
    assert type(results[1]) is TypeError
    assert fetch.__qualname__ in str(results[1])
    assert "group_by" in str(results[1])
    assert results[2] == 30
    assert record == [("body", 1), ("body", 3), ("bulk", [1, 3])]

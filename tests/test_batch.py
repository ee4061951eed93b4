"""@batch: decoration, options, the barrier, dedupe and max_concurrency (SPEC.md "Batches and the barrier").

Every test runs its calls concurrently and asserts the whole history: the items of every
batch (in the order the batches ran) and, where timing is the point, the virtual time of
each event. Tests that request ``clock`` run on the virtual-clock backends only.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from datetime import timedelta

import pytest
from tests.support import Recorder, run_virtual, settle, wait_all_tasks_blocked

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


def echo_batch(record, *, timed=False, **options):
    """Return a ``@batch(**options)`` function that records each batch and returns ``("ok", item)``.

    ``record`` receives one entry per batch: its items, or ``(loop time, items)`` if ``timed``.
    """

    @batch(**options)
    async def echo(item):
        items = await collect(item)
        record((asyncio.get_running_loop().time(), items) if timed else items)
        return scatter([("ok", x) for x in items])

    return echo


async def arrive(at, fn, *args):
    """Call ``fn(*args)`` at the absolute virtual time ``at``."""
    await asyncio.sleep(at - asyncio.get_running_loop().time())
    return await fn(*args)


async def quiesce():
    """Let every task and callback that can run without time passing run."""
    await settle()
    await wait_all_tasks_blocked()


# --------------------------------------------------------------------------------------
# Decoration
# --------------------------------------------------------------------------------------


async def documented(user_id: int, *, fields: tuple[str, ...] = ()) -> str:
    """Return the user's name."""
    items = await collect(user_id)
    return scatter([f"{item}{fields}" for item in items])


def plain_function(x):
    return x


async def async_generator_function(x):
    yield x


class AsyncCallable:
    async def __call__(self, x):
        return x


@pytest.mark.parametrize(
    "decorate",
    [batch, batch(), batch(max_window=0, max_size=10)],
    ids=["@batch", "@batch()", "@batch(options)"],
)
async def test_bare_and_called_decorator_forms_batch(decorate):
    """``@batch``, ``@batch()`` and ``@batch(...)`` all make concurrent calls share one batch."""
    batches = Recorder()

    @decorate
    async def echo(item):
        items = await collect(item)
        batches(items)
        return scatter([item * 2 for item in items])

    assert await asyncio.gather(echo(1), echo(2), echo(3)) == [2, 4, 6]
    assert batches == [[1, 2, 3]]


@pytest.mark.parametrize("decorate", [batch, batch(max_window=0.5, dedupe=True)], ids=["bare", "options"])
def test_decorated_function_keeps_its_metadata(decorate):
    """The wrapper keeps name, qualname, doc, module, signature and __wrapped__; it is a coroutine function."""
    decorated = decorate(documented)

    assert decorated is not documented
    assert decorated.__name__ == "documented"
    assert decorated.__qualname__ == documented.__qualname__
    assert decorated.__doc__ == "Return the user's name."
    assert decorated.__module__ == documented.__module__
    assert decorated.__wrapped__ is documented
    assert inspect.signature(decorated) == inspect.signature(documented)
    assert inspect.iscoroutinefunction(decorated)


async def test_decorated_method_works():
    """@batch on an instance method batches that instance's calls and keeps it a coroutine method."""
    batches = Recorder()

    class Store:
        @batch
        async def get(self, key):
            keys = await collect(key)
            batches(keys)
            return scatter([f"value-{k}" for k in keys])

    store = Store()
    assert inspect.iscoroutinefunction(store.get)
    assert await asyncio.gather(store.get(1), store.get(2)) == ["value-1", "value-2"]
    assert batches == [[1, 2]]


async def test_classmethod_above_batch_works():
    """``@classmethod`` above ``@batch`` batches calls made through the class and its instances."""
    batches = Recorder()

    class Store:
        @classmethod
        @batch
        async def load(cls, key):
            keys = await collect(key)
            batches(cls.__name__, keys)
            return scatter([f"{cls.__name__}-{k}" for k in keys])

    assert inspect.iscoroutinefunction(Store.load)
    assert await asyncio.gather(Store.load(1), Store().load(2)) == ["Store-1", "Store-2"]
    assert batches == [("Store", [1, 2])]


async def test_staticmethod_above_batch_works():
    """``@staticmethod`` above ``@batch`` batches calls made through the class and its instances."""
    batches = Recorder()

    class Store:
        @staticmethod
        @batch
        async def ping(key):
            keys = await collect(key)
            batches(keys)
            return scatter([f"pong-{k}" for k in keys])

    assert inspect.iscoroutinefunction(Store.ping)
    assert await asyncio.gather(Store.ping(1), Store().ping(2)) == ["pong-1", "pong-2"]
    assert batches == [[1, 2]]


@pytest.mark.parametrize("descriptor", [classmethod, staticmethod])
@pytest.mark.parametrize("decorate", [batch, batch(max_size=5)], ids=["bare", "options"])
def test_batch_above_classmethod_or_staticmethod_says_to_swap_them(descriptor, decorate):
    """``@batch`` applied to a classmethod/staticmethod object is a TypeError telling to put it below."""

    async def load(cls, key):
        return key

    with pytest.raises(TypeError) as info:
        decorate(descriptor(load))

    assert type(info.value) is TypeError
    assert f"put @{descriptor.__name__} above @batch" in str(info.value)


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (plain_function, "plain_function"),
        (async_generator_function, "async_generator_function"),
        (lambda x: x, "<lambda>"),
        (AsyncCallable(), "AsyncCallable"),
        (0.05, "0.05"),
    ],
    ids=["plain-def", "async-generator", "lambda", "instance", "number"],
)
def test_decorating_anything_but_an_async_def_is_a_type_error_naming_it(given, named):
    """Only an ``async def`` function can be decorated; the TypeError names what was given."""
    with pytest.raises(TypeError) as info:
        batch(given)

    assert type(info.value) is TypeError
    assert "async def" in str(info.value)
    assert named in str(info.value)


INVALID_OPTIONS = [
    ({"max_window": -0.1}, ValueError),
    ({"max_window": float("nan")}, ValueError),
    ({"max_window": float("inf")}, ValueError),
    ({"max_window": "0.1"}, TypeError),
    ({"max_window": True}, TypeError),
    ({"max_window": None}, TypeError),
    ({"max_size": 0}, ValueError),
    ({"max_size": -1}, ValueError),
    ({"max_size": 1.5}, TypeError),
    ({"max_size": True}, TypeError),
    ({"max_size": "3"}, TypeError),
    ({"max_concurrency": 0}, ValueError),
    ({"max_concurrency": -1}, ValueError),
    ({"max_concurrency": 1.5}, TypeError),
    ({"max_concurrency": True}, TypeError),
    ({"max_concurrency": "3"}, TypeError),
    ({"group_by": 42}, TypeError),
    ({"group_by": "tenant"}, TypeError),
    ({"dedupe": 1}, TypeError),
    ({"dedupe": None}, TypeError),
    ({"dedupe": "yes"}, TypeError),
]


@pytest.mark.parametrize(("options", "error"), INVALID_OPTIONS, ids=repr)
def test_invalid_option_is_rejected_at_decoration_time_naming_the_parameter(options, error):
    """An out-of-range option is a ValueError, a wrong type a TypeError, raised by ``batch(...)`` itself."""
    (parameter,) = options

    with pytest.raises(error) as info:
        batch(**options)

    assert type(info.value) is error
    assert parameter in str(info.value)


@pytest.mark.parametrize(
    "options",
    [
        {"max_window": 0},
        {"max_window": 0.0},
        {"max_window": 1},
        {"max_window": 0.25},
        {"max_size": None},
        {"max_size": 1},
        {"max_concurrency": None},
        {"max_concurrency": 1},
        {"group_by": None},
        {"group_by": len},
        {"dedupe": True},
    ],
    ids=repr,
)
async def test_valid_edge_option_is_accepted(options, clock):
    """Boundary values of every option decorate fine and give a working function."""
    batches = Recorder()
    echo = echo_batch(batches, **options)

    assert inspect.iscoroutinefunction(echo)
    assert await echo("ab") == ("ok", "ab")
    assert batches == [["ab"]]


async def test_a_partial_is_named_after_its_function():
    """``@batch`` over a ``functools.partial`` is named ``partial(<function>)``, in messages too, not "wrapper"."""

    async def fetch(x, *, tenant):
        await collect(x)
        return [tenant]  # no scatter(): the message names the function

    fetch_a = batch(functools.partial(fetch, tenant="a"))

    assert (
        fetch_a.__name__ == fetch_a.__qualname__ == "partial(test_a_partial_is_named_after_its_function.<locals>.fetch)"
    )
    with pytest.raises(RuntimeError, match=r"^partial\(test_a_partial_is_named_after_its_function.<locals>.fetch\): "):
        await fetch_a(1)


async def test_max_window_may_be_a_timedelta(clock):
    """``max_window=timedelta(...)`` (how other releases spell a window) is that many seconds."""
    batches = Recorder()
    echo = echo_batch(batches, max_window=timedelta(milliseconds=250), max_size=None)

    start = clock.now()
    assert await asyncio.gather(echo(1), echo(2)) == [("ok", 1), ("ok", 2)]
    assert clock.now() - start == pytest.approx(0.25)
    assert batches == [[1, 2]]


@pytest.mark.parametrize(
    ("window", "error"),
    [(timedelta(seconds=-1), ValueError), (timedelta.max, None)],
    ids=["negative", "max"],
)
def test_timedelta_windows_are_checked_like_numbers(window, error):
    """A negative timedelta is refused like a negative number; a huge one is a finite number of seconds."""
    if error is None:
        assert batch(max_window=window) is not None
        return
    with pytest.raises(error, match=r"max_window must be >= 0 and finite"):
        batch(max_window=window)


@pytest.mark.parametrize(
    ("call", "fix"),
    [
        (lambda: batch(0.05, 100), "@batch(max_window=0.05, max_size=100)"),
        (lambda: batch(0.002, 7), "@batch(max_window=0.002, max_size=7)"),
        (lambda: batch(100), "@batch(max_window=100) for a window of 100 seconds, or @batch(max_size=100)"),
        (lambda: batch(0.05), "@batch(max_window=0.05) for a window of 0.05 seconds"),
        (
            lambda: batch(window=timedelta(milliseconds=5)),
            "it is called max_window= here: @batch(max_window=datetime.timedelta(microseconds=5000))",
        ),
        (lambda: batch(window=0.01, max_size=3), "@batch(max_window=0.01, max_size=3)"),
        (lambda: batch(0.05, 100, dedupe=True), "write @batch(max_window=0.05, max_size=100, dedupe=True)"),
        (lambda: batch(0.05, max_size=7), "write @batch(max_window=0.05, max_size=7)"),
        (lambda: batch(batch_size=50), "it is called max_size= here: @batch(max_size=50)"),
        (lambda: batch(max_windw=1), "did you mean max_window=?"),
        (lambda: batch(colour=1), "its options are: max_window, max_size, group_by"),
        (lambda: batch(0.05, 100, len), "got 3 positional arguments"),
    ],
    ids=[
        "0.1.0",
        "0.1.0-other-values",
        "lone-number",
        "lone-fraction",
        "window",
        "window-and-more",
        "0.1.0-and-more",
        "0.1.0-and-a-keyword",
        "batch_size",
        "typo",
        "unknown",
        "3-positional",
    ],
)
def test_spellings_of_other_releases_fail_with_the_exact_fix(call, fix):
    """0.1.0's positional options, 1.x-5.x's ``window=`` and other unknown options are a TypeError showing the fix."""
    with pytest.raises(TypeError) as info:
        call()

    assert type(info.value) is TypeError
    assert fix in str(info.value)


def test_window_keyword_also_says_that_the_leader_must_scatter():
    """The ``window=`` error tells a 1.x-5.x user the other change too: ``return scatter(results)``."""
    with pytest.raises(TypeError, match=r"`return scatter\(results\)`, not `return results`"):
        batch(window=timedelta(milliseconds=5))


async def test_default_max_size_is_100(clock):
    """Without options, 101 concurrent calls make a batch of 100 then a batch of 1, with no timer."""
    batches = Recorder()

    @batch
    async def echo(item):
        items = await collect(item)
        batches(clock.now(), items)
        return scatter([("ok", x) for x in items])

    results = await asyncio.gather(*(echo(i) for i in range(101)))

    assert batches == [(0.0, list(range(100))), (0.0, [100])]
    assert results == [("ok", i) for i in range(101)]


async def test_default_window_flushes_on_the_next_loop_turn(clock):
    """Without options, a batch is flushed on the next loop turn: no virtual time passes."""
    batches = Recorder()
    echo = echo_batch(batches, timed=True)

    assert await asyncio.gather(echo("a"), echo("b")) == [("ok", "a"), ("ok", "b")]
    assert batches == [(0.0, ["a", "b"])]
    assert clock.now() == 0.0


# --------------------------------------------------------------------------------------
# The barrier
# --------------------------------------------------------------------------------------


async def test_call_runs_its_body_normally_until_collect():
    """Before collect(), every call runs its own body, awaits included, like any coroutine."""
    record = Recorder()

    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    @batch
    async def work(x):
        record("enter", x)
        doubled = await double(x)
        record("collect", doubled)
        items = await collect(doubled)
        record("bulk", items)
        return scatter([item + 1 for item in items])

    assert await asyncio.gather(work(1), work(2)) == [3, 5]
    assert record == [("enter", 1), ("enter", 2), ("collect", 2), ("collect", 4), ("bulk", [2, 4])]


async def test_calls_reaching_collect_in_the_same_loop_turn_share_a_batch():
    """With tick batching, every call that reaches collect() in the same loop turn joins one batch."""
    batches = Recorder()
    echo = echo_batch(batches, max_window=0)

    results = await asyncio.gather(*(echo(i) for i in range(5)))

    assert batches == [[0, 1, 2, 3, 4]]
    assert results == [("ok", i) for i in range(5)]


async def test_call_reaching_collect_one_loop_turn_later_opens_the_next_batch():
    """With tick batching, a call that reaches collect() one loop turn after the batch opened is not in it."""
    batches = Recorder()

    @batch(max_window=0)
    async def echo(item, turns):
        for _ in range(turns):
            await asyncio.sleep(0)
        items = await collect(item)
        batches(items)
        return scatter(items)

    assert await asyncio.gather(echo("a", 0), echo("b", 1), echo("c", 0)) == ["a", "b", "c"]
    assert batches == [["a", "c"], ["b"]]


async def test_call_arriving_after_the_flush_opens_the_next_batch():
    """Calls that reach collect() while a flushed batch is being processed form a new batch."""
    batches = Recorder()
    release = asyncio.Event()

    @batch
    async def echo(item):
        items = await collect(item)
        batches(items)
        if "a" in items:
            await release.wait()
        return scatter(items)

    first = [asyncio.create_task(echo("a")), asyncio.create_task(echo("b"))]
    await quiesce()  # the batch [a, b] is flushed; its leader waits on `release`

    assert await asyncio.gather(echo("c"), echo("d")) == ["c", "d"]
    release.set()
    assert await asyncio.gather(*first) == ["a", "b"]
    assert batches == [["a", "b"], ["c", "d"]]


async def test_full_batch_is_flushed_at_once_by_the_call_that_fills_it(clock):
    """A batch reaching ``max_size`` is flushed without waiting for its window; the next call opens a new one."""
    batches = Recorder()
    echo = echo_batch(batches, timed=True, max_size=3, max_window=10)

    results = await asyncio.gather(*(echo(i) for i in range(4)))

    assert batches == [(0.0, [0, 1, 2]), (10.0, [3])]
    assert results == [("ok", i) for i in range(4)]


async def test_window_flushes_exactly_max_window_after_the_batch_opened(clock):
    """The window starts when the first call joins; later arrivals within it join; one after it opens the next."""
    batches = Recorder()
    echo = echo_batch(batches, timed=True, max_window=10)

    results = await asyncio.gather(
        arrive(1, echo, "a"), arrive(5, echo, "b"), arrive(10.5, echo, "c"), arrive(11.5, echo, "d")
    )

    assert batches == [(11.0, ["a", "b", "c"]), (21.5, ["d"])]
    assert results == [("ok", "a"), ("ok", "b"), ("ok", "c"), ("ok", "d")]


async def test_unbounded_size_collects_every_call_within_the_window(clock):
    """With ``max_size=None``, every call within the window joins, however many there are."""
    batches = Recorder()
    echo = echo_batch(batches, timed=True, max_size=None, max_window=5)

    calls = [echo(i) for i in range(250)]
    results = await asyncio.gather(*calls, arrive(4.5, echo, "late"))

    assert batches == [(5.0, [*range(250), "late"])]
    assert results == [("ok", i) for i in range(250)] + [("ok", "late")]


async def test_max_size_one_returns_without_suspending():
    """With ``max_size=1`` the call leads its own batch at once: one ``send(None)`` runs it to the end."""
    batches = Recorder()
    echo = echo_batch(batches, max_size=1, max_window=10)

    coro = echo("solo")
    with pytest.raises(StopIteration) as info:
        coro.send(None)

    assert info.value.value == ("ok", "solo")
    assert batches == [["solo"]]


async def test_max_size_one_makes_every_call_its_own_batch():
    """With ``max_size=1`` concurrent calls never share a batch."""
    batches = Recorder()
    echo = echo_batch(batches, max_size=1)

    assert await asyncio.gather(echo(0), echo(1), echo(2)) == [("ok", 0), ("ok", 1), ("ok", 2)]
    assert batches == [[0], [1], [2]]


async def test_new_batch_does_not_wait_for_an_earlier_batchs_processing():
    """A second batch's leader runs its bulk section, and finishes, while the first batch's is still running."""
    record = Recorder()
    gates = {"a": asyncio.Event(), "b": asyncio.Event()}

    @batch
    async def work(item):
        items = await collect(item)
        record("start", items)
        await gates[item].wait()
        record("end", items)
        return scatter(items)

    first = asyncio.create_task(work("a"))
    await quiesce()
    second = asyncio.create_task(work("b"))
    await quiesce()
    record("both running")
    gates["b"].set()
    assert await second == "b"
    gates["a"].set()
    assert await first == "a"

    assert record == [("start", ["a"]), ("start", ["b"]), "both running", ("end", ["b"]), ("end", ["a"])]


async def test_leader_is_the_earliest_member(clock):
    """The call that reached collect() first leads, not the one created first."""
    leaders = Recorder()

    @batch(max_window=1)
    async def work(item, delay):
        await asyncio.sleep(delay)
        items = await collect(item)
        leaders(item)
        return scatter(items)

    assert await asyncio.gather(work("a", 0.3), work("b", 0.1), work("c", 0.2)) == ["a", "b", "c"]
    assert leaders == ["b"]


async def test_leader_receives_the_items_in_arrival_order(clock):
    """collect() returns the items in the order the calls reached collect(), not the order they were made."""
    batches = Recorder()

    @batch(max_window=1)
    async def work(item, delay):
        await asyncio.sleep(delay)
        items = await collect(item)
        batches(items)
        return scatter([x.upper() for x in items])

    assert await asyncio.gather(work("a", 0.3), work("b", 0.1), work("c", 0.2), work("d", 0.1)) == ["A", "B", "C", "D"]
    assert batches == [["b", "d", "c", "a"]]


async def test_code_after_collect_runs_once_per_batch_in_its_leader():
    """Every call runs the code before collect(); only each batch's leader runs the code after it."""
    record = Recorder()

    @batch(max_size=2)
    async def work(x):
        record("before", x)
        items = await collect(x)
        record("after", x, items)
        return scatter(items)

    assert await asyncio.gather(*(work(i) for i in range(5))) == [0, 1, 2, 3, 4]
    assert record == [
        *(("before", i) for i in range(5)),
        ("after", 0, [0, 1]),
        ("after", 2, [2, 3]),
        ("after", 4, [4]),
    ]


# --------------------------------------------------------------------------------------
# dedupe
# --------------------------------------------------------------------------------------


async def test_without_dedupe_equal_items_are_collected_separately():
    """By default every call contributes its item, equal or not."""
    batches = Recorder()
    echo = echo_batch(batches)

    assert await asyncio.gather(echo("a"), echo("a"), echo("b")) == [("ok", "a"), ("ok", "a"), ("ok", "b")]
    assert batches == [["a", "a", "b"]]


async def test_dedupe_collects_equal_items_once_in_first_arrival_order():
    """With ``dedupe=True`` the leader sees each distinct item once, in the order each first arrived."""
    batches = Recorder()
    echo = echo_batch(batches, dedupe=True)

    results = await asyncio.gather(*(echo(x) for x in ["b", "a", "b", "c", "a"]))

    assert batches == [["b", "a", "c"]]
    assert results == [("ok", "b"), ("ok", "a"), ("ok", "b"), ("ok", "c"), ("ok", "a")]


@pytest.mark.parametrize("mode", ["positional", "keyed"])
async def test_dedupe_routes_every_duplicate_caller_the_result_of_its_item(mode):
    """Every caller of a deduplicated item receives the result routed to that item, positional or keyed."""
    batches = Recorder()

    @batch(dedupe=True)
    async def upper(item):
        items = await collect(item)
        batches(items)
        if mode == "positional":
            return scatter([x.upper() for x in items])
        return scatter({x: x.upper() for x in reversed(items)})

    assert await asyncio.gather(*(upper(x) for x in "abaab")) == ["A", "B", "A", "A", "B"]
    assert batches == [["a", "b"]]


async def test_dedupe_never_merges_unhashable_items():
    """Unhashable items are never merged, even when equal; each caller still gets its own result."""
    batches = Recorder()

    @batch(dedupe=True)
    async def work(item):
        items = await collect(item)
        batches(items)
        return scatter([("slot", i) for i in range(len(items))])

    assert await asyncio.gather(work([1]), work([1]), work([2])) == [("slot", 0), ("slot", 1), ("slot", 2)]
    assert batches == [[[1], [1], [2]]]


async def test_dedupe_max_size_counts_distinct_items(clock):
    """With dedupe, duplicates do not fill the batch: ``max_size=2`` flushes at the second distinct item."""
    batches = Recorder()
    echo = echo_batch(batches, timed=True, dedupe=True, max_size=2, max_window=10)

    results = await asyncio.gather(*(echo(x) for x in "aaabc"))

    assert batches == [(0.0, ["a", "b"]), (10.0, ["c"])]
    assert results == [("ok", x) for x in "aaabc"]


async def test_dedupe_exception_result_is_raised_in_every_duplicate_caller():
    """An Exception routed to a deduplicated item is raised in each of its callers; other items' callers get theirs."""

    @batch(dedupe=True)
    async def work(item):
        items = await collect(item)
        return scatter([ValueError(f"bad {x}") if x == "a" else x.upper() for x in items])

    results = await asyncio.gather(*(work(x) for x in "abab"), return_exceptions=True)

    assert [type(r) for r in results] == [ValueError, str, ValueError, str]
    assert [str(r) for r in results] == ["bad a", "B", "bad a", "B"]


# --------------------------------------------------------------------------------------
# max_concurrency
# --------------------------------------------------------------------------------------


async def test_queued_batch_keeps_collecting_and_is_dispatched_when_the_slot_frees(clock):
    """With ``max_concurrency=1`` a due batch waits for the running one, still collecting, then runs at once."""
    record = Recorder()

    @batch(max_window=1, max_concurrency=1)
    async def work(x):
        items = await collect(x)
        record(clock.now(), "start", items)
        await asyncio.sleep(5)
        record(clock.now(), "end", items)
        return scatter(items)

    # [0, 1] runs from 1 to 6. The next batch opens at 2 and is due at 3 but has no slot:
    # it stays open, so 3 (at 2.5) and 4 (at 5, after it was due) still join it.
    results = await asyncio.gather(
        arrive(0, work, 0), arrive(0, work, 1), arrive(2, work, 2), arrive(2.5, work, 3), arrive(5, work, 4)
    )

    assert record == [
        (1.0, "start", [0, 1]),
        (6.0, "end", [0, 1]),
        (6.0, "start", [2, 3, 4]),
        (11.0, "end", [2, 3, 4]),
    ]
    assert results == [0, 1, 2, 3, 4]


async def test_queued_batches_are_dispatched_in_order():
    """Batches waiting for a slot run in the order they were closed."""
    record = Recorder()

    @batch(max_size=2, max_concurrency=1)
    async def work(x):
        items = await collect(x)
        record("start", items)
        await settle(3)
        record("end", items)
        return scatter(items)

    assert await asyncio.gather(*(work(i) for i in range(6))) == list(range(6))
    assert record == [
        ("start", [0, 1]),
        ("end", [0, 1]),
        ("start", [2, 3]),
        ("end", [2, 3]),
        ("start", [4, 5]),
        ("end", [4, 5]),
    ]


async def test_max_concurrency_bounds_how_many_batches_run_at_once():
    """With ``max_concurrency=2`` at most two batches of the function run at any time, and two do."""
    record = Recorder()
    running = 0
    peak = 0

    @batch(max_size=2, max_concurrency=2)
    async def work(x):
        nonlocal running, peak
        items = await collect(x)
        running += 1
        peak = max(peak, running)
        record("start", items)
        await settle(3)
        record("end", items)
        running -= 1
        return scatter(items)

    assert await asyncio.gather(*(work(i) for i in range(8))) == list(range(8))
    assert peak == 2
    assert record == [
        ("start", [0, 1]),
        ("start", [2, 3]),
        ("end", [0, 1]),
        ("end", [2, 3]),
        ("start", [4, 5]),
        ("start", [6, 7]),
        ("end", [4, 5]),
        ("end", [6, 7]),
    ]


async def test_group_commit_single_caller_gets_a_batch_of_one_at_once(clock):
    """With ``max_window=0, max_concurrency=1``, a lone caller is served alone without any timer."""
    batches = Recorder()
    echo = echo_batch(batches, timed=True, max_window=0, max_concurrency=1)

    assert await echo("only") == ("ok", "only")
    assert batches == [(0.0, ["only"])]


async def test_group_commit_batches_grow_under_load():
    """With ``max_window=0, max_concurrency=1``, calls arriving while a batch runs all join the next one."""
    batches = Recorder()
    release = asyncio.Event()

    @batch(max_window=0, max_concurrency=1)
    async def commit(x):
        items = await collect(x)
        batches(items)
        if items == [0]:
            await release.wait()
        return scatter(items)

    first = asyncio.create_task(commit(0))
    await quiesce()  # [0] runs alone and waits on `release`
    rest = [asyncio.create_task(commit(i)) for i in range(1, 10)]
    await quiesce()
    release.set()

    assert await asyncio.gather(first, *rest) == list(range(10))
    assert batches == [[0], list(range(1, 10))]


async def test_queued_batch_still_respects_max_size():
    """A batch waiting for a slot closes when full; later calls open a further batch queued behind it."""
    record = Recorder()
    release = asyncio.Event()

    @batch(max_size=3, max_concurrency=1)
    async def work(x):
        items = await collect(x)
        record("start", items)
        if items == [0]:
            await release.wait()
        record("end", items)
        return scatter(items)

    first = asyncio.create_task(work(0))
    await quiesce()
    rest = [asyncio.create_task(work(i)) for i in range(1, 6)]
    await quiesce()
    record("release")
    release.set()

    assert await asyncio.gather(first, *rest) == list(range(6))
    assert record == [
        ("start", [0]),
        "release",
        ("end", [0]),
        ("start", [1, 2, 3]),
        ("end", [1, 2, 3]),
        ("start", [4, 5]),
        ("end", [4, 5]),
    ]


async def test_failed_batch_frees_its_slot():
    """A batch whose leader raises releases its concurrency slot: the queued batch runs next."""
    record = Recorder()
    release = asyncio.Event()

    @batch(max_concurrency=1)
    async def work(x):
        items = await collect(x)
        record("start", items)
        if 0 in items:
            await release.wait()
            msg = "bulk call failed"
            raise ValueError(msg)
        return scatter(items)

    first = [asyncio.create_task(work(0)), asyncio.create_task(work(1))]
    await quiesce()
    second = asyncio.create_task(work(2))
    await quiesce()  # [2] is due but queued behind [0, 1]
    record("release")
    release.set()

    results = await asyncio.gather(*first, second, return_exceptions=True)
    assert [type(r) for r in results] == [ValueError, ValueError, int]
    assert results[2] == 2
    assert record == [("start", [0, 1]), "release", ("start", [2])]


async def test_handed_over_batch_keeps_its_slot_until_it_ends(clock):
    """When a cancelled leader hands its batch over, the batch still holds the slot until the new leader scatters."""
    record = Recorder()

    @batch(max_window=1, max_concurrency=1)
    async def work(x):
        items = await collect(x)
        record(clock.now(), "start", x, items)
        await asyncio.sleep(5)
        record(clock.now(), "end", x, items)
        return scatter(items)

    t0 = asyncio.create_task(work(0))
    t1 = asyncio.create_task(work(1))
    await asyncio.sleep(1.5)  # [0, 1] was flushed at 1, its leader 0 runs until 6
    t2 = asyncio.create_task(work(2))  # opens the next batch, due at 2.5 but queued
    await asyncio.sleep(0.5)
    t0.cancel()  # at 2: 1 leads [1] again, until 7

    results = await asyncio.gather(t0, t1, t2, return_exceptions=True)

    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [1, 2]
    assert record == [
        (1.0, "start", 0, [0, 1]),
        (2.0, "start", 1, [1]),
        (7.0, "end", 1, [1]),
        (7.0, "start", 2, [2]),
        (12.0, "end", 2, [2]),
    ]


# --------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in Python 3.12")
def test_eager_tasks_one_gather_makes_one_tick_batch():
    """Under ``eager_task_factory`` every call created by one gather() joins the same tick batch."""
    batches = Recorder()
    echo = echo_batch(batches)

    async def main():
        assert asyncio.get_running_loop().get_task_factory() is asyncio.eager_task_factory
        first = await asyncio.gather(*(echo(i) for i in range(5)))
        second = await asyncio.gather(*(asyncio.create_task(echo(i)) for i in range(5, 8)))
        return first + second

    assert run_virtual(main, eager=True) == [("ok", i) for i in range(8)]
    assert batches == [[0, 1, 2, 3, 4], [5, 6, 7]]


def test_a_lone_fraction_is_not_offered_as_a_batch_size():
    """@batch(0.05) suggests the window reading only: 0.05 items is no max_size."""
    with pytest.raises(TypeError) as info:
        batch(0.05)  # type: ignore[call-overload]

    assert "max_size" not in str(info.value)

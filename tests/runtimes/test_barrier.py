"""The barrier: which batch a call joins, and size and window flushes, on every runtime.

SPEC.md "Batches and the barrier" (a call runs its body until ``collect()``, then joins or opens
the open batch; size and window flushes; ``max_size=None`` and ``1``) and "A call that never
awaits ``collect()`` is an ordinary call". Tick batching, the defaults and successive batches
are in ``test_tick.py``.

The order in which tasks reach ``collect()`` is the runtime's (trio starts a batch of tasks in
a random order), so every batched body records its join just before ``collect()``, and the
expected batches are written in terms of that order. Tests that assert virtual times are
marked ``virtual_clock``; times are relative to the start of the test.
"""

from __future__ import annotations

import functools

import anyio
import anyio.lowlevel
import pytest
from tests.runtimes import kit
from tests.support import Recorder

from concresce import batch, collect, scatter

pytestmark = pytest.mark.anyio


class Log(Recorder):
    """Events stamped with the virtual time since the log was made: ``(time, *event)``."""

    def __init__(self) -> None:
        super().__init__()
        self.start = kit.now()
        self.joins: list[object] = []  # every call's item, in the order the calls joined

    def now(self) -> float:
        return round(kit.now() - self.start, 6)

    def __call__(self, *event: object) -> None:
        self.append((self.now(), *event))


def echo(log: Log, **options: object):
    """A ``@batch(**options)`` function that logs each flush as ``(time, leader, items)`` and echoes."""

    @batch(**options)
    async def echo(item: object) -> tuple[str, object]:
        log.joins.append(item)
        items = await collect(item)
        log(item, items)
        return scatter([("ok", x) for x in items])

    return echo


async def arrive(log: Log, at: float, fn, *args: object) -> tuple[float, object]:
    """Call ``fn(*args)`` at ``at`` seconds after the log's start; return when it returned, and what."""
    await anyio.sleep_until(log.start + at)
    result = await fn(*args)
    return log.now(), result


def calls(fn, *items: object) -> list[functools.partial]:
    return [functools.partial(fn, item) for item in items]


# --------------------------------------------------------------------------------------
# Joining
# --------------------------------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_a_call_runs_its_body_like_a_coroutine_until_collect_then_joins_the_open_batch() -> None:
    """Each call's own awaits run before collect() (time passes in them); then it opens or joins the open batch."""
    log = Log()

    @batch(max_window=10)
    async def work(item: str) -> str:
        log("enter", item)
        await anyio.sleep(0.5)
        log("collect", item)
        items = await collect(item)
        log("lead", item, items)
        return scatter([f"r{x}" for x in items])

    results = await kit.gather(
        *(functools.partial(arrive, log, at, work, x) for at, x in ((0, "a"), (1, "b"), (2, "c")))
    )

    assert log == [
        (0, "enter", "a"),
        (0.5, "collect", "a"),  # opens the batch: the window runs from 0.5
        (1, "enter", "b"),
        (1.5, "collect", "b"),
        (2, "enter", "c"),
        (2.5, "collect", "c"),
        (10.5, "lead", "a", ["a", "b", "c"]),
    ]
    assert results == [(10.5, "ra"), (10.5, "rb"), (10.5, "rc")]


async def test_a_call_that_never_awaits_collect_is_an_ordinary_call() -> None:
    """It returns or raises what its body does, joins no batch, and leaves the batches of the other calls alone."""
    log = Log()

    @batch(max_size=2, max_window=3600)
    async def fetch(item: str, *, collects: bool = True) -> str:
        if not collects:
            await anyio.lowlevel.checkpoint()
            if item == "boom":
                raise LookupError(item)
            return f"plain {item}"
        log.joins.append(item)
        items = await collect(item)
        log.append(("lead", item, items))
        return scatter([f"batched {x}" for x in items])

    outcomes = await kit.outcomes(
        functools.partial(fetch, "a"),
        functools.partial(fetch, "p", collects=False),
        functools.partial(fetch, "boom", collects=False),
        functools.partial(fetch, "b"),
    )

    assert outcomes[:2] == ["batched a", "plain p"]
    assert type(outcomes[2]) is LookupError
    assert outcomes[2].args == ("boom",)
    assert outcomes[3] == "batched b"
    # With max_size=2 and an hour's window, a and b alone fill the batch: p and boom never joined.
    assert sorted(log.joins) == ["a", "b"]
    assert log == [("lead", log.joins[0], log.joins)]


# --------------------------------------------------------------------------------------
# Size
# --------------------------------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_a_full_batch_is_flushed_at_once_by_the_call_that_fills_it() -> None:
    """At max_size the filling call flushes the batch in its own step: a later call of that turn opens the next."""
    log = Log()
    fn = echo(log, max_size=3, max_window=10)

    results = await kit.gather(
        *(
            functools.partial(arrive, log, at, fn, x)
            for at, x in ((0, "a"), (0, "b"), (0, "c"), (0, "d"), (1, "e"), (5, "f"), (6, "g"))
        )
    )

    j = log.joins
    assert sorted(j[:4]) == ["a", "b", "c", "d"]
    assert j[4:] == ["e", "f", "g"]
    assert log == [
        (0, j[0], j[:3]),  # full at 0: the fourth call, in the same turn, is not in it
        (5, j[3], [j[3], "e", "f"]),  # opened at 0 by the fourth, full at 5 (< 10)
        (16, "g", ["g"]),  # alone: its window
    ]
    when = dict.fromkeys(j[:3], 0) | {j[3]: 5, "e": 5, "f": 5, "g": 16}
    assert results == [(when[x], ("ok", x)) for x in "abcdefg"]


async def test_full_batches_wait_for_no_window() -> None:
    """Six calls with max_size=3 and an hour's window make two batches of three, and return at once."""
    log = Log()
    fn = echo(log, max_size=3, max_window=3600)

    with anyio.fail_after(30):  # virtual seconds on most backends: instant if the window were awaited
        results = await kit.gather(*calls(fn, *range(6)))

    j = log.joins
    assert results == [("ok", x) for x in range(6)]
    assert sorted(flush[1:] for flush in log) == sorted([(j[0], j[:3]), (j[3], j[3:])])


@pytest.mark.virtual_clock
async def test_max_size_none_puts_no_limit_on_a_batch() -> None:
    """With max_size=None, every call within the window joins its batch: 300 at once and one more later."""
    log = Log()
    fn = echo(log, max_size=None, max_window=5)

    results = await kit.gather(*calls(fn, *range(300)), functools.partial(arrive, log, 4.5, fn, "late"))

    assert sorted(log.joins[:300]) == list(range(300))
    assert log == [(5, log.joins[0], [*log.joins[:300], "late"])]
    assert results == [("ok", x) for x in range(300)] + [(5, ("ok", "late"))]


async def test_max_size_one_never_batches_and_never_waits() -> None:
    """With max_size=1 each call leads a batch of its own item at once: it returns without yielding to any task."""
    log = Log()
    fn = echo(log, max_size=1, max_window=3600)
    turns = 0
    done = anyio.Event()

    async def spin() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(spin)
        before = turns
        alone = [await fn("a"), await fn("b")]
        after = turns
        concurrent = await kit.gather(*calls(fn, "c", "d", "e"))
        done.set()

    assert (alone, after - before) == ([("ok", "a"), ("ok", "b")], 0)
    assert concurrent == [("ok", "c"), ("ok", "d"), ("ok", "e")]
    assert [flush[1:] for flush in log] == [("a", ["a"]), ("b", ["b"])] + [(x, [x]) for x in log.joins[2:]]
    assert sorted(log.joins[2:]) == ["c", "d", "e"]


# --------------------------------------------------------------------------------------
# Window
# --------------------------------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_a_window_flushes_max_window_after_the_batch_opened() -> None:
    """The window runs from the first join; calls within it join; the next call opens a batch with its own window."""
    log = Log()
    fn = echo(log, max_size=None, max_window=2)
    arrivals = ((0, "a"), (1, "b"), (1.9, "c"), (2.1, "d"), (3, "e"), (6.5, "f"))

    results = await kit.gather(*(functools.partial(arrive, log, at, fn, x) for at, x in arrivals))

    assert log.joins == ["a", "b", "c", "d", "e", "f"]
    assert log == [(2, "a", ["a", "b", "c"]), (4.1, "d", ["d", "e"]), (8.5, "f", ["f"])]
    when = {"a": 2, "b": 2, "c": 2, "d": 4.1, "e": 4.1, "f": 8.5}
    assert results == [(when[x], ("ok", x)) for _, x in arrivals]

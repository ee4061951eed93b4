"""What enters a batch, on every runtime: weights (``weight=``, ``max_weight=``) and ``max_pending``.

(docs/operating.md "Weighted batches" and "Load shedding"; docs/decisions.md 20 and 21.)

* A batch closes (reason ``weight``) as soon as its items weigh ``max_weight``; an item that
  would tip an open batch over the budget closes it and starts the next one; an item heavier
  than the budget forms a batch of one. Under ``dedupe`` each call's item counts. A weight
  function that raises or returns anything but a finite number ``>= 0`` fails that call
  alone, before it joins.
* With ``max_pending=N`` a call that finds ``N`` calls of its partition waiting in batches not
  dispatched yet (the open one, and those queued for a ``max_concurrency`` slot) fails from
  ``collect()`` with ``OverloadedError``, naming the function and the limit; nothing else
  changes.

Arrivals are at distinct virtual times, so their order is the same on every runtime.
"""

from __future__ import annotations

import functools

import anyio
import pytest
from tests.runtimes import kit

from concresce import OverloadedError, batch, collect, scatter

pytestmark = pytest.mark.anyio


class Clock:
    """Virtual times relative to the test's start."""

    def __init__(self):
        self.t0 = kit.now()

    def at(self):
        return round(kit.now() - self.t0, 6)

    async def run(self, fn, arrivals):
        """Call ``fn(x)`` for every ``(at, x)`` at its virtual time; return the outcomes in that order."""

        async def arrive(at, x):
            await anyio.sleep_until(self.t0 + at)
            return await fn(x)

        return await kit.outcomes(*(functools.partial(arrive, at, x) for at, x in arrivals))


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_batches_close_on_their_weight_budget():
    """max_weight=10 with weight=len: reaching it, tipping over it and exceeding it alone each close a batch."""
    clock = Clock()
    runs = []
    records = []

    @batch(weight=len, max_weight=10, max_window=0.05, observer=records.append)
    async def embed(text):
        texts = await collect(text)
        runs.append((texts, clock.at()))
        return scatter([len(t) for t in texts])

    arrivals = [
        (0.0, "aaaa"),
        (0.01, "bbbb"),
        (0.02, "cc"),  # 4 + 4 + 2 = 10: closes at once
        (0.03, "dddddd"),
        (0.04, "eeeee"),  # 6 + 5 > 10: [dddddd] goes, eeeee opens the next batch
        (0.05, "f" * 12),  # 5 + 12 > 10: [eeeee] goes; alone, 12 >= 10: a batch of one
        (0.06, "g"),
        (0.07, ""),  # weighs nothing
    ]
    results = await clock.run(embed, arrivals)

    assert results == [len(text) for _, text in arrivals]
    # Two batches go at .05: in either order (they are two tasks).
    assert sorted(runs, key=lambda run: (run[1], run[0])) == [
        (["aaaa", "bbbb", "cc"], 0.02),
        (["dddddd"], 0.04),
        (["eeeee"], 0.05),
        (["f" * 12], 0.05),
        (["g", ""], 0.11),  # by its window
    ]
    assert [(record.size, record.reason) for record in records] == [
        (3, "weight"),
        (1, "weight"),
        (1, "weight"),
        (1, "weight"),
        (2, "window"),
    ]


@pytest.mark.virtual_clock
async def test_a_lone_item_heavier_than_the_budget_runs_at_once_in_a_batch_of_its_own():
    """Nothing else open: the heavy item opens a batch and closes it at once (weight), no window waited."""
    clock = Clock()
    records = []

    @batch(weight=len, max_weight=3, max_window=0.05, observer=records.append)
    async def embed(text):
        texts = await collect(text)
        return scatter([(len(t), clock.at()) for t in texts])

    assert await embed("abcdef") == (6, 0.0)
    assert [(record.size, record.reason, record.waited) for record in records] == [(1, "weight", 0.0)]


async def test_under_dedupe_every_call_counts_its_weight():
    """Duplicates are collected once but weighed each time: 4 + 4 + 2 reaches 10 with two distinct items."""
    runs = []

    @batch(weight=len, max_weight=10, dedupe=True, max_window=3600)
    async def embed(text):
        texts = await collect(text)
        runs.append(texts)
        return scatter([len(t) for t in texts])

    results = []

    async def call(text):
        results.append((text, await embed(text)))

    with anyio.fail_after(10):  # the window never ends it: only the weight can
        async with anyio.create_task_group() as tg:
            for text in ("aaaa", "aaaa", "bb"):
                tg.start_soon(call, text)
                await kit.quiesce()

    assert runs == [["aaaa", "bb"]]
    assert sorted(results) == [("aaaa", 4), ("aaaa", 4), ("bb", 2)]


class WeightError(Exception):
    pass


def weigh(text):
    if text == "raises":
        raise WeightError(text)
    return {"negative": -1, "infinite": float("inf"), "not a number": "3"}.get(text, 1)


async def test_a_bad_weight_fails_that_call_alone_before_it_joins():
    """A weight function raising or returning a bad weight fails its call from collect(); the rest batch."""
    body = []
    runs = []

    @batch(weight=weigh, max_weight=10)
    async def embed(text):
        body.append(text)
        texts = await collect(text)
        runs.append(texts)
        return scatter([f"ok {t}" for t in texts])

    texts = ("a", "raises", "negative", "infinite", "not a number", "b")
    results = await kit.outcomes(*(functools.partial(embed, text) for text in texts))

    assert sorted(body) == sorted(texts)  # every body ran up to collect()
    assert [sorted(run) for run in runs] == [["a", "b"]]
    assert [type(result) for result in results] == [str, WeightError, ValueError, ValueError, TypeError, str]
    assert results[0] == "ok a"
    assert results[5] == "ok b"
    assert str(results[1]) == "raises"
    for result, text in zip(results[2:5], texts[2:5], strict=True):
        assert str(result).startswith(f"{embed.__qualname__}: weight({text!r}) returned ")


# --------------------------------------------------------------------------------------
# max_pending
# --------------------------------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_calls_beyond_max_pending_are_refused_at_once_and_the_others_are_unaffected():
    """max_pending=3: the 4th and 5th waiting calls of a partition fail from collect(); another partition is apart."""
    clock = Clock()
    events = []

    @batch(max_window=0.05, max_pending=3, group_by=lambda item: item[0])
    async def guarded(item):
        try:
            items = await collect(item)
        except OverloadedError:
            events.append(("refused", item, clock.at()))
            raise
        events.append(("run", items, clock.at()))
        return scatter([f"ok {x}" for x in items])

    arrivals = [(0.0, "a1"), (0.01, "a2"), (0.02, "a3"), (0.03, "a4"), (0.035, "b1"), (0.04, "a5"), (0.06, "a6")]
    results = await clock.run(guarded, arrivals)

    assert [type(result) for result in results] == [str, str, str, OverloadedError, str, OverloadedError, str]
    assert [results[i] for i in (0, 1, 2, 4, 6)] == ["ok a1", "ok a2", "ok a3", "ok b1", "ok a6"]
    assert str(results[3]) == (
        f"{guarded.__qualname__}: 3 calls are already waiting for a batch (max_pending=3); "
        "this call was refused instead of queueing without bound"
    )
    assert events == [
        ("refused", "a4", 0.03),
        ("refused", "a5", 0.04),
        ("run", ["a1", "a2", "a3"], 0.05),  # dispatched at .05: a6 joins a new batch at .06
        ("run", ["b1"], 0.085),
        ("run", ["a6"], 0.11),
    ]
    assert guarded.stats().shed == 2


@pytest.mark.virtual_clock
async def test_batches_queued_for_a_slot_count_as_waiting_and_dispatched_ones_do_not():
    """max_concurrency=1, max_pending=2: calls queued behind the running batch count; the running ones do not."""
    clock = Clock()
    runs = []

    @batch(max_concurrency=1, max_pending=2)
    async def guarded(item):
        items = await collect(item)
        runs.append((items, clock.at()))
        await anyio.sleep(0.1)
        return scatter(items)

    # a runs 0-.1; b and c wait (queued) and d is refused; [b c] runs .1-.2, so e and f
    # wait behind it and g is refused.
    arrivals = [(0.0, "a"), (0.01, "b"), (0.02, "c"), (0.03, "d"), (0.11, "e"), (0.12, "f"), (0.13, "g")]
    results = await clock.run(guarded, arrivals)

    assert [r if isinstance(r, str) else type(r) for r in results] == [
        "a",
        "b",
        "c",
        OverloadedError,
        "e",
        "f",
        OverloadedError,
    ]
    assert runs == [(["a"], 0.0), (["b", "c"], 0.1), (["e", "f"], 0.2)]

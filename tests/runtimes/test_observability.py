"""Observers and tracing on every runtime (docs/operating.md "Hooks" and "Tracing with OpenTelemetry").

* An observer (``@batch(observer=...)``, or ``add_observer()`` for every function) gets one
  ``BatchRecord`` per dispatched batch when it ends: function, partition, calls, size, flush
  reason, wait, duration, outcome (``ok``, ``error`` with its type, ``handover``) and
  handovers. The function's observer runs first, then the global ones in registration order;
  what an observer raises is logged, never seen by a caller.
* ``enable_tracing()``: one span per leader run, a child of the leader's span, linked to the
  span current in every member at its ``collect()``; a handover gives the next leader's run a
  span of its own. Checked with the OpenTelemetry SDK's in-memory exporter.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from tests.runtimes import kit

from concresce import add_observer, batch, collect, disable_tracing, enable_tracing, remove_observer, scatter

pytestmark = pytest.mark.anyio


class Calls:
    """Calls started at virtual times in one task group, each in a cancel scope of its own."""

    def __init__(self, tg):
        self.tg = tg
        self.t0 = kit.now()
        self.scopes = {}
        self.outcomes = {}

    def at(self, when, fn, item, *, wrap=None):
        async def run():
            await anyio.sleep_until(self.t0 + when)
            with anyio.CancelScope() as self.scopes[item]:
                try:
                    call = fn(item) if wrap is None else wrap(item, fn(item))
                    self.outcomes[item] = await call
                except Exception as error:  # noqa: BLE001 -- the outcome under test
                    self.outcomes[item] = type(error)
                return
            self.outcomes[item] = "cancelled"

        self.tg.start_soon(run)

    def cancel_at(self, when, item):
        async def run():
            await anyio.sleep_until(self.t0 + when)
            self.scopes[item].cancel()

        self.tg.start_soon(run)


def record_fields(record):
    return (
        record.function,
        record.partition,
        record.calls,
        record.size,
        record.reason,
        round(record.waited, 6),
        round(record.duration, 6),
        record.outcome,
        record.error,
        record.handovers,
    )


# --------------------------------------------------------------------------------------
# Observers
# --------------------------------------------------------------------------------------


@pytest.mark.virtual_clock
async def test_one_record_per_batch_with_its_outcome_reason_size_and_handovers():
    records = []

    @batch(max_window=0.05, group_by=lambda item: item[0], observer=records.append)
    async def work(item):
        items = await collect(item)
        await anyio.sleep(0.1)
        if items[0][0] == "f":
            raise LookupError(items)
        return scatter(items)

    async with anyio.create_task_group() as tg:
        calls = Calls(tg)
        calls.at(0.0, work, "ok1")
        calls.at(0.01, work, "ok2")  # [ok1 ok2]: .05-.15, ok
        calls.at(0.2, work, "fail")  # [fail]: .25-.35, error
        calls.at(0.4, work, "h1")
        calls.at(0.41, work, "h2")
        calls.cancel_at(0.5, "h1")  # [h1 h2] from .45; h2 leads [h2] again .5-.6: ok, one handover
        calls.at(0.7, work, "gone")
        calls.cancel_at(0.8, "gone")  # [gone] from .75, its leader leaves, nobody is left: handover
        calls.at(0.9, work, "left")
        calls.cancel_at(0.92, "left")  # left before the dispatch: no record

    name = work.__qualname__
    assert [record_fields(record) for record in records] == [
        (name, "'o'", 2, 2, "window", 0.05, 0.1, "ok", None, 0),
        (name, "'f'", 1, 1, "window", 0.05, 0.1, "error", LookupError, 0),
        (name, "'h'", 2, 1, "window", 0.05, 0.15, "ok", None, 1),
        (name, "'g'", 1, 1, "window", 0.05, 0.05, "handover", None, 1),
    ]
    assert calls.outcomes == {
        "ok1": "ok1",
        "ok2": "ok2",
        "fail": LookupError,
        "h1": "cancelled",
        "h2": "h2",
        "gone": "cancelled",
        "left": "cancelled",
    }


@pytest.fixture
def observers():
    """Global observers added by the test, removed afterwards whatever happens."""
    added = []
    yield added
    for observer in added:
        with contextlib.suppress(ValueError):  # the test removed it
            remove_observer(observer)


async def test_the_functions_observer_runs_first_then_global_ones_in_registration_order(observers):
    seen = []

    def first(record):
        seen.append(("first", record.function, record.size))

    def second(record):
        seen.append(("second", record.function, record.size))

    @batch(observer=lambda record: seen.append(("own", record.function, record.size)))
    async def work(item):
        return scatter(await collect(item))

    @batch
    async def other(item):
        return scatter(await collect(item))

    observers.extend((first, second))
    add_observer(first)
    add_observer(second)
    add_observer(first)  # registered once
    await kit.gather(lambda: work(1), lambda: work(2))
    await other(3)
    remove_observer(first)
    await work(4)

    w, o = work.__qualname__, other.__qualname__
    assert seen == [
        ("own", w, 2),
        ("first", w, 2),
        ("second", w, 2),
        ("first", o, 1),
        ("second", o, 1),
        ("own", w, 1),
        ("second", w, 1),
    ]


async def test_an_observer_that_raises_is_logged_and_every_caller_gets_its_result(caplog):
    def broken(record):
        raise ZeroDivisionError(record.size)

    @batch(observer=broken)
    async def work(item):
        items = await collect(item)
        return scatter([x * 10 for x in items])

    with caplog.at_level(logging.ERROR, logger="concresce"):
        results = await kit.gather(lambda: work(1), lambda: work(2))

    logged = [(r.name, r.levelno, r.getMessage(), r.exc_info[0]) for r in caplog.records]
    caplog.clear()  # the records' tracebacks hold the batch's frames

    assert results == [10, 20]
    message = f"concresce: observer {broken!r} raised for a batch of {work.__qualname__}"
    assert logged == [("concresce", logging.ERROR, message, ZeroDivisionError)]


# --------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------


class Tracing:
    def __init__(self):
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")
        self.members = {}  # member -> the span_id of the span it runs in

    def batch_spans(self):
        return [span for span in self.exporter.get_finished_spans() if span.name.startswith("concresce.batch ")]

    async def member(self, item, call):
        with self.tracer.start_as_current_span(f"member {item}") as span:
            self.members[item] = span.get_span_context().span_id
            return await call


@pytest.fixture
def tracing():
    traced = Tracing()
    enable_tracing(tracer_provider=traced.provider)
    try:
        yield traced
    finally:
        disable_tracing()
        traced.provider.shutdown()


def linked(span):
    return sorted(link.context.span_id for link in span.links)


@pytest.mark.virtual_clock
async def test_one_span_per_leader_run_child_of_the_leader_linked_to_every_member(tracing):
    """A batch ending in a handover: the first leader's span, then the next leader's, each linking every member."""

    @batch(max_window=0.05, max_size=10)
    async def work(item):
        items = await collect(item)
        with tracing.tracer.start_as_current_span(f"bulk {items}"):
            await anyio.sleep(0.1)
        return scatter([x * 10 for x in items])

    async with anyio.create_task_group() as tg:
        calls = Calls(tg)
        for i, item in enumerate((1, 2, 3)):
            calls.at(0.01 * i, work, item, wrap=tracing.member)
        calls.cancel_at(0.1, 1)  # 1 leads from .05; at .1 it leaves and 2 leads [2, 3] again

    assert calls.outcomes == {1: "cancelled", 2: 20, 3: 30}
    spans = {span.name: span for span in tracing.exporter.get_finished_spans()}
    first, second = tracing.batch_spans()  # in the order they ended
    assert [first.parent.span_id, second.parent.span_id] == [tracing.members[1], tracing.members[2]]
    assert linked(first) == linked(second) == sorted(tracing.members.values())
    # Spans the bulk code starts are children of its run's span.
    assert spans["bulk [1, 2, 3]"].parent.span_id == first.context.span_id
    assert spans["bulk [2, 3]"].parent.span_id == second.context.span_id
    common = {"concresce.function": work.__qualname__, "concresce.batch.calls": 3, "concresce.flush.reason": "window"}
    assert dict(first.attributes) == {
        **common,
        "concresce.batch.size": 3,
        "concresce.batch.waited": pytest.approx(0.05),
        "concresce.outcome": "handover",
        "concresce.handovers": 1,
    }
    assert dict(second.attributes) == {
        **common,
        "concresce.batch.size": 2,
        "concresce.batch.waited": pytest.approx(0.05),
        "concresce.outcome": "ok",
        "concresce.handovers": 1,
    }
    assert [first.status.status_code, second.status.status_code] == [StatusCode.UNSET, StatusCode.UNSET]


async def test_a_failed_batch_span_has_an_error_status_and_records_the_exception(tracing):
    @batch(group_by=lambda item: "tenant")
    async def work(item):
        items = await collect(item)
        msg = f"no rows for {items}"
        raise LookupError(msg)

    async def call(item):
        try:
            await tracing.member(item, work(item))
        except LookupError as error:
            return str(error)

    messages = await kit.gather(lambda: call(1), lambda: call(2))

    (span,) = tracing.batch_spans()
    assert messages[0] == messages[1]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["concresce.outcome"] == "error"
    assert span.attributes["concresce.partition"] == "'tenant'"
    assert [(event.name, event.attributes["exception.type"]) for event in span.events] == [("exception", "LookupError")]
    assert span.events[0].attributes["exception.message"] == messages[0]
    assert linked(span) == sorted(tracing.members.values())

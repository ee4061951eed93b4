"""OpenTelemetry tracing: ``enable_tracing()`` / ``disable_tracing()`` (issue 5, "tracing").

Checked with the real OpenTelemetry SDK: a ``TracerProvider`` with a ``SimpleSpanProcessor``
into an ``InMemorySpanExporter``, passed to ``enable_tracing(tracer_provider=...)``. Each
member runs inside a span of its own, so the tests can tell which span is the batch span's
parent (the leader's) and which spans it links to (every member's).
"""

from __future__ import annotations

import asyncio
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from tests.support import Recorder, wait_all_tasks_blocked

from concresce import BatchRoutingError, batch, collect, disable_tracing, enable_tracing, scatter

pytestmark = pytest.mark.anyio

NEVER = 3600.0


class Tracing:
    """The SDK pieces of one test: ``tracer`` for the members' spans, ``exporter`` for the finished ones."""

    def __init__(self):
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")
        self.members = {}  # member name -> its span's span_id

    def batch_spans(self):
        return [span for span in self.exporter.get_finished_spans() if span.name.startswith("concresce.batch ")]

    async def member(self, name, coro):
        """Await ``coro`` inside a span of its own, named ``name``."""
        with self.tracer.start_as_current_span(f"member {name}") as span:
            self.members[name] = span.get_span_context().span_id
            return await coro


@pytest.fixture
def tracing():
    """Tracing enabled with a fresh SDK provider; always disabled afterwards."""
    traced = Tracing()
    enable_tracing(tracer_provider=traced.provider)
    try:
        yield traced
    finally:
        disable_tracing()
        traced.provider.shutdown()


def linked(span):
    return sorted(link.context.span_id for link in span.links)


def make_echo(record=None, *, bulk=0.0, **options):
    @batch(**options)
    async def echo(item):
        items = await collect(item)
        if record is not None:
            record(items)
        if bulk:
            await asyncio.sleep(bulk)
        return scatter([x * 10 for x in items])

    return echo


# --------------------------------------------------------------------------------------
# One span per leader run
# --------------------------------------------------------------------------------------


async def test_the_batch_span_is_a_child_of_the_leaders_span_and_links_every_member(tracing, clock):
    """One span per batch: named after the function, parent = the leader's span, a link to each member's span."""
    echo = make_echo(bulk=0.5, max_window=0.02, max_size=10)

    results = await asyncio.gather(*(tracing.member(x, echo(x)) for x in (1, 2, 3)))

    assert results == [10, 20, 30]
    (span,) = tracing.batch_spans()
    assert span.name == f"concresce.batch {echo.__qualname__}"
    assert span.parent is not None
    assert span.parent.span_id == tracing.members[1]
    assert span.context.trace_id == span.parent.trace_id
    assert linked(span) == sorted(tracing.members.values())
    assert dict(span.attributes) == {
        "concresce.function": echo.__qualname__,
        "concresce.batch.calls": 3,
        "concresce.batch.size": 3,
        "concresce.flush.reason": "window",
        "concresce.batch.waited": pytest.approx(0.02),
        "concresce.outcome": "ok",
        "concresce.handovers": 0,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()


async def test_the_batch_span_is_current_in_the_bulk_section_only(tracing):
    """Spans the bulk code starts are children of the batch span; after scatter() the leader's own span is back."""
    seen = Recorder()

    @batch(max_window=NEVER, max_size=2)
    async def fetch(item):
        items = await collect(item)
        with tracing.tracer.start_as_current_span("db.query"):
            await asyncio.sleep(0)
        own = scatter(items)
        with tracing.tracer.start_as_current_span("after scatter"):
            pass
        seen.append(item)
        return own

    assert await asyncio.gather(*(tracing.member(x, fetch(x)) for x in (1, 2))) == [1, 2]
    (batch_span,) = tracing.batch_spans()
    spans = {span.name: span for span in tracing.exporter.get_finished_spans()}
    assert spans["db.query"].parent.span_id == batch_span.context.span_id
    assert spans["after scatter"].parent.span_id == tracing.members[1]
    assert seen == [1]


async def test_a_span_opened_around_scatter_does_not_leave_the_batch_span_current(tracing):
    """scatter() inside a span the bulk code opened: once the call returns, the caller's span is current again."""
    from opentelemetry import trace  # noqa: PLC0415 -- the test group installs it

    @batch(max_window=NEVER, max_size=2)
    async def fetch(item):
        items = await collect(item)
        with tracing.tracer.start_as_current_span("write"):
            return scatter(items)

    async def member(name, x):
        with tracing.tracer.start_as_current_span(f"member {name}") as span:
            tracing.members[name] = span.get_span_context().span_id
            result = await fetch(x)
            current = trace.get_current_span().get_span_context().span_id
            with tracing.tracer.start_as_current_span(f"after {name}"):
                pass
            return result, current == tracing.members[name]

    assert await asyncio.gather(member(1, 1), member(2, 2)) == [(1, True), (2, True)]
    spans = {span.name: span for span in tracing.exporter.get_finished_spans()}
    (batch_span,) = tracing.batch_spans()
    assert spans["write"].parent.span_id == batch_span.context.span_id
    assert spans["after 1"].parent.span_id == tracing.members[1]


async def test_each_batch_gets_its_own_span(tracing):
    echo = make_echo(max_window=NEVER, max_size=2)

    results = await asyncio.gather(*(tracing.member(x, echo(x)) for x in (1, 2, 3, 4)))

    assert results == [10, 20, 30, 40]
    spans = sorted(tracing.batch_spans(), key=lambda span: span.parent.span_id == tracing.members[3])
    assert [span.parent.span_id for span in spans] == [tracing.members[1], tracing.members[3]]
    assert [linked(span) for span in spans] == [
        sorted([tracing.members[1], tracing.members[2]]),
        sorted([tracing.members[3], tracing.members[4]]),
    ]
    assert [span.attributes["concresce.flush.reason"] for span in spans] == ["size", "size"]


async def test_members_without_a_current_span_are_not_linked(tracing):
    """A member that called without a span of its own adds no link (an invalid span context)."""
    echo = make_echo(max_window=NEVER, max_size=3)

    results = await asyncio.gather(echo(1), tracing.member(2, echo(2)), echo(3))

    assert results == [10, 20, 30]
    (span,) = tracing.batch_spans()
    assert span.parent is None  # the leader (call 1) had no span: a root span
    assert linked(span) == [tracing.members[2]]


async def test_the_partition_is_an_attribute_with_group_by(tracing):
    @batch(max_window=NEVER, max_size=1, group_by=lambda item, tenant: tenant)
    async def work(item, tenant):
        items = await collect(item)
        return scatter(items)

    assert await tracing.member("a", work(1, "acme")) == 1

    (span,) = tracing.batch_spans()
    assert span.attributes["concresce.partition"] == "'acme'"
    assert span.attributes["concresce.batch.size"] == 1
    assert span.attributes["concresce.flush.reason"] == "size"


# --------------------------------------------------------------------------------------
# Failures and handovers
# --------------------------------------------------------------------------------------


async def test_a_failed_batch_has_an_error_status_and_records_the_exception(tracing):
    @batch(max_window=NEVER, max_size=2)
    async def work(item):
        await collect(item)
        msg = "the database is down"
        raise ValueError(msg)

    results = await asyncio.gather(*(tracing.member(x, work(x)) for x in (1, 2)), return_exceptions=True)

    assert [type(result) for result in results] == [ValueError, ValueError]
    (span,) = tracing.batch_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: the database is down"
    assert span.attributes["concresce.outcome"] == "error"
    assert [event.name for event in span.events] == ["exception"]
    assert span.events[0].attributes["exception.type"] == "ValueError"
    assert span.events[0].attributes["exception.message"] == "the database is down"
    del results


@pytest.mark.parametrize(
    ("results", "error", "description"),
    [
        ([1], BatchRoutingError, "BatchRoutingError: "),
        (None, RuntimeError, "RuntimeError: "),
    ],
    ids=["routing", "no-scatter"],
)
async def test_routing_errors_and_missing_scatter_are_errors_too(tracing, results, error, description):
    @batch(max_window=NEVER, max_size=2)
    async def work(item):
        await collect(item)
        if results is None:
            return item
        return scatter(results)

    outcomes = await asyncio.gather(*(tracing.member(x, work(x)) for x in (1, 2)), return_exceptions=True)

    assert [type(outcome) for outcome in outcomes] == [error, error]
    (span,) = tracing.batch_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description.startswith(description)
    assert span.attributes["concresce.outcome"] == "error"
    del outcomes


async def test_a_handover_gives_a_span_per_leader_run(tracing):
    """The leader cancelled in its bulk call ends its span (handover); the next leader's run gets its own."""
    record = Recorder()
    gate = asyncio.Event()

    @batch(max_window=NEVER, max_size=3)
    async def work(item):
        items = await collect(item)
        record(items)
        await gate.wait()
        return scatter([x * 10 for x in items])

    tasks = [asyncio.create_task(tracing.member(x, work(x))) for x in (1, 2, 3)]
    await wait_all_tasks_blocked()
    tasks[0].cancel()
    await wait_all_tasks_blocked()
    gate.set()
    await asyncio.wait(tasks)

    assert tasks[0].cancelled()
    assert [task.result() for task in tasks[1:]] == [20, 30]
    assert record == [[1, 2, 3], [2, 3]]
    first, second = tracing.batch_spans()  # in the order they ended
    assert first.parent.span_id == tracing.members[1]
    assert second.parent.span_id == tracing.members[2]
    assert linked(first) == linked(second) == sorted(tracing.members.values())
    assert {key: first.attributes[key] for key in ("concresce.outcome", "concresce.handovers")} == {
        "concresce.outcome": "handover",
        "concresce.handovers": 1,
    }
    assert first.status.status_code is StatusCode.UNSET
    assert {key: second.attributes[key] for key in ("concresce.outcome", "concresce.handovers")} == {
        "concresce.outcome": "ok",
        "concresce.handovers": 1,
    }
    assert (second.attributes["concresce.batch.calls"], second.attributes["concresce.batch.size"]) == (3, 2)


async def test_a_leader_cancelled_before_it_resumed_has_no_span(tracing):
    """A leader that never resumed from collect() never ran: only the next leader's run has a span."""
    record = Recorder()
    echo = make_echo(record, max_window=NEVER, max_size=2)

    first = asyncio.create_task(tracing.member(1, echo(1)))
    await wait_all_tasks_blocked()
    second = asyncio.create_task(tracing.member(2, echo(2)))
    while not echo.stats().in_flight_now:  # noqa: ASYNC110 -- one loop turn at a time is the point
        await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait([first, second])

    assert first.cancelled()
    assert second.result() == 20
    assert record == [[2]]
    (span,) = tracing.batch_spans()
    assert span.parent.span_id == tracing.members[2]
    assert span.attributes["concresce.outcome"] == "ok"
    assert span.attributes["concresce.handovers"] == 0  # it never ran: a cancellation, not a handover


# --------------------------------------------------------------------------------------
# Enabling and disabling
# --------------------------------------------------------------------------------------


async def test_disable_tracing_stops_new_spans_but_open_batches_keep_theirs(tracing):
    echo = make_echo(max_window=NEVER, max_size=10)

    opened = asyncio.create_task(tracing.member(1, echo(1)))
    await wait_all_tasks_blocked()
    disable_tracing()
    assert echo.flush() == 1
    assert await opened == 10
    assert len(tracing.batch_spans()) == 1

    tasks = [asyncio.create_task(tracing.member(x, echo(x))) for x in (2, 3)]
    await wait_all_tasks_blocked()
    assert echo.flush() == 1
    assert await asyncio.gather(*tasks) == [20, 30]
    assert len(tracing.batch_spans()) == 1
    assert echo.stats().batches == 2


async def test_nothing_is_traced_until_tracing_is_enabled():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    echo = make_echo(max_size=2)

    assert await asyncio.gather(echo(1), echo(2)) == [10, 20]
    enable_tracing(provider)
    try:
        assert await asyncio.gather(echo(3), echo(4)) == [30, 40]
    finally:
        disable_tracing()
        provider.shutdown()

    assert [span.name for span in exporter.get_finished_spans()] == [f"concresce.batch {echo.__qualname__}"]


def test_enable_tracing_without_opentelemetry_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)

    with pytest.raises(ImportError, match=r"pip install opentelemetry-api \(the `otel` extra of concresce") as info:
        enable_tracing()

    assert isinstance(info.value.__cause__, ImportError)
    disable_tracing()  # nothing was enabled; disabling is harmless

"""OpenTelemetry spans of thread-batched functions: one per batch, linking every member's span."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.threads.kit import gated, held, virtual_clock

from concresce import disable_tracing, enable_tracing


def test_a_batch_span_is_the_leaders_child_and_links_the_span_of_every_member_thread():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    enable_tracing(tracer_provider=provider)
    try:
        get, gate, _ = gated(max_concurrency=1)
        clock = virtual_clock(get)
        members: dict[int, int] = {}

        def traced(x: int) -> int:
            with tracer.start_as_current_span(f"member {x}") as span:
                members[x] = span.get_span_context().span_id
                return get(x)

        leader, callers = held(traced, clock, gate, 0, 1, 2)
        gate.open()
        assert [c.join() for c in (leader, *callers)] == [0, 1, 2]
    finally:
        disable_tracing()
        provider.shutdown()
    spans = [span for span in exporter.get_finished_spans() if span.name.startswith("concresce.batch ")]
    assert len(spans) == 2
    second = spans[1]
    assert second.parent is not None
    assert second.parent.span_id == members[1]  # the leader of [1, 2]
    assert sorted(link.context.span_id for link in second.links) == sorted([members[1], members[2]])
    assert second.attributes is not None
    assert (second.attributes["concresce.batch.size"], second.attributes["concresce.outcome"]) == (2, "ok")

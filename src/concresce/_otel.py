"""OpenTelemetry tracing of batches (the ``concresce-inline[otel]`` extra).

Nothing here imports OpenTelemetry until ``enable_tracing()`` is called; until then a batch
pays one ``None`` check when it opens and one per member that joins it.

A traced batch gets one span per leader run, started when the leader resumes from
``collect()`` (so the leader's current span is its parent) and ended when the batch is routed,
fails, or the leader leaves (a handover: the next leader's run gets a span of its own). The
span links to the span that was current in **every** member when it called ``collect()``.
While the leader runs the bulk section the span is the current one in its context, so spans
the bulk code starts (a database client's, an HTTP client's) are its children.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

from ._reporting import TRACING, partition_label

if TYPE_CHECKING:
    from ._batches import Batch
    from ._stats import Outcome

__all__ = ["disable_tracing", "enable_tracing"]


def enable_tracing(tracer_provider: Any = None) -> None:
    """Give every batch of every decorated function an OpenTelemetry span.

    The span is named ``concresce.batch <function>``; its parent is the span current in the
    leader, and it links to the span current in each member at its ``collect()``. Its
    attributes: ``concresce.function``, ``concresce.partition`` (if any),
    ``concresce.batch.calls``, ``concresce.batch.size``, ``concresce.flush.reason``,
    ``concresce.batch.waited`` (seconds), ``concresce.outcome`` (``ok``, ``error``,
    ``handover``) and ``concresce.handovers``; a failed batch also records the exception and
    an error status.

    Args:
        tracer_provider: The ``TracerProvider`` to take the tracer from; by default the
            global one (``opentelemetry.trace.set_tracer_provider``).

    Raises:
        ImportError: OpenTelemetry is not installed (``pip install 'concresce-inline[otel]'``).

    Added in version 0.3.
    """
    try:
        from opentelemetry import trace  # noqa: PLC0415 -- imported only when tracing is wanted
    except ImportError as error:
        msg = (
            "concresce: tracing needs the OpenTelemetry API; install it with: pip install opentelemetry-api "
            "(the `otel` extra of concresce-inline brings it) and, to record spans, opentelemetry-sdk"
        )
        raise ImportError(msg) from error
    api = _Api(trace, trace.get_tracer("concresce", tracer_provider=tracer_provider))

    def open_trace(batch: Batch) -> _BatchTrace:
        return _BatchTrace(api, batch.part.batcher.name)

    TRACING.open = open_trace


def disable_tracing() -> None:
    """Stop creating spans for new batches (batches already open keep theirs).

    Added in version 0.3.
    """
    TRACING.open = None


@final
class _Api:
    """What the traces use of OpenTelemetry, looked up once by enable_tracing()."""

    __slots__ = ("attach", "current", "current_span", "detach", "in_context", "link", "status", "tracer")

    def __init__(self, trace: Any, tracer: Any) -> None:
        from opentelemetry import context  # noqa: PLC0415 -- imported only when tracing is wanted

        self.tracer = tracer
        self.current_span = trace.get_current_span
        self.link = trace.Link
        self.status = (trace.Status, trace.StatusCode.ERROR)
        self.in_context = trace.set_span_in_context
        self.attach = context.attach
        self.detach = context.detach
        self.current = context.get_current


@final
class _BatchTrace:
    """The spans of one batch: the members' span contexts, and the running leader's span."""

    __slots__ = ("api", "context", "links", "name", "span", "token")

    def __init__(self, api: _Api, name: str) -> None:
        self.api = api
        self.name = name
        self.links: list[Any] = []
        self.span: Any = None
        self.context: Any = None  # the OpenTelemetry context with the span current
        self.token: Any = None  # makes it current in the leader's task until end() or release()

    def join(self) -> None:
        context = self.api.current_span().get_span_context()
        if context.is_valid:
            self.links.append(context)

    def start(self, batch: Batch) -> None:
        api = self.api
        part = batch.part
        attributes: dict[str, Any] = {"concresce.function": self.name}
        label = partition_label(part)
        if label is not None:
            attributes["concresce.partition"] = label
        span = self.span = api.tracer.start_span(
            f"concresce.batch {self.name}",
            links=[api.link(context) for context in self.links],
            attributes=attributes,
        )
        # start() runs in the leader's task, and so does end() (scatter(), or the leader's
        # failure or handover): the span is current for exactly the bulk section.
        self.context = api.in_context(span)
        self.token = api.attach(self.context)

    def end(self, batch: Batch, outcome: Outcome, error: BaseException | None) -> None:
        span = self.span  # started by this run's start(): end() follows only a leader's run
        self.span = None
        if self.api.current() is self.context:
            self.release()
        # Else the bulk code opened a span of its own around scatter(): detaching now, out of
        # order, would let that span's exit make this one current again. The leader's call
        # releases it when it returns (release()).
        span.set_attributes(
            {
                "concresce.batch.calls": len(batch.members),
                "concresce.batch.size": batch.count,
                "concresce.flush.reason": batch.reason,
                "concresce.batch.waited": batch.dispatched - batch.opened,
                "concresce.outcome": outcome,
                "concresce.handovers": batch.handovers,
            }
        )
        if error is not None:
            span.record_exception(error)
            status, code = self.api.status
            span.set_status(status(code, f"{type(error).__name__}: {error}"))
        span.end()

    def release(self) -> None:
        """Stop making the span current in the leader's task, if end() could not."""
        if self.token is not None:
            self.api.detach(self.token)
            self.token = self.context = None

"""Tracing: W3C ``traceparent`` in message headers, and OpenTelemetry spans when it is set up.

Every message the SDK publishes carries a ``traceparent`` header. Inside a
handler it continues the handled message's trace (same trace id, a new span
id), so a conversation's hops share one trace even with no tracing library.

With OpenTelemetry installed *and* a tracer provider configured by the
application (``opentelemetry.trace.set_tracer_provider``), the SDK also records
spans ``publish <topic>`` (producer) and ``handle <topic>`` (consumer, a child
of the publisher's span across agents), and the gateway records ``tidings
publish`` (until the message is durable) and ``tidings deliver``. Without a
configured provider nothing is recorded and nothing is imported beyond a check.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

TRACEPARENT = "traceparent"


def parse(traceparent: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, span_id, flags)`` of a well-formed version-00 traceparent, else None."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    if len(parts) != 4 or parts[0] != "00" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    if parts[1] == "0" * 32 or parts[2] == "0" * 16:
        return None
    try:
        int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    return parts[1], parts[2], parts[3]


def child_of(traceparent: str | None) -> str:
    """A new span of ``traceparent``'s trace, or of a new trace if it is missing or malformed."""
    parsed = parse(traceparent)
    trace_id, flags = (parsed[0], parsed[2]) if parsed else (secrets.token_hex(16), "01")
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


def _otel() -> Any | None:
    """The OpenTelemetry trace API if it is installed and a real provider is configured."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None  # the API alone, or nobody called set_tracer_provider: spans would go nowhere
    return trace


class Tracer:
    """Spans for one component (``tidings.sdk``, ``tidings.gateway``); no-ops when tracing is off."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._api = _otel()
        self._tracer = self._api.get_tracer(name) if self._api is not None else None
        #: whether spans go anywhere (an attribute: it is asked once per message)
        self.enabled = self._tracer is not None

    def start(self, name: str, traceparent: str | None, kind: str, **attributes: Any) -> Any:
        """Start (not enter) a span whose parent is ``traceparent``; None when tracing is off."""
        if self._tracer is None:
            return None
        from opentelemetry.trace import SpanKind

        return self._tracer.start_span(
            name, context=_context(traceparent), kind=getattr(SpanKind, kind), attributes=attributes
        )

    @contextlib.contextmanager
    def current(self, name: str, traceparent: str | None, kind: str, **attributes: Any) -> Iterator[Any]:
        """A span that is the current one while the block runs (children made inside attach to it)."""
        if self._tracer is None:
            yield None
            return
        from opentelemetry.trace import SpanKind

        with self._tracer.start_as_current_span(
            name,
            context=_context(traceparent) if traceparent else None,
            kind=getattr(SpanKind, kind),
            attributes=attributes,
        ) as span:
            yield span

    def traceparent(self, span: Any) -> str:
        """The ``traceparent`` header naming ``span``."""
        ctx = span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _context(traceparent: str | None) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {TRACEPARENT: traceparent} if parse(traceparent) else {}
    return TraceContextTextMapPropagator().extract(carrier)

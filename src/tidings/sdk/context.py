"""Causal context: the message being handled, for automatic ``parent`` and trace headers."""

from __future__ import annotations

from contextvars import ContextVar

from tidings.protocol import frames as f
from tidings.tracing import TRACEPARENT, child_of

#: The message whose handler is running in this task, if any.
current_message: ContextVar[f.Msg | None] = ContextVar("tidings_current_message", default=None)

#: The topic of the ``parent`` message, so subscribers can hold back for it.
PARENT_TOPIC = "tidings-parent-topic"


def causal_defaults(parent: str | None, headers: dict[str, str]) -> tuple[str | None, dict[str, str]]:
    """Fill ``parent`` from the message being handled, and ``traceparent``, unless given.

    The ``traceparent`` is a new span of the handled message's trace (of a new
    trace outside a handler); ``Agent.publish`` replaces it with its own span's
    when OpenTelemetry is recording (``tidings.tracing``).
    """
    msg = current_message.get()
    if msg is not None and parent is None:
        parent = msg.id
        if PARENT_TOPIC not in headers:
            headers = {**headers, PARENT_TOPIC: msg.topic}
    if TRACEPARENT not in headers:
        headers = {
            **headers,
            TRACEPARENT: child_of(msg.headers.get(TRACEPARENT) if msg is not None else None),
        }
    return parent, headers

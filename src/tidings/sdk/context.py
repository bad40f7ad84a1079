"""Causal context: the message being handled, for automatic ``parent`` and trace headers."""

from __future__ import annotations

from contextvars import ContextVar

from tidings.protocol import frames as f

#: The message whose handler is running in this task, if any.
current_message: ContextVar[f.Msg | None] = ContextVar("tidings_current_message", default=None)

TRACEPARENT = "traceparent"
#: The topic of the ``parent`` message, so subscribers can hold back for it.
PARENT_TOPIC = "tidings-parent-topic"


def causal_defaults(parent: str | None, headers: dict[str, str]) -> tuple[str | None, dict[str, str]]:
    """Fill ``parent`` and ``traceparent`` from the message being handled, unless given."""
    msg = current_message.get()
    if msg is None:
        return parent, headers
    if parent is None:
        parent = msg.id
        if PARENT_TOPIC not in headers:
            headers = {**headers, PARENT_TOPIC: msg.topic}
    trace = msg.headers.get(TRACEPARENT)
    if trace is not None and TRACEPARENT not in headers:
        headers = {**headers, TRACEPARENT: trace}
    return parent, headers

"""tidings: realtime messaging infrastructure for multi-agent AI systems."""

from tidings.sdk import (
    Agent,
    Backoff,
    BufferFull,
    ConnectionState,
    GapInfo,
    Message,
    Position,
    Puback,
    Subscription,
    connect,
    current_message,
)

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Backoff",
    "BufferFull",
    "ConnectionState",
    "GapInfo",
    "Message",
    "Position",
    "Puback",
    "Subscription",
    "__version__",
    "connect",
    "current_message",
]

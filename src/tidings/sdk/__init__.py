"""The agent SDK. It depends on ``tidings.protocol`` only, never on the server."""

from tidings.protocol.frames import Position, Puback
from tidings.sdk.agent import Agent, ConnectionState, connect
from tidings.sdk.backoff import Backoff
from tidings.sdk.context import current_message
from tidings.sdk.link import new_id
from tidings.sdk.outbox import BufferFull
from tidings.sdk.subscription import GapInfo, Message, Subscription

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
    "connect",
    "current_message",
    "new_id",
]

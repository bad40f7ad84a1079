"""Every frame of the tidings wire protocol, as msgspec Structs.

A frame is one object whose ``op`` field names its kind. Requests may carry a
``rid`` (request id, chosen by the client); the reply to that request echoes
it. Fields at their default value are omitted on the wire. ``docs/protocol.md``
is the prose version of this file; keep the two in step.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

# Every Struct: tagged by "op", omit defaults, reject unknown ops.
_FRAME = {"tag_field": "op", "omit_defaults": True, "forbid_unknown_fields": False}

Headers = dict[str, str]


class Position(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """Where a subscription starts: after ``offset``, or at wall-clock ``time`` (ms)."""

    offset: int | None = None
    time: int | None = None


#: ``from`` of a ``sub``: "earliest", "latest", or a Position.
Start = Literal["earliest", "latest"] | Position


# --- client -> server ---------------------------------------------------------


class Hello(msgspec.Struct, tag="hello", **_FRAME):
    """First frame of every connection; must arrive within the hello deadline."""

    token: str | None = None
    client: str = ""
    rid: int | None = None
    capabilities: list[str] = []
    status: str = ""
    resume: str | None = None


class Sub(msgspec.Struct, tag="sub", **_FRAME):
    """Subscribe to a topic or pattern. With ``consumer`` it is durable."""

    topic: str
    rid: int | None = None
    consumer: str | None = None
    start: Start | None = msgspec.field(default=None, name="from")
    max_inflight: int | None = None
    ack_wait_ms: int | None = None
    #: False: never deliver this agent's own messages on it (NATS' no_echo, MQTT's No Local)
    echo: bool = True


class Unsub(msgspec.Struct, tag="unsub", **_FRAME):
    sid: int
    rid: int | None = None


class Pub(msgspec.Struct, tag="pub", **_FRAME):
    """Publish one message. Without ``rid`` no ``puback`` is sent (fire and forget)."""

    topic: str
    body: Any = None
    rid: int | None = None
    id: str | None = None
    parent: str | None = None
    lamport: int = 0
    headers: Headers = {}


class Ack(msgspec.Struct, tag="ack", **_FRAME):
    """Acknowledge a delivered message of a durable subscription.

    ``queued_us`` (arrival to handler start) and ``handled_us`` (handler start
    to finish), measured on the agent's monotonic clock, let the server chart
    deliver->handled latency without trusting the agent's wall clock.
    """

    sid: int
    topic: str
    offset: int
    queued_us: int | None = None
    handled_us: int | None = None


class Nack(msgspec.Struct, tag="nack", **_FRAME):
    """Refuse a delivered message: redeliver it after ``delay_ms`` (with backoff)."""

    sid: int
    topic: str
    offset: int
    delay_ms: int = 0


class Progress(msgspec.Struct, tag="progress", **_FRAME):
    """Still working on a delivered message: restart its ``ack_wait``."""

    sid: int
    topic: str
    offset: int


class Chunk(msgspec.Struct, tag="chunk", **_FRAME):
    """One piece of a stream (e.g. LLM tokens); ``seq`` counts from 0."""

    stream: str
    topic: str
    seq: int
    data: Any = None


class Commit(msgspec.Struct, tag="commit", **_FRAME):
    """Finish a stream; the server publishes the assembled message."""

    stream: str
    topic: str
    rid: int | None = None


class Abort(msgspec.Struct, tag="abort", **_FRAME):
    stream: str
    topic: str
    reason: str = ""


class PresenceUpdate(msgspec.Struct, tag="presence", **_FRAME):
    """Client -> server: update this agent's status and capabilities."""

    status: str = ""
    capabilities: list[str] | None = None
    rid: int | None = None


ClientFrame = Hello | Sub | Unsub | Pub | Ack | Nack | Progress | Chunk | Commit | Abort | PresenceUpdate


# --- server -> client ---------------------------------------------------------


class Limits(msgspec.Struct, omit_defaults=True):
    max_frame_bytes: int
    max_subscriptions: int
    max_topic_length: int


class Welcome(msgspec.Struct, tag="welcome", **_FRAME):
    agent: str
    session: str
    server: str
    limits: Limits
    rid: int | None = None
    heartbeat_ms: int = 0
    #: the server's wall clock when it sent this (ms since the epoch); 0 if unknown.
    #: Clients resume time-based replays by it, never by their own clock.
    time: int = 0


class Subbed(msgspec.Struct, tag="subbed", **_FRAME):
    sid: int
    topic: str
    rid: int | None = None
    durable: bool = False
    #: for a replaying subscription to one concrete topic: the topic's last
    #: offset when the subscription began (a replay is complete once it passes it)
    head: int | None = None


class Unsubbed(msgspec.Struct, tag="unsubbed", **_FRAME):
    sid: int
    rid: int | None = None


class Msg(msgspec.Struct, tag="msg", **_FRAME):
    """A delivered message. ``sid`` names the subscription it is delivered on.

    The server encodes a Msg once per codec without ``sid`` and splices the
    ``sid`` in per subscriber (see ``codec.Codec.stamp``), so ``sid`` is last
    here and absent from the shared encoding.
    """

    topic: str
    id: str
    sender: str
    ts: int
    body: Any = None
    offset: int | None = None
    parent: str | None = None
    lamport: int = 0
    headers: Headers = {}
    attempt: int = 0
    sid: int | None = None


class Puback(msgspec.Struct, tag="puback", **_FRAME):
    id: str
    rid: int | None = None
    offset: int | None = None
    duplicate: bool = False


class Error(msgspec.Struct, tag="error", **_FRAME):
    code: str
    message: str
    rid: int | None = None
    retriable: bool = False
    retry_after_ms: int | None = None


class Gap(msgspec.Struct, tag="gap", **_FRAME):
    """Messages ``from``..``to`` (inclusive offsets) are gone or were missed."""

    sid: int
    topic: str
    first: int = msgspec.field(name="from")
    last: int = msgspec.field(name="to")
    reason: str = ""


class Dropped(msgspec.Struct, tag="dropped", **_FRAME):
    sid: int
    topic: str
    count: int


class PresenceEvent(msgspec.Struct, tag="presence", **_FRAME):
    """Server -> client: an agent joined, left, or changed status."""

    agent: str
    event: str
    status: str = ""
    topic: str = ""
    rid: int | None = None


def op_of(frame: object) -> str:
    """The ``op`` a frame is sent with (msgspec keeps the tag on the class, not the instance)."""
    config = getattr(type(frame), "__struct_config__", None)
    tag = getattr(config, "tag", None)
    return tag if isinstance(tag, str) else type(frame).__name__.lower()


class StreamChunk(msgspec.Struct, tag="chunk", **_FRAME):
    """Server -> client: one live piece of a stream on a subscribed topic (ephemeral)."""

    stream: str
    topic: str
    seq: int
    sender: str
    data: Any = None
    sid: int | None = None


ServerFrame = Welcome | Subbed | Unsubbed | Msg | Puback | Error | Gap | Dropped | PresenceEvent | StreamChunk

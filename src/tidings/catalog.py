"""The catalog: conversations and revoked tokens, kept as events in the engine.

The control plane writes; every gateway reads. Both go through one durable
system topic, ``ctl/_tidings/catalog``, so that a gateway in another process
(or on another machine, with a distributed engine) learns of a closed
conversation or a revoked token the moment it is committed, and a restarted
one rebuilds the same state by replaying the topic. Each event carries a whole
record (last write wins), so folding them needs no history of its own:

    {"kind": "conversation", "conversation": {topic, members, policy, state, ...}}
    {"kind": "revoke", "jti": "...", "expires_ms": 1764000000000}

The catalog also decides each topic's policy: the namespace's (``Settings``),
overridden by its conversation's; it is the retention callable handed to the
engine, which is how deleting a conversation removes its messages (retention
0) and why the catalog topic itself is never trimmed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Literal

import msgspec

from tidings.config import NamespacePolicy, Settings
from tidings.engine.base import Engine
from tidings.errors import InvalidTopic
from tidings.log.types import UNLIMITED, RetentionPolicy
from tidings.protocol.frames import Msg
from tidings.protocol.topics import SYSTEM_PREFIX, validate_topic

log = logging.getLogger("tidings.catalog")

#: the system topic; agents' ids may not start with "_", so no agent owns it
CATALOG_TOPIC = SYSTEM_PREFIX + "catalog"
#: the sender stamped on messages the system writes
SYSTEM_SENDER = "_tidings"

ConversationState = Literal["open", "closed", "deleted"]


class ConversationPolicy(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Per-conversation overrides of its namespace's policy; None keeps the namespace's."""

    max_messages: int | None = None
    max_bytes: int | None = None
    max_age_s: float | None = None
    dedup_window_s: float | None = None
    ack_wait_ms: int | None = None
    max_deliver: int | None = None


class Conversation(msgspec.Struct, kw_only=True):
    topic: str
    members: list[str] = []
    policy: ConversationPolicy = msgspec.field(default_factory=ConversationPolicy)
    state: ConversationState = "open"
    created_ms: int = 0
    updated_ms: int = 0


class _ConversationEvent(msgspec.Struct, tag="conversation", tag_field="kind"):
    conversation: Conversation


class _RevokeEvent(msgspec.Struct, tag="revoke", tag_field="kind"):
    jti: str
    expires_ms: int


_Event = _ConversationEvent | _RevokeEvent
_decode_event = msgspec.convert


def validate_conversation_topic(topic: str) -> str:
    """Conversations are ``conv/<group>/<name>``: exactly three segments. Raises ``InvalidTopic``."""
    validate_topic(topic)
    parts = topic.split("/")
    if parts[0] != "conv" or len(parts) != 3:
        raise InvalidTopic(f"a conversation topic is conv/<group>/<name>, not {topic!r}")
    return topic


class Catalog:
    """Conversations, revoked tokens and per-topic policy, folded from ``CATALOG_TOPIC``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conversations: dict[str, Conversation] = {}
        #: topics refusing publishes (closed or deleted conversations)
        self.closed: set[str] = set()
        self._overrides: dict[str, NamespacePolicy] = {}
        self._revoked: dict[str, int] = {}  # jti -> token expiry (ms)
        self._revoke_listeners: list[Callable[[str], None]] = []
        self._engine: Engine | None = None
        self._held: list[Msg] | None = None

    async def open(self, engine: Engine) -> None:
        """Replay the catalog topic, then follow it. Call after ``engine.start()``.

        Commits that arrive while the replay reads are held, then applied if the
        replay did not already return them, so nothing is missed or applied twice
        out of order (a remote engine may commit between two reads).
        """
        self._engine = engine
        held: list[Msg] = []
        # str.__eq__ is the test without a Python frame: it runs for every message stored.
        engine.on_commit(self._follow, CATALOG_TOPIC.__eq__)
        self._held = held
        after = 0
        while batch := await engine.read(CATALOG_TOPIC, after, 1000):
            for msg in batch:
                self._apply(msg)
            after = batch[-1].offset or after
        self._held = None
        for msg in held:
            if (msg.offset or 0) > after:
                self._apply(msg)

    def _follow(self, msg: Msg) -> None:
        if self._held is not None:
            self._held.append(msg)
        else:
            self._apply(msg)

    # -- reading ------------------------------------------------------------

    def policy(self, topic: str) -> NamespacePolicy:
        """The policy of ``topic``: its conversation's overrides on its namespace's."""
        return self._overrides.get(topic) or self.settings.policy(topic)

    def retention(self, topic: str) -> RetentionPolicy:
        """The engine's retention callable (see the module docstring)."""
        if topic == CATALOG_TOPIC:
            return UNLIMITED
        conversation = self.conversations.get(topic)
        if conversation is not None and conversation.state == "deleted":
            return RetentionPolicy(max_messages=0)
        return self.policy(topic).retention()

    def retained_otherwise(self) -> list[str]:
        """Topics whose retention may differ from their namespace's (an engine that keeps
        retention per namespace, NATS, trims these itself)."""
        deleted = {t for t, c in self.conversations.items() if c.state == "deleted"}
        return sorted(deleted | set(self._overrides))

    def is_revoked(self, jti: str) -> bool:
        return bool(jti) and jti in self._revoked

    def on_revoke(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(jti)`` whenever a token is revoked (from any control plane)."""
        self._revoke_listeners.append(listener)

    # -- writing (the control plane) -------------------------------------------

    async def put_conversation(self, conversation: Conversation) -> None:
        """Store a conversation's new state durably. Raises ``StorageError``."""
        conversation.updated_ms = _now_ms()
        await self._write(_ConversationEvent(conversation))

    async def revoke(self, jti: str, expires_ms: int) -> None:
        """Revoke a token for good (until it expires). Raises ``StorageError``."""
        await self._write(_RevokeEvent(jti, expires_ms))

    async def _write(self, event: _Event) -> None:
        assert self._engine is not None, "open() first"
        msg = Msg(
            topic=CATALOG_TOPIC,
            id=uuid.uuid4().hex,
            sender=SYSTEM_SENDER,
            ts=_now_ms(),
            body=msgspec.to_builtins(event),
        )
        result = await self._engine.publish(msg)
        # The commit callback has normally applied it already; applying twice is harmless.
        self._apply(msgspec.structs.replace(msg, offset=result.offset))

    # -- folding ----------------------------------------------------------------

    def _apply(self, msg: Msg) -> None:
        try:
            event = _decode_event(msg.body, _Event)
        except msgspec.ValidationError as exc:
            log.error("catalog record %s at offset %s is not understood: %s", msg.id, msg.offset, exc)
            return
        if isinstance(event, _RevokeEvent):
            if event.jti in self._revoked:
                return
            self._revoked[event.jti] = event.expires_ms
            for listener in self._revoke_listeners:
                listener(event.jti)
            return
        conversation = event.conversation
        topic = conversation.topic
        self.conversations[topic] = conversation
        if conversation.state == "open":
            self.closed.discard(topic)
        else:
            self.closed.add(topic)
        p = conversation.policy
        overrides = {
            name: value
            for name in (
                "max_messages",
                "max_bytes",
                "max_age_s",
                "dedup_window_s",
                "ack_wait_ms",
                "max_deliver",
            )
            if (value := getattr(p, name)) is not None
        }
        if overrides:
            self._overrides[topic] = msgspec.structs.replace(self.settings.policy(topic), **overrides)
        else:
            self._overrides.pop(topic, None)


def _now_ms() -> int:
    return int(time.time() * 1000)

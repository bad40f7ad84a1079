"""One subscription of one connection, and how a delivery reaches that connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from tidings.protocol import frames as f

if TYPE_CHECKING:
    from tidings.gateway.connection import Connection
    from tidings.gateway.consumer import Consumer
    from tidings.gateway.sharing import Proxy


class Subscription:
    """One ``sub`` of one connection: live (in the router) or a member of a ``Consumer``."""

    __slots__ = ("conn", "consumer", "inflight", "max_inflight", "pattern", "sid", "skip_sender", "suffix")

    def __init__(self, conn: Connection, sid: int, pattern: str) -> None:
        self.conn = conn
        self.sid = sid
        self.pattern = pattern
        #: closes a shared delivery encoding with this subscription's sid
        self.suffix = conn.session.codec.sid_suffix(sid)
        #: the durable consumer or reader it is a member of: here, or owned by another gateway
        self.consumer: Consumer | Proxy | None = None
        self.inflight = 0
        self.max_inflight = 0
        #: live: the agent whose messages it never gets (``echo: false``), or None
        self.skip_sender: str | None = None

    @property
    def write_paused(self) -> bool:
        return self.conn.write_paused

    @property
    def pending_bytes(self) -> int:
        return self.conn.session.pending_bytes

    def deliver(self, msg: f.Msg, attempt: int) -> None:
        """Send one message of a replay or durable consumer on this subscription.

        The message is encoded once per codec and attempt for every subscription it
        goes to in this loop turn (``Gateway.encoded_delivery``); this one's ``sid``
        is appended. Raises ``TypeError``/``ValueError``/``OverflowError`` for a body
        this connection's codec cannot carry.
        """
        conn = self.conn
        data = conn.gateway.encoded_delivery(msg, attempt, conn) + self.suffix
        if self.consumer is not None and self.consumer.priority:
            conn.session.send_encoded_priority(data)
        else:
            conn.session.send_encoded(data)
        if not conn.dirty:
            conn.gateway.flusher.mark_dirty(conn)

    def deliver_gap(self, topic: str, first: int, last: int, reason: str) -> None:
        self._send(f.Gap(sid=self.sid, topic=topic, first=first, last=last, reason=reason))

    def _send(self, frame: msgspec.Struct) -> None:
        if self.consumer is not None and self.consumer.priority:
            self.conn.session.send_priority(frame)
        else:
            self.conn.session.send(frame)
        self.conn.gateway.flusher.mark_dirty(self.conn)

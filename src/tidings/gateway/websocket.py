"""The RFC 6455 details a session never sees: reserved bits, close replies, fragments.

picows parses frames and answers pings; what it leaves to the listener is here,
so ``Connection`` only decides what a complete message means.
"""

from __future__ import annotations

from picows import WSCloseCode, WSFrame, WSMsgType

from tidings.errors import FrameTooLarge, ProtocolError


def has_reserved_bits(frame: WSFrame) -> bool:
    """Whether RSV1-3 are set: no extension is ever negotiated, so that fails the connection (5.2)."""
    return bool(frame.rsv1 or frame.rsv2 or frame.rsv3)


def close_reply(frame: WSFrame) -> WSCloseCode:
    """The code to answer a peer's close frame with.

    Its own code is echoed (5.5.1); a close without one is answered 1000, never with
    picows' placeholder 0; a code that may not appear on the wire (7.4: 1005, 1006,
    1015, unassigned ranges) is answered 1002.
    """
    if frame.payload_size == 0:
        return WSCloseCode.OK
    code = frame.get_close_code()
    return code if may_be_sent(code.value) else WSCloseCode.PROTOCOL_ERROR


def may_be_sent(code: int) -> bool:
    """Whether a peer may put ``code`` in a close frame (RFC 6455 7.4.1-7.4.2, IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class Reassembly:
    """One fragmented message being put back together (5.4), refused past ``limit`` bytes."""

    __slots__ = ("limit", "parts", "size", "started", "text")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.started = False
        self.text = False

    def feed(self, frame: WSFrame) -> bytes | None:
        """Add ``frame``; return the whole message once its last fragment is in, else None.

        Raises ``ProtocolError`` for a continuation with no message in progress or a
        new data frame inside one, and ``FrameTooLarge`` once the parts pass ``limit``
        (checked on the declared sizes, before anything more is copied).
        """
        starting = frame.msg_type is not WSMsgType.CONTINUATION
        if starting == self.started:
            why = "a new message started inside a fragmented one" if starting else "continuation of nothing"
            raise ProtocolError(why)
        if starting:
            self.started = True
            self.text = frame.msg_type is WSMsgType.TEXT
        self.size += frame.payload_size
        if self.size > self.limit:
            raise FrameTooLarge(f"fragmented message over the limit of {self.limit} bytes")
        self.parts.append(frame.get_payload_as_bytes())
        return b"".join(self.parts) if frame.fin else None

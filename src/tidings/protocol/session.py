"""The per-connection session state machine, with no I/O.

Drive it the way websockets drives its ``Protocol``:

1. ``receive_data(data)`` with each WebSocket message that arrives;
2. ``events_received()`` to take out the frames to act on, in order;
3. ``send(frame)`` / ``send_encoded(data)`` for replies and deliveries;
4. ``data_to_send()`` once per event-loop turn: it returns one WebSocket message
   (a single frame or a batch) or ``None``; send it;
5. when ``close_code`` is set after ``data_to_send()``, send a close frame with
   ``close_code`` and ``close_reason`` and stop reading.

Rules (everything that decides a transition lives in this file):

- The transition table says which frames each state accepts. A frame that the
  current state does not accept is the remote side's protocol error.
- ``events_received`` checks each frame against the state *when it is taken
  out*, so a batch ``[hello, sub]`` works: the driver accepts the hello (which
  moves the state to OPEN) before it takes out the sub.
- Errors about one request are answered with an ``error`` frame echoing its
  ``rid`` and the session stays open; errors that break the session (no hello,
  an oversized message) queue an ``error`` and set ``close_code``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from enum import Enum
from typing import Final, Generic, TypeVar

import msgspec

from tidings.errors import FrameTooLarge, InvalidFrame, ProtocolError, TidingsError
from tidings.protocol import frames as f
from tidings.protocol.codec import MAX_BATCH, Codec, client_codec, server_codec


class State(Enum):
    AWAIT_HELLO = "await_hello"  # server: socket open, no hello yet
    AUTHENTICATING = "authenticating"  # server: hello taken out, not yet accepted
    AWAIT_WELCOME = "await_welcome"  # client: hello sent, no welcome yet
    OPEN = "open"
    CLOSING = "closing"  # close requested; frames are no longer acted on
    CLOSED = "closed"

    # Identity, as equality is: Enum's own hash runs Python code, and the state is
    # looked up for every frame received (``TRANSITIONS``).
    __hash__ = object.__hash__


class CloseCode:
    """WebSocket close codes tidings uses (RFC 6455 section 7.4.1)."""

    NORMAL: Final = 1000
    GOING_AWAY: Final = 1001  # server shutting down: reconnect elsewhere
    PROTOCOL_ERROR: Final = 1002
    INVALID_PAYLOAD: Final = 1007  # a text message that is not UTF-8 (RFC 6455 8.1)
    POLICY_VIOLATION: Final = 1008  # no hello in time, bad token, frames before hello
    MESSAGE_TOO_BIG: Final = 1009
    INTERNAL_ERROR: Final = 1011
    TRY_AGAIN_LATER: Final = 1013


_OPEN_CLIENT_FRAMES: frozenset[type] = frozenset(
    {f.Sub, f.Unsub, f.Pub, f.Ack, f.Nack, f.Progress, f.Chunk, f.Commit, f.Abort, f.PresenceUpdate}
)
_OPEN_SERVER_FRAMES: frozenset[type] = frozenset(
    {f.Subbed, f.Unsubbed, f.Msg, f.Puback, f.Error, f.Gap, f.Dropped, f.PresenceEvent, f.StreamChunk}
)

#: the states in which received frames are no longer acted on. A set: looking up an
#: Enum member costs ~180 ns on Python 3.11, and this is asked for every frame.
_ENDED: Final = frozenset({State.CLOSING, State.CLOSED})

#: state -> frame type received -> next state. Absent: the frame is not allowed.
TRANSITIONS: Final[dict[State, dict[type, State]]] = {
    State.AWAIT_HELLO: {f.Hello: State.AUTHENTICATING},
    State.AUTHENTICATING: {},
    State.AWAIT_WELCOME: {f.Welcome: State.OPEN, f.Error: State.CLOSING},
    State.OPEN: {t: State.OPEN for t in _OPEN_CLIENT_FRAMES | _OPEN_SERVER_FRAMES},
    State.CLOSING: {},
    State.CLOSED: {},
}

E = TypeVar("E")


class Session(Generic[E]):
    """State, codec and outgoing buffer shared by both ends of a connection."""

    __slots__ = (
        "_encode",
        "_incoming",
        "_priority",
        "close_code",
        "close_reason",
        "codec",
        "outgoing",
        "pending_bytes",
        "state",
    )

    def __init__(self, codec: Codec[E], state: State) -> None:
        self.codec = codec
        self._encode = codec.encoder
        self.state = state
        self.close_code: int | None = None
        self.close_reason = ""
        self._incoming: deque[E] = deque()
        #: the encoded frames ``data_to_send()`` takes next, in order. ``send_encoded``'s
        #: body may be inlined by a caller that queues a frame per delivery: append
        #: the frame and add its length to ``pending_bytes`` (``Gateway.fanout`` does).
        self.outgoing: list[bytes] = []
        #: bytes queued and not yet taken by ``data_to_send()`` (read it; the session keeps it)
        self.pending_bytes = 0
        self._priority = 0  # frames at the front of outgoing sent with priority

    # -- incoming --------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, text: bool = False) -> None:
        """Feed one WebSocket message (``text``: it came in text frames). Then call ``events_received()``."""
        if self.state in _ENDED:
            return
        self._incoming.extend(self._decode(data, text))

    def _decode(self, data: bytes | bytearray | memoryview, text: bool) -> list[E]:
        """The frames of one message; none if it is not valid (the session answered that)."""
        try:
            return self.codec.decode(data)
        except FrameTooLarge as exc:
            self.fail(exc, CloseCode.MESSAGE_TOO_BIG)
        except ProtocolError as exc:
            # RFC 6455 8.1: a text message that is not UTF-8 fails the connection (1007).
            # Checked only here, on the error path: a message that decoded was valid.
            if text and not _is_utf8(data):
                self.fail(InvalidFrame("text message is not valid UTF-8"), CloseCode.INVALID_PAYLOAD)
            else:
                self._on_bad_frame(exc)
        return []

    def _on_bad_frame(self, exc: ProtocolError) -> None:
        self.fail(exc, CloseCode.PROTOCOL_ERROR)

    @property
    def has_incoming(self) -> bool:
        """Whether received frames wait to be taken out (and the session can still act on them)."""
        return bool(self._incoming) and self.state not in _ENDED

    def events_received(self) -> Iterator[E]:
        """Take out the frames received so far, each checked against the state.

        A frame the current state does not accept ends the session as the
        remote side's protocol error (``close_code`` is set).
        """
        while self._incoming and self.state not in _ENDED:
            frame = self._incoming.popleft()
            nxt = TRANSITIONS[self.state].get(type(frame))
            if nxt is None:
                self.fail(
                    ProtocolError(f"'{f.op_of(frame)}' is not allowed while {self.state.value}"),
                    CloseCode.POLICY_VIOLATION,
                )
                return
            self.state = nxt
            yield frame
        if self.state in _ENDED:
            self._incoming.clear()

    # -- outgoing --------------------------------------------------------

    def send(self, frame: msgspec.Struct) -> None:
        """Queue one frame; it leaves with the next ``data_to_send()``."""
        data = self._encode(frame)  # send_encoded, inline: this runs for every frame sent
        self.outgoing.append(data)
        self.pending_bytes += len(data)

    def send_encoded(self, data: bytes) -> None:
        """Queue one frame that is already encoded with this session's codec."""
        self.outgoing.append(data)
        self.pending_bytes += len(data)

    def send_priority(self, frame: msgspec.Struct) -> None:
        """Queue one frame ahead of every ordinary frame queued (the ``ctl/`` lane).

        Priority frames keep their order among themselves.
        """
        self.send_encoded_priority(self.codec.encode(frame))

    def send_encoded_priority(self, data: bytes) -> None:
        """``send_priority`` for a frame already encoded with this session's codec."""
        self.outgoing.insert(self._priority, data)
        self._priority += 1
        self.pending_bytes += len(data)

    def data_to_send(self) -> list[bytes]:
        """Everything queued, as few WebSocket messages as the limits allow.

        Usually one message; a batch is split so that no message holds more than
        ``MAX_BATCH`` frames or (unless one frame alone is larger) more than the
        codec's ``max_frame_bytes``, the same limits the peer is held to.
        """
        if not self.outgoing:
            return []
        frames, total = self.outgoing, self.pending_bytes
        self.outgoing = []
        self.pending_bytes = 0
        self._priority = 0
        if len(frames) == 1:  # the common case: one frame is sent as itself, whatever its size
            return frames
        limit = self.codec.max_frame_bytes - 16  # room for the array header and commas
        if len(frames) <= MAX_BATCH and total + len(frames) <= limit:
            return [self.codec.join(frames)]
        out: list[bytes] = []
        start, size = 0, 0
        for i, frame in enumerate(frames):
            if i > start and (i - start >= MAX_BATCH or size + len(frame) + (i - start) > limit):
                out.append(self.codec.join(frames[start:i]))
                start, size = i, 0
            size += len(frame)
        out.append(self.codec.join(frames[start:]))
        return out

    # -- closing ---------------------------------------------------------

    def fail(self, exc: TidingsError, close_code: int, rid: int | None = None) -> None:
        """Queue an ``error`` for ``exc`` and request a close with ``close_code``."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        self.send(error_frame(exc, rid))
        self.close(close_code, exc.message)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Request a close. The driver sends the close frame after ``data_to_send()``."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSING
        self.close_code = code
        # A close reason must fit in a 125-byte control frame with its 2-byte code.
        self.close_reason = reason.encode()[:123].decode(errors="ignore")

    def connection_lost(self) -> None:
        """The transport is gone; nothing more is read or sent."""
        self.state = State.CLOSED
        self._incoming.clear()
        self.outgoing.clear()
        self.pending_bytes = 0


def _is_utf8(data: bytes | bytearray | memoryview) -> bool:
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def error_frame(exc: TidingsError, rid: int | None = None) -> f.Error:
    """The ``error`` frame that reports ``exc`` to the peer."""
    return f.Error(
        code=exc.code,
        message=exc.message,
        rid=rid,
        retriable=exc.retriable,
        retry_after_ms=getattr(exc, "retry_after_ms", None),
    )


class ServerSession(Session[f.ClientFrame]):
    """The server's end: waits for ``hello``, then serves requests."""

    __slots__ = ()

    def __init__(self, subprotocol: str, max_frame_bytes: int) -> None:
        super().__init__(server_codec(subprotocol, max_frame_bytes), State.AWAIT_HELLO)

    def receive_one(self, data: bytes | bytearray | memoryview, text: bool = False) -> f.ClientFrame | None:
        """``receive_data`` and ``events_received`` in one step, for the common message.

        When no frames wait and the message is one frame that the state accepts and
        stays in (a ``pub`` or an ``ack`` while open), that frame is taken out and
        returned: act on it now. Anything else is queued as ``receive_data`` queues it,
        and None is returned: take the frames out with ``events_received()``. A
        connection receives mostly single frames, and this spares each of them the
        queue and the generator (docs/performance.md, "W2 at 256 connections").
        """
        if self._incoming or self.state in _ENDED:
            self.receive_data(data, text)
            return None
        frames = self._decode(data, text)
        if len(frames) == 1 and TRANSITIONS[self.state].get(type(frames[0])) is self.state:
            return frames[0]
        self._incoming.extend(frames)
        return None

    def _on_bad_frame(self, exc: ProtocolError) -> None:
        # One undecodable message from an established client is answered and
        # survived; before hello it ends the connection.
        if self.state is State.OPEN:
            self.send(error_frame(exc))
        else:
            self.fail(exc, CloseCode.POLICY_VIOLATION)

    def accept(self, welcome: f.Welcome) -> None:
        """Accept the ``hello`` just taken out: send ``welcome``, state becomes OPEN."""
        if self.state is not State.AUTHENTICATING:
            raise ProtocolError(f"cannot accept while {self.state.value}", side="local")
        self.state = State.OPEN
        self.send(welcome)

    def reject(self, exc: TidingsError, rid: int | None = None) -> None:
        """Refuse the ``hello``: send the error and close with policy violation."""
        self.fail(exc, CloseCode.POLICY_VIOLATION, rid)

    def hello_deadline_passed(self) -> None:
        """Call when the hello deadline fires; closes the session if no hello came."""
        if self.state in (State.AWAIT_HELLO, State.AUTHENTICATING):
            self.fail(ProtocolError("no hello within the deadline"), CloseCode.POLICY_VIOLATION)


class ClientSession(Session[f.ServerFrame]):
    """The client's end: sends ``hello`` at once, waits for ``welcome``."""

    __slots__ = ("welcome",)

    def __init__(self, subprotocol: str, hello: f.Hello, max_frame_bytes: int = 64 * 1024 * 1024) -> None:
        super().__init__(client_codec(subprotocol, max_frame_bytes), State.AWAIT_WELCOME)
        self.send(hello)
        self.welcome: f.Welcome | None = None

    def events_received(self) -> Iterator[f.ServerFrame]:
        for frame in super().events_received():
            if isinstance(frame, f.Welcome):
                self.welcome = frame
            elif isinstance(frame, f.Error) and self.welcome is None:
                self.close(CloseCode.NORMAL, frame.message)
            yield frame

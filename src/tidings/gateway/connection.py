"""One WebSocket connection: a picows listener that drives a ``ServerSession``.

Each callback feeds the session, acts on the frames it yields (what each op does
is in ``ops.py``), and marks the connection dirty; the gateway flushes every dirty
connection once per event-loop turn, so all frames produced for a connection in one
turn leave in one WebSocket message.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from tidings.auth import Grants
from tidings.errors import (
    Forbidden,
    FrameTooLarge,
    InvalidTopic,
    LimitExceeded,
    NotSupported,
    ProtocolError,
    TidingsError,
)
from tidings.gateway.handshake import spread
from tidings.gateway.ops import dispatch, on_ack, on_pub
from tidings.gateway.subscription import Subscription
from tidings.gateway.websocket import Reassembly, close_reply, has_reserved_bits
from tidings.protocol import frames as f
from tidings.protocol.session import CloseCode, ServerSession, State, error_frame

if TYPE_CHECKING:
    from tidings.gateway.server import Gateway

log = logging.getLogger("tidings.gateway")


class Connection(WSListener):
    # Slots: ten thousand idle connections should cost as little as possible (W4).
    __slots__ = (
        "_continue",
        "_held",
        "_reads_paused",
        "_reassembly",
        "_refused",
        "_refused_at",
        "_write_deadline",
        "binary",
        "dirty",
        "dropped",
        "gateway",
        "grants",
        "joining",
        "may_publish",
        "next_sid",
        "peer",
        "session",
        "session_id",
        "subs",
        "timers",
        "transport",
        "unacked",
        "write_paused",
    )

    def __init__(self, gateway: Gateway, subprotocol: str, peer: str) -> None:
        super().__init__()
        self.gateway = gateway
        self.peer = peer
        self.session = ServerSession(subprotocol, gateway.settings.max_frame_bytes)
        self.binary = self.session.codec.binary
        self.grants: Grants | None = None
        #: topics this connection has been allowed to publish to (valid, granted)
        self.may_publish: dict[str, str] = {}  # topic -> its namespace, once checked
        self.session_id = uuid.uuid4().hex
        self.subs: dict[int, Subscription] = {}
        self.dirty = False
        self.write_paused = False
        #: sid -> live deliveries dropped while the outgoing buffer was full
        self.dropped: dict[int, int] = {}
        self._write_deadline: asyncio.TimerHandle | None = None
        self.transport: WSTransport | None = None
        self.next_sid = 1  # of the next subscription ``ops.on_sub`` accepts
        #: a fragmented message being received (None between messages)
        self._reassembly: Reassembly | None = None
        #: the hello deadline, the token's expiry, the tarpit's hold: cancelled on disconnect
        self.timers: list[asyncio.TimerHandle] = []
        self.unacked = 0  # durable publishes waiting for their puback
        self.joining: set[asyncio.Future[None]] = set()  # durable subs being joined (``ops._join``)
        #: the rest of a big batch, acted on in a later loop turn (reading paused meanwhile)
        self._continue: asyncio.Handle | None = None
        self._reads_paused = False
        #: its hello was refused past its address's budget: the answer waits (``Tarpit``)
        self._held = False
        #: refusals counted against ``max_refusals`` (``_may_refuse``), as of ``_refused_at``
        self._refused = 0.0
        self._refused_at = 0.0

    @property
    def agent(self) -> str:
        return self.grants.agent if self.grants else ""

    def context(self, **more: object) -> dict[str, object]:
        """Log context (``logs.CONTEXT``): never a body or a token."""
        return {"conn": self.session_id[:12], "agent": self.agent or None, "peer": self.peer or None, **more}

    # -- picows callbacks ---------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        # pause_writing()/resume_writing() fire at our bound, not asyncio's 64 KiB default.
        limit = self.gateway.settings.max_outbound_bytes
        transport.underlying_transport.set_write_buffer_limits(high=limit, low=limit // 4)
        self.gateway.handshakes.opened(transport)
        self.gateway.register(self)
        loop = asyncio.get_running_loop()
        deadline = spread(self.gateway.settings.hello_timeout)  # not all at once (gateway/handshake.py)
        self.timers.append(loop.call_later(deadline, self._hello_deadline))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        whole = (kind is _TEXT or kind is _BINARY) and frame.fin and self._reassembly is None
        if whole and not (frame.rsv1 or frame.rsv2 or frame.rsv3):  # has_reserved_bits, inline
            # The common message. Its frame, if it is only one, is acted on at once: no
            # queue, and nothing to slice or pace (no frames wait, or it would be queued).
            single = self.session.receive_one(frame.get_payload_as_memoryview(), kind is _TEXT)
            if single is None:
                self._process()
                return
            self._act(single)
            if self.session.pending_bytes or self.session.close_code is not None:
                self.gateway.flusher.mark_dirty(self)
            return
        if has_reserved_bits(frame):
            # RFC 6455 5.2: no extension is negotiated, so a reserved bit fails the connection.
            self.session.fail(
                ProtocolError("reserved bits set, no extension was negotiated"), CloseCode.PROTOCOL_ERROR
            )
            self._process()
            return
        if kind is _CLOSE:
            transport.send_close(close_reply(frame))
            transport.disconnect()
            return
        if kind not in _DATA:
            return  # ping/pong are answered by picows itself
        if kind is _CONTINUATION or not frame.fin or self._reassembly is not None:
            self._on_fragment(frame)
        else:
            self.session.receive_data(frame.get_payload_as_memoryview(), kind is _TEXT)
        self._process()

    def pause_writing(self) -> None:
        """The outgoing buffer passed ``max_outbound_bytes``: the client is not keeping up.

        Live deliveries to it are dropped and counted from now on, durable ones
        wait; if it has not caught up within ``write_timeout`` it is closed.
        """
        self.write_paused = True
        timeout = self.gateway.settings.write_timeout
        self._write_deadline = asyncio.get_running_loop().call_later(timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        for sid, count in self.dropped.items():
            sub = self.subs.get(sid)
            if sub is not None:
                self.session.send(f.Dropped(sid=sid, topic=sub.pattern, count=count))
        self.dropped.clear()
        self.gateway.flusher.mark_dirty(self)
        for sub in self.subs.values():
            if sub.consumer is not None:
                sub.consumer.schedule()

    def _write_timed_out(self) -> None:
        self._write_deadline = None
        if self.transport is None or self.transport.is_disconnected:
            return
        self.gateway.stats.write_timeouts += 1
        log.warning(
            "closing agent %r: it has not read for %s s",
            self.agent,
            self.gateway.settings.write_timeout,
            extra=self.context(),
        )
        self.transport.send_close(WSCloseCode.POLICY_VIOLATION, b"write timeout: the client is not reading")
        self.transport.disconnect(graceful=False)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        if self._held:  # gone before its refusal was sent
            self._held = False
            self.gateway.tarpit.release()
        if self._continue is not None:
            self._continue.cancel()
            self._continue = None
        self.gateway.unregister(self)
        self.session.connection_lost()
        if self.grants is not None:
            log.debug("agent %r disconnected", self.agent, extra=self.context())

    # -- frames ---------------------------------------------------------------

    def _on_fragment(self, frame: WSFrame) -> None:
        """Add a fragment to the message being reassembled (``websocket.Reassembly``)."""
        reassembly = self._reassembly or Reassembly(self.gateway.settings.max_frame_bytes)
        self._reassembly = None
        try:
            data = reassembly.feed(frame)
        except FrameTooLarge as exc:
            self.session.fail(exc, CloseCode.MESSAGE_TOO_BIG)
        except ProtocolError as exc:
            self.session.fail(exc, CloseCode.PROTOCOL_ERROR)
        else:
            if data is None:
                self._reassembly = reassembly
            else:
                self.session.receive_data(data, reassembly.text)

    def _process(self) -> None:
        """Act on the frames received, for at most ``SLICE_S`` of one event-loop turn.

        A batch of up to 1,024 frames in one message would otherwise hold the loop
        (and every other connection) for as long as it takes: the rest waits for a
        later turn, and reading from this client pauses until it is done.
        """
        if self._continue is not None:  # called for a new message before the handle ran
            self._continue.cancel()
            self._continue = None
        until = time.perf_counter() + SLICE_S
        fed_from = len(self.gateway.flusher.to_flush)
        more = False  # frames wait for a later turn (a refusal that closes the session leaves none)
        for n, frame in enumerate(self.session.events_received(), 1):
            if self._act(frame):
                break
            if not n % SLICE_CHECK and time.perf_counter() > until and self.session.has_incoming:
                more = True
                break
        if self.session.pending_bytes or self.session.close_code is not None:
            self.gateway.flusher.mark_dirty(self)
        if more:
            self.gateway.flusher.batch_continues(self, fed_from)
        elif self.gateway.flusher.sliced:  # the common case skips the call
            self.gateway.flusher.batch_done(self)
        if more or self._reads_paused:  # the common case skips the call
            self._pace(more)

    def _act(self, frame: f.ClientFrame) -> bool:
        """Act on one frame taken out of the session, answering its error if it raises.

        Returns True once the session is closing for too many refused frames: the
        frames after this one are not acted on.
        """
        try:
            # The two common frames without dispatch's call and isinstance chain.
            if type(frame) is _PUB:
                on_pub(self, frame)
            elif type(frame) is _ACK:
                on_ack(self, frame)
            else:
                dispatch(self, frame)
        except TidingsError as exc:
            rid = getattr(frame, "rid", None)
            self.gateway.stats.reject(exc.code)
            if isinstance(frame, f.Hello):
                # DEBUG: refusals are counted by code in /metrics; a line each would let
                # a flood of bad handshakes flood the logs too.
                log.debug("hello refused: %s", exc.message, extra=self.context(code=exc.code))
                self._refuse_hello(exc, rid)
            elif (
                isinstance(exc, CLIENT_FAULTS)
                # an ack racing its unsub is no fault: it is answered, never counted
                and not isinstance(frame, f.Ack | f.Nack | f.Progress)
                and not self._may_refuse()
            ):
                self.gateway.stats.refusal_closes += 1
                limit = self.gateway.settings.max_refusals
                self.session.send(error_frame(exc, rid))
                self.session.fail(
                    LimitExceeded(f"more than {limit} frames refused in a burst: closing"),
                    CloseCode.POLICY_VIOLATION,
                )
                self._hold_if_past_budget(REFUSAL_CLOSE_COST)
                return True
            else:
                self.session.send(error_frame(exc, rid))
        except Exception:
            rid = getattr(frame, "rid", None)
            # A bug of ours must not cost the client its connection silently:
            # log it with context, answer this request, keep serving.
            log.exception(
                "handling %s from agent %r failed", f.op_of(frame), self.agent, extra=self.context()
            )
            self.session.send(error_frame(TidingsError("internal error; the server logged it"), rid))
        return False

    def _refuse_hello(self, exc: TidingsError, rid: int | None) -> None:
        """Refuse the hello: at once, or past its address's budget after the tarpit's delay."""
        self.session.reject(exc, rid)
        self._hold_if_past_budget()

    def _hold_if_past_budget(self, cost: float = 1.0) -> None:
        """The session is closing for the client's fault (a refused hello, too many refused
        frames): send its error and close at once, or, past its address's budget, after the
        tarpit's delay. Meanwhile nothing the client sends is acted on; it is still read, so
        that a client that goes away is let go at once. ``cost``: refused hellos it is worth."""
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        peer = transport.underlying_transport.get_extra_info("peername")
        delay = self.gateway.tarpit.delay(str(peer[0]) if peer else "", cost)
        if delay:
            self._held = True
            self.gateway.stats.tarpitted += 1
            self.timers.append(asyncio.get_running_loop().call_later(delay, self._release))

    def _release(self) -> None:
        """The tarpit's delay is over: send the refusal and the close (``_hold_if_past_budget``)."""
        if self._held:
            self._held = False
            self.gateway.tarpit.release()
            self.gateway.flusher.mark_dirty(self)

    def _may_refuse(self) -> bool:
        """Count one refusal of a frame for the client's own fault; False once the burst is spent.

        A token bucket of ``max_refusals``, refilled at a tenth of it a second: a client
        that keeps sending what it has been told is refused costs the server, so it is
        closed instead of answered for ever.
        """
        limit = self.gateway.settings.max_refusals
        now = time.monotonic()
        self._refused = max(0.0, self._refused - (now - self._refused_at) * limit / 10) + 1
        self._refused_at = now
        return self._refused <= limit

    def _pace(self, more: bool) -> None:
        """Pause reading while frames wait for a later turn; resume once they are done."""
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        if more:
            if self._continue is None:
                self._continue = asyncio.get_running_loop().call_soon(self._process)
            if not self._reads_paused:
                self._reads_paused = True
                transport.underlying_transport.pause_reading()
        elif self._reads_paused:
            self._reads_paused = False
            transport.underlying_transport.resume_reading()

    def _hello_deadline(self) -> None:
        self.session.hello_deadline_passed()
        self.gateway.flusher.mark_dirty(self)

    def flush(self) -> None:
        """Send what the session has queued as one message; close if it asked to."""
        self.dirty = False
        transport = self.transport
        if transport is None or transport.is_disconnected or self._held:
            return
        kind = _BINARY if self.binary else _TEXT
        for data in self.session.data_to_send():
            transport.send(kind, data)
            self.gateway.stats.messages_out += 1
        if self.session.close_code is not None and self.session.state is State.CLOSING:
            self.session.state = State.CLOSED
            transport.send_close(WSCloseCode(self.session.close_code), self.session.close_reason.encode())
            transport.disconnect()

    def close(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        self.session.close(code, reason)
        self.gateway.flusher.mark_dirty(self)


# these module constants instead.
_TEXT, _BINARY, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
_CONTINUATION = WSMsgType.CONTINUATION
_DATA = frozenset({_TEXT, _BINARY, _CONTINUATION})
_PUB, _ACK = f.Pub, f.Ack

#: seconds of one event-loop turn a connection's frames may take (``Connection._process``)
SLICE_S = 0.0005
#: frames acted on between two looks at the clock (``SLICE_S``)
SLICE_CHECK = 8
#: refusals that are the client's fault (``max_refusals`` counts them)
CLIENT_FAULTS = (ProtocolError, InvalidTopic, Forbidden, LimitExceeded, NotSupported)
#: refused hellos a close for ``max_refusals`` is worth in its address's tarpit budget:
#: the thousand refusals before it cost the server about ten refused handshakes' work
REFUSAL_CLOSE_COST = 10.0

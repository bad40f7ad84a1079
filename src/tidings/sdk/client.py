"""The agent's connection: connect, subscribe, publish.

    async with tidings.sdk.connect("ws://127.0.0.1:7700/", token=TOKEN, name="planner") as agent:
        async for msg in agent.subscribe("sig/team-7/>"):
            print(msg.sender, msg.body)
            await agent.publish("sig/team-7/replies", {"ok": True}, parent=msg.id)

The driver is picows on the client side; the protocol is the same
``protocol.session`` state machine the gateway drives. Frames produced in one
event-loop turn leave in one WebSocket message, as on the server.

This module is the SDK's core. Reconnect with backoff, durable consumers with
acks, the publish buffer and receive-side dedup are issue #4.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tidings.errors import BY_CODE, ConnectionLost, ProtocolError, RetryLater, TidingsError
from tidings.protocol import frames as f
from tidings.protocol.codec import JSON
from tidings.protocol.session import ClientSession, State

Message = f.Msg
DEFAULT_QUEUE = 10_000


def error_from_frame(frame: f.Error) -> TidingsError:
    """Rebuild the exception an ``error`` frame reports."""
    cls = BY_CODE.get(frame.code, TidingsError)
    if cls is RetryLater:
        return RetryLater(frame.message, frame.retry_after_ms or 0)
    return cls(frame.message)


class Subscription:
    """A subscription: await it to be sure the server has it, iterate it for messages.

    Messages wait in a bounded local queue (``queue_size``); when it is full the
    oldest is dropped and counted in ``dropped`` (live subscriptions are
    at-most-once).
    """

    def __init__(
        self,
        agent: Agent,
        pattern: str,
        queue_size: int,
        start: f.Start | None = None,
        consumer: str | None = None,
    ) -> None:
        self.agent = agent
        self.pattern = pattern
        self.start = start
        self.consumer = consumer
        self.sid: int | None = None
        #: for a replay of one topic: its last offset when the subscription began
        self.head: int | None = None
        self.dropped = 0
        self._queue: deque[f.Msg] = deque(maxlen=queue_size)
        self._ready = asyncio.Event()
        self._subscribed: asyncio.Task[None] | None = None
        self._closed = False

    def __await__(self) -> Any:
        return self._ensure_subscribed().__await__()

    async def _ensure_subscribed(self) -> Subscription:
        if self._subscribed is None:
            self._subscribed = asyncio.ensure_future(self.agent._subscribe(self))
        await asyncio.shield(self._subscribed)
        return self

    def _push(self, msg: f.Msg) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(msg)
        self._ready.set()

    def _close(self) -> None:
        self._closed = True
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[f.Msg]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[f.Msg]:
        await self._ensure_subscribed()
        while True:
            while self._queue:
                yield self._queue.popleft()
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()

    async def unsubscribe(self) -> None:
        """Stop receiving; the iterator ends after the messages already queued."""
        if self.sid is not None and not self._closed:
            await self.agent._request(f.Unsub(sid=self.sid))
            self.agent._subs.pop(self.sid, None)
        self._close()


class _Listener(WSListener):
    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self.agent._on_data(frame.get_payload_as_memoryview())
        elif frame.msg_type is WSMsgType.CLOSE:
            self.agent._on_close(frame.get_close_code().value, frame.get_close_reason())
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.agent._on_close(WSCloseCode.ABNORMAL_CLOSURE.value, "connection lost")


class Agent:
    """One connected agent. Create it with ``connect()``."""

    def __init__(
        self,
        url: str,
        token: str | None,
        name: str = "",
        subprotocol: str = JSON,
        queue_size: int = DEFAULT_QUEUE,
    ) -> None:
        self.url = url
        self.name = name
        self.subprotocol = subprotocol
        self.queue_size = queue_size
        self.lamport = 0
        self.agent_id = ""
        self.close_code: int | None = None
        self.close_reason = ""
        self._session = ClientSession(subprotocol, f.Hello(token=token, client=name, rid=0))
        self._transport: WSTransport | None = None
        self._rids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._subs: dict[int, Subscription] = {}
        self._subscribing: dict[int, Subscription] = {}
        self._welcome: asyncio.Future[f.Welcome] | None = None
        self._flush_scheduled = False
        self._closed = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------

    async def open(self, connect_timeout: float = 10.0) -> None:
        """Connect and wait for ``welcome``. Raises the server's error if refused."""
        loop = asyncio.get_running_loop()
        self._welcome = loop.create_future()
        try:
            transport, _ = await ws_connect(
                lambda: _Listener(self),
                self.url,
                extra_headers={"Sec-WebSocket-Protocol": self.subprotocol},
                websocket_handshake_timeout=connect_timeout,
                enable_auto_ping=False,
            )
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {self.url}: {exc}") from exc
        self._transport = transport
        self._flush()
        welcome = await asyncio.wait_for(self._welcome, connect_timeout)
        self.agent_id = welcome.agent

    async def close(self) -> None:
        """Close the connection politely and wait until it is gone."""
        if self._transport is not None and not self._transport.is_disconnected:
            self._flush()
            self._transport.send_close(WSCloseCode.OK)
            self._transport.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), 5)

    async def __aenter__(self) -> Agent:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        return self._session.state is State.OPEN

    # -- requests ---------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        *,
        start: f.Start | int | None = None,
        consumer: str | None = None,
        queue_size: int | None = None,
    ) -> Subscription:
        """Subscribe to a topic or pattern.

        Without ``start`` the subscription is live (from now, at-most-once).
        With ``start`` (``"earliest"``, ``"latest"``, an offset to read after,
        or a ``Position``) it first replays the durable log from there, then
        continues live with no gap. With ``consumer`` it is durable: the server
        keeps a cursor for (this agent, consumer, pattern) and redelivers what
        is not acknowledged with ``agent.ack(msg)``; ``start`` then applies only
        the first time. Iterate the result (``async for msg in
        agent.subscribe(...)``) or await it first to know the server has it.
        """
        position = f.Position(offset=start) if isinstance(start, int) else start
        return Subscription(self, pattern, queue_size or self.queue_size, position, consumer)

    async def _subscribe(self, sub: Subscription) -> None:
        # The subscription is registered by rid before the request leaves, because
        # the first deliveries can arrive in the same batch as ``subbed``.
        await self._request(f.Sub(topic=sub.pattern, start=sub.start, consumer=sub.consumer), registering=sub)

    async def publish(
        self,
        topic: str,
        body: Any = None,
        *,
        id: str | None = None,
        parent: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> f.Puback:
        """Publish and wait for the server's ``puback``. Raises the server's error."""
        self.lamport += 1
        frame = f.Pub(
            topic=topic,
            body=body,
            id=id or uuid.uuid4().hex,
            parent=parent,
            lamport=self.lamport,
            headers=headers or {},
        )
        puback: f.Puback = await self._request(frame)
        return puback

    def ack(self, msg: f.Msg) -> None:
        """Acknowledge a message of a durable subscription (fire and forget)."""
        if msg.sid is not None and msg.offset is not None and self.is_open:
            self._send(f.Ack(sid=msg.sid, topic=msg.topic, offset=msg.offset))

    def nack(self, msg: f.Msg, delay_ms: int = 0) -> None:
        """Ask for a message of a durable subscription again after ``delay_ms`` (with backoff)."""
        if msg.sid is not None and msg.offset is not None and self.is_open:
            self._send(f.Nack(sid=msg.sid, topic=msg.topic, offset=msg.offset, delay_ms=delay_ms))

    def publish_nowait(self, topic: str, body: Any = None, *, parent: str | None = None) -> str:
        """Fire and forget: queue a publish without asking for a ``puback``; return its id."""
        self.lamport += 1
        msg_id = uuid.uuid4().hex
        self._send(f.Pub(topic=topic, body=body, id=msg_id, parent=parent, lamport=self.lamport))
        return msg_id

    async def _request(self, frame: Any, registering: Subscription | None = None) -> Any:
        if not self.is_open:
            raise ConnectionLost(self.close_reason or "not connected")
        rid = next(self._rids)
        frame.rid = rid
        if registering is not None:
            self._subscribing[rid] = registering
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._send(frame)
        try:
            return await fut
        finally:
            self._pending.pop(rid, None)
            self._subscribing.pop(rid, None)

    def _send(self, frame: Any) -> None:
        self._session.send(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self._transport
        if transport is None or transport.is_disconnected:
            return  # what is queued stays queued until there is a transport
        kind = WSMsgType.BINARY if self._session.codec.binary else WSMsgType.TEXT
        for data in self._session.data_to_send():
            transport.send(kind, data)

    # -- incoming ---------------------------------------------------------

    def _on_data(self, data: memoryview) -> None:
        self._session.receive_data(data)
        for frame in self._session.events_received():
            self._dispatch(frame)
        if self._session.close_code is not None and self._welcome and not self._welcome.done():
            # The server sent something this client cannot decode before welcome.
            self._welcome.set_exception(ProtocolError(self._session.close_reason))

    def _dispatch(self, frame: f.ServerFrame) -> None:
        if isinstance(frame, f.Msg):
            if frame.lamport > self.lamport:
                self.lamport = frame.lamport
            sub = self._subs.get(frame.sid) if frame.sid is not None else None
            if sub is not None:
                sub._push(frame)
        elif isinstance(frame, f.Welcome):
            if self._welcome is not None and not self._welcome.done():
                self._welcome.set_result(frame)
        elif isinstance(frame, f.Error):
            self._on_error(frame)
        elif isinstance(frame, f.Dropped):
            sub = self._subs.get(frame.sid)
            if sub is not None:
                sub.dropped += frame.count
        else:
            rid = getattr(frame, "rid", None)
            if isinstance(frame, f.Subbed) and rid in self._subscribing:
                sub = self._subscribing.pop(rid)
                sub.sid, sub.head = frame.sid, frame.head
                self._subs[frame.sid] = sub
            fut = self._pending.get(rid) if rid is not None else None
            if fut is not None and not fut.done():
                fut.set_result(frame)

    def _on_error(self, frame: f.Error) -> None:
        exc = error_from_frame(frame)
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_exception(exc)
            return
        fut = self._pending.get(frame.rid) if frame.rid is not None else None
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        else:
            self.close_reason = frame.message

    def _on_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = self.close_reason or reason
        self._session.connection_lost()
        lost = ConnectionLost(f"connection closed ({code}): {self.close_reason}")
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(lost)
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_exception(lost)
        for sub in self._subs.values():
            sub._close()
        self._closed.set()


def connect(
    url: str,
    token: str | None = None,
    *,
    name: str = "",
    subprotocol: str = JSON,
    queue_size: int = DEFAULT_QUEUE,
) -> Agent:
    """Return an ``Agent``; use it as ``async with connect(...) as agent:``."""
    return Agent(url, token, name=name, subprotocol=subprotocol, queue_size=queue_size)

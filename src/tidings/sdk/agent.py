"""The agent: one logical connection that survives the physical ones.

    async with tidings.connect("ws://127.0.0.1:7700/", token=TOKEN, name="planner") as agent:
        @agent.on("conv/team-7/>", consumer="planner")
        async def handle(msg: tidings.Message) -> None:
            await agent.publish("conv/team-7/plan", {"steps": 3})   # parent = msg.id, automatically
        await agent.run_forever()

What the agent does so its author does not have to:

- reconnects with exponential backoff and full jitter when the connection drops,
  re-sends every ``sub`` (durable consumers resume from their server-side
  cursor; replay readers after the last offset they saw; live subscriptions
  record the missed window as a gap), and re-sends every publish not yet
  acknowledged, with its original id, so the server stores it once;
- keeps publishes in a bounded local buffer while disconnected;
- acks what a handler finished, nacks (with backoff) what it raised on, and
  skips redeliveries of what was already handled;
- stamps a Lamport clock on every publish and, inside a handler, ``parent``
  and ``traceparent`` from the message being handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum
from types import TracebackType
from typing import Any, Literal

from picows import WSCloseCode, ws_connect

from tidings.errors import ConnectionLost, ProtocolError, TidingsError
from tidings.protocol import frames as f
from tidings.protocol.codec import JSON
from tidings.protocol.session import ClientSession
from tidings.sdk.backoff import Backoff
from tidings.sdk.commands import CommandHandler, Commands
from tidings.sdk.context import causal_defaults
from tidings.sdk.handlers import HandlerSpec, Work, run_handler
from tidings.sdk.link import Link, error_from_frame, new_id
from tidings.sdk.outbox import Outbox, Outgoing
from tidings.sdk.requests import Requester
from tidings.sdk.streams import Stream
from tidings.sdk.subscription import GapInfo, Message, Subscription
from tidings.tracing import TRACEPARENT, Tracer

log = logging.getLogger("tidings.sdk")


class ConnectionState(Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class Agent:
    """One agent's connection to tidings. Create it with ``tidings.connect()``."""

    def __init__(
        self,
        url: str | Sequence[str],
        token: str | None,
        name: str = "",
        *,
        subprotocol: str = JSON,
        backoff: Backoff | None = None,
        buffer_messages: int = 10_000,
        buffer_bytes: int = 16 * 1024 * 1024,
        when_full: Literal["wait", "raise"] = "wait",
        connect_timeout: float = 10.0,
        capabilities: Sequence[str] = (),
        status: str = "idle",
        commands: bool = False,
    ) -> None:
        #: gateways to try in turn (any gateway serves any topic with the NATS engine)
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("connect() needs at least one gateway URL")
        self.url = self.urls[0]
        self.token = token
        self.name = name
        self.subprotocol = subprotocol
        self.backoff = backoff or Backoff()
        self.connect_timeout = connect_timeout
        self.outbox = Outbox(buffer_messages, buffer_bytes, when_full)
        self.lamport = 0
        self.agent_id = ""
        self.state = ConnectionState.CONNECTING
        self.close_code: int | None = None
        self.close_reason = ""
        self.reconnects = 0
        #: the server's wall clock minus ours (ms), from the last ``welcome``
        self.clock_offset_ms = 0
        self._link: Link | None = None
        self._rids = itertools.count(1)
        self._requests: dict[int, asyncio.Future[Any]] = {}
        self._pub_rids: dict[int, str] = {}
        self._sub_rids: dict[int, Subscription] = {}
        self._subs: dict[Subscription, None] = {}
        self._by_sid: dict[int, Subscription] = {}
        self._handlers: list[HandlerSpec] = []
        self._requester = Requester(self)
        self._commands = Commands(self)
        #: OpenTelemetry spans, when the application has configured a tracer provider
        self.tracer = Tracer("tidings.sdk")
        #: what the handlers are working on (cancel and pause commands act on it)
        self.work = Work()
        self.capabilities = list(capabilities)
        self.status = status
        if commands:
            self._commands.accept()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state_callbacks: list[Callable[[ConnectionState], Any]] = []
        self._lost = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        """Connect and wait for ``welcome``; from then on, reconnect by itself.

        Raises the server's error if it refuses (e.g. ``Unauthorized``) and
        ``ConnectionLost`` if the server cannot be reached.
        """
        for attempt in range(len(self.urls)):
            try:
                await self._connect()
                break
            except ConnectionLost:  # _connect moved on to the next URL
                if attempt + 1 == len(self.urls):
                    raise
        self._supervisor = asyncio.create_task(self._supervise(), name=f"tidings-agent-{self.name}")
        for spec in self._handlers:
            self._start_handler(spec)
        self._commands.start()

    async def close(self) -> None:
        """Stop reconnecting, close the connection, end every subscription. Idempotent."""
        if self._closing:
            return
        self._closing = True
        for task in [*self._tasks, *([self._supervisor] if self._supervisor else [])]:
            task.cancel()
        for task in [*self._tasks, *([self._supervisor] if self._supervisor else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        link = self._link
        if link is not None and link.transport is not None and not link.transport.is_disconnected:
            link.flush()
            link.transport.send_close(WSCloseCode.OK)
            link.transport.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), 5)
        self._set_state(ConnectionState.CLOSED)
        self._closed.set()
        self.outbox.fail_all(ConnectionLost("the agent was closed"))
        for sub in self._subs:
            sub._close()

    async def __aenter__(self) -> Agent:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        return self.state is ConnectionState.OPEN

    def on_state(self, callback: Callable[[ConnectionState], Any]) -> None:
        """Call ``callback(state)`` on every connection state change."""
        self._state_callbacks.append(callback)

    def _set_state(self, state: ConnectionState) -> None:
        if state is self.state:
            return
        self.state = state
        for callback in self._state_callbacks:
            try:
                callback(state)
            except Exception:
                log.exception("state callback failed")

    async def run_forever(self) -> None:
        """Wait until the agent is closed (handlers keep running meanwhile)."""
        await self._closed.wait()

    # -- connecting -----------------------------------------------------------

    async def _connect(self) -> None:
        hello = f.Hello(
            token=self.token, client=self.name, rid=0, capabilities=self.capabilities, status=self.status
        )
        session = ClientSession(self.subprotocol, hello)
        link = Link(self, session)
        welcome: asyncio.Future[f.Welcome] = asyncio.get_running_loop().create_future()
        self._welcome = welcome
        link_url = self.url
        try:
            await ws_connect(
                lambda: link,
                link_url,
                extra_headers={"Sec-WebSocket-Protocol": self.subprotocol},
                websocket_handshake_timeout=self.connect_timeout,
            )
        except OSError as exc:
            self._next_url()
            raise ConnectionLost(f"cannot connect to {link_url}: {exc}") from exc
        except Exception as exc:  # picows handshake errors
            self._next_url()
            raise ConnectionLost(f"WebSocket handshake with {link_url} failed: {exc}") from exc
        self._link = link
        self._lost.clear()
        link.flush()
        try:
            frame = await asyncio.wait_for(welcome, self.connect_timeout)
        except TimeoutError:
            if link.transport is not None:
                link.transport.disconnect()
            self._next_url()
            raise ConnectionLost("no welcome from the server in time") from None
        self.agent_id = frame.agent
        if frame.time:
            self.clock_offset_ms = frame.time - time.time_ns() // 1_000_000
        self._set_state(ConnectionState.OPEN)
        for sub in self._subs:
            self._send_sub(sub)
        for out in self.outbox.pending():
            self._send_pub(out)

    def _next_url(self) -> None:
        """The next connection attempt goes to the next gateway in ``urls``."""
        self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]

    async def _supervise(self) -> None:
        while not self._closing:
            await self._lost.wait()
            if self._closing:
                return
            self._set_state(ConnectionState.RECONNECTING)
            for delay in self.backoff.delays():
                await asyncio.sleep(delay)
                try:
                    await self._connect()
                except TidingsError as exc:
                    if exc.retriable:
                        continue
                    log.error("reconnect refused, giving up: %s", exc)
                    await self._give_up(exc)
                    return
                self.reconnects += 1
                break
            else:
                await self._give_up(
                    ConnectionLost(f"no connection after {self.backoff.max_attempts} attempts")
                )
                return

    async def _give_up(self, exc: TidingsError) -> None:
        self.close_reason = exc.message
        self.outbox.fail_all(exc)
        for sub in self._subs:
            sub._refused(exc)
        self._closing = True
        self._set_state(ConnectionState.CLOSED)
        self._closed.set()

    def _on_lost(self, link: Link, code: int, reason: str) -> None:
        if link is not self._link or self._lost.is_set():
            return
        self.close_code = code
        self.close_reason = self.close_reason or reason
        link.session.connection_lost()
        lost = ConnectionLost(f"connection closed ({code}): {reason}")
        for fut in self._requests.values():
            if not fut.done():
                fut.set_exception(lost)
        self._requests.clear()
        self._pub_rids.clear()
        self._sub_rids.clear()
        self._by_sid.clear()
        for sub in self._subs:
            sub._disconnected()
        if not self._welcome.done():
            self._welcome.set_exception(lost)
        self._lost.set()
        if not self._closing:
            self._set_state(ConnectionState.RECONNECTING)

    # -- frames in ------------------------------------------------------------

    def _on_data(self, link: Link, data: memoryview) -> None:
        link.session.receive_data(data)
        for frame in link.session.events_received():
            self._dispatch(frame)
        if link.session.close_code is not None and not self._welcome.done():
            self._welcome.set_exception(ProtocolError(link.session.close_reason))

    def _dispatch(self, frame: f.ServerFrame) -> None:
        if isinstance(frame, f.Msg):
            if frame.lamport > self.lamport:
                self.lamport = frame.lamport
            sub = self._by_sid.get(frame.sid) if frame.sid is not None else None
            if sub is not None:
                sub._push(frame)
        elif isinstance(frame, f.Puback):
            msg_id = self._pub_rids.pop(frame.rid, None) if frame.rid is not None else None
            if msg_id is not None:
                self.outbox.settle(msg_id, result=frame)
        elif isinstance(frame, f.Subbed):
            sub = self._sub_rids.pop(frame.rid, None) if frame.rid is not None else None
            if sub is not None:
                self._by_sid[frame.sid] = sub
                sub._subbed(frame)
        elif isinstance(frame, f.Error):
            self._on_error(frame)
        elif isinstance(frame, f.StreamChunk):
            sub = self._by_sid.get(frame.sid) if frame.sid is not None else None
            if sub is not None:
                sub._chunk(frame)
        elif isinstance(frame, f.Gap):
            sub = self._by_sid.get(frame.sid)
            if sub is not None:
                sub._gap(GapInfo(frame.topic, frame.reason or "gap", frame.first, frame.last))
        elif isinstance(frame, f.Dropped):
            sub = self._by_sid.get(frame.sid)
            if sub is not None:
                sub.dropped += frame.count
        elif isinstance(frame, f.Welcome):
            if not self._welcome.done():
                self._welcome.set_result(frame)
        elif isinstance(frame, f.Unsubbed | f.PresenceEvent):
            fut = self._requests.pop(frame.rid, None) if frame.rid is not None else None
            if fut is not None and not fut.done():
                fut.set_result(frame)

    def _on_error(self, frame: f.Error) -> None:
        exc = error_from_frame(frame)
        if not self._welcome.done():
            self._welcome.set_exception(exc)
            return
        rid = frame.rid
        if rid is None:
            log.warning("server error: %s %s", frame.code, frame.message)
            return
        if rid in self._pub_rids:
            msg_id = self._pub_rids.pop(rid)
            out = self.outbox.items.get(msg_id)
            if out is not None and exc.retriable:
                delay = frame.retry_after_ms / 1000 if frame.retry_after_ms else self.backoff.delay(1)
                asyncio.get_running_loop().call_later(delay, self._resend, msg_id)
            else:
                self.outbox.settle(msg_id, error=exc)
        elif rid in self._sub_rids:
            sub = self._sub_rids.pop(rid)
            if exc.retriable and sub in self._subs and not self._closing:
                # e.g. retry_later while the engine elects a leader: ask again, don't give up
                delay = frame.retry_after_ms / 1000 if frame.retry_after_ms else self.backoff.delay(1)
                asyncio.get_running_loop().call_later(delay, self._resubscribe, sub)
            else:
                sub._refused(exc)
        elif rid in self._requests:
            fut = self._requests.pop(rid)
            if not fut.done():
                fut.set_exception(exc)

    # -- frames out -----------------------------------------------------------

    def _send(self, frame: Any) -> None:
        if self._link is not None and self.is_open:
            self._link.send(frame)

    def _send_sub(self, sub: Subscription) -> None:
        frame = sub.sub_frame()
        frame.rid = rid = next(self._rids)
        self._sub_rids[rid] = sub
        self._send(frame)

    def _resubscribe(self, sub: Subscription) -> None:
        if self.is_open and sub in self._subs and sub.sid is None and sub not in self._sub_rids.values():
            self._send_sub(sub)

    def _send_pub(self, out: Outgoing) -> None:
        out.frame.rid = rid = next(self._rids)
        assert out.frame.id is not None
        self._pub_rids[rid] = out.frame.id
        self._send(out.frame)

    def _resend(self, msg_id: str) -> None:
        out = self.outbox.items.get(msg_id)
        if out is not None and self.is_open:
            self._send_pub(out)

    def _settle(
        self,
        sub: Subscription,
        msg: f.Msg,
        kind: type,
        delay_ms: int = 0,
        timing: tuple[int, int] | None = None,
    ) -> None:
        if sub.sid is None or msg.offset is None:
            return  # disconnected: the server will redeliver, and dedup will skip it
        if kind is f.Nack:
            self._send(f.Nack(sid=sub.sid, topic=msg.topic, offset=msg.offset, delay_ms=delay_ms))
        elif kind is f.Ack and timing is not None:
            queued_us, handled_us = timing
            self._send(
                f.Ack(
                    sid=sub.sid,
                    topic=msg.topic,
                    offset=msg.offset,
                    queued_us=queued_us,
                    handled_us=handled_us,
                )
            )
        else:
            self._send(kind(sid=sub.sid, topic=msg.topic, offset=msg.offset))

    # -- publishing -----------------------------------------------------------

    async def publish(
        self,
        topic: str,
        body: Any = None,
        *,
        id: str | None = None,
        parent: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> f.Puback:
        """Publish and return the server's ``puback`` (``offset``, ``duplicate``).

        Waits in the local buffer while disconnected and is re-sent with the
        same id after a reconnect, so it is stored once. Inside a handler,
        ``parent`` and ``traceparent`` default to the handled message's.
        Raises the server's error (``Forbidden``, ``InvalidTopic``, ...),
        ``BufferFull`` when the buffer is full and ``when_full="raise"``, and
        ``ConnectionLost`` if the agent gives up or is closed first.
        """
        if self._closing:
            raise ConnectionLost("the agent is closed")
        traced = headers is None or TRACEPARENT not in headers
        parent, hdrs = causal_defaults(parent, headers or {})
        with self.tracer.current(
            f"publish {topic}", None, "PRODUCER", **{"messaging.destination": topic}
        ) as span:
            if span is not None and traced:  # the span (a child of the handler's) names this message
                hdrs[TRACEPARENT] = self.tracer.traceparent(span)
            self.lamport += 1
            frame = f.Pub(
                topic=topic, body=body, id=id or new_id(), parent=parent, lamport=self.lamport, headers=hdrs
            )
            out = await self.outbox.put(frame, len(topic) + len(repr(body)) + 64)
            if self.is_open:
                self._send_pub(out)
            return await out.future

    def publish_nowait(self, topic: str, body: Any = None, *, parent: str | None = None) -> str:
        """Fire and forget (no ``puback``, not buffered): for signals. Raises if not connected."""
        if not self.is_open:
            raise ConnectionLost("not connected")
        parent, headers = causal_defaults(parent, {})
        self.lamport += 1
        msg_id = new_id()
        self._send(
            f.Pub(topic=topic, body=body, id=msg_id, parent=parent, lamport=self.lamport, headers=headers)
        )
        return msg_id

    # -- request/reply and commands (their logic lives in requests.py, commands.py) --

    async def request(
        self,
        topic: str,
        body: Any = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - the deadline travels with the request, in a header
    ) -> Message:
        """Publish a request and return the first reply, or raise ``TimeoutError``.

        The deadline travels in the ``tidings-deadline`` header; if the wait
        ends without a reply (timeout or cancellation) a cancel notice is
        published on ``topic``. The token must allow subscribing to
        ``sig/inbox/<agent-id>``, and responders publishing there.
        """
        return await self._requester.request(topic, body, timeout=timeout)

    async def reply(self, request: Message, body: Any = None) -> f.Puback | None:
        """Answer ``request``; returns None (and sends nothing) if it asked for no reply."""
        return await self._requester.reply(request, body)

    def on_command(self, name: str) -> Callable[[CommandHandler], CommandHandler]:
        """Decorate ``async def handler(msg)`` to run for control command ``name``.

        Commands arrive on ``ctl/<agent-id>/commands`` (durable, acked). Each
        body is ``{"command": name, "key": str, "epoch": int, ...}``; a command
        whose epoch is older than the last one acted on for the same key is
        ignored (fencing), so a late ``resume`` cannot undo a later ``cancel``.
        """
        return self._commands.on_command(name)

    def accept_commands(self) -> None:
        """Take commands from the control plane (``ctl/<agent-id>/commands``) even with no
        ``on_command`` handler: the built-in ``cancel``, ``pause`` and ``resume`` then work."""
        self._commands.accept()

    async def set_status(self, status: str, capabilities: Sequence[str] | None = None) -> None:
        """Tell the server (and ``sig/presence/`` subscribers) this agent's status, e.g. "busy".

        Kept across reconnects. Raises the server's error (e.g. ``InvalidFrame``
        for a status over 64 characters).
        """
        self.status = status
        if capabilities is not None:
            self.capabilities = list(capabilities)
        if self.is_open:
            caps = None if capabilities is None else list(capabilities)
            await self._request(f.PresenceUpdate(status=status, capabilities=caps))

    # -- subscribing ----------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        *,
        consumer: str | None = None,
        start: f.Start | int | None = None,
        queue_size: int = 10_000,
        max_inflight: int | None = None,
        on_gap: Callable[[GapInfo], Any] | None = None,
        streams: bool = False,
        causal: bool = False,
        causal_wait: float = 1.0,
        echo: bool = True,
    ) -> Subscription:
        """Subscribe to a topic or pattern.

        - no ``consumer``, no ``start``: live, from now, at-most-once;
        - ``start`` (``"earliest"``, ``"latest"``, an offset, a ``Position``):
          replay the log from there, then continue live with no gap;
        - ``consumer``: durable; the server keeps a cursor for (agent,
          consumer, pattern) and redelivers what is not ``msg.ack()``-ed.

        With ``causal=True`` a message whose parent is on a topic this
        subscription gets, but has not arrived yet, is held back until the
        parent comes (at most ``causal_wait`` seconds; then it is delivered
        with ``msg.causally_late`` set).
        With ``streams=True`` it also yields a stream-open message when a
        stream begins on a matching topic (see ``msg.chunks()``).
        With ``echo=False`` the server never delivers this agent's own
        messages on it (for a consumer, it counts them as acked).
        Iterate the result, or await it to know the server has it. A refusal
        that is retriable (``retry_later``) is not raised: the ``sub`` is sent
        again after ``retry_after_ms``.
        """
        position = f.Position(offset=start) if isinstance(start, int) else start
        return Subscription(
            self,
            pattern,
            consumer=consumer,
            start=position,
            queue_size=queue_size,
            max_inflight=max_inflight,
            on_gap=on_gap,
            streams=streams,
            causal=causal,
            causal_wait=causal_wait,
            echo=echo,
        )

    def stream(self, topic: str, *, parent: str | None = None) -> Stream:
        """``async with agent.stream(topic) as s: await s.write(chunk)``: live chunks, one final message.

        Inside a handler ``parent`` defaults to the handled message, like ``publish``.
        """
        parent, _ = causal_defaults(parent, {})
        return Stream(self, topic, new_id(), parent)

    def _register(self, sub: Subscription) -> None:
        if sub in self._subs:
            return
        self._subs[sub] = None
        if self.is_open:
            self._send_sub(sub)

    async def _unregister(self, sub: Subscription) -> None:
        self._subs.pop(sub, None)
        if sub.sid is not None and self.is_open:
            self._by_sid.pop(sub.sid, None)
            with contextlib.suppress(TidingsError):
                await self._request(f.Unsub(sid=sub.sid))

    async def _request(self, frame: Any) -> Any:
        if not self.is_open:
            raise ConnectionLost(self.close_reason or "not connected")
        frame.rid = rid = next(self._rids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests[rid] = fut
        self._send(frame)
        return await fut

    def on(
        self,
        pattern: str,
        *,
        consumer: str | None = None,
        start: f.Start | int | None = None,
        concurrency: int = 1,
        nack_delay_ms: int = 200,
        echo: bool = True,
    ) -> Callable[[Callable[[Message], Awaitable[Any]]], Callable[[Message], Awaitable[Any]]]:
        """Decorate ``async def handler(msg)`` to run for every message on ``pattern``.

        Success acks, an exception nacks (redelivered after ``nack_delay_ms``,
        doubling per attempt); redeliveries of handled messages are skipped.
        At most ``concurrency`` messages are handled at once (1: in order).
        With ``echo=False`` the agent's own messages on ``pattern`` never reach it.
        """

        def register(fn: Callable[[Message], Awaitable[Any]]) -> Callable[[Message], Awaitable[Any]]:
            spec = HandlerSpec(fn, pattern, consumer, start, concurrency, nack_delay_ms, echo=echo)
            self._handlers.append(spec)
            if self._supervisor is not None and not self._closing:
                # Opened already (maybe reconnecting right now): its sub is sent
                # now or with the other subscriptions on the next connection.
                self._start_handler(spec)
            return fn

        return register

    def _start_handler(self, spec: HandlerSpec) -> None:
        sub = self.subscribe(
            spec.pattern,
            consumer=spec.consumer,
            start=spec.start,
            max_inflight=max(spec.concurrency, 1) * 4,
            echo=spec.echo,
        )
        task = asyncio.create_task(run_handler(spec, sub, self.work), name=f"tidings-handler-{spec.pattern}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def connect(url: str | Sequence[str], token: str | None = None, *, name: str = "", **options: Any) -> Agent:
    """Return an ``Agent``; use it as ``async with tidings.connect(...) as agent:``.

    ``url`` may be a list of gateways: a connection that fails moves on to the next.

    ``options`` are ``Agent``'s: ``subprotocol``, ``backoff``, ``buffer_messages``,
    ``buffer_bytes``, ``when_full`` ("wait" or "raise"), ``connect_timeout``.
    """
    return Agent(url, token, name, **options)

"""The gateway: the WebSocket server that holds the sockets and streams events.

``Gateway`` owns what its connections share: settings, the token authority,
the subscription router, the fanout, and the once-per-loop-turn flush
(``flushing.Flusher``). Start it with ``await gateway.start()``; stop it with
``await gateway.stop()``, which drains: it stops accepting, tells every client
``going away`` (1001), and waits up to ``drain_timeout`` for them to leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import msgspec
from picows import (
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

import tidings
from tidings.auth import Authority
from tidings.catalog import SYSTEM_SENDER, Catalog
from tidings.config import DEFAULT_NATS_SHARDS, Settings
from tidings.engine.base import Engine
from tidings.engine.embedded import EmbeddedEngine
from tidings.errors import InvalidFrame
from tidings.gateway.connection import Connection
from tidings.gateway.consumers import Consumers
from tidings.gateway.flushing import Flusher
from tidings.gateway.handshake import Handshakes, fallback_timeout
from tidings.gateway.limits import Limiter
from tidings.gateway.router import Router
from tidings.gateway.subscription import Subscription
from tidings.gateway.tarpit import Tarpit
from tidings.log.types import RetentionPolicy
from tidings.metrics import GatewayStats
from tidings.presence import PresenceEvent
from tidings.protocol import frames as f
from tidings.protocol.codec import JSON, SUBPROTOCOLS, negotiate
from tidings.protocol.session import CloseCode
from tidings.protocol.topics import namespace_of
from tidings.tracing import TRACEPARENT, Tracer

log = logging.getLogger("tidings.gateway")

HEALTH_PATHS = (b"/healthz", b"/health")
#: subscriptions of a closed connection dropped per event-loop turn (``Gateway._drop_later``)
DROP_SLICE = 128
#: encoded durable deliveries kept for reuse within one loop turn
MAX_ENCODED_DELIVERIES = 4096


class Gateway:
    def __init__(
        self,
        settings: Settings,
        authority: Authority,
        engine: Engine | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        """``on_fatal`` is called if durable storage fails (a failed fsync): the
        process must stop, since nothing more can be acknowledged. ``tidings
        serve`` exits with status 70; tests may do what they like.

        Without an ``engine`` the gateway opens the embedded one, with the
        catalog deciding retention (an engine passed in decides its own)."""
        self.settings = settings
        self.authority = authority
        self.catalog = catalog or Catalog(settings)
        self.engine: Engine = engine or engine_for(
            settings, on_fatal, self.catalog.retention, self.catalog.retained_otherwise
        )
        self.presence = self.engine.presence
        #: the gateway pings a connection idle this long, and waits as long for the pong
        self.heartbeat_s = settings.presence_timeout / 2
        self.stats = GatewayStats()
        self.limiter = Limiter(settings.publish_rate, settings.publish_bytes_rate)
        #: OpenTelemetry spans, when the process has configured a tracer provider
        self.tracer = Tracer("tidings.gateway")
        self.consumers = Consumers(self.engine, settings, self.catalog.policy, self.stats)
        self.consumers.tracer = self.tracer
        self.router: Router[Subscription] = Router()
        self.server_name = f"tidings/{tidings.__version__}"
        self.connections: set[Connection] = set()
        #: (topic, offset, attempt, binary) -> an encoded delivery, for this loop turn
        self._deliveries: dict[tuple[str, int, int, bool], bytes] = {}
        #: the once-per-loop-turn flush of every connection that has frames to send
        self.flusher = Flusher(settings.coalesce, on_flush=self._deliveries.clear)
        #: each accepted connection's drawn upgrade deadline (gateway/handshake.py)
        self.handshakes = Handshakes(settings.hello_timeout)
        self.tarpit = Tarpit(settings.refused_hellos, settings.refusal_delay)
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drained = asyncio.Event()
        #: subscriptions of closed connections still to drop (``_drop_later``)
        self._to_drop: deque[Subscription] = deque()
        self._drop_scheduled = False
        self._id_prefix = f"g{uuid.uuid4().hex[:12]}-"
        self._id_counter = itertools.count(1)
        self._origins = frozenset(o.lower().rstrip("/") for o in settings.allowed_origins)

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start the engine, then listen on ``settings.host``/``settings.port`` (0: any free port).

        Raises ``StorageError`` (e.g. ``CorruptLog``) if the durable log cannot be opened.
        """
        self._loop = asyncio.get_running_loop()
        self.flusher.start(self._loop)
        await self.engine.start()
        await self.catalog.open(self.engine)
        self.catalog.on_revoke(self._token_revoked)
        self.presence.listen(self._announce_presence)
        self.engine.on_commit(self._on_commit, self._listened)
        self.engine.on_ephemeral(self.fanout)
        self.consumers.start()
        self._server = await ws_create_server(
            self._route,
            self.settings.host,
            self.settings.port,
            websocket_handshake_timeout=fallback_timeout(self.settings.hello_timeout),
            enable_auto_ping=True,
            auto_ping_idle_timeout=self.heartbeat_s,
            auto_ping_reply_timeout=self.heartbeat_s,
            max_frame_size=self.settings.max_frame_bytes,
            read_buffer_init_size=1024,
            disconnect_on_exception=True,
            logger_name="tidings.picows",
            reuse_address=True,
        )
        self.handshakes.install(self._server)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._server is not None, "start() first"
        sock: socket.socket = self._server.sockets[0]
        return int(sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}/"

    async def stop(self) -> None:
        """Drain: refuse new sockets, close every connection with 1001, wait for them."""
        if self._server is None:
            return
        self._server.close()
        self.handshakes.close()
        for conn in list(self.connections):
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
        self.flusher.flush()
        if self.connections:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.settings.drain_timeout)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.disconnect(graceful=False)
        await self._server.wait_closed()
        self._server = None
        self._drop_some(len(self._to_drop))  # before the consumers save their cursors
        await self.consumers.stop()
        await self.engine.stop()

    # -- connections --------------------------------------------------------

    def _route(self, request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
        """picows asks this for every HTTP request on the port."""
        path = request.path.split(b"?", 1)[0]
        if path in HEALTH_PATHS and "upgrade" not in request.headers.get("Connection", "").lower():
            ok = WSUpgradeResponse.create_ok_response(b"ok\n")
            return WSUpgradeResponseWithListener(ok, None)
        origin = request.headers.get("Origin")
        if origin is not None and self._origins and origin.lower() not in self._origins:
            # A browser page from a site we do not serve (cross-site WebSocket hijacking).
            forbidden = WSUpgradeResponse.create_error_response(403, b"origin not allowed\n")
            return WSUpgradeResponseWithListener(forbidden, None)
        offered = _offered_subprotocols(request.headers.getall("Sec-WebSocket-Protocol", []))
        chosen = negotiate(offered)
        if chosen is None:
            body = f"no supported subprotocol offered; use one of {', '.join(SUBPROTOCOLS)}\n"
            bad = WSUpgradeResponse.create_error_response(400, body.encode())
            return WSUpgradeResponseWithListener(bad, None)
        # RFC 6455 4.2.2: echo a subprotocol only if the client offered some.
        headers = {"Sec-WebSocket-Protocol": chosen} if offered else None
        response = WSUpgradeResponse.create_101_response(extra_headers=headers)
        peer = request.headers.get("X-Forwarded-For", "")
        return WSUpgradeResponseWithListener(response, Connection(self, chosen or JSON, peer))

    def _token_revoked(self, jti: str) -> None:
        """Close every connection holding the revoked token (1008, "token revoked")."""
        for conn in list(self.connections):
            if conn.grants is not None and conn.grants.jti == jti:
                log.info("closing agent %r: its token was revoked", conn.agent, extra=conn.context())
                conn.close(CloseCode.POLICY_VIOLATION, "token revoked")

    def _announce_presence(self, event: PresenceEvent) -> None:
        """Publish a join, leave or status change on ``sig/presence/<topic>`` (ephemeral)."""
        msg = f.Msg(
            topic=f"sig/presence/{event.topic}",
            id=self.next_id(),
            sender=SYSTEM_SENDER,
            ts=time.time_ns() // 1_000_000,
            body={"agent": event.agent, "event": event.event, "status": event.status, "topic": event.topic},
        )
        self.engine.publish_ephemeral(msg)

    def register(self, conn: Connection) -> None:
        self.connections.add(conn)
        self.stats.connections_opened += 1

    def unregister(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.flusher.forget(conn)
        subs = list(conn.subs.values())
        conn.subs.clear()
        if len(subs) <= DROP_SLICE and not self._to_drop:
            for sub in subs:
                self.drop_subscription(sub)
        else:
            self._drop_later(subs)
        self.presence.disconnected(conn)
        self.stats.connections_closed += 1
        if not self.connections:
            self._drained.set()

    def _drop_later(self, subs: list[Subscription]) -> None:
        """Drop a closed connection's many subscriptions over several loop turns.

        A connection may hold 1,000 (about 2.5 ms to drop): in one turn that would
        stall every other client. Meanwhile its live subscriptions still match (the
        deliveries go nowhere) and a durable member still counts; a message delivered
        to it is handed to another member when it leaves, as for any leaving member.
        """
        self._to_drop.extend(subs)
        if not self._drop_scheduled:
            self._drop_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._drop_some)

    def _drop_some(self, limit: int = DROP_SLICE) -> None:
        self._drop_scheduled = False
        to_drop = self._to_drop
        for _ in range(min(limit, len(to_drop))):
            self.drop_subscription(to_drop.popleft())
        if to_drop:
            self._drop_later([])

    def drop_subscription(self, sub: Subscription) -> None:
        self.stats.subscriptions -= 1
        if sub.pattern.startswith("conv/"):
            self.presence.left(sub.conn, sub.pattern)
        if sub.consumer is None:
            self.router.remove(sub)
        else:
            self.consumers.leave(sub)

    def _listened(self, topic: str) -> bool:
        """Whether a live subscription or a consumer here matches ``topic`` (cached per topic)."""
        return bool(
            (self.router.count and self.router.match(topic))
            or (self.consumers.router.count and self.consumers.router.match(topic))
        )

    def _on_commit(self, msg: f.Msg) -> None:
        """A durable message is on disk: live subscribers get it, consumers take it."""
        try:
            self.fanout(msg)
        except InvalidFrame:
            log.warning("message %s of %s cannot be encoded for a live subscriber", msg.id, msg.topic)
        self.consumers.on_commit(msg)

    def next_id(self) -> str:
        """A message id for a publish that did not bring one: unique across restarts."""
        return f"{self._id_prefix}{next(self._id_counter):x}"

    # -- fanout and flushing ------------------------------------------------

    def fanout(self, msg: f.Msg) -> int:
        """Deliver ``msg`` to every matching live subscription; return how many.

        The message is encoded at most once per codec, then the per-subscriber
        ``sid`` is spliced into that shared encoding. Raises ``InvalidFrame``,
        before anything is delivered, when the body cannot be carried by a
        subscriber's codec (e.g. an integer beyond 64 bits for msgpack).
        """
        if not len(self.router):
            return 0
        subs = self.router.match(msg.topic)
        if not subs:
            return 0
        # Encode for every codec in use before delivering anything, so a body one
        # codec cannot carry is refused whole rather than half delivered.
        opened: dict[bool, bytes] = {}  # binary? -> shared encoding, open for the sid
        for sub in subs:
            binary = sub.conn.binary
            if binary not in opened:
                codec = sub.conn.session.codec
                try:
                    opened[binary] = codec.open_shared(codec.encode_shared(msg))
                except (OverflowError, TypeError, ValueError, RecursionError) as exc:
                    raise InvalidFrame(f"body cannot be encoded for every subscriber: {exc}") from None
                if len(opened) == 2:
                    break
        delivered = 0
        # Subscriptions with the same sid (most have sid 1) share one encoded delivery:
        # one bytes object per sid, not a copy per subscriber (and the flushes that join
        # it into each subscriber's message read the same memory). A suffix names its
        # codec too: msgpack's and JSON's never look alike.
        stamped: dict[bytes, bytes] = {}
        sender = msg.sender
        for sub in subs:
            if sub.skip_sender is not None and sub.skip_sender == sender:
                continue  # its own agent's message, and it asked for no echo
            conn = sub.conn
            if conn.write_paused:  # not keeping up: drop, count, tell it when it catches up
                conn.dropped[sub.sid] = conn.dropped.get(sub.sid, 0) + 1
                self.stats.dropped += 1
                self.stats.drops[namespace_of(msg.topic)] += 1
                continue
            suffix = sub.suffix
            data = stamped.get(suffix)
            if data is None:
                data = stamped[suffix] = opened[conn.binary] + suffix
            session = conn.session  # send_encoded, inline: this runs for every delivery
            session.outgoing.append(data)
            session.pending_bytes += len(data)
            delivered += 1
            if not conn.dirty:
                self.flusher.mark_dirty(conn)
        stats = self.stats
        stats.delivered += delivered
        if delivered:
            if self.tracer.enabled:
                attributes = {"messaging.destination": msg.topic, "tidings.deliveries": delivered}
                self.tracer.start(
                    "tidings deliver", msg.headers.get(TRACEPARENT), "SERVER", **attributes
                ).end()
            namespace = namespace_of(msg.topic)
            stats.deliveries[namespace] += delivered
            stats.observe("publish_deliver", namespace, "live", time.time() - msg.ts / 1000)
        return delivered

    def fan_chunk(self, chunk: f.StreamChunk) -> None:
        """Send a stream chunk to every live subscription and consumer member on its topic.

        Chunks are ephemeral: a subscriber that is not connected now never sees
        them; it sees the stream's final, durable message instead.
        """
        targets: list[Subscription] = list(self.router.match(chunk.topic)) if len(self.router) else []
        for consumer in self.consumers.router.match(chunk.topic) if len(self.consumers.router) else ():
            if consumer.skip_sender != chunk.sender:
                targets.extend(m for m in consumer.members if isinstance(m, Subscription))
        for sub in targets:
            if sub.skip_sender == chunk.sender:
                continue
            sub.conn.session.send(msgspec.structs.replace(chunk, sid=sub.sid))
            self.flusher.mark_dirty(sub.conn)

    def encoded_delivery(self, msg: f.Msg, attempt: int, conn: Connection) -> bytes:
        """``msg`` at ``attempt``, encoded for ``conn``'s codec without a sid, open for one.

        A durable message committed now goes to every consumer that matches it (an
        agent swarm: each member of a conversation has its own); it is encoded once
        per codec and attempt per loop turn, not once per delivery.
        """
        key = (msg.topic, msg.offset or 0, attempt, conn.binary)
        data = self._deliveries.get(key)
        if data is None:
            if len(self._deliveries) >= MAX_ENCODED_DELIVERIES:
                self._deliveries.clear()
            codec = conn.session.codec
            data = codec.open_shared(codec.encode_shared(msgspec.structs.replace(msg, attempt=attempt)))
            self._deliveries[key] = data
        return data


def engine_for(
    settings: Settings,
    on_fatal: Callable[[BaseException], None] | None = None,
    retention: Callable[[str], RetentionPolicy] | None = None,
    retained_otherwise: Callable[[], Iterable[str]] | None = None,
) -> Engine:
    """The engine ``settings.engine`` names. Raises ``ValueError`` for a bad NATS setting.

    ``retention`` (default: the namespaces') is each topic's policy. JetStream keeps
    retention per stream, so the NATS engine makes the namespaces' its streams' limits
    and trims the topics ``retained_otherwise()`` names itself (docs/scaling.md).
    """
    if settings.engine == "nats":
        from tidings.engine.nats import NatsEngine  # needs nats-py: pip install 'tidings[nats]'

        urls = [u.strip() for u in settings.nats_url.split(",") if u.strip()]
        replicas = settings.nats_replicas or None
        return NatsEngine(
            urls,
            settings.shards or DEFAULT_NATS_SHARDS,
            replicas,
            retention=retention or settings.retention,
            presence_lease_s=settings.presence_lease,
            peer_timeout_s=settings.peer_timeout,
            retained_otherwise=retained_otherwise,
        )
    return EmbeddedEngine(
        settings.data_path,
        settings.shards,
        retention=retention or settings.retention,
        on_fatal=on_fatal,
        max_write_queue=settings.max_write_queue,
    )


def _offered_subprotocols(values: Sequence[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]

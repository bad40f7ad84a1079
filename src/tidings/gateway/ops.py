"""What each op a client sends does, for one connection: ``hello``, ``pub``, ``sub``...

``Connection`` reads the frames and paces them (``connection.py``); these functions
act on one frame each, answer it through the connection's session, and raise the
``TidingsError`` the connection answers with an ``error`` frame. ``on_pub`` and
``on_ack`` are called for their frames directly, without ``dispatch``'s isinstance
chain: they are most of what a busy connection receives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec

from tidings.auth import ANONYMOUS_GRANTS
from tidings.engine.base import PublishResult
from tidings.errors import (
    Forbidden,
    InvalidFrame,
    LimitExceeded,
    NotSupported,
    RetryLater,
    StorageError,
    TidingsError,
    Unauthorized,
)
from tidings.gateway.subscription import Subscription
from tidings.presence import checked_capabilities, checked_status
from tidings.protocol import frames as f
from tidings.protocol.session import CloseCode, State, error_frame
from tidings.protocol.topics import (
    DURABLE_NAMESPACES,
    is_wildcard,
    namespace_of,
    validate_pattern,
    validate_topic,
)
from tidings.tracing import TRACEPARENT

if TYPE_CHECKING:
    from tidings.gateway.connection import Connection
    from tidings.gateway.consumer import Consumer
    from tidings.gateway.sharing import Proxy

log = logging.getLogger("tidings.gateway")


def dispatch(conn: Connection, frame: f.ClientFrame) -> None:
    """Act on any client frame (``Connection._process`` calls ``on_pub`` and ``on_ack`` itself).

    Raises the ``TidingsError`` to answer the frame with.
    """
    if isinstance(frame, f.Pub):
        on_pub(conn, frame)
    elif isinstance(frame, f.Sub):
        on_sub(conn, frame)
    elif isinstance(frame, f.Unsub):
        on_unsub(conn, frame)
    elif isinstance(frame, f.Ack):
        on_ack(conn, frame)
    elif isinstance(frame, f.Progress):
        member(conn, frame.sid).progress(conn.subs[frame.sid], frame.topic, frame.offset)
    elif isinstance(frame, f.Nack):
        member(conn, frame.sid).nack(conn.subs[frame.sid], frame.topic, frame.offset, frame.delay_ms)
    elif isinstance(frame, f.Chunk):
        check_publish(conn, frame.topic)
        chunk = f.StreamChunk(frame.stream, frame.topic, frame.seq, conn.agent, frame.data)
        conn.gateway.fan_chunk(chunk)
    elif isinstance(frame, f.PresenceUpdate):
        on_presence(conn, frame)
    elif isinstance(frame, f.Hello):
        on_hello(conn, frame)
    else:
        raise NotSupported(f"'{f.op_of(frame)}' is not supported by this server yet")


def on_hello(conn: Connection, hello: f.Hello) -> None:
    """Verify the token and accept the session with ``welcome``; raises ``Unauthorized``."""
    gw = conn.gateway
    if not hello.token and gw.settings.allow_anonymous:
        conn.grants = ANONYMOUS_GRANTS
    else:
        conn.grants = gw.authority.verify(hello.token)
        if gw.catalog.is_revoked(conn.grants.jti):
            raise Unauthorized("token has been revoked")
    capabilities = checked_capabilities(hello.capabilities)
    s = gw.settings
    conn.session.accept(
        f.Welcome(
            agent=conn.grants.agent,
            session=conn.session_id,
            server=gw.server_name,
            limits=f.Limits(
                max_frame_bytes=s.max_frame_bytes,
                max_subscriptions=s.max_subscriptions,
                max_topic_length=s.max_topic_length,
            ),
            rid=hello.rid,
            heartbeat_ms=int(gw.heartbeat_s * 1000),
            time=time.time_ns() // 1_000_000,
        )
    )
    if conn.grants.expires_at is not None:
        delay = max(0.0, conn.grants.expires_at - time.time())
        conn.timers.append(asyncio.get_running_loop().call_later(delay, partial(token_expired, conn)))
    gw.presence.connected(conn, conn.grants.agent, checked_status(hello.status), capabilities)
    log.info("agent %r connected (%s)", conn.agent, hello.client or "no client name", extra=conn.context())


def on_presence(conn: Connection, update: f.PresenceUpdate) -> None:
    """The agent changed its status or capabilities; answered (with ``rid``) by an echo."""
    assert conn.grants is not None
    status = checked_status(update.status)
    capabilities = None if update.capabilities is None else checked_capabilities(update.capabilities)
    conn.gateway.presence.update(conn, status or None, capabilities)
    if update.rid is not None:
        current = conn.gateway.presence.get(conn.grants.agent)
        now = current.status if current is not None else status
        conn.session.send(
            f.PresenceEvent(agent=conn.grants.agent, event="status", status=now, rid=update.rid)
        )


def on_sub(conn: Connection, sub: f.Sub) -> None:
    """Subscribe: a live subscription is answered at once, a durable one once joined (``_join``)."""
    assert conn.grants is not None
    settings = conn.gateway.settings
    # The limit first: it is the cheapest refusal, and a flood of subs past it costs little.
    if len(conn.subs) >= settings.max_subscriptions:
        raise LimitExceeded(f"this connection already has {len(conn.subs)} subscriptions (the limit)")
    pattern = validate_pattern(sub.topic, settings.max_topic_length)
    conn.grants.check_subscribe(pattern)
    if sub.consumer is not None and not sub.consumer.strip():
        raise InvalidFrame("consumer name must not be empty")
    for name in ("max_inflight", "ack_wait_ms"):
        value = getattr(sub, name)
        if value is not None and value < 1:
            raise InvalidFrame(f"{name} must be at least 1, not {value}")
    durable = sub.consumer is not None or sub.start is not None
    if durable:
        conn.gateway.consumers.check(pattern)
    sid = conn.next_sid
    subscription = Subscription(conn, sid, pattern)
    if not sub.echo:
        subscription.skip_sender = conn.grants.agent
    conn.next_sid += 1  # only now: a refused sub uses no sid
    conn.subs[sid] = subscription
    conn.gateway.stats.subscriptions += 1
    if pattern.startswith("conv/") and not is_wildcard(pattern):
        conn.gateway.presence.joined(conn, pattern)
    if durable:
        # The engine answers over the network (NATS): finish in a task of its own.
        task = asyncio.ensure_future(_join(conn, subscription, sub))
        conn.joining.add(task)
        task.add_done_callback(conn.joining.discard)
        return
    conn.gateway.router.add(subscription)
    conn.session.send(f.Subbed(sid=sid, topic=pattern, rid=sub.rid, durable=False))


async def _join(conn: Connection, subscription: Subscription, sub: f.Sub) -> None:
    """Join the durable consumer or start the reader, then answer ``subbed`` (or the error)."""
    assert conn.grants is not None
    gateway = conn.gateway
    try:
        head = None if is_wildcard(subscription.pattern) else await gateway.engine.head(subscription.pattern)
        consumer = await gateway.consumers.join(subscription, sub, conn.grants.agent)
    except Exception as exc:
        if conn.subs.get(subscription.sid) is subscription:
            del conn.subs[subscription.sid]
            gateway.drop_subscription(subscription)
        error = exc if isinstance(exc, TidingsError) else StorageError(f"subscribe failed: {exc!r}")
        if not isinstance(exc, TidingsError):
            log.error(
                "durable subscribe to %s failed: %r",
                subscription.pattern,
                exc,
                extra=conn.context(topic=subscription.pattern),
            )
        gateway.stats.reject(error.code)
        conn.session.send(error_frame(error, sub.rid))
        gateway.flusher.mark_dirty(conn)
        return
    subscription.consumer = consumer
    if conn.subs.get(subscription.sid) is not subscription or conn.session.state is not State.OPEN:
        gateway.consumers.leave(subscription)  # unsubscribed or disconnected meanwhile
        return
    # subbed goes out before the first delivery: join scheduled that for the end of this
    # turn (on the priority lane for ctl/, where its deliveries go)
    subbed = f.Subbed(sid=subscription.sid, topic=subscription.pattern, rid=sub.rid, durable=True, head=head)
    if consumer.priority:
        conn.session.send_priority(subbed)
    else:
        conn.session.send(subbed)
    gateway.flusher.mark_dirty(conn)


def on_unsub(conn: Connection, unsub: f.Unsub) -> None:
    """Unsubscribe; answered ``unsubbed`` even for a sid that is gone already."""
    subscription = conn.subs.pop(unsub.sid, None)
    if subscription is not None:
        conn.gateway.drop_subscription(subscription)
    conn.session.send(f.Unsubbed(sid=unsub.sid, rid=unsub.rid))


def on_ack(conn: Connection, ack: f.Ack) -> None:
    """Acknowledge a delivery of a durable subscription; raises ``InvalidFrame`` for another sid."""
    sub = conn.subs.get(ack.sid)
    if sub is None or sub.consumer is None or not sub.consumer.acks:
        member(conn, ack.sid)  # raises the error
    else:
        sub.consumer.ack(sub, ack)


def member(conn: Connection, sid: int) -> Consumer | Proxy:
    """The durable consumer of ``conn``'s subscription ``sid``; raises ``InvalidFrame`` if none."""
    sub = conn.subs.get(sid)
    if sub is None or sub.consumer is None or not sub.consumer.acks:
        raise InvalidFrame(f"sid {sid} is not a durable subscription of this connection")
    return sub.consumer


def on_pub(conn: Connection, pub: f.Pub) -> None:
    """Publish: a live message is fanned out now, a durable one answered once it is on disk.

    Raises ``InvalidTopic``, ``Forbidden``, ``RetryLater`` (the connection's credit of
    unacknowledged publishes spent, the token over its rate, a full write queue) or a
    ``StorageError``.
    """
    assert conn.grants is not None
    topic = pub.topic
    gateway = conn.gateway
    namespace = check_publish(conn, topic)
    body = pub.body
    size = len(body) if type(body) is str else _body_size(body)
    durable = namespace in DURABLE_NAMESPACES
    if durable and conn.unacked >= gateway.settings.max_unacked_publishes:
        raise RetryLater(
            f"{conn.unacked} publishes are waiting for their puback (the connection's credit)", 20
        )
    if gateway.limiter.active:
        gateway.limiter.check(conn.grants, size)
    stats = gateway.stats
    stats.published += 1
    stats.messages_in[namespace] += 1
    stats.bytes_in[namespace] += size
    msg_id = pub.id or gateway.next_id()
    msg = f.Msg(
        topic=topic,
        id=msg_id,
        sender=conn.grants.agent,
        ts=time.time_ns() // 1_000_000,
        body=pub.body,
        parent=pub.parent,
        lamport=pub.lamport,
        headers=pub.headers,
    )
    span = None
    if gateway.tracer.enabled:  # until it is durable (ephemeral: until it is fanned out)
        span = gateway.tracer.start("tidings publish", pub.headers.get(TRACEPARENT), "SERVER")
        span.set_attribute("messaging.destination", topic)
        span.set_attribute("messaging.message.id", msg_id)
    if durable:
        try:
            gateway.engine.submit(msg, partial(_published, conn, topic, namespace, msg_id, pub.rid, span))
        except BaseException:  # refused at once (a full write queue, a failed store)
            if span is not None:
                span.end()
            raise
        conn.unacked += 1
        return
    try:
        gateway.engine.publish_ephemeral(msg)
    finally:
        if span is not None:
            span.end()
    if pub.rid is not None:
        conn.session.send(f.Puback(id=msg_id, rid=pub.rid))


def check_publish(conn: Connection, topic: str) -> str:
    """Raise ``InvalidTopic`` or ``Forbidden`` unless this agent may publish to ``topic``.

    Returns the topic's namespace.
    """
    closed = conn.gateway.catalog.closed
    if closed and topic in closed:
        raise Forbidden(f"conversation {topic!r} is closed: it takes no more messages")
    namespace = conn.may_publish.get(topic)
    if namespace is not None:
        return namespace
    assert conn.grants is not None
    validate_topic(topic, conn.gateway.settings.max_topic_length)
    conn.grants.check_publish(topic)
    namespace = namespace_of(topic)
    if len(conn.may_publish) < 4096:
        conn.may_publish[topic] = namespace
    return namespace


def _published(
    conn: Connection,
    topic: str,
    namespace: str,
    msg_id: str,
    rid: int | None,
    span: Any,
    result: PublishResult | BaseException,
) -> None:
    """A durable publish finished: answer with ``puback`` (only now: it is on disk) or the error."""
    conn.unacked -= 1
    if span is not None:
        span.end()
    if conn.session.state is not _OPEN:
        return
    if isinstance(result, BaseException):
        if isinstance(result, TidingsError):
            error = result
        else:
            error = StorageError(f"publish failed: {result!r}")
            log.error("durable publish of %s failed: %r", msg_id, result, extra=conn.context(topic=topic))
        conn.gateway.stats.reject(error.code)
        conn.session.send(error_frame(error, rid))
    else:
        stats = conn.gateway.stats
        stats.publish_acks[namespace] += 1
        if result.duplicate:
            stats.duplicates[namespace] += 1
        if rid is not None:
            conn.session.send(f.Puback(id=msg_id, rid=rid, offset=result.offset, duplicate=result.duplicate))
    if not conn.dirty:
        conn.gateway.flusher.mark_dirty(conn)


# -- timers and closing ---------------------------------------------------


def token_expired(conn: Connection) -> None:
    """The token's ``exp`` has passed: close the session (1008)."""
    conn.session.fail(Unauthorized("token has expired"), CloseCode.POLICY_VIOLATION)
    conn.gateway.flusher.mark_dirty(conn)


_size_encoder = msgspec.msgpack.Encoder()


def _body_size(body: object) -> int:
    """A message body's size as counted in ``bytes_in``: its msgpack encoding."""
    if isinstance(body, (str, bytes)):  # a tuple: ``str | bytes`` would be built on every call
        return len(body)
    try:
        return len(_size_encoder.encode(body))
    except (TypeError, ValueError, OverflowError):
        return 0


_OPEN = State.OPEN

"""The gateway's registry of consumers: lookup, commit routing, timers, cursors, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from tidings.config import NamespacePolicy, Settings
from tidings.engine.base import Engine, consumer_key
from tidings.errors import NotSupported
from tidings.gateway.consumer import Consumer, Pending, Phase
from tidings.gateway.router import Router
from tidings.gateway.sharing import Proxy, Sharing
from tidings.metrics import GatewayStats
from tidings.protocol import frames as f
from tidings.protocol.topics import DURABLE_NAMESPACES, namespace_of, validate_topic
from tidings.tracing import Tracer

if TYPE_CHECKING:
    from tidings.gateway.consumer import Member
    from tidings.gateway.sharing import RemoteMember
    from tidings.gateway.subscription import Subscription

log = logging.getLogger("tidings.gateway")

TICK_S = 0.02
SAVE_EVERY_S = 0.2
IDLE_EVICT_S = 600.0


class Consumers:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        policy: Callable[[str], NamespacePolicy] | None = None,
        stats: GatewayStats | None = None,
    ) -> None:
        """``policy(topic)`` gives a topic's delivery policy (default: its namespace's)."""
        self.engine = engine
        self.settings = settings
        self.stats = stats or GatewayStats()
        self.tracer: Tracer | None = None  # the gateway's, set when it starts
        self.policy = policy or settings.policy
        self.router: Router[Consumer] = Router()
        self.by_key: dict[str, Consumer] = {}
        self._idle_since: dict[str, float] = {}
        self._scheduled: dict[Consumer, None] = {}
        self._pump_pending = False
        #: (due, seq, consumer): when a consumer's earliest timer is due (stale
        #: entries, whose due is no longer the consumer's ``wake_at``, are skipped)
        self._wakeups: list[tuple[float, int, Consumer]] = []
        self._wakeup_seq = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._opening: dict[str, asyncio.Future[Consumer]] = {}
        self.dead_letters = 0
        #: consumers shared with other gateways (a shared engine); None when alone
        self.sharing: Sharing | None = None

    def start(self) -> None:
        """Start the timers and the cursor saver (after the engine has started)."""
        if self.engine.peers is not None:
            self.sharing = Sharing(self, self.engine.peers)
        self._tasks = [
            asyncio.create_task(self._timers(), name="tidings-consumer-timers"),
            asyncio.create_task(self._saver(), name="tidings-cursor-saver"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.sharing is not None:
            await self.sharing.stop()
        await self.save(everything=True)

    # -- membership ---------------------------------------------------------

    @staticmethod
    def check(pattern: str) -> None:
        """Raise ``NotSupported`` when ``pattern`` can only reach ephemeral topics."""
        first = pattern.split("/", 1)[0]
        if first not in DURABLE_NAMESPACES and first not in ("*", ">"):
            raise NotSupported(f"{pattern!r} is ephemeral: it has no history to replay or ack")

    async def join(self, member: Subscription, sub: f.Sub, agent: str) -> Consumer | Proxy:
        """Attach ``member`` to its durable consumer (created or resumed) or to a new reader.

        With other gateways (``sharing``), a durable consumer owned by another
        gateway is joined through a ``Proxy``. Raises ``NotSupported`` (see
        ``check``) and, from the engine, ``StorageError`` or ``RetryLater``. The
        caller must ``leave`` if the member is gone by the time this returns.
        """
        self.check(member.pattern)
        if sub.consumer is None:
            policy = self._policy_of(member.pattern)
            consumer = Consumer(self, f"reader\x00{id(member)}", member.pattern, policy, False)
            consumer.agent = agent  # whose own messages ``echo: false`` skips
            self.router.add(consumer)
            try:
                await consumer.open(sub.start)
            except BaseException:
                self._remove(consumer)
                raise
        else:
            key = consumer_key(agent, sub.consumer, member.pattern)
            if key not in self.by_key and self.sharing is not None:
                proxy = await self.sharing.join(member, sub, key)
                if proxy is not None:
                    return proxy
            consumer = await self.durable(key, member.pattern, sub.start)
        self.admit(consumer, member, sub)
        return consumer

    def admit(self, consumer: Consumer, member: Member, sub: f.Sub) -> None:
        """Attach ``member`` with the delivery options of its ``sub``.

        ``ack_wait_ms`` (when given) and ``echo`` are the consumer's: the latest
        member to join sets them for all.
        """
        self._idle_since.pop(consumer.key, None)
        if sub.ack_wait_ms is not None:
            consumer.policy = msgspec.structs.replace(consumer.policy, ack_wait_ms=sub.ack_wait_ms)
        consumer.skip_sender = None if sub.echo else consumer.agent
        member.max_inflight = sub.max_inflight or consumer.policy.max_inflight
        consumer.attach(member)

    def _policy_of(self, pattern: str) -> NamespacePolicy:
        first = pattern.split("/", 1)[0]
        return self.policy(pattern if first in DURABLE_NAMESPACES else "conv/_/_")

    async def durable(self, key: str, pattern: str, start: f.Start | None) -> Consumer:
        """Durable consumer ``key`` as run here, opened (resumed from its cursor) if need be,
        for a member here or, when this gateway owns it, on another gateway."""
        return self.by_key.get(key) or await self._opened(key, pattern, self._policy_of(pattern), start)

    async def _opened(
        self, key: str, pattern: str, policy: NamespacePolicy, start: f.Start | None
    ) -> Consumer:
        """The durable consumer ``key``, resumed from its cursor; one opening per key at a time."""
        opening = self._opening.get(key)
        if opening is None:
            opening = self._opening[key] = asyncio.ensure_future(self._open(key, pattern, policy, start))
            opening.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(opening)

    async def _open(self, key: str, pattern: str, policy: NamespacePolicy, start: f.Start | None) -> Consumer:
        saved = await self.engine.load_cursor(key)
        consumer = Consumer(self, key, pattern, policy, True, saved)
        self.by_key[key] = consumer
        self.router.add(consumer)
        try:
            await consumer.open(start if saved is None else None)
        except BaseException:
            self._remove(consumer)
            raise
        return consumer

    def drop(self, consumer: Consumer) -> None:
        """Stop running ``consumer`` here at once, without saving its cursor (another gateway
        owns it now); its members are the caller's to move."""
        for member in list(consumer.members):
            consumer.members.remove(member)
        self._remove(consumer)

    def _remove(self, consumer: Consumer) -> None:
        consumer.close()
        self.router.remove(consumer)
        if self.by_key.get(consumer.key) is consumer:
            del self.by_key[consumer.key]
        self._idle_since.pop(consumer.key, None)

    def leave(self, member: Subscription | RemoteMember) -> None:
        consumer = member.consumer
        if consumer is None:
            return
        if isinstance(consumer, Proxy):
            consumer.detach()
            return
        consumer.detach(member)
        if not consumer.acks:
            self._remove(consumer)
        elif not consumer.members:
            self._idle_since[consumer.key] = time.monotonic()

    def log_read_failure(self, consumer: Consumer, exc: BaseException | None) -> None:
        log.warning("reading for consumer %r failed (will retry): %r", consumer.key, exc)

    # -- events -------------------------------------------------------------

    def on_commit(self, msg: f.Msg) -> None:
        if not len(self.router):
            return
        for consumer in self.router.match(msg.topic):
            consumer.on_commit(msg)

    def schedule(self, consumer: Consumer) -> None:
        """Pump ``consumer`` at the end of this loop turn (once however often asked)."""
        self._scheduled[consumer] = None
        if not self._pump_pending:
            self._pump_pending = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_pending = False
        scheduled, self._scheduled = self._scheduled, {}
        # The control lane first: its frames also jump the queue in the session.
        # (Two passes rather than a sort: a thousand consumers may be due in one turn.)
        ordered = [c for c in scheduled if c.priority]
        ordered += [c for c in scheduled if not c.priority] if ordered else scheduled
        for consumer in ordered:
            try:
                consumer.pump()
            except Exception:
                log.exception("delivery for consumer %r failed", consumer.key)

    def wake(self, consumer: Consumer, due: float) -> None:
        """Tick ``consumer`` once ``due`` has passed (its earliest timer moved to ``due``)."""
        heapq.heappush(self._wakeups, (due, next(self._wakeup_seq), consumer))

    async def _timers(self) -> None:
        # Only consumers with a timer due are touched: a tick costs nothing per idle
        # consumer, however many thousands are connected.
        wakeups = self._wakeups
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            while wakeups and wakeups[0][0] <= now:
                due, _, consumer = heapq.heappop(wakeups)
                if consumer.wake_at != due or consumer.closed:
                    continue
                consumer.wake_at = math.inf
                try:
                    following = consumer.tick(now)
                except Exception:
                    log.exception("timers of consumer %r failed; retrying in 1 s", consumer.key)
                    following = now + 1.0  # its timers must not be forgotten
                if following is not None:
                    consumer.wake_at = following
                    self.wake(consumer, following)

    # -- dead letters -------------------------------------------------------

    def dead_letter(self, consumer: Consumer, p: Pending, reason: str) -> None:
        """Append ``p`` to ``dlq/<topic>`` with the reason; ack it once that is durable."""
        p.phase = Phase.DELAYED
        msg = p.msg
        topic = f"dlq/{msg.topic}"
        try:
            validate_topic(topic, max_length=self.settings.max_topic_length + 4)
        except Exception:
            topic = "dlq/_/overlong"
        headers = {
            **msg.headers,
            "tidings-dlq-reason": reason,
            "tidings-dlq-topic": msg.topic,
            "tidings-dlq-offset": str(msg.offset),
            "tidings-dlq-consumer": consumer.name,
            "tidings-dlq-attempts": str(p.attempt),
        }
        letter = f.Msg(
            topic=topic,
            id=f"{consumer.key.replace(chr(0), '/')}/{msg.id}",
            sender=msg.sender,
            ts=msg.ts,
            body=msg.body,
            parent=msg.parent,
            lamport=msg.lamport,
            headers=headers,
        )

        def done(task: asyncio.Task[object]) -> None:
            if task.cancelled() or task.exception() is not None:
                log.error("dead letter to %s failed: %s; will retry", topic, task.exception())
                p.phase = Phase.DELAYED
                consumer._arm(p, time.monotonic() + 1.0)
                return
            self.dead_letters += 1
            self.stats.dead_letters[namespace_of(msg.topic)] += 1
            consumer.dead_lettered(p)

        asyncio.ensure_future(self.engine.publish(letter)).add_done_callback(done)

    # -- cursors ------------------------------------------------------------

    async def _saver(self) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            try:
                await self.save()
            except Exception:
                log.exception("saving consumer cursors failed; will retry")
            self._evict_idle()

    async def save(self, everything: bool = False) -> None:
        """Make dirty cursors durable (all of them with ``everything``)."""
        states = {
            key: c.cursor() for key, c in self.by_key.items() if c.acks and (c.cursor_dirty or everything)
        }
        if states:
            try:
                await self.engine.save_cursors(states)
            except BaseException:
                for key in states:  # not saved: still to save, and not to be let go meanwhile
                    consumer = self.by_key.get(key)
                    if consumer is not None:
                        consumer.cursor_dirty = True
                raise

    def _evict_idle(self) -> None:
        """Forget consumers nobody has used for a while once their cursor is saved.

        With a shared engine (NATS) that is at once: the member may come back
        through another gateway, which resumes from the saved cursor, and this
        gateway must not keep a stale copy to resume from later. What was
        delivered and not acked stays below the cursor and is delivered again.
        """
        now = time.monotonic()
        idle_s = 0.0 if self.engine.shared else IDLE_EVICT_S
        for key, since in list(self._idle_since.items()):
            consumer = self.by_key.get(key)
            if consumer is None or consumer.members:
                self._idle_since.pop(key, None)
            elif (
                now - since >= idle_s
                and not consumer.cursor_dirty
                and (self.engine.shared or not consumer.pending)
            ):
                self._remove(consumer)
                if self.sharing is not None:
                    self.sharing.release(key)

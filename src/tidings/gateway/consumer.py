"""Delivery from the log: durable consumers (acked) and replay readers (not acked).

A ``Consumer`` follows every durable topic its pattern matches. Per topic it
remembers how far it has read from the log (``read_through``), which offsets
are delivered but not yet acknowledged (``outstanding``), and which were
acknowledged above the floor (``acked``). It always reads the log strictly
after ``read_through``; once a read comes back short it is caught up and takes
newly committed messages straight from the engine's commit callback. Reads are
coroutines (the NATS engine reads over the network), so while a read of a topic
is in flight its commits are held; when the read returns short, the held ones
above it are taken too, and the replay-to-live seam has no gap and no repeat.
If more than ``HOLD_LIMIT`` arrive during one read, they are dropped and the
topic is simply read again.

Members are the subscriptions (one per connection) that share the consumer:
deliveries go round-robin to members with room, which splits the messages
between them like a work queue. A member's room is ``max_inflight`` unacked
messages; a reader's (no acks) is its connection's outgoing buffer.

A consumer whose members subscribed with ``echo: false`` skips the messages its
own agent published: each counts as acknowledged the moment it is taken.

Every delivery of a durable consumer must be acked within ``ack_wait``; a nack
redelivers after ``delay_ms * 2**(attempt-1)`` (capped at a minute); after
``max_deliver`` attempts the message is appended to ``dlq/<topic>`` with the
reason in its headers, then counted as acknowledged.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

from tidings.config import NamespacePolicy
from tidings.engine.base import CursorState, TopicCursor
from tidings.protocol import frames as f
from tidings.protocol.topics import is_durable, namespace_of
from tidings.tracing import TRACEPARENT

if TYPE_CHECKING:
    from tidings.gateway.consumers import Consumers

READ_BATCH = 256
HOLD_LIMIT = 4 * READ_BATCH  # commits held per topic while its read is in flight
READER_WINDOW = 1 << 20  # bytes a reader may have queued on its connection
MAX_BACKOFF_MS = 60_000
_seq = itertools.count()


class Phase:
    """Where a pending message is. Plain constants, not an Enum: an Enum member costs
    ~180 ns a lookup on Python 3.11 (a class attribute ~25 ns), and these are looked
    up several times per delivery."""

    READY: Final = "ready"  # waiting for a member with room
    INFLIGHT: Final = "inflight"  # delivered, waiting for ack
    DELAYED: Final = "delayed"  # nacked, waiting for its redelivery time
    DONE: Final = "done"


def _live(timer: tuple[float, int, Pending]) -> bool:
    """Whether a timer entry still means something: its pending waits for exactly it."""
    p = timer[2]
    return p.due == timer[0] and (p.phase is Phase.INFLIGHT or p.phase is Phase.DELAYED)


class Member(Protocol):
    """What a consumer delivers to: a ``Subscription`` of a connection here, or a
    ``RemoteMember`` standing for one on another gateway (``gateway/sharing.py``)."""

    inflight: int
    max_inflight: int

    @property
    def write_paused(self) -> bool: ...

    @property
    def pending_bytes(self) -> int: ...

    def deliver(self, msg: f.Msg, attempt: int) -> None: ...

    def deliver_gap(self, topic: str, first: int, last: int, reason: str) -> None: ...


class Pending:
    __slots__ = ("attempt", "due", "member", "msg", "phase", "sent")

    def __init__(self, msg: f.Msg) -> None:
        self.msg = msg
        self.attempt = 0
        self.member: Member | None = None
        self.due = 0.0
        self.phase: str = Phase.READY
        self.sent = 0.0  # monotonic time of the latest delivery


class TopicState:
    __slots__ = (
        "acked",
        "attempts",
        "caught_up",
        "held",
        "namespace",
        "outstanding",
        "overflow",
        "read_through",
    )

    def __init__(self, read_through: int, saved: TopicCursor | None = None) -> None:
        self.namespace = ""  # the topic's (set by ``Consumer._track``): counted per delivery
        self.read_through = read_through
        self.outstanding: set[int] = set()
        self.acked: set[int] = set(saved.acked if saved else ())
        #: attempts of messages delivered before the cursor was saved, taken when read again
        self.attempts: dict[int, int] = dict(saved.attempts) if saved else {}
        self.caught_up = False
        #: commits that arrived while a read of this topic was in flight (None: no read)
        self.held: list[f.Msg] | None = None
        self.overflow = False

    def cursor(self, attempts: dict[int, int]) -> TopicCursor:
        floor = min(self.outstanding) - 1 if self.outstanding else self.read_through
        if self.acked:
            if max(self.acked) <= floor:  # the common case: acked in order, all below the floor
                self.acked.clear()
            else:
                self.acked = {o for o in self.acked if o > floor}
        if self.attempts:  # not read again yet: still theirs
            attempts = {o: n for o, n in self.attempts.items() if o > floor} | attempts
        return TopicCursor(floor=floor, acked=sorted(self.acked), attempts=attempts)


class Consumer:
    """One durable consumer (``acks=True``) or one replay reader (``acks=False``)."""

    def __init__(
        self,
        registry: Consumers,
        key: str,
        pattern: str,
        policy: NamespacePolicy,
        acks: bool,
        saved: CursorState | None = None,
    ) -> None:
        self.registry = registry
        self.engine = registry.engine
        self.key = key
        #: the agent it belongs to (for a reader, set by its registry)
        self.agent, self.name = key.split("\x00")[:2] if acks else ("", "")
        #: the agent whose messages are never delivered (``sub`` with ``echo: false``), or None
        self.skip_sender: str | None = None
        self.pattern = pattern
        self.policy = policy
        self.acks = acks
        #: the consumer label of latency figures (bounded in metrics.GatewayStats)
        self.label = self.name or "reader"
        #: the control lane: delivered ahead of data and even to a connection
        #: whose outgoing buffer is full of data (DESIGN "Guarantees" 6)
        self.priority = pattern.startswith("ctl/")
        self.members: list[Member] = []
        self.topics: dict[str, TopicState] = {}
        self.pending: dict[tuple[str, int], Pending] = {}
        self.ready: deque[Pending] = deque()
        #: (due, seq, pending): ack_wait and nack-delay timers; an entry is live
        #: while its pending is INFLIGHT or DELAYED with that due (others are skipped)
        self.timers: list[tuple[float, int, Pending]] = []
        #: when the registry will tick this consumer (its earliest timer, or inf)
        self.wake_at = math.inf
        self.lagging: deque[str] = deque()
        self.cursor_dirty = False
        self._rr = 0
        self._reader: asyncio.Task[None] | None = None
        #: topics first seen in a commit while ``open`` ran (None once it is done)
        self._born: set[str] | None = set()
        self.closed = False
        for topic, cur in (saved.topics if saved else {}).items():
            self._track(topic, TopicState(cur.floor, cur))

    async def open(self, start: f.Start | None) -> None:
        """Find the topics the pattern matches and where to start in each.

        Call it after the consumer is routed commits, so that a topic born
        meanwhile is seen either here or in ``on_commit``. Raises ``StorageError``.
        """
        for topic in await self.engine.topics(self.pattern):
            if topic not in self.topics:
                offset = await self._start_offset(topic, start)
                if topic not in self.topics:
                    self._track(topic, TopicState(offset))
        for topic in self._born or ():
            if topic not in self.topics:  # born after topics() looked: all of it is new
                self._track(topic, TopicState(0))
        self._born = None
        self.cursor_dirty = self.acks
        self.schedule()

    async def _start_offset(self, topic: str, start: f.Start | None) -> int:
        if start is None or start == "earliest":
            return await self.engine.trimmed_through(topic)
        if start == "latest":
            return await self.engine.head(topic)
        if start.offset is not None:
            return start.offset
        if start.time is not None:
            return await self.engine.offset_at_time(topic, start.time)
        return await self.engine.trimmed_through(topic)

    def close(self) -> None:
        """Stop reading: the consumer is gone from its registry."""
        self.closed = True
        if self._reader is not None:
            self._reader.cancel()

    def _track(self, topic: str, state: TopicState) -> None:
        state.namespace = namespace_of(topic)
        self.topics[topic] = state
        self.lagging.append(topic)

    # -- members ------------------------------------------------------------

    def attach(self, member: Member) -> None:
        self.members.append(member)
        self.schedule()

    def detach(self, member: Member) -> None:
        """A member left: what it held unacked goes to the others (or waits for one)."""
        self.members.remove(member)
        for p in list(self.pending.values()):
            if p.member is member and p.phase is Phase.INFLIGHT:
                p.member = None
                if p.attempt >= self.policy.max_deliver:
                    self.registry.dead_letter(
                        self, p, f"unacked by a leaving member after {p.attempt} attempts"
                    )
                else:
                    p.phase = Phase.READY
                    self.ready.appendleft(p)
        self.schedule()

    def _has_room(self, m: Member) -> bool:
        if m.write_paused and not self.priority:
            return False
        if self.acks:
            return m.inflight < m.max_inflight
        return m.pending_bytes < READER_WINDOW

    def _next_member(self) -> Member | None:
        n = len(self.members)
        for i in range(n):
            m = self.members[(self._rr + i) % n]
            if self._has_room(m):
                self._rr = (self._rr + i + 1) % n
                return m
        return None

    # -- the flow of messages ---------------------------------------------------

    def on_commit(self, msg: f.Msg) -> None:
        """A message was committed to a topic this consumer's pattern matches."""
        state = self.topics.get(msg.topic)
        if state is None:
            if self._born is not None:  # still opening: open() decides where it starts
                self._born.add(msg.topic)
                return
            self._track(msg.topic, state := TopicState(0))  # born after the consumer: all of it
        if state.held is not None:  # a read is in flight: hold it for the seam
            if len(state.held) < HOLD_LIMIT:
                state.held.append(msg)
            else:
                state.overflow = True
        elif state.caught_up and msg.offset is not None and msg.offset > state.read_through:
            if len(self.ready) < READ_BATCH * max(1, len(self.members)):
                state.read_through = msg.offset
                self._take(state, msg)
            else:  # too much waiting already: read it from the log later
                state.caught_up = False
                self.lagging.append(msg.topic)
        self.registry.schedule(self)

    def _take(self, state: TopicState, msg: f.Msg) -> None:
        assert msg.offset is not None
        if msg.offset in state.acked:
            return
        if msg.sender == self.skip_sender:  # its own message, and it asked for no echo: settled
            if self.acks:
                state.acked.add(msg.offset)
                self.cursor_dirty = True
            return
        p = Pending(msg)
        if state.attempts:
            p.attempt = state.attempts.pop(msg.offset, 0)
        if self.acks:
            state.outstanding.add(msg.offset)
            self.pending[(msg.topic, msg.offset)] = p
        self.ready.append(p)

    def _read_soon(self) -> None:
        """Start reading lagging topics unless a read is already in flight."""
        if self._reader is None and self.lagging and self._born is None and not self.closed:
            self._reader = asyncio.ensure_future(self._read_more())
            self._reader.add_done_callback(self._read_done)

    def _read_done(self, task: asyncio.Task[None]) -> None:
        self._reader = None
        if not task.cancelled() and task.exception() is not None:
            # Transient (RetryLater) or not, try again in a moment rather than stall.
            self.registry.log_read_failure(self, task.exception())
            asyncio.get_running_loop().call_later(1.0, self.schedule)
            return
        self.schedule()

    async def _read_more(self) -> None:
        """Read lagging topics until one yields messages or all are caught up."""
        while self.lagging and not self.closed:
            topic = self.lagging[0]
            state = self.topics[topic]
            state.held, state.overflow = [], False
            try:
                trimmed = await self.engine.trimmed_through(topic)
                msgs = await self.engine.read(topic, state.read_through, READ_BATCH)
                held, overflow = state.held, state.overflow
            finally:
                state.held = None
            if not self.members:
                return  # nobody to tell of a gap: read again when someone is here
            if state.read_through < trimmed:
                self.members[0].deliver_gap(topic, state.read_through + 1, trimmed, "retention")
                state.read_through = trimmed
                self.cursor_dirty = self.acks
            took = self._take_after(state, msgs)
            if len(msgs) < READ_BATCH and not overflow:
                state.caught_up = True
                self.lagging.popleft()
                took += self._take_after(state, held)
            if took:
                return

    def _take_after(self, state: TopicState, msgs: list[f.Msg]) -> int:
        """Take the messages above ``read_through`` in offset order; return how many."""
        took = 0
        for msg in msgs:
            assert msg.offset is not None
            if msg.offset > state.read_through:
                self._take(state, msg)
                state.read_through = msg.offset
                took += 1
        return took

    def schedule(self) -> None:
        self.registry.schedule(self)

    def pump(self) -> None:
        """Deliver what is ready, reading the log as needed, while members have room."""
        while self.members:
            if not self.ready:
                if self.lagging and self._next_member() is not None:
                    self._read_soon()  # it schedules another pump when it has read
                return
            member = self._next_member()
            if member is None:
                return
            p = self.ready.popleft()
            if p.phase is Phase.DONE:
                continue
            if self.acks and p.attempt >= self.policy.max_deliver:  # attempts from a saved cursor
                self.registry.dead_letter(self, p, f"unacked after {p.attempt} attempts (max_deliver)")
                continue
            self._deliver(p, member)
            if not self.acks and member.pending_bytes >= READER_WINDOW:
                self.schedule()  # after this turn's flush empties the buffer

    def _deliver(self, p: Pending, member: Member) -> None:
        p.attempt += 1
        msg, stats = p.msg, self.registry.stats
        namespace = self.topics[msg.topic].namespace
        stats.deliveries[namespace] += 1
        if p.attempt > 1:
            stats.redelivered(msg.topic, msg.id)
        elif self.acks:
            stats.observe("publish_deliver", namespace, self.label, time.time() - msg.ts / 1000)
        now = p.sent = time.monotonic()
        tracer = self.registry.tracer
        if tracer is not None and tracer.enabled:
            span = tracer.start("tidings deliver", msg.headers.get(TRACEPARENT), "SERVER")
            span.set_attribute("messaging.destination", msg.topic)
            span.set_attribute("tidings.attempt", p.attempt)
            span.set_attribute("tidings.consumer", self.label)
            span.end()
        try:
            member.deliver(p.msg, p.attempt)
        except (TypeError, ValueError, OverflowError) as exc:
            # A stored body this member's codec cannot carry: never deliverable, so
            # dead-letter it (or, for a reader, report it as a gap) instead of retrying.
            assert p.msg.offset is not None
            if self.acks:
                self.registry.dead_letter(self, p, f"cannot be encoded for the subscriber: {exc}")
            else:
                member.deliver_gap(p.msg.topic, p.msg.offset, p.msg.offset, "undeliverable")
            return
        if not self.acks:
            p.phase = Phase.DONE
            return
        p.member, p.phase = member, Phase.INFLIGHT
        member.inflight += 1
        self.cursor_dirty = True  # its attempt is part of the cursor
        self._arm(p, now + self.policy.ack_wait_ms / 1000)

    def _arm(self, p: Pending, due: float) -> None:
        p.due = due
        timers = self.timers
        if len(timers) > 2 * len(self.pending) + 64:
            # Settled messages leave their entries behind (a heap cannot drop one
            # from the middle): compact, so memory follows what is in flight.
            timers[:] = [t for t in timers if _live(t)]
            heapq.heapify(timers)
        heapq.heappush(timers, (due, next(_seq), p))
        if due < self.wake_at:
            self.wake_at = due
            self.registry.wake(self, due)

    # -- acks -----------------------------------------------------------------

    def _settle(self, member: Member, topic: str, offset: int) -> Pending | None:
        p = self.pending.get((topic, offset))
        if p is None or p.phase is not Phase.INFLIGHT or p.member is not member:
            return None  # late, duplicate, or for another member: nothing to do
        member.inflight -= 1
        p.member = None
        return p

    def ack(self, member: Member, ack: f.Ack) -> None:
        p = self._settle(member, ack.topic, ack.offset)
        if p is not None:
            stats = self.registry.stats
            namespace = self.topics[ack.topic].namespace
            stats.acks[namespace] += 1
            if ack.queued_us is not None and ack.handled_us is not None:
                # deliver->handled on the agent's clock; the rest of the round trip on ours
                handled = (ack.queued_us + ack.handled_us) / 1e6
                stats.observe("deliver_handled", namespace, self.label, handled)
                stats.observe("handled_ack", namespace, self.label, time.monotonic() - p.sent - handled)
            self._done(ack.topic, ack.offset)
            if self.ready or self.lagging:  # its member has room again for what waits
                self.registry.schedule(self)

    def progress(self, member: Member, topic: str, offset: int) -> None:
        """The member is still working on it: restart its ack_wait."""
        p = self.pending.get((topic, offset))
        if p is not None and p.phase is Phase.INFLIGHT and p.member is member:
            self._arm(p, time.monotonic() + self.policy.ack_wait_ms / 1000)

    def nack(self, member: Member, topic: str, offset: int, delay_ms: int) -> None:
        p = self._settle(member, topic, offset)
        if p is not None:
            self._retry(p, "nacked", delay_ms * 2 ** (p.attempt - 1))
        self.schedule()

    def undeliverable(self, member: Member, topic: str, offset: int, reason: str) -> None:
        """A member on another gateway could not carry the message (its codec): dead-letter it."""
        p = self._settle(member, topic, offset)
        if p is not None:
            self.registry.dead_letter(self, p, f"cannot be encoded for the subscriber: {reason}")
        self.schedule()

    def _retry(self, p: Pending, why: str, delay_ms: float) -> None:
        if p.attempt >= self.policy.max_deliver:
            self.registry.dead_letter(self, p, f"{why} {p.attempt} times (max_deliver)")
            return
        delay = min(delay_ms, MAX_BACKOFF_MS)
        if delay <= 0:
            p.phase = Phase.READY
            self.ready.append(p)
        else:
            p.phase = Phase.DELAYED
            self._arm(p, time.monotonic() + delay / 1000)

    def _done(self, topic: str, offset: int) -> None:
        p = self.pending.pop((topic, offset), None)
        if p is not None:
            p.phase = Phase.DONE
        state = self.topics[topic]
        state.outstanding.discard(offset)
        state.acked.add(offset)
        self.cursor_dirty = True
        # Deliveries are mostly acked in the order they were sent, which is the order
        # of their ack_wait timers: drop the settled ones from the top at once, so the
        # heap holds what is in flight rather than the last few dozen settled messages
        # of every consumer (a thousand consumers kept ~50,000 of them, and their
        # messages, alive for the garbage collector to walk).
        timers = self.timers
        while timers and not _live(timers[0]):
            heapq.heappop(timers)

    def dead_lettered(self, p: Pending) -> None:
        """The dead letter of ``p`` is durable: count ``p`` as acknowledged."""
        assert p.msg.offset is not None
        self._done(p.msg.topic, p.msg.offset)
        self.schedule()

    def tick(self, now: float) -> float | None:
        """Fire the timers due by ``now``; return when the next live one is due (None: none)."""
        timers = self.timers
        fired = False
        while timers and (timers[0][0] <= now or not _live(timers[0])):
            due, _, p = heapq.heappop(timers)
            if not _live((due, 0, p)):
                continue  # settled, or superseded by a later arming
            fired = True
            if p.phase is Phase.INFLIGHT:
                assert p.member is not None
                p.member.inflight -= 1
                p.member = None
                self._retry(p, "not acked within ack_wait", 0)
            else:  # DELAYED
                p.phase = Phase.READY
                self.ready.append(p)
        if fired:
            self.schedule()
        return timers[0][0] if timers else None

    def cursor(self) -> CursorState:
        self.cursor_dirty = False
        attempts: dict[str, dict[int, int]] = {}
        for (topic, offset), p in self.pending.items():
            if p.attempt:
                attempts.setdefault(topic, {})[offset] = p.attempt
        return CursorState(
            topics={t: s.cursor(attempts.get(t, {})) for t, s in self.topics.items() if is_durable(t)}
        )

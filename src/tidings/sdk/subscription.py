"""Subscriptions as the agent author sees them, and the messages they yield.

A ``Subscription`` outlives connections: after a reconnect the agent sends its
``sub`` again (a durable consumer resumes from its server-side cursor, a
replay reader from the last offset it saw, a live one from now, with the
missed window recorded as a ``GapInfo``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidings.protocol import frames as f
from tidings.protocol.topics import matches
from tidings.sdk.context import PARENT_TOPIC
from tidings.sdk.dedup import SeenIds
from tidings.sdk.streams import STREAM, STREAM_OPEN, StreamReader

RESUME_MARGIN_MS = 1000

if TYPE_CHECKING:
    from tidings.sdk.agent import Agent


@dataclass(frozen=True)
class GapInfo:
    """Messages this subscription may have missed (live) or that are gone (retention)."""

    topic: str
    reason: str
    first: int | None = None  # offsets, when the server knows them
    last: int | None = None
    since: float | None = None  # wall-clock window of a disconnection
    until: float | None = None


class Message:
    """A delivered message. For a durable subscription: ``ack()`` or ``nack()`` it."""

    __slots__ = ("_finished", "_received", "_settled", "_started", "_sub", "raw")

    def __init__(self, raw: f.Msg, sub: Subscription, received_ns: int = 0) -> None:
        self.raw = raw
        self._sub = sub
        self._settled = False
        #: monotonic ns: when it arrived, and when a handler started and finished it
        #: (reported in the ack, so the server can chart deliver->handled latency)
        self._received = received_ns or time.monotonic_ns()
        self._started = 0
        self._finished = 0

    topic = property(lambda self: self.raw.topic)
    id = property(lambda self: self.raw.id)
    sender = property(lambda self: self.raw.sender)
    ts = property(lambda self: self.raw.ts)
    body = property(lambda self: self.raw.body)
    offset = property(lambda self: self.raw.offset)
    parent = property(lambda self: self.raw.parent)
    lamport = property(lambda self: self.raw.lamport)
    headers = property(lambda self: self.raw.headers)
    attempt = property(lambda self: self.raw.attempt)

    @property
    def settled(self) -> bool:
        return self._settled

    def ack(self) -> None:
        """Done with it: the server will not send it again; this agent skips any redelivery."""
        if not self._settled:
            self._settled = True
            self._sub._ack(self)

    def nack(self, delay_ms: int = 0) -> None:
        """Not done: the server sends it again after ``delay_ms * 2**(attempt-1)``."""
        if not self._settled:
            self._settled = True
            self._sub._nack(self, delay_ms)

    @property
    def causally_late(self) -> bool:
        """Delivered without its parent, after the subscription's ``causal_wait`` ran out."""
        return self.id in self._sub.causally_late

    @property
    def stream_id(self) -> str | None:
        """The stream this message opens or finishes, if any."""
        headers = self.raw.headers
        return headers.get(STREAM_OPEN) or headers.get(STREAM)

    def chunks(self) -> AsyncIterator[Any]:
        """For a stream-open message: its chunks as they arrive, ending with the stream.

        Raises ``ValueError`` for a message that does not open a stream.
        """
        stream = self.raw.headers.get(STREAM_OPEN)
        reader = self._sub._readers.get(stream) if stream else None
        if reader is None:
            raise ValueError("this message does not open a stream (subscribe with streams=True)")
        return reader.chunks()

    def in_progress(self) -> None:
        """Still working on it: restart its ``ack_wait`` so it is not redelivered yet."""
        if not self._settled:
            self._sub._progress(self)

    def __repr__(self) -> str:
        return f"Message(topic={self.topic!r}, id={self.id!r}, offset={self.offset}, sender={self.sender!r})"


class Subscription:
    """Iterate it (``async for msg in sub``) or await it first to know the server has it."""

    def __init__(
        self,
        agent: Agent,
        pattern: str,
        *,
        consumer: str | None = None,
        start: f.Start | None = None,
        queue_size: int = 10_000,
        max_inflight: int | None = None,
        on_gap: Callable[[GapInfo], Any] | None = None,
        streams: bool = False,
        causal: bool = False,
        causal_wait: float = 1.0,
        echo: bool = True,
    ) -> None:
        self.agent = agent
        self.echo = echo
        self.streams = streams
        #: hold a message back until its parent (on a topic we get) was delivered
        self.causal = causal
        self.causal_wait = causal_wait
        self._held: dict[str, list[f.Msg]] = {}
        self._delivered = SeenIds(ttl=600.0, max_entries=100_000)
        #: ids of messages delivered after ``causal_wait`` without their parent
        self.causally_late = SeenIds(ttl=600.0, max_entries=10_000)
        self._readers: dict[str, StreamReader] = {}
        self.pattern = pattern
        self.consumer = consumer
        self.start = start
        self.max_inflight = max_inflight
        self.on_gap = on_gap
        self.sid: int | None = None
        self.head: int | None = None
        self.gaps: list[GapInfo] = []
        self.dropped = 0
        #: ids handled successfully, so redeliveries are not handed out again
        self.handled = SeenIds()
        #: replay readers resume per topic after the last offset seen
        self.last_offsets: dict[str, int] = {}
        #: and, for a pattern, from about the newest time seen (ms)
        self.resume_from_ms: int | None = None
        # Live subscriptions drop the oldest when full (at-most-once). Durable
        # ones are bounded by the server's max_inflight instead.
        self._queue: deque[f.Msg] = deque(maxlen=queue_size if self.live else None)
        #: (topic, offset) -> monotonic ns of arrival, for durable deliveries still queued
        self._arrived: dict[tuple[str, int], int] = {}
        self._ready = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._error: BaseException | None = None
        self._closed = False
        self.disconnected_at: float | None = None

    @property
    def live(self) -> bool:
        return self.consumer is None and self.start is None

    @property
    def durable(self) -> bool:
        return self.consumer is not None

    def sub_frame(self) -> f.Sub:
        """The ``sub`` to send on a (re)connection.

        A replay reader resumes rather than starting over: one topic after the
        last offset it saw; a ``latest`` pattern from a little before the newest
        message it saw (or before it first subscribed), since one ``from``
        cannot name an offset per topic; other patterns from their original
        start. What it saw already is skipped by offset, per topic (``_push``),
        so nothing is missed and nothing repeated; with ``latest``, a topic it
        never saw may show up to ``RESUME_MARGIN_MS`` of older messages.
        """
        start = self.start
        if self.consumer is None and start is not None and self.resume_from_ms is not None:
            single_topic = "*" not in self.pattern and not self.pattern.endswith(">")
            if single_topic and self.pattern in self.last_offsets:
                start = f.Position(offset=self.last_offsets[self.pattern])
            elif start == "latest":
                start = f.Position(time=self.resume_from_ms - RESUME_MARGIN_MS)
            # else: the original start again (earliest, an offset, a time); what was
            # seen already is skipped by offset in ``_push``.
        return f.Sub(
            topic=self.pattern,
            consumer=self.consumer,
            start=start,
            max_inflight=self.max_inflight,
            echo=self.echo,
        )

    # -- driven by the agent ------------------------------------------------

    def _subbed(self, frame: f.Subbed) -> None:
        self.sid, self.head = frame.sid, frame.head
        if self.resume_from_ms is None:
            # On the server's clock (ours may be off by any amount): the replay resumes
            # by the message times the server stamped.
            self.resume_from_ms = int(time.time() * 1000) + self.agent.clock_offset_ms
        if self.live and self.disconnected_at is not None:
            self._gap(GapInfo(self.pattern, "disconnected", since=self.disconnected_at, until=time.time()))
        self.disconnected_at = None
        self._subscribed.set()

    def _refused(self, error: BaseException) -> None:
        self._error = error
        self._subscribed.set()
        self._close()

    def _disconnected(self) -> None:
        self.sid = None
        if self.disconnected_at is None:
            self.disconnected_at = time.time()
        if self.durable:
            # Unacked deliveries come again on the next connection, to the new sid.
            self._queue.clear()
            self._arrived.clear()
            self._held.clear()

    def _chunk(self, chunk: f.StreamChunk) -> None:
        if not self.streams:
            return
        reader = self._readers.get(chunk.stream)
        if reader is None:
            if len(self._readers) >= 1000:  # the oldest streams go (finished or abandoned)
                self._readers.pop(next(iter(self._readers))).finish()
            reader = self._readers[chunk.stream] = StreamReader()
            opening = f.Msg(
                topic=chunk.topic,
                id=f"{chunk.stream}:open",
                sender=chunk.sender,
                ts=int(time.time() * 1000),
                headers={STREAM_OPEN: chunk.stream},
            )
            self._queue.append(opening)
            self._ready.set()
        reader.put(chunk.seq, chunk.data)

    def _push(self, msg: f.Msg) -> None:
        if self.causal and self._hold_back(msg):
            return
        self._enqueue(msg)
        self._release_children(msg.id)

    # -- causal hold-back -------------------------------------------------------

    def _hold_back(self, msg: f.Msg) -> bool:
        """Hold ``msg`` if its parent is on a topic this subscription gets but has not come yet."""
        parent, parent_topic = msg.parent, msg.headers.get(PARENT_TOPIC)
        if parent is None or parent_topic is None or not matches(self.pattern, parent_topic):
            return False
        if parent in self._delivered:
            return False
        self._held.setdefault(parent, []).append(msg)
        asyncio.get_running_loop().call_later(self.causal_wait, self._give_up_waiting, parent, msg)
        return True

    def _release_children(self, msg_id: str) -> None:
        for child in self._held.pop(msg_id, ()):
            self._enqueue(child)
            self._release_children(child.id)

    def _give_up_waiting(self, parent: str, msg: f.Msg) -> None:
        waiting = self._held.get(parent)
        if waiting is None or msg not in waiting:
            return
        waiting.remove(msg)
        if not waiting:
            del self._held[parent]
        self.causally_late.add(msg.id)
        self._enqueue(msg)
        self._release_children(msg.id)

    def _enqueue(self, msg: f.Msg) -> None:
        if self.causal:
            self._delivered.add(msg.id)
        stream = msg.headers.get(STREAM)
        if stream is not None and (reader := self._readers.get(stream)) is not None:
            reader.finish()  # kept (bounded) so a late ``chunks()`` still reads what came
        if msg.offset is not None and not self.durable and self.start is not None:
            if msg.offset <= self.last_offsets.get(msg.topic, 0):
                return  # a resumed reader seeing what it already had
            self.last_offsets[msg.topic] = msg.offset
            self.resume_from_ms = max(self.resume_from_ms or 0, msg.ts)
        if self._queue.maxlen is not None and len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        if self.durable and msg.offset is not None:
            self._arrived[(msg.topic, msg.offset)] = time.monotonic_ns()
        self._queue.append(msg)
        self._ready.set()

    def _gap(self, gap: GapInfo) -> None:
        self.gaps.append(gap)
        if self.on_gap is not None:
            self.on_gap(gap)

    def _close(self) -> None:
        self._closed = True
        self._ready.set()

    # -- acks ---------------------------------------------------------------

    def _key(self, msg: Message) -> str:
        return f"{msg.topic}\x00{msg.id}"

    def _ack(self, msg: Message) -> None:
        if self.durable:
            self.handled.add(self._key(msg))
            now = time.monotonic_ns()
            started = msg._started or msg._received
            queued_us = (started - msg._received) // 1000
            handled_us = ((msg._finished or now) - started) // 1000
            self.agent._settle(self, msg.raw, f.Ack, timing=(queued_us, handled_us))

    def _nack(self, msg: Message, delay_ms: int) -> None:
        if self.durable:
            self.agent._settle(self, msg.raw, f.Nack, delay_ms)

    def _progress(self, msg: Message) -> None:
        if self.durable:
            self.agent._settle(self, msg.raw, f.Progress)

    # -- the user's side ----------------------------------------------------

    def __await__(self) -> Any:
        return self._wait_subscribed().__await__()

    async def _wait_subscribed(self) -> Subscription:
        self.agent._register(self)
        await self._subscribed.wait()
        if self._error is not None:
            raise self._error
        return self

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        await self._wait_subscribed()
        while True:
            while self._queue:
                raw = self._queue.popleft()
                arrived = self._arrived.pop((raw.topic, raw.offset), 0) if raw.offset is not None else 0
                msg = Message(raw, self, arrived)
                if self.durable and self._key(msg) in self.handled:
                    # Handled before, its ack lost (a crash or a reconnect): ack again, skip.
                    msg._settled = True
                    self.agent._settle(self, raw, f.Ack)
                    continue
                yield msg
            if self._closed:
                if self._error is not None:
                    raise self._error  # the agent gave up: not a normal end
                return
            self._ready.clear()
            await self._ready.wait()

    async def unsubscribe(self) -> None:
        """Stop receiving; the iterator ends after the messages already queued."""
        await self.agent._unregister(self)
        self._close()

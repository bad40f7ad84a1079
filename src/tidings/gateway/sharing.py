"""Durable consumers shared by the gateways of a shared engine (NATS).

A durable consumer (agent, name, pattern) has one owner among the gateways:
the gateway that claimed it first (``Peers.claim``), or the one that took it
over when its owner was gone. The owner runs the ``Consumer`` as if it were
alone (cursor, what is in flight, attempts, ack_wait and nack timers,
max_inflight, dead letters), so redelivery and ``max_deliver`` count across
gateways and the messages are split between all members wherever they connect.

A member connected to another gateway joins through a ``Proxy`` there: the
proxy sends ``Join`` to the owner, which attaches a ``RemoteMember`` standing
for it. Deliveries travel owner -> proxy as ``Deliver`` notes; acks, nacks and
progress proxy -> owner as ``Settle`` notes. Notes go at most once (``Peers.send``):
a lost delivery or ack is repaired by ack_wait, as a lost frame would be.

When an owner is gone, each proxy of its consumers joins again: one gateway's
claim wins and resumes from the saved cursor (what was in flight is delivered
again, its attempts counted from the cursor). When a proxy's gateway is gone,
the owner detaches the members it stood for, and their in-flight messages go
to the other members.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import TYPE_CHECKING, Literal

import msgspec

from tidings.engine.base import Peers
from tidings.errors import RetryLater, StorageError, TidingsError
from tidings.gateway.notes import (
    Deliver,
    Dropped,
    GapNote,
    Join,
    Joined,
    Leave,
    Note,
    Refused,
    Settle,
    TookOver,
)
from tidings.gateway.subscription import Subscription
from tidings.protocol import frames as f

if TYPE_CHECKING:
    from tidings.gateway.consumer import Consumer
    from tidings.gateway.consumers import Consumers

log = logging.getLogger("tidings.gateway")

#: how long a Join waits for the owner's answer before the owner is asked again
ANSWER_S = 2.0
#: how long a member keeps trying to join before its ``sub`` is answered ``retry_later``
JOIN_FOR_S = 10.0
#: members that left while their join was being accepted, remembered this long (by count)
LEFT_MEMORY = 1024
#: gateways taken for gone whose consumers this one took over, remembered this long (by
#: count): a gateway that really died never comes back (a restart has a new id), so the
#: oldest are forgotten rather than kept for ever; one that comes back after that many
#: others were taken for gone is only told at the takeover itself
TAKEN_MEMORY = 256


class RemoteMember:
    """On the owner: a member connected to another gateway (``Consumer`` delivers to it)."""

    __slots__ = ("consumer", "gateway", "id", "inflight", "max_inflight", "sharing")

    write_paused = False  # its gateway's connection is bounded by max_inflight instead
    pending_bytes = 0

    def __init__(self, sharing: Sharing, consumer: Consumer, gateway: str, member: str) -> None:
        self.sharing = sharing
        self.consumer = consumer
        self.gateway = gateway
        self.id = member
        self.inflight = 0
        self.max_inflight = 0

    def deliver(self, msg: f.Msg, attempt: int) -> None:
        self.sharing.send(self.gateway, Deliver(self.sharing.me, self.consumer.key, self.id, msg, attempt))

    def deliver_gap(self, topic: str, first: int, last: int, reason: str) -> None:
        note = GapNote(self.sharing.me, self.consumer.key, self.id, topic, first, last, reason)
        self.sharing.send(self.gateway, note)


class Proxy:
    """On a member's gateway: the consumer it joined, owned by another gateway.

    It stands where a ``Consumer`` would for one subscription (``sub.consumer``):
    the connection's acks, nacks and progress go to the owner from here.
    """

    acks = True

    def __init__(self, sharing: Sharing, member: Subscription, key: str, sub: f.Sub) -> None:
        self.sharing = sharing
        self.member = member
        self.key = key
        self.sub = sub
        self.id = f"{sharing.me}.{next(sharing.ids)}"
        self.priority = member.pattern.startswith("ctl/")
        self.owner = ""
        #: the owner has answered ``joined`` (a proxy still joining is not rejoined)
        self.joined = False
        self.left = False
        #: deliveries that arrived before ``subbed`` went out (None once it has)
        self._early: list[Deliver | GapNote] | None = []

    def schedule(self) -> None:
        """Nothing to pump here: the owner delivers (within the member's max_inflight)."""

    def opened(self) -> None:
        early, self._early = self._early, None
        for note in early or ():
            self.received(note)

    def received(self, note: Deliver | GapNote) -> None:
        if self._early is not None:
            self._early.append(note)
        elif isinstance(note, GapNote):
            self.member.deliver_gap(note.topic, note.first, note.last, note.reason)
        else:
            try:
                self.member.deliver(note.msg, note.attempt)
            except (TypeError, ValueError, OverflowError) as exc:
                assert note.msg.offset is not None
                self._settle("undeliverable", note.msg.topic, note.msg.offset, reason=str(exc))

    def ack(self, member: Subscription, ack: f.Ack) -> None:
        self._settle("ack", ack.topic, ack.offset, queued_us=ack.queued_us, handled_us=ack.handled_us)

    def progress(self, member: Subscription, topic: str, offset: int) -> None:
        self._settle("progress", topic, offset)

    def nack(self, member: Subscription, topic: str, offset: int, delay_ms: int) -> None:
        self._settle("nack", topic, offset, delay_ms=delay_ms)

    def _settle(
        self,
        kind: Literal["ack", "nack", "progress", "undeliverable"],
        topic: str,
        offset: int,
        **more: int | str | None,
    ) -> None:
        note = Settle(self.sharing.me, self.key, self.id, kind, topic, offset)
        self.sharing.send(self.owner, msgspec.structs.replace(note, **more))

    def detach(self) -> None:
        self.left = True
        self.sharing.proxies.pop(self.id, None)
        if self.owner:
            self.sharing.send(self.owner, Leave(self.sharing.me, self.key, self.id))


class Sharing:
    """This gateway's side of every shared consumer: proxies of members here, remote members there."""

    def __init__(self, consumers: Consumers, peers: Peers) -> None:
        self.consumers = consumers
        self.peers = peers
        self.me = peers.gateway_id
        self.ids = itertools.count(1)
        #: members here of consumers owned elsewhere, by member id
        self.proxies: dict[str, Proxy] = {}
        #: members elsewhere of consumers owned here, by member id
        self.remote: dict[str, RemoteMember] = {}
        self._answers: dict[str, asyncio.Future[Joined | Refused]] = {}
        self._releasing: dict[str, asyncio.Future[None]] = {}
        #: members whose ``leave`` came before their ``join`` was accepted (insertion-ordered)
        self._left: dict[str, None] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(Note).decode
        #: gateway taken for gone -> consumers this gateway took over from it (oldest first)
        self._taken: dict[str, set[str]] = {}
        peers.on_message(self._on_note)
        peers.on_gone(self._on_gone)
        peers.on_back(self._on_back)
        peers.on_taken_over(self._on_taken_over)

    async def stop(self) -> None:
        """Let the members on other gateways go (their gateways join them elsewhere once this
        one has said goodbye), so nothing is delivered after the final cursor save."""
        for remote in list(self.remote.values()):
            del self.remote[remote.id]
            self.consumers.leave(remote)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def send(self, gateway: str, note: Note) -> None:
        self.peers.send(gateway, self._encode(note))

    def _spawn(self, work: asyncio.Future[None]) -> None:
        self._tasks.add(work)
        work.add_done_callback(self._tasks.discard)

    # -- ownership ----------------------------------------------------------

    async def claim(self, key: str) -> str:
        """The owner of consumer ``key``: this gateway if no live gateway owns it."""
        releasing = self._releasing.get(key)
        if releasing is not None:  # its release must not land after this claim
            await asyncio.shield(releasing)
        return await self.peers.claim(key)

    def release(self, key: str) -> None:
        """This gateway let consumer ``key`` go (its cursor is saved): another may own it."""
        done = asyncio.ensure_future(self.peers.release(key))
        self._releasing[key] = done

        def forget(_: object) -> None:
            if self._releasing.get(key) is done:
                del self._releasing[key]

        done.add_done_callback(forget)

    # -- a member here joins --------------------------------------------------

    async def join(self, member: Subscription, sub: f.Sub, key: str) -> Proxy | None:
        """Join ``member`` to consumer ``key`` through its owner; None when this gateway owns it.

        Raises ``RetryLater`` when no owner answered for ``JOIN_FOR_S``.
        """
        proxy = Proxy(self, member, key, sub)
        if await self._join(proxy):
            return None
        asyncio.get_running_loop().call_soon(proxy.opened)  # after the connection sends subbed
        return proxy

    async def _join(self, proxy: Proxy) -> bool:
        """Find the owner and join it; True when this gateway is (now) the owner."""
        deadline = time.monotonic() + JOIN_FOR_S
        while True:
            if proxy.key in self.consumers.by_key:
                return True
            owner = await self.claim(proxy.key)
            if owner == self.me:
                return True
            proxy.owner = owner
            self.proxies[proxy.id] = proxy  # deliveries may follow the answer at once
            answer: Joined | Refused | None = None
            self._answers[proxy.id] = waiting = asyncio.get_running_loop().create_future()
            sub = proxy.sub
            self.send(
                owner,
                Join(
                    self.me,
                    proxy.key,
                    proxy.id,
                    proxy.member.pattern,
                    sub.max_inflight,
                    sub.ack_wait_ms,
                    sub.start,
                    sub.echo,
                ),
            )
            with contextlib.suppress(TimeoutError):
                answer = await asyncio.wait_for(waiting, ANSWER_S)
            self._answers.pop(proxy.id, None)
            if isinstance(answer, Joined):
                if proxy.left:  # its connection went while it joined
                    self.send(owner, Leave(self.me, proxy.key, proxy.id))
                proxy.joined = not proxy.left
                return False
            self.proxies.pop(proxy.id, None)
            if answer is None:  # it may yet accept the join: undo that if it does
                self.send(owner, Leave(self.me, proxy.key, proxy.id))
            proxy.id = f"{self.me}.{next(self.ids)}"  # the next try is a new member, not undone by that
            if proxy.left:
                return False
            why = answer.reason if answer is not None else f"gateway {owner} did not answer"
            if time.monotonic() >= deadline:
                raise RetryLater(f"joining consumer {proxy.sub.consumer!r}: {why}", 1000)
            log.info("joining consumer %r again: %s", proxy.sub.consumer, why)
            await asyncio.sleep(0.2)

    async def _rejoin(self, proxy: Proxy) -> None:
        """The owner of ``proxy``'s consumer is gone: join whoever owns it now (maybe this gateway)."""
        proxy.joined = False
        while not proxy.left:
            try:
                if not await self._join(proxy):
                    return
                if proxy.left:
                    return
                self.proxies.pop(proxy.id, None)
                consumer = await self.consumers.durable(proxy.key, proxy.member.pattern, proxy.sub.start)
                proxy.member.consumer = consumer
                self.consumers.admit(consumer, proxy.member, proxy.sub)
                if proxy.left:  # its connection went meanwhile: let the consumer idle out
                    self.consumers.leave(proxy.member)
                return
            except (RetryLater, StorageError) as exc:
                log.warning("consumer %r lost its owner and could not be joined again: %s", proxy.key, exc)
                await asyncio.sleep(1.0)

    # -- notes from other gateways ----------------------------------------------

    def _on_note(self, data: bytes) -> None:
        note = self._decode(data)
        if isinstance(note, Settle):
            self._on_settle(note)
        elif isinstance(note, Deliver | GapNote):
            proxy = self.proxies.get(note.member)
            if proxy is None or proxy.owner != note.sender:  # it left, or moved on: tell the sender
                self.send(note.sender, Leave(self.me, note.key, note.member))
            else:
                proxy.received(note)
        elif isinstance(note, Joined | Refused):
            waiting = self._answers.get(note.member)
            if waiting is not None and not waiting.done():
                waiting.set_result(note)
        elif isinstance(note, Join):
            self._spawn(asyncio.ensure_future(self._accept(note)))
        elif isinstance(note, TookOver):
            self._hand_over(note.key, note.sender)
        elif isinstance(note, Dropped):
            proxy = self.proxies.get(note.member)
            if proxy is not None and proxy.owner == note.sender and proxy.joined:
                self._spawn(asyncio.ensure_future(self._rejoin(proxy)))
        else:  # Leave
            remote = self.remote.pop(note.member, None)
            if remote is not None:
                self.consumers.leave(remote)
            else:  # maybe its join is still being accepted
                self._left[note.member] = None
                if len(self._left) > LEFT_MEMORY:
                    del self._left[next(iter(self._left))]

    async def _accept(self, join: Join) -> None:
        """A member on another gateway joins a consumer: attach it if this gateway owns it."""
        known = self.remote.get(join.member)
        if known is not None:  # it asked again (our answer was late or lost)
            self.send(join.sender, Joined(self.me, join.key, join.member))
            return
        try:
            consumer = self.consumers.by_key.get(join.key)
            if consumer is None:
                owner = await self.claim(join.key)
                if owner != self.me:
                    self.send(join.sender, Refused(self.me, join.key, join.member, owner, f"{owner} owns it"))
                    return
                consumer = await self.consumers.durable(join.key, join.pattern, join.start)
        except TidingsError as exc:
            self.send(join.sender, Refused(self.me, join.key, join.member, "", str(exc)))
            return
        if join.member in self.remote:
            return
        remote = RemoteMember(self, consumer, join.sender, join.member)
        sub = f.Sub(
            topic=join.pattern, max_inflight=join.max_inflight, ack_wait_ms=join.ack_wait_ms, echo=join.echo
        )
        self.consumers.admit(consumer, remote, sub)
        gave_up = self._left.pop(join.member, False) is None  # it stopped waiting for our answer
        if gave_up or not self.peers.alive(join.sender):  # or its gateway went meanwhile
            self.consumers.leave(remote)  # the consumer idles out if nobody else is here
            return
        self.remote[join.member] = remote
        self.send(join.sender, Joined(self.me, join.key, join.member))

    def _on_settle(self, note: Settle) -> None:
        remote = self.remote.get(note.member)
        if remote is None:  # let go here (its gateway was taken for gone?): it should join again
            self.send(note.sender, Dropped(self.me, note.key, note.member))
            return
        consumer = remote.consumer
        if note.kind == "ack":
            consumer.ack(remote, f.Ack(0, note.topic, note.offset, note.queued_us, note.handled_us))
        elif note.kind == "nack":
            consumer.nack(remote, note.topic, note.offset, note.delay_ms)
        elif note.kind == "progress":
            consumer.progress(remote, note.topic, note.offset)
        else:
            consumer.undeliverable(remote, note.topic, note.offset, note.reason)

    # -- a takeover while the previous owner still ran ----------------------------

    def _on_taken_over(self, key: str, previous: str) -> None:
        """This gateway took ``key`` over from ``previous``, taken for gone: if it is only slow,
        it must stop running the consumer. Told now, and again when it is heard from."""
        if previous:
            taken = self._taken.pop(previous, set())  # re-inserted: the newest stays longest
            taken.add(key)
            self._taken[previous] = taken
            if len(self._taken) > TAKEN_MEMORY:
                del self._taken[next(iter(self._taken))]
            self.send(previous, TookOver(self.me, key))

    def _on_back(self, gateway: str) -> None:
        for key in self._taken.pop(gateway, ()):
            if key in self.consumers.by_key:
                self.send(gateway, TookOver(self.me, key))

    def _hand_over(self, key: str, owner: str) -> None:
        """``owner`` took consumer ``key`` over: stop running it here (its cursor is the new
        owner's now, so it is not saved) and join its members to the new owner."""
        consumer = self.consumers.by_key.get(key)
        if consumer is None:
            return
        log.warning("gateway %s runs consumer %r now (this one was taken for gone): handing over", owner, key)
        members = list(consumer.members)
        self.consumers.drop(consumer)
        for member in members:
            if isinstance(member, RemoteMember):
                self.remote.pop(member.id, None)
                self.send(member.gateway, Dropped(self.me, key, member.id))
            elif isinstance(member, Subscription):
                sub = f.Sub(
                    topic=member.pattern,
                    consumer=consumer.name,
                    max_inflight=member.max_inflight,
                    ack_wait_ms=consumer.policy.ack_wait_ms,
                    echo=consumer.skip_sender is None,
                )
                proxy = Proxy(self, member, key, sub)
                proxy.owner = owner
                member.consumer, member.inflight = proxy, 0
                self._spawn(asyncio.ensure_future(self._rejoin(proxy)))

    def _on_gone(self, gateway: str) -> None:
        for remote in [r for r in self.remote.values() if r.gateway == gateway]:
            del self.remote[remote.id]
            self.consumers.leave(remote)
            # If it was only silent for a while, its proxy joins again when this arrives.
            self.send(gateway, Dropped(self.me, remote.consumer.key, remote.id))
        for proxy in [p for p in self.proxies.values() if p.owner == gateway and p.joined]:
            self._spawn(asyncio.ensure_future(self._rejoin(proxy)))

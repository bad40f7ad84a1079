"""The other gateways over NATS: who is alive, who owns which consumer, and messages between them.

- **Liveness**: every gateway publishes its id on ``tidings.gw.alive`` every
  ``beat_s``; a gateway not heard from for ``gone_s`` is gone, and one that says
  goodbye (``tidings.gw.bye``, on a clean stop) is gone at once. A gateway
  answers a newcomer's first heartbeat with its own, so a gateway that just
  started knows its live peers within a round trip; until ``2 * beat_s`` after
  its start it takes a peer it has not heard of as alive.
- **Ownership**: the key-value bucket ``tidings_owners`` maps a consumer to the
  gateway that owns it. A claim creates the key, or takes it over with a
  compare-and-set from a gateway that is gone; no renewals (liveness is the
  heartbeat's job), and the owner deletes the key when it lets the consumer go.
- **Messages** to a gateway go to the core NATS subject ``tidings.gw.to.<id>``,
  published by one task in order, at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from nats.aio.msg import Msg as NatsMsg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tidings.engine.base import Peers
from tidings.engine.nats.calls import REQUEST_TIMEOUT_S, kv_key, retry
from tidings.errors import RetryLater, StorageError

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger("tidings.engine.nats")

OWNER_BUCKET = "tidings_owners"
ALIVE_SUBJECT = "tidings.gw.alive"
BYE_SUBJECT = "tidings.gw.bye"
INBOX_PREFIX = "tidings.gw.to."
BEAT_S = 0.5
GONE_S = 3.0
#: compare-and-set rounds a claim tries before answering ``retry_later``
CLAIM_ROUNDS = 8
T = TypeVar("T")


class _Conflict(Exception):
    """Another gateway wrote the key first."""


class NatsPeers(Peers):
    def __init__(
        self, nc: Client, gateway_id: str, replicas: int, beat_s: float = BEAT_S, gone_s: float = GONE_S
    ) -> None:
        self.nc = nc
        self.gateway_id = gateway_id
        self.replicas = replicas
        self.beat_s = min(beat_s, gone_s / 4)
        self.gone_s = gone_s
        self._kv: KeyValue | None = None
        self._seen: dict[str, float] = {}
        self._gone: set[str] = set()
        self._started = time.monotonic()
        #: consumers this gateway owns: name -> revision of its claim
        self._claims: dict[str, int] = {}
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._message_callbacks: list[Callable[[bytes], None]] = []
        self._gone_callbacks: list[Callable[[str], None]] = []
        self._back_callbacks: list[Callable[[str], None]] = []
        self._takeover_callbacks: list[Callable[[str, str], None]] = []
        self._subs: list[NatsSubscription] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        js = self.nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        self._kv = await retry(
            f"create bucket {OWNER_BUCKET}",
            lambda: js.create_key_value(bucket=OWNER_BUCKET, history=1, replicas=self.replicas),
            for_s=60.0,
        )
        self._subs = [
            await self.nc.subscribe(ALIVE_SUBJECT, cb=self._on_alive),
            await self.nc.subscribe(BYE_SUBJECT, cb=self._on_bye),
            await self.nc.subscribe(INBOX_PREFIX + self.gateway_id, cb=self._on_message),
        ]
        self._started = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._beat(), name="tidings-peers-beat"),
            asyncio.create_task(self._send(), name="tidings-peers-send"),
        ]

    async def stop(self) -> None:
        """Say goodbye (peers take over at once) and give up every claim."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        with contextlib.suppress(NatsError, OSError, TimeoutError):
            while not self._outbox.empty():  # what the consumers said last (leaves, acks)
                subject, data = self._outbox.get_nowait()
                await self.nc.publish(subject, data)
            await self.nc.publish(BYE_SUBJECT, self.gateway_id.encode())
            await self.nc.flush(timeout=int(REQUEST_TIMEOUT_S))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(self.release(name) for name in list(self._claims))), REQUEST_TIMEOUT_S
            )
        for sub in self._subs:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    # -- liveness -----------------------------------------------------------

    def alive(self, gateway: str) -> bool:
        if gateway == self.gateway_id:
            return True
        if gateway in self._gone:
            return False
        now = time.monotonic()
        seen = self._seen.get(gateway)
        if seen is None:  # not heard of: alive only while this gateway may not have heard yet
            return now - self._started < 2 * self.beat_s
        return now - seen < self.gone_s

    async def _beat(self) -> None:
        me = self.gateway_id.encode()
        last = time.monotonic()
        while True:
            with contextlib.suppress(NatsError, OSError):
                await self.nc.publish(ALIVE_SUBJECT, me)
            now = time.monotonic()
            if now - last > self.gone_s / 2:
                # This gateway itself stalled (a pause, a reconnect): the others' heartbeats
                # may still wait unread. Judge them again after a fair chance to be heard.
                self._seen = dict.fromkeys(self._seen, now)
            for gateway, seen in list(self._seen.items()):
                if now - seen >= self.gone_s:
                    self._went(gateway, f"not heard from for {now - seen:.1f} s")
            last = now
            await asyncio.sleep(self.beat_s)

    async def _on_alive(self, raw: NatsMsg) -> None:
        gateway = raw.data.decode()
        if gateway == self.gateway_id:
            return
        if gateway not in self._seen:  # a newcomer: tell it at once that this gateway is here
            back = gateway in self._gone
            self._gone.discard(gateway)
            self._seen[gateway] = time.monotonic()
            if back:
                log.info("gateway %s is back", gateway)
                self._tell(self._back_callbacks, gateway)
            with contextlib.suppress(NatsError, OSError):
                await self.nc.publish(ALIVE_SUBJECT, self.gateway_id.encode())
        self._seen[gateway] = time.monotonic()

    async def _on_bye(self, raw: NatsMsg) -> None:
        gateway = raw.data.decode()
        if gateway != self.gateway_id:
            self._went(gateway, "it stopped")

    def _went(self, gateway: str, why: str) -> None:
        self._seen.pop(gateway, None)
        if gateway in self._gone:
            return
        self._gone.add(gateway)
        log.info("gateway %s is gone: %s", gateway, why)
        self._tell(self._gone_callbacks, gateway)

    @staticmethod
    def _tell(callbacks: list[Callable[..., None]], *args: str) -> None:
        for callback in callbacks:
            try:
                callback(*args)
            except Exception:
                log.exception("handling news of gateway %s failed", args[-1])

    def on_gone(self, callback: Callable[[str], None]) -> None:
        self._gone_callbacks.append(callback)

    def on_back(self, callback: Callable[[str], None]) -> None:
        self._back_callbacks.append(callback)

    def on_taken_over(self, callback: Callable[[str, str], None]) -> None:
        self._takeover_callbacks.append(callback)

    # -- ownership ----------------------------------------------------------

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "start() first"
        return self._kv

    async def claim(self, name: str) -> str:
        key = kv_key(name)
        for _ in range(CLAIM_ROUNDS):
            try:
                self._claims[name] = await self._write(
                    "claim a consumer", lambda: self.kv.create(key, self._me)
                )
                return self.gateway_id
            except _Conflict:
                pass
            try:
                entry = await retry("look up a consumer's owner", lambda: self.kv.get(key))
            except StorageError:  # deleted since (the key-value "not found" is an API error)
                continue
            owner = (entry.value or b"").decode()
            if owner == self.gateway_id:
                self._claims[name] = entry.revision or 0
                return owner
            if owner and self.alive(owner):
                return owner
            try:
                self._claims[name] = await self._take_over(key, entry.revision or 0)
                log.info("took over consumer %r from gateway %s, which is gone", name, owner)
                self._tell(self._takeover_callbacks, name, owner)
                return self.gateway_id
            except _Conflict:
                continue
        raise RetryLater(f"the owner of consumer {name!r} kept changing", 500)

    async def release(self, name: str) -> None:
        revision = self._claims.pop(name, None)
        if revision is None:
            return
        key = kv_key(name)
        with contextlib.suppress(_Conflict, RetryLater, StorageError):  # taken over meanwhile, or left
            await self._write("release a consumer", lambda: self.kv.delete(key, last=revision))

    async def _take_over(self, key: str, revision: int) -> int:
        return await self._write("take over a consumer", lambda: self.kv.update(key, self._me, last=revision))

    @property
    def _me(self) -> bytes:
        return self.gateway_id.encode()

    @staticmethod
    async def _write(what: str, call: Callable[[], Awaitable[T]]) -> T:
        async def once() -> T:
            try:
                return await call()
            except (KeyWrongLastSequenceError, KeyNotFoundError) as exc:
                raise _Conflict(str(exc)) from None

        return await retry(what, once)

    # -- messages -----------------------------------------------------------

    def send(self, gateway: str, data: bytes) -> None:
        self._outbox.put_nowait((INBOX_PREFIX + gateway, data))

    async def _send(self) -> None:
        while True:
            subject, data = await self._outbox.get()
            try:
                await self.nc.publish(subject, data)
            except (NatsError, OSError) as exc:  # at most once: ack_wait repairs it
                log.warning("a message to gateway %s was lost: %r", subject.removeprefix(INBOX_PREFIX), exc)

    def on_message(self, callback: Callable[[bytes], None]) -> None:
        self._message_callbacks.append(callback)

    async def _on_message(self, raw: NatsMsg) -> None:
        for callback in self._message_callbacks:
            try:
                callback(raw.data)
            except Exception:
                log.exception("a message from another gateway could not be handled")

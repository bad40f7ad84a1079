"""Following one JetStream stream, in sequence order, with nothing missed or repeated."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from nats.aio.msg import Msg as NatsMsg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.errors import Error as NatsError

from tidings.engine.nats.calls import retry
from tidings.errors import RetryLater, StorageError

if TYPE_CHECKING:
    from tidings.engine.nats.engine import NatsEngine

log = logging.getLogger("tidings.engine.nats")

HEARTBEAT_S = 1.0

#: ``deliver(message, stream sequence, ns since the epoch when the stream stored it)``
Deliver = Callable[[NatsMsg, int, int], None]


class Tail:
    """Follows one stream in sequence order from where it stood, and delivers each message.

    An ephemeral, in-memory, R1 push consumer with flow control and heartbeats.
    When heartbeats stop (its node died) or a consumer sequence is skipped, it
    is replaced by a new one starting after the last sequence announced, so
    every message is announced exactly once and in order.
    """

    def __init__(self, engine: NatsEngine, stream: str, last: int, deliver: Deliver) -> None:
        self.engine = engine
        self.stream = stream
        self.deliver = deliver
        self.last = last
        self._cseq = 0
        self._seen = time.monotonic()
        self._sub: NatsSubscription | None = None
        self._consumer = ""
        self._watch: asyncio.Task[None] | None = None
        self._resetting = False
        self._generation = 0
        self._resets: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        await self._create()
        self._watch = asyncio.create_task(self._watchdog(), name=f"tidings-tail-{self.stream}")

    async def stop(self) -> None:
        for task in [self._watch, *self._resets]:
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()

    async def _create(self) -> None:
        nc = self.engine.nc
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
        inbox = nc.new_inbox()
        self._sub = await nc.subscribe(inbox, cb=self._on_msg)
        self._cseq = 0
        self._generation += 1
        self._consumer = f"tail-{uuid.uuid4().hex[:16]}"
        config = {
            "name": self._consumer,
            "deliver_subject": inbox,
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": self.last + 1,
            "ack_policy": "none",
            "max_deliver": 1,
            "flow_control": True,
            "idle_heartbeat": int(HEARTBEAT_S * 1e9),
            "mem_storage": True,
            "num_replicas": 1,
            "inactive_threshold": int(5 * HEARTBEAT_S * 1e9),
        }
        request = json.dumps({"stream_name": self.stream, "config": config}).encode()
        call = f"CONSUMER.CREATE.{self.stream}.{self._consumer}"
        await retry(f"follow {self.stream}", lambda: self.engine._api(call, request), for_s=60.0)
        self._seen = time.monotonic()

    async def _on_msg(self, raw: NatsMsg) -> None:
        self._seen = time.monotonic()
        headers = raw.headers or {}
        if headers.get("Status") == "100":  # heartbeat or flow control
            if raw.reply:
                await self.engine.nc.publish(raw.reply)
            last_consumer = headers.get("Nats-Last-Consumer")
            if last_consumer is not None and int(last_consumer) != self._cseq and not self._resetting:
                self._reset_soon("heartbeat shows a missed message")
            return
        if not raw.reply.startswith("$JS.ACK.") or self._resetting:
            return
        tokens = raw.reply.split(".")
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
        sseq, cseq, stored_ns = int(tokens[-4]), int(tokens[-3]), int(tokens[-2])
        if tokens[3] != self._consumer:
            return  # a late message of a replaced consumer
        if cseq != self._cseq + 1:
            self._reset_soon(f"consumer sequence {cseq} after {self._cseq}")
            return
        self._cseq = cseq
        if sseq <= self.last:
            return
        self.last = sseq
        self.deliver(raw, sseq, stored_ns)

    def _reset_soon(self, why: str) -> None:
        """Replace the consumer, from a task of its own: the message callback's task
        is cancelled when its subscription is replaced."""
        if not self._resetting:
            self._resetting = True
            self._resets.add(task := asyncio.ensure_future(self._reset(why)))
            task.add_done_callback(self._resets.discard)

    async def _reset(self, why: str) -> None:
        self._resetting = True
        log.info("following %s again after %s: %s", self.stream, self.last, why)
        try:
            await self._create()
        except (RetryLater, StorageError) as exc:
            log.warning("following %s: %s; will try again", self.stream, exc)
        finally:
            self._resetting = False

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if time.monotonic() - self._seen > 3 * HEARTBEAT_S and not self._resetting:
                await self._reset("no heartbeat")

"""Running a decorated handler over a subscription, with ack semantics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tidings.protocol import frames as f
from tidings.sdk.context import current_message
from tidings.sdk.subscription import Message, Subscription
from tidings.tracing import TRACEPARENT

log = logging.getLogger("tidings.sdk")


@dataclass
class HandlerSpec:
    fn: Callable[[Message], Awaitable[Any]]
    pattern: str
    consumer: str | None
    start: f.Start | int | None
    concurrency: int
    nack_delay_ms: int
    #: data handlers wait while the agent is paused; the command handler never does
    gated: bool = True
    #: False: the agent's own messages are not delivered to it
    echo: bool = True


class Work:
    """The messages an agent's handlers are working on: what ``cancel`` and ``pause`` act on."""

    def __init__(self) -> None:
        self.running: dict[asyncio.Task[None], Message] = {}
        self.resumed = asyncio.Event()
        self.resumed.set()
        self._cancelled: set[asyncio.Task[None]] = set()

    def cancel(self, *, topic: str | None = None, message_id: str | None = None) -> int:
        """Cancel the handlers working on messages of ``topic`` or on message ``message_id``.

        A cancelled message is acked (the work was called off; redelivering it
        would start it again). Returns how many handlers were cancelled.
        """
        hit = [
            task
            for task, msg in self.running.items()
            if (topic is not None and msg.topic == topic) or (message_id is not None and msg.id == message_id)
        ]
        for task in hit:
            self._cancelled.add(task)
            task.cancel()
        return len(hit)

    def called_off(self, task: asyncio.Task[None]) -> bool:
        return task in self._cancelled

    def start(self, spec: HandlerSpec, msg: Message) -> asyncio.Task[None]:
        task = asyncio.create_task(handle_one(spec, msg, self))
        self.running[task] = msg
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        self._cancelled.discard(task)


async def handle_one(spec: HandlerSpec, msg: Message, work: Work | None = None) -> None:
    """Run the handler for one message: ack on success, nack on an exception."""
    token = current_message.set(msg.raw)
    msg._started = time.monotonic_ns()
    tracer = msg._sub.agent.tracer
    try:
        with tracer.current(
            f"handle {msg.topic}",
            msg.headers.get(TRACEPARENT),
            "CONSUMER",
            **{"messaging.destination": msg.topic, "messaging.message.id": msg.id},
        ):
            await spec.fn(msg)
        msg._finished = time.monotonic_ns()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if work is None or task is None or not work.called_off(task):
            raise
        task.uncancel()
        log.info("handler for %s: %s was cancelled by a command", spec.pattern, msg.id)
        msg.ack()
    except Exception:
        log.exception("handler for %s failed on %s (attempt %d)", spec.pattern, msg.id, msg.attempt)
        msg.nack(spec.nack_delay_ms)
    else:
        msg.ack()
    finally:
        current_message.reset(token)


async def run_handler(spec: HandlerSpec, sub: Subscription, work: Work) -> None:
    """Feed ``sub``'s messages to the handler, at most ``spec.concurrency`` at once."""
    slots = asyncio.Semaphore(max(spec.concurrency, 1))
    running: set[asyncio.Task[None]] = set()

    def release(task: asyncio.Task[None]) -> None:
        running.discard(task)
        slots.release()

    try:
        async for msg in sub:
            await slots.acquire()
            if spec.gated:
                await work.resumed.wait()
            task = work.start(spec, msg)
            running.add(task)
            task.add_done_callback(release)
    finally:
        for task in running:
            task.cancel()

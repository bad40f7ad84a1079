"""Running a decorated handler over a subscription, with ack semantics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tidings.protocol import frames as f
from tidings.sdk.context import current_message
from tidings.sdk.subscription import Message, Subscription

log = logging.getLogger("tidings.sdk")


@dataclass
class HandlerSpec:
    fn: Callable[[Message], Awaitable[Any]]
    pattern: str
    consumer: str | None
    start: f.Start | int | None
    concurrency: int
    nack_delay_ms: int


async def handle_one(spec: HandlerSpec, msg: Message) -> None:
    """Run the handler for one message: ack on success, nack on an exception."""
    token = current_message.set(msg.raw)
    try:
        await spec.fn(msg)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("handler for %s failed on %s (attempt %d)", spec.pattern, msg.id, msg.attempt)
        msg.nack(spec.nack_delay_ms)
    else:
        msg.ack()
    finally:
        current_message.reset(token)


async def run_handler(spec: HandlerSpec, sub: Subscription) -> None:
    if spec.concurrency <= 1:
        async for msg in sub:
            await handle_one(spec, msg)
        return
    slots = asyncio.Semaphore(spec.concurrency)
    running: set[asyncio.Task[None]] = set()

    async def guarded(msg: Message) -> None:
        try:
            await handle_one(spec, msg)
        finally:
            slots.release()

    try:
        async for msg in sub:
            await slots.acquire()
            task = asyncio.create_task(guarded(msg))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        for task in running:
            task.cancel()

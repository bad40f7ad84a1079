"""Publishes not yet acknowledged, bounded in messages and bytes.

Every publish waits here from the moment it is made until its ``puback``
arrives: while connected it is in flight, while disconnected it waits, and
after a reconnect it is sent again with the same id (so the server stores it
once). When the outbox is full, ``put`` waits for room or raises ``BufferFull``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Literal

from tidings.errors import TidingsError
from tidings.protocol import frames as f


class BufferFull(TidingsError):
    """The local publish buffer is full (``when_full="raise"``); nothing was queued."""

    code = "buffer_full"
    retriable = True


class Outgoing:
    __slots__ = ("frame", "future", "size")

    def __init__(self, frame: f.Pub, size: int, future: asyncio.Future[f.Puback]) -> None:
        self.frame = frame
        self.size = size
        self.future = future


class Outbox:
    def __init__(
        self,
        max_messages: int = 10_000,
        max_bytes: int = 16 * 1024 * 1024,
        when_full: Literal["wait", "raise"] = "wait",
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.items: OrderedDict[str, Outgoing] = OrderedDict()
        self.bytes = 0
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return len(self.items)

    def _full(self, size: int) -> bool:
        if not self.items:
            return False  # one message always fits, however large
        return len(self.items) >= self.max_messages or self.bytes + size > self.max_bytes

    async def put(self, frame: f.Pub, size: int) -> Outgoing:
        """Queue ``frame``; wait for room (or raise ``BufferFull``) when full."""
        while self._full(size):
            if self.when_full == "raise":
                raise BufferFull(
                    f"publish buffer full ({len(self.items)} messages, {self.bytes} bytes): not queued"
                )
            self._room.clear()
            await self._room.wait()
        assert frame.id is not None
        out = Outgoing(frame, size, asyncio.get_running_loop().create_future())
        self.items[frame.id] = out
        self.bytes += size
        return out

    def settle(self, msg_id: str, result: f.Puback | None = None, error: BaseException | None = None) -> None:
        """Take ``msg_id`` out, resolving its future with ``result`` or ``error``."""
        out = self.items.pop(msg_id, None)
        if out is None:
            return
        self.bytes -= out.size
        if not out.future.done():
            if error is not None:
                out.future.set_exception(error)
            else:
                out.future.set_result(result)  # type: ignore[arg-type]
        self._room.set()

    def pending(self) -> list[Outgoing]:
        return list(self.items.values())

    def fail_all(self, error: BaseException) -> None:
        for msg_id in list(self.items):
            self.settle(msg_id, error=error)

"""Token streams: live chunks now, one durable message at the end.

    async with agent.stream("conv/team-7/answer") as s:
        async for token in llm.generate(prompt):
            await s.write(token)

Each ``write`` sends a ``chunk`` frame that the server passes, live, to whoever
is subscribed to the topic right now (nothing stores it). On leaving the block
the writer publishes one durable message with the whole text and the header
``tidings-stream: <stream id>``; if the block raised, the message is
``{"aborted": true, "reason": ..., "text": <what was written>}`` with the header
``tidings-stream-aborted`` as well. Late joiners and replays see only that
final message.

A subscription made with ``streams=True`` also yields, when a stream begins,
a message with the header ``tidings-stream-open``; ``msg.chunks()`` iterates
that stream's chunks as they arrive and ends when its final message does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tidings.protocol import frames as f

if TYPE_CHECKING:
    from tidings.sdk.agent import Agent

STREAM = "tidings-stream"
STREAM_OPEN = "tidings-stream-open"
STREAM_ABORTED = "tidings-stream-aborted"


class Stream:
    """The writing end; use ``async with agent.stream(topic) as s``."""

    def __init__(self, agent: Agent, topic: str, stream_id: str, parent: str | None) -> None:
        self.agent = agent
        self.topic = topic
        self.id = stream_id
        self.parent = parent
        self.pieces: list[Any] = []
        self.puback: f.Puback | None = None

    async def write(self, data: Any) -> None:
        """Send one chunk live (if connected: chunks are ephemeral) and keep it for the final message."""
        seq = len(self.pieces)
        self.pieces.append(data)
        if self.agent.is_open:
            self.agent._send(f.Chunk(stream=self.id, topic=self.topic, seq=seq, data=data))
        await asyncio.sleep(0)  # let the chunk leave before the next is produced

    def text(self) -> Any:
        if all(isinstance(p, str) for p in self.pieces):
            return "".join(self.pieces)
        return self.pieces

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        headers = {STREAM: self.id}
        if exc is None:
            body: Any = self.text()
        else:
            headers[STREAM_ABORTED] = type(exc).__name__
            body = {"aborted": True, "reason": f"{type(exc).__name__}: {exc}", "text": self.text()}
        self.puback = await self.agent.publish(self.topic, body, parent=self.parent, headers=headers)


class StreamReader:
    """The chunks of one stream as seen by one subscription."""

    def __init__(self) -> None:
        self._chunks: asyncio.Queue[tuple[int, Any] | None] = asyncio.Queue()
        self.done = False

    def put(self, seq: int, data: Any) -> None:
        if not self.done:
            self._chunks.put_nowait((seq, data))

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self._chunks.put_nowait(None)

    async def chunks(self) -> AsyncIterator[Any]:
        while True:
            item = await self._chunks.get()
            if item is None:
                return
            yield item[1]

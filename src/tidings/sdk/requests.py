"""Request/reply with deadlines, over ordinary topics.

A request is a message with three headers:

    tidings-reply-to     the requester's inbox, ``sig/inbox/<agent-id>``
    tidings-correlation  an id the reply carries back
    tidings-deadline     ms since the epoch after which the requester stops waiting

The responder answers with ``agent.reply(msg, body)`` (a publish to the inbox
with the same correlation), and can check ``deadline_left(msg)`` to give up on
work nobody waits for. A requester that times out or is cancelled publishes a
cancel notice on the request topic: an empty message whose
``tidings-cancel`` header names the correlation.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from tidings.protocol import frames as f
from tidings.sdk.link import new_id
from tidings.sdk.subscription import Message, Subscription

if TYPE_CHECKING:
    from tidings.sdk.agent import Agent

REPLY_TO = "tidings-reply-to"
CORRELATION = "tidings-correlation"
DEADLINE = "tidings-deadline"
CANCEL = "tidings-cancel"
INBOX_NAMESPACE = "sig/inbox"


def inbox_of(agent_id: str) -> str:
    return f"{INBOX_NAMESPACE}/{agent_id}"


def deadline_left(msg: f.Msg) -> float | None:
    """Seconds left before the requester gives up (negative: too late); None if no deadline."""
    raw = msg.headers.get(DEADLINE)
    if raw is None:
        return None
    try:
        return int(raw) / 1000 - time.time()
    except ValueError:
        return None


def is_cancel(msg: f.Msg) -> bool:
    return CANCEL in msg.headers


class Requester:
    """What ``Agent.request`` and ``Agent.reply`` do, kept out of the agent's module."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._inbox: Subscription | None = None
        self._replies: dict[str, asyncio.Future[Message]] = {}

    async def request(
        self,
        topic: str,
        body: Any = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - the deadline travels with the request, in a header
    ) -> Message:
        """See ``Agent.request``."""
        inbox = await self._ensure_inbox()
        correlation = new_id()
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._replies[correlation] = reply
        deadline_ms = int((time.time() + timeout) * 1000)
        headers = {REPLY_TO: inbox, CORRELATION: correlation, DEADLINE: str(deadline_ms)}
        try:
            async with asyncio.timeout(timeout):
                await self.agent.publish(topic, body, headers=headers)
                return await reply
        except (TimeoutError, asyncio.CancelledError):
            if self.agent.is_open:
                cancel = f.Pub(topic=topic, id=new_id(), headers={CANCEL: correlation})
                self.agent._send(cancel)
            raise
        finally:
            self._replies.pop(correlation, None)

    async def reply(self, request: Message, body: Any = None) -> f.Puback | None:
        """Answer ``request``; returns None (and sends nothing) if it asked for no reply."""
        reply_to = request.headers.get(REPLY_TO)
        correlation = request.headers.get(CORRELATION)
        if reply_to is None or correlation is None:
            return None
        return await self.agent.publish(reply_to, body, parent=request.id, headers={CORRELATION: correlation})

    async def _ensure_inbox(self) -> str:
        inbox = inbox_of(self.agent.agent_id)
        if self._inbox is None:
            self._inbox = self.agent.subscribe(inbox)
            await self._inbox
            task = asyncio.create_task(self._route_replies(self._inbox))
            self.agent._tasks.add(task)
            task.add_done_callback(self.agent._tasks.discard)
        return inbox

    async def _route_replies(self, inbox: Subscription) -> None:
        async for msg in inbox:
            waiter = self._replies.get(msg.headers.get(CORRELATION, ""))
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)

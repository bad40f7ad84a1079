"""Commands from the control plane, on the agent's control topic ``ctl/<agent-id>/commands``.

Each body is ``{"command": name, "key": str, "epoch": int, ...args}``. Commands
are fenced per key: one whose epoch is older than the last one acted on for
the same key is ignored, so a late ``resume`` cannot undo a later ``cancel``.

The SDK acts on three commands itself, before any handler of yours runs:

- ``cancel`` with ``conversation`` (a topic) or ``request`` (a message id):
  cancels the handlers working on it; their messages are acked;
- ``pause``: data handlers take no new message until ``resume``;
- ``resume``: they go on.

Every command, built-in or not, then goes to the handler registered for its
name with ``agent.on_command(name)`` (``join``, ``leave``, ``start``, ``stop``
and names of your own are only handled there).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tidings.sdk.handlers import HandlerSpec
from tidings.sdk.subscription import Message

if TYPE_CHECKING:
    from tidings.sdk.agent import Agent

log = logging.getLogger("tidings.sdk")

CommandHandler = Callable[[Message], Awaitable[Any]]
BUILT_IN = ("cancel", "pause", "resume")


class Commands:
    """What ``Agent.on_command`` does: fenced dispatch of control commands."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._commands: dict[str, CommandHandler] = {}
        self._spec: HandlerSpec | None = None
        self._epochs: dict[str, int] = {}

    def on_command(self, name: str) -> Callable[[CommandHandler], CommandHandler]:
        """Decorate ``async def handler(msg)`` to run for control command ``name``."""

        def register(fn: CommandHandler) -> CommandHandler:
            self._commands[name] = fn
            self.accept()
            return fn

        return register

    def accept(self) -> None:
        """Subscribe to this agent's control topic (once), now or when the agent opens."""
        if self._spec is None:
            self._spec = HandlerSpec(self._on_command_msg, "", "commands", "earliest", 1, 200, gated=False)
            if self.agent.is_open:
                self.start()

    def start(self) -> None:
        spec = self._spec
        if spec is not None:
            spec.pattern = f"ctl/{self.agent.agent_id}/>"
            self.agent._start_handler(spec)

    async def _on_command_msg(self, msg: Message) -> None:
        body = msg.body if isinstance(msg.body, dict) else {}
        name = body.get("command")
        if not isinstance(name, str):
            log.warning("ignoring a command without a name: %s", msg.id)
            return
        key, epoch = str(body.get("key", name)), body.get("epoch")
        if isinstance(epoch, int):
            if epoch < self._epochs.get(key, -1):
                log.info("ignoring stale command %r for %r (epoch %d)", name, key, epoch)
                return
            self._epochs[key] = epoch
        work = self.agent.work
        if name == "cancel":
            topic, request = body.get("conversation"), body.get("request")
            n = work.cancel(
                topic=topic if isinstance(topic, str) else None,
                message_id=request if isinstance(request, str) else None,
            )
            log.info("cancel %s: %d handler(s) called off", topic or request, n)
        elif name == "pause":
            work.resumed.clear()
        elif name == "resume":
            work.resumed.set()
        handler = self._commands.get(name)
        if handler is not None:
            await handler(msg)
        elif name not in BUILT_IN:
            log.warning("no handler for command %r", name)

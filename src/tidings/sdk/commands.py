"""Commands from the control plane, on the agent's control topic ``ctl/<agent-id>/commands``."""

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


class Commands:
    """What ``Agent.on_command`` does: fenced dispatch of control commands."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._commands: dict[str, CommandHandler] = {}
        self._command_spec: HandlerSpec | None = None
        self._epochs: dict[str, int] = {}

    def on_command(self, name: str) -> Callable[[CommandHandler], CommandHandler]:
        """Decorate ``async def handler(msg)`` to run for control command ``name``.

        Commands arrive on ``ctl/<agent-id>/commands`` (durable, acked). Each
        body is ``{"command": name, "key": str, "epoch": int, ...}``; a command
        whose epoch is older than the last one acted on for the same key is
        ignored (fencing), so a late ``resume`` cannot undo a later ``cancel``.
        """

        def register(fn: CommandHandler) -> CommandHandler:
            first = not self._commands
            self._commands[name] = fn
            if first:
                spec = HandlerSpec(self._on_command_msg, "", "commands", "earliest", 1, 200)
                self._command_spec = spec
                if self.agent.is_open:
                    self.start()
            return fn

        return register

    def start(self) -> None:
        spec = self._command_spec
        if spec is not None:
            spec.pattern = f"ctl/{self.agent.agent_id}/>"
            self.agent._start_handler(spec)

    async def _on_command_msg(self, msg: Message) -> None:
        body = msg.body if isinstance(msg.body, dict) else {}
        name = body.get("command")
        handler = self._commands.get(name) if isinstance(name, str) else None
        if handler is None:
            log.warning("no handler for command %r", name)
            return
        key, epoch = str(body.get("key", name)), body.get("epoch")
        if isinstance(epoch, int):
            if epoch < self._epochs.get(key, -1):
                log.info("ignoring stale command %r for %r (epoch %d)", name, key, epoch)
                return
            self._epochs[key] = epoch
        await handler(msg)

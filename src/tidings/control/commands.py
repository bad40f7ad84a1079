"""Commands to agents over HTTP: stored on ``ctl/<agent>/commands`` with fencing epochs,
acknowledged by the agent's SDK; and the agents' presence."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from tidings.catalog import SYSTEM_SENDER
from tidings.control import models as m
from tidings.control.http import ERRORS, NOT_FOUND, Admin, AgentId, agent_id, now_ms
from tidings.engine.base import Engine, consumer_key
from tidings.errors import InvalidFrame, NotFound
from tidings.protocol.frames import Msg
from tidings.protocol.topics import validate_pattern

#: the consumer name and pattern the SDK acknowledges commands with (sdk/commands.py)
COMMAND_CONSUMER = "commands"


def commands_topic(agent: str) -> str:
    return f"ctl/{agent}/commands"


class Commands:
    """Sends commands: fencing epochs per agent, strictly increasing, above every command stored."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._last: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, agent: str) -> asyncio.Lock:
        return self._locks.setdefault(agent, asyncio.Lock())

    async def _next_epoch(self, agent: str, wanted: int | None) -> int:
        floor = max(self._last.get(agent, 0), await self._engine.head(commands_topic(agent)))
        epoch = floor + 1 if wanted is None else wanted
        self._last[agent] = max(floor, epoch)
        return epoch

    async def send(
        self, agent: str, command: str, args: dict[str, Any], key: str | None, epoch: int | None
    ) -> m.CommandOut:
        """Store a command on ``ctl/<agent>/commands`` with the next fencing epoch (or ``epoch``)."""
        reserved = {"command", "key", "epoch"} & set(args)
        if reserved:
            raise InvalidFrame(f"args may not set {sorted(reserved)}: they are fields of the command")
        key = key or str(args.get("conversation") or args.get("request") or "agent")
        topic = commands_topic(agent)
        async with self._lock(agent):
            epoch = await self._next_epoch(agent, epoch)
            msg = Msg(
                topic=topic,
                id=uuid.uuid4().hex,
                sender=SYSTEM_SENDER,
                ts=now_ms(),
                body={"command": command, "key": key, "epoch": epoch, **args},
            )
            result = await self._engine.publish(msg)
        return m.CommandOut(
            agent=agent,
            id=msg.id,
            command=command,
            key=key,
            epoch=epoch,
            offset=result.offset,
            online=(await self._engine.presence_view()).is_online(agent),
            acked=False,
        )

    async def acked(self, agent: str, topic: str, offset: int) -> bool:
        """Whether the agent's SDK has acknowledged the command at ``offset`` of ``topic``."""
        state = await self._engine.load_cursor(consumer_key(agent, COMMAND_CONSUMER, f"ctl/{agent}/>"))
        cursor = state.topics.get(topic) if state is not None else None
        return cursor is not None and (offset <= cursor.floor or offset in cursor.acked)


def agents_router(engine: Engine, commands: Commands) -> APIRouter:
    """``/v1/agents``: presence, and commands sent to an agent."""
    routes = APIRouter()

    @routes.get(
        "/v1/agents", response_model=list[m.AgentOut], responses=ERRORS, summary="Agents and presence"
    )
    async def list_agents(
        _: Admin,
        capability: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        status: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        conversation: Annotated[str | None, Query(pattern=m.TOPIC)] = None,
        online: bool | None = None,
    ) -> list[m.AgentOut]:
        found = (await engine.presence_view()).agents(
            capability=capability, status=status, conversation=conversation, online=online
        )
        return [m.AgentOut(**msgspec.to_builtins(p)) for p in found]

    @routes.get(
        "/v1/agents/{agent}",
        response_model=m.AgentOut,
        responses={**ERRORS, **NOT_FOUND},
        summary="One agent's presence",
    )
    async def get_agent(agent: AgentId, _: Admin) -> m.AgentOut:
        found = (await engine.presence_view()).get(agent_id(agent))
        if found is None:
            raise NotFound(f"agent {agent!r} has not been seen since this server started")
        return m.AgentOut(**msgspec.to_builtins(found))

    @routes.post(
        "/v1/agents/{agent}/commands",
        status_code=202,
        response_model=m.CommandOut,
        responses=ERRORS,
        summary="Send a command: stored on ctl/<agent>/commands, delivered on the priority lane",
    )
    async def post_command(agent: AgentId, body: m.CommandIn, _: Admin) -> m.CommandOut:
        validate_pattern(commands_topic(agent_id(agent)))
        return await commands.send(agent, body.command, body.args, body.key, body.epoch)

    @routes.get(
        "/v1/agents/{agent}/commands/{offset}",
        response_model=m.CommandOut,
        responses={**ERRORS, **NOT_FOUND},
        summary="A command sent earlier, and whether the agent has acknowledged it",
    )
    async def get_command(
        agent: AgentId, offset: Annotated[int, PathParam(ge=1, le=2**53)], _: Admin
    ) -> m.CommandOut:
        topic = commands_topic(agent_id(agent))
        found = await engine.read(topic, offset - 1, 1)
        if not found or found[0].offset != offset:
            raise NotFound(f"no command at offset {offset} of {topic}")
        msg = found[0]
        body = msg.body if isinstance(msg.body, dict) else {}
        epoch = body.get("epoch")
        return m.CommandOut(
            agent=agent,
            id=msg.id,
            command=str(body.get("command", "")),
            key=str(body.get("key", "")),
            epoch=epoch if isinstance(epoch, int) else 0,
            offset=offset,
            online=(await engine.presence_view()).is_online(agent),
            acked=await commands.acked(agent, topic, offset),
        )

    return routes

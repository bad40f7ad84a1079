"""Conversations over HTTP: create (members get a ``join`` command), list, read, close,
delete; their presence, history and causal graph."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Response

from tidings.catalog import Catalog, Conversation, ConversationPolicy
from tidings.control import models as m
from tidings.control.commands import Commands
from tidings.control.http import CONFLICT, ERRORS, NOT_FOUND, PAGE_LIMIT, Admin, Segment, agent_id, now_ms
from tidings.engine.base import Engine
from tidings.errors import Conflict, NotFound
from tidings.metrics import GatewayStats
from tidings.presence import AgentPresence
from tidings.protocol.frames import Msg


def conversations_router(
    engine: Engine, catalog: Catalog, stats: GatewayStats, commands: Commands
) -> APIRouter:
    """``/v1/conversations``; ``stats`` mark redeliveries in the causal graph."""
    routes = APIRouter()

    async def view(conversation: Conversation) -> m.ConversationOut:
        topic = conversation.topic
        head = await engine.head(topic)
        last = await engine.read(topic, max(head - 1, await engine.trimmed_through(topic)), 1) if head else []
        return m.ConversationOut(
            id=topic.removeprefix("conv/"),
            topic=topic,
            state=conversation.state,
            members=conversation.members,
            policy=m.PolicyIn(**msgspec.to_builtins(conversation.policy)),
            created_ms=conversation.created_ms,
            updated_ms=conversation.updated_ms,
            head=head,
            messages=await engine.count(topic),
            members_online=(await engine.presence_view()).members_online(topic),
            last_activity_ms=last[-1].ts if last else None,
        )

    def find(group: str, name: str) -> Conversation:
        conversation = catalog.conversations.get(f"conv/{group}/{name}")
        if conversation is None or conversation.state == "deleted":
            raise NotFound(f"no conversation conv/{group}/{name}")
        return conversation

    @routes.post(
        "/v1/conversations",
        status_code=201,
        response_model=m.ConversationOut,
        responses={**ERRORS, **CONFLICT},
        summary="Create a conversation; each member gets a join command",
    )
    async def create_conversation(body: m.ConversationIn, _: Admin) -> m.ConversationOut:
        members = [agent_id(a) for a in dict.fromkeys(body.members)]
        existing = catalog.conversations.get(body.topic)
        if existing is not None and existing.state != "deleted":
            raise Conflict(f"conversation {body.topic} exists ({existing.state})")
        now = now_ms()
        conversation = Conversation(
            topic=body.topic,
            members=members,
            policy=ConversationPolicy(**body.policy.model_dump(exclude_none=True)),
            created_ms=now,
        )
        await catalog.put_conversation(conversation)
        for agent in members:
            await commands.send(agent, "join", {"conversation": body.topic}, body.topic, None)
        return await view(conversation)

    @routes.get(
        "/v1/conversations",
        response_model=list[m.ConversationOut],
        responses=ERRORS,
        summary="List conversations",
    )
    async def list_conversations(
        _: Admin,
        state: Annotated[str | None, Query(pattern="^(open|closed)$")] = None,
        group: Annotated[str | None, Query(pattern=m.SEGMENT)] = None,
        member: Annotated[str | None, Query(pattern=m.AGENT_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT)] = 100,
    ) -> list[m.ConversationOut]:
        found = [
            c
            for topic, c in sorted(catalog.conversations.items())
            if c.state != "deleted"
            and (state is None or c.state == state)
            and (group is None or topic.split("/")[1] == group)
            and (member is None or member in c.members)
        ]
        return [await view(c) for c in found[:limit]]

    @routes.get(
        "/v1/conversations/{group}/{name}",
        response_model=m.ConversationOut,
        responses={**ERRORS, **NOT_FOUND},
        summary="One conversation, with its head offset, size, members online and last activity",
    )
    async def get_conversation(group: Segment, name: Segment, _: Admin) -> m.ConversationOut:
        return await view(find(group, name))

    @routes.post(
        "/v1/conversations/{group}/{name}/close",
        response_model=m.ConversationOut,
        responses={**ERRORS, **NOT_FOUND},
        summary="Close a conversation: no more publishes; history kept until retention",
    )
    async def close_conversation(group: Segment, name: Segment, _: Admin) -> m.ConversationOut:
        conversation = msgspec.structs.replace(find(group, name), state="closed")
        await catalog.put_conversation(conversation)
        return await view(conversation)

    @routes.delete(
        "/v1/conversations/{group}/{name}",
        status_code=204,
        responses={**ERRORS, **NOT_FOUND},
        summary="Delete a conversation and its messages",
    )
    async def delete_conversation(group: Segment, name: Segment, _: Admin) -> Response:
        conversation = msgspec.structs.replace(find(group, name), state="deleted")
        await catalog.put_conversation(conversation)
        return Response(status_code=204)

    @routes.get(
        "/v1/conversations/{group}/{name}/presence",
        response_model=list[m.AgentOut],
        responses={**ERRORS, **NOT_FOUND},
        summary="The agents subscribed to this conversation now, and its members offline",
    )
    async def conversation_presence(group: Segment, name: Segment, _: Admin) -> list[m.AgentOut]:
        conversation = find(group, name)
        presence = await engine.presence_view()
        online = presence.agents(conversation=conversation.topic)
        seen = {p.agent for p in online}
        offline = [
            presence.get(a) or AgentPresence(agent=a, online=False)
            for a in conversation.members
            if a not in seen
        ]
        return [m.AgentOut(**msgspec.to_builtins(p)) for p in (*online, *offline)]

    @routes.get(
        "/v1/conversations/{group}/{name}/graph",
        response_model=m.GraphOut,
        responses={**ERRORS, **NOT_FOUND},
        summary="The causal graph of a conversation's latest messages: parent links as edges",
    )
    async def conversation_graph(
        group: Segment, name: Segment, _: Admin, limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT)] = 300
    ) -> m.GraphOut:
        topic = find(group, name).topic
        msgs = await _tail(engine, topic, limit)
        # offset -> deliveries it had (kept in the dead letter, so it survives a restart)
        dead = {
            letter.headers.get("tidings-dlq-offset", ""): _int(letter.headers.get("tidings-dlq-attempts"))
            for letter in await _tail(engine, f"dlq/{topic}", PAGE_LIMIT)
        }
        ids = {msg.id for msg in msgs}
        nodes = [
            m.GraphNode(
                id=msg.id,
                offset=msg.offset or 0,
                sender=msg.sender,
                ts=msg.ts,
                lamport=msg.lamport,
                parent=msg.parent,
                redeliveries=max(
                    stats.redelivered_ids.get((topic, msg.id), 0), dead.get(str(msg.offset), 1) - 1
                ),
                dead_letter=str(msg.offset) in dead,
                preview=_preview(msg.body),
            )
            for msg in msgs
        ]
        edges = [m.GraphEdge(source=msg.parent, target=msg.id) for msg in msgs if msg.parent in ids]
        return m.GraphOut(topic=topic, head=await engine.head(topic), nodes=nodes, edges=edges)

    @routes.get(
        "/v1/conversations/{group}/{name}/messages",
        response_model=m.MessagePage,
        responses={**ERRORS, **NOT_FOUND},
        summary="History, read from the engine: messages after offset `from`",
    )
    async def conversation_messages(
        group: Segment,
        name: Segment,
        _: Admin,
        after: Annotated[int, Query(alias="from", ge=0, le=2**53)] = 0,
        limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT)] = 100,
    ) -> m.MessagePage:
        topic = find(group, name).topic
        trimmed = await engine.trimmed_through(topic)
        gap = [after + 1, trimmed] if after < trimmed else None
        msgs = await engine.read(topic, max(after, trimmed), limit)
        return m.MessagePage(
            messages=[_message_out(msg) for msg in msgs],
            next=msgs[-1].offset or after if msgs else max(after, trimmed),
            head=await engine.head(topic),
            gap=gap,
        )

    return routes


def _message_out(msg: Msg) -> m.MessageOut:
    return m.MessageOut(
        topic=msg.topic,
        id=msg.id,
        sender=msg.sender,
        ts=msg.ts,
        offset=msg.offset or 0,
        body=msg.body,
        parent=msg.parent,
        lamport=msg.lamport,
        headers=msg.headers,
    )


async def _tail(engine: Engine, topic: str, limit: int) -> list[Msg]:
    """The latest ``limit`` retained messages of ``topic``, oldest first."""
    out: list[Msg] = []
    after = await engine.trimmed_through(topic)
    while batch := await engine.read(topic, after, PAGE_LIMIT):
        out.extend(batch)
        del out[:-limit]
        after = batch[-1].offset or after
    return out


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _preview(body: Any, size: int = 80) -> str:
    text = body if isinstance(body, str) else msgspec.json.encode(body).decode(errors="replace")
    return text if len(text) <= size else text[: size - 1] + "…"

"""The control plane's HTTP API: conversations, commands, presence, history, tokens.

It issues intents and reads metadata; it never carries a data message from one
agent to another. Everything it writes goes into the engine (the catalog
topic, an agent's ``ctl/<agent>/commands`` topic), where the gateways pick it
up; everything it reads comes from the engine, presence included
(``await engine.presence_view()``: every gateway's, with the NATS engine).
``docs/control-plane.md`` walks through it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import msgspec
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

import tidings
from tidings.auth import Authority, validate_agent_id
from tidings.catalog import SYSTEM_SENDER, Catalog, Conversation, ConversationPolicy
from tidings.control import models as m
from tidings.engine.base import Engine, consumer_key
from tidings.errors import Conflict, Forbidden, InvalidFrame, NotFound, TidingsError, Unauthorized
from tidings.metrics import STAGES, GatewayStats, StatsCollector
from tidings.presence import AgentPresence, PresenceView
from tidings.protocol.frames import Msg
from tidings.protocol.topics import validate_pattern

#: the dashboard: plain HTML and JavaScript, no build step
UI_DIR = Path(__file__).parent / "ui"
#: the consumer name and pattern the SDK acknowledges commands with (sdk/commands.py)
COMMAND_CONSUMER = "commands"
PAGE_LIMIT = 1000

Segment = Annotated[str, PathParam(pattern=m.SEGMENT)]
AgentId = Annotated[str, PathParam(pattern=m.AGENT_ID)]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": m.Problem, "description": "the body is not JSON"},
    401: {"model": m.Problem, "description": "no token, or an invalid, expired or revoked one"},
    403: {"model": m.Problem, "description": "the token is not an admin token"},
    422: {"model": m.Problem, "description": "the request is malformed"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": m.Problem, "description": "no such thing"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": m.Problem, "description": "it exists already"}}


def commands_topic(agent: str) -> str:
    return f"ctl/{agent}/commands"


STATUS_OF: dict[type[TidingsError], int] = {
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
}


def create_app(
    engine: Engine, catalog: Catalog, authority: Authority, stats: GatewayStats | None = None
) -> FastAPI:
    """The control plane over ``engine`` (started) and ``catalog`` (opened on it).

    ``stats`` are the figures of the gateway beside it (``tidings serve``); alone
    (``tidings control``) it reports storage and presence only.
    """
    stats = stats or GatewayStats()
    registry = CollectorRegistry(auto_describe=False)
    #: the presence /metrics reports: read before each scrape (the collector cannot await)
    scraped: list[PresenceView] = [engine.presence]
    registry.register(
        StatsCollector(
            stats,
            engine.storage_figures,
            lambda: {
                "connections": stats.connections,
                "subscriptions": stats.subscriptions,
                "agents_online": len(scraped[0].agents(online=True)),
            },
        )
    )
    app = FastAPI(
        title="tidings control plane",
        version=tidings.__version__,
        description="Orchestrate agents: conversations, commands, presence, history, tokens. "
        "Admin requests carry `Authorization: Bearer <admin token>` (`tidings token --admin`).",
    )
    epochs = _Epochs(engine)
    app.state.authority, app.state.catalog = authority, catalog

    @app.exception_handler(TidingsError)
    async def tidings_error(request: Request, exc: TidingsError) -> JSONResponse:
        status = next((s for t, s in STATUS_OF.items() if isinstance(exc, t)), 422)
        if exc.retriable:
            status = 503
        return JSONResponse({"code": exc.code, "message": str(exc)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Allow: every method of the path, not just the first route's
            path = request.url.path
            methods = {
                method
                for route in app.routes
                if isinstance(route, APIRoute) and route.path_regex.match(path)
                for method in route.methods or ()
            }
            headers["Allow"] = ", ".join(sorted(methods))
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            {"code": code, "message": str(exc.detail)}, status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid')}" if where else "request is malformed"
        return JSONResponse({"code": "invalid_request", "message": message}, status_code=422)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response("ok\n", media_type="text/plain")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus text format. Unauthenticated, like most exporters: bind the
        control port to a private interface (the default is 127.0.0.1)."""
        scraped[0] = await engine.presence_view()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui/", StaticFiles(directory=UI_DIR, html=True, check_dir=False), name="ui")

    @app.get(
        "/v1/stats", response_model=m.StatsOut, responses=ERRORS, summary="Live figures (the dashboard's)"
    )
    async def live_stats(_: Admin) -> m.StatsOut:
        storage = engine.storage_figures()
        return m.StatsOut(
            time_ms=_now_ms(),
            connections=stats.connections,
            subscriptions=stats.subscriptions,
            agents_online=len((await engine.presence_view()).agents(online=True)),
            conversations=sum(c.state == "open" for c in catalog.conversations.values()),
            totals={
                "published": stats.published,
                "delivered": sum(stats.deliveries.values()),
                "acks": sum(stats.acks.values()),
                "publish_acks": sum(stats.publish_acks.values()),
                "duplicates": sum(stats.duplicates.values()),
                "redeliveries": sum(stats.redeliveries.values()),
                "dead_letters": sum(stats.dead_letters.values()),
                "dropped": stats.dropped,
                "rejected": stats.rejected,
            },
            rejected=dict(stats.rejects),
            latency_ms={
                stage: m.LatencyOut(
                    p50=(h := stats.stage(stage)).quantile(0.5) * 1000,
                    p99=h.quantile(0.99) * 1000,
                    count=h.total,
                )
                for stage in STAGES
            },
            storage=None
            if storage is None
            else m.StorageOut(
                fsync_p50_ms=storage.sync_seconds.quantile(0.5) * 1000,
                fsync_p99_ms=storage.sync_seconds.quantile(0.99) * 1000,
                commit_batch_mean=storage.records / storage.syncs if storage.syncs else 0.0,
                queue_depth=storage.queue_depth,
            ),
        )

    # -- conversations --------------------------------------------------------

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

    @app.post(
        "/v1/conversations",
        status_code=201,
        response_model=m.ConversationOut,
        responses={**ERRORS, **CONFLICT},
        summary="Create a conversation; each member gets a join command",
    )
    async def create_conversation(body: m.ConversationIn, _: Admin) -> m.ConversationOut:
        members = [_agent_id(a) for a in dict.fromkeys(body.members)]
        existing = catalog.conversations.get(body.topic)
        if existing is not None and existing.state != "deleted":
            raise Conflict(f"conversation {body.topic} exists ({existing.state})")
        now = _now_ms()
        conversation = Conversation(
            topic=body.topic,
            members=members,
            policy=ConversationPolicy(**body.policy.model_dump(exclude_none=True)),
            created_ms=now,
        )
        await catalog.put_conversation(conversation)
        for agent in members:
            await send_command(agent, "join", {"conversation": body.topic}, body.topic, None)
        return await view(conversation)

    @app.get(
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

    @app.get(
        "/v1/conversations/{group}/{name}",
        response_model=m.ConversationOut,
        responses={**ERRORS, **NOT_FOUND},
        summary="One conversation, with its head offset, size, members online and last activity",
    )
    async def get_conversation(group: Segment, name: Segment, _: Admin) -> m.ConversationOut:
        return await view(find(group, name))

    @app.post(
        "/v1/conversations/{group}/{name}/close",
        response_model=m.ConversationOut,
        responses={**ERRORS, **NOT_FOUND},
        summary="Close a conversation: no more publishes; history kept until retention",
    )
    async def close_conversation(group: Segment, name: Segment, _: Admin) -> m.ConversationOut:
        conversation = msgspec.structs.replace(find(group, name), state="closed")
        await catalog.put_conversation(conversation)
        return await view(conversation)

    @app.delete(
        "/v1/conversations/{group}/{name}",
        status_code=204,
        responses={**ERRORS, **NOT_FOUND},
        summary="Delete a conversation and its messages",
    )
    async def delete_conversation(group: Segment, name: Segment, _: Admin) -> Response:
        conversation = msgspec.structs.replace(find(group, name), state="deleted")
        await catalog.put_conversation(conversation)
        return Response(status_code=204)

    @app.get(
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

    @app.get(
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

    @app.get(
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

    # -- agents and commands --------------------------------------------------------

    @app.get("/v1/agents", response_model=list[m.AgentOut], responses=ERRORS, summary="Agents and presence")
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

    @app.get(
        "/v1/agents/{agent}",
        response_model=m.AgentOut,
        responses={**ERRORS, **NOT_FOUND},
        summary="One agent's presence",
    )
    async def get_agent(agent: AgentId, _: Admin) -> m.AgentOut:
        found = (await engine.presence_view()).get(_agent_id(agent))
        if found is None:
            raise NotFound(f"agent {agent!r} has not been seen since this server started")
        return m.AgentOut(**msgspec.to_builtins(found))

    async def send_command(
        agent: str, command: str, args: dict[str, Any], key: str | None, epoch: int | None
    ) -> m.CommandOut:
        reserved = {"command", "key", "epoch"} & set(args)
        if reserved:
            raise InvalidFrame(f"args may not set {sorted(reserved)}: they are fields of the command")
        key = key or str(args.get("conversation") or args.get("request") or "agent")
        topic = commands_topic(agent)
        async with epochs.lock(agent):
            epoch = await epochs.next(agent, epoch)
            msg = Msg(
                topic=topic,
                id=uuid.uuid4().hex,
                sender=SYSTEM_SENDER,
                ts=_now_ms(),
                body={"command": command, "key": key, "epoch": epoch, **args},
            )
            result = await engine.publish(msg)
        return m.CommandOut(
            agent=agent,
            id=msg.id,
            command=command,
            key=key,
            epoch=epoch,
            offset=result.offset,
            online=(await engine.presence_view()).is_online(agent),
            acked=False,
        )

    @app.post(
        "/v1/agents/{agent}/commands",
        status_code=202,
        response_model=m.CommandOut,
        responses=ERRORS,
        summary="Send a command: stored on ctl/<agent>/commands, delivered on the priority lane",
    )
    async def post_command(agent: AgentId, body: m.CommandIn, _: Admin) -> m.CommandOut:
        validate_pattern(commands_topic(_agent_id(agent)))
        return await send_command(agent, body.command, body.args, body.key, body.epoch)

    @app.get(
        "/v1/agents/{agent}/commands/{offset}",
        response_model=m.CommandOut,
        responses={**ERRORS, **NOT_FOUND},
        summary="A command sent earlier, and whether the agent has acknowledged it",
    )
    async def get_command(
        agent: AgentId, offset: Annotated[int, PathParam(ge=1, le=2**53)], _: Admin
    ) -> m.CommandOut:
        topic = commands_topic(_agent_id(agent))
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
            acked=await _acked(engine, agent, topic, offset),
        )

    # -- tokens ---------------------------------------------------------------

    @app.post(
        "/v1/tokens", status_code=201, response_model=m.TokenOut, responses=ERRORS, summary="Mint a token"
    )
    async def mint_token(body: m.TokenIn, _: Admin) -> m.TokenOut:
        agent = _agent_id(body.agent)
        for pattern in (*body.pub, *body.subs):
            validate_pattern(pattern)
        token = authority.mint(agent, body.pub, body.subs, ttl=body.ttl_s, admin=body.admin)
        grants = authority.verify(token)
        assert grants.expires_at is not None
        return m.TokenOut(token=token, jti=grants.jti, agent=agent, expires_ms=int(grants.expires_at * 1000))

    @app.delete(
        "/v1/tokens/{jti}",
        response_model=m.Revoked,
        responses=ERRORS,
        summary="Revoke a token: its connections close within a second; it is refused from now on",
    )
    async def revoke_token(
        jti: Annotated[str, PathParam(pattern="^[A-Za-z0-9_-]{1,128}$")], _: Admin
    ) -> m.Revoked:
        if not catalog.is_revoked(jti):
            await catalog.revoke(jti, 0)
        return m.Revoked(jti=jti)

    return app


def admin(request: Request) -> str:
    """The dependency of every admin route: a valid, unrevoked admin token. Returns its agent."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <admin token>'")
    grants = request.app.state.authority.verify(token.strip())
    if request.app.state.catalog.is_revoked(grants.jti):
        raise Unauthorized("token has been revoked")
    if not grants.admin:
        raise Forbidden(f"agent {grants.agent!r} holds no admin token")
    return str(grants.agent)


Admin = Annotated[str, Depends(admin)]


class _Epochs:
    """Fencing epochs per agent: strictly increasing, above every command already stored."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._last: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, agent: str) -> asyncio.Lock:
        return self._locks.setdefault(agent, asyncio.Lock())

    async def next(self, agent: str, wanted: int | None) -> int:
        floor = max(self._last.get(agent, 0), await self._engine.head(commands_topic(agent)))
        epoch = floor + 1 if wanted is None else wanted
        self._last[agent] = max(floor, epoch)
        return epoch


async def _acked(engine: Engine, agent: str, topic: str, offset: int) -> bool:
    state = await engine.load_cursor(consumer_key(agent, COMMAND_CONSUMER, f"ctl/{agent}/>"))
    cursor = state.topics.get(topic) if state is not None else None
    return cursor is not None and (offset <= cursor.floor or offset in cursor.acked)


def _agent_id(agent: str) -> str:
    try:
        return validate_agent_id(agent)
    except ValueError as exc:
        raise InvalidFrame(str(exc)) from None


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


def _now_ms() -> int:
    return int(time.time() * 1000)

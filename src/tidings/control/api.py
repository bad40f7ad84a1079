"""The control plane's HTTP API: the app, its errors, health, metrics, live figures and the
dashboard; the routes of each concern are in ``conversations``, ``commands`` (agents,
presence, commands) and ``tokens``.

It issues intents and reads metadata; it never carries a data message from one
agent to another. Everything it writes goes into the engine (the catalog
topic, an agent's ``ctl/<agent>/commands`` topic), where the gateways pick it
up; everything it reads comes from the engine, presence included
(``await engine.presence_view()``: every gateway's, with the NATS engine).
``docs/control-plane.md`` walks through it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

import tidings
from tidings.auth import Authority
from tidings.catalog import Catalog
from tidings.control import models as m
from tidings.control.commands import Commands, agents_router
from tidings.control.conversations import conversations_router
from tidings.control.http import ERRORS, Admin, now_ms
from tidings.control.tokens import tokens_router
from tidings.engine.base import Engine
from tidings.errors import Conflict, Forbidden, NotFound, TidingsError, Unauthorized
from tidings.metrics import STAGES, GatewayStats, StatsCollector
from tidings.presence import PresenceView

#: the dashboard: plain HTML and JavaScript, no build step
UI_DIR = Path(__file__).parent / "ui"

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
            time_ms=now_ms(),
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

    commands = Commands(engine)
    app.include_router(conversations_router(engine, catalog, stats, commands))
    app.include_router(agents_router(engine, commands))
    app.include_router(tokens_router(authority, catalog))
    return app

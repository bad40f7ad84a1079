"""Tokens over HTTP: mint one, revoke one (its connections close; it is refused from then on)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam

from tidings.auth import Authority
from tidings.catalog import Catalog
from tidings.control import models as m
from tidings.control.http import ERRORS, Admin, agent_id
from tidings.protocol.topics import validate_pattern


def tokens_router(authority: Authority, catalog: Catalog) -> APIRouter:
    """``/v1/tokens``."""
    routes = APIRouter()

    @routes.post(
        "/v1/tokens", status_code=201, response_model=m.TokenOut, responses=ERRORS, summary="Mint a token"
    )
    async def mint_token(body: m.TokenIn, _: Admin) -> m.TokenOut:
        agent = agent_id(body.agent)
        for pattern in (*body.pub, *body.subs):
            validate_pattern(pattern)
        token = authority.mint(agent, body.pub, body.subs, ttl=body.ttl_s, admin=body.admin)
        grants = authority.verify(token)
        assert grants.expires_at is not None
        return m.TokenOut(token=token, jti=grants.jti, agent=agent, expires_ms=int(grants.expires_at * 1000))

    @routes.delete(
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

    return routes

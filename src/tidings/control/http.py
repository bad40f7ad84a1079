"""What every control-plane route shares: the admin check, error responses, path parameters."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi import Path as PathParam

from tidings.auth import validate_agent_id
from tidings.control import models as m
from tidings.errors import Forbidden, InvalidFrame, Unauthorized

#: the most items one request reads or returns
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


def agent_id(agent: str) -> str:
    """``agent`` if it is a valid agent id; else ``InvalidFrame`` (422)."""
    try:
        return validate_agent_id(agent)
    except ValueError as exc:
        raise InvalidFrame(str(exc)) from None


def now_ms() -> int:
    return int(time.time() * 1000)

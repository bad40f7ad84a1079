"""A gateway with its control plane beside it, as ``tidings serve`` runs them, on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import start_gateway
from tidings.auth import Authority
from tidings.control import ControlPlane
from tidings.gateway import Gateway

ALL = {"pub": [">"], "subs": [">"]}


@dataclass
class Node:
    gateway: Gateway
    plane: ControlPlane
    http: httpx.AsyncClient
    authority: Authority

    def token(self, agent: str, **grants: Any) -> str:
        return self.authority.mint(agent, **(grants or ALL))


async def start_node(authority: Authority, **settings: Any) -> Node:
    gateway = await start_gateway(authority, **settings)
    plane = ControlPlane(gateway.settings, authority, gateway.engine, gateway.catalog, gateway.stats)
    await plane.start()
    admin = authority.mint("operator", admin=True)
    http = httpx.AsyncClient(base_url=plane.url, headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    return Node(gateway, plane, http, authority)


async def stop_node(node: Node) -> None:
    await node.http.aclose()
    await node.plane.stop()
    await node.gateway.stop()


@pytest.fixture
async def node(authority: Authority) -> AsyncIterator[Node]:
    n = await start_node(authority)
    yield n
    await stop_node(n)

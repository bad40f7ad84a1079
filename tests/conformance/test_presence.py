"""Presence across gateways over the real 3-node cluster: the control plane beside
gateway 1 lists an agent connected to gateway 2, sees its status change, and reports
it offline within the presence lease after gateway 2 is SIGKILLed; ``sig/presence/``
events of gateway 2's agents reach a subscriber on gateway 1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import tidings
from tests.conftest import UNIT
from tidings.auth import Authority
from tidings.cluster import NatsCluster, free_ports, start_gateway, stop_all
from tidings.sdk import Backoff

LEASE_S = 3.0
TOPIC = "conv/presence/room"


async def wait_until(check: Callable[[], Any], timeout: float) -> float:
    """Poll the coroutine function ``check`` until it is truthy; return the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true after {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_an_agent_on_gateway_2_is_seen_from_gateway_1_and_expires_with_it(
    nats_cluster: NatsCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDINGS_PRESENCE_LEASE", str(LEASE_S))
    monkeypatch.setenv("TIDINGS_SHARDS", "2")  # the streams the rest of the suite made on this cluster
    authority = Authority.from_data_dir(tmp_path / "gateway-data")  # one secret for both, made first
    port1, port2, control = free_ports(3)
    nats_url = ",".join(nats_cluster.urls)
    procs = [start_gateway(tmp_path, "gw1", port1, nats_url, control_port=control)]
    procs.append(start_gateway(tmp_path, "gw2", port2, nats_url))
    gw1, gw2 = f"ws://127.0.0.1:{port1}/", f"ws://127.0.0.1:{port2}/"
    admin = authority.mint("operator", admin=True)
    http = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{control}", headers={"Authorization": f"Bearer {admin}"}, timeout=10
    )
    events: list[dict[str, Any]] = []
    token = authority.mint("roamer", pub=[">"], subs=[">"])
    # Only gateway 2: after the kill it must not come back through gateway 1.
    roamer = tidings.connect(gw2, token, capabilities=["plan"], status="idle", backoff=Backoff(0.2, 0.5))
    try:
        async with tidings.connect(gw1, authority.mint("watcher", pub=[">"], subs=[">"])) as watcher:
            watch = await watcher.subscribe(f"sig/presence/{TOPIC}")

            async def collect() -> None:
                async for msg in watch:
                    events.append(msg.body)

            collector = asyncio.create_task(collect())
            await roamer.open()
            await roamer.subscribe(TOPIC)

            async def agent() -> dict[str, Any]:
                r = await http.get("/v1/agents/roamer")
                return r.json() if r.status_code == 200 else {}

            async def listed() -> bool:
                found = (await http.get("/v1/agents", params={"conversation": TOPIC})).json()
                return [a["agent"] for a in found] == ["roamer"]

            await wait_until(listed, 5 * UNIT)
            seen = await agent()
            assert seen["online"] and seen["capabilities"] == ["plan"] and seen["status"] == "idle"
            assert seen["conversations"] == [TOPIC] and seen["connections"] == 1
            await roamer.set_status("busy")

            async def busy() -> bool:
                return (await agent()).get("status") == "busy"

            await wait_until(busy, 5 * UNIT)

            async def two_events() -> bool:
                return len(events) >= 2

            await wait_until(two_events, 5 * UNIT)
            assert [(e["agent"], e["event"], e["status"]) for e in events] == [
                ("roamer", "join", "idle"),
                ("roamer", "status", "busy"),
            ]
            metrics = (await http.get("/metrics")).text
            assert "tidings_agents_online 2.0" in metrics  # the watcher and the roamer

            procs[1].kill()  # SIGKILL: gateway 2 releases nothing
            killed = time.monotonic()

            async def offline() -> bool:
                return (await agent()).get("online") is False

            took = await wait_until(offline, (LEASE_S + 5) * UNIT)
            print(f"offline {took:.2f} s after the kill (lease {LEASE_S} s)")
            assert time.monotonic() - killed <= LEASE_S + 0.5 * UNIT
            gone = await agent()
            assert gone["status"] == "busy" and gone["connections"] == 0
            online = (await http.get("/v1/agents", params={"online": "true"})).json()
            assert "roamer" not in [a["agent"] for a in online]
            collector.cancel()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(roamer.close(), 5)
        await http.aclose()
        stop_all(procs, 10)

"""Durable consumers shared by two gateways over a real 3-node JetStream cluster.

One gateway owns a consumer; members on the other join through it
(``gateway/sharing.py``). These tests take the owner or a member's gateway away
and check that no message is left behind and none waits for ack_wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.conftest import Deployment
from tests.conformance.test_contract import ack, consume
from tests.conftest import UNIT
from tests.gateway.test_durable import ack_until_quiet, publish
from tests.gateway.wsclient import Raw, authed
from tidings.auth import Authority
from tidings.cluster import NatsCluster
from tidings.gateway import Gateway
from tidings.gateway.sharing import TAKEN_MEMORY

PEER_TIMEOUT = 1.0


@pytest.fixture
async def nats(authority: Authority, tmp_path: Path, nats_cluster: NatsCluster) -> AsyncIterator[Deployment]:
    d = Deployment("nats", authority, tmp_path / "data", nats_cluster)
    yield d
    await d.stop()


async def owner_and_member(nats: Deployment, token: str, group: str) -> tuple[Gateway, Gateway, Raw, Raw]:
    """Gateways a and b; a member x of one consumer on a (which owns it) and a member y on b
    (which joins it through a), each with one message in flight at most."""
    a, b = await nats.start(2, peer_timeout=PEER_TIMEOUT)
    pattern = f"conv/{group}/>"
    x = await consume(a.url, token, pattern, max_inflight=1)
    y = await consume(b.url, token, pattern, max_inflight=1)
    return a, b, x, y


async def stop(deployment: Deployment, gw: Gateway) -> None:
    deployment.gateways.remove(gw)
    await gw.stop()


async def drain(raw: Raw, bodies: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Ack every message until ``bodies`` distinct bodies have arrived; return them all."""
    got: list[dict[str, Any]] = []
    while len({m["body"] for m in got}) < bodies:
        m = await raw.expect("msg", timeout=timeout)
        got.append(m)
        await ack(raw, m)
    return got


async def test_a_member_keeps_going_when_the_owning_gateway_stops(
    nats: Deployment, token: str, group: str
) -> None:
    a, b, x, y = await owner_and_member(nats, token, group)
    assert a.consumers.by_key and not b.consumers.by_key
    await publish(await authed(b.url, token), f"conv/{group}/chat", 4)
    mx, my = [await raw.expect("msg") for raw in (x, y)]
    assert {mx["body"], my["body"]} == {0, 1}
    await asyncio.sleep(0.5 * UNIT)  # the cursor is saved every 0.2 s
    await stop(nats, a)
    got = await drain(y, 4)  # b owns it now: x's and y's unacked ones again, then the rest
    assert b.consumers.by_key
    attempts = {m["body"]: m["attempt"] for m in got}
    assert attempts == {0: 2, 1: 2, 2: 1, 3: 1}
    with pytest.raises(TimeoutError):
        await y.expect("msg", timeout=0.5)


async def test_a_member_s_messages_go_to_the_others_when_its_gateway_stops(
    nats: Deployment, token: str, group: str
) -> None:
    a, b, x, y = await owner_and_member(nats, token, group)
    await publish(await authed(a.url, token), f"conv/{group}/chat", 2)
    mx, my = [await raw.expect("msg") for raw in (x, y)]
    await stop(nats, b)  # long before ack_wait (30 s), y's message goes to x
    await ack(x, mx)
    again = await x.expect("msg", timeout=5)
    assert (again["body"], again["attempt"]) == (my["body"], 2)


async def test_a_silent_owner_is_taken_over(nats: Deployment, token: str, group: str) -> None:
    a, b, _, y = await owner_and_member(nats, token, group)
    peers = a.engine.peers
    assert peers is not None
    for task in peers._tasks:  # type: ignore[attr-defined]  # a hangs: no heartbeat, no message
        task.cancel()
    await publish(await authed(b.url, token), f"conv/{group}/chat", 3)
    got = await drain(y, 3, timeout=5 * PEER_TIMEOUT)
    assert {m["body"] for m in got} >= {0, 1, 2}
    assert b.consumers.by_key, "b claimed the consumer from the silent owner"


async def test_a_member_the_owner_took_for_gone_joins_again(nats: Deployment, token: str, group: str) -> None:
    a, b, _, y = await owner_and_member(nats, token, group)
    sharing, peers = a.consumers.sharing, b.engine.peers
    assert sharing is not None and peers is not None
    sharing._on_gone(peers.gateway_id)  # a false alarm: b was only slow
    await publish(await authed(a.url, token), f"conv/{group}/chat", 4)
    got = await drain(y, 1)  # a told b it let y go; b joined y again
    assert got, "the member was not left without messages"


async def test_an_owner_taken_for_gone_hands_its_consumer_over(
    nats: Deployment, token: str, group: str
) -> None:
    a, b, x, y = await owner_and_member(nats, token, group)
    peers = a.engine.peers
    assert peers is not None
    peers._tasks[0].cancel()  # type: ignore[attr-defined]  # a's heartbeats stop; a runs on
    for _ in range(int(100 * UNIT)):  # b takes it over (y's proxy joins again), then tells a
        if b.consumers.by_key and not a.consumers.by_key:
            break
        await asyncio.sleep(0.1)
    assert b.consumers.by_key and not a.consumers.by_key, "one owner, not two"
    await publish(await authed(b.url, token), f"conv/{group}/chat", 6)
    got_x, got_y = await asyncio.gather(ack_until_quiet(x, 2), ack_until_quiet(y, 2))
    assert sorted(got_x + got_y) == list(range(6)), "split between them, each once"


async def test_gateways_taken_for_gone_that_never_return_are_forgotten_oldest_first(
    nats: Deployment, group: str
) -> None:
    (a,) = await nats.start(1, peer_timeout=PEER_TIMEOUT)
    sharing = a.consumers.sharing
    assert sharing is not None
    for i in range(TAKEN_MEMORY + 10):  # each "took over" from a gateway that died for good
        sharing._on_taken_over(f"{group}-{i}", f"dead-{i}")
    assert len(sharing._taken) == TAKEN_MEMORY and "dead-9" not in sharing._taken
    sharing._on_taken_over(f"{group}-again", "dead-10")  # the oldest, taken from again: newest now
    sharing._on_taken_over(f"{group}-new", "dead-new")  # so this one pushes out dead-11
    assert len(sharing._taken) == TAKEN_MEMORY
    assert "dead-11" not in sharing._taken and "dead-new" in sharing._taken
    assert sharing._taken["dead-10"] == {f"{group}-10", f"{group}-again"}

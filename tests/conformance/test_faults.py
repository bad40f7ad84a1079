"""Scale-out under failure: SDK agents spread over two gateways on a 3-node cluster;
one NATS node and one gateway are SIGKILLed mid-run. Every acknowledged message is
delivered to every durable consumer in per-topic order, and stored once; a work
queue with a member on each gateway splits the messages and loses none."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tidings
from tests.conftest import UNIT
from tidings.auth import Authority
from tidings.cluster import NatsCluster, free_ports, start_gateway, stop_all
from tidings.sdk import Backoff

PUBLISHERS = 4
CONSUMERS = 2
PER_PUBLISHER = 300
PACE_S = 0.01


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    c = NatsCluster(tmp_path / "nats", size=3)
    c.start()
    yield c
    c.stop()


async def test_kill_a_node_and_a_gateway_mid_run(cluster: NatsCluster, tmp_path: Path) -> None:
    state = cluster.state_dir
    token = Authority.from_data_dir(state / "gateway-data").mint("fault", pub=[">"], subs=[">"])
    ports = free_ports(2)
    nats_url = ",".join(cluster.urls)
    gateways = [start_gateway(state, f"gw{i + 1}", port, nats_url) for i, port in enumerate(ports)]
    urls = [f"ws://127.0.0.1:{port}/" for port in ports]
    agents: list[tidings.Agent] = []
    try:
        acked: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)  # topic -> (offset, id)
        seen: list[dict[str, list[tuple[int, str]]]] = [
            collections.defaultdict(list) for _ in range(CONSUMERS)
        ]
        backoff = Backoff(base=0.05, cap=0.5)

        def spread(i: int) -> list[str]:  # half start on each gateway, each knows both
            return urls[i % 2 :] + urls[: i % 2]

        for c in range(CONSUMERS):
            agent = tidings.connect(spread(c), token, name=f"consumer-{c}", backoff=backoff)

            @agent.on("conv/fault/>", consumer=f"c{c}")
            async def handle(msg: tidings.Message, c: int = c) -> None:
                seen[c][msg.topic].append((msg.offset or 0, msg.id))

            await agent.open()
            agents.append(agent)

        shared: list[dict[str, list[tuple[int, str]]]] = [collections.defaultdict(list) for _ in range(2)]
        for w in range(2):  # one consumer, a member starting on each gateway
            agent = tidings.connect(spread(w), token, name=f"worker-{w}", backoff=backoff)

            @agent.on("conv/fault/>", consumer="work")
            async def work(msg: tidings.Message, w: int = w) -> None:
                shared[w][msg.topic].append((msg.offset or 0, msg.id))

            await agent.open()
            agents.append(agent)

        async def publisher(p: int) -> None:
            agent = tidings.connect(spread(p + 1), token, name=f"publisher-{p}", backoff=backoff)
            await agent.open()
            agents.append(agent)
            topic = f"conv/fault/p{p}"
            for n in range(PER_PUBLISHER):
                ack = await agent.publish(topic, {"n": n}, id=f"p{p}-{n}")
                acked[topic].append((ack.offset or 0, ack.id))
                await asyncio.sleep(PACE_S)

        t_start = time.monotonic()
        publishing = [asyncio.create_task(publisher(p)) for p in range(PUBLISHERS)]
        while sum(map(len, acked.values())) < PUBLISHERS * PER_PUBLISHER // 3:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        cluster.kill("n1")  # SIGKILL: no shutdown, no flush
        gateways[0].kill()
        await asyncio.wait_for(asyncio.gather(*publishing), 90 * UNIT)

        total = PUBLISHERS * PER_PUBLISHER
        t_published = time.monotonic()

        def work_done() -> int:
            return len({m for member in shared for got in member.values() for m in got})

        for _ in range(int(600 * UNIT)):  # until every consumer has everything (at most 60 s)
            if all(sum(len(set(v)) for v in s.values()) >= total for s in seen) and work_done() >= total:
                break
            await asyncio.sleep(0.1)
        took = time.monotonic() - t_published
        print(f"published by {t_published - t_start:.1f} s, all consumed {took:.1f} s later")
        for topic, sent in acked.items():
            ids = [i for _, i in sent]
            assert len(set(ids)) == PER_PUBLISHER, "each publish acknowledged once"
            offsets = [o for o, _ in sent]
            assert offsets == sorted(set(offsets)), "offsets strictly increase, no duplicate stored"
            for c in range(CONSUMERS):
                got = seen[c][topic]
                assert set(got) == set(sent), f"consumer {c} missed {len(set(sent) - set(got))} of {topic}"
                firsts = [o for o, _ in dict.fromkeys(got)]
                assert firsts == sorted(firsts), "first deliveries in offset order"
            worked = set(shared[0][topic]) | set(shared[1][topic])
            assert worked == set(sent), f"the work queue missed {len(set(sent) - worked)} of {topic}"
        assert all(sum(map(len, member.values())) for member in shared), "both members had work"
        # Stored once: a replay of every topic holds each id exactly once.
        reader = tidings.connect(urls[1], token, name="auditor")
        await reader.open()
        agents.append(reader)
        for topic, sent in acked.items():
            messages = aiter(reader.subscribe(topic, start="earliest"))
            stored = [(await anext(messages)).id for _ in sent]
            assert sorted(stored) == sorted(i for _, i in sent)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(messages), 0.3)
    finally:
        for agent in agents:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(agent.close(), 5)
        stop_all(gateways, 10)


async def test_a_gateway_starting_while_a_node_is_down_waits_for_it(cluster: NatsCluster) -> None:
    """Its R3 streams cannot be created until the node is back: the engine waits for it (as
    for an election) instead of failing the gateway's start. (A fresh cluster whose third
    peer the meta leader does not know yet answers "no suitable peers for placement",
    seen once in make test and now retried the same way; this test does not reproduce
    that race, only the wait.)"""
    from tidings.engine.nats import NatsEngine

    cluster.kill("n3")
    engine = NatsEngine(cluster.urls[:2], shards=1, replicas=3)
    starting = asyncio.ensure_future(engine.start())
    await asyncio.sleep(1.5)
    assert not starting.done(), "started (or failed) without the third node"
    await asyncio.to_thread(cluster.start_node, "n3")
    await asyncio.wait_for(starting, 60 * UNIT)
    await engine.stop()

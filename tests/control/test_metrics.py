"""/metrics after a scripted scenario: every counter exactly what the scenario did."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import tidings
from tests.control.conftest import Node
from tests.gateway.wsclient import authed

ALL = {"pub": [">"], "subs": [">"]}


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_exactly_what_happened(node: Node) -> None:
    r = await node.http.post("/v1/conversations", json={"topic": "conv/m/dead", "policy": {"max_deliver": 1}})
    assert r.status_code == 201
    done = asyncio.Event()
    handled: list[int] = []

    async with tidings.connect(node.gateway.url, node.token("sdk")) as sdk:

        @sdk.on("conv/m/x", consumer="sdk")
        async def handle(msg: tidings.Message) -> None:
            handled.append(msg.body)
            if len(handled) == 5:
                done.set()

        publisher = await authed(node.gateway.url, node.authority.mint("pub", pub=["conv/m/>", "sig/m/>"]))
        consumer = await authed(node.gateway.url, node.authority.mint("con", **ALL))
        watcher = await authed(node.gateway.url, node.authority.mint("watch", **ALL))
        await watcher.send({"op": "sub", "topic": "sig/m/>", "rid": 1})
        await watcher.expect("subbed")
        await consumer.send(
            {"op": "sub", "topic": "conv/m/x", "consumer": "c", "from": "earliest", "rid": 1},
            {"op": "sub", "topic": "conv/m/dead", "consumer": "d", "from": "earliest", "rid": 2},
        )
        await consumer.expect("subbed")
        await consumer.expect("subbed")

        frames: list[dict[str, Any]] = [
            {"op": "pub", "topic": "conv/m/x", "id": f"x{i}", "body": i, "rid": i} for i in range(5)
        ]
        frames.append({"op": "pub", "topic": "conv/m/x", "id": "x0", "body": 0, "rid": 5})  # a duplicate
        frames += [{"op": "pub", "topic": "sig/m/x", "body": i} for i in range(3)]  # ephemeral
        frames.append({"op": "pub", "topic": "conv/m/dead", "id": "d0", "body": "doomed", "rid": 6})
        frames.append({"op": "pub", "topic": "conv/elsewhere/x", "body": 1, "rid": 7})  # forbidden
        await publisher.send(*frames)

        # the raw consumer nacks conv/m/x's first delivery once, acks the rest; nacks the doomed one
        acked, nacked = 0, False
        while acked < 5:
            msg = await consumer.expect("msg")
            settle = {"sid": msg["sid"], "topic": msg["topic"], "offset": msg["offset"]}
            if msg["topic"] == "conv/m/dead" or (msg["body"] == 0 and not nacked):
                nacked = nacked or msg["topic"] == "conv/m/x"
                await consumer.send({"op": "nack", **settle})
            else:
                await consumer.send({"op": "ack", **settle})
                acked += 1
        for _ in range(3):
            await watcher.expect("msg")
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.3)  # the sdk's last acks and the dead letter land

    for raw in (publisher, consumer, watcher):
        await raw.close()
    async with httpx.AsyncClient(base_url=node.plane.url) as http:  # no token: /metrics is open
        text = (await http.get("/metrics")).text
    m = scrape(text)
    assert value(m, "tidings_messages_in_total", namespace="conv") == 7
    assert value(m, "tidings_messages_in_total", namespace="sig") == 3
    assert value(m, "tidings_publish_acks_total", namespace="conv") == 7
    assert value(m, "tidings_duplicates_total", namespace="conv") == 1
    # conv: the raw consumer 5 + 1 redelivery + the doomed one; the sdk consumer 5
    assert value(m, "tidings_deliveries_total", namespace="conv") == 12
    assert value(m, "tidings_deliveries_total", namespace="sig") == 3
    assert value(m, "tidings_redeliveries_total", namespace="conv") == 1
    assert value(m, "tidings_acks_total", namespace="conv") == 10
    assert value(m, "tidings_dead_letters_total", namespace="conv") == 1
    assert value(m, "tidings_dropped_total", namespace="sig") == 0
    assert value(m, "tidings_rejected_total", reason="forbidden") == 1
    # only the sdk reports handling times in its acks: five per stage for consumer "sdk"
    labels = {"namespace": "conv", "consumer": "sdk"}
    assert value(m, "tidings_latency_seconds_count", stage="deliver_handled", **labels) == 5
    assert value(m, "tidings_latency_seconds_count", stage="handled_ack", **labels) == 5
    assert value(m, "tidings_latency_seconds_count", stage="publish_deliver", **labels) == 5
    assert value(m, "tidings_fsyncs_total") > 0
    assert value(m, "tidings_connections_opened_total") == 4
    stats = (await node.http.get("/v1/stats")).json()
    assert stats["totals"]["duplicates"] == 1 and stats["totals"]["dead_letters"] == 1
    assert stats["latency_ms"]["deliver_handled"]["count"] == 5

"""The engine contract (DESIGN.md "Guarantees"), once, against every engine.

Each test runs on the embedded engine and on a real 3-node JetStream cluster.
Where a test names two gateways, NATS gets two gateways with engines of their
own (what any gateway serves any topic means); the embedded engine has one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conformance.conftest import Deployment
from tests.conftest import UNIT
from tests.gateway.test_durable import collect, publish
from tests.gateway.wsclient import Raw, authed
from tidings.auth import Authority
from tidings.catalog import Conversation, ConversationPolicy
from tidings.config import NamespacePolicy, default_namespaces
from tidings.gateway import Gateway


async def consume(url: str, token: str, pattern: str, name: str = "worker", **opts: Any) -> Raw:
    raw = await authed(url, token)
    await raw.send({"op": "sub", "topic": pattern, "consumer": name, "rid": 1, **opts})
    await raw.expect("subbed", timeout=10)
    return raw


async def two_gateways_with_max_deliver(deployment: Deployment, n: int) -> list[Gateway]:
    namespaces = default_namespaces()
    namespaces["conv"] = NamespacePolicy(max_deliver=n)
    return await deployment.start(2, namespaces=namespaces)


async def dead_letters(url: str, token: str, group: str) -> Raw:
    """A live subscriber of the group's dead letters."""
    raw = await authed(url, token)
    await raw.send({"op": "sub", "topic": f"dlq/conv/{group}/>", "rid": 1})
    await raw.expect("subbed")
    return raw


async def ack(raw: Raw, m: dict[str, Any]) -> None:
    await raw.send({"op": "ack", "sid": m["sid"], "topic": m["topic"], "offset": m["offset"]})


# -- ordering and offsets ---------------------------------------------------------


async def test_offsets_strictly_increase_per_topic_and_replay_in_order(
    deployment: Deployment, token: str, group: str
) -> None:
    a, b = await deployment.start(2)
    pa, pb = await authed(a.url, token), await authed(b.url, token)
    acks_a = await publish(pa, f"conv/{group}/one", 30)
    acks_b = await publish(pb, f"conv/{group}/two", 30)
    for acks in (acks_a, acks_b):
        offsets = [x["offset"] for x in acks]
        assert offsets == sorted(set(offsets)), "strictly increasing, never reused"
    reader = await authed(b.url, token)
    await reader.send({"op": "sub", "topic": f"conv/{group}/one", "from": "earliest", "rid": 1})
    assert (await reader.expect("subbed", timeout=10))["head"] == acks_a[-1]["offset"]
    got = await collect(reader, 30)
    assert [m["offset"] for m in got] == [x["offset"] for x in acks_a]
    assert [m["body"] for m in got] == list(range(30))


async def test_replay_from_offset_latest_and_time(deployment: Deployment, token: str, group: str) -> None:
    (gw,) = await deployment.start()
    raw = await authed(gw.url, token)
    topic = f"conv/{group}/chat"
    acks = await publish(raw, topic, 5)
    await asyncio.sleep(0.05)
    cut = int(time.time() * 1000)
    await asyncio.sleep(0.05)
    await publish(raw, topic, 3, start=5)
    sub = await authed(gw.url, token)
    await sub.send({"op": "sub", "topic": topic, "from": {"offset": acks[2]["offset"]}, "rid": 1})
    assert [m["body"] for m in await collect(sub, 5)] == [3, 4, 5, 6, 7]
    await sub.send({"op": "sub", "topic": topic, "from": {"time": cut}, "rid": 2})
    assert [m["body"] for m in await collect(sub, 3)] == [5, 6, 7]
    await sub.send({"op": "sub", "topic": f"conv/{group}/>", "from": "latest", "rid": 3})
    await sub.expect("subbed", timeout=10)
    await publish(raw, topic, 1, start=8)
    assert sorted(m["sid"] for m in await collect(sub, 3)) == [1, 2, 3], "every reader gets the new one"


async def test_replay_then_live_seam_has_no_gap_and_no_duplicate(
    deployment: Deployment, token: str, group: str
) -> None:
    """A reader joining on one gateway while another publishes sees each message once, in order."""
    a, b = await deployment.start(2)
    pub = await authed(a.url, token)
    total = 600
    acked: list[int] = []

    async def publisher() -> None:
        for start in range(0, total, 50):
            acked.extend(x["offset"] for x in await publish(pub, f"conv/{group}/seam", 50, start=start))

    task = asyncio.create_task(publisher())
    while len(acked) < 150:  # noqa: ASYNC110 - polling a plain list the publisher fills
        await asyncio.sleep(0.005)
    sub = await authed(b.url, token)
    await sub.send({"op": "sub", "topic": f"conv/{group}/>", "from": "earliest", "rid": 1})
    await task
    got = [m["offset"] for m in await collect(sub, total)]
    assert got == sorted(acked), "no gap, no duplicate, in order"
    with pytest.raises(TimeoutError):
        await sub.expect("msg", timeout=0.3)


async def test_live_subscribers_on_every_gateway_get_durable_and_ephemeral_messages(
    deployment: Deployment, token: str, group: str
) -> None:
    a, b = await deployment.start(2)
    sub = await authed(b.url, token)
    await sub.send({"op": "sub", "topic": f"conv/{group}/>", "rid": 1})
    await sub.send({"op": "sub", "topic": f"sig/{group}/>", "rid": 2})
    await sub.expect("subbed")
    await sub.expect("subbed")
    pub = await authed(a.url, token)
    (stored,) = await publish(pub, f"conv/{group}/chat", 1)
    await pub.send({"op": "pub", "topic": f"sig/{group}/typing", "body": "...", "rid": 7})
    msgs = await collect(sub, 2)
    by_sid = {m["sid"]: m for m in msgs}
    assert by_sid[1]["offset"] == stored["offset"]
    assert by_sid[2]["body"] == "..." and "offset" not in by_sid[2]


# -- dedup ------------------------------------------------------------------------


async def test_same_id_is_stored_once_per_topic_across_gateway_restarts(
    deployment: Deployment, token: str, group: str
) -> None:
    a, b = await deployment.start(2)
    topic = f"conv/{group}/chat"
    first = await publish(await authed(a.url, token), topic, 5)
    again = await publish(await authed(b.url, token), topic, 5)
    assert [x["offset"] for x in again] == [x["offset"] for x in first]
    assert all(x["duplicate"] for x in again) and not any(x.get("duplicate") for x in first)
    (other,) = await publish(await authed(a.url, token), f"conv/{group}/other", 1)
    assert not other.get("duplicate"), "the same id in another topic is another message"
    await deployment.stop()
    (c,) = await deployment.start()
    after = await publish(await authed(c.url, token), topic, 6)
    assert [x["offset"] for x in after[:5]] == [x["offset"] for x in first]
    assert all(x["duplicate"] for x in after[:5]) and not after[5].get("duplicate")
    reader = await authed(c.url, token)
    await reader.send({"op": "sub", "topic": topic, "from": "earliest", "rid": 1})
    assert [m["body"] for m in await collect(reader, 6)] == [0, 1, 2, 3, 4, 5], "nothing stored twice"
    with pytest.raises(TimeoutError):
        await reader.expect("msg", timeout=0.3)


# -- durable consumers ----------------------------------------------------------------


async def test_unacked_are_redelivered_after_ack_wait_and_nacked_after_delay(
    deployment: Deployment, token: str, group: str
) -> None:
    (gw,) = await deployment.start()
    await publish(await authed(gw.url, token), f"conv/{group}/chat", 3)
    c = await consume(gw.url, token, f"conv/{group}/>", ack_wait_ms=int(400 * UNIT))
    msgs = await collect(c, 3)
    assert [m["attempt"] for m in msgs] == [1, 1, 1]
    await ack(c, msgs[0])
    await c.send({"op": "nack", "sid": 1, "topic": msgs[1]["topic"], "offset": msgs[1]["offset"]})
    (nacked,) = await collect(c, 1)
    assert (nacked["body"], nacked["attempt"]) == (1, 2)
    await ack(c, nacked)
    (late,) = await collect(c, 1)  # never acked: back after ack_wait
    assert (late["body"], late["attempt"]) == (2, 2)
    await ack(c, late)
    with pytest.raises(TimeoutError):
        await c.expect("msg", timeout=0.6)


async def test_max_deliver_dead_letters_with_the_reason(
    deployment: Deployment, token: str, group: str
) -> None:
    a, b = await two_gateways_with_max_deliver(deployment, 2)
    await publish(await authed(a.url, token), f"conv/{group}/chat", 1, headers={"traceparent": "00-x"})
    dlq = await dead_letters(a.url, token, group)
    c = await consume(b.url, token, f"conv/{group}/>")
    for attempt in (1, 2):
        (m,) = await collect(c, 1)
        assert m["attempt"] == attempt
        await c.send({"op": "nack", "sid": m["sid"], "topic": m["topic"], "offset": m["offset"]})
    letter = await dlq.expect("msg", timeout=10)
    assert letter["topic"] == f"dlq/conv/{group}/chat"
    assert letter["headers"]["tidings-dlq-reason"] == "nacked 2 times (max_deliver)"
    assert letter["headers"]["traceparent"] == "00-x"
    with pytest.raises(TimeoutError):
        await c.expect("msg", timeout=0.4)


async def test_cursor_resumes_on_another_gateway_and_after_restart(
    deployment: Deployment, token: str, group: str
) -> None:
    a, b = await deployment.start(2)
    await publish(await authed(a.url, token), f"conv/{group}/chat", 6)
    c = await consume(a.url, token, f"conv/{group}/>")
    msgs = await collect(c, 6)
    for m in (msgs[0], msgs[1], msgs[3]):  # out of order
        await ack(c, m)
    await asyncio.sleep(0.5 * UNIT)  # cursors are saved every 0.2 s
    await c.close()
    c = await consume(b.url, token, f"conv/{group}/>")
    again = await collect(c, 3)
    assert sorted(m["body"] for m in again) == [2, 4, 5], "acked ones never come back, unacked do"
    await ack(c, next(m for m in again if m["body"] == 2))
    await asyncio.sleep(0.5 * UNIT)
    await c.close()
    await deployment.stop()
    (gw,) = await deployment.start()
    c = await consume(gw.url, token, f"conv/{group}/>")
    assert sorted(m["body"] for m in await collect(c, 2)) == [4, 5]
    with pytest.raises(TimeoutError):
        await c.expect("msg", timeout=0.4)


async def test_echo_false_skips_the_agent_s_own_messages_and_counts_them_acked(
    deployment: Deployment, authority: Authority, token: str, group: str
) -> None:
    """A consumer (joined on either gateway) and a live subscription with ``echo: false``
    never get their own agent's messages; the consumer counts them as acked."""
    a, b = await deployment.start(2)
    topic = f"conv/{group}/chat"
    alice, bob = await authed(a.url, token), await authed(b.url, authority.mint("bob", pub=[">"], subs=[">"]))
    c = await consume(a.url, token, f"conv/{group}/>", echo=False)
    live = await authed(b.url, token)
    await live.send({"op": "sub", "topic": topic, "echo": False, "rid": 1})
    await live.expect("subbed")
    await publish(alice, topic, 2)
    await publish(bob, topic, 2, start=2)
    got = await collect(c, 2)
    assert [(m["body"], m["sender"]) for m in got] == [(2, "bob"), (3, "bob")]
    assert [m["body"] for m in await collect(live, 2)] == [2, 3]
    for m in got:
        await ack(c, m)
    for raw in (c, live):
        with pytest.raises(TimeoutError):
            await raw.expect("msg", timeout=0.3)
    # A second member on the other gateway (through the owner, with NATS) skips them too.
    d = await consume(b.url, token, f"conv/{group}/>", echo=False)
    await c.close()
    await publish(alice, topic, 1, start=4)
    await publish(bob, topic, 1, start=5)
    (m,) = await collect(d, 1)
    assert m["body"] == 5
    await ack(d, m)
    await asyncio.sleep(0.5 * UNIT)  # cursors are saved every 0.2 s
    await d.close()
    await deployment.stop()
    # After a restart, resumed with echo on: the skipped ones were settled; new ones of its own come.
    (gw,) = await deployment.start()
    c = await consume(gw.url, token, f"conv/{group}/>")
    with pytest.raises(TimeoutError):
        await c.expect("msg", timeout=0.4)
    await publish(await authed(gw.url, token), topic, 1, start=6)
    assert [m["body"] for m in await collect(c, 1)] == [6]


async def test_work_queue_splits_and_max_inflight_pauses(
    deployment: Deployment, token: str, group: str
) -> None:
    """Members of one consumer share its messages, on one gateway or on two."""
    a, b = await deployment.start(2)
    x = await consume(a.url, token, f"conv/{group}/>", max_inflight=2)
    y = await consume(b.url, token, f"conv/{group}/>", max_inflight=2)
    await publish(await authed(a.url, token), f"conv/{group}/chat", 6)
    got_x, got_y = await collect(x, 2), await collect(y, 2)
    for raw in (x, y):
        with pytest.raises(TimeoutError):
            await raw.expect("msg", timeout=0.3)
    bodies = {m["body"] for m in got_x + got_y}
    assert bodies == {0, 1, 2, 3}, "each message to one member, two in flight each"
    await ack(y, got_y[0])
    (more,) = await collect(y, 1)
    assert more["body"] not in bodies
    await ack(x, got_x[0])
    (last,) = await collect(x, 1)
    assert {more["body"], last["body"]} == {4, 5}


async def test_max_deliver_counts_attempts_across_members_and_gateways(
    deployment: Deployment, token: str, group: str
) -> None:
    a, b = await two_gateways_with_max_deliver(deployment, 3)
    await publish(await authed(a.url, token), f"conv/{group}/chat", 1)
    dlq = await dead_letters(a.url, token, group)
    c = await consume(a.url, token, f"conv/{group}/>")
    (m,) = await collect(c, 1)
    await c.send({"op": "nack", "sid": m["sid"], "topic": m["topic"], "offset": m["offset"]})
    (m,) = await collect(c, 1)
    assert m["attempt"] == 2
    await asyncio.sleep(0.5 * UNIT)  # cursors (with attempts) are saved every 0.2 s
    await c.close()  # the second attempt is never acked
    c = await consume(b.url, token, f"conv/{group}/>")
    (m,) = await collect(c, 1)
    assert m["attempt"] == 3, "the member on the other gateway goes on counting"
    await c.send({"op": "nack", "sid": m["sid"], "topic": m["topic"], "offset": m["offset"]})
    letter = await dlq.expect("msg", timeout=10)
    assert letter["headers"]["tidings-dlq-reason"] == "nacked 3 times (max_deliver)"
    with pytest.raises(TimeoutError):
        await c.expect("msg", timeout=0.4)


async def test_retention_is_reported_as_a_gap(deployment: Deployment, token: str, group: str) -> None:
    namespaces = default_namespaces()
    namespaces["ctl"] = NamespacePolicy(max_messages=5)
    (gw,) = await deployment.start(namespaces=namespaces)
    raw = await authed(gw.url, token)
    topic = f"ctl/{group}/agent"
    acks = await publish(raw, topic, 20)
    await deployment.settle_retention()
    await raw.send({"op": "sub", "topic": topic, "from": {"offset": 0}, "rid": 1})
    gap = await raw.expect("gap", timeout=10)
    # Both engines name every removed offset; NATS's range may also cover offsets of other topics.
    assert gap["from"] <= acks[0]["offset"]
    assert acks[14]["offset"] <= gap["to"] < acks[15]["offset"]
    assert [m["body"] for m in await collect(raw, 5)] == [15, 16, 17, 18, 19]
    fresh = await authed(gw.url, token)
    await fresh.send({"op": "sub", "topic": topic, "from": "earliest", "rid": 1})
    assert [m["body"] for m in await collect(fresh, 5)] == [15, 16, 17, 18, 19]
    assert not [f for f in fresh.inbox if f["op"] == "gap"], "earliest starts at what is retained"


async def test_a_conversation_s_own_retention_and_its_deletion(
    deployment: Deployment, token: str, group: str
) -> None:
    (gw,) = await deployment.start()
    topic = f"conv/{group}/chat"
    conversation = Conversation(topic=topic, policy=ConversationPolicy(max_messages=3))
    await gw.catalog.put_conversation(conversation)
    acks = await publish(await authed(gw.url, token), topic, 10)
    await deployment.settle_retention()
    reader = await authed(gw.url, token)
    await reader.send({"op": "sub", "topic": topic, "from": {"offset": 0}, "rid": 1})
    gap = await reader.expect("gap", timeout=10)
    assert acks[6]["offset"] <= gap["to"] < acks[7]["offset"]
    assert [m["body"] for m in await collect(reader, 3)] == [7, 8, 9]
    conversation.state = "deleted"
    await gw.catalog.put_conversation(conversation)
    await deployment.settle_retention()
    fresh = await authed(gw.url, token)
    await fresh.send({"op": "sub", "topic": topic, "from": "earliest", "rid": 1})
    with pytest.raises(TimeoutError):
        await fresh.expect("msg", timeout=0.3)


async def test_the_catalog_is_never_trimmed_by_the_ctl_namespace_s_limits(
    deployment: Deployment, group: str
) -> None:
    namespaces = default_namespaces()
    namespaces["ctl"] = NamespacePolicy(max_messages=3)
    (gw,) = await deployment.start(namespaces=namespaces)
    jtis = [f"{group}-{i}" for i in range(6)]
    for jti in jtis:
        await gw.catalog.revoke(jti, int(time.time() * 1000) + 3_600_000)
    await deployment.settle_retention()
    await deployment.stop()
    (gw,) = await deployment.start(namespaces=namespaces)
    assert [jti for jti in jtis if not gw.catalog.is_revoked(jti)] == [], "every revocation replayed"

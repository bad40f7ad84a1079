"""Durable topics over real sockets and a real on-disk log."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conftest import UNIT, start_gateway
from tests.gateway.wsclient import Raw, authed
from tidings.auth import Authority
from tidings.config import NamespacePolicy, Settings, default_namespaces
from tidings.gateway import Gateway
from tidings.gateway.consumer import TopicState

ALL = {"pub": [">"], "subs": [">"]}


@pytest.fixture
def token(authority: Authority) -> str:
    return authority.mint("alice", **ALL)


async def publish(raw: Raw, topic: str, n: int, start: int = 0, **extra: Any) -> list[dict[str, Any]]:
    frames = [{"op": "pub", "topic": topic, "body": i, "id": f"{topic}-{i}", "rid": i, **extra}
              for i in range(start, start + n)]  # fmt: skip
    await raw.send(*frames)
    acks = [await raw.expect("puback") for _ in range(n)]
    return sorted(acks, key=lambda a: a["rid"])


async def collect(raw: Raw, n: int, op: str = "msg") -> list[dict[str, Any]]:
    return [await raw.expect(op) for _ in range(n)]


async def ack_until_quiet(raw: Raw, quiet: float) -> list[Any]:
    """Ack each message as it comes until none has come for ``quiet`` seconds; return their bodies."""
    bodies: list[Any] = []
    while True:
        try:
            m = await raw.expect("msg", timeout=quiet)
        except TimeoutError:
            return bodies
        bodies.append(m["body"])
        await raw.send({"op": "ack", "sid": m["sid"], "topic": m["topic"], "offset": m["offset"]})


async def test_puback_offsets_increase_and_duplicates_are_not_stored(gw: Gateway, token: str) -> None:
    raw = await authed(gw.url, token)
    acks = await publish(raw, "conv/t1/chat", 10)
    offsets = [a["offset"] for a in acks]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 10
    assert not any(a.get("duplicate") for a in acks)
    again = await publish(raw, "conv/t1/chat", 3)
    assert [a["offset"] for a in again] == offsets[:3]
    assert all(a["duplicate"] for a in again)
    assert await gw.engine.head("conv/t1/chat") == offsets[-1]


async def test_dedup_survives_restart(authority: Authority, token: str) -> None:
    gw = await start_gateway(authority)
    raw = await authed(gw.url, token)
    (first,) = await publish(raw, "conv/t2/chat", 1)
    await gw.stop()
    gw = await start_gateway(authority)
    raw = await authed(gw.url, token)
    (again,) = await publish(raw, "conv/t2/chat", 1)
    assert again["offset"] == first["offset"]
    assert again["duplicate"] is True
    await gw.stop()


async def test_causal_metadata_round_trips(gw: Gateway, authority: Authority) -> None:
    raw = await authed(gw.url, authority.mint("bob", **ALL))
    await raw.send({"op": "pub", "topic": "conv/t3/chat", "body": {"x": [1, "y"]}, "id": "m1", "rid": 1,
                    "parent": "m0", "lamport": 42, "headers": {"traceparent": "00-ab-cd-01"}})  # fmt: skip
    ack = await raw.expect("puback")
    await raw.send({"op": "sub", "topic": "conv/t3/chat", "from": "earliest", "rid": 2})
    subbed = await raw.expect("subbed")
    assert subbed["durable"] is True
    assert subbed["head"] == ack["offset"]
    msg = await raw.expect("msg")
    fields = ("id", "topic", "offset", "sender", "parent", "lamport", "headers", "body")
    assert {k: msg[k] for k in fields} == {
        "id": "m1", "topic": "conv/t3/chat", "offset": ack["offset"], "sender": "bob", "parent": "m0",
        "lamport": 42, "headers": {"traceparent": "00-ab-cd-01"}, "body": {"x": [1, "y"]},
    }  # fmt: skip
    assert abs(msg["ts"] - time.time() * 1000) < 10_000


async def test_replay_positions(gw: Gateway, token: str) -> None:
    raw = await authed(gw.url, token)
    acks = await publish(raw, "conv/t4/chat", 10)
    offsets = [a["offset"] for a in acks]
    sub = await authed(gw.url, token)
    await sub.send({"op": "sub", "topic": "conv/t4/chat", "from": {"offset": offsets[6]}, "rid": 1})
    assert [m["body"] for m in await collect(sub, 3)] == [7, 8, 9]
    await sub.send({"op": "sub", "topic": "conv/t4/>", "from": "latest", "rid": 2})
    await sub.expect("subbed")
    await publish(raw, "conv/t4/chat", 1, start=10)
    msgs = await collect(sub, 2)  # the reader from offset 6 and the one from latest both get it
    assert sorted(m["sid"] for m in msgs) == [1, 2]
    assert all(m["body"] == 10 for m in msgs)


async def test_replay_from_time(gw: Gateway, token: str) -> None:
    raw = await authed(gw.url, token)
    await publish(raw, "conv/t5/chat", 3)
    await asyncio.sleep(0.05)
    cut = int(time.time() * 1000)
    await asyncio.sleep(0.05)
    await publish(raw, "conv/t5/chat", 2, start=3)
    await raw.send({"op": "sub", "topic": "conv/t5/chat", "from": {"time": cut}, "rid": 9})
    assert [m["body"] for m in await collect(raw, 2)] == [3, 4]


async def test_replay_then_live_seam_under_concurrent_publishing(gw: Gateway, token: str) -> None:
    """A reader joining mid-stream sees every message exactly once, in offset order."""
    pub = await authed(gw.url, token)
    total = 3000
    acked: list[int] = []

    async def publisher() -> None:
        for start in range(0, total, 100):
            acked.extend(a["offset"] for a in await publish(pub, "conv/seam/chat", 100, start=start))

    task = asyncio.create_task(publisher())
    while len(acked) < 800:  # noqa: ASYNC110 - polling a plain list the publisher fills
        await asyncio.sleep(0.005)
    sub = await authed(gw.url, token)
    await sub.send({"op": "sub", "topic": "conv/seam/>", "from": "earliest", "rid": 1})
    await task
    got = [m["offset"] for m in await collect(sub, total)]
    assert got == sorted(acked), "no gap, no duplicate, in order"
    with pytest.raises(TimeoutError):
        await sub.expect("msg", timeout=0.2)


async def test_retention_gap_is_reported(authority: Authority, token: str) -> None:
    namespaces = default_namespaces()
    namespaces["conv"] = NamespacePolicy(max_messages=5)
    gw = await start_gateway(authority, namespaces=namespaces)
    try:
        raw = await authed(gw.url, token)
        acks = await publish(raw, "conv/t6/chat", 20)
        await gw.engine.store.trim()  # type: ignore[attr-defined]
        await raw.send({"op": "sub", "topic": "conv/t6/chat", "from": {"offset": 0}, "rid": 1})
        gap = await raw.expect("gap")
        assert gap["from"] == 1
        assert gap["to"] == acks[14]["offset"]
        assert [m["body"] for m in await collect(raw, 5)] == [15, 16, 17, 18, 19]
    finally:
        await gw.stop()


async def test_live_subscription_to_durable_topic_gets_committed_messages(gw: Gateway, token: str) -> None:
    sub = await authed(gw.url, token)
    await sub.send({"op": "sub", "topic": "conv/t7/>", "rid": 1})
    assert (await sub.expect("subbed")).get("durable") is None
    pub = await authed(gw.url, token)
    (ack,) = await publish(pub, "conv/t7/chat", 1)
    msg = await sub.expect("msg")
    assert msg["offset"] == ack["offset"]
    assert "attempt" not in msg


# -- durable consumers -----------------------------------------------------------


async def consume(url: str, token: str, pattern: str, **opts: Any) -> Raw:
    raw = await authed(url, token)
    await raw.send({"op": "sub", "topic": pattern, "consumer": "worker", "rid": 1, **opts})
    await raw.expect("subbed")
    return raw


async def test_acked_messages_are_not_redelivered_and_unacked_are(gw: Gateway, token: str) -> None:
    pub = await authed(gw.url, token)
    await publish(pub, "conv/c1/chat", 4)
    c = await consume(gw.url, token, "conv/c1/>", ack_wait_ms=int(300 * UNIT))
    msgs = await collect(c, 4)
    assert [m["attempt"] for m in msgs] == [1, 1, 1, 1]
    for m in msgs[:2]:
        await c.send({"op": "ack", "sid": m["sid"], "topic": m["topic"], "offset": m["offset"]})
    again = await collect(c, 2)
    assert [m["body"] for m in again] == [2, 3]
    assert [m["attempt"] for m in again] == [2, 2]


async def test_settled_messages_leave_no_timers_behind(gw: Gateway, token: str) -> None:
    """Acked deliveries' ack_wait timers are dropped, and the registry keeps one wake-up per consumer."""
    pub = await authed(gw.url, token)
    await publish(pub, "conv/c9/chat", 300)
    c = await consume(gw.url, token, "conv/c9/>")
    for m in await collect(c, 300):
        await c.send({"op": "ack", "sid": m["sid"], "topic": m["topic"], "offset": m["offset"]})
    await publish(pub, "conv/c9/chat", 1, start=300)
    (last,) = await collect(c, 1)
    assert last["body"] == 300
    (consumer,) = gw.consumers.by_key.values()
    assert len(consumer.pending) == 1
    assert len(consumer.timers) <= 2, "the 300 settled timers were compacted away"
    assert len(gw.consumers._wakeups) == 1, "one wake-up for the consumer's earliest timer"


async def test_acks_in_delivery_order_leave_only_the_inflight_timers(gw: Gateway, token: str) -> None:
    """Each ack in order drops its ack_wait timer at once (no settled entries wait for compaction)."""
    pub = await authed(gw.url, token)
    await publish(pub, "conv/c8/chat", 40)
    c = await consume(gw.url, token, "conv/c8/>")
    got = await collect(c, 40)
    (consumer,) = gw.consumers.by_key.values()
    assert len(consumer.timers) == 40
    for n, m in enumerate(got[:30], 1):
        await c.send({"op": "ack", "sid": m["sid"], "topic": m["topic"], "offset": m["offset"]})
        for _ in range(200):
            if len(consumer.pending) == 40 - n:
                break
            await asyncio.sleep(0.005)
        assert len(consumer.pending) == 40 - n
        assert len(consumer.timers) == len(consumer.pending)


def test_a_topic_cursor_keeps_only_the_acks_above_its_floor() -> None:
    state = TopicState(10)
    state.outstanding, state.acked = {12, 15}, {5, 11, 13, 14}
    cursor = state.cursor({})
    assert (cursor.floor, cursor.acked) == (11, [13, 14])
    state.outstanding, state.read_through, state.acked = set(), 20, {13, 14, 16}
    cursor = state.cursor({})
    assert (cursor.floor, cursor.acked, state.acked) == (20, [], set())


async def test_nack_redelivers_after_delay(gw: Gateway, token: str) -> None:
    pub = await authed(gw.url, token)
    await publish(pub, "conv/c2/chat", 1)
    c = await consume(gw.url, token, "conv/c2/>")
    (m,) = await collect(c, 1)
    t0 = time.monotonic()
    await c.send({"op": "nack", "sid": m["sid"], "topic": m["topic"], "offset": m["offset"], "delay_ms": 200})
    (again,) = await collect(c, 1)
    assert again["attempt"] == 2
    assert time.monotonic() - t0 >= 0.18
    await c.send({"op": "nack", "sid": m["sid"], "topic": m["topic"], "offset": m["offset"], "delay_ms": 100})
    t1 = time.monotonic()
    (third,) = await collect(c, 1)
    assert third["attempt"] == 3
    assert time.monotonic() - t1 >= 0.18, "backoff doubles the delay on the second nack"


async def test_max_deliver_sends_to_dlq(authority: Authority, token: str) -> None:
    namespaces = default_namespaces()
    namespaces["conv"] = NamespacePolicy(max_deliver=2)
    gw = await start_gateway(authority, namespaces=namespaces)
    try:
        pub = await authed(gw.url, token)
        await publish(pub, "conv/c3/chat", 1, headers={"traceparent": "00-x"})
        dlq = await authed(gw.url, token)
        await dlq.send({"op": "sub", "topic": "dlq/conv/c3/>", "rid": 1})
        await dlq.expect("subbed")
        c = await consume(gw.url, token, "conv/c3/>")
        for attempt in (1, 2):
            (m,) = await collect(c, 1)
            assert m["attempt"] == attempt
            await c.send({"op": "nack", "sid": m["sid"], "topic": m["topic"], "offset": m["offset"]})
        letter = await dlq.expect("msg")
        assert letter["topic"] == "dlq/conv/c3/chat"
        assert letter["body"] == 0
        assert letter["headers"]["tidings-dlq-reason"] == "nacked 2 times (max_deliver)"
        assert letter["headers"]["tidings-dlq-topic"] == "conv/c3/chat"
        assert letter["headers"]["traceparent"] == "00-x"
        with pytest.raises(TimeoutError):
            await c.expect("msg", timeout=0.3)
        assert gw.consumers.dead_letters == 1
    finally:
        await gw.stop()


async def test_max_inflight_pauses_until_acks(gw: Gateway, token: str) -> None:
    pub = await authed(gw.url, token)
    await publish(pub, "conv/c4/chat", 10)
    c = await consume(gw.url, token, "conv/c4/>", max_inflight=3)
    first = await collect(c, 3)
    with pytest.raises(TimeoutError):
        await c.expect("msg", timeout=0.2)
    await c.send({"op": "ack", "sid": 1, "topic": "conv/c4/chat", "offset": first[0]["offset"]})
    (nxt,) = await collect(c, 1)
    assert nxt["body"] == 3


async def test_cursor_survives_restart(authority: Authority, token: str) -> None:
    gw = await start_gateway(authority)
    pub = await authed(gw.url, token)
    await publish(pub, "conv/c5/chat", 6)
    c = await consume(gw.url, token, "conv/c5/>")
    msgs = await collect(c, 6)
    for m in (msgs[0], msgs[1], msgs[3]):  # ack out of order
        await c.send({"op": "ack", "sid": 1, "topic": m["topic"], "offset": m["offset"]})
    await asyncio.sleep(0.1)
    await gw.stop()
    gw = await start_gateway(authority)
    try:
        c = await consume(gw.url, token, "conv/c5/>")
        again = await collect(c, 3)
        assert sorted(m["body"] for m in again) == [2, 4, 5]
        assert {m["attempt"] for m in again} == {2}, "attempts are saved with the cursor"
        with pytest.raises(TimeoutError):
            await c.expect("msg", timeout=0.3)
    finally:
        await gw.stop()


async def test_one_consumer_on_two_connections_splits_the_work(gw: Gateway, token: str) -> None:
    a = await consume(gw.url, token, "conv/c6/>")
    b = await consume(gw.url, token, "conv/c6/>")
    pub = await authed(gw.url, token)
    await publish(pub, "conv/c6/chat", 40)
    got = dict(zip("ab", await asyncio.gather(ack_until_quiet(a, 0.5), ack_until_quiet(b, 0.5)), strict=True))
    assert sorted(got["a"] + got["b"]) == list(range(40)), "every message once"
    assert got["a"]
    assert got["b"], "both connections got a share"


async def test_ack_for_unknown_offset_is_ignored(gw: Gateway, token: str) -> None:
    c = await consume(gw.url, token, "conv/c7/>")
    await c.send({"op": "ack", "sid": 1, "topic": "conv/c7/chat", "offset": 12345})
    await c.send({"op": "sub", "topic": "conv/c7/x", "rid": 2})
    assert (await c.expect("subbed"))["rid"] == 2


async def test_consumer_on_ephemeral_namespace_is_refused(gw: Gateway, token: str) -> None:
    raw = await authed(gw.url, token)
    await raw.send({"op": "sub", "topic": "sig/a/>", "consumer": "w", "rid": 1})
    assert (await raw.recv())["code"] == "not_supported"


async def test_failed_fsync_is_fatal_and_never_acknowledged(authority: Authority, token: str) -> None:
    from pathlib import Path

    from tests.log.filesystems import FailingFileSystem
    from tidings.engine.embedded import EmbeddedEngine

    files = FailingFileSystem()
    fatal: list[BaseException] = []
    engine = EmbeddedEngine(Path("data"), files=files, on_fatal=fatal.append)
    gw = Gateway(Settings(port=0, data_dir="data"), authority, engine=engine)
    await gw.start()
    try:
        raw = await authed(gw.url, token)
        (ok,) = await publish(raw, "conv/f1/chat", 1)
        assert ok["op"] == "puback"
        files.failing = True
        await raw.send({"op": "pub", "topic": "conv/f1/chat", "body": 1, "id": "doomed", "rid": 7})
        err = await raw.recv()
        assert err["op"] == "error", "no puback after a failed sync"
        assert err["code"] == "sync_failed"
        assert err["rid"] == 7
        assert len(fatal) == 1, "the server is told to stop"
        files.failing = False
        await raw.send({"op": "pub", "topic": "conv/f1/chat", "body": 2, "id": "later", "rid": 8})
        assert (await raw.recv())["code"] == "sync_failed", "nothing is acknowledged after a failed sync"
    finally:
        await gw.stop()

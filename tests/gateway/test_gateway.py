"""The gateway over real sockets: pub/sub, auth, limits; bystanders keep being served."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import UNIT, start_gateway
from tests.gateway.wsclient import Bystander, Raw, authed
from tidings.auth import Authority
from tidings.config import Settings
from tidings.gateway import Gateway


@pytest.fixture
def token(authority: Authority) -> str:
    return authority.mint("alice", pub=["sig/>"], subs=["sig/>"])


@pytest.fixture
async def bystander(gateway: Gateway, authority: Authority) -> AsyncIterator[Bystander]:
    b = await Bystander.start(gateway.url, authority.mint("bob", pub=["sig/>"], subs=["sig/>"]))
    await b.assert_alive()
    yield b
    await b.assert_alive()
    await b.close()


async def test_wildcard_subscribe_publish_receive(gateway: Gateway, token: str) -> None:
    sub = await authed(gateway.url, token)
    await sub.send({"op": "sub", "topic": "sig/team-1/>", "rid": 7})
    assert await sub.recv() == {"op": "subbed", "sid": 1, "topic": "sig/team-1/>", "rid": 7}
    pub = await authed(gateway.url, token, "tidings.v1.msgpack")
    await pub.send(
        {"op": "pub", "topic": "sig/team-1/task/9", "body": {"n": 1}, "rid": 3, "sender": "mallory"}
    )
    ack = await pub.recv()
    assert ack["op"] == "puback" and ack["rid"] == 3
    msg = await sub.recv()
    assert msg["op"] == "msg" and msg["sid"] == 1 and msg["topic"] == "sig/team-1/task/9"
    assert msg["body"] == {"n": 1} and msg["id"] == ack["id"]
    assert msg["sender"] == "alice", "sender is stamped from the token, never taken from the client"
    assert abs(msg["ts"] - time.time() * 1000) < 5000
    await pub.send({"op": "pub", "topic": "sig/team-2/x", "body": 1})
    await pub.send({"op": "pub", "topic": "sig/team-1/y", "body": 2})
    assert (await sub.recv())["body"] == 2, "non-matching topic was not delivered"


async def test_one_publish_reaches_json_and_msgpack_subscribers(gateway: Gateway, token: str) -> None:
    subs = [await authed(gateway.url, token, p) for p in ("tidings.v1.json", "tidings.v1.msgpack") * 2]
    for s in subs:
        await s.send({"op": "sub", "topic": "sig/a/*", "rid": 1})
        await s.expect("subbed")
    pub = await authed(gateway.url, token)
    await pub.send({"op": "pub", "topic": "sig/a/b", "body": {"text": "hi", "xs": [1, 2.5, None]}})
    for s in subs:
        assert (await s.expect("msg"))["body"] == {"text": "hi", "xs": [1, 2.5, None]}


async def test_frames_of_one_turn_are_coalesced(gateway: Gateway, token: str) -> None:
    sub = await authed(gateway.url, token)
    await sub.send({"op": "sub", "topic": "sig/a/>", "rid": 1})
    await sub.expect("subbed")
    before = sub.messages_received
    pub = await authed(gateway.url, token)
    await pub.send(*[{"op": "pub", "topic": "sig/a/b", "body": i} for i in range(200)])
    bodies = [(await sub.expect("msg"))["body"] for _ in range(200)]
    assert bodies == list(range(200)), "per-topic order is kept"
    assert sub.messages_received - before < 20, "200 deliveries of one batch left in a few WebSocket messages"


async def test_unsub_stops_delivery(gateway: Gateway, token: str) -> None:
    sub = await authed(gateway.url, token)
    await sub.send({"op": "sub", "topic": "sig/a/b", "rid": 1}, {"op": "sub", "topic": "sig/a/>", "rid": 2})
    await sub.expect("subbed")
    await sub.expect("subbed")
    await sub.send({"op": "unsub", "sid": 1, "rid": 3})
    assert await sub.expect("unsubbed") == {"op": "unsubbed", "sid": 1, "rid": 3}
    await sub.send({"op": "pub", "topic": "sig/a/b", "body": "x"})
    msg = await sub.expect("msg")
    assert msg["sid"] == 2
    with pytest.raises(TimeoutError):
        await sub.recv(timeout=0.2)


async def test_expired_token(gateway: Gateway, authority: Authority, bystander: Bystander) -> None:
    raw = await Raw.open(gateway.url)
    err = await raw.hello(authority.mint("eve", pub=[">"], subs=[">"], ttl=-10))
    assert err == {"op": "error", "code": "unauthorized", "message": "token has expired", "rid": 0}
    assert await raw.closed() == (1008, "token has expired")


async def test_bad_signature(gateway: Gateway, bystander: Bystander) -> None:
    forged = Authority(b"another-secret-another-secret-0123").mint("eve", pub=[">"], subs=[">"])
    raw = await Raw.open(gateway.url)
    err = await raw.hello(forged)
    assert err["code"] == "unauthorized" and "signature" in err["message"]
    assert (await raw.closed())[0] == 1008


@pytest.mark.parametrize("bad", ["", "abc", "a.b.c", "x" * 5000, None])
async def test_malformed_or_missing_token(gateway: Gateway, bystander: Bystander, bad: str | None) -> None:
    raw = await Raw.open(gateway.url)
    err = await raw.hello(bad)
    assert err["op"] == "error" and err["code"] == "unauthorized"
    assert (await raw.closed())[0] == 1008


async def test_topic_outside_grant(gateway: Gateway, authority: Authority, bystander: Bystander) -> None:
    raw = await authed(gateway.url, authority.mint("carol", pub=["sig/team-1/>"], subs=["sig/team-1/*"]))
    await raw.send({"op": "pub", "topic": "sig/team-2/x", "body": 1, "rid": 5})
    err = await raw.recv()
    assert err["code"] == "forbidden" and err["rid"] == 5 and "sig/team-2/x" in err["message"]
    await raw.send({"op": "sub", "topic": "sig/team-1/>", "rid": 6})
    err = await raw.recv()
    assert err["code"] == "forbidden" and err["rid"] == 6, "a wider pattern than granted is refused"
    await raw.send({"op": "sub", "topic": "sig/team-1/x", "rid": 7})
    assert (await raw.recv())["op"] == "subbed", "the connection stays usable"


async def test_hello_deadline(gateway: Gateway, bystander: Bystander) -> None:
    raw = await Raw.open(gateway.url)
    started = time.monotonic()
    err = await raw.recv(timeout=3)
    assert err["code"] == "protocol_error" and "hello" in err["message"]
    assert await raw.closed() == (1008, "no hello within the deadline")
    assert time.monotonic() - started < 2.5 * UNIT


async def test_frames_before_hello_are_refused(gateway: Gateway, bystander: Bystander) -> None:
    raw = await Raw.open(gateway.url)
    await raw.send({"op": "pub", "topic": "sig/a/b", "body": 1})
    assert (await raw.recv())["code"] == "protocol_error"
    assert (await raw.closed())[0] == 1008


async def test_too_many_subscriptions(gateway: Gateway, token: str, bystander: Bystander) -> None:
    raw = await authed(gateway.url, token)
    for i in range(5):
        await raw.send({"op": "sub", "topic": f"sig/a/{i}", "rid": i})
        assert (await raw.recv())["op"] == "subbed"
    await raw.send({"op": "sub", "topic": "sig/a/5", "rid": 5})
    err = await raw.recv()
    assert err["code"] == "limit_exceeded" and err["rid"] == 5
    await raw.send({"op": "pub", "topic": "sig/a/0", "body": "still here"})
    assert (await raw.expect("msg"))["body"] == "still here"


async def test_a_client_that_keeps_sending_refused_frames_is_closed(authority: Authority, token: str) -> None:
    gw = await start_gateway(authority, max_refusals=20)
    try:
        raw = await authed(gw.url, token)
        bad = [{"op": "pub", "topic": "nope/a/b", "body": 1, "rid": i} for i in range(10)]
        await raw.send(*bad)  # half the burst
        assert [(await raw.recv())["code"] for _ in range(10)] == ["invalid_topic"] * 10
        await asyncio.sleep(0.5)  # refilled by a tenth of the burst a second: 10 left, plus 1
        await raw.send(*bad, *bad, *bad)
        codes = []
        while not codes or codes[-1] != "limit_exceeded":
            codes.append((await raw.recv())["code"])
        # 10 left + 1 refilled (a little more on a slow machine), then the one past the burst
        # is answered and the connection closed
        assert 12 <= codes.count("invalid_topic") <= 14, codes
        code, reason = await raw.closed()
        assert code == 1008 and "refused" in reason
        assert gw.stats.refusal_closes == 1
        ok = await authed(gw.url, token)  # the limit is per connection
        await ok.send({"op": "pub", "topic": "nope/a/b", "body": 1, "rid": 1})
        assert (await ok.recv())["code"] == "invalid_topic"
        await ok.close()
    finally:
        await gw.stop()


async def test_acks_racing_an_unsub_are_answered_but_never_count_as_refusals(
    authority: Authority, token: str
) -> None:
    gw = await start_gateway(authority, max_refusals=5)
    try:
        raw = await authed(gw.url, token)
        acks = [{"op": "ack", "sid": 7, "topic": "conv/g/t", "offset": i} for i in range(1, 21)]
        await raw.send(*acks)  # a durable subscription this connection just dropped
        assert {(await raw.recv())["code"] for _ in range(20)} == {"invalid_frame"}
        await raw.send({"op": "pub", "topic": "sig/a/b", "body": 1, "rid": 1})
        assert (await raw.expect("puback"))["rid"] == 1, "still open"
        await raw.close()
    finally:
        await gw.stop()


async def test_invalid_and_overlong_topics(gateway: Gateway, token: str, bystander: Bystander) -> None:
    raw = await authed(gateway.url, token)
    for i, topic in enumerate(["sig/a", "sig/a b/c", "sig/a/" + "x" * 300, "nope/a/b"]):
        await raw.send({"op": "pub", "topic": topic, "body": 1, "rid": i})
        err = await raw.recv()
        assert err["code"] == "invalid_topic" and err["rid"] == i


async def test_oversize_message_closes_with_1009(gateway: Gateway, token: str, bystander: Bystander) -> None:
    raw = await authed(gateway.url, token)
    await raw.ws.send("x" * (gateway.settings.max_frame_bytes + 1))
    code, _ = await raw.closed()
    assert code == 1009


async def test_oversize_fragmented_message_closes_with_1009(
    gateway: Gateway, token: str, bystander: Bystander
) -> None:
    raw = await authed(gateway.url, token)
    piece = "x" * (gateway.settings.max_frame_bytes // 3)
    await raw.ws.send([piece, piece, piece, piece])
    code, reason = await raw.closed()
    assert code == 1009 and "fragmented" in reason


async def test_oversize_frame_is_refused_before_its_payload_arrives(
    gateway: Gateway, bystander: Bystander
) -> None:
    """Announce a 100 MB frame and send none of it: the server closes at the header."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3 * UNIT)
    assert head.startswith(b"HTTP/1.1 101")
    writer.write(b"\x81\xff" + (100 * 1024 * 1024).to_bytes(8, "big") + b"\x00\x00\x00\x00")
    await writer.drain()
    first = await asyncio.wait_for(reader.readexactly(4), 3 * UNIT)
    assert first[0] == 0x88, "a close frame"
    assert int.from_bytes(first[2:4], "big") == 1009
    writer.close()


async def test_garbage_frame_is_answered_and_connection_survives(
    gateway: Gateway, token: str, bystander: Bystander
) -> None:
    raw = await authed(gateway.url, token)
    await raw.ws.send("{definitely not json")
    assert (await raw.recv())["code"] == "invalid_frame"
    await raw.send({"op": "sub", "topic": "sig/a/b", "rid": 1})
    assert (await raw.recv())["op"] == "subbed"


async def test_anonymous_only_when_allowed(authority: Authority) -> None:
    for allowed in (False, True):
        gw = Gateway(Settings(port=0, allow_anonymous=allowed), authority)
        await gw.start()
        try:
            raw = await Raw.open(gw.url)
            reply = await raw.hello(None)
            assert reply["op"] == ("welcome" if allowed else "error")
            if allowed:
                assert reply["agent"] == "anonymous"
            await raw.close()
        finally:
            await gw.stop()


async def test_connection_closes_when_token_expires(gateway: Gateway, authority: Authority) -> None:
    raw = await authed(gateway.url, authority.mint("dora", pub=["sig/>"], subs=["sig/>"], ttl=1))
    err = await raw.expect("error", timeout=3)
    assert err["code"] == "unauthorized"
    assert (await raw.closed())[0] == 1008


async def test_stop_drains_with_going_away(authority: Authority, token: str) -> None:
    gw = Gateway(Settings(port=0), authority)
    await gw.start()
    raw = await authed(gw.url, token)
    stopping = asyncio.create_task(gw.stop())
    assert await raw.closed() == (1001, "server shutting down")
    await stopping


async def test_health_endpoint(gateway: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await asyncio.wait_for(reader.read(1024), 3 * UNIT)
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"ok\n")
    writer.close()


async def test_ops_of_later_issues_answer_not_supported(gateway: Gateway, token: str) -> None:
    raw = await authed(gateway.url, token)
    await raw.send({"op": "commit", "stream": "s", "topic": "sig/a/b", "rid": 3})
    err = await raw.recv()
    assert err["code"] == "not_supported"
    assert "'commit'" in err["message"]
    await raw.send({"op": "ack", "sid": 99, "topic": "conv/a/b", "offset": 1})
    assert (await raw.recv())["code"] == "invalid_frame", "ack for a sid that is not durable"
    await raw.send({"op": "presence", "status": "busy", "rid": 4})
    assert (await raw.recv())["rid"] == 4
    await raw.send({"op": "sub", "topic": "sig/a/b", "rid": 5})
    assert (await raw.recv())["op"] == "subbed", "the connection stays open"


async def test_patterns_that_match_nothing_are_refused(gateway: Gateway, authority: Authority) -> None:
    raw = await authed(gateway.url, authority.mint("p", pub=[], subs=[">"]))
    for i, pattern in enumerate(["x/>", "sig/team", "nope/*/*"]):
        await raw.send({"op": "sub", "topic": pattern, "rid": i})
        assert (await raw.recv())["code"] == "invalid_topic"


async def test_fragment_protocol_violations_close_with_1002(gateway: Gateway, token: str) -> None:
    """A continuation frame with no message in progress breaks RFC 6455 section 5.4."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3 * UNIT)
    hello = b'{"op":"hello","token":"%b"}' % token.encode()
    writer.write(b"\x81" + _masked_len(len(hello)) + b"\x00\x00\x00\x00" + hello)
    writer.write(b"\x80\x82\x00\x00\x00\x00{}")  # FIN continuation, nothing to continue
    data = b""
    while b"\x88" not in data:
        chunk = await asyncio.wait_for(reader.read(4096), 3 * UNIT)
        assert chunk, "closed without a close frame"
        data += chunk
    close = data[data.index(b"\x88") :]
    assert int.from_bytes(close[2:4], "big") == 1002
    writer.close()


def _masked_len(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 126 else b"\xfe" + n.to_bytes(2, "big")


async def test_close_without_code_is_answered_1000(gateway: Gateway, token: str) -> None:
    raw = await authed(gateway.url, token)
    await raw.ws.close(code=1000)
    assert raw.ws.close_code == 1000


async def test_empty_token_is_anonymous_when_allowed(authority: Authority) -> None:
    gw = Gateway(Settings(port=0, allow_anonymous=True), authority)
    await gw.start()
    try:
        raw = await Raw.open(gw.url)
        assert (await raw.hello(""))["agent"] == "anonymous"
        await raw.close()
    finally:
        await gw.stop()


async def test_msgpack_extension_types_are_refused(gateway: Gateway, token: str) -> None:
    import msgspec

    raw = await authed(gateway.url, token, "tidings.v1.msgpack")
    frame = {"op": "pub", "topic": "sig/a/b", "body": msgspec.msgpack.Ext(5, b"xx"), "rid": 1}
    await raw.ws.send(msgspec.msgpack.encode(frame))
    err = await raw.recv()
    assert err["code"] == "invalid_frame"
    assert "extension type 5" in err["message"]


async def test_slow_live_subscriber_gets_dropped_notice_and_others_keep_receiving(
    authority: Authority,
) -> None:
    gw = Gateway(Settings(port=0, max_outbound_bytes=64 * 1024, write_timeout=30.0), authority)
    await gw.start()
    try:
        token = authority.mint("s", pub=["sig/>"], subs=["sig/>"])
        bystander = await Bystander.start(gw.url, token)
        slow = await authed(gw.url, token)  # websockets stops reading when its queue is full
        await slow.send({"op": "sub", "topic": "sig/flood/>", "rid": 1})
        await slow.expect("subbed")
        pub = await authed(gw.url, token)
        body = "x" * 1024
        for _ in range(40):  # ~20 MB: more than the kernel's socket buffers and our bound
            await pub.send(*[{"op": "pub", "topic": "sig/flood/x", "body": body} for _ in range(500)])
            await bystander.assert_alive()
        assert gw.stats.dropped > 0, "the slow subscriber's deliveries were dropped, not buffered"
        dropped = await slow.expect("dropped", timeout=20)
        assert dropped["sid"] == 1
        assert dropped["count"] > 0
        assert dropped["topic"] == "sig/flood/>"
        await bystander.assert_alive()
        slow.abort()
        await pub.close()
        await bystander.close()
    finally:
        await gw.stop()


async def test_a_client_that_never_reads_is_closed_after_write_timeout(authority: Authority) -> None:
    gw = Gateway(Settings(port=0, max_outbound_bytes=64 * 1024, write_timeout=0.5), authority)
    await gw.start()
    try:
        token = authority.mint("s", pub=["sig/>"], subs=["sig/>"])
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, limit=1024)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        frames = b'[{"op":"hello","token":"%b"},{"op":"sub","topic":"sig/never/>"}]' % token.encode()
        writer.write(b"\x81" + b"\xfe" + len(frames).to_bytes(2, "big") + b"\x00\x00\x00\x00" + frames)
        await writer.drain()
        pub = await authed(gw.url, token)
        await asyncio.sleep(0.2)
        for _ in range(60):
            await pub.send(*[{"op": "pub", "topic": "sig/never/x", "body": "y" * 1024} for _ in range(500)])
            if gw.stats.write_timeouts:
                break
            await asyncio.sleep(0.05)
        async with asyncio.timeout(10 * UNIT):
            while not gw.stats.write_timeouts:  # noqa: ASYNC110 - waiting on a counter
                await asyncio.sleep(0.05)
        assert gw.stats.dropped > 0
        writer.close()
    finally:
        await gw.stop()

"""A client written from docs/protocol.md alone, against a real gateway.

Only the third-party ``websockets`` library (and ``msgspec.msgpack`` as a plain
msgpack codec for raw maps) is used on the client side; nothing from
``tidings.protocol``. The gateway runs in-process on port 0. If these tests
fail, either the server or docs/protocol.md is wrong.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from tidings.auth import Authority
from tidings.config import Settings
from tidings.gateway import Gateway

JSON = "tidings.v1.json"
MSGPACK = "tidings.v1.msgpack"
TIMEOUT = 5.0

Frame = dict[str, Any]


class Client:
    """A minimal tidings client: one frame or a batch per WebSocket message, both ways."""

    def __init__(self, ws: ClientConnection, subprotocol: str) -> None:
        self.ws = ws
        self.binary = subprotocol == MSGPACK
        self._pending: list[Frame] = []

    async def send(self, *frames: Frame) -> None:
        """Send one frame as an object, several as one batch (an array)."""
        payload: Frame | list[Frame] = frames[0] if len(frames) == 1 else list(frames)
        if self.binary:
            await self.ws.send(msgspec.msgpack.encode(payload))
        else:
            await self.ws.send(json.dumps(payload))

    async def receive(self) -> list[Frame]:
        """Read one WebSocket message and return its frames (a lone object or a batch)."""
        data = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        if self.binary:
            assert isinstance(data, bytes), "msgpack frames arrive in binary messages"
            decoded = msgspec.msgpack.decode(data)
        else:
            assert isinstance(data, str), "JSON frames arrive in text messages"
            decoded = json.loads(data)
        frames = decoded if isinstance(decoded, list) else [decoded]
        for frame in frames:
            assert isinstance(frame, dict) and isinstance(frame.get("op"), str), frame
        return frames

    async def expect(self, op: str) -> Frame:
        """The next frame, which must have ``op`` (errors are reported with their message)."""
        if not self._pending:
            self._pending.extend(await self.receive())
        frame = self._pending.pop(0)
        assert frame["op"] == op, f"expected {op!r}, got {frame}"
        return frame

    async def request(self, frame: Frame, reply_op: str) -> Frame:
        """Send a request with a ``rid`` and return its reply, checking the ``rid`` echo."""
        await self.send(frame)
        reply = await self.expect(reply_op)
        assert reply.get("rid") == frame["rid"], (frame, reply)
        return reply


@pytest.fixture
def authority() -> Authority:
    return Authority(b"x" * 32)


@pytest.fixture
async def url(authority: Authority) -> AsyncIterator[str]:
    gw = Gateway(Settings(port=0), authority)
    await gw.start()
    try:
        yield gw.url
    finally:
        await gw.stop()


async def open_client(url: str, subprotocol: str, token: str) -> Client:
    ws = await asyncio.wait_for(connect(url, subprotocols=[Subprotocol(subprotocol)], max_size=None), TIMEOUT)
    assert ws.subprotocol == subprotocol
    client = Client(ws, subprotocol)
    welcome = await client.request(
        {"op": "hello", "token": token, "client": "external-test/1", "rid": 1}, "welcome"
    )
    limits = welcome["limits"]
    assert (
        limits["max_frame_bytes"] >= 1
        and limits["max_subscriptions"] >= 1
        and limits["max_topic_length"] >= 1
    )
    assert isinstance(welcome["session"], str) and welcome["session"]
    assert isinstance(welcome["server"], str) and welcome["server"]
    return client


async def exchange(url: str, authority: Authority, subprotocol: str, body: Any) -> None:
    """alice subscribes with a wildcard; bob publishes; alice gets the envelope."""
    alice_token = authority.mint("alice", pub=["sig/>"], subs=["sig/>"])
    bob_token = authority.mint("bob", pub=["sig/>"], subs=["sig/>"])
    alice = await open_client(url, subprotocol, alice_token)
    bob = await open_client(url, subprotocol, bob_token)
    try:
        subbed = await alice.request({"op": "sub", "topic": "sig/team-1/>", "rid": 2}, "subbed")
        assert subbed["topic"] == "sig/team-1/>"
        sid = subbed["sid"]
        assert isinstance(sid, int) and sid > 0
        assert not subbed.get("durable", False)

        before_ms = time.time() * 1000
        pub: Frame = {
            "op": "pub",
            "topic": "sig/team-1/task-9",
            "id": "m-1",
            "body": body,
            "parent": "m-0",
            "lamport": 7,
            "headers": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
            "sender": "mallory",  # must be ignored: the server stamps the sender from the token
            "rid": 3,
        }
        puback = await bob.request(pub, "puback")
        assert puback["id"] == "m-1"
        assert "offset" not in puback  # ephemeral topic: nothing is stored

        msg = await alice.expect("msg")
        assert msg["topic"] == "sig/team-1/task-9"
        assert msg["id"] == "m-1"
        assert msg["sender"] == "bob"
        assert msg["sid"] == sid
        assert msg["body"] == body
        assert msg["parent"] == "m-0"
        assert msg["lamport"] == 7
        assert msg["headers"] == pub["headers"]
        assert isinstance(msg["ts"], int) and before_ms - 60_000 <= msg["ts"] <= time.time() * 1000 + 60_000
        assert msg.get("offset") is None and msg.get("attempt", 0) == 0

        # Fire and forget, batched: no puback; a topic outside the pattern is not delivered;
        # the two matching messages arrive in order (most likely as one batch), with server ids.
        await bob.send(
            {"op": "pub", "topic": "sig/team-2/task-9", "body": "elsewhere"},
            {"op": "pub", "topic": "sig/team-1/task-9", "body": "first"},
            {"op": "pub", "topic": "sig/team-1/deep/er", "body": "second"},
        )
        first, second = await alice.expect("msg"), await alice.expect("msg")
        assert [first["body"], second["body"]] == ["first", "second"]
        assert [first["topic"], second["topic"]] == ["sig/team-1/task-9", "sig/team-1/deep/er"]
        assert first["sid"] == second["sid"] == sid
        assert first["sender"] == second["sender"] == "bob"
        assert isinstance(first["id"], str) and first["id"] and first["id"] != second["id"]
        assert not {"lamport", "headers", "parent"} & first.keys()  # defaults are omitted on the wire

        # A request the server refuses keeps the session open and echoes the rid.
        err = await bob.request({"op": "pub", "topic": "sig/team-1", "body": 1, "rid": 4}, "error")
        assert err["code"] == "invalid_topic" and not err.get("retriable", False)

        unsubbed = await alice.request({"op": "unsub", "sid": sid, "rid": 5}, "unsubbed")
        assert unsubbed["sid"] == sid
    finally:
        await alice.ws.close()
        await bob.ws.close()


async def test_json_client_subscribes_publishes_and_receives(url: str, authority: Authority) -> None:
    await exchange(url, authority, JSON, {"text": "hello", "n": [1, 2.5, None, True]})


async def test_msgpack_client_subscribes_publishes_and_receives(url: str, authority: Authority) -> None:
    await exchange(url, authority, MSGPACK, {"text": "hello", "raw": b"\x00\xff bytes", "n": [1, 2.5, None]})


async def test_msgpack_bytes_reach_a_json_subscriber_as_base64(url: str, authority: Authority) -> None:
    token = authority.mint("carol", pub=["sig/>"], subs=["sig/>"])
    reader = await open_client(url, JSON, token)
    writer = await open_client(url, MSGPACK, token)
    try:
        sid = (await reader.request({"op": "sub", "topic": "sig/*/blob", "rid": 2}, "subbed"))["sid"]
        await writer.request({"op": "pub", "topic": "sig/g/blob", "body": b"\x00\x01bin", "rid": 2}, "puback")
        msg = await reader.expect("msg")
        assert msg["sid"] == sid and msg["body"] == "AAFiaW4="  # standard base64 of the bytes
    finally:
        await reader.ws.close()
        await writer.ws.close()


async def test_only_unknown_subprotocols_are_refused_with_http_400(url: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await asyncio.wait_for(
            connect(url, subprotocols=[Subprotocol("tidings.v2.json"), Subprotocol("mqtt")]), TIMEOUT
        )
    assert refused.value.response.status_code == 400


async def test_no_subprotocol_offered_means_json_without_an_echoed_header(
    url: str, authority: Authority
) -> None:
    async with connect(url) as ws:
        assert ws.subprotocol is None
        assert ws.response is not None
        assert "Sec-WebSocket-Protocol" not in ws.response.headers
        client = Client(ws, JSON)
        token = authority.mint("dave", pub=["sig/>"], subs=["sig/>"])
        await client.send(
            {"op": "hello", "token": token, "rid": 9}, {"op": "sub", "topic": "sig/a/>", "rid": 10}
        )
        welcome, subbed = await client.expect("welcome"), await client.expect("subbed")
        assert welcome["agent"] == "dave" and welcome["rid"] == 9 and subbed["rid"] == 10

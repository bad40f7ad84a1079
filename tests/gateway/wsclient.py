"""A raw WebSocket test client over the third-party ``websockets`` library.

It speaks the wire protocol frame by frame, so gateway tests control exactly
what is sent, and it flattens batches on receive.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import UNIT

_uniq = itertools.count()


class Raw:
    def __init__(self, ws: ClientConnection, binary: bool) -> None:
        self.ws = ws
        self.binary = binary
        self.inbox: list[dict[str, Any]] = []
        self.messages_received = 0

    @classmethod
    async def open(cls, url: str, subprotocol: str = "tidings.v1.json", **kw: Any) -> Raw:
        ws = await connect(url, subprotocols=[subprotocol], max_size=None, **kw)  # type: ignore[list-item]
        return cls(ws, subprotocol.endswith("msgpack"))

    async def send(self, *frames: dict[str, Any]) -> None:
        payload: Any = frames[0] if len(frames) == 1 else list(frames)
        if self.binary:
            await self.ws.send(msgspec.msgpack.encode(payload))
        else:
            await self.ws.send(msgspec.json.encode(payload).decode())

    async def recv(self, timeout: float = 3.0) -> dict[str, Any]:
        """The next frame (batches are flattened)."""
        while not self.inbox:
            data = await asyncio.wait_for(self.ws.recv(), timeout * UNIT)
            self.messages_received += 1
            decoded = msgspec.msgpack.decode(data) if self.binary else msgspec.json.decode(data)
            self.inbox.extend(decoded if isinstance(decoded, list) else [decoded])
        return self.inbox.pop(0)

    async def expect(self, op: str, timeout: float = 3.0) -> dict[str, Any]:
        """Skip frames until one with ``op`` arrives."""
        while True:
            frame = await self.recv(timeout)
            if frame["op"] == op:
                return frame

    async def hello(self, token: str | None) -> dict[str, Any]:
        await self.send({"op": "hello", "token": token, "rid": 0})
        return await self.recv()

    async def closed(self, timeout: float = 3.0) -> tuple[int, str]:
        """Wait until the server closes; return (code, reason)."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout * UNIT)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return exc.rcvd.code, exc.rcvd.reason

    async def close(self) -> None:
        await self.ws.close()

    def abort(self) -> None:
        """Drop the TCP connection at once: a client that stopped reading never sees the
        server's close, so its socket would otherwise stay open after the test."""
        self.ws.transport.abort()


async def authed(url: str, token: str, subprotocol: str = "tidings.v1.json") -> Raw:
    raw = await Raw.open(url, subprotocol)
    welcome = await raw.hello(token)
    assert welcome["op"] == "welcome", welcome
    return raw


class Bystander:
    """A listener and a talker on their own topic, to prove the gateway still serves others."""

    def __init__(self, listener: Raw, talker: Raw) -> None:
        self.listener = listener
        self.talker = talker

    @classmethod
    async def start(cls, url: str, token: str) -> Bystander:
        listener = await authed(url, token)
        await listener.send({"op": "sub", "topic": "sig/bystander/>", "rid": 1})
        assert (await listener.recv())["op"] == "subbed"
        return cls(listener, await authed(url, token))

    async def assert_alive(self) -> None:
        marker = f"alive-{next(_uniq)}"
        await self.talker.send({"op": "pub", "topic": "sig/bystander/x", "body": marker})
        msg = await self.listener.expect("msg")
        assert msg["body"] == marker

    async def close(self) -> None:
        await self.listener.close()
        await self.talker.close()

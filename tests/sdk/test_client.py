from __future__ import annotations

import asyncio

import pytest

import tidings
from tests.conftest import UNIT
from tidings.auth import Authority
from tidings.errors import ConnectionLost, Forbidden, InvalidTopic, Unauthorized
from tidings.gateway import Gateway


@pytest.mark.parametrize("subprotocol", ["tidings.v1.json", "tidings.v1.msgpack"])
async def test_publish_and_iterate(gateway: Gateway, authority: Authority, subprotocol: str) -> None:
    token = authority.mint("ann", pub=["sig/>"], subs=["sig/>"])
    async with (
        tidings.connect(gateway.url, token, name="a", subprotocol=subprotocol) as a,
        tidings.connect(gateway.url, token, name="b") as b,
    ):
        sub = await a.subscribe("sig/team/>")
        assert sub.sid == 1
        ack = await b.publish("sig/team/x", {"q": 1}, headers={"traceparent": "00-1-2-01"})
        assert ack.duplicate is False
        msg = await asyncio.wait_for(anext(aiter(sub)), 3 * UNIT)
        assert msg.id == ack.id
        assert msg.body == {"q": 1}
        assert msg.sender == "ann"
        assert msg.headers == {"traceparent": "00-1-2-01"}
        assert msg.lamport == b.lamport
        assert a.lamport >= msg.lamport, "receiving advances the Lamport clock"


async def test_server_errors_raise_typed_exceptions(gateway: Gateway, authority: Authority) -> None:
    async with tidings.connect(gateway.url, authority.mint("x", pub=["sig/a/>"], subs=[])) as agent:
        with pytest.raises(Forbidden):
            await agent.publish("sig/b/c", 1)
        with pytest.raises(InvalidTopic):
            await agent.publish("sig/b", 1)
        with pytest.raises(Forbidden):
            await agent.subscribe("sig/a/>")
        assert (await agent.publish("sig/a/b", 1)).id


async def test_bad_token_raises_unauthorized(gateway: Gateway) -> None:
    with pytest.raises(Unauthorized, match="malformed"):
        await tidings.connect(gateway.url, "nope").open()


async def test_unreachable_server_raises_connection_lost() -> None:
    with pytest.raises(ConnectionLost):
        await tidings.connect("ws://127.0.0.1:1/", "t").open()


async def test_server_shutdown_ends_iteration_and_fails_requests(authority: Authority) -> None:
    from tidings.config import Settings

    gw = Gateway(Settings(port=0), authority)
    await gw.start()
    agent = tidings.connect(gw.url, authority.mint("y", pub=["sig/>"], subs=["sig/>"]))
    await agent.open()
    sub = await agent.subscribe("sig/a/>")
    await gw.stop()
    received = [m async for m in sub]
    assert received == []
    assert agent.close_code == 1001
    with pytest.raises(ConnectionLost):
        await agent.publish("sig/a/b", 1)

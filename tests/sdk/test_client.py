from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import tidings
from tests.conftest import UNIT, start_gateway
from tests.reliability_helpers import free_port
from tidings.auth import Authority
from tidings.config import Settings
from tidings.engine.base import CursorState
from tidings.engine.embedded import EmbeddedEngine
from tidings.errors import ConnectionLost, Forbidden, InvalidTopic, RetryLater, Unauthorized
from tidings.gateway import Gateway

ALL = {"pub": [">"], "subs": [">"]}
FAST = tidings.Backoff(base=0.02, cap=0.2)


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds * UNIT):
        while not predicate():  # noqa: ASYNC110 - polling plain state of the agent
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("subprotocol", ["tidings.v1.json", "tidings.v1.msgpack"])
async def test_publish_and_iterate(gw: Gateway, authority: Authority, subprotocol: str) -> None:
    token = authority.mint("ann", **ALL)
    async with (
        tidings.connect(gw.url, token, name="a", subprotocol=subprotocol) as a,
        tidings.connect(gw.url, token, name="b") as b,
    ):
        sub = await a.subscribe("sig/team/>")
        ack = await b.publish("sig/team/x", {"q": 1}, headers={"traceparent": "00-1-2-01"})
        assert ack.duplicate is False
        msg = await asyncio.wait_for(anext(aiter(sub)), 3 * UNIT)
        assert (msg.id, msg.body, msg.sender) == (ack.id, {"q": 1}, "ann")
        assert msg.headers == {"traceparent": "00-1-2-01"}
        assert msg.lamport == b.lamport
        assert a.lamport >= msg.lamport, "receiving advances the Lamport clock"


async def test_server_errors_raise_typed_exceptions(gw: Gateway, authority: Authority) -> None:
    async with tidings.connect(gw.url, authority.mint("x", pub=["sig/a/>"], subs=[])) as agent:
        with pytest.raises(Forbidden):
            await agent.publish("sig/b/c", 1)
        with pytest.raises(InvalidTopic):
            await agent.publish("sig/b", 1)
        with pytest.raises(Forbidden):
            await agent.subscribe("sig/a/>")
        assert (await agent.publish("sig/a/b", 1)).id
        assert len(agent.outbox) == 0, "refused publishes leave the buffer"


async def test_bad_token_raises_unauthorized(gw: Gateway) -> None:
    with pytest.raises(Unauthorized, match="malformed"):
        await tidings.connect(gw.url, "nope").open()


async def test_unreachable_server_raises_connection_lost() -> None:
    with pytest.raises(ConnectionLost):
        await tidings.connect(f"ws://127.0.0.1:{free_port()}/", "t").open()


async def test_reconnects_resubscribes_and_reports_the_live_gap(authority: Authority) -> None:
    port = free_port()
    gw = await start_gateway(authority, port=port)
    states: list[tidings.ConnectionState] = []
    agent = tidings.connect(gw.url, authority.mint("r", **ALL), backoff=FAST)
    agent.on_state(states.append)
    await agent.open()
    gaps: list[tidings.GapInfo] = []
    live = await agent.subscribe("sig/g/>", on_gap=gaps.append)
    await gw.stop()
    await wait_for(lambda: agent.state is tidings.ConnectionState.RECONNECTING)
    gw = await start_gateway(authority, port=port)
    try:
        await wait_for(lambda: agent.is_open and live.sid is not None)
        assert len(gaps) == 1
        assert gaps[0].reason == "disconnected"
        assert gaps[0].since is not None and gaps[0].until is not None
        await agent.publish("sig/g/x", "after")
        msg = await asyncio.wait_for(anext(aiter(live)), 3 * UNIT)
        assert msg.body == "after"
        assert states[:3] == [
            tidings.ConnectionState.OPEN,
            tidings.ConnectionState.RECONNECTING,
            tidings.ConnectionState.OPEN,
        ]
        assert agent.reconnects == 1
    finally:
        await agent.close()
        await gw.stop()


async def test_retried_publish_after_a_dropped_connection_stores_one_message(authority: Authority) -> None:
    """The connection drops after the server stored a publish but before its puback arrived."""
    gw = await start_gateway(authority)
    try:
        agent = tidings.connect(gw.url, authority.mint("p", **ALL), backoff=FAST)
        await agent.open()
        dropped_between = False
        for attempt in range(30):
            topic = f"conv/retry/t{attempt}"
            task = asyncio.create_task(agent.publish(topic, {"n": attempt}, id=f"m{attempt}"))
            while await gw.engine.head(topic) == 0:  # noqa: ASYNC110 - until the server stored it
                await asyncio.sleep(0)
            (out,) = agent.outbox.pending()
            if not out.future.done():
                assert agent._link is not None and agent._link.transport is not None
                agent._link.transport.disconnect(graceful=False)  # the puback never arrives
                dropped_between = True
            ack = await asyncio.wait_for(task, 5 * UNIT)
            if dropped_between:
                assert ack.duplicate is True, "the re-sent publish was recognised by its id"
                assert len(await gw.engine.read(topic, 0)) == 1, "stored once"
                assert agent.reconnects >= 1
                break
        assert dropped_between, "never managed to drop the connection between store and puback"
        await agent.close()
    finally:
        await gw.stop()


@pytest.mark.parametrize("when_full", ["raise", "wait"])
async def test_full_buffer_waits_or_raises(authority: Authority, when_full: str) -> None:
    port = free_port()
    gw = await start_gateway(authority, port=port)
    agent = tidings.connect(
        gw.url, authority.mint("q", **ALL), backoff=FAST, buffer_messages=2, when_full=when_full
    )
    await agent.open()
    await gw.stop()
    await wait_for(lambda: not agent.is_open)
    first = [asyncio.create_task(agent.publish("conv/buf/x", i, id=f"b{i}")) for i in range(2)]
    await asyncio.sleep(0.05)
    third = asyncio.create_task(agent.publish("conv/buf/x", 2, id="b2"))
    await asyncio.sleep(0.1)
    if when_full == "raise":
        with pytest.raises(tidings.BufferFull):
            await third
    else:
        assert not third.done(), "publish waits for room"
    gw = await start_gateway(authority, port=port)
    try:
        acks = await asyncio.wait_for(asyncio.gather(*first), 5 * UNIT)
        assert [a.id for a in acks] == ["b0", "b1"]
        if when_full == "wait":
            assert (await asyncio.wait_for(third, 5 * UNIT)).id == "b2"
        assert len(await gw.engine.read("conv/buf/x", 0)) == (2 if when_full == "raise" else 3)
    finally:
        await agent.close()
        await gw.stop()


async def test_parent_and_lamport_follow_a_chain_of_three_agents(gw: Gateway, authority: Authority) -> None:
    token = authority.mint("chain", **ALL)
    seen: dict[str, tidings.Message] = {}
    done = asyncio.Event()
    async with (
        tidings.connect(gw.url, token, name="a") as a,
        tidings.connect(gw.url, token, name="b") as b,
        tidings.connect(gw.url, token, name="c") as c,
    ):

        @b.on("conv/chain/step1", consumer="b")
        async def relay(msg: tidings.Message) -> None:
            seen["m1"] = msg
            await b.publish("conv/chain/step2", "from b")  # no parent given

        @c.on("conv/chain/step2", consumer="c")
        async def finish(msg: tidings.Message) -> None:
            seen["m2"] = msg
            await c.publish("conv/chain/step3", "from c")

        @a.on("conv/chain/step3", consumer="a")
        async def close_loop(msg: tidings.Message) -> None:
            seen["m3"] = msg
            done.set()

        await asyncio.sleep(0.2)
        first = await a.publish("conv/chain/step1", "from a")
        await asyncio.wait_for(done.wait(), 5 * UNIT)
    m1, m2, m3 = seen["m1"], seen["m2"], seen["m3"]
    assert m1.id == first.id
    assert m2.parent == m1.id, "a publish inside a handler answers the handled message"
    assert m3.parent == m2.id
    assert m1.lamport < m2.lamport < m3.lamport, "Lamport order respects causality"


async def test_echo_false_keeps_an_agent_s_own_messages_from_its_handler_and_subscription(
    gw: Gateway, authority: Authority
) -> None:
    """Two agents talk in a conversation: with ``echo=False`` each hears only the other."""
    heard: dict[str, list[str]] = {"ann": [], "bob": []}
    both = asyncio.Event()
    async with (
        tidings.connect(gw.url, authority.mint("ann", **ALL)) as ann,
        tidings.connect(gw.url, authority.mint("bob", **ALL)) as bob,
    ):
        for agent, name in ((ann, "ann"), (bob, "bob")):

            @agent.on("conv/talk/chat", consumer="me", echo=False)
            async def hear(msg: tidings.Message, name: str = name) -> None:
                heard[name].append(msg.body)
                if all(heard.values()):
                    both.set()

        live = await ann.subscribe("conv/talk/chat", echo=False)
        await asyncio.sleep(0.2)
        await ann.publish("conv/talk/chat", "from ann")
        await bob.publish("conv/talk/chat", "from bob")
        await asyncio.wait_for(both.wait(), 5 * UNIT)
        msg = await asyncio.wait_for(anext(aiter(live)), 3 * UNIT)
        await asyncio.sleep(0.2)
    assert heard == {"ann": ["from bob"], "bob": ["from ann"]}
    assert msg.body == "from bob", "ann's own message, published first, never came"


async def test_handler_exception_nacks_and_redelivery_is_handled_once(
    gw: Gateway, authority: Authority
) -> None:
    token = authority.mint("h", **ALL)
    calls: list[tuple[str, int]] = []
    ok = asyncio.Event()
    async with tidings.connect(gw.url, token) as agent:

        @agent.on("conv/h/>", consumer="worker", nack_delay_ms=20)
        async def flaky(msg: tidings.Message) -> None:
            calls.append((msg.body, msg.attempt))
            if msg.attempt < 3:
                raise RuntimeError("not yet")
            ok.set()

        await asyncio.sleep(0.1)
        await agent.publish("conv/h/x", "job")
        await asyncio.wait_for(ok.wait(), 5 * UNIT)
        await asyncio.sleep(0.3)
    assert calls == [("job", 1), ("job", 2), ("job", 3)]


async def test_tail_reader_on_a_pattern_resumes_without_loss(authority: Authority) -> None:
    port = free_port()
    gw = await start_gateway(authority, port=port)
    token = authority.mint("t", **ALL)
    reader = tidings.connect(gw.url, token, backoff=FAST)
    writer = tidings.connect(gw.url, token, backoff=FAST)
    await reader.open()
    await writer.open()
    sub = await reader.subscribe("conv/tail/>", start="latest")
    got: list[Any] = []

    async def collect() -> None:
        async for m in sub:
            got.append(m.body)

    task = asyncio.create_task(collect())
    try:
        await writer.publish("conv/tail/a", "before")
        await wait_for(lambda: got == ["before"])
        await gw.stop()
        await wait_for(lambda: not reader.is_open)
        gw = await start_gateway(authority, port=port)
        await wait_for(lambda: writer.is_open)
        await writer.publish("conv/tail/a", "during")  # may land before the reader is back
        await writer.publish("conv/tail/b", "new topic")
        await wait_for(lambda: len(got) >= 3)
        await asyncio.sleep(0.2)
        assert got == ["before", "during", "new topic"], "nothing lost, nothing repeated"
    finally:
        task.cancel()
        await reader.close()
        await writer.close()
        await gw.stop()


async def test_iteration_raises_when_the_agent_gives_up(authority: Authority) -> None:
    port = free_port()
    gw = await start_gateway(authority, port=port)
    agent = tidings.connect(
        gw.url, authority.mint("g", **ALL), backoff=tidings.Backoff(base=0.01, cap=0.02, max_attempts=2)
    )
    await agent.open()
    sub = await agent.subscribe("sig/giveup/>")
    await gw.stop()

    async def drain() -> None:
        async with asyncio.timeout(5 * UNIT):
            async for _ in sub:
                pass

    with pytest.raises(ConnectionLost):
        await drain()
    assert agent.state is tidings.ConnectionState.CLOSED
    await agent.close()


class CursorsFailingFor(EmbeddedEngine):
    """The embedded engine, its cursor store refusing the first ``refusals`` loads with
    ``retry_later``: what a gateway over NATS answers a durable ``sub`` while the cursor
    bucket elects a leader."""

    def __init__(self, data_dir: Path, refusals: int) -> None:
        super().__init__(data_dir)
        self.refusals = refusals

    async def load_cursor(self, key: str) -> CursorState | None:
        if self.refusals:
            self.refusals -= 1
            raise RetryLater("the cursor store is electing a leader", 50)
        return await super().load_cursor(key)


async def test_a_durable_handler_survives_a_resubscribe_refused_with_retry_later(
    authority: Authority, tmp_path: Path
) -> None:
    """A retriable refusal of the ``sub`` sent after a reconnect is retried, and the handler
    goes on receiving. (Found by the NATS crash loop: a consumer whose gateway died stopped for
    good when its new gateway could not read the cursor during an election.)"""
    port = free_port()
    gw = Gateway(Settings(port=port), authority, engine=CursorsFailingFor(tmp_path, 0))
    await gw.start()
    token = authority.mint("h", **ALL)
    got: list[str] = []
    try:
        async with (
            tidings.connect(gw.url, token, name="handler", backoff=FAST) as agent,
            tidings.connect(gw.url, token, name="publisher", backoff=FAST) as publisher,
        ):

            @agent.on("conv/refused/>", consumer="c")
            async def handle(msg: tidings.Message) -> None:
                got.append(msg.body)

            await publisher.publish("conv/refused/x", "before")
            await wait_for(lambda: got == ["before"])
            await gw.stop()
            engine = CursorsFailingFor(tmp_path, 3)
            gw = Gateway(Settings(port=port), authority, engine=engine)
            await gw.start()
            await wait_for(lambda: agent.reconnects == 1 and agent.is_open)
            await publisher.publish("conv/refused/x", "after")
            await wait_for(lambda: got == ["before", "after"])
            assert engine.refusals == 0, "the sub was refused and sent again"
    finally:
        await gw.stop()


async def test_a_subscription_refused_with_retry_later_is_asked_again(authority: Authority) -> None:
    """The engine answers retry_later once (as NATS does during a leader election); the SDK's
    subscription retries after retry_after_ms instead of ending."""
    from tidings.engine.embedded import EmbeddedEngine
    from tidings.errors import RetryLater

    class Electing(EmbeddedEngine):
        refusals = 1

        async def load_cursor(self, key: str) -> Any:
            if self.refusals:
                self.refusals -= 1
                raise RetryLater("electing a leader", retry_after_ms=50)
            return await super().load_cursor(key)

    settings = Settings(port=0)
    engine = Electing(settings.data_path, settings.shards)
    gw = Gateway(settings, authority, engine=engine)
    await gw.start()
    try:
        async with tidings.connect(gw.url, authority.mint("patient", **ALL)) as agent:
            sub = agent.subscribe("conv/elect/x", consumer="patient")
            ack = await agent.publish("conv/elect/x", "hello")
            msg = await asyncio.wait_for(anext(aiter(sub)), 5 * UNIT)
            assert msg.id == ack.id and engine.refusals == 0  # it was refused once, then taken
    finally:
        await gw.stop()

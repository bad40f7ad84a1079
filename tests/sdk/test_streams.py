from __future__ import annotations

import asyncio

import pytest

import tidings
from tests.conftest import UNIT
from tidings.auth import Authority
from tidings.gateway import Gateway

ALL = {"pub": [">"], "subs": [">"]}


async def test_live_subscriber_sees_chunks_then_one_final_message(
    gateway: Gateway, authority: Authority
) -> None:
    async with (
        tidings.connect(gateway.url, authority.mint("writer", **ALL)) as writer,
        tidings.connect(gateway.url, authority.mint("reader", **ALL)) as reader,
    ):
        sub = await reader.subscribe("conv/st/>", streams=True)
        words = ["The ", "answer ", "is ", "42."]

        async def write() -> tidings.Puback | None:
            async with writer.stream("conv/st/answer") as s:
                for w in words:
                    await s.write(w)
                    await asyncio.sleep(0.01)
            return s.puback

        writing = asyncio.create_task(write())
        it = aiter(sub)
        opening = await asyncio.wait_for(anext(it), 3 * UNIT)
        assert opening.headers.get("tidings-stream-open")
        live = [c async for c in opening.chunks()]
        assert live == words, "chunks in order, live"
        final = await asyncio.wait_for(anext(it), 3 * UNIT)
        assert final.body == "The answer is 42."
        assert final.stream_id == opening.stream_id
        puback = await writing
        assert puback is not None
        assert final.offset == puback.offset


async def test_late_joiner_and_replay_see_only_the_final_message(
    gateway: Gateway, authority: Authority
) -> None:
    async with tidings.connect(gateway.url, authority.mint("writer", **ALL)) as writer:
        async with writer.stream("conv/st2/answer") as s:
            for w in ["a", "b", "c"]:
                await s.write(w)
        async with tidings.connect(gateway.url, authority.mint("late", **ALL)) as late:
            sub = late.subscribe("conv/st2/>", start="earliest", streams=True)
            msg = await asyncio.wait_for(anext(aiter(sub)), 3 * UNIT)
            assert msg.body == "abc"
            assert msg.headers["tidings-stream"] == s.id
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(aiter(sub)), 0.3)


async def test_an_exception_produces_the_aborted_marker(gateway: Gateway, authority: Authority) -> None:
    async with (
        tidings.connect(gateway.url, authority.mint("writer", **ALL)) as writer,
        tidings.connect(gateway.url, authority.mint("reader", **ALL)) as reader,
    ):
        sub = await reader.subscribe("conv/st3/>", streams=True)

        async def crash() -> None:
            async with writer.stream("conv/st3/answer") as s:
                await s.write("partial ")
                raise RuntimeError("model crashed")

        with pytest.raises(RuntimeError):
            await crash()
        it = aiter(sub)
        opening = await asyncio.wait_for(anext(it), 3 * UNIT)
        assert [c async for c in opening.chunks()] == ["partial "]
        final = await asyncio.wait_for(anext(it), 3 * UNIT)
        assert final.body == {"aborted": True, "reason": "RuntimeError: model crashed", "text": "partial "}
        assert final.headers["tidings-stream-aborted"] == "RuntimeError"


async def test_causal_hold_back_delivers_parents_first(gateway: Gateway, authority: Authority) -> None:
    async with (
        tidings.connect(gateway.url, authority.mint("w", **ALL)) as w,
        tidings.connect(gateway.url, authority.mint("r", **ALL)) as r,
    ):
        sub = await r.subscribe("conv/causal/>", causal=True, causal_wait=0.3)
        plain = await r.subscribe("conv/causal/>")
        # A reply that overtakes its question (as across shards or gateways it can).
        hdr = {"tidings-parent-topic": "conv/causal/questions"}
        await w.publish("conv/causal/answers", "42", id="answer", parent="question", headers=hdr)
        await w.publish("conv/causal/questions", "meaning?", id="question")
        await w.publish("conv/causal/answers", "?", id="orphan", parent="lost", headers=hdr)
        it = aiter(sub)
        got = [await asyncio.wait_for(anext(it), 3 * UNIT) for _ in range(3)]
        assert [m.id for m in got] == ["question", "answer", "orphan"]
        assert [m.causally_late for m in got] == [False, False, True]
        pit = aiter(plain)
        assert [(await anext(pit)).id for _ in range(3)] == ["answer", "question", "orphan"]


async def test_replies_inside_handlers_carry_the_parent_topic(gateway: Gateway, authority: Authority) -> None:
    async with tidings.connect(gateway.url, authority.mint("x", **ALL)) as agent:
        done = asyncio.Event()
        replies: list[tidings.Message] = []

        @agent.on("conv/pt/in", consumer="x")
        async def handle(msg: tidings.Message) -> None:
            await agent.publish("conv/pt/out", "reply")

        out = await agent.subscribe("conv/pt/out")

        async def collect() -> None:
            async for m in out:
                replies.append(m)
                done.set()

        task = asyncio.create_task(collect())
        await asyncio.sleep(0.1)
        first = await agent.publish("conv/pt/in", "hi")
        await asyncio.wait_for(done.wait(), 3 * UNIT)
        task.cancel()
        assert replies[0].parent == first.id
        assert replies[0].headers["tidings-parent-topic"] == "conv/pt/in"

"""Clock skew: agents whose wall clocks are off by an hour either way.

Order comes from offsets (assigned by the server's log) and causality from
``parent`` and the Lamport clock (kept by the SDKs): neither may depend on
anyone's wall clock. A skewed agent runs in its own process with ``time.time``
and ``time.time_ns`` shifted before tidings is imported (``skewed_agent.py``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

import tidings
from tests.conftest import UNIT
from tests.reliability_helpers import ROOT, ServerProcess, free_port
from tidings.sdk import agent as agent_module
from tidings.sdk import subscription as subscription_module

HOUR = 3600.0
TOPIC = "conv/skew/chat"
ROUNDS = 30


class SkewedTime:
    """The ``time`` module with the wall clock moved by ``skew`` seconds."""

    def __init__(self, skew: float) -> None:
        import time

        self._time = time
        self.skew = skew

    def time(self) -> float:
        return self._time.time() + self.skew

    def time_ns(self) -> int:
        return self._time.time_ns() + int(self.skew * 1e9)

    def __getattr__(self, name: str) -> object:
        return getattr(self._time, name)


async def test_causality_and_order_do_not_follow_wall_clocks(tmp_path: Path) -> None:
    """Three agents, one an hour behind, one correct, one an hour ahead, answer each other in
    a chain; the log's order and the parent/lamport chain must be right regardless."""
    server = ServerProcess(tmp_path / "data")
    try:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.reliability.skewed_agent",
                server.url,
                server.token,
                role,
                str(skew),
                cwd=ROOT,
            )
            for role, skew in [("asker", -HOUR), ("second", +HOUR)]
        ]
        async with tidings.connect(server.url, server.token, name="first") as agent:

            @agent.on(TOPIC, consumer="first")
            async def answer(msg: tidings.Message) -> None:
                if msg.body.get("step") == "ask":
                    await agent.publish(TOPIC, {"step": "first", "n": msg.body["n"]})

            for p in procs:
                assert await asyncio.wait_for(p.wait(), 60 * UNIT) == 0
            reader = await agent.subscribe(TOPIC, start="earliest")
            chain: list[tidings.Message] = []
            async for msg in reader:
                chain.append(msg)
                if msg.offset == reader.head:
                    break
    finally:
        assert server.terminate() == 0
    by_id = {m.id: m for m in chain}
    offsets = [m.offset for m in chain]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert len(chain) == 3 * ROUNDS
    steps = {"ask": 0, "first": 0, "second": 0}
    for msg in chain:
        steps[msg.body["step"]] += 1
        if msg.body["step"] != "ask":
            parent = by_id[msg.parent]  # every answer names what it answers, stored before it
            assert parent.offset < msg.offset and parent.lamport < msg.lamport
            assert parent.body["n"] == msg.body["n"]
    assert steps == {"ask": ROUNDS, "first": ROUNDS, "second": ROUNDS}
    # The wall clocks really were off: ids (UUIDv7, the publisher's clock) disagree with the log.
    asks = [m.id for m in chain if m.body["step"] == "ask"]
    seconds = [m.id for m in chain if m.body["step"] == "second"]
    assert max(asks) < min(seconds), "the asker's ids are an hour older than the second answerer's"


@pytest.mark.parametrize("skew", [-HOUR, +HOUR], ids=["behind", "ahead"])
async def test_a_latest_reader_with_a_skewed_clock_resumes_without_loss_or_old_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """A ``latest`` pattern reader that has seen nothing yet, on a skewed clock, across a
    server restart: it must get exactly what was published after it subscribed."""
    port = free_port()
    server = ServerProcess(tmp_path / "data", port=port)
    backoff = tidings.Backoff(base=0.05, cap=0.2)
    async with tidings.connect(server.url, server.token, name="publisher", backoff=backoff) as publisher:
        await publisher.publish("conv/skew/old", "before", id="old-1")  # before the reader came
        await asyncio.sleep(1.5)  # past the documented 1 s resume margin
        for module in (subscription_module, agent_module):  # the reader's process clock, moved
            monkeypatch.setattr(module, "time", SkewedTime(skew))
        async with tidings.connect(server.url, server.token, name="reader", backoff=backoff) as reader_agent:
            sub = await reader_agent.subscribe("conv/skew/>", start="latest")
            server.kill()
            server = await asyncio.to_thread(ServerProcess, tmp_path / "data", port=port)
            await publisher.publish("conv/skew/new", "during", id="new-1")  # maybe before it is back
            got: list[str] = []
            async for msg in sub:
                got.append(msg.id)
                if msg.id == "new-2":
                    break
                if msg.id == "new-1":
                    await publisher.publish("conv/skew/new", "after", id="new-2")
            assert got == ["new-1", "new-2"]
    assert server.terminate() == 0

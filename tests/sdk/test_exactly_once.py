"""Kill the server with SIGKILL during a publish/consume run and restart it:
every published message is handled exactly once, in order per topic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import tidings
from tests.conftest import UNIT
from tests.reliability_helpers import ServerProcess, free_port

TOPICS = ["conv/eo/a", "conv/eo/b"]
PER_TOPIC = 150


async def test_crash_during_publish_and_consume_handles_each_message_once(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(tmp_path / "data", port=port)
    token = server.token
    handled: list[tuple[str, int]] = []
    everything = asyncio.Event()
    backoff = tidings.Backoff(base=0.05, cap=0.5)
    producer = tidings.connect(server.url, token, name="producer", backoff=backoff)
    consumer = tidings.connect(server.url, token, name="consumer", backoff=backoff)

    @consumer.on("conv/eo/>", consumer="eo")
    async def handle(msg: tidings.Message) -> None:
        handled.append((msg.topic, msg.body))
        if len(handled) >= len(TOPICS) * PER_TOPIC:
            everything.set()

    await producer.open()
    await consumer.open()
    try:

        async def produce() -> None:
            for n in range(PER_TOPIC):
                for topic in TOPICS:
                    await producer.publish(topic, n, id=f"{topic}-{n}")

        producing = asyncio.create_task(produce())
        while len(handled) < PER_TOPIC // 2:  # noqa: ASYNC110 - until the run is well under way
            await asyncio.sleep(0.01)
        server.kill()
        server = ServerProcess(tmp_path / "data", port=port)
        await asyncio.wait_for(producing, 30 * UNIT)
        await asyncio.wait_for(everything.wait(), 30 * UNIT)
        await asyncio.sleep(0.5)  # any stray redelivery would show up now
        assert producer.reconnects >= 1
        assert consumer.reconnects >= 1
        assert len(handled) == len(TOPICS) * PER_TOPIC, "each message handled exactly once"
        for topic in TOPICS:
            assert [n for t, n in handled if t == topic] == list(range(PER_TOPIC)), f"{topic} in order"
    finally:
        await producer.close()
        await consumer.close()
        assert server.terminate() == 0

"""Kill the server with SIGKILL while publishers publish; nothing acknowledged may be lost.

Each round starts ``tidings serve`` on the same data directory, runs several
concurrent publishers into durable topics, and kills the process at a random
moment. Publishes that were in flight at the kill are retried with the same id
in the next round (as the SDK does), so dedup across a crash is exercised too.
At the end every acknowledged message must be readable, in per-topic offset
order, at the offset its puback named, and no id may be stored twice.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

import tidings
from tests.conftest import UNIT
from tests.reliability_helpers import ServerProcess
from tidings.errors import TidingsError

TOPICS = ["conv/alpha/chat", "conv/beta/chat", "ctl/agent-7/commands"]
PUBLISHERS = 4
ROUNDS = int(os.environ.get("TIDINGS_CRASH_ROUNDS", "20"))


async def run_publisher(url: str, token: str, name: str, pending: list[tuple[str, str]],
                        acked: dict[tuple[str, str], int], seq: list[int]) -> None:  # fmt: skip
    # Give up at once when the server dies: the next round has a new server.
    agent = tidings.connect(
        url, token, name=name, backoff=tidings.Backoff(base=0.01, cap=0.02, max_attempts=1)
    )
    try:
        await agent.open()
        while True:
            if pending:
                topic, msg_id = pending[0]
            else:
                seq[0] += 1
                topic, msg_id = random.choice(TOPICS), f"{name}-{seq[0]}"
                pending.append((topic, msg_id))
            ack = await agent.publish(topic, {"from": name, "n": seq[0]}, id=msg_id)
            pending.pop(0)
            previous = acked.setdefault((topic, msg_id), ack.offset or -1)
            assert previous == ack.offset, f"{msg_id} acked at {previous} and at {ack.offset}"
    except (TidingsError, OSError):
        return  # the server was killed; what is pending is retried next round
    finally:
        await agent.close()


async def read_all(url: str, token: str, topic: str) -> tuple[list[tidings.Message], int]:
    """Every retained message of ``topic``, and the last offset retention removed (0: none).

    Reading from offset 0 (not "earliest") makes the server report what retention
    removed as a gap, so a trimmed message is told apart from a lost one.
    """
    async with tidings.connect(url, token) as agent:
        sub = await agent.subscribe(topic, start=0)
        out: list[tidings.Message] = []
        if sub.head:
            async for msg in sub:
                out.append(msg)
                if msg.offset is not None and msg.offset >= sub.head:
                    break
        trimmed = max((g.last or 0 for g in sub.gaps if g.reason == "retention"), default=0)
        return out, trimmed


def crash_rounds(tmp_path: Path, rounds: int) -> None:
    data = tmp_path / "data"
    acked: dict[tuple[str, str], int] = {}
    pending: dict[str, list[tuple[str, str]]] = {f"p{i}": [] for i in range(PUBLISHERS)}
    seqs = {name: [0] for name in pending}
    rng = random.Random(1234)
    for _ in range(rounds):
        server = ServerProcess(data)

        async def round_(server: ServerProcess = server) -> None:
            tasks = [
                asyncio.create_task(
                    run_publisher(server.url, server.token, name, pending[name], acked, seqs[name])
                )
                for name in pending
            ]
            await asyncio.sleep(rng.uniform(0.1, 0.6) * UNIT)
            server.kill()
            await asyncio.wait_for(asyncio.gather(*tasks), 20 * UNIT)

        asyncio.run(round_())

    server = ServerProcess(data)
    try:

        async def verify() -> None:
            stored_ids: set[tuple[str, str]] = set()
            trimmed_ids: set[tuple[str, str]] = set()
            for topic in TOPICS:
                msgs, trimmed = await read_all(server.url, server.token, topic)
                offsets = [m.offset for m in msgs]
                assert offsets == sorted(offsets), f"{topic}: out of order"
                assert len(set(offsets)) == len(offsets), f"{topic}: one offset twice"
                ids = [(topic, m.id) for m in msgs]
                assert len(set(ids)) == len(ids), f"{topic}: an id stored twice"
                stored_ids.update(ids)
                by_id = {m.id: m.offset for m in msgs}
                for (t, msg_id), offset in acked.items():
                    if t == topic and offset > trimmed:  # below it: removed by retention, reported
                        assert by_id.get(msg_id) == offset, f"acknowledged {msg_id} lost or moved"
                trimmed_ids.update((topic, i) for (t, i), o in acked.items() if t == topic and o <= trimmed)
            assert set(acked) <= stored_ids | trimmed_ids
            print(
                f"crash rounds: {rounds}, acknowledged: {len(acked)}, stored: {len(stored_ids)},"
                f" removed by retention (ctl/ keeps 10,000 per topic): {len(trimmed_ids)}"
            )
            assert len(acked) > rounds, "the publishers got acknowledgements in most rounds"

        asyncio.run(verify())
    finally:
        assert server.terminate() == 0


def test_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    crash_rounds(tmp_path, ROUNDS)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_soak(tmp_path: Path) -> None:
    crash_rounds(tmp_path, 200)

"""The crash loop: SDK publishers and durable consumers against a server that keeps dying.

``run_crash_loop`` starts ``tidings serve`` on a fixed port, runs publisher
agents (each with several publishes in flight) and durable consumer agents
through the SDK, and every 0.5-5 s (seeded) ends the server one of two ways:
SIGKILL, or a simulated power cut through the fault file system (``faultfs``).
It restarts the server on the same port and data directory each time; the
agents reconnect, re-send what was not acknowledged (same ids) and resume their
consumers. At the end the publishers stop, a fresh reader drains every topic
from offset 0, and the whole recorded history goes to the checker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tidings
from tests.conftest import UNIT
from tests.reliability.checker import Recorder, Report, check, read_history
from tests.reliability.faultfs import CUT_STATUS, ENV
from tests.reliability_helpers import ServerProcess, free_port
from tidings.errors import ConnectionLost, StorageError, SyncFailed, TidingsError

Kill = Literal["sigkill", "power", "fsync"]
#: ``tidings serve``'s exit status after a failed sync
SYNC_FAILED_STATUS = 70


@dataclass
class LoopResult:
    report: Report
    cycles: int
    seconds: float
    history: Path
    #: power cuts that found unsynced changes to throw away, and those that tore a write
    cuts_with_unsynced: int = 0
    cuts_torn: int = 0
    #: (when fsync began failing, when the server had exited), in history time
    sync_failures: list[tuple[float, float]] = field(default_factory=list)


async def publisher(
    agent: tidings.Agent,
    rec: Recorder,
    process: str,
    topics: list[str],
    rng: random.Random,
    stop: asyncio.Event,
    keep_going: bool = False,
) -> None:
    """Publish unique ids to random topics until ``stop``; each publish recorded invoke, then
    ok / fail / info. An indeterminate or failed publish ends the publisher, unless
    ``keep_going`` (the NATS loop, where a publish may end ``StorageError`` while a stream
    elects a leader): then it goes on with the next id."""
    for n in itertools.count(1):
        if stop.is_set():
            return
        topic, msg_id = rng.choice(topics), f"{process}-{n}"
        rec.record(process, "invoke", "publish", {"topic": topic, "id": msg_id})
        try:
            ack = await agent.publish(topic, n, id=msg_id)
        except asyncio.CancelledError:
            rec.record(process, "info", "publish", {"topic": topic, "id": msg_id})
            raise
        except (SyncFailed, StorageError, ConnectionLost):
            # May or may not be stored: indeterminate. (SyncFailed: "publish again to find out".)
            rec.record(process, "info", "publish", {"topic": topic, "id": msg_id})
            if keep_going:
                await asyncio.sleep(0.1)  # not a busy loop if the agent is closing
                continue
            return
        except TidingsError as exc:
            rec.record(process, "fail", "publish", {"topic": topic, "id": msg_id, "error": exc.code})
            if keep_going:
                continue
            return
        rec.record(process, "ok", "publish", {"topic": topic, "id": msg_id, "offset": ack.offset})


async def drain(url: str, token: str, topics: list[str], rec: Recorder) -> None:
    """Read every topic from offset 0 with a fresh agent, one ``read`` operation per topic."""
    async with tidings.connect(url, token, name="drain") as agent:
        for topic in topics:
            rec.record("drain", "invoke", "read", {"topic": topic})
            sub = await agent.subscribe(topic, start=0, queue_size=1 << 30)
            messages: list[list[object]] = []
            if sub.head:
                async for msg in sub:
                    messages.append([msg.id, msg.offset])
                    if msg.offset is not None and msg.offset >= sub.head:
                        break
            assert not [g for g in sub.gaps if g.reason == "retention"], "nothing here has retention"
            rec.record("drain", "ok", "read", {"topic": topic, "messages": messages})
            await sub.unsubscribe()


def _server(data: Path, port: int, kill: Kill, seed: int) -> ServerProcess:
    env = {**ENV, "TIDINGS_FAULT_SEED": str(seed)} if kill != "sigkill" else None
    return ServerProcess(data, port=port, env=env)


async def run_crash_loop(
    tmp: Path,
    *,
    cycles: int,
    min_acked: int = 0,
    kill: Kill = "sigkill",
    publishers: int = 4,
    inflight: int = 16,
    consumers: int = 2,
    topics: int = 8,
    gap: tuple[float, float] = (0.5, 5.0),
    seed: int = 1,
    progress: bool = False,
) -> LoopResult:
    """Kill the server ``cycles`` times (and until ``min_acked`` publishes were acknowledged)."""
    rng = random.Random(seed)
    data, history = tmp / "data", tmp / "history.jsonl"
    port = free_port()
    names = [f"conv/crash-{i % 4}/t{i}" for i in range(topics)]
    rec = Recorder(history)
    started = time.monotonic()
    server = _server(data, port, kill, seed)
    url, token = server.url, server.token
    backoff = tidings.Backoff(base=0.05, cap=0.5)
    stop = asyncio.Event()
    agents: list[tidings.Agent] = []
    tasks: list[asyncio.Task[None]] = []
    cuts_with_unsynced = cuts_torn = 0
    sync_failures: list[tuple[float, float]] = []
    try:
        for c in range(consumers):
            agent = tidings.connect(url, token, name=f"consumer-{c}", backoff=backoff)
            agent.on("conv/>", consumer=f"c{c}", concurrency=64)(recording_handler(rec, f"c{c}"))
            agents.append(agent)
        for p in range(publishers):
            agent = tidings.connect(url, token, name=f"publisher-{p}", backoff=backoff)
            agents.append(agent)
        for agent in agents:
            await agent.open()
        for p in range(publishers):
            agent = agents[consumers + p]
            for k in range(inflight):
                process = f"p{p}.{k}"
                tasks.append(
                    asyncio.create_task(
                        publisher(agent, rec, process, names, random.Random(f"{seed}{process}"), stop)
                    )
                )
        done = 0
        while done < cycles or rec_acked(rec) < min_acked:
            await asyncio.sleep(rng.uniform(*gap) * UNIT)
            if kill == "sigkill":
                rec.record("nemesis", "info", "kill", None)
                server.kill()
            elif kill == "fsync":
                failed_at = rec.record("nemesis", "info", "fail-fsync", None)
                server.signal(signal.SIGUSR2)
                status = await asyncio.to_thread(server.wait, 30 * UNIT)
                exited_at = rec.record("nemesis", "info", "exited", status)
                assert status == SYNC_FAILED_STATUS, f"a failed fsync ended the server with {status}"
                sync_failures.append((failed_at, exited_at))
            else:
                rec.record("nemesis", "info", "power-cut", None)
                server.signal(signal.SIGUSR1)
                status = await asyncio.to_thread(server.wait, 30 * UNIT)
                assert status == CUT_STATUS, f"a power cut ended the server with {status}"
                line = next((x for x in reversed(server.output) if "power cut" in x), "")
                if m := re.search(r"undid (\d+) .* at byte (\d+)", line):
                    cuts_with_unsynced += int(m.group(1)) > 0
                    cuts_torn += int(m.group(2)) > 0
            done += 1
            server = await asyncio.to_thread(_server, data, port, kill, seed + done)
            if progress:
                print(
                    f"cycle {done}: acknowledged {rec_acked(rec)}, {time.monotonic() - started:.0f} s",
                    flush=True,
                )
        # Let in-flight publishes finish on the last server, then stop publishing.
        await asyncio.sleep(1.0 * UNIT)
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=30 * UNIT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await drain(url, token, names, rec)
    finally:
        for task in tasks:
            task.cancel()
        for agent in agents:
            with contextlib.suppress(Exception):
                await agent.close()
        rec.close()
        with contextlib.suppress(Exception):
            server.terminate()
    report = check(read_history(history))
    result = LoopResult(report, done, time.monotonic() - started, history, cuts_with_unsynced, cuts_torn)
    result.sync_failures = sync_failures
    return result


def rec_acked(rec: Recorder) -> int:
    """Acknowledged publishes so far (the recorder counts them as it writes)."""
    return rec.acked


def recording_handler(rec: Recorder, consumer: str) -> Callable[[tidings.Message], Awaitable[None]]:
    # Records at the start of the handler: handler tasks start in delivery order.
    async def handle(msg: tidings.Message) -> None:
        value = {"topic": msg.topic, "id": msg.id, "offset": msg.offset, "consumer": consumer}
        rec.record(consumer, "ok", "deliver", value)

    return handle

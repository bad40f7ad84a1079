"""The reconnect storm: many SDK clients lose the server at once and come back.

``run_storm`` opens ``clients`` agents, each a replay reader of one durable
topic, publishes a few messages, SIGKILLs the server and restarts it on the same
port, publishes a few more while the clients reconnect, and measures:

- the time from the restarted server being ready until every client is
  connected and resubscribed;
- the peak connection rate (reconnections per 100 ms, from the clients' side);
- gaps: every client must end with exactly the topic's messages, in offset order.

``jitter=False`` gives every client a backoff without jitter (the same delays
for all), the baseline the SDK's full jitter is compared with.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import tidings
from tests.conftest import UNIT
from tests.reliability_helpers import ServerProcess, free_port

TOPIC = "conv/storm/all"
BEFORE, DURING = 5, 5


class NoJitter(tidings.Backoff):
    """Exponential backoff without jitter: every client retries at the same instants."""

    def delay(self, attempt: int) -> float:
        return self.ceiling(attempt)


@dataclass
class StormResult:
    clients: int
    jitter: bool
    all_back_s: float
    peak_per_s: float
    gaps: int
    reconnected: int


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise RuntimeError(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def run_storm(tmp: Path, clients: int, *, jitter: bool = True) -> StormResult:
    raise_fd_limit(clients * 2 + 1000)  # the server process inherits it
    port = free_port()
    data = tmp / f"storm-{clients}-{jitter}"
    server = ServerProcess(data, port=port)
    agents: list[tidings.Agent] = []
    received: list[list[int]] = [[] for _ in range(clients)]
    opened: list[float] = []
    try:

        async def start(i: int) -> tidings.Subscription:
            backoff = tidings.Backoff() if jitter else NoJitter()
            agent = tidings.connect(server.url, server.token, name=f"storm-{i}", backoff=backoff)
            agent.on_state(
                lambda state: (
                    opened.append(time.monotonic()) if state is tidings.ConnectionState.OPEN else None
                )
            )
            await agent.open()
            agents.append(agent)
            sub = await agent.subscribe(TOPIC, start="earliest")
            return sub

        subs: list[tidings.Subscription] = []
        for first in range(0, clients, 250):  # connect in waves: the storm is the reconnect
            subs += await asyncio.gather(*(start(i) for i in range(first, min(clients, first + 250))))

        async def collect(i: int, sub: tidings.Subscription) -> None:
            async for msg in sub:
                assert msg.offset is not None
                received[i].append(msg.offset)

        readers = [asyncio.create_task(collect(i, s)) for i, s in enumerate(subs)]
        publisher = tidings.connect(server.url, server.token, name="storm-publisher")
        await publisher.open()
        for n in range(BEFORE):
            await publisher.publish(TOPIC, n, id=f"storm-{n}")
        await _until(lambda: all(len(r) >= BEFORE for r in received), 60)

        server.kill()
        opened.clear()
        server = await asyncio.to_thread(ServerProcess, data, port=port)
        ready = time.monotonic()
        for n in range(BEFORE, BEFORE + DURING):  # while the clients come back
            await publisher.publish(TOPIC, n, id=f"storm-{n}")
        await _until(lambda: all(a.is_open for a in agents) and all(s.sid is not None for s in subs), 120)
        all_back = time.monotonic() - ready
        await _until(lambda: all(len(r) >= BEFORE + DURING for r in received), 60)
        await asyncio.sleep(0.5)  # anything repeated would arrive now
        expected = sorted(received[0])
        gaps = sum(1 for r in received if r != expected or len(r) != BEFORE + DURING)
        buckets = Counter(int((t - ready) * 10) for t in opened)
        for task in readers:
            task.cancel()
        await publisher.close()
        return StormResult(
            clients,
            jitter,
            all_back,
            max(buckets.values(), default=0) * 10.0,
            gaps,
            sum(a.reconnects for a in agents),
        )
    finally:
        for chunk in range(0, len(agents), 500):
            with contextlib.suppress(Exception):
                await asyncio.gather(*(a.close() for a in agents[chunk : chunk + 500]))
        with contextlib.suppress(Exception):
            server.terminate()


async def _until(condition: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds * UNIT
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)

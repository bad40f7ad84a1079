"""The crash loop over NATS: two gateways on a 3-node JetStream cluster, and a node and a
gateway SIGKILLed in every cycle.

``run_nats_crash_loop`` starts a real cluster (``sync_interval: always``, R3
streams) and two ``tidings serve --engine nats`` processes. SDK publisher agents
(several publishes in flight each, unique ids) and durable consumer agents are
spread over both gateways, each knowing both URLs. Every cycle, after a seeded
pause, it SIGKILLs one random NATS node and one random gateway at two random
moments, restarts both (the node from its store, the gateway on its port) and
waits until the node reports JetStream healthy, so that at most one node is ever
behind. At the end the publishers stop; every durable consumer must then get
every acknowledged message (at least once) within ``CATCH_UP_S``; a fresh
reader drains every topic from offset 0 and the checker judges the whole
history, as in ``crashloop``. The checker does not judge whether consumers got
everything (only what they got), so the loop does: ``missing`` counts, per
consumer, the acknowledged messages it never got.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import tidings
from tests.conftest import UNIT
from tests.reliability.checker import Recorder, Report, check, read_history
from tests.reliability.crashloop import drain, publisher, recording_handler
from tidings.auth import Authority
from tidings.cluster import NatsCluster, free_ports, start_gateway, stop_all

GATEWAYS = 2
#: how long the consumers have, after the last publish, to get every acknowledged message
CATCH_UP_S = 120.0


@dataclass
class NatsLoopResult:
    report: Report
    cycles: int
    seconds: float
    history: Path
    #: how long each cycle waited for the restarted node to be healthy (s)
    recoveries: list[float]
    #: consumer -> acknowledged messages it never got; and how long the last of them took
    missing: dict[str, int]
    catch_up_s: float
    #: subscriptions of the consumer agents that the SDK gave up (should be none)
    refused: list[str]


class _Gateways:
    """``tidings serve --engine nats`` processes on fixed ports, killed and restarted by name."""

    def __init__(self, state: Path, nats_url: str) -> None:
        self.state, self.nats_url = state, nats_url
        self.ports = free_ports(GATEWAYS)
        self.urls = [f"ws://127.0.0.1:{port}/" for port in self.ports]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, i: int) -> None:
        self.procs[i] = start_gateway(self.state, f"gw{i + 1}", self.ports[i], self.nats_url)

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        stop_all(self.procs.values(), 20)
        self.procs.clear()


async def run_nats_crash_loop(
    tmp: Path,
    *,
    cycles: int,
    budget_s: float = 0.0,
    publishers: int = 4,
    inflight: int = 8,
    consumers: int = 2,
    topics: int = 8,
    gap: tuple[float, float] = (1.0, 4.0),
    seed: int = 1,
    progress: bool = False,
) -> NatsLoopResult:
    """Run at least ``cycles`` kill cycles, and more until ``budget_s`` seconds have passed."""
    rng = random.Random(seed)
    history = tmp / "history.jsonl"
    names = [f"conv/nats-crash-{i % 4}/t{i}" for i in range(topics)]
    rec = Recorder(history)
    started = time.monotonic()
    cluster = NatsCluster(tmp / "nats", size=3)
    await asyncio.to_thread(cluster.start)
    state = cluster.state_dir
    # Both gateways check tokens with the secret of gateway-data/: create it before they start.
    token = Authority.from_data_dir(state / "gateway-data").mint("crash", pub=[">"], subs=[">"], ttl=86400)
    gateways = _Gateways(state, ",".join(cluster.urls))
    backoff = tidings.Backoff(base=0.05, cap=0.5)
    stop = asyncio.Event()
    agents: list[tidings.Agent] = []
    tasks: list[asyncio.Task[None]] = []
    recoveries: list[float] = []
    got: dict[str, set[str]] = {f"c{c}": set() for c in range(consumers)}
    missing: dict[str, int] = {}
    catch_up_s = 0.0
    refused: list[str] = []
    done = 0

    def spread(i: int) -> list[str]:  # agent i starts on gateway i % 2 and knows both
        return gateways.urls[i % GATEWAYS :] + gateways.urls[: i % GATEWAYS]

    try:
        for i in range(GATEWAYS):
            await asyncio.to_thread(gateways.start, i)
        for c in range(consumers):
            agent = tidings.connect(spread(c), token, name=f"consumer-{c}", backoff=backoff)
            agent.on("conv/>", consumer=f"c{c}", concurrency=64)(_counting(rec, f"c{c}", got[f"c{c}"]))
            agents.append(agent)
        for p in range(publishers):
            agents.append(tidings.connect(spread(p + 1), token, name=f"publisher-{p}", backoff=backoff))
        for agent in agents:
            await agent.open()
        for p in range(publishers):
            for k in range(inflight):
                process = f"p{p}.{k}"
                pub_rng = random.Random(f"{seed}{process}")
                tasks.append(
                    asyncio.create_task(
                        publisher(agents[consumers + p], rec, process, names, pub_rng, stop, keep_going=True)
                    )
                )
        while done < cycles or time.monotonic() - started < budget_s:
            await asyncio.sleep(rng.uniform(*gap) * UNIT)
            node, gw = rng.choice(cluster.nodes).name, rng.randrange(GATEWAYS)
            kills = [("kill-node", node), ("kill-gateway", f"gw{gw + 1}")]
            rng.shuffle(kills)
            for n, (what, name) in enumerate(kills):
                if n:
                    await asyncio.sleep(rng.uniform(0, 1.0) * UNIT)
                rec.record("nemesis", "info", what, name)
                if what == "kill-node":
                    cluster.kill(node)
                else:
                    gateways.kill(gw)
            await asyncio.sleep(rng.uniform(0, 1.0) * UNIT)
            t0 = time.monotonic()
            await asyncio.gather(
                asyncio.to_thread(gateways.start, gw), asyncio.to_thread(cluster.start_node, node)
            )
            recoveries.append(time.monotonic() - t0)
            rec.record("nemesis", "info", "restarted", [node, f"gw{gw + 1}"])
            done += 1
            if progress:
                print(
                    f"cycle {done}: killed {node} and gw{gw + 1}, healthy again in {recoveries[-1]:.1f} s;"
                    f" acknowledged {rec.acked}, {time.monotonic() - started:.0f} s",
                    flush=True,
                )
        # Let in-flight publishes finish, then stop publishing.
        await asyncio.sleep(1.0 * UNIT)
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=60 * UNIT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        rec.flush()
        acked = {
            ev["value"]["id"] for ev in read_history(history) if ev["f"] == "publish" and ev["type"] == "ok"
        }
        t0 = time.monotonic()
        deadline = t0 + CATCH_UP_S * UNIT
        while any(acked - ids for ids in got.values()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        catch_up_s = time.monotonic() - t0
        missing = {name: len(acked - ids) for name, ids in got.items()}
        refused = [f"{a.name} {sub.pattern}: {sub._error!r}" for a in agents for sub in a._subs if sub._error]
        await drain(gateways.urls[0], token, names, rec)
    finally:
        for task in tasks:
            task.cancel()
        for agent in agents:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(agent.close(), 5)
        rec.close()
        await asyncio.to_thread(gateways.stop)
        await asyncio.to_thread(cluster.stop)
    report = check(read_history(history))
    seconds = time.monotonic() - started
    return NatsLoopResult(report, done, seconds, history, recoveries, missing, catch_up_s, refused)


def _counting(rec: Recorder, consumer: str, got: set[str]) -> Callable[[tidings.Message], Awaitable[None]]:
    record = recording_handler(rec, consumer)

    async def handle(msg: tidings.Message) -> None:
        got.add(msg.id)
        await record(msg)

    return handle

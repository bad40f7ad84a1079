"""An open-loop agent swarm spread over load-generator processes (W3, and its peers).

The parent process starts ``processes`` workers (each pinned to core 1 when asked);
each worker connects its share of the agents with a system-specific ``connect``
function and then runs steps on command. A step offers a fixed publish rate per
agent: worker ``w`` publishes its ``k``-th message at ``start + k / (rate * agents_w)``,
round-robin over its agents (so every agent publishes at ``rate`` and the phases
are spread evenly). The body carries that *intended* send time, so when the
generator itself falls behind the delay is charged to the figure, not hidden
(no coordinated omission).

A step has a warm-up, a measured window ``[t0, t1)`` and a drain:

- ``delivered``: receipts by members other than the publisher whose *receive*
  time falls in the window (the sustained rate);
- ``latencies``: publish-to-handler time of every receipt of a message whose
  intended publish time falls in the window; the receipts still missing when the
  drain ends (no message for 0.3 s, at most ``drain`` s) count as infinitely late.

All clocks are ``time.monotonic_ns()``, which is one clock for every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import time
from array import array
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

import uvloop

from tidings.bench.harness import percentile, pin_to, raise_fd_limit

QUIET_S = 0.3  # a drain ends after this long without a receipt


class SwarmAgent(Protocol):
    def publish(self, published_ns: int) -> None:
        """Publish one message stamped with ``published_ns`` to the agent's conversation."""

    def close(self) -> None: ...


class Tally:
    """What the agents of one worker saw during one step; agents call ``received``."""

    __slots__ = ("delivered", "errors", "last_ns", "latencies", "own", "t0", "t1")

    def __init__(self) -> None:
        self.t0 = self.t1 = 0
        self.delivered = self.own = self.errors = self.last_ns = 0
        self.latencies = array("d")

    def reset(self, t0: int, t1: int) -> None:
        self.t0, self.t1 = t0, t1
        self.delivered = self.own = self.errors = 0
        self.latencies = array("d")

    def received(self, now_ns: int, published_ns: int, own: bool) -> None:
        """One message reached an agent's handler (``own``: the agent published it)."""
        self.last_ns = now_ns
        if own:
            self.own += 1
            return
        if self.t0 <= now_ns < self.t1:
            self.delivered += 1
        if self.t0 <= published_ns < self.t1:
            self.latencies.append((now_ns - published_ns) / 1e6)


#: ``connect(url, agent_index, conversation, members, body_bytes, tally)`` -> a connected agent
Connect = Callable[[str, int, int, int, int, Tally], Awaitable[SwarmAgent]]


async def _publish(agents: list[SwarmAgent], rate: float, start: int, t0: int, t1: int) -> int:
    """Publish round-robin at ``rate`` per agent from ``start`` until ``t1``.

    Returns how many messages had their intended time in the window ``[t0, t1)``.
    """
    per_ns = rate * len(agents) / 1e9
    k = in_window = 0
    while (now := time.monotonic_ns()) < t1:
        due = int((now - start) * per_ns) + 1 if now >= start else 0
        while k < due:
            intended = start + int(k / per_ns)
            agents[k % len(agents)].publish(intended)
            in_window += t0 <= intended < t1
            k += 1
        await asyncio.sleep(0.001)
    return in_window


async def _worker(
    pipe: Connection,
    connect: Connect,
    urls: list[str],
    first: int,
    count: int,
    conversations: int,
    members: int,
    body_bytes: int,
    parallel: int,
) -> None:
    tally = Tally()
    gate = asyncio.Semaphore(parallel)

    async def one(i: int) -> SwarmAgent:
        async with gate:
            # The members of conversation c are agents c, c + conversations, ...: spread
            # them over the servers, so a conversation spans gateways.
            url = urls[(i // conversations) % len(urls)]
            return await connect(url, i, i % conversations, members, body_bytes, tally)

    agents = list(await asyncio.gather(*(one(i) for i in range(first, first + count))))
    pipe.send(("ready", len(agents)))
    readable = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(pipe.fileno(), readable.set)
    while True:
        await readable.wait()
        readable.clear()
        if not pipe.poll():
            continue
        command = pipe.recv()
        if command[0] == "stop":
            break
        _, rate, start, warmup, duration, drain = command
        t0 = start + int(warmup * 1e9)
        t1 = t0 + int(duration * 1e9)
        tally.reset(t0, t1)
        published = await _publish(agents, rate, start, t0, t1)
        for _ in range(int(drain / 0.05)):
            if time.monotonic_ns() - tally.last_ns > QUIET_S * 1e9:
                break
            await asyncio.sleep(0.05)
        # The loop made the pipe non-blocking; a step's latencies can outgrow the
        # pipe's buffer while the parent still reads another worker's report.
        os.set_blocking(pipe.fileno(), True)
        pipe.send(
            {
                "published": published,
                "delivered": tally.delivered,
                "own": tally.own,
                "errors": tally.errors,
                "latencies": tally.latencies.tobytes(),
            }
        )
    loop.remove_reader(pipe.fileno())
    for agent in agents:
        agent.close()
    await asyncio.sleep(0.1)


def _worker_main(pipe: Connection, pin: bool, use_uvloop: bool, *args: Any) -> None:
    if pin:
        pin_to(1)
    raise_fd_limit(1 << 20)
    (uvloop.run if use_uvloop else asyncio.run)(_worker(pipe, *args))


class Swarm:
    """``with Swarm(connect, url, agents=1000, conversations=100) as swarm: swarm.step(rate)``.

    Agent ``i`` talks in conversation ``i % conversations``; each conversation
    has ``agents // conversations`` members. ``url`` may be a list of servers
    (gateways of one cluster): each conversation's members are spread over them.
    ``parallel`` bounds the connects in flight per worker; ``use_uvloop=False`` runs
    the workers on asyncio's own loop.
    Raises ``RuntimeError`` when a worker fails to connect its agents.
    """

    def __init__(
        self,
        connect: Connect,
        url: str | list[str],
        agents: int = 1000,
        conversations: int = 100,
        processes: int = 4,
        body_bytes: int = 200,
        pin: bool = True,
        parallel: int = 100,
        use_uvloop: bool = True,
    ) -> None:
        if agents % conversations:
            raise ValueError("agents must be a multiple of conversations")
        self.agents = agents
        self.members = agents // conversations
        ctx = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        processes = max(1, min(processes, agents))
        for w in range(processes):
            first = w * agents // processes
            count = (w + 1) * agents // processes - first
            parent, child = ctx.Pipe()
            args = (
                child,
                pin,
                use_uvloop,
                connect,
                [url] if isinstance(url, str) else url,
                first,
                count,
                conversations,
                self.members,
                body_bytes,
                parallel,
            )
            proc = ctx.Process(target=_worker_main, args=args, daemon=True)
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(proc)
        started = time.perf_counter()
        for pipe in self._pipes:
            if not pipe.poll(120):
                raise RuntimeError("a swarm worker did not connect its agents within 120 s")
            pipe.recv()
        self.connect_seconds = time.perf_counter() - started

    def step(
        self,
        rate: float,
        duration: float = 5.0,
        warmup: float = 1.0,
        drain: float = 3.0,
        cpu_seconds: Callable[[], float] | None = None,
    ) -> dict[str, Any]:
        """Offer ``rate`` publishes/s per agent; return the figures of the measured window.

        ``cpu_seconds`` reads the server's CPU time, sampled at the window's ends.
        """
        start = time.monotonic_ns() + 200_000_000
        for pipe in self._pipes:
            pipe.send(("step", rate, start, warmup, duration, drain))
        cpu = 0.0
        if cpu_seconds is not None:
            time.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9 + warmup))
            cpu = -cpu_seconds()
            time.sleep(duration)
            cpu += cpu_seconds()
        results = []
        for pipe in self._pipes:
            if not pipe.poll(warmup + duration + drain + 60):
                raise RuntimeError("a swarm worker did not report its step")
            results.append(pipe.recv())
        published = sum(r["published"] for r in results)
        delivered = sum(r["delivered"] for r in results)
        lat = array("d")
        for r in results:
            lat.frombytes(r["latencies"])
        expected = published * (self.members - 1)
        missing = max(0, expected - len(lat))
        ordered = sorted(lat) + [math.inf] * missing
        return {
            "rate_per_agent": rate,
            "offered_publishes_per_s": round(rate * self.agents),
            "offered_deliveries_per_s": round(rate * self.agents * (self.members - 1)),
            "published": published,
            "delivered_per_s": round(delivered / duration),
            "p50_ms": _ms(percentile(ordered, 0.50)),
            "p99_ms": _ms(percentile(ordered, 0.99)),
            "undelivered": missing,
            "errors": sum(r["errors"] for r in results),
            "own_copies_per_s": round(sum(r["own"] for r in results) / (duration + warmup)),
            "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, delivered), 2) if cpu_seconds else None,
        }

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for pipe in self._pipes:
            pipe.close()

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ms(value: float) -> float | None:
    """Milliseconds rounded for JSON; ``None`` stands for "never arrived" (infinite)."""
    return None if math.isinf(value) else round(value, 3)

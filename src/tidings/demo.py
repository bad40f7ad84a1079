"""``tidings demo``: a swarm of agents talking in durable conversations, and a crash.

The demo starts ``tidings serve`` (the embedded engine: the on-disk log, one
process) and connects every agent over WebSocket with the SDK. Agents in one
conversation (``conv/team-N/chat``) are durable consumers of it: they take
turns publishing (each publish waits for its ``puback``, which means the
message is on disk), and ack everything they hear.

Halfway through, the demo kills the server with SIGKILL and restarts it on the
same data directory. Agents reconnect, resume from their cursors, and retry
the publish that was in flight with the same id (so it is stored once). At the
end the demo checks that every acknowledged message reached every member of
its conversation.
"""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from tidings.auth import Authority
from tidings.bench.harness import free_port
from tidings.metrics import percentile
from tidings.sdk import Backoff, Subscription, connect

ROLES = ("planner", "researcher", "coder", "critic", "writer")
LINES = {
    "planner": ["split the task into three steps", "step two is next", "who takes the tests?"],
    "researcher": ["found two papers on this", "the API limits us to 100 rps", "checked: it holds"],
    "coder": ["patch is ready for review", "tests pass locally", "refactored the parser"],
    "critic": ["the edge case with empty input fails", "latency budget is too tight", "looks good"],
    "writer": ["drafted the summary", "updated the changelog", "the docs need an example"],
}


@dataclass
class Figures:
    published: int = 0
    delivered: int = 0
    reconnects: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    window: list[float] = field(default_factory=list)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    events: list[str] = field(default_factory=list)
    #: conversation -> ids acknowledged by the server
    acked: dict[str, set[str]] = field(default_factory=dict)
    #: agent -> ids it received
    heard: dict[str, set[str]] = field(default_factory=dict)
    missing: int = 0
    redelivered: int = 0


class Server:
    """``tidings serve`` as a child process on a fixed port, so it can be killed and restarted."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "tidings",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if re.search(r"listening on", line):
                return
        raise RuntimeError("tidings serve did not start")

    def kill(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class DemoAgent:
    """One simulated agent. The SDK does the reconnecting, re-sending and dedup."""

    def __init__(self, name: str, conv: str, role: str, url: str, token: str, figures: Figures) -> None:
        self.name, self.conv, self.role = name, conv, role
        self.rng = random.Random(name)
        self.figures = figures
        self.agent = connect(url, token, name=name, backoff=Backoff(base=0.05, cap=1.0))
        figures.heard[name] = set()
        figures.acked.setdefault(conv, set())

    async def run(self, rate: float, talking: asyncio.Event, done: asyncio.Event) -> None:
        """Talk while ``talking`` is set, listen until ``done``."""
        agent = self.agent
        await agent.open()
        sub = agent.subscribe(f"{self.conv}/>", consumer=self.name, start="earliest")
        listener = asyncio.create_task(self._listen(sub))
        try:
            while talking.is_set():
                await asyncio.sleep(self.rng.expovariate(rate))
                if talking.is_set():
                    await self._publish()
            await done.wait()
        finally:
            listener.cancel()
            self.figures.reconnects += agent.reconnects
            await agent.close()

    async def _publish(self) -> None:
        text = self.rng.choice(LINES[self.role])
        body = {"role": self.role, "text": text, "t": time.perf_counter_ns()}
        # Waits through a server crash: the SDK buffers it and re-sends it with the same id.
        ack = await self.agent.publish(f"{self.conv}/chat", body)
        self.figures.acked[self.conv].add(ack.id)
        self.figures.published += 1
        if self.rng.random() < 0.02:
            self.figures.recent.append(f"[cyan]{self.conv}[/] [bold]{self.name}[/]: {text}")

    async def _listen(self, sub: Subscription) -> None:
        heard = self.figures.heard[self.name]
        async for msg in sub:
            if msg.id in heard:
                self.figures.redelivered += 1
            else:
                heard.add(msg.id)
                self.figures.delivered += 1
                if isinstance(msg.body, dict) and isinstance(msg.body.get("t"), int):
                    ms = (time.perf_counter_ns() - msg.body["t"]) / 1e6
                    self.figures.latencies_ms.append(ms)
                    self.figures.window.append(ms)
            msg.ack()


def _view(figures: Figures, started: float, duration: float, agents: int, conversations: int) -> Group:
    elapsed = max(1e-9, time.monotonic() - started)
    window = sorted(figures.window)
    table = Table(title="tidings demo: durable conversations, live figures")
    for col in ("agents", "convs", "published/s", "delivered/s", "p50 ms", "p99 ms", "reconnects", "elapsed"):
        table.add_column(col, justify="right")
    table.add_row(
        str(agents),
        str(conversations),
        f"{figures.published / elapsed:,.0f}",
        f"{figures.delivered / elapsed:,.0f}",
        f"{percentile(window, 0.50):.1f}",
        f"{percentile(window, 0.99):.1f}",
        str(figures.reconnects),
        f"{elapsed:.0f}/{duration:.0f} s",
    )
    talk = Panel("\n".join(figures.recent) or "...", title="overheard in conversations")
    events = Panel("\n".join(figures.events[-4:]) or "...", title="server events")
    return Group(table, talk, events)


def _verify(figures: Figures, members: dict[str, list[str]]) -> None:
    figures.missing = sum(
        len(ids - figures.heard[name]) for conv, ids in figures.acked.items() for name in members[conv]
    )


async def run_demo(
    agents: int = 120,
    conversations: int = 12,
    duration: float = 20.0,
    rate: float = 2.0,
    console: Console | None = None,
    crash: bool = True,
) -> Figures:
    """Run the demo and return its figures (the test suite calls this directly)."""
    console = console or Console()
    data_dir = Path(tempfile.mkdtemp(prefix="tidings-demo-"))
    authority = Authority.from_data_dir(data_dir)
    server = Server(data_dir, free_port())
    server.start()
    url = f"ws://127.0.0.1:{server.port}/"
    pid = server.proc.pid if server.proc else "?"
    console.print(f"[bold]tidings[/] server (pid {pid}) on {url}, data in {data_dir}")
    console.print(f"{agents} agents join {conversations} durable conversations (conv/team-N/chat)...")

    figures = Figures()
    members: dict[str, list[str]] = {}
    swarm: list[DemoAgent] = []
    for i in range(agents):
        conv = f"conv/team-{i % conversations}"
        role = ROLES[(i // conversations) % len(ROLES)]
        name = f"{role}-{i}"
        token = authority.mint(name, pub=[f"{conv}/>"], subs=[f"{conv}/>"], ttl=3600)
        swarm.append(DemoAgent(name, conv, role, url, token, figures))
        members.setdefault(conv, []).append(name)

    talking, done = asyncio.Event(), asyncio.Event()
    talking.set()
    started = time.monotonic()
    tasks = [asyncio.create_task(a.run(rate, talking, done)) for a in swarm]
    crashed = not crash
    try:
        with Live(console=console, refresh_per_second=4) as live:
            while time.monotonic() - started < duration:
                await asyncio.sleep(0.5)
                if not crashed and time.monotonic() - started > duration / 2:
                    crashed = True
                    server.kill()
                    at = time.monotonic() - started
                    figures.events.append(f"[red]{at:.1f} s: server killed with SIGKILL[/] mid-stream")
                    t0 = time.monotonic()
                    await asyncio.to_thread(server.start)
                    figures.events.append(
                        f"[green]restarted in {time.monotonic() - t0:.2f} s[/]; agents reconnect and resume"
                    )
                live.update(_view(figures, started, duration, agents, conversations))
                figures.window.clear()
            talking.clear()
            await asyncio.sleep(1.0)  # publishes in flight finish (each waits for its puback)
            for _ in range(40):  # then the last deliveries arrive
                _verify(figures, members)
                if not figures.missing:
                    break
                await asyncio.sleep(0.25)
            live.update(_view(figures, started, duration, agents, conversations))
        console.print()
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        _verify(figures, members)
    finally:
        server.stop()

    lat = sorted(figures.latencies_ms)
    elapsed = time.monotonic() - started
    acked = sum(len(ids) for ids in figures.acked.values())
    summary = Table(title="summary")
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    summary.add_row("agents / conversations", f"{agents} / {conversations}")
    summary.add_row("messages acknowledged (on disk)", f"{acked:,}")
    summary.add_row("deliveries (distinct, per member)", f"{figures.delivered:,}")
    summary.add_row("deliveries/s", f"{figures.delivered / elapsed:,.0f}")
    summary.add_row(
        "publish-to-handler latency p50 / p99 ms (p99 spans the crash)",
        f"{percentile(lat, 0.5):.1f} / {percentile(lat, 0.99):.1f}",
    )
    summary.add_row("server crashes / agent reconnects", f"{1 if crash else 0} / {figures.reconnects}")
    summary.add_row("duplicates handed to agents (SDK dedup)", f"{figures.redelivered:,}")
    verdict = (
        "[green]0: every acknowledged message reached every member[/]"
        if not figures.missing
        else (f"[red]{figures.missing}[/]")
    )
    summary.add_row("acknowledged but not delivered", verdict)
    console.print(summary)
    return figures

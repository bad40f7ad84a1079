"""``tidings demo``: a swarm of agents talking in durable conversations, and a crash.

The demo starts ``tidings serve`` (the embedded engine: the on-disk log, one
process), creates one conversation per team through the control plane
(``POST /v1/conversations``), and connects every agent over WebSocket with the
SDK. Agents in one conversation (``conv/team-N/chat``) are durable consumers
of it: they take turns publishing replies to what they heard (``parent`` is
the message answered, so the dashboard draws the conversation's causal graph),
each publish waits for its ``puback`` (the message is on disk), and they ack
everything they hear, except the critic: it rejects (``nack``) some messages,
which are redelivered, and never accepts a few, which end in ``dlq/``.

Halfway through, the demo kills the server with SIGKILL and restarts it on the
same data directory and ports. Agents reconnect, resume from their cursors,
and retry the publish that was in flight with the same id (so it is stored
once). At the end the demo checks that every acknowledged message reached
every member of its conversation. ``--keep`` leaves the server (and its
dashboard) up until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from tidings.auth import Authority
from tidings.bench.harness import free_port
from tidings.metrics import percentile
from tidings.sdk import Backoff, Message, Subscription, connect

ROLES = ("planner", "researcher", "coder", "critic", "writer")
LINES = {
    "planner": ["split the task into three steps", "step two is next", "who takes the tests?"],
    "researcher": ["found two papers on this", "the API limits us to 100 rps", "checked: it holds"],
    "coder": ["patch is ready for review", "tests pass locally", "refactored the parser"],
    "critic": ["the edge case with empty input fails", "latency budget is too tight", "looks good"],
    "writer": ["drafted the summary", "updated the changelog", "the docs need an example"],
}
#: the conversations' policy: a message the critic keeps rejecting is dead-lettered on its 3rd attempt
POLICY = {"max_deliver": 3, "ack_wait_ms": 5000}
#: the critic rejects a message on its first attempt when crc32(id) % REJECT_ONCE == 0 ...
REJECT_ONCE = 12
#: ... and on every attempt (so it ends in dlq/) when crc32(id) % REJECT_ALWAYS == 0
REJECT_ALWAYS = 29


@dataclass
class Figures:
    published: int = 0
    delivered: int = 0
    reconnects: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    window: list[float] = field(default_factory=list)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    events: list[str] = field(default_factory=list)
    #: conversation topic -> ids acknowledged by the server
    acked: dict[str, set[str]] = field(default_factory=dict)
    #: conversation topic -> {id: parent id or None} of what was acknowledged
    parents: dict[str, dict[str, str | None]] = field(default_factory=dict)
    #: agent -> ids it received
    heard: dict[str, set[str]] = field(default_factory=dict)
    missing: int = 0
    #: deliveries of an id the agent had already received (after a crash, or a nack)
    redelivered: int = 0
    #: messages the critics rejected (nack), every attempt counted
    rejected: int = 0


class Server:
    """``tidings serve`` as a child process on fixed ports, so it can be killed and restarted."""

    def __init__(self, data_dir: Path, port: int, control_port: int) -> None:
        self.data_dir, self.port, self.control_port = data_dir, port, control_port
        self.proc: subprocess.Popen[str] | None = None
        self._drainer: threading.Thread | None = None
        #: the admin token the first start printed (all later ones are signed by the same key)
        self.admin_token = ""
        self.url = f"ws://127.0.0.1:{port}/"
        self.control_url = f"http://127.0.0.1:{control_port}"
        #: the last lines it printed, for a diagnosis when it fails
        self.output: deque[str] = deque(maxlen=50)

    @property
    def dashboard_url(self) -> str:
        """The dashboard, logged in: the token is in the fragment, which browsers never send."""
        return f"{self.control_url}/ui/#token={self.admin_token}"

    def start(self) -> None:
        """Start ``tidings serve`` and return once it printed its URLs and admin token.

        Raises ``RuntimeError`` (with its last output) if it exits first.
        """
        cmd = [
            *(sys.executable, "-m", "tidings", "serve"),
            *("--port", str(self.port), "--control-port", str(self.control_port)),
            *("--data-dir", str(self.data_dir)),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if line.startswith("tidings listening on "):
                self.url = line.split()[-1]
            elif line.startswith("control plane on "):
                self.control_url = line.split()[3]
            elif "export TIDINGS_ADMIN_TOKEN=" in line:
                self.admin_token = self.admin_token or line.split("=", 1)[1].strip()
                # Keep reading what it prints (log lines), or a full pipe would block it.
                self._drainer = threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True)
                self._drainer.start()
                return
        self._reap()
        raise RuntimeError("tidings serve did not start:\n" + "".join(self.output))

    def _drain(self, stdout: IO[str]) -> None:
        self.output.extend(stdout)  # until the process exits

    def _reap(self) -> None:
        """Wait for the exited process; close its pipe once everything it printed is read."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        self.proc.wait()
        if self._drainer is not None:
            self._drainer.join()
            self._drainer = None
        self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL: no draining, no flushing; what was acknowledged must survive."""
        assert self.proc is not None
        self.proc.kill()
        self._reap()

    def stop(self) -> None:
        """SIGTERM: it drains and exits."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        self._reap()

    async def create_conversations(self, members: dict[str, list[str]]) -> None:
        """Create each conversation (topic -> member agents) through the control plane."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with httpx.AsyncClient(base_url=self.control_url, headers=headers, timeout=10) as http:
            for topic, names in members.items():
                body = {"topic": topic, "members": names, "policy": POLICY}
                reply = await http.post("/v1/conversations", json=body)
                if reply.status_code != 409:  # 409: it exists (a second run on the same data)
                    reply.raise_for_status()


class DemoAgent:
    """One simulated agent. The SDK does the reconnecting, re-sending and dedup."""

    def __init__(self, name: str, conv: str, role: str, url: str, token: str, figures: Figures) -> None:
        self.name, self.conv, self.role = name, conv, role
        self.rng = random.Random(name)
        self.figures = figures
        self.agent = connect(url, token, name=name, backoff=Backoff(base=0.05, cap=1.0))
        #: the latest messages of others it heard: what it may answer
        self.answerable: deque[str] = deque(maxlen=4)
        figures.heard[name] = set()
        figures.acked.setdefault(conv, set())
        figures.parents.setdefault(conv, {})

    async def run(self, rate: float, talking: asyncio.Event, done: asyncio.Event) -> None:
        """Talk while ``talking`` is set, listen until ``done``."""
        agent = self.agent
        await agent.open()
        sub = agent.subscribe(self.conv, consumer=self.name, start="earliest")
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

    def _parent(self) -> str | None:
        """Mostly answer the latest message heard, sometimes an older one (a branch), now and
        then start a new thread."""
        if not self.answerable or self.rng.random() < 0.1:
            return None
        if self.rng.random() < 0.75:
            return self.answerable[-1]
        return self.rng.choice(self.answerable)

    async def _publish(self) -> None:
        text = self.rng.choice(LINES[self.role])
        body = {"role": self.role, "text": text, "t": time.perf_counter_ns()}
        parent = self._parent()
        # Waits through a server crash: the SDK buffers it and re-sends it with the same id.
        ack = await self.agent.publish(self.conv, body, parent=parent)
        self.figures.acked[self.conv].add(ack.id)
        self.figures.parents[self.conv][ack.id] = parent
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
                if msg.sender != self.name:
                    self.answerable.append(msg.id)
            if self._rejects(msg):
                self.figures.rejected += 1
                msg.nack(delay_ms=200)
            else:
                msg.ack()

    def _rejects(self, msg: Message) -> bool:
        if self.role != "critic" or msg.sender == self.name:
            return False
        crc = zlib.crc32(msg.id.encode())
        return crc % REJECT_ALWAYS == 0 or (crc % REJECT_ONCE == 0 and msg.attempt <= 1)


class Swarm:
    """Agents in teams, one durable conversation per team, talking through ``server``."""

    def __init__(self, server: Server, agents: int, conversations: int, figures: Figures) -> None:
        authority = Authority.from_data_dir(server.data_dir)
        self.figures = figures
        self.members: dict[str, list[str]] = {}
        self.agents: list[DemoAgent] = []
        for i in range(agents):
            conv = f"conv/team-{i % conversations}/chat"
            role = ROLES[(i // conversations) % len(ROLES)]
            name = f"{role}-{i}"
            token = authority.mint(name, pub=[conv], subs=[conv], ttl=3600)
            self.agents.append(DemoAgent(name, conv, role, server.url, token, figures))
            self.members.setdefault(conv, []).append(name)
        self.talking, self.done = asyncio.Event(), asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, rate: float) -> None:
        """Agents connect and talk, each about ``rate`` messages per second."""
        self.talking.set()
        self._tasks = [asyncio.create_task(a.run(rate, self.talking, self.done)) for a in self.agents]

    async def quiesce(self, rounds: int = 40) -> None:
        """Stop talking; return once the publishes in flight are acknowledged and every
        acknowledged message reached every member, or after ``rounds`` quarter-seconds
        (then ``figures.missing`` says what did not arrive)."""
        self.talking.clear()
        await asyncio.sleep(1.0)  # publishes in flight finish (each waits for its puback)
        for _ in range(rounds):
            if not self.verify():
                return
            await asyncio.sleep(0.25)

    async def close(self) -> None:
        self.talking.clear()
        self.done.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def verify(self) -> int:
        """Count the (member, message) pairs acknowledged but not (yet) delivered."""
        figures = self.figures
        figures.missing = sum(
            len(ids - figures.heard[name])
            for conv, ids in figures.acked.items()
            for name in self.members[conv]
        )
        return figures.missing


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


async def run_demo(
    agents: int = 120,
    conversations: int = 12,
    duration: float = 20.0,
    rate: float = 2.0,
    console: Console | None = None,
    crash: bool = True,
    keep: bool = False,
) -> Figures:
    """Run the demo and return its figures (the test suite calls this directly).

    With ``keep`` the server stays up after the summary until the task is
    cancelled (Ctrl-C), so the dashboard can be browsed.
    """
    console = console or Console()
    data_dir = Path(tempfile.mkdtemp(prefix="tidings-demo-"))
    server = Server(data_dir, free_port(), free_port())
    server.start()
    pid = server.proc.pid if server.proc else "?"
    console.print(f"[bold]tidings[/] server (pid {pid}) on {server.url}, data in {data_dir}")
    # (soft_wrap: the URL stays one line, to copy whole)
    console.print(f"dashboard: {server.dashboard_url}", soft_wrap=True, highlight=False)
    console.print(f"{agents} agents join {conversations} durable conversations (conv/team-N/chat)...")

    figures = Figures()
    swarm = Swarm(server, agents, conversations, figures)
    try:
        await server.create_conversations(swarm.members)
        started = time.monotonic()
        swarm.start(rate)
        crashed = not crash
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
            await swarm.quiesce()
            live.update(_view(figures, started, duration, agents, conversations))
        console.print()
        await swarm.close()
        swarm.verify()
        _summary(console, figures, agents, conversations, time.monotonic() - started, crash)
        if keep:
            console.print(f"\nthe server stays up; dashboard: {server.dashboard_url}", soft_wrap=True)
            console.print(f"API docs at {server.control_url}/docs; Ctrl-C to stop")
            await asyncio.Event().wait()
    finally:
        server.stop()
    return figures


def _summary(
    console: Console, figures: Figures, agents: int, conversations: int, elapsed: float, crash: bool
) -> None:
    lat = sorted(figures.latencies_ms)
    acked = sum(len(ids) for ids in figures.acked.values())
    replies = sum(p is not None for parents in figures.parents.values() for p in parents.values())
    summary = Table(title="summary")
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    summary.add_row("agents / conversations", f"{agents} / {conversations}")
    summary.add_row("messages acknowledged (on disk) / replies (with a parent)", f"{acked:,} / {replies:,}")
    summary.add_row("deliveries (distinct, per member)", f"{figures.delivered:,}")
    summary.add_row("deliveries/s", f"{figures.delivered / elapsed:,.0f}")
    summary.add_row(
        "publish-to-handler latency p50 / p99 ms (p99 spans the crash)",
        f"{percentile(lat, 0.5):.1f} / {percentile(lat, 0.99):.1f}",
    )
    summary.add_row("server crashes / agent reconnects", f"{1 if crash else 0} / {figures.reconnects}")
    summary.add_row(
        "rejected by critics (nack) / redeliveries", f"{figures.rejected:,} / {figures.redelivered:,}"
    )
    verdict = (
        "[green]0: every acknowledged message reached every member[/]"
        if not figures.missing
        else (f"[red]{figures.missing}[/]")
    )
    summary.add_row("acknowledged but not delivered", verdict)
    console.print(summary)


def main(argv: list[str] | None = None) -> None:
    """``python -m tidings.demo [--keep]``: the demo with its defaults."""
    import argparse

    from tidings.cli import _run

    parser = argparse.ArgumentParser(prog="python -m tidings.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the server up until Ctrl-C")
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args(argv)
    try:
        figures = _run(run_demo(duration=args.duration, keep=args.keep))
    except KeyboardInterrupt:  # Ctrl-C: with --keep, the way to stop; run_demo stopped the server
        raise SystemExit(0 if args.keep else 130) from None
    raise SystemExit(1 if figures.missing else 0)


if __name__ == "__main__":
    main()

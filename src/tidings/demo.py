"""``tidings demo``: an embedded server and a swarm of agents talking in conversations.

Every agent is a real WebSocket client (the SDK) connected to a real gateway
on loopback. Agents in one conversation subscribe to it with a wildcard and
take turns: a planner proposes, researchers and coders answer (``parent`` set
to the message they answer), critics object. The screen shows live figures:
messages published and delivered per second, and publish-to-receive latency
percentiles measured in the receiving agent.
"""

from __future__ import annotations

import asyncio
import random
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
from tidings.config import Settings
from tidings.gateway import Gateway
from tidings.sdk import Agent, connect

ROLES = ("planner", "researcher", "coder", "critic", "writer")
LINES = {
    "planner": ["split the task into three steps", "step two is next", "who takes the tests?"],
    "researcher": ["found two papers on this", "the API limits us to 100 rps", "checked: it holds"],
    "coder": ["patch is ready for review", "tests pass locally", "refactored the parser"],
    "critic": ["the edge case with empty input fails", "latency budget is too tight", "looks good"],
    "writer": ["drafted the summary", "updated the changelog", "the docs need an example"],
}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[i]


@dataclass
class Figures:
    published: int = 0
    delivered: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    window: list[float] = field(default_factory=list)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=8))


async def _agent_loop(
    agent: Agent,
    conv: str,
    role: str,
    rate: float,
    stop: asyncio.Event,
    figures: Figures,
) -> None:
    sub = await agent.subscribe(f"{conv}/>")
    last_seen: list[str] = []

    async def listen() -> None:
        async for msg in sub:
            figures.delivered += 1
            if isinstance(msg.body, dict) and "t" in msg.body:
                ms = (time.perf_counter_ns() - int(msg.body["t"])) / 1e6
                figures.latencies_ms.append(ms)
                figures.window.append(ms)
            if msg.sender != agent.agent_id:
                last_seen.append(msg.id)
                del last_seen[:-4]

    listener = asyncio.create_task(listen())
    rng = random.Random(hash(agent.agent_id))
    try:
        while not stop.is_set():
            await asyncio.sleep(rng.expovariate(rate))
            if stop.is_set():
                break
            text = rng.choice(LINES[role])
            parent = last_seen[-1] if last_seen and rng.random() < 0.5 else None
            body = {"role": role, "text": text, "t": time.perf_counter_ns()}
            agent.publish_nowait(f"{conv}/chat", body, parent=parent)
            figures.published += 1
            if rng.random() < 0.02:
                figures.recent.append(f"[cyan]{conv}[/] [bold]{agent.agent_id}[/]: {text}")
    finally:
        listener.cancel()


def _view(figures: Figures, started: float, duration: float, agents: int, conversations: int) -> Group:
    elapsed = max(1e-9, time.monotonic() - started)
    window = sorted(figures.window)
    table = Table(title="tidings demo: live figures", expand=False)
    for col in ("agents", "conversations", "published/s", "delivered/s", "p50 ms", "p99 ms", "elapsed"):
        table.add_column(col, justify="right")
    table.add_row(
        str(agents),
        str(conversations),
        f"{figures.published / elapsed:,.0f}",
        f"{figures.delivered / elapsed:,.0f}",
        f"{percentile(window, 0.50):.2f}",
        f"{percentile(window, 0.99):.2f}",
        f"{elapsed:.0f}/{duration:.0f} s",
    )
    talk = Panel("\n".join(figures.recent) or "...", title="overheard in conversations")
    return Group(table, talk)


async def run_demo(
    agents: int = 120,
    conversations: int = 12,
    duration: float = 20.0,
    rate: float = 5.0,
    console: Console | None = None,
) -> Figures:
    """Run the demo and return its figures (the test suite calls this directly)."""
    console = console or Console()
    data_dir = tempfile.mkdtemp(prefix="tidings-demo-")
    authority = Authority.from_data_dir(Path(data_dir))
    gateway = Gateway(Settings(port=0, data_dir=data_dir), authority)
    await gateway.start()
    console.print(f"[bold]tidings[/] gateway on {gateway.url}  (data in {data_dir})")
    console.print(f"connecting {agents} agents into {conversations} conversations...")

    figures = Figures()
    swarm: list[tuple[Agent, str, str]] = []
    for i in range(agents):
        conv = f"sig/team-{i % conversations}"
        role = ROLES[(i // conversations) % len(ROLES)]
        name = f"{role}-{i}"
        token = authority.mint(name, pub=[f"{conv}/>"], subs=[f"{conv}/>"], ttl=600)
        agent = connect(gateway.url, token, name=name)
        await agent.open()
        swarm.append((agent, conv, role))

    stop = asyncio.Event()
    started = time.monotonic()
    tasks = [asyncio.create_task(_agent_loop(a, c, r, rate, stop, figures)) for a, c, r in swarm]
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while time.monotonic() - started < duration:
            await asyncio.sleep(0.5)
            live.update(_view(figures, started, duration, agents, conversations))
            figures.window.clear()
    console.print()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for agent, _, _ in swarm:
        await agent.close()
    await gateway.stop()

    lat = sorted(figures.latencies_ms)
    elapsed = time.monotonic() - started
    summary = Table(title="summary")
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    summary.add_row("agents / conversations", f"{agents} / {conversations}")
    summary.add_row("messages published", f"{figures.published:,}")
    summary.add_row("deliveries", f"{figures.delivered:,}")
    summary.add_row("deliveries/s", f"{figures.delivered / elapsed:,.0f}")
    summary.add_row(
        "latency p50 / p99 / max ms",
        f"{percentile(lat, 0.5):.2f} / {percentile(lat, 0.99):.2f} / {lat[-1] if lat else 0:.2f}",
    )
    summary.add_row("gateway WebSocket writes", f"{gateway.stats.messages_out:,}")
    console.print(summary)
    return figures

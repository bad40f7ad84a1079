"""W3, the agent swarm: agents in conversations, durable messages, consumers with acks.

``agents`` agents talk in ``conversations`` conversations of equal size (1,000 in
100 of 10 by default). Each agent is one WebSocket connection that

- subscribes a durable consumer of its own to its conversation's topic
  ``conv/c<n>/chat`` (at-least-once: it acks every message it gets), with
  ``echo: false``: like the peers (AutoGen's runtime, a socket.io room emit that
  skips the sender), it is not sent its own messages;
- publishes durable messages to that topic at a fixed rate, each with its own
  ``id`` and a ``rid`` (the server answers with a ``puback`` after the fsync).

Every message reaches the *other* members, the ones a conversation exists for
(``own_copies_per_s`` counts any copy that reached its publisher: 0 unless the
agents are anonymous, without tokens, and so share one identity). Latency is
publish (the intended send time) to the receiving agent's handler. The agents
are lean raw picows clients with pre-encoded frames, spread over several
load-generator processes on core 1 (``tidings.bench.swarm``); the server runs on
core 0.

With ``urls`` (gateways already running, e.g. by ``tidings cluster up``) the
swarm uses them instead of a fresh server: the members of each conversation are
spread over the gateways, and the topics and consumers carry a tag of the run,
since the cluster keeps what earlier runs stored.

A run offers rising loads (``rates``, publishes per second per agent) to one
server and its connected swarm, stopping after the first load whose p99 is at or
over ``p99_limit_ms``; the top-level figures are those of the highest load that
stayed under it.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tidings.auth import Authority
from tidings.bench.harness import BenchServer, ServerCpu, pin_to
from tidings.bench.swarm import Connect, Swarm, Tally

P99_LIMIT_MS = 50.0
TOKEN_TTL_S = 24 * 3600.0


class _Frame(msgspec.Struct):
    op: str
    offset: int | None = None
    # what every agent publishes: [intended publish time in ns, publisher index, padding]
    body: tuple[int, int, str] | None = None


_decode = msgspec.json.Decoder(list[_Frame] | _Frame)


class Agent(WSListener):
    """One agent: a durable consumer of its conversation that publishes into it."""

    def __init__(
        self,
        index: int,
        conversation: int,
        body_bytes: int,
        tally: Tally,
        tag: str = "",
        token: str | None = None,
    ) -> None:
        self.index = index
        self.tally = tally
        self.transport: WSTransport | None = None
        self.subscribed = asyncio.Event()
        self.seq = 0
        self.pubacks = 0
        topic = b"conv/%bc%d/chat" % (tag.encode(), conversation)
        # With a token of its own it can ask not to be sent its own messages (anonymous
        # agents all share one identity: then they get, and count apart, their own copies).
        hello = b'"token":"%b",' % token.encode() if token else b""
        echo = b'"echo":false,' if token else b""
        self.sub_frame = (
            b'[{"op":"hello",%b"client":"bench-w3"},{"op":"sub","topic":"%b","consumer":"%ba%d",%b"rid":1}]'
            % (hello, topic, tag.encode(), index, echo)
        )
        self._pub = b'{"op":"pub","topic":"%b","rid":%%d,"id":"a%d-%%d","body":[%%d,%d,"%b"]}' % (
            topic,
            index,
            index,
            b"x" * max(0, body_bytes - 32),
        )
        self._ack = b'{"op":"ack","sid":1,"topic":"%b","offset":' % topic

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.send(WSMsgType.TEXT, self.sub_frame)

    def publish(self, published_ns: int) -> None:
        if self.transport is None:
            return
        self.seq += 1
        self.transport.send(WSMsgType.TEXT, self._pub % (self.seq, self.seq, published_ns))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return
        now = time.monotonic_ns()
        decoded = _decode.decode(frame.get_payload_as_memoryview())
        acks = []
        for f in decoded if isinstance(decoded, list) else (decoded,):
            if f.op == "msg" and f.body is not None and f.offset is not None:
                self.tally.received(now, f.body[0], f.body[1] == self.index)
                acks.append(self._ack + b"%d}" % f.offset)
            elif f.op == "puback":
                self.pubacks += 1
            elif f.op == "subbed":
                self.subscribed.set()
            elif f.op == "error":
                self.tally.errors += 1
        if acks:
            transport.send(WSMsgType.TEXT, acks[0] if len(acks) == 1 else b"[" + b",".join(acks) + b"]")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.disconnect()


async def connect_agent(
    url: str,
    index: int,
    conversation: int,
    members: int,
    body_bytes: int,
    tally: Tally,
    secret: bytes | None = None,
) -> Agent:
    """Connect agent ``index`` and open its durable consumer; ``members`` is unused here.

    ``url`` may carry the run's tag after a ``#`` (``ws://...#r1f2e3-``). With the
    server's token ``secret`` the agent gets a token (an identity) of its own.
    """
    url, _, tag = url.partition("#")
    token = None
    if secret is not None:
        token = Authority(secret).mint(f"{tag}w3-{index}", pub=("conv/>",), subs=("conv/>",), ttl=TOKEN_TTL_S)
    _, listener = await ws_connect(lambda: Agent(index, conversation, body_bytes, tally, tag, token), url)
    assert isinstance(listener, Agent)
    await asyncio.wait_for(listener.subscribed.wait(), 30)
    return listener


def _connect_with(secret: bytes | None) -> Connect:
    """``connect_agent`` with tokens signed by ``secret`` (None: anonymous), picklable for the workers."""
    return functools.partial(connect_agent, secret=secret) if secret is not None else connect_agent


def sweep(
    swarm: Swarm,
    rates: list[float],
    duration: float,
    cpu_seconds: Any = None,
    p99_limit_ms: float = P99_LIMIT_MS,
) -> list[dict[str, Any]]:
    """Run ``swarm`` at each rate in turn; stop after the first whose p99 reaches the limit."""
    steps = []
    for rate in rates:
        step = swarm.step(rate, duration=duration, cpu_seconds=cpu_seconds)
        steps.append(step)
        if step["p99_ms"] is None or step["p99_ms"] >= p99_limit_ms:
            break
    return steps


def summary(steps: list[dict[str, Any]], p99_limit_ms: float = P99_LIMIT_MS) -> dict[str, Any]:
    """The top-level figures: the highest load under the p99 limit (or the first step)."""
    ok = [s for s in steps if s["p99_ms"] is not None and s["p99_ms"] < p99_limit_ms]
    best = max(ok, key=lambda s: s["delivered_per_s"]) if ok else steps[0]
    return {
        "delivered_per_s": best["delivered_per_s"],
        "p50_ms": best["p50_ms"],
        "p99_ms": best["p99_ms"],
        "rate_per_agent": best["rate_per_agent"],
        "p99_under_limit": bool(ok),
        "p99_limit_ms": p99_limit_ms,
        "server_cpu_us_per_msg": best["server_cpu_us_per_msg"],
    }


def run(
    agents: int = 1000,
    conversations: int = 100,
    rates: list[float] | None = None,
    duration: float = 5.0,
    body_bytes: int = 200,
    processes: int = 4,
    pin: bool = True,
    urls: list[str] | None = None,
    server_pids: list[int] | None = None,
    p99_limit_ms: float = P99_LIMIT_MS,
    secret_file: Path | None = None,
) -> dict[str, Any]:
    """Run W3 against a fresh ``tidings serve`` and return its figures and every step.

    With ``urls``, against the gateways there; the server CPU is then that of
    ``server_pids`` (not measured without them), and the agents are anonymous
    unless ``secret_file`` (the gateways' token secret) lets them have tokens.
    """
    rates = rates or [2.0]
    if pin:
        pin_to(1)
    if urls:
        tag = f"r{uuid.uuid4().hex[:6]}-"
        cpu = ServerCpu(server_pids) if server_pids else None
        connect = _connect_with(secret_file.read_bytes().strip() if secret_file else None)
        with Swarm(
            connect, [f"{u}#{tag}" for u in urls], agents, conversations, processes, body_bytes, pin
        ) as swarm:
            steps = sweep(swarm, rates, duration, cpu, p99_limit_ms)
            connect_seconds = swarm.connect_seconds
    else:
        with (
            BenchServer() as server,
            Swarm(
                _connect_with(server.secret), server.url, agents, conversations, processes, body_bytes, pin
            ) as swarm,
        ):
            steps = sweep(swarm, rates, duration, server.cpu_seconds, p99_limit_ms)
            connect_seconds = swarm.connect_seconds
    return {
        "workload": "w3",
        "system": "tidings",
        "gateways": len(urls) if urls else 1,
        "agents": agents,
        "conversations": conversations,
        "members": agents // conversations,
        "body_bytes": body_bytes,
        "duration_s": duration,
        "processes": processes,
        "rates_per_agent": rates,
        "connect_seconds": round(connect_seconds, 2),
        **summary(steps, p99_limit_ms),
        "steps": steps,
    }

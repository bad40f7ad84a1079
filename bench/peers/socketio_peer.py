"""W1 and W3 against python-socketio rooms (``socketio_server.py``), with lean raw clients.

The clients speak Engine.IO 4 / Socket.IO 5 directly over picows WebSockets with
pre-encoded packets (``40`` connect, ``42[...]`` events, ``42<id>[...]`` events
with an ack, ``43<id>[...]`` acks, ``2``/``3`` ping/pong), like tidings' own load
generators, so the figure measures the server. The server runs on core 0, the
load on core 1.

- W1: ``saturate`` and ``latency`` have the shape of ``tidings.bench.w1``'s: one
  room, one publisher outside it, N members.
- W3: ``connect_agent`` is a swarm agent (``tidings.bench.swarm``): it joins its
  conversation's room, publishes ``say`` events with an ack (tidings' puback) and
  answers every message with an ``ack`` event (tidings' consumer ack).
  Socket.IO stores nothing: a message is gone if a member is not connected.

    .venv/bin/python bench/peers/socketio_peer.py w1 --subscribers 10 100 --body-bytes 64 1024
    .venv/bin/python bench/peers/socketio_peer.py w3 --agents 1000 --rate 1 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tidings.bench import w3
from tidings.bench.harness import ServerProcess, flood, free_port, latency_figures, pin_to
from tidings.bench.swarm import Swarm, Tally

SERVER = Path(__file__).with_name("socketio_server.py")


class SocketIOServer(ServerProcess):
    def __init__(self) -> None:
        port = free_port()
        super().__init__([sys.executable, str(SERVER), "--port", str(port)], r"listening on")
        self.url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"


class Client(WSListener):
    """A Socket.IO client that joins ``room`` (if given) and hands events to ``on_event``."""

    def __init__(self, room: str | None) -> None:
        self.room = room
        self.transport: WSTransport | None = None
        self.ready = asyncio.Event()
        self.count = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        data = frame.get_payload_as_bytes()
        if data.startswith(b'42["msg"'):
            self.on_event(data)
        elif data.startswith(b"43"):
            self.on_ack(data)
        elif data == b"2":
            transport.send(WSMsgType.TEXT, b"3")
        elif data.startswith(b"0{"):
            self.transport = transport
            transport.send(WSMsgType.TEXT, b"40")
        elif data.startswith(b"40"):
            if self.room is None:
                self.ready.set()
            else:
                transport.send(WSMsgType.TEXT, b'420["join","%b"]' % self.room.encode())

    def on_event(self, data: bytes) -> None:
        self.count += 1

    def on_ack(self, data: bytes) -> None:
        if data.startswith(b"430["):  # the join
            self.ready.set()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.disconnect()


class LatencyClient(Client):
    def __init__(self, room: str, latencies: list[float]) -> None:
        super().__init__(room)
        self.latencies = latencies

    def on_event(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        self.count += 1
        self.latencies.append((now - json.loads(data[2:])[1][1]) / 1e6)


async def _join(url: str, n: int, make: Any) -> list[Client]:
    clients = []
    for _ in range(n):
        _, listener = await ws_connect(make, url)
        assert isinstance(listener, Client)
        clients.append(listener)
    await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in clients)), 60)
    return clients


async def saturate(url: str, subscribers: int, body_bytes: int, duration: float) -> dict[str, Any]:
    subs = await _join(url, subscribers, lambda: Client("bench"))
    (pub,) = await _join(url, 1, lambda: Client(None))
    assert pub.transport is not None
    body = json.dumps("x" * max(0, body_bytes - 2)).encode()
    event = b'42["pub",["bench",%b]]' % body
    transport = pub.transport

    def send_batch() -> None:
        for _ in range(64):
            transport.send(WSMsgType.TEXT, event)

    sent, elapsed = await flood(send_batch, lambda: min(s.count for s in subs), 64, duration)
    delivered = sum(s.count for s in subs)
    for c in [*subs, pub]:
        c.close()
    await asyncio.sleep(0.05)
    return {"published": sent, "deliveries": delivered, "deliveries_per_s": round(delivered / elapsed)}


async def latency(url: str, members: int, rate: float, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    subs = await _join(url, members, lambda: LatencyClient("bench", latencies))
    (pub,) = await _join(url, 1, lambda: Client(None))
    assert pub.transport is not None
    await asyncio.sleep(0.2)
    interval = 1.0 / rate
    started = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) - started < duration:
        due = started + n * interval
        if now < due:
            await asyncio.sleep(due - now)
        pub.transport.send(WSMsgType.TEXT, b'42["pub",["bench",%d]]' % time.perf_counter_ns())
        n += 1
    await asyncio.sleep(0.2)
    for c in [*subs, pub]:
        c.close()
    await asyncio.sleep(0.05)
    return latency_figures(n, latencies)


def run_w1(
    subscribers: int, body_bytes: int, duration: float, rate: float = 2000.0, members: int = 10
) -> dict[str, Any]:
    """W1 (both measurements) against a fresh python-socketio server."""
    with SocketIOServer() as server:
        cpu0 = server.cpu_seconds()
        sat = uvloop.run(saturate(server.url, subscribers, body_bytes, duration))
        cpu = server.cpu_seconds() - cpu0
    with SocketIOServer() as server:
        lat = uvloop.run(latency(server.url, members, rate, duration))
    return {
        "workload": "w1",
        "system": "python-socketio",
        "subscribers": subscribers,
        "body_bytes": body_bytes,
        "duration_s": duration,
        "deliveries_per_s": sat["deliveries_per_s"],
        "latency_rate_per_s": rate,
        "latency_members": members,
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "p999_ms": lat["p999_ms"],
        "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, sat["deliveries"]), 3),
    }


class Agent(Client):
    """A W3 swarm agent on Socket.IO: joins ``c<n>``, says with acks, acks what it hears."""

    def __init__(self, index: int, conversation: int, body_bytes: int, tally: Tally) -> None:
        super().__init__(f"c{conversation}")
        self.index = index
        self.tally = tally
        self.seq = 0
        self._say = b'42%%d["say",["c%d",[%%d,%d,"%b"]]]' % (
            conversation,
            index,
            b"x" * max(0, body_bytes - 32),
        )

    def publish(self, published_ns: int) -> None:
        if self.transport is not None:
            self.seq += 1
            self.transport.send(WSMsgType.TEXT, self._say % (self.seq, published_ns))

    def on_event(self, data: bytes) -> None:
        now = time.monotonic_ns()
        body = json.loads(data[2:])[1][1]
        self.tally.received(now, body[0], body[1] == self.index)
        if self.transport is not None:
            self.transport.send(WSMsgType.TEXT, b'42["ack",%d]' % body[0])


async def connect_agent(
    url: str, index: int, conversation: int, members: int, body_bytes: int, tally: Tally
) -> Agent:
    _, listener = await ws_connect(lambda: Agent(index, conversation, body_bytes, tally), url)
    assert isinstance(listener, Agent)
    await asyncio.wait_for(listener.ready.wait(), 60)
    return listener


def run_w3(
    agents: int,
    conversations: int,
    rates: list[float],
    duration: float,
    processes: int = 4,
    body_bytes: int = 200,
) -> dict[str, Any]:
    """W3 at rising loads against a fresh python-socketio server; the shape of ``w3.run``'s result."""
    with (
        SocketIOServer() as server,
        Swarm(connect_agent, server.url, agents, conversations, processes, body_bytes) as swarm,
    ):
        steps = w3.sweep(swarm, rates, duration, server.cpu_seconds)
        connect_seconds = swarm.connect_seconds
    return {
        "workload": "w3",
        "system": "python-socketio",
        "agents": agents,
        "conversations": conversations,
        "members": agents // conversations,
        "body_bytes": body_bytes,
        "duration_s": duration,
        "processes": processes,
        "rates_per_agent": rates,
        "connect_seconds": round(connect_seconds, 2),
        **w3.summary(steps),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workload", choices=["w1", "w3"])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--body-bytes", type=int, nargs="+", default=[64])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--rate", type=float, nargs="+", default=[1.0])
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    pin_to(1)
    if args.workload == "w1":
        for n in args.subscribers:
            for size in args.body_bytes:
                print(json.dumps(run_w1(n, size, args.duration)), flush=True)
    else:
        print(json.dumps(run_w3(args.agents, args.conversations, args.rate, args.duration)), flush=True)


if __name__ == "__main__":
    main()

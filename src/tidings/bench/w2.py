"""W2, durable publish: N concurrent publishers, fsync before every ack.

Each publisher is one connection with one publish in flight: it sends a
``pub`` with a ``rid``, waits for the ``puback`` (sent only after the group
commit's fdatasync), and publishes again. Topics spread over every shard.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tidings.bench.harness import BenchServer, percentile, pin_to

HELLO = b'{"op":"hello","client":"bench-w2"}'


class Publisher(WSListener):
    def __init__(self, index: int, body_bytes: int, latencies: list[float]) -> None:
        self.index = index
        self.seq = 0
        self.acked = 0
        self.latencies = latencies
        self.transport: WSTransport | None = None
        self.running = False
        self.sent_at = 0.0
        body = json.dumps("x" * max(0, body_bytes - 2)).encode()
        topic = f"conv/g{index % 64}/chat-{index}".encode()
        self._head = b'{"op":"pub","topic":"%b","body":%b,"rid":1,"id":"' % (topic, body)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.send(WSMsgType.TEXT, HELLO)

    def publish(self) -> None:
        assert self.transport is not None
        self.seq += 1
        self.sent_at = time.perf_counter()
        self.transport.send(WSMsgType.TEXT, self._head + b'p%d-%d"}' % (self.index, self.seq))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        data = frame.get_payload_as_bytes()
        if b'"op":"puback"' in data:
            if self.running:
                self.latencies.append(time.perf_counter() - self.sent_at)
                self.acked += 1
                self.publish()
        elif b'"op":"error"' in data:
            raise RuntimeError(data.decode())


async def _load(url: str, publishers: int, duration: float, body_bytes: int) -> dict[str, Any]:
    latencies: list[float] = []
    pubs: list[Publisher] = []
    for i in range(publishers):
        _, listener = await ws_connect(lambda i=i: Publisher(i, body_bytes, latencies), url)
        assert isinstance(listener, Publisher)
        pubs.append(listener)
    await asyncio.sleep(0.2)
    for p in pubs:  # warm-up: one round trip each
        p.running = True
        p.publish()
    await asyncio.sleep(0.5)
    latencies.clear()
    base = sum(p.acked for p in pubs)
    started = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - cpu0
    acked = sum(p.acked for p in pubs) - base
    for p in pubs:
        p.running = False
    lat = sorted(latencies)
    return {
        "acked": acked,
        "acked_per_s": round(acked / elapsed),
        "ack_p50_ms": round(percentile(lat, 0.50) * 1000, 3),
        "ack_p99_ms": round(percentile(lat, 0.99) * 1000, 3),
        "client_cpu_us_per_msg": round(client_cpu * 1e6 / max(1, acked), 2),
    }


def run(publishers: int = 32, duration: float = 5.0, body_bytes: int = 200) -> dict[str, Any]:
    """Run W2 once against a fresh ``tidings serve`` and return its figures."""
    pin_to(1)
    with BenchServer() as server:
        cpu0 = server.cpu_seconds()
        figures = uvloop.run(_load(server.url, publishers, duration, body_bytes))
        cpu = server.cpu_seconds() - cpu0
    return {
        "workload": "w2",
        "publishers": publishers,
        "duration_s": duration,
        "body_bytes": body_bytes,
        "fsync": True,
        **figures,
        "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, figures["acked"]), 2),
    }

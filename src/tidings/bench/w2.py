"""W2, durable publish: N concurrent publishers, fsync before every ack.

Each publisher has one publish in flight: it sends a ``pub`` with a ``rid``,
waits for the ``puback`` (sent only after the group commit's fdatasync), and
publishes again. By default every publisher has its own connection; with
``connections`` they share that many. Topics spread over every shard.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tidings.bench.harness import BenchServer, percentile, pin_to

HELLO = b'{"op":"hello","client":"bench-w2"}'
_decode = msgspec.json.Decoder()


class Publishers(WSListener):
    """One connection carrying ``count`` publishers, each with one publish in flight.

    Publisher ``i`` of the connection uses ``rid = i``. The pubacks that arrive in
    one WebSocket message are answered with one WebSocket message holding the next
    publish of each of those publishers (what the SDK does within a loop turn).
    """

    def __init__(self, first: int, count: int, body_bytes: int, latencies: list[float]) -> None:
        self.first = first
        self.count = count
        self.seq = 0
        self.acked = 0
        self.latencies = latencies
        self.transport: WSTransport | None = None
        self.running = False
        self.sent_at = [0.0] * count
        body = json.dumps("x" * max(0, body_bytes - 2)).encode()
        self._heads = [
            b'{"op":"pub","topic":"conv/g%d/chat-%d","body":%b,"rid":%d,"id":"'
            % ((first + i) % 64, first + i, body, i)
            for i in range(count)
        ]

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.send(WSMsgType.TEXT, HELLO)

    def _frame(self, i: int, now: float) -> bytes:
        self.seq += 1
        self.sent_at[i] = now
        return self._heads[i] + b'p%d-%d"}' % (self.first, self.seq)

    def publish_all(self) -> None:
        assert self.transport is not None
        now = time.perf_counter()
        frames = [self._frame(i, now) for i in range(self.count)]
        self.transport.send(WSMsgType.TEXT, b"[" + b",".join(frames) + b"]")

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        decoded = _decode.decode(frame.get_payload_as_memoryview())
        frames = decoded if isinstance(decoded, list) else [decoded]
        now = time.perf_counter()
        out = []
        for f in frames:
            op = f.get("op")
            if op == "puback" and self.running:
                i = f["rid"]
                self.latencies.append(now - self.sent_at[i])
                self.acked += 1
                out.append(self._frame(i, now))
            elif op == "error":
                raise RuntimeError(str(f))
        if out:
            transport.send(WSMsgType.TEXT, out[0] if len(out) == 1 else b"[" + b",".join(out) + b"]")


async def _load(
    url: str, publishers: int, duration: float, body_bytes: int, connections: int | None = None
) -> dict[str, Any]:
    latencies: list[float] = []
    conns: list[Publishers] = []
    n_conn = max(1, min(connections or publishers, publishers))
    for c in range(n_conn):
        first = c * publishers // n_conn
        count = (c + 1) * publishers // n_conn - first
        _, listener = await ws_connect(
            lambda first=first, count=count: Publishers(first, count, body_bytes, latencies), url
        )
        assert isinstance(listener, Publishers)
        conns.append(listener)
    await asyncio.sleep(0.2)
    for p in conns:  # warm-up
        p.running = True
        p.publish_all()
    await asyncio.sleep(0.5)
    latencies.clear()
    base = sum(p.acked for p in conns)
    started = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - cpu0
    acked = sum(p.acked for p in conns) - base
    for p in conns:
        p.running = False
        if p.transport is not None:
            p.transport.disconnect()
    await asyncio.sleep(0.05)
    lat = sorted(latencies)
    return {
        "connections": n_conn,
        "acked": acked,
        "acked_per_s": round(acked / elapsed),
        "ack_p50_ms": round(percentile(lat, 0.50) * 1000, 3),
        "ack_p99_ms": round(percentile(lat, 0.99) * 1000, 3),
        "client_cpu_us_per_msg": round(client_cpu * 1e6 / max(1, acked), 2),
    }


def run(
    publishers: int = 32,
    duration: float = 5.0,
    body_bytes: int = 200,
    connections: int | None = None,
    pin: bool = True,
) -> dict[str, Any]:
    """Run W2 once against a fresh ``tidings serve`` and return its figures.

    ``connections`` (default: one per publisher) spreads the publishers over
    that many WebSocket connections. ``pin`` moves this process to core 1.
    """
    if pin:
        pin_to(1)
    with BenchServer() as server:
        cpu0 = server.cpu_seconds()
        figures = uvloop.run(_load(server.url, publishers, duration, body_bytes, connections))
        cpu = server.cpu_seconds() - cpu0
    return {
        "workload": "w2",
        "system": "tidings",
        "publishers": publishers,
        "duration_s": duration,
        "body_bytes": body_bytes,
        "fsync": True,
        **figures,
        "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, figures["acked"]), 2),
    }

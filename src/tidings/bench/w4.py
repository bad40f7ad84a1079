"""W4, capacity: server memory per idle subscribed connection, and time to connect them.

Opens ``connections`` WebSocket connections (each says ``hello`` and subscribes
to its own live topic), then reads the server's resident memory. The figure is
(RSS after - RSS before) / connections.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tidings.bench.harness import BenchServer, pin_to, raise_fd_limit


class Idle(WSListener):
    def __init__(self, ready: asyncio.Event | None = None) -> None:
        self.ready = ready

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.ready is not None and b'"op":"subbed"' in frame.get_payload_as_bytes():
            self.ready.set()
            self.ready = None


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def _connect_all(url: str, n: int, parallel: int = 200) -> tuple[list[WSTransport], float]:
    transports: list[WSTransport] = []
    gate = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with gate:
            ready = asyncio.Event()
            transport, _ = await ws_connect(lambda: Idle(ready), url, read_buffer_init_size=1024)
            transport.send(
                WSMsgType.TEXT,
                b'[{"op":"hello","client":"w4"},{"op":"sub","topic":"sig/idle/c%d","rid":1}]' % i,
            )
            await ready.wait()
            transports.append(transport)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return transports, time.perf_counter() - started


def run(connections: int = 10_000, pin: bool = True) -> dict[str, Any]:
    """Measure idle memory per connection; ``pin`` moves this process to core 1."""
    if pin:
        pin_to(1)
    raise_fd_limit(connections + 1024)
    with BenchServer(env={"TIDINGS_MAX_SUBSCRIPTIONS": "10"}) as server:
        time.sleep(0.5)
        before = rss_bytes(server.proc.pid)
        cpu0 = server.cpu_seconds()

        async def go() -> dict[str, Any]:
            transports, seconds = await _connect_all(server.url, connections)
            cpu = server.cpu_seconds() - cpu0
            await asyncio.sleep(1.0)
            after = rss_bytes(server.proc.pid)
            for t in transports:
                t.disconnect()
            await asyncio.sleep(0.2)
            return {"seconds": seconds, "after": after, "cpu": cpu}

        result = uvloop.run(go())
    return {
        "workload": "w4",
        "system": "tidings",
        "connections": connections,
        "bytes_per_connection": round((result["after"] - before) / connections),
        "connect_seconds": round(result["seconds"], 2),
        "server_rss_before_mb": round(before / 2**20, 1),
        "server_rss_after_mb": round(result["after"] / 2**20, 1),
        # a "message" here is one connection's set-up: upgrade, hello, sub
        "server_cpu_us_per_msg": round(result["cpu"] * 1e6 / connections, 1),
    }

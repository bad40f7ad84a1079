"""What `sync_interval: always` costs: durable publishes through the NATS engine to an R3
stream on a 3-node loopback cluster, fsync on every write vs JetStream's default.

    .venv/bin/python bench/nats_sync.py --publishers 1 64 --duration 5

Prints one JSON line per (sync, publishers): acks/s and ack latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from tidings.cluster import NatsCluster
from tidings.engine.nats import NatsEngine
from tidings.metrics import percentile
from tidings.protocol.frames import Msg


async def run(urls: list[str], publishers: int, duration: float, body_bytes: int) -> dict[str, float]:
    engine = NatsEngine(urls, shards=1)
    await engine.start()
    latencies: list[float] = []
    stop = time.monotonic() + duration
    body = "x" * body_bytes

    async def publisher(p: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            msg = Msg(topic=f"conv/bench/p{p}", id=f"{p}-{n}-{time.time_ns()}", sender="b", ts=0, body=body)
            t0 = time.perf_counter()
            await engine.publish(msg)
            latencies.append(time.perf_counter() - t0)

    t0 = time.monotonic()
    await asyncio.gather(*(publisher(p) for p in range(publishers)))
    elapsed = time.monotonic() - t0
    await engine.stop()
    latencies.sort()
    return {
        "acks_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishers", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--body-bytes", type=int, default=200)
    args = parser.parse_args()
    for sync_always in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            cluster = NatsCluster(Path(tmp), size=3, sync_always=sync_always)
            cluster.start()
            try:
                for n in args.publishers:
                    figures = asyncio.run(run(cluster.urls, n, args.duration, args.body_bytes))
                    sync = "always" if sync_always else "default (2 min)"
                    print(json.dumps({"sync_interval": sync, "publishers": n, **figures}), flush=True)
            finally:
                cluster.stop()


if __name__ == "__main__":
    main()

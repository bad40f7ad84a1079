"""Storage benchmark: durable appends per second and ack latency of tidings.log.

    .venv/bin/python bench/storage_bench.py --publishers 1 32 256 --duration 5

For each publisher count N, N asyncio tasks each append a 200-byte record, wait for
its durable ack, and append again, into durable topics spread over the 8 shards.
Prints one JSON line per measurement:

* ``raw-fdatasync``: a loop of 4 KiB write + fdatasync on the same disk, the floor
  for ack latency;
* ``segments``: tidings.log.Store (own segment files, group commit);
* ``sqlite-wal-full``: the same group-commit design over stdlib sqlite3 in WAL mode
  with synchronous=FULL (one database per shard, one transaction per batch), as the
  alternative DESIGN.md names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tidings.log import Store
from tidings.metrics import percentile

PAYLOAD = os.urandom(200)
SHARDS = 8

Append = Callable[[str, str, int, bytes], Awaitable[object]]


def raw_fdatasync(directory: Path, seconds: float) -> dict[str, object]:
    path = directory / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    block = os.urandom(4096)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return {
        "engine": "raw-fdatasync",
        "syncs_per_s": round(len(times) / seconds),
        "p50_ms": round(percentile(times, 0.50) * 1000, 3),
        "p99_ms": round(percentile(times, 0.99) * 1000, 3),
    }


async def drive(append: Append, publishers: int, duration: float, warmup: float) -> tuple[int, list[float]]:
    """Run ``publishers`` closed-loop publishers; return acks and latencies after the warm-up."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup
    stop = measure_from + duration
    latencies: list[float] = []
    counts = [0]

    async def publisher(n: int) -> None:
        topic = f"conv/g{n}/bench-{n}"
        i = 0
        clock = time.perf_counter
        while True:
            now = loop.time()
            if now >= stop:
                return
            t0 = clock()
            await append(topic, f"{n}-{i}", int(time.time() * 1000), PAYLOAD)
            if now >= measure_from:
                latencies.append(clock() - t0)
                counts[0] += 1
            i += 1

    await asyncio.gather(*(publisher(n) for n in range(publishers)))
    return counts[0], latencies


def summary(
    engine: str, publishers: int, duration: float, acks: int, latencies: list[float]
) -> dict[str, object]:
    latencies.sort()
    return {
        "engine": engine,
        "publishers": publishers,
        "acked_per_s": round(acks / duration),
        "ack_p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "ack_p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
    }


async def bench_segments(
    directory: Path, publishers: int, duration: float, warmup: float, shards: int
) -> dict[str, object]:
    path = directory / f"segments-{publishers}-{shards}"
    store = await Store.open(path, shards, trim_interval=None)
    try:
        acks, latencies = await drive(store.append, publishers, duration, warmup)
    finally:
        await store.close()
    result = summary("segments", publishers, duration, acks, latencies)
    syncs = sum(s.stats.syncs for s in store.shards)
    records = sum(s.stats.records for s in store.shards)
    result["shards"] = shards
    result["syncs"] = syncs
    result["mean_batch"] = round(records / syncs, 2) if syncs else 0
    # Recovery: reopen what was written (scan, validate and index every record).
    t0 = time.perf_counter()
    store = await Store.open(path, shards, trim_interval=None)
    result["reopen_s"] = round(time.perf_counter() - t0, 3)
    result["reopen_records"] = records
    await store.close()
    return result


class SqliteShard:
    """A quick prototype: group commit over sqlite3 WAL synchronous=FULL, one writer thread."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS records (topic TEXT NOT NULL, offset INTEGER NOT NULL, "
            "id TEXT NOT NULL, ts INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (topic, offset), "
            "UNIQUE (topic, id))"
        )
        self.next = 1
        self.pending: list[tuple[tuple[str, int, str, int, bytes], asyncio.Future[None]]] = []
        self.wake = asyncio.Event()
        self.executor = ThreadPoolExecutor(1)
        self.syncs = 0
        self.records = 0
        self.closing = False
        self.writer = asyncio.get_running_loop().create_task(self.write_loop())

    async def append(self, topic: str, msg_id: str, ts: int, payload: bytes) -> int:
        offset = self.next
        self.next += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(((topic, offset, msg_id, ts, payload), future))
        self.wake.set()
        await future
        return offset

    def commit(self, rows: list[tuple[str, int, str, int, bytes]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?)", rows)
        self.db.execute("COMMIT")

    async def write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                if self.closing:
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            batch, self.pending = self.pending, []
            await loop.run_in_executor(self.executor, self.commit, [row for row, _ in batch])
            self.syncs += 1
            self.records += len(batch)
            for _, future in batch:
                future.set_result(None)

    async def close(self) -> None:
        self.closing = True
        self.wake.set()
        await self.writer
        self.executor.shutdown()
        self.db.close()


async def bench_sqlite(
    directory: Path, publishers: int, duration: float, warmup: float, count: int
) -> dict[str, object]:
    root = directory / f"sqlite-{publishers}-{count}"
    root.mkdir()
    shards = [SqliteShard(root / f"shard-{n}.db") for n in range(count)]

    async def append(topic: str, msg_id: str, ts: int, payload: bytes) -> int:
        group = topic.split("/", 2)[1]
        return await shards[zlib.crc32(group.encode()) % count].append(topic, msg_id, ts, payload)

    try:
        acks, latencies = await drive(append, publishers, duration, warmup)
    finally:
        for shard in shards:
            await shard.close()
    result = summary("sqlite-wal-full", publishers, duration, acks, latencies)
    result["shards"] = count
    syncs = sum(s.syncs for s in shards)
    result["syncs"] = syncs
    result["mean_batch"] = round(sum(s.records for s in shards) / syncs, 2) if syncs else 0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--publishers", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--shards", type=int, nargs="+", default=[SHARDS], help="shard counts to try")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the sqlite3 comparison")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args()

    run: Callable[[Awaitable[dict[str, object]]], dict[str, object]] = asyncio.run  # type: ignore[assignment]
    loop_name = "asyncio"
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            run = uvloop.run  # type: ignore[assignment]
            loop_name = "uvloop"

    directory = Path(tempfile.mkdtemp(prefix="tidings-bench-", dir=args.dir))
    try:
        raw = raw_fdatasync(directory, min(args.duration, 3.0))
        print(json.dumps(raw), flush=True)
        for n in args.publishers:
            for shards in args.shards:
                result = run(bench_segments(directory, n, args.duration, args.warmup, shards))
                result["loop"] = loop_name
                ack_p99, raw_p99 = result["ack_p99_ms"], raw["p99_ms"]
                assert isinstance(ack_p99, float)
                assert isinstance(raw_p99, float)
                result["ack_p99_vs_raw_p99"] = round(ack_p99 / raw_p99, 2)
                print(json.dumps(result), flush=True)
                if not args.no_sqlite:
                    result = run(bench_sqlite(directory, n, args.duration, args.warmup, shards))
                    result["loop"] = loop_name
                    print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

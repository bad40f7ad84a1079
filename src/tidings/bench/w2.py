"""W2, durable publish: N concurrent publishers, fsync before every ack.

Each publisher has one publish in flight: it sends a ``pub`` with a ``rid``,
waits for the ``puback`` (sent only after the group commit's fdatasync), and
publishes again. By default every publisher has its own connection; with
``connections`` they share that many. Topics spread over every shard.

The load generator must cost less than the server it measures: frames are
pre-encoded (a prefix per publisher, only the id appended), pubacks are answered
in one WebSocket message per arrival, and the connections are spread over several
processes (``processes``, default 4) pinned to core 1 while the server runs on
core 0. The workers start their measured window at one shared instant, and the
server's CPU time is sampled at that window's ends.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tidings.bench.harness import BenchServer, percentile, pin_to

HELLO = b'{"op":"hello","client":"bench-w2"}'
#: Seconds of publishing before the measured window.
WARMUP = 0.5
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
    url: str,
    publishers: int,
    duration: float,
    body_bytes: int,
    connections: int | None = None,
    first_conn: int = 0,
    conn_count: int | None = None,
    start_at: Callable[[], Awaitable[int]] | None = None,
    warmup: float = WARMUP,
) -> dict[str, Any]:
    """Drive connections ``first_conn ..`` (``conn_count`` of them, default all) of W2.

    Once they are up, ``start_at()`` gives the instant (``time.monotonic_ns``, shared
    by the worker processes) to start publishing; the measured window begins
    ``warmup`` seconds later. Returns the window's figures with the raw ``latencies``.
    """
    latencies: list[float] = []
    conns: list[Publishers] = []
    n_conn = max(1, min(connections or publishers, publishers))
    last = n_conn if conn_count is None else min(n_conn, first_conn + conn_count)
    for c in range(first_conn, last):
        first = c * publishers // n_conn
        count = (c + 1) * publishers // n_conn - first
        _, listener = await ws_connect(
            lambda first=first, count=count: Publishers(first, count, body_bytes, latencies), url
        )
        assert isinstance(listener, Publishers)
        conns.append(listener)
    start = await start_at() if start_at is not None else time.monotonic_ns() + 200_000_000
    await asyncio.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))
    for p in conns:  # warm-up
        p.running = True
        p.publish_all()
    await asyncio.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9 + warmup))
    latencies.clear()
    base = sum(p.acked for p in conns)
    started = time.perf_counter()
    cpu0 = time.process_time()
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - cpu0
    acked = sum(p.acked for p in conns) - base
    window = list(latencies)
    for p in conns:
        p.running = False
        if p.transport is not None:
            p.transport.disconnect()
    await asyncio.sleep(0.05)
    return {"acked": acked, "elapsed": elapsed, "client_cpu": client_cpu, "latencies": window}


def _worker(
    url: str,
    publishers: int,
    duration: float,
    body_bytes: int,
    connections: int,
    first_conn: int,
    conn_count: int,
    start: Any,
    go: Any,
    pin: bool,
    out: Any,
) -> None:
    """One load-generator process (spawned): its share of the connections, on core 1.

    Puts ``None`` on ``out`` once connected, waits for the parent to set ``start``
    and ``go``, then puts its figures.
    """
    if pin:
        pin_to(1)

    async def start_at() -> int:
        out.put(None)
        await asyncio.to_thread(go.wait)
        return int(start.value)

    result = uvloop.run(
        _load(url, publishers, duration, body_bytes, connections, first_conn, conn_count, start_at)
    )
    result["latencies"] = array("d", result["latencies"]).tobytes()
    out.put(result)


def _drive(
    url: str,
    publishers: int,
    duration: float,
    body_bytes: int,
    connections: int | None,
    processes: int,
    pin: bool,
    cpu_seconds: Callable[[], float],
) -> dict[str, Any]:
    """Run the load in ``processes`` spawned workers; sample the server's CPU over the window."""
    n_conn = max(1, min(connections or publishers, publishers))
    processes = max(1, min(processes, n_conn))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start, go = ctx.Value("q", 0), ctx.Event()  # set once every worker is connected
    procs = []
    for w in range(processes):
        first = w * n_conn // processes
        count = (w + 1) * n_conn // processes - first
        args = (url, publishers, duration, body_bytes, n_conn, first, count, start, go, pin, out)
        proc = ctx.Process(target=_worker, args=args, daemon=True)
        proc.start()
        procs.append(proc)
    for _ in procs:
        if out.get(timeout=120) is not None:
            raise RuntimeError("a W2 worker answered before it was connected")
    start.value = begin = time.monotonic_ns() + 100_000_000
    go.set()
    time.sleep(max(0.0, (begin - time.monotonic_ns()) / 1e9 + WARMUP))
    cpu = -cpu_seconds()
    time.sleep(duration)
    cpu += cpu_seconds()
    results = [out.get(timeout=60 + duration) for _ in procs]
    for proc in procs:
        proc.join(10)
    latencies: list[float] = []
    for r in results:
        latencies.extend(array("d", r["latencies"]))
    latencies.sort()
    acked = sum(r["acked"] for r in results)
    return {
        "connections": n_conn,
        "processes": processes,
        "acked": acked,
        "acked_per_s": round(sum(r["acked"] / r["elapsed"] for r in results)),
        "ack_p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "ack_p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "client_cpu_us_per_msg": round(sum(r["client_cpu"] for r in results) * 1e6 / max(1, acked), 2),
        "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, acked), 2),
    }


def raw_fdatasync(directory: Path, syncs: int = 1000) -> list[float]:
    """Seconds of each of ``syncs`` 256-byte overwrites + fdatasync in ``directory``: the disk's floor.

    Overwrites inside a preallocated file, as the log writes its batches.
    """
    path = directory / "raw-fdatasync.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, bytes(1 << 20), 0)
        os.fsync(fd)
        block = os.urandom(256)
        times = []
        for i in range(syncs):
            t0 = time.perf_counter()
            os.pwrite(fd, block, (i * 256) % (1 << 20))
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return times


def run(
    publishers: int = 32,
    duration: float = 5.0,
    body_bytes: int = 200,
    connections: int | None = None,
    pin: bool = True,
    processes: int = 4,
) -> dict[str, Any]:
    """Run W2 once against a fresh ``tidings serve`` and return its figures.

    ``connections`` (default: one per publisher) spreads the publishers over
    that many WebSocket connections, and those over ``processes`` load-generator
    processes (at most one per connection), each pinned to core 1 when ``pin``.
    Just before the load and just after it, the raw fdatasync latency of the
    server's disk is measured in its data directory (1,000 syncs each), for the
    ack p99 to be compared with: this disk's tail moves from minute to minute, and
    one sample of 1,000 syncs alone put its p99 anywhere from 0.2 to 1 ms.
    """
    with BenchServer() as server:
        raw = raw_fdatasync(server.data_dir)
        figures = _drive(
            server.url, publishers, duration, body_bytes, connections, processes, pin, server.cpu_seconds
        )
        raw += raw_fdatasync(server.data_dir)
    return {
        "workload": "w2",
        "system": "tidings",
        "publishers": publishers,
        "duration_s": duration,
        "body_bytes": body_bytes,
        "fsync": True,
        **figures,
        **against_raw(figures["ack_p99_ms"], raw),
    }


def against_raw(ack_p99_ms: float, raw: list[float]) -> dict[str, float]:
    """The raw fdatasync p50/p99 of ``raw`` (seconds, any order) and the ack p99 against that p99."""
    raw = sorted(raw)
    raw_p99_ms = percentile(raw, 0.99) * 1000
    return {
        "raw_fdatasync_p50_ms": round(percentile(raw, 0.50) * 1000, 3),
        "raw_fdatasync_p99_ms": round(raw_p99_ms, 3),
        "ack_p99_vs_raw_p99": round(ack_p99_ms / max(raw_p99_ms, 1e-6), 2),
    }

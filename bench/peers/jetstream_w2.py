"""W2 durable publish against NATS JetStream, with its default lazy fsync and with ``sync_interval: always``.

Same shape as ``tidings bench w2``: N publishers, each on its own connection with
one publish in flight; a 200-byte message to a file-backed stream with a
``Nats-Msg-Id`` (JetStream's dedup, as tidings dedups on ``id``), the publish's
ack from the stream, the next publish. The stream is created with nats-py; the
publishers are lean asyncio protocols speaking the NATS text protocol (``HPUB``
with a reply subject, the ack arrives as ``MSG``), so the figure measures the
server. nats-server (one node, GOMAXPROCS=1) on core 0, the load on core 1.

- ``lazy`` (JetStream's default): the stream acks once the write is in the
  page cache and fsyncs every 2 minutes; acknowledged messages can be lost on
  power failure.
- ``always`` (``jetstream { sync_interval: always }``): fsync before every ack,
  the guarantee tidings gives.

    .venv/bin/python bench/peers/jetstream_w2.py --publishers 1 32 256 --sync lazy always
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import nats
import uvloop
from nats.js.api import StorageType, StreamConfig
from nats_w1 import start_server

from tidings.bench.harness import free_port, percentile, pin_to, process_cpu_seconds


class Publisher(asyncio.Protocol):
    """One publisher with one publish in flight; the stream's ack triggers the next."""

    def __init__(self, index: int, body_bytes: int, latencies: list[float]) -> None:
        self.index = index
        self.latencies = latencies
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.seq = 0
        self.acked = 0
        self.errors = 0
        self.running = False
        self.sent_at = 0.0
        self.subject = b"conv.g%d.chat-%d" % (index % 64, index)
        self.payload = b"x" * body_bytes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n'
            b"SUB _INBOX.p%d.* 1\r\n" % self.index
        )

    def publish(self) -> None:
        assert self.transport is not None
        self.seq += 1
        headers = b"NATS/1.0\r\nNats-Msg-Id: p%d-%d\r\n\r\n" % (self.index, self.seq)
        self.sent_at = time.perf_counter()
        self.transport.write(
            b"HPUB %b _INBOX.p%d.%d %d %d\r\n%b%b\r\n"
            % (
                self.subject,
                self.index,
                self.seq,
                len(headers),
                len(headers) + len(self.payload),
                headers,
                self.payload,
            )
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line = self.buffer[:end]
            if line.startswith(b"MSG "):
                size = int(line.rsplit(b" ", 1)[1])
                if len(self.buffer) < end + 2 + size + 2:
                    return
                payload = self.buffer[end + 2 : end + 2 + size]
                self.buffer = self.buffer[end + 2 + size + 2 :]
                self._acked(payload)
                continue
            self.buffer = self.buffer[end + 2 :]
            if line == b"PING" and self.transport is not None:
                self.transport.write(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise RuntimeError(line.decode())

    def _acked(self, payload: bytes) -> None:
        if b'"error"' in payload:
            self.errors += 1
        if not self.running:
            return
        self.latencies.append(time.perf_counter() - self.sent_at)
        self.acked += 1
        self.publish()


async def _create_stream(port: int) -> None:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", error_cb=_ignore)
    try:
        await nc.jetstream().add_stream(
            StreamConfig(name="bench", subjects=["conv.>"], storage=StorageType.FILE, num_replicas=1)
        )
    finally:
        await nc.close()


async def _ignore(exc: Exception) -> None:
    pass


async def _load(port: int, publishers: int, duration: float, body_bytes: int) -> dict[str, Any]:
    await _create_stream(port)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    pubs: list[Publisher] = []
    for i in range(publishers):
        _, proto = await loop.create_connection(
            lambda i=i: Publisher(i, body_bytes, latencies), "127.0.0.1", port
        )
        pubs.append(proto)
    await asyncio.sleep(0.2)
    for p in pubs:  # warm-up
        p.running = True
        p.publish()
    await asyncio.sleep(0.5)
    latencies.clear()
    base = sum(p.acked for p in pubs)
    started = time.perf_counter()
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - started
    acked = sum(p.acked for p in pubs) - base
    for p in pubs:
        p.running = False
        if p.transport is not None:
            p.transport.close()
    lat = sorted(latencies)
    return {
        "acked": acked,
        "acked_per_s": round(acked / elapsed),
        "ack_p50_ms": round(percentile(lat, 0.50) * 1000, 3),
        "ack_p99_ms": round(percentile(lat, 0.99) * 1000, 3),
        "errors": sum(p.errors for p in pubs),
    }


def measure(publishers: int, sync: str, duration: float, body_bytes: int = 200) -> dict[str, Any]:
    """One W2 run against a fresh single-node JetStream; ``sync`` is ``lazy`` or ``always``."""
    store = Path(tempfile.mkdtemp(prefix="tidings-bench-js-"))
    conf = store / "js.conf"
    sync_line = "sync_interval: always" if sync == "always" else ""
    conf.write_text(f"jetstream {{\n  store_dir: {json.dumps(str(store / 'data'))}\n  {sync_line}\n}}\n")
    port = free_port()
    proc = start_server(port, ["-c", str(conf)])
    try:
        cpu0 = process_cpu_seconds(proc.pid)
        figures = uvloop.run(_load(port, publishers, duration, body_bytes))
        cpu = process_cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(store, ignore_errors=True)
    return {
        "workload": "w2",
        "system": f"jetstream-{sync}",
        "publishers": publishers,
        "connections": publishers,
        "duration_s": duration,
        "body_bytes": body_bytes,
        "fsync": sync == "always",
        **figures,
        "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, figures["acked"]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--publishers", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--sync", nargs="+", choices=["lazy", "always"], default=["lazy", "always"])
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    pin_to(1)
    for n in args.publishers:
        for sync in args.sync:
            print(json.dumps(measure(n, sync, args.duration)), flush=True)


if __name__ == "__main__":
    main()

"""W2 durable publish against NATS JetStream, with its default lazy fsync and with ``sync_interval: always``.

Same shape as ``tidings bench w2``: N publishers, each on its own connection (or
spread over ``--connections``, what a publisher sends in answer to one arrival going
out as one write) with one publish in flight; a 200-byte message to a file-backed stream with a
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
    .venv/bin/python bench/peers/jetstream_w2.py --publishers 256 --connections 8 --sync always
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import nats
import uvloop
from nats.js.api import StorageType, StreamConfig
from nats_w1 import start_server

from tidings.bench.harness import free_port, percentile, pin_to, process_cpu_seconds


class Publisher:
    """One publisher with one publish in flight; the stream's ack triggers the next."""

    def __init__(self, index: int, body_bytes: int, latencies: list[float], link: Link) -> None:
        self.index = index
        self.latencies = latencies
        self.link = link
        self.seq = 0
        self.acked = 0
        self.errors = 0
        self.running = False
        self.sent_at = 0.0
        self.subject = b"conv.g%d.chat-%d" % (index % 64, index)
        self.payload = b"x" * body_bytes

    def publish(self) -> None:
        self.seq += 1
        headers = b"NATS/1.0\r\nNats-Msg-Id: p%d-%d\r\n\r\n" % (self.index, self.seq)
        self.sent_at = time.perf_counter()
        self.link.out.append(
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

    def acked_with(self, payload: bytes) -> None:
        """The stream answered; an error answer is counted, not acked, and ends this publisher."""
        if b'"error"' in payload:
            self.errors += 1
            return
        if not self.running:
            return
        self.latencies.append(time.perf_counter() - self.sent_at)
        self.acked += 1
        self.publish()


class Link(asyncio.Protocol):
    """One connection carrying some publishers, each with its own inbox (its index is the sid).

    What the publishers send while one arrival is handled goes out as one write, as
    ``tidings bench w2`` answers the pubacks of one arrival with one message.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.publishers: dict[int, Publisher] = {}
        self.buffer = b""
        self.out: list[bytes] = []
        #: the server's ``-ERR`` line, if it sent one (the run then fails)
        self.failed: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.out.append(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n')
        self.out += [b"SUB _INBOX.p%d.* %d\r\n" % (i, i) for i in self.publishers]
        self.flush()

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self._take()
        finally:
            self.flush()

    def _take(self) -> None:
        while True:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line = self.buffer[:end]
            # MSG <subject> <sid> [reply-to] <size>; HMSG (a status such as 503 no
            # responders) ... <header size> <total size>: either way the size is last
            if line.startswith((b"MSG ", b"HMSG ")):
                parts = line.split(b" ")
                size = int(parts[-1])
                if len(self.buffer) < end + 2 + size + 2:
                    return
                payload = self.buffer[end + 2 : end + 2 + size]
                self.buffer = self.buffer[end + 2 + size + 2 :]
                publisher = self.publishers[int(parts[2])]
                if line.startswith(b"HMSG "):
                    publisher.errors += 1  # a status, not the stream's ack
                else:
                    publisher.acked_with(payload)
                continue
            self.buffer = self.buffer[end + 2 :]
            if line == b"PING":
                self.out.append(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                self.failed = line.decode()


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


async def _load(
    port: int,
    publishers: int,
    duration: float,
    body_bytes: int,
    connections: int,
    cpu_seconds: Callable[[], float],
) -> dict[str, Any]:
    """Run the publishers; the server's CPU (``cpu_seconds``) is sampled at the measured window's ends."""
    await _create_stream(port)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    links = [Link() for _ in range(connections)]
    pubs = [Publisher(i, body_bytes, latencies, links[i % connections]) for i in range(publishers)]
    for p in pubs:
        p.link.publishers[p.index] = p
    for link in links:
        await loop.create_connection(lambda link=link: link, "127.0.0.1", port)
    await asyncio.sleep(0.2)
    for p in pubs:  # warm-up
        p.running = True
        p.publish()
    for link in links:
        link.flush()
    await asyncio.sleep(0.5)
    latencies.clear()
    base = sum(p.acked for p in pubs)
    cpu0 = cpu_seconds()
    started = time.perf_counter()
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds() - cpu0
    acked = sum(p.acked for p in pubs) - base
    errors = sum(p.errors for p in pubs)
    failed = [link.failed for link in links if link.failed]
    for p in pubs:
        p.running = False
    for link in links:
        if link.transport is not None:
            link.transport.close()
    if failed or errors:
        raise RuntimeError(f"JetStream refused publishes: {errors} error answers, {failed}")
    lat = sorted(latencies)
    return {
        "acked": acked,
        "acked_per_s": round(acked / elapsed),
        "ack_p50_ms": round(percentile(lat, 0.50) * 1000, 3),
        "ack_p99_ms": round(percentile(lat, 0.99) * 1000, 3),
        "errors": errors,
        "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, acked), 2),
    }


def measure(
    publishers: int, sync: str, duration: float, body_bytes: int = 200, connections: int | None = None
) -> dict[str, Any]:
    """One W2 run against a fresh single-node JetStream; ``sync`` is ``lazy`` or ``always``.

    ``connections`` (default: one per publisher) spreads the publishers over that many.
    """
    connections = min(connections or publishers, publishers)
    store = Path(tempfile.mkdtemp(prefix="tidings-bench-js-"))
    conf = store / "js.conf"
    sync_line = "sync_interval: always" if sync == "always" else ""
    conf.write_text(f"jetstream {{\n  store_dir: {json.dumps(str(store / 'data'))}\n  {sync_line}\n}}\n")
    port = free_port()
    proc = start_server(port, ["-c", str(conf)])
    try:
        pid = proc.pid
        figures = uvloop.run(
            _load(port, publishers, duration, body_bytes, connections, lambda: process_cpu_seconds(pid))
        )
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(store, ignore_errors=True)
    return {
        "workload": "w2",
        "system": f"jetstream-{sync}",
        "publishers": publishers,
        "connections": connections,
        "duration_s": duration,
        "body_bytes": body_bytes,
        "fsync": sync == "always",
        **figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--publishers", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--sync", nargs="+", choices=["lazy", "always"], default=["lazy", "always"])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=None, help="default: one per publisher")
    args = parser.parse_args()
    pin_to(1)
    for n in args.publishers:
        for sync in args.sync:
            print(json.dumps(measure(n, sync, args.duration, connections=args.connections)), flush=True)


if __name__ == "__main__":
    main()

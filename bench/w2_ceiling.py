"""The ceiling of W2's shape on this machine: a server that answers every pub at once.

A bare picows server (no session, no log, no fsync: each ``pub`` is answered with a
``puback`` in the same callback) on core 0, driven by W2's own load generator
(``tidings.bench.w2``) on core 1. Whatever ``tidings bench w2`` reaches with the same
publishers and connections, it cannot beat this: the figure is the cost of the
WebSocket round trips themselves (a receive and a send system call per message and
connection on each side) on two cores. Prints one JSON line per configuration.

With ``--fsync`` the server also writes each WebSocket message of pubs to a
preallocated file and fdatasyncs it, in the same callback, before it answers (one
sync per arrival: with ``--connections`` an arrival is a batch of pubs): the floor of a durable
ack on this machine (no batching, no threads, the event loop blocked during the
sync), with the raw fdatasync p99 sampled around the load as ``tidings bench w2``
does, to compare ``ack_p99_vs_raw_p99`` with.

    .venv/bin/python bench/w2_ceiling.py --publishers 256 --runs 3
    .venv/bin/python bench/w2_ceiling.py --publishers 256 --connections 8 --runs 3
    .venv/bin/python bench/w2_ceiling.py --publishers 1 --fsync --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

from tidings.bench.harness import pin_to, process_cpu_seconds
from tidings.bench.w2 import _drive, against_raw, raw_fdatasync

WELCOME = b'{"op":"welcome","agent":"anonymous","session":"s","server":"ceiling","rid":null}'
_decode = msgspec.json.Decoder()
#: bytes of the file the ``--fsync`` server overwrites in a circle (written with zeros first)
SYNC_FILE_BYTES = 64 << 20


class Answering(WSListener):
    """Answers each ``pub`` of a message (one frame or a batch) with one message of pubacks.

    With a ``sync_fd``, the message is written to it and fdatasynced first.
    """

    def __init__(self, sync_fd: int | None = None) -> None:
        self.sync_fd = sync_fd
        self.position = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        decoded = _decode.decode(frame.get_payload_as_memoryview())
        frames = decoded if isinstance(decoded, list) else [decoded]
        out = []
        for f in frames:
            if f.get("op") == "hello":
                transport.send(WSMsgType.TEXT, WELCOME)
            elif f.get("op") == "pub":
                out.append(b'{"op":"puback","id":"%b","rid":%d,"offset":1}' % (f["id"].encode(), f["rid"]))
        if out and self.sync_fd is not None:
            data = frame.get_payload_as_bytes()
            if self.position + len(data) > SYNC_FILE_BYTES:
                self.position = 0
            os.pwrite(self.sync_fd, data, self.position)
            os.fdatasync(self.sync_fd)
            self.position += len(data)
        if out:
            transport.send(WSMsgType.TEXT, out[0] if len(out) == 1 else b"[" + b",".join(out) + b"]")


def _serve(port_out: Any, sync_path: str | None) -> None:
    pin_to(0)
    sync_fd = None
    if sync_path is not None:
        sync_fd = os.open(sync_path, os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(sync_fd, bytes(SYNC_FILE_BYTES), 0)
        os.fsync(sync_fd)

    async def main() -> None:
        server = await ws_create_server(lambda _: Answering(sync_fd), "127.0.0.1", 0)
        port_out.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    uvloop.run(main())


def measure(
    publishers: int, connections: int | None, processes: int, duration: float, fsync: bool = False
) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="tidings-ceiling-"))
    ctx = multiprocessing.get_context("spawn")
    port_out = ctx.Queue()
    sync_path = str(directory / "synced.bin") if fsync else None
    server = ctx.Process(target=_serve, args=(port_out, sync_path), daemon=True)
    server.start()
    try:
        url = f"ws://127.0.0.1:{port_out.get(timeout=60)}/"
        assert server.pid is not None
        pid = server.pid
        raw = raw_fdatasync(directory) if fsync else []
        figures = _drive(
            url, publishers, duration, 200, connections, processes, True, lambda: process_cpu_seconds(pid)
        )
        raw += raw_fdatasync(directory) if fsync else []
    finally:
        server.terminate()
        server.join(10)
        shutil.rmtree(directory, ignore_errors=True)
    system = "bare picows + fdatasync" if fsync else "bare picows"
    result = {"workload": "w2-ceiling", "system": system, "publishers": publishers, **figures}
    if raw:
        result.update(against_raw(figures["ack_p99_ms"], raw))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishers", type=int, default=256)
    parser.add_argument("--connections", type=int, default=None)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--fsync", action="store_true", help="fdatasync each message before its ack")
    args = parser.parse_args()
    for _ in range(args.runs):
        result = measure(args.publishers, args.connections, args.processes, args.duration, args.fsync)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

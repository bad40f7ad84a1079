"""The ceiling of W2's shape on this machine: a server that answers every pub at once.

A bare picows server (no session, no log, no fsync: each ``pub`` is answered with a
``puback`` in the same callback) on core 0, driven by W2's own load generator
(``tidings.bench.w2``) on core 1. Whatever ``tidings bench w2`` reaches with the same
publishers and connections, it cannot beat this: the figure is the cost of the
WebSocket round trips themselves (a receive and a send system call per message and
connection on each side) on two cores. Prints one JSON line per configuration.

    .venv/bin/python bench/w2_ceiling.py --publishers 256 --runs 3
    .venv/bin/python bench/w2_ceiling.py --publishers 256 --connections 8 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
from typing import Any

import msgspec
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

from tidings.bench.harness import pin_to, process_cpu_seconds
from tidings.bench.w2 import _drive

WELCOME = b'{"op":"welcome","agent":"anonymous","session":"s","server":"ceiling","rid":null}'
_decode = msgspec.json.Decoder()


class Answering(WSListener):
    """Answers each ``pub`` of a message (one frame or a batch) with one message of pubacks."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        decoded = _decode.decode(frame.get_payload_as_memoryview())
        frames = decoded if isinstance(decoded, list) else [decoded]
        out = []
        for f in frames:
            if f.get("op") == "hello":
                transport.send(WSMsgType.TEXT, WELCOME)
            elif f.get("op") == "pub":
                out.append(b'{"op":"puback","id":"%b","rid":%d,"offset":1}' % (f["id"].encode(), f["rid"]))
        if out:
            transport.send(WSMsgType.TEXT, out[0] if len(out) == 1 else b"[" + b",".join(out) + b"]")


def _serve(port_out: Any) -> None:
    pin_to(0)

    async def main() -> None:
        server = await ws_create_server(lambda _: Answering(), "127.0.0.1", 0)
        port_out.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    uvloop.run(main())


def measure(publishers: int, connections: int | None, processes: int, duration: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    port_out = ctx.Queue()
    server = ctx.Process(target=_serve, args=(port_out,), daemon=True)
    server.start()
    try:
        url = f"ws://127.0.0.1:{port_out.get(timeout=30)}/"
        assert server.pid is not None
        pid = server.pid
        figures = _drive(
            url, publishers, duration, 200, connections, processes, True, lambda: process_cpu_seconds(pid)
        )
    finally:
        server.terminate()
        server.join(10)
    return {"workload": "w2-ceiling", "system": "bare picows", "publishers": publishers, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishers", type=int, default=256)
    parser.add_argument("--connections", type=int, default=None)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.runs):
        result = measure(args.publishers, args.connections, args.processes, args.duration)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

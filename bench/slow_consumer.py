"""Does one subscriber that stops reading cost the others anything? (issue #7's acceptance figure)

Ten healthy subscribers and a publisher at a fixed rate on one topic; in every
other run an eleventh subscriber connects, subscribes (live and as a durable
consumer) and never reads again. Runs alternate (alone, beside, alone, ...) so
drift on a shared machine hits both alike. The server runs on core 0
(``tidings serve``), the clients here on core 1. Prints one JSON object:

    python bench/slow_consumer.py --runs 5 --messages 4000 --rate 1000

``p99_alone_ms`` / ``p99_beside_ms`` are medians over the runs of the healthy
subscribers' publish-to-receive p99; the target is ``ratio`` <= 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import time
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from tidings.bench.harness import BenchServer, percentile, pin_to

TOPIC = "sig/room/chat"


async def _open(url: str) -> ClientConnection:
    ws = await connect(url, subprotocols=["tidings.v1.json"], max_size=None)  # type: ignore[list-item]
    await ws.send(msgspec.json.encode({"op": "hello", "rid": 0}).decode())
    await ws.recv()
    return ws


async def _reader(ws: ClientConnection, latencies: list[float], expected: int) -> None:
    seen = 0
    while seen < expected:
        frames = msgspec.json.decode(await ws.recv())
        for frame in frames if isinstance(frames, list) else [frames]:
            if frame.get("op") == "msg":
                latencies.append(time.perf_counter() - frame["body"]["t"])
                seen += 1


def _stalled(port: int) -> socket.socket:
    """A subscriber that handshakes, subscribes, and never reads again."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: tidings.v1.json\r\n\r\n"
    )
    frames = msgspec.json.encode(
        [
            {"op": "hello"},
            {"op": "sub", "topic": "sig/room/>"},
            {"op": "sub", "topic": "conv/room/log", "consumer": "slow", "from": "earliest"},
        ]
    )
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(frames))
    n = len(frames)
    length = bytes((0x80 | n,)) if n < 126 else b"\xfe" + n.to_bytes(2, "big")
    sock.sendall(b"\x81" + length + mask + masked)
    return sock


async def one_run(url: str, port: int, slow: bool, messages: int, rate: float, pad: str) -> float:
    readers = [await _open(url) for _ in range(10)]
    for ws in readers:
        await ws.send(msgspec.json.encode({"op": "sub", "topic": "sig/room/>", "rid": 1}).decode())
        await ws.recv()
    stalled = _stalled(port) if slow else None
    await asyncio.sleep(0.2)
    latencies: list[float] = []
    tasks = [asyncio.create_task(_reader(ws, latencies, messages)) for ws in readers]
    pub = await _open(url)
    start = time.perf_counter()
    for i in range(messages):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        body = {"t": time.perf_counter(), "pad": pad}
        await pub.send(msgspec.json.encode({"op": "pub", "topic": TOPIC, "body": body}).decode())
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    for ws in (*readers, pub):
        await ws.close()
    if stalled is not None:
        stalled.close()
    return percentile(sorted(latencies), 0.99)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    pin_to(1)
    alone: list[float] = []
    beside: list[float] = []
    with BenchServer() as server:
        url = server.url
        port = int(url.rsplit(":", 1)[1].strip("/"))
        setup = await _open(url)
        for i in range(50):  # something durable for the stalled consumer to owe
            frame = {"op": "pub", "topic": "conv/room/log", "body": {"n": i}, "rid": i + 1}
            await setup.send(msgspec.json.encode(frame).decode())
        await setup.close()
        for run in range(2 * args.runs):
            slow = run % 2 == 1
            p99 = await one_run(url, port, slow, args.messages, args.rate, "x" * args.body_bytes)
            (beside if slow else alone).append(p99)
    a, b = statistics.median(alone), statistics.median(beside)
    return {
        "workload": "slow_consumer",
        "runs": args.runs,
        "messages": args.messages,
        "rate": args.rate,
        "body_bytes": args.body_bytes,
        "subscribers": 10,
        "p99_alone_ms": round(a * 1000, 3),
        "p99_beside_ms": round(b * 1000, 3),
        "ratio": round(b / a, 2) if a else None,
        "alone_ms": [round(x * 1000, 3) for x in alone],
        "beside_ms": [round(x * 1000, 3) for x in beside],
        "load": os.getloadavg()[0],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--body-bytes", type=int, default=2000)
    try:
        import uvloop

        result = uvloop.run(main(parser.parse_args()))
    except ImportError:
        result = asyncio.run(main(parser.parse_args()))
    print(json.dumps(result))

"""W1, ephemeral fanout: one topic, one publisher, N subscribers.

Two measurements:

- saturation: the publisher sends batches of 64 pre-encoded ``pub`` frames as
  fast as the slowest subscriber keeps up (a window of 4,096 ahead); the figure
  is deliveries per second over all subscribers;
- latency: the publisher sends ``rate`` publishes per second into a
  ``members``-subscriber topic, each body carrying its send time; subscribers
  record publish-to-receive latency (same machine, same clock).

Subscribers are lean picows clients that count deliveries without decoding them
(saturation) or decode only the timestamps (latency).

By default each measurement starts its own ``tidings serve`` (embedded engine,
pinned to core 0). Given ``urls`` (gateways already running, e.g. by ``tidings
cluster up``), it uses them instead: subscribers round-robin over the gateways,
the publisher on the first, so most deliveries cross from one gateway to another.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgspec
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tidings.bench.harness import BenchServer, ServerCpu, flood, latency_figures, pin_to

HELLO = b'{"op":"hello","client":"bench-w1"}'
#: each measurement its own topic: with ``urls`` both run against the same gateways, and
#: what the saturation left queued there must not reach the latency's subscribers
SATURATION_TOPIC = b"sig/bench/t"
LATENCY_TOPIC = b"sig/bench-latency/t"
_decode = msgspec.json.Decoder()


class Counter(WSListener):
    def __init__(self, latencies: list[float] | None = None) -> None:
        self.transport: WSTransport | None = None
        self.count = 0
        self.dropped = 0  # live deliveries the server dropped for this slow subscriber, as it told us
        self.ready = asyncio.Event()
        self.latencies = latencies

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def close(self) -> None:
        if self.transport is not None:
            self.transport.disconnect()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is not WSMsgType.TEXT:
            return  # a close (or a continuation, never sent by tidings): nothing to count
        if self.latencies is None:
            data = frame.get_payload_as_bytes()
            self.count += data.count(b'"op":"msg"')
            if b'"op":"dropped"' in data:
                self._count_dropped(data)
            if b'"op":"subbed"' in data:
                self.ready.set()
            return
        now = time.perf_counter_ns()
        decoded = _decode.decode(frame.get_payload_as_memoryview())
        for f in decoded if isinstance(decoded, list) else [decoded]:
            if f.get("op") == "msg":
                self.count += 1
                self.latencies.append((now - f["body"]) / 1e6)
            elif f.get("op") == "subbed":
                self.ready.set()
            elif f.get("op") == "dropped":
                self.dropped += f["count"]

    def _count_dropped(self, data: bytes) -> None:
        decoded = _decode.decode(data)
        for f in decoded if isinstance(decoded, list) else [decoded]:
            if f.get("op") == "dropped":
                self.dropped += f["count"]


async def _subscribers(urls: list[str], n: int, topic: bytes, latencies: list[float] | None) -> list[Counter]:
    sub = b'[%b,{"op":"sub","topic":"%b","rid":1}]' % (HELLO, topic)
    subs = []
    for i in range(n):
        transport, listener = await ws_connect(
            lambda: Counter(latencies), urls[i % len(urls)], read_buffer_init_size=256 * 1024
        )
        assert isinstance(listener, Counter)
        transport.send(WSMsgType.TEXT, sub)
        subs.append(listener)
    await asyncio.gather(*(s.ready.wait() for s in subs))
    return subs


async def saturate(urls: list[str], subscribers: int, body_bytes: int, duration: float) -> dict[str, Any]:
    subs = await _subscribers(urls, subscribers, SATURATION_TOPIC, None)
    pub, _ = await ws_connect(WSListener, urls[0])
    pub.send(WSMsgType.TEXT, HELLO)
    body = json.dumps("x" * max(0, body_bytes - 2)).encode()
    pub_frame = b'{"op":"pub","topic":"%b","body":%b}' % (SATURATION_TOPIC, body)
    batch = b"[" + b",".join([pub_frame] * 64) + b"]"
    # Flow control counts what the server dropped for a slow subscriber (and said so) as
    # settled: waiting for it would stall the publisher for good.
    sent, elapsed = await flood(
        lambda: pub.send(WSMsgType.TEXT, batch), lambda: min(s.count + s.dropped for s in subs), 64, duration
    )
    delivered = sum(s.count for s in subs)
    dropped = sum(s.dropped for s in subs)
    pub.disconnect()
    for s in subs:
        s.close()
    await asyncio.sleep(0.05)
    return {
        "published": sent,
        "deliveries": delivered,
        "dropped": dropped,
        "deliveries_per_s": round(delivered / elapsed),
    }


async def latency(urls: list[str], members: int, rate: float, duration: float) -> dict[str, Any]:
    latencies: list[float] = []
    subs = await _subscribers(urls, members, LATENCY_TOPIC, latencies)
    pub, _ = await ws_connect(WSListener, urls[0])
    pub.send(WSMsgType.TEXT, HELLO)
    await asyncio.sleep(0.2)
    interval = 1.0 / rate
    started = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) - started < duration:
        due = started + n * interval
        if now < due:
            await asyncio.sleep(due - now)
        pub.send(
            WSMsgType.TEXT, b'{"op":"pub","topic":"%b","body":%d}' % (LATENCY_TOPIC, time.perf_counter_ns())
        )
        n += 1
    await asyncio.sleep(0.2)
    pub.disconnect()
    for s in subs:
        s.close()
    await asyncio.sleep(0.05)
    return latency_figures(n, latencies)


def run(
    subscribers: int = 10,
    body_bytes: int = 64,
    duration: float = 5.0,
    rate: float = 2000.0,
    members: int = 10,
    pin: bool = True,
    urls: list[str] | None = None,
    server_pids: list[int] | None = None,
) -> dict[str, Any]:
    """Run both W1 measurements against a fresh ``tidings serve``; one figure set.

    ``pin`` moves this process to core 1 (the server runs on core 0). With ``urls``
    the gateways there are measured instead, and the server CPU is that of
    ``server_pids`` (None without them).
    """
    if pin:
        pin_to(1)
    if urls:
        server_cpu = ServerCpu(server_pids or [])
        cpu0 = server_cpu()
        sat = uvloop.run(saturate(urls, subscribers, body_bytes, duration))
        cpu = server_cpu() - cpu0
        lat = uvloop.run(latency(urls, members, rate, duration))
    else:
        with BenchServer() as server:
            cpu0 = server.cpu_seconds()
            sat = uvloop.run(saturate([server.url], subscribers, body_bytes, duration))
            cpu = server.cpu_seconds() - cpu0
        with BenchServer() as server:
            lat = uvloop.run(latency([server.url], members, rate, duration))
    measured_cpu = not urls or bool(server_pids)
    return {
        "workload": "w1",
        "system": "tidings",
        "gateways": len(urls) if urls else 1,
        "subscribers": subscribers,
        "body_bytes": body_bytes,
        "duration_s": duration,
        "deliveries_per_s": sat["deliveries_per_s"],
        "dropped": sat["dropped"],
        "latency_rate_per_s": rate,
        "latency_members": members,
        "p50_ms": lat["p50_ms"],
        "p99_ms": lat["p99_ms"],
        "p999_ms": lat["p999_ms"],
        "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, sat["deliveries"]), 3) if measured_cpu else None,
    }

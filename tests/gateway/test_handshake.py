"""Upgrade deadlines are drawn per connection between ``hello_timeout`` and 1.25x it
(``gateway/handshake.py``), so connections opened together are not dropped together."""

from __future__ import annotations

import asyncio
import socket
import time

from tests.conftest import start_gateway
from tests.gateway.wsclient import authed
from tidings.auth import Authority
from tidings.gateway.handshake import SPREAD, fallback_timeout, spread


def test_a_drawn_deadline_is_never_earlier_than_promised() -> None:
    drawn = [spread(2.0) for _ in range(1000)]
    assert min(drawn) >= 2.0 and max(drawn) <= 2.0 * SPREAD
    assert max(drawn) - min(drawn) > 0.4, "spread over the range, not one value"
    assert fallback_timeout(2.0) > 2.0 * SPREAD


async def _dropped_after(sock: socket.socket, started: float, limit: float) -> float:
    loop = asyncio.get_running_loop()
    while time.monotonic() - started < limit:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 16), limit)
        except ConnectionError:
            break
        if data == b"":
            break
    return time.monotonic() - started


async def test_connections_opened_together_are_dropped_spread_over_the_deadline(authority: Authority) -> None:
    gw = await start_gateway(authority, hello_timeout=1.0)
    token = authority.mint("ann", pub=["sig/>"], subs=["sig/>"])
    socks: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(40):  # never upgrading, like a slowloris client
            sock = socket.create_connection(("127.0.0.1", gw.port))
            sock.setblocking(False)
            socks.append(sock)
        ok = await authed(gw.url, token)  # upgraded: its drawn deadline is off
        for _ in range(100):
            if gw.handshakes.pending == len(socks):
                break
            await asyncio.sleep(0.01)
        assert gw.handshakes.pending == len(socks)
        dropped = sorted(await asyncio.gather(*(_dropped_after(s, started, 5.0) for s in socks)))
        assert dropped[0] >= 0.95, dropped
        assert dropped[-1] < 2.5, dropped
        assert dropped[-1] - dropped[0] > 0.1, f"dropped together: {dropped}"
        assert gw.handshakes.pending == 0
        await asyncio.sleep(0.3)  # past every drawn deadline: the upgraded one is still served
        await ok.send({"op": "pub", "topic": "sig/a/b", "body": 1, "rid": 1})
        assert (await ok.expect("puback"))["rid"] == 1
        await ok.close()
    finally:
        for sock in socks:
            sock.close()
        await gw.stop()

"""A client that never answers pings is closed with 1001 after the heartbeat timeout,
and a client that does answer is kept (raw sockets: no library answers for us)."""

from __future__ import annotations

import asyncio

from tests.reliability import rawws as w
from tidings.auth import Authority
from tidings.config import Settings
from tidings.gateway import Gateway


async def test_a_client_that_never_answers_pings_is_closed_with_1001(authority: Authority) -> None:
    # presence_timeout 0.6 s: ping after 0.3 s idle, close 0.3 s later (30 s by default)
    gw = Gateway(Settings(port=0, presence_timeout=0.6), authority)
    await gw.start()
    token = authority.mint("mute", pub=[">"], subs=[">"])
    try:

        def mute() -> tuple[int | None, str, bool]:
            sock = w.handshake("127.0.0.1", gw.port)
            assert w.hello(sock, token)["op"] == "welcome"
            saw_ping = False
            sock.settimeout(5)
            while True:  # read, never answer
                opcode, payload = w.read_frame(sock)
                if opcode == w.PING:
                    saw_ping = True
                elif opcode == w.CLOSE:
                    sock.close()
                    return int.from_bytes(payload[:2], "big"), payload[2:].decode(), saw_ping

        def polite() -> bool:
            sock = w.handshake("127.0.0.1", gw.port)
            assert w.hello(sock, token)["op"] == "welcome"
            sock.settimeout(1.5)
            pongs = 0
            try:
                while pongs < 3:
                    opcode, payload = w.read_frame(sock)
                    if opcode == w.PING:
                        sock.sendall(w.frame(w.PONG, payload))
                        pongs += 1
                    elif opcode == w.CLOSE:
                        return False
            finally:
                sock.close()
            return True

        (code, reason, saw_ping), kept = await asyncio.gather(
            asyncio.to_thread(mute), asyncio.to_thread(polite)
        )
        assert saw_ping and code == 1001 and "ping" in reason
        assert kept, "a client answering pings was closed"
    finally:
        await gw.stop()

"""A python-socketio rooms server: what a Python developer would build this with.

python-socketio's ``AsyncServer`` on aiohttp, on uvloop (the same loop tidings
uses). Rooms stand in for topics and conversations:

- ``join`` (with an ack): enter a room;
- ``pub`` ``[room, body]``: emit ``msg`` ``[room, body]`` to everyone in the room
  (W1: the publisher is not a member);
- ``say`` ``[room, body]`` (with an ack, like tidings' puback): emit ``msg`` to the
  room without the sender (W3: the other members of a conversation);
- ``ack``: a receiver's acknowledgement; counted, nothing else (Socket.IO keeps
  no history, so there is nothing to redeliver: it is here so the W3 traffic has
  the same shape as with tidings' durable consumers).

    .venv/bin/python bench/peers/socketio_server.py --port 7800

Prints ``listening on PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import socketio
import uvloop
from aiohttp import web


def make_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=[])
    acks = 0

    @sio.on("join")  # type: ignore[misc]
    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    @sio.on("pub")  # type: ignore[misc]
    async def pub(sid: str, data: list[Any]) -> None:
        await sio.emit("msg", data, room=data[0])

    @sio.on("say")  # type: ignore[misc]
    async def say(sid: str, data: list[Any]) -> bool:
        await sio.emit("msg", data, room=data[0], skip_sid=sid)
        return True

    @sio.on("ack")  # type: ignore[misc]
    async def ack(sid: str, data: Any) -> None:
        nonlocal acks
        acks += 1

    app = web.Application()
    sio.attach(app)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    print(f"listening on {port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()

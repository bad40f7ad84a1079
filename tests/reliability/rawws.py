"""WebSocket over a raw socket, byte by byte, to send what no WebSocket library would.

``handshake`` does the HTTP upgrade and returns the socket; ``frame`` builds any
frame (reserved bits, unmasked, a lying length, a fragmented control frame);
``read_frame`` parses one; ``close_of`` reads until the server's close frame and
returns its code and reason.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any

from tests.conftest import UNIT

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def http_upgrade(
    host: str, port: int, *, protocol: str | None = "tidings.v1.json", headers: dict[str, str] | None = None
) -> tuple[socket.socket, int, bytes]:
    """Send an upgrade request; return the socket, the HTTP status and the response head."""
    sock = socket.create_connection((host, port), timeout=5 * UNIT)
    lines = [
        "GET / HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return sock, status, head


def handshake(host: str, port: int, **kw: Any) -> socket.socket:
    sock, status, head = http_upgrade(host, port, **kw)
    assert status == 101, head
    return sock


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame; ``length`` declares another payload length than ``len(payload)``."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def text(obj: Any) -> bytes:
    return frame(TEXT, json.dumps(obj).encode())


def close_frame(code: int | None, reason: bytes = b"") -> bytes:
    return frame(CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """The next frame from the server: (opcode, payload). Raises ``ConnectionError`` at EOF."""
    b0, b1 = _recv_exactly(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", _recv_exactly(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", _recv_exactly(sock, 8))[0]
    return b0 & 0x0F, _recv_exactly(sock, n)


def frames_until_close(
    sock: socket.socket, timeout: float = 5.0
) -> tuple[list[dict[str, Any]], int | None, str]:
    """Read until the server closes: the tidings frames it sent, then its close code and reason.

    The code is None if the TCP connection ended without a close frame.
    """
    sock.settimeout(timeout * UNIT)
    got: list[dict[str, Any]] = []
    try:
        while True:
            opcode, payload = read_frame(sock)
            if opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return got, code, payload[2:].decode(errors="replace")
            if opcode == TEXT:
                decoded = json.loads(payload)
                got.extend(decoded if isinstance(decoded, list) else [decoded])
    except (ConnectionError, OSError):
        return got, None, ""
    finally:
        sock.close()


def close_of(sock: socket.socket, timeout: float = 5.0) -> tuple[int | None, str]:
    _, code, reason = frames_until_close(sock, timeout)
    return code, reason


def hello(sock: socket.socket, token: str) -> dict[str, Any]:
    """Send ``hello`` and return the server's first frame (``welcome`` or ``error``)."""
    sock.sendall(text({"op": "hello", "token": token, "rid": 1}))
    return next_frame(sock)


def next_frame(sock: socket.socket, timeout: float = 5.0) -> dict[str, Any]:
    sock.settimeout(timeout * UNIT)
    while True:
        opcode, payload = read_frame(sock)
        if opcode == TEXT:
            decoded = json.loads(payload)
            return decoded[0] if isinstance(decoded, list) else decoded  # type: ignore[no-any-return]
        if opcode == CLOSE:
            raise ConnectionError(f"closed: {payload!r}")


def read_frames(sock: socket.socket, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """At least ``count`` tidings frames (batches flattened)."""
    sock.settimeout(timeout * UNIT)
    got: list[dict[str, Any]] = []
    while len(got) < count:
        opcode, payload = read_frame(sock)
        if opcode == CLOSE:
            raise ConnectionError(f"closed: {payload!r}")
        if opcode == TEXT:
            decoded = json.loads(payload)
            got.extend(decoded if isinstance(decoded, list) else [decoded])
    return got

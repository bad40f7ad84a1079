"""A Python 3 port of the key Autobahn|Testsuite protocol cases (the suite itself needs
Python 2), over raw sockets against a real server: framing (sections 1-5 of the suite),
invalid UTF-8 (6.x), close handling (7.x). Expected outcomes are RFC 6455's."""

from __future__ import annotations

import struct

import pytest

from tests.reliability import rawws as w
from tests.reliability.hostile import Target
from tests.reliability.test_hostile import target  # noqa: F401 - the shared server fixture


def _authed(t: Target) -> object:
    sock = w.handshake(t.host, t.port)
    assert w.hello(sock, t.tokens["valid"])["op"] == "welcome"
    return sock


SUB = b'{"op": "sub", "topic": "sig/ab/x", "rid": 7}'

# (Autobahn case, what the client sends, the close code RFC 6455 requires)
CASES = [
    ("3.1 RSV1 set", w.frame(w.TEXT, SUB, rsv=4), 1002),
    ("3.2 RSV2 set", w.frame(w.TEXT, SUB, rsv=2), 1002),
    ("3.4 RSV3 on a binary frame", w.frame(w.BINARY, b"\x80", rsv=1), 1002),
    ("4.1.1 reserved non-control opcode 3", w.frame(3, b"x"), 1002),
    ("4.2.1 reserved control opcode 11", w.frame(11, b"x"), 1002),
    ("5.1 fragmented ping", w.frame(w.PING, b"a", fin=False) + w.frame(w.CONT, b"b"), 1002),
    ("5.3 continuation with nothing to continue", w.frame(w.CONT, b"x"), 1002),
    (
        "5.x new text frame inside a fragmented one",
        w.frame(w.TEXT, b"[", fin=False) + w.frame(w.TEXT, b"]"),
        1002,
    ),
    ("2.5 ping with 126 bytes", w.frame(w.PING, b"x" * 126), 1002),
    ("x unmasked client frame (RFC 6455 5.1)", w.frame(w.TEXT, SUB, mask=False), 1002),
    (
        "6.3.1 invalid UTF-8 text",
        w.frame(w.TEXT, b'{"op": "pub", "topic": "sig/ab/x", "body": "\xce\xba\xe1\xbd"}'),
        1007,
    ),
    (
        "6.x invalid UTF-8 split over fragments",
        w.frame(w.TEXT, b'"\xce', fin=False) + w.frame(w.CONT, b'\xba\xff"'),
        1007,
    ),
    ("7.3.2 close with a 1-byte payload", w.frame(w.CLOSE, b"\x03"), 1002),
    (
        "7.5.1 close reason not UTF-8",
        w.close_frame(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"),
        1007,
    ),
    ("7.9.1 close code 0", w.close_frame(0), 1002),
    ("7.9.2 close code 999", w.close_frame(999), 1002),
    ("7.9.3 close code 1004", w.close_frame(1004), 1002),
    ("7.9.4 close code 1005", w.close_frame(1005), 1002),
    ("7.9.5 close code 1006", w.close_frame(1006), 1002),
    ("7.9.6 close code 1016", w.close_frame(1016), 1002),
    ("7.9.9 close code 2000", w.close_frame(2000), 1002),
    ("7.9.10 close code 2999", w.close_frame(2999), 1002),
    ("7.9.11 close code 5000", w.close_frame(5000), 1002),
    ("7.9.13 close code 65535", w.close_frame(65535), 1002),
    ("7.7.1 close 1000 is echoed", w.close_frame(1000), 1000),
    ("7.7.2 close 1001 is echoed", w.close_frame(1001, b"bye"), 1001),
    ("7.7.x close 1011 is echoed", w.close_frame(1011), 1011),
    ("7.7.12 close 3000 is echoed", w.close_frame(3000), 3000),
    ("7.7.13 close 4999 is echoed", w.close_frame(4999), 4999),
    ("7.3.1 close with no payload is answered 1000", w.close_frame(None), 1000),
]


@pytest.mark.parametrize(("case", "data", "code"), CASES, ids=[c[0] for c in CASES])
def test_autobahn_case(target: Target, case: str, data: bytes, code: int) -> None:  # noqa: F811
    sock = _authed(target)
    sock.sendall(data)  # type: ignore[attr-defined]
    frames, got, _ = w.frames_until_close(sock)  # type: ignore[arg-type]
    assert got == code, (case, frames)
    assert not [f for f in frames if f.get("op") == "subbed"], "nothing of a failed connection was acted on"


def test_ping_payload_is_echoed_in_a_pong(target: Target) -> None:  # noqa: F811
    """Autobahn 2.2/2.3: a ping with a (binary) payload gets a pong with the same payload."""
    sock = _authed(target)
    payload = bytes(range(125))
    sock.sendall(w.frame(w.PING, payload))  # type: ignore[attr-defined]
    assert w.read_frame(sock) == (w.PONG, payload)  # type: ignore[arg-type]
    sock.sendall(w.close_frame(1000))  # type: ignore[attr-defined]
    assert w.close_of(sock)[0] == 1000  # type: ignore[arg-type]


def test_a_message_in_many_small_fragments_with_pings_between(target: Target) -> None:  # noqa: F811
    """Autobahn 5.6-5.9: control frames may come between fragments of one message."""
    sock = _authed(target)
    parts = [SUB[i : i + 4] for i in range(0, len(SUB), 4)]
    data = b""
    for i, part in enumerate(parts):
        data += w.frame(w.TEXT if i == 0 else w.CONT, part, fin=i == len(parts) - 1)
        data += w.frame(w.PING, b"p")
    sock.sendall(data)  # type: ignore[attr-defined]
    frames = []
    while not frames:
        opcode, payload = w.read_frame(sock)  # type: ignore[arg-type]
        if opcode == w.TEXT:
            frames.append(payload)
    assert b'"subbed"' in frames[0] and b'"rid":7' in frames[0]
    sock.close()  # type: ignore[attr-defined]


def test_close_code_is_two_bytes_big_endian() -> None:
    assert w.close_frame(1002)[-2:] != struct.pack("!H", 1002)  # masked on the wire

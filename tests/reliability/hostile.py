"""Hostile clients, each a blocking function over a raw socket that returns what the server did.

Used by ``test_hostile.py`` one by one (each outcome checked against the
documented one) and by ``python -m tests.reliability.hostile``, a separate
attacker process that repeats them all while healthy clients are measured
(``p99_under``: by the test, and by ``bench/hostile_p99.py`` for the figure).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import msgspec

import tidings
from tests.conftest import UNIT
from tests.reliability import rawws as w
from tests.reliability_helpers import ROOT, ServerProcess
from tidings.auth import Authority
from tidings.metrics import percentile

MiB = 1024 * 1024


@dataclass
class Outcome:
    """What the server answered: an HTTP status, error codes, a close code (None: no close frame)."""

    http: int | None = None
    errors: list[str] = field(default_factory=list)
    close: int | None = None
    still_open: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    host: str
    port: int
    #: name -> token: valid, narrow, expired, forged, tampered, none_alg, future, missing, revoked
    tokens: dict[str, str]
    #: the server's token secret (to mint more) and a client of its control plane (admin)
    secret: bytes = b""
    control: httpx.Client | None = None

    def revoke(self, token: str) -> None:
        """Revoke ``token`` through the server's control plane."""
        assert self.control is not None
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        answer = self.control.delete(f"/v1/tokens/{jti}")
        assert answer.status_code == 200, answer.text


#: the server settings every case's documented outcome assumes
ENV = {"TIDINGS_HELLO_TIMEOUT": "1", "TIDINGS_ALLOWED_ORIGINS": "https://app.example"}
_CONTROL_LINE = re.compile(r"control plane on (\S+)")


def prepare(server: ServerProcess, data_dir: Any) -> Target:
    """The target ``server`` (started with ``ENV`` on ``data_dir``): a token for every case,
    the ``revoked`` one revoked through the control plane."""
    authority = Authority.from_data_dir(data_dir)
    now = int(time.time())
    narrow = authority.mint("narrow", pub=["conv/team-1/>"], subs=["conv/team-1/>"])
    secret = (data_dir / "secret.key").read_bytes().strip()
    tokens = {
        "valid": authority.mint("hostile", pub=[">"], subs=[">"]),
        "narrow": narrow,
        "expired": authority.mint("hostile", pub=[">"], subs=[">"], ttl=-60),
        "forged": Authority(b"not-the-server-secret-0123456789abcdef").mint("hostile", pub=[">"], subs=[">"]),
        "tampered": _tampered(narrow),
        "none_alg": jwt.encode({"sub": "hostile", "exp": now + 600, "subs": [">"]}, None, algorithm="none"),
        "future": jwt.encode(
            {"sub": "hostile", "iat": now + 3600, "exp": now + 7200}, secret, algorithm="HS256"
        ),
        "missing": "",
        "revoked": authority.mint("hostile", pub=[">"], subs=[">"]),
    }
    host, port = server.url.removeprefix("ws://").strip("/").split(":")
    deadline = time.monotonic() + 10 * UNIT
    while not (found := next(filter(None, map(_CONTROL_LINE.search, list(server.output))), None)):
        assert time.monotonic() < deadline, "no control plane:\n" + "".join(server.output)
        time.sleep(0.05)
    admin = authority.mint("operator", admin=True)
    control = httpx.Client(base_url=found[1], headers={"Authorization": f"Bearer {admin}"}, timeout=10 * UNIT)
    target = Target(host, int(port), tokens, secret, control)
    target.revoke(tokens["revoked"])
    return target


def _tampered(token: str) -> str:
    """The token with its grants widened and the original signature kept."""
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["pub"] = claims["subs"] = [">"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


def _authed(t: Target, token: str = "valid", protocol: str = "tidings.v1.json") -> socket.socket:
    sock = w.handshake(t.host, t.port, protocol=protocol)
    if protocol.endswith("msgpack"):
        sock.sendall(
            w.frame(w.BINARY, msgspec.msgpack.encode({"op": "hello", "token": t.tokens[token], "rid": 1}))
        )
        _opcode, payload = w.read_frame(sock)
        assert msgspec.msgpack.decode(payload)["op"] == "welcome"
    else:
        first = w.hello(sock, t.tokens[token])
        assert first["op"] == "welcome", first
    return sock


def _until_close(sock: socket.socket, timeout: float = 5.0) -> Outcome:
    frames, code, _ = w.frames_until_close(sock, timeout)
    return Outcome(errors=[f["code"] for f in frames if f.get("op") == "error"], close=code)


def _alive(sock: socket.socket, topic: str = "sig/hostile/alive") -> bool:
    """Whether the session still answers: a publish to ``topic`` gets its puback."""
    try:
        sock.sendall(w.text({"op": "pub", "topic": topic, "body": 1, "rid": 999_999}))
    except ConnectionError:
        return False
    sock.settimeout(5)
    while True:
        try:
            opcode, payload = w.read_frame(sock)
        except ConnectionError:
            return False
        if opcode == w.CLOSE:
            return False
        if opcode != w.TEXT:
            continue
        decoded = json.loads(payload)
        for frame in decoded if isinstance(decoded, list) else [decoded]:
            if frame.get("rid") == 999_999:
                return bool(frame["op"] == "puback")


def huge_length(t: Target) -> Outcome:
    sock = _authed(t)
    sock.sendall(w.frame(w.TEXT, b"", length=1 << 62)[:10])  # the header only: 4 EiB announced
    return _until_close(sock)


def fragments_over_limit(t: Target) -> Outcome:
    sock = _authed(t)
    chunk = b" " * (600 * 1024)
    sock.sendall(w.frame(w.TEXT, chunk, fin=False) + w.frame(w.CONT, chunk, fin=False))
    return _until_close(sock)


def slowloris(t: Target) -> Outcome:
    """An upgrade request dribbled out a byte at a time: dropped at the handshake deadline."""
    sock = socket.create_connection((t.host, t.port))
    request = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: " + b"a" * 100
    )
    start = time.monotonic()
    sock.settimeout(0.2)
    try:
        for byte in request:
            sock.sendall(bytes([byte]))
            try:
                if sock.recv(1024) == b"":
                    break
            except TimeoutError:
                continue
    except OSError:
        pass
    finally:
        sock.close()
    return Outcome(seconds=time.monotonic() - start)


def many_subscriptions(t: Target) -> Outcome:
    sock = _authed(t)
    with contextlib.suppress(ConnectionError):  # closed for too many refusals (max_refusals)
        for batch in range(10):
            frames = [
                {"op": "sub", "topic": f"sig/hostile/s{batch}-{i}", "rid": batch * 1000 + i}
                for i in range(1000)
            ]
            sock.sendall(w.frame(w.TEXT, json.dumps(frames).encode()))
    subbed = 0
    errors: list[str] = []
    sock.settimeout(10)
    while subbed + len(errors) < 10_000:
        try:
            opcode, payload = w.read_frame(sock)
        except ConnectionError:  # reset: it closed with what we sent still unread
            break
        if opcode != w.TEXT:
            break
        decoded = json.loads(payload)
        for frame in decoded if isinstance(decoded, list) else [decoded]:
            if frame["op"] == "subbed":
                subbed += 1
            elif frame["op"] == "error":
                errors.append(frame["code"])
    out = Outcome(
        errors=sorted(set(errors)), still_open=_alive(sock), extra={"subbed": subbed, "refused": len(errors)}
    )
    sock.close()
    return out


def malformed_json_before_hello(t: Target) -> Outcome:
    sock = w.handshake(t.host, t.port)
    sock.sendall(w.frame(w.TEXT, b'{"op": "hello", "token": '))
    return _until_close(sock)


def malformed_json_after_hello(t: Target) -> Outcome:
    sock = _authed(t)
    sock.sendall(w.frame(w.TEXT, b'{"op": "pub", "topic": [1, 2'))
    errors = [w.next_frame(sock)["code"]]
    out = Outcome(errors=errors, still_open=_alive(sock))
    sock.close()
    return out


def malformed_msgpack(t: Target) -> Outcome:
    sock = _authed(t, protocol="tidings.v1.msgpack")
    sock.sendall(w.frame(w.BINARY, b"\xc1\xde\xad"))  # 0xc1 is never used in msgpack
    _opcode, payload = w.read_frame(sock)
    out = Outcome(errors=[msgspec.msgpack.decode(payload)["code"]])
    sock.sendall(w.frame(w.BINARY, msgspec.msgpack.encode({"op": "pub", "topic": "sig/hostile/m", "rid": 5})))
    _opcode, payload = w.read_frame(sock)
    out.still_open = msgspec.msgpack.decode(payload)["op"] == "puback"
    sock.close()
    return out


def wrong_subprotocol(t: Target) -> Outcome:
    sock, status, _ = w.http_upgrade(t.host, t.port, protocol="mqtt, tidings.v0.json")
    sock.close()
    return Outcome(http=status)


def _token(name: str) -> Callable[[Target], Outcome]:
    def attack(t: Target) -> Outcome:
        sock = w.handshake(t.host, t.port)
        sock.sendall(w.text({"op": "hello", "token": t.tokens[name], "rid": 1}))
        return _until_close(sock)

    attack.__name__ = f"token_{name}"
    return attack


WIDER_THAN_GRANT = ["conv/>", ">", "conv/*/x", "*/team-1/>", "conv/team-2/>", "sig/>"]


def wider_wildcards(t: Target) -> Outcome:
    """A client granted ``conv/team-1/>`` asks for more; every ask is refused and it stays open."""
    sock = _authed(t, "narrow")
    frames = [{"op": "sub", "topic": p, "rid": i} for i, p in enumerate(WIDER_THAN_GRANT)]
    sock.sendall(w.frame(w.TEXT, json.dumps(frames).encode()))
    errors = [f.get("code", f["op"]) for f in w.read_frames(sock, len(WIDER_THAN_GRANT))]
    out = Outcome(errors=sorted(set(errors)), still_open=_alive(sock, "conv/team-1/alive"))
    sock.close()
    return out


def cross_origin(t: Target) -> Outcome:
    sock, status, _ = w.http_upgrade(t.host, t.port, headers={"Origin": "https://evil.example"})
    sock.close()
    return Outcome(http=status)


def allowed_origin(t: Target) -> Outcome:
    sock, status, _ = w.http_upgrade(t.host, t.port, headers={"Origin": "https://app.example"})
    sock.close()
    return Outcome(http=status)


ATTACKS: dict[str, Callable[[Target], Outcome]] = {
    f.__name__: f
    for f in [
        huge_length,
        fragments_over_limit,
        slowloris,
        many_subscriptions,
        malformed_json_before_hello,
        malformed_json_after_hello,
        malformed_msgpack,
        wrong_subprotocol,
        _token("expired"),
        _token("forged"),
        _token("tampered"),
        _token("none_alg"),
        _token("future"),
        _token("missing"),
        _token("revoked"),
        wider_wildcards,
        cross_origin,
        allowed_origin,
    ]
}


def attack_forever(
    target: Target, until: float, slowloris_connections: int = 100, only: list[str] | None = None
) -> dict[str, int]:
    """Run every attack (or those in ``only``) in turn until ``until`` (monotonic), with
    slowloris connections held open alongside; return how many times each ran."""
    attacks = {name: f for name, f in ATTACKS.items() if only is None or name in only}
    runs: dict[str, int] = dict.fromkeys(attacks, 0)
    if only is not None and "slowloris" not in only:
        slowloris_connections = 0

    def loris() -> None:
        while time.monotonic() < until:
            slowloris(target)

    threads = [threading.Thread(target=loris, daemon=True) for _ in range(slowloris_connections)]
    for th in threads:
        th.start()
    while time.monotonic() < until:
        if set(attacks) <= {"slowloris"}:
            time.sleep(0.1)
        for name, attack in attacks.items():
            if name == "slowloris":
                continue
            attack(target)
            runs[name] += 1
    return runs


async def healthy_latencies(
    url: str, token: str, seconds: float, rate: float = 400.0
) -> tuple[list[float], int]:
    """Healthy traffic: a publisher and a subscriber over the SDK; one-way latency of each message."""
    out: list[float] = []
    async with (
        tidings.connect(url, token, name="healthy-sub") as sub_agent,
        tidings.connect(url, token, name="healthy-pub") as pub_agent,
    ):
        sub = await sub_agent.subscribe("sig/healthy/>")

        async def receive() -> None:
            async for msg in sub:
                out.append(time.perf_counter() - msg.body)

        reader = asyncio.create_task(receive())
        end = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < end:
            pub_agent.publish_nowait("sig/healthy/x", time.perf_counter())
            sent += 1
            await asyncio.sleep(1 / rate)
        await asyncio.sleep(0.5)
        reader.cancel()
    return out, sent


@dataclass
class UnderAttack:
    """Healthy p99 (ms) without and with the attacker, what it ran, what the healthy clients got."""

    p99_base: float
    p99_attack: float
    runs: dict[str, int]
    sent: int
    received: int

    @property
    def ratio(self) -> float:
        return self.p99_attack / self.p99_base


async def p99_under(
    target: Target, only: list[str] | None, seconds: float = 3.0, attacker_prefix: Sequence[str] = ()
) -> UnderAttack:
    """Healthy p99 without, then with, an attacker process running ``only`` (None: every case).

    ``attacker_prefix`` goes before the attacker's command (e.g. ``nice -n 19``).
    """
    url = f"ws://{target.host}:{target.port}/"
    token = target.tokens["valid"]
    baseline, _ = await healthy_latencies(url, token, seconds)
    attacker = await asyncio.create_subprocess_exec(
        *attacker_prefix,
        *[sys.executable, "-m", "tests.reliability.hostile", target.host, str(target.port), str(seconds + 2)],
        json.dumps(target.tokens),
        *([",".join(only)] if only else []),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        await asyncio.sleep(1.0)
        attacked, sent = await healthy_latencies(url, token, seconds)
        out, _ = await asyncio.wait_for(attacker.communicate(), 60 * UNIT)
    finally:
        if attacker.returncode is None:
            attacker.kill()
            await attacker.wait()
    result = UnderAttack(
        percentile(sorted(baseline), 0.99) * 1000,
        percentile(sorted(attacked), 0.99) * 1000,
        json.loads(out),
        sent,
        len(attacked),
    )
    print(
        f"\nhealthy p99 {result.p99_base:.2f} ms without attack, {result.p99_attack:.2f} ms under"
        f" attack ({result.ratio:.2f}x); {len(baseline)} / {len(attacked)} samples;"
        f" attacks: {out.decode().strip()}"
    )
    return result


if __name__ == "__main__":
    # python -m tests.reliability.hostile HOST PORT SECONDS TOKENS_JSON [ATTACK,ATTACK...]
    host, port, seconds, tokens = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
    only = sys.argv[5].split(",") if len(sys.argv) > 5 else None
    counts = attack_forever(Target(host, port, tokens), time.monotonic() + seconds, only=only)
    print(json.dumps(counts), flush=True)

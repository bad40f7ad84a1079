"""Hostile input against a real ``tidings serve``: each case refused with its documented code,
no unauthorised delivery, and healthy clients' p99 latency measured with and without an
attacker process running every case in a loop."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

import tidings
from tests.conftest import UNIT
from tests.reliability import rawws as w
from tests.reliability.hostile import ATTACKS, ENV, WIDER_THAN_GRANT, Outcome, Target, p99_under, prepare
from tests.reliability_helpers import ServerProcess
from tidings.auth import Authority


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data = tmp_path_factory.mktemp("hostile") / "data"
    server = ServerProcess(data, env=ENV)
    target = prepare(server, data)
    yield target
    assert target.control is not None
    target.control.close()
    assert server.terminate() == 0


# Every case and the outcome docs/protocol.md (sections 2, 3, 4, 12, 13) documents for it.
EXPECTED: dict[str, Outcome] = {
    "huge_length": Outcome(close=1009),  # refused on the header, no error frame
    "fragments_over_limit": Outcome(errors=["frame_too_large"], close=1009),
    "malformed_json_before_hello": Outcome(errors=["invalid_frame"], close=1008),
    "malformed_json_after_hello": Outcome(errors=["invalid_frame"], still_open=True),
    "malformed_msgpack": Outcome(errors=["invalid_frame"], still_open=True),
    "wrong_subprotocol": Outcome(http=400),
    "token_expired": Outcome(errors=["unauthorized"], close=1008),
    "token_forged": Outcome(errors=["unauthorized"], close=1008),
    "token_tampered": Outcome(errors=["unauthorized"], close=1008),
    "token_none_alg": Outcome(errors=["unauthorized"], close=1008),
    "token_future": Outcome(errors=["unauthorized"], close=1008),
    "token_missing": Outcome(errors=["unauthorized"], close=1008),
    "token_revoked": Outcome(errors=["unauthorized"], close=1008),  # revoked through the control plane
    "wider_wildcards": Outcome(errors=["forbidden"], still_open=True),
    "cross_origin": Outcome(http=403),
    "allowed_origin": Outcome(http=101),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_hostile_case_is_refused_with_its_documented_code(target: Target, name: str) -> None:
    outcome = ATTACKS[name](target)
    expected = EXPECTED[name]
    assert (outcome.http, outcome.errors, outcome.close, outcome.still_open) == (
        expected.http,
        expected.errors,
        expected.close,
        expected.still_open,
    )


def test_slowloris_handshake_is_dropped_at_the_deadline(target: Target) -> None:
    outcome = ATTACKS["slowloris"](target)
    assert 0.9 < outcome.seconds < 3 * UNIT, outcome  # hello_timeout is 1 s here; 100 bytes take 20 s


def test_ten_thousand_subscriptions_on_one_connection(target: Target) -> None:
    outcome = ATTACKS["many_subscriptions"](target)
    # max_subscriptions accepted, then limit_exceeded for each until max_refusals (1,000),
    # then the connection is closed (1008) and the rest is never decoded. What the client
    # reads back depends on whether its kernel kept the replies once the server reset it.
    assert outcome.extra["subbed"] <= 1000 and outcome.extra["refused"] <= 1002, outcome.extra
    assert set(outcome.errors) <= {"limit_exceeded"} and not outcome.still_open
    assert target.control is not None
    metrics = target.control.get("/metrics").text
    closes = [line for line in metrics.splitlines() if line.startswith("tidings_refusal_closes_total")]
    assert closes and float(closes[0].split()[-1]) >= 1, closes


def test_a_replayed_token_is_refused_once_it_has_expired(target: Target) -> None:
    """A token is a bearer credential: replayed while valid it works (short TTLs and revocation
    are the defence); replayed after its expiry it is refused, and the session it opened ends."""
    short = Authority(target.secret).mint("replayer", pub=[">"], subs=[">"], ttl=1)
    first = w.handshake(target.host, target.port)
    assert w.hello(first, short)["op"] == "welcome"
    outcome = _close_of(first, 4)
    assert outcome == (["unauthorized"], 1008)  # closed when the token expired
    again = w.handshake(target.host, target.port)
    again.sendall(w.text({"op": "hello", "token": short, "rid": 1}))
    assert _close_of(again) == (["unauthorized"], 1008)


def test_a_connection_holding_a_token_is_closed_when_it_is_revoked(target: Target) -> None:
    """Revoked through the control plane while in use: the session ends at once with 1008
    ``token revoked`` (no ``error`` frame), and the token is refused at ``hello`` from then on."""
    token = Authority(target.secret).mint("revokee", pub=[">"], subs=[">"])
    holder = w.handshake(target.host, target.port)
    assert w.hello(holder, token)["op"] == "welcome"
    started = time.monotonic()
    target.revoke(token)
    frames, code, reason = w.frames_until_close(holder, 5)
    assert (frames, code, reason) == ([], 1008, "token revoked")
    assert time.monotonic() - started < 1.0 * UNIT, "closed within a second of the revocation"
    again = w.handshake(target.host, target.port)
    again.sendall(w.text({"op": "hello", "token": token, "rid": 1}))
    assert _close_of(again) == (["unauthorized"], 1008)


def _close_of(sock: socket.socket, timeout: float = 5.0) -> tuple[list[str], int | None]:
    frames, code, _ = w.frames_until_close(sock, timeout)
    return [f["code"] for f in frames if f.get("op") == "error"], code


async def _unauthorised_deliveries(url: str, narrow: str, full: str) -> int:
    """A narrow client asks for wide patterns (refused) and its own; others publish everywhere."""
    async with (
        tidings.connect(url, narrow, name="narrow") as agent,
        tidings.connect(url, full, name="everywhere") as publisher,
    ):
        own = await agent.subscribe("conv/team-1/>", start="latest")
        for pattern in WIDER_THAN_GRANT:
            with pytest.raises(tidings.errors.Forbidden):
                await agent.subscribe(pattern)
        for topic in ["conv/team-2/x", "sig/team-2/x", "conv/team-1/x", "ctl/narrow/x", "sig/team-1/x"]:
            await publisher.publish(topic, topic)
        got: list[str] = []
        async for msg in own:
            got.append(msg.topic)
            if msg.topic == "conv/team-1/x":
                break
        await asyncio.sleep(0.3)
        return sum(1 for t in got if not t.startswith("conv/team-1/"))


#: Every case but the 10,000 subscriptions, which stalls the event loop (measured separately below).
PER_MESSAGE_CASES = [name for name in ATTACKS if name != "many_subscriptions"]


async def test_healthy_p99_under_attack_and_no_unauthorised_delivery(target: Target) -> None:
    url = f"ws://{target.host}:{target.port}/"
    assert await _unauthorised_deliveries(url, target.tokens["narrow"], target.tokens["valid"]) == 0
    result = await p99_under(target, PER_MESSAGE_CASES)
    assert result.received == result.sent, "healthy messages were lost under attack"
    assert all(n > 0 for name, n in result.runs.items() if name != "slowloris"), result.runs
    # The acceptance figure (1.5x the p99 without attack) is measured by bench/hostile_p99.py,
    # with the attacker on a core of its own and no asyncio debug mode (docs/reliability.md).
    # Here everything shares the cores: healthy clients keep a sub-quarter-second p99.
    assert result.p99_attack < 250 * UNIT


async def test_healthy_clients_keep_being_served_during_a_subscription_flood(target: Target) -> None:
    """10,000 subs in 1,000-frame batches, over and over: the gateway works through each batch
    in slices of its event loop, so healthy clients keep being served; nothing is lost."""
    result = await p99_under(target, ["many_subscriptions"])
    assert result.runs["many_subscriptions"] > 0
    assert result.received == result.sent, "healthy messages were lost under the flood"
    assert result.p99_attack < 1000 * UNIT, "healthy clients waited a second or more"

"""Refused hellos past an address's budget are answered late (``gateway/tarpit.py``)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import start_gateway
from tests.gateway.wsclient import Raw, authed
from tidings.auth import Authority
from tidings.gateway import tarpit
from tidings.gateway.tarpit import Tarpit


async def _refused(url: str, *extra: dict[str, object]) -> tuple[float, dict[str, object], tuple[int, str]]:
    """A hello with a bad token (and ``extra`` frames after it): seconds to the answer, the
    error, the close."""
    raw = await Raw.open(url)
    started = time.monotonic()
    await raw.send({"op": "hello", "token": "not-a-token", "rid": 1}, *extra)
    error = await raw.expect("error")
    seconds = time.monotonic() - started
    return seconds, error, await raw.closed()


async def test_refusals_past_the_budget_wait_and_healthy_clients_do_not(authority: Authority) -> None:
    gw = await start_gateway(authority, refused_hellos=3, refusal_delay=0.6)
    try:
        for _ in range(3):
            seconds, error, close = await _refused(gw.url)
            assert seconds < 0.4 and error["code"] == "unauthorized" and close[0] == 1008
        # Past it: the same answer, late, whatever the client sends after its hello.
        late = asyncio.create_task(_refused(gw.url, {"op": "sub", "topic": "sig/x", "rid": 2}))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        ok = await authed(gw.url, authority.mint("ann", pub=[">"], subs=[">"]))
        assert time.monotonic() - started < 0.4, "a valid hello from the same address is not held"
        seconds, error, close = await late
        assert seconds >= 0.55
        assert error["code"] == "unauthorized" and error["rid"] == 1
        assert close[0] == 1008
        assert gw.stats.tarpitted == 1 and gw.tarpit.held == 0
        await ok.close()
    finally:
        await gw.stop()


async def test_a_client_gone_while_held_is_let_go(authority: Authority) -> None:
    gw = await start_gateway(authority, refused_hellos=1, refusal_delay=30)
    try:
        await _refused(gw.url)
        raw = await Raw.open(gw.url)
        await raw.send({"op": "hello", "token": "not-a-token", "rid": 1})
        for _ in range(100):
            if gw.tarpit.held:
                break
            await asyncio.sleep(0.01)
        assert gw.tarpit.held == 1
        raw.abort()
        for _ in range(300):
            if not gw.tarpit.held:
                break
            await asyncio.sleep(0.01)
        assert gw.tarpit.held == 0
    finally:
        await gw.stop()


def test_the_budget_refills_per_address_and_holds_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(tarpit.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(tarpit, "MAX_HELD", 2)
    pit = Tarpit(burst=10, delay_s=1.0)
    assert [pit.delay("a") for _ in range(10)] == [0.0] * 10
    assert pit.delay("a") == 1.0, "the burst is spent"
    assert pit.delay("b") == 0.0, "another address has its own"
    now[0] += 1.0  # a tenth of the burst a second
    assert pit.delay("a") == 0.0
    assert pit.delay("a") == 1.0
    assert pit.delay("a") == 0.0, "two held already: answered at once"
    assert (pit.held, pit.delayed) == (2, 2)
    pit.release()
    assert pit.delay("a") == 1.0
    assert Tarpit(burst=10, delay_s=0.0).delay("a") == 0.0, "a delay of 0 turns it off"


def test_only_so_many_addresses_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarpit, "MAX_ADDRESSES", 3)
    pit = Tarpit(burst=1, delay_s=1.0)
    for address in "abcd":
        pit.delay(address)
    assert pit.delay("a") == 0.0, "the least recently refused was forgotten: a full budget again"
    assert pit.delay("d") == 1.0


async def _flood_closed(url: str, token: str) -> float:
    """A connection that sends 12 refused frames (``max_refusals`` is 5): seconds to its close."""
    raw = await authed(url, token)
    started = time.monotonic()
    await raw.send(*[{"op": "pub", "topic": "nope/a/b", "body": 1, "rid": i} for i in range(12)])
    code, _ = await raw.closed(timeout=5)
    assert code == 1008
    return time.monotonic() - started


async def test_closes_for_refused_frames_past_the_budget_wait_ten_times_as_long(authority: Authority) -> None:
    """A close for ``max_refusals`` costs ten refused hellos of its address's budget and, past
    it, is held ten times ``refusal_delay``: a client flooding refused frames floods slowly."""
    gw = await start_gateway(authority, max_refusals=5, refused_hellos=10, refusal_delay=0.1)
    token = authority.mint("flooder", pub=[">"], subs=[">"])
    try:
        assert await _flood_closed(gw.url, token) < 0.5, "the budget covers one"
        held = await _flood_closed(gw.url, token)
        assert held >= 0.95, held
        assert gw.stats.tarpitted == 1 and gw.stats.refusal_closes == 2 and gw.tarpit.held == 0
    finally:
        await gw.stop()


def test_a_costly_refusal_takes_more_of_the_budget_and_waits_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarpit.time, "monotonic", lambda: 100.0)
    pit = Tarpit(burst=25, delay_s=1.0)
    assert pit.delay("a", cost=10) == 0.0
    assert pit.delay("a", cost=10) == 0.0
    assert pit.delay("a", cost=10) == 10.0, "the burst is spent: held ten times as long"
    assert pit.delay("a") == 0.0, "nothing was taken for the held one: 5 left"

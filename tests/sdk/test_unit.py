"""SDK parts that need no server: backoff, dedup, ids, causal defaults."""

from __future__ import annotations

import random
import statistics

import pytest

from tidings.protocol import frames as f
from tidings.sdk import Backoff, new_id
from tidings.sdk.context import causal_defaults, current_message
from tidings.sdk.dedup import SeenIds
from tidings.tracing import parse


def test_backoff_full_jitter_spreads_and_respects_the_cap() -> None:
    b = Backoff(base=0.1, cap=2.0, rng=random.Random(42))
    for attempt in range(12):
        ceiling = min(2.0, 0.1 * 2**attempt)
        samples = [b.delay(attempt) for _ in range(2000)]
        assert all(0 <= s <= ceiling for s in samples), "never above the cap or the doubling ceiling"
        # full jitter: uniform over [0, ceiling] -> mean ceiling/2, spread over the whole window
        assert statistics.mean(samples) == pytest.approx(ceiling / 2, rel=0.08)
        assert min(samples) < 0.05 * ceiling
        assert max(samples) > 0.95 * ceiling


def test_backoff_is_deterministic_with_a_seed_and_stops_after_max_attempts() -> None:
    a = list(Backoff(base=0.1, cap=1.0, max_attempts=5, rng=random.Random(7)).delays())
    b = list(Backoff(base=0.1, cap=1.0, max_attempts=5, rng=random.Random(7)).delays())
    assert a == b
    assert len(a) == 5
    with pytest.raises(ValueError, match="base"):
        Backoff(base=2.0, cap=1.0)


def test_seen_ids_forget_after_ttl_and_stay_bounded() -> None:
    now = [0.0]
    seen = SeenIds(ttl=10.0, max_entries=3, clock=lambda: now[0])
    seen.add("a")
    now[0] = 5.0
    seen.add("b")
    assert "a" in seen
    now[0] = 10.5
    assert "a" not in seen
    assert "b" in seen
    for key in "cdef":
        seen.add(key)
    assert len(seen) == 3
    assert "b" not in seen


def test_ids_are_unique_and_time_ordered() -> None:
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i[14] == "7" for i in ids), "UUID version 7"
    assert ids[0][:8] <= ids[-1][:8]


def test_causal_defaults_come_from_the_message_being_handled() -> None:
    parent, headers = causal_defaults(None, {})
    assert parent is None and parse(headers["traceparent"]) is not None  # a new trace
    upstream = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    msg = f.Msg(topic="conv/a/b", id="m1", sender="x", ts=1, headers={"traceparent": upstream})
    token = current_message.set(msg)
    try:
        parent, headers = causal_defaults(None, {})
        assert parent == "m1" and headers["tidings-parent-topic"] == "conv/a/b"
        # the same trace, a new span
        assert headers["traceparent"].split("-")[1] == "a" * 32 and headers["traceparent"] != upstream
        assert causal_defaults("explicit", {"traceparent": "mine"}) == ("explicit", {"traceparent": "mine"})
    finally:
        current_message.reset(token)

"""Each benchmark workload, for a moment, so the benchmark code cannot rot.

The figures are not asserted against targets here (a shared 2-core machine is too
noisy for that); they must only be real: something was delivered or acknowledged.
"""

from __future__ import annotations

from tidings.bench import w1, w2, w3, w4


def test_w1_fanout_smoke() -> None:
    r = w1.run(subscribers=5, duration=1.0, rate=500.0, members=5, pin=False)
    assert r["deliveries_per_s"] > 1000
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"]
    assert r["server_cpu_us_per_msg"] > 0


def test_w2_durable_publish_smoke() -> None:
    r = w2.run(publishers=8, duration=1.0, pin=False)
    assert r["acked_per_s"] > 100
    assert 0 < r["ack_p50_ms"] <= r["ack_p99_ms"]
    shared = w2.run(publishers=16, duration=1.0, connections=2, pin=False)
    assert shared["connections"] == 2
    assert shared["acked_per_s"] > 100


def test_w3_agent_swarm_smoke() -> None:
    r = w3.run(agents=20, conversations=2, rates=[5.0], duration=1.0, processes=1, pin=False)
    (step,) = r["steps"]
    assert step["published"] > 0
    assert step["delivered_per_s"] > 0
    assert step["errors"] == 0
    assert step["own_copies_per_s"] == 0  # each agent has a token of its own and echo off
    assert 0 < r["p50_ms"] <= r["p99_ms"]
    assert r["server_cpu_us_per_msg"] > 0


def test_w4_capacity_smoke() -> None:
    r = w4.run(connections=300, pin=False)
    assert r["connections"] == 300
    assert 0 < r["bytes_per_connection"] < 1_000_000
    assert r["server_cpu_us_per_msg"] > 0

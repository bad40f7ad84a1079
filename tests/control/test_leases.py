"""Presence leases without NATS: gateways' ``LeaseWriter`` over an in-memory bucket that
feeds a reader's ``LeaseBoard``, as the NATS engine's bucket and its follower do."""

from __future__ import annotations

import asyncio
import contextlib

from tidings.leases import LeaseBoard, LeaseWriter, lease_key, parse_key
from tidings.presence import PresenceTable


class Bucket:
    """A key-value bucket in memory that forwards every write to its readers, stamped with ``now``."""

    def __init__(self) -> None:
        self.now_ms = 1_000
        self.values: dict[str, bytes] = {}
        self.readers: list[LeaseBoard] = []
        self.writes = 0
        self.failing: set[str] = set()

    async def write(self, batch: dict[str, bytes | None]) -> set[str]:
        failed = set()
        for key, value in batch.items():
            if key in self.failing:
                failed.add(key)
                continue
            self.writes += 1
            if value is None:
                self.values.pop(key, None)
            else:
                self.values[key] = value
            for board in self.readers:
                board.apply(key, value, self.now_ms)
        return failed


def gateway(bucket: Bucket, name: str, lease_s: float = 3.0) -> tuple[PresenceTable, LeaseWriter]:
    table = PresenceTable()
    return table, LeaseWriter(table, name, lease_s, bucket.write)


def test_keys_name_the_gateway_and_any_agent() -> None:
    for agent in ("a", "team.7/planner", "ünï code", "x" * 100):
        assert parse_key(lease_key("g1", agent)) == ("g1", agent)


async def test_the_reader_merges_every_gateways_agents_with_its_own_table() -> None:
    bucket = Bucket()
    mine, _ = gateway(bucket, "g1")
    other, writer = gateway(bucket, "g2")
    board = LeaseBoard("g1", 3.0)
    bucket.readers.append(board)
    c1, c2, c3 = object(), object(), object()
    mine.connected(c1, "planner", "idle", ["plan"])
    other.connected(c2, "planner", "idle", ["code"])
    other.connected(c3, "critic", "idle", [])
    other.joined(c3, "conv/t/x")
    await writer.flush()
    assert bucket.writes == 2
    view = board.view(mine, bucket.now_ms)
    planner = view.get("planner")
    assert planner is not None and planner.connections == 2 and planner.capabilities == ["code", "plan"]
    assert view.members_online("conv/t/x") == ["critic"]
    assert [p.agent for p in view.agents(online=True)] == ["critic", "planner"]
    await asyncio.sleep(0.002)  # a later status wins across gateways
    other.update(c2, "busy", None)
    await writer.flush()
    assert board.view(mine, bucket.now_ms).get("planner").status == "busy"  # type: ignore[union-attr]
    await writer.flush()  # nothing changed: nothing written
    assert bucket.writes == 3

    other.disconnected(c3)
    await writer.flush()
    view = board.view(mine, bucket.now_ms)
    critic = view.get("critic")
    assert critic is not None and not critic.online and not view.is_online("critic")
    assert [p.agent for p in view.agents(online=False)] == ["critic"]


async def test_leases_of_a_silent_gateway_expire_and_renewals_keep_them() -> None:
    bucket = Bucket()
    mine, _ = gateway(bucket, "g1")
    other, writer = gateway(bucket, "g2")
    board = LeaseBoard("g1", 3.0)
    bucket.readers.append(board)
    other.connected(object(), "scout", "idle", [])
    await writer.flush()
    bucket.now_ms += 2_000
    await writer.flush(renew=True)  # renewed 2 s later: good for 3 s from there
    assert board.view(mine, bucket.now_ms + 2_999).is_online("scout")
    view = board.view(mine, bucket.now_ms + 3_000)  # the gateway died after its renewal
    assert not view.is_online("scout")
    gone = view.get("scout")
    assert gone is not None and gone.since_ms == bucket.now_ms + 3_000


async def test_a_failed_write_is_retried_and_release_deletes_every_lease() -> None:
    bucket = Bucket()
    table, writer = gateway(bucket, "g2")
    conn = object()
    table.connected(conn, "scout", "idle", [])
    bucket.failing.add(lease_key("g2", "scout"))
    await writer.flush()
    assert bucket.values == {}
    bucket.failing.clear()
    await writer.flush()
    assert list(bucket.values) == [lease_key("g2", "scout")]
    await writer.release()
    assert bucket.values == {}


async def test_the_writer_task_writes_changes_and_renews() -> None:
    bucket = Bucket()
    table, writer = gateway(bucket, "g2", lease_s=0.15)  # renewals every 0.05 s
    task = asyncio.create_task(writer.run())

    async def writes(at_least: int) -> int:
        for _ in range(200):  # a second, even on a busy machine
            if bucket.writes >= at_least:
                break
            await asyncio.sleep(0.005)
        return bucket.writes

    try:
        table.connected(object(), "scout", "idle", [])
        assert await writes(1) >= 1  # written behind at once, not at the next renewal
        assert list(bucket.values) == [lease_key("g2", "scout")]
        assert await writes(3) >= 3  # then renewed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

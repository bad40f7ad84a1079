"""Appending, reading, dedup and the append subscription of the durable store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tidings.errors import InvalidTopic, StorageError
from tidings.log import AppendResult, RetentionPolicy, Store, StoredRecord
from tidings.protocol.topics import shard_of

TOPIC = "conv/team-7/task-42"


async def test_round_trip(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, trim_interval=None)
    results = [await store.append(TOPIC, f"m{i}", 1000 + i, f"payload {i}".encode()) for i in range(5)]
    offsets = [r.offset for r in results]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5
    assert not any(r.duplicate for r in results)
    records = store.read(TOPIC, 0)
    assert [(r.offset, r.id, r.ts, r.payload) for r in records] == [
        (offsets[i], f"m{i}", 1000 + i, f"payload {i}".encode()) for i in range(5)
    ]
    assert all(r.topic == TOPIC for r in records)
    assert store.head(TOPIC) == offsets[-1]
    assert store.head("conv/team-7/other") == 0
    assert store.read("conv/team-7/other", 0) == []
    assert store.topics() == [TOPIC]
    await store.close()


async def test_offsets_increase_per_topic_across_shards(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, shards=4, trim_interval=None)
    topics = [f"conv/g{g}/t" for g in range(8)]
    results = await asyncio.gather(*(store.append(t, f"id{i}", i, b"x") for i in range(20) for t in topics))
    for t in topics:
        offsets = [r.offset for r in store.read(t, 0)]
        assert len(offsets) == 20
        assert offsets == sorted(offsets) and len(set(offsets)) == 20
    assert len({r.offset for r in results}) < len(results)  # offsets are per shard, not global
    assert sorted(store.topics()) == sorted(topics)
    await store.close()


async def test_read_pages_with_after_and_limit(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, shards=1, segment_bytes=700, trim_interval=None)
    for i in range(30):
        await store.append(TOPIC, f"m{i}", i, bytes([i]) * 100)
        await store.append("conv/team-7/noise", f"n{i}", i, b"n" * 50)
    seen: list[StoredRecord] = []
    after = 0
    while page := store.read(TOPIC, after, limit=7):
        assert len(page) <= 7
        seen.extend(page)
        after = page[-1].offset
    assert [r.id for r in seen] == [f"m{i}" for i in range(30)]
    assert [r.payload for r in seen] == [bytes([i]) * 100 for i in range(30)]
    assert store.read(TOPIC, store.head(TOPIC)) == []
    assert store.read(TOPIC, 0, limit=0) == []
    assert len(list((tmp_path / "shard-000").glob("*.log"))) > 5  # the pages crossed segments
    await store.close()


async def test_offset_at_time(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, trim_interval=None)
    offsets = [(await store.append(TOPIC, f"m{i}", 1000 * (i + 1), b"x")).offset for i in range(5)]
    assert store.offset_at_time(TOPIC, 0) == 0
    assert store.offset_at_time(TOPIC, 1000) == 0
    assert store.offset_at_time(TOPIC, 2500) == offsets[1]
    assert store.offset_at_time(TOPIC, 3000) == offsets[1]
    assert store.offset_at_time(TOPIC, 99_000) == offsets[-1]
    assert [r.ts for r in store.read(TOPIC, store.offset_at_time(TOPIC, 2500))] == [3000, 4000, 5000]
    assert store.offset_at_time("conv/team-7/none", 5) == 0
    await store.close()


async def test_duplicate_ids_store_nothing(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, trim_interval=None)
    first = await store.append(TOPIC, "same", 1, b"one")
    again = await store.append(TOPIC, "same", 2, b"two")
    assert again == AppendResult(first.offset, True)
    other_topic = await store.append("conv/team-7/elsewhere", "same", 3, b"three")
    assert not other_topic.duplicate
    assert [r.payload for r in store.read(TOPIC, 0)] == [b"one"]
    await store.close()

    store = await Store.open(tmp_path, trim_interval=None)
    assert await store.append(TOPIC, "same", 4, b"four") == AppendResult(first.offset, True)
    assert [r.payload for r in store.read(TOPIC, 0)] == [b"one"]
    await store.close()


async def test_a_dedup_window_forgets_old_ids(tmp_path: Path) -> None:
    """An id is remembered for the topic's dedup window, measured on record times."""

    def policy(topic: str) -> RetentionPolicy:
        return RetentionPolicy(dedup_window_ms=1000) if topic == TOPIC else RetentionPolicy()

    store = await Store.open(tmp_path, retention=policy, trim_interval=None)
    first = await store.append(TOPIC, "job-1", 10_000, b"one")
    assert await store.append(TOPIC, "job-1", 11_000, b"again") == AppendResult(first.offset, True)
    later = await store.append(TOPIC, "job-1", 11_001, b"later")  # past the window: stored anew
    assert not later.duplicate and later.offset > first.offset
    assert await store.append(TOPIC, "job-1", 11_500, b"x") == AppendResult(later.offset, True)
    other = "conv/team-7/no-window"
    kept = await store.append(other, "job-1", 0, b"a")
    assert (await store.append(other, "job-1", 10**9, b"b")).duplicate and kept.offset
    await store.close()
    store = await Store.open(tmp_path, retention=policy, trim_interval=None)  # the same after a restart
    assert await store.append(TOPIC, "job-1", 12_000, b"y") == AppendResult(later.offset, True)
    assert [r.payload for r in store.read(TOPIC, 0)] == [b"one", b"later"]
    await store.close()


async def test_concurrent_duplicates_get_the_original_offset(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, trim_interval=None)
    results = await asyncio.gather(*(store.append(TOPIC, "same", i, b"p") for i in range(10)))
    assert [r.duplicate for r in results] == [False] + [True] * 9
    assert {r.offset for r in results} == {results[0].offset}
    assert len(store.read(TOPIC, 0)) == 1
    await store.close()


async def test_subscribers_see_durable_records_in_order_before_acks(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, shards=2, trim_interval=None)
    topics = [f"conv/g{g}/t" for g in range(6)]
    acked: set[tuple[str, int]] = set()
    seen: list[StoredRecord] = []

    def on_append(records: list[StoredRecord]) -> None:
        for record in records:
            assert (record.topic, record.offset) not in acked  # announced before the append returns
            assert store.read(record.topic, record.offset - 1, limit=1)[0] == record  # already readable
            seen.append(record)

    store.subscribe_appends(on_append)

    async def publish(topic: str, i: int) -> None:
        result = await store.append(topic, f"id{i}", i, b"p%d" % i)
        acked.add((topic, result.offset))

    await asyncio.gather(*(publish(t, i) for i in range(30) for t in topics))
    await store.append(topics[0], "id0", 0, b"dup")  # a duplicate is not announced
    assert len(seen) == 30 * len(topics)
    for shard in range(2):
        offsets = [r.offset for r in seen if shard_of(r.topic, 2) == shard]
        assert offsets == sorted(offsets)
    store.unsubscribe_appends(on_append)
    await store.append(topics[0], "late", 0, b"x")
    assert len(seen) == 30 * len(topics)
    await store.close()


async def test_read_then_follow_has_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, shards=1, trim_interval=None)
    writer = asyncio.gather(*(store.append(TOPIC, f"id{i}", i, b"x") for i in range(200)))
    await asyncio.sleep(0)
    for _ in range(3):
        await asyncio.sleep(0.001)
    # The seamless handoff: read, then follow from the last offset read, with no await between.
    got = [r.offset for r in store.read(TOPIC, 0, limit=10_000)]
    last = got[-1] if got else 0
    store.subscribe_appends(lambda records: got.extend(r.offset for r in records if r.offset > last))
    await writer
    assert got == [r.offset for r in store.read(TOPIC, 0, limit=10_000)]
    assert len(got) == 200
    await store.close()


async def test_a_subscriber_that_raises_does_not_stop_the_store(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, trim_interval=None)

    def broken(records: list[StoredRecord]) -> None:
        raise RuntimeError("subscriber bug")

    store.subscribe_appends(broken)
    assert not (await store.append(TOPIC, "a", 1, b"x")).duplicate
    assert len(store.read(TOPIC, 0)) == 1
    await store.close()


async def test_directory_is_locked_and_shard_count_fixed(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, shards=4, trim_interval=None)
    with pytest.raises(StorageError):
        await Store.open(tmp_path, shards=4, trim_interval=None)
    await store.close()
    with pytest.raises(StorageError, match="4 shards"):
        await Store.open(tmp_path, shards=8, trim_interval=None)
    store = await Store.open(tmp_path, shards=4, trim_interval=None)
    await store.close()
    await store.close()  # idempotent


async def test_shard_count_defaults_to_one_and_then_to_the_directory_s(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "new", trim_interval=None)
    assert len(store.shards) == 1
    await store.close()
    store = await Store.open(tmp_path / "old", shards=4, trim_interval=None)
    await store.append(TOPIC, "a", 1, b"x")
    await store.close()
    store = await Store.open(tmp_path / "old", trim_interval=None)  # unset: what it was created with
    assert len(store.shards) == 4
    assert [r.id for r in store.read(TOPIC, 0)] == ["a"]
    await store.close()


async def test_refuses_bad_input_and_appends_after_close(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, trim_interval=None)
    with pytest.raises(InvalidTopic):
        await store.append("not-a-topic", "a", 1, b"x")
    with pytest.raises(ValueError, match="over the limit"):
        await store.append(TOPIC, "big", 1, bytes(17 * 1024 * 1024))
    await store.close()
    with pytest.raises(StorageError):
        await store.append(TOPIC, "a", 1, b"x")

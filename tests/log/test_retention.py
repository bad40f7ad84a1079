"""Retention: count, age and bytes limits; trim points and offsets survive restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.log.filesystems import segment_files
from tidings.log import RetentionPolicy, Store
from tidings.log.record import RECORD_OVERHEAD

TOPIC = "conv/team-7/task-42"
OTHER = "conv/team-7/other"


def keep(**limits: int) -> RetentionPolicy:
    return RetentionPolicy(**limits)


async def fill(store: Store, n: int, topic: str = TOPIC, payload: bytes = b"x" * 100) -> list[int]:
    return [(await store.append(topic, f"m{i}", 1000 * (i + 1), payload)).offset for i in range(n)]


async def test_trim_by_count(tmp_path: Path) -> None:
    policy = {TOPIC: keep(max_messages=3)}
    store = await Store.open(
        tmp_path, retention=lambda t: policy.get(t, RetentionPolicy()), trim_interval=None
    )
    offsets = await fill(store, 10)
    other = await fill(store, 10, OTHER)
    assert await store.trim() == 7
    assert [r.offset for r in store.read(TOPIC, 0)] == offsets[-3:]
    assert store.trimmed_through(TOPIC) == offsets[6]
    assert store.head(TOPIC) == offsets[-1]
    assert [r.offset for r in store.read(OTHER, 0)] == other  # unlimited
    assert store.trimmed_through(OTHER) == 0
    assert await store.trim() == 0
    # A trimmed id is no longer a duplicate: dedup is bounded by retention.
    again = await store.append(TOPIC, "m0", 1, b"again")
    assert not again.duplicate and again.offset > offsets[-1]
    assert (await store.append(TOPIC, "m9", 1, b"x")).duplicate
    await store.close()


async def test_trim_by_age(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, retention=lambda t: keep(max_age_ms=5000), trim_interval=None)
    offsets = await fill(store, 10)  # ts 1000 .. 10000
    assert await store.trim(now_ms=12_000) == 6  # keeps ts >= 7000
    assert [r.ts for r in store.read(TOPIC, 0)] == [7000, 8000, 9000, 10000]
    assert store.trimmed_through(TOPIC) == offsets[5]
    assert store.offset_at_time(TOPIC, 0) == offsets[5]
    await store.close()


async def test_trim_by_bytes(tmp_path: Path) -> None:
    size = RECORD_OVERHEAD + len(TOPIC) + len("m0") + 100
    store = await Store.open(tmp_path, retention=lambda t: keep(max_bytes=3 * size + 10), trim_interval=None)
    offsets = await fill(store, 10)
    assert await store.trim() == 7
    assert [r.offset for r in store.read(TOPIC, 0)] == offsets[-3:]
    await store.close()


async def test_trim_points_survive_reopen_and_offsets_are_never_reused(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, shards=1, retention=lambda t: keep(max_messages=2), trim_interval=None)
    offsets = await fill(store, 6)
    await fill(store, 6, OTHER)
    await store.trim()
    await store.close()

    # Reopened without retention: what was trimmed stays trimmed.
    store = await Store.open(tmp_path, shards=1, trim_interval=None)
    assert store.trimmed_through(TOPIC) == offsets[3]
    assert [r.offset for r in store.read(TOPIC, 0)] == offsets[-2:]
    assert store.head(TOPIC) == offsets[-1]
    newest = store.head(OTHER)
    assert (await store.append(TOPIC, "new", 1, b"x")).offset > newest
    await store.close()


async def test_fully_trimmed_segments_are_deleted(tmp_path: Path) -> None:
    policy = {TOPIC: keep(max_messages=0)}
    store = await Store.open(
        tmp_path,
        shards=1,
        segment_bytes=1000,
        retention=lambda t: policy.get(t, RetentionPolicy()),
        trim_interval=None,
    )
    offsets = await fill(store, 40)
    kept = await store.append(OTHER, "keep", 1, b"k")  # pins the segment it lands in
    await fill(store, 10, topic="conv/team-7/third")
    before = segment_files(tmp_path)
    assert len(before) >= 8
    assert await store.trim() == 40
    before_bases = [int(p.stem) for p in before]
    after_bases = [int(p.stem) for p in segment_files(tmp_path)]
    holding_kept = max(b for b in before_bases if b <= kept.offset)
    assert after_bases[0] == holding_kept  # every segment of only TOPIC's records is gone
    assert set(after_bases) <= set(before_bases) and len(after_bases) < len(before_bases) - 5
    assert store.read(TOPIC, 0) == []
    assert store.trimmed_through(TOPIC) == store.head(TOPIC) == offsets[-1]
    assert [r.offset for r in store.read(OTHER, 0)] == [kept.offset]
    await store.close()

    store = await Store.open(tmp_path, shards=1, segment_bytes=1000, trim_interval=None)
    assert store.trimmed_through(TOPIC) == offsets[-1]
    assert [r.offset for r in store.read(OTHER, 0)] == [kept.offset]
    assert len(store.read("conv/team-7/third", 0)) == 10
    await store.close()


async def test_everything_trimmed_then_restart_keeps_offsets_rising(tmp_path: Path) -> None:
    store = await Store.open(
        tmp_path, shards=1, segment_bytes=1000, retention=lambda t: keep(max_messages=0), trim_interval=None
    )
    offsets = await fill(store, 30)
    await store.trim()
    assert len(segment_files(tmp_path)) == 1
    await store.close()
    store = await Store.open(tmp_path, shards=1, segment_bytes=1000, trim_interval=None)
    assert store.head(TOPIC) == offsets[-1]
    assert store.topics() == [TOPIC]
    assert (await store.append(TOPIC, "after", 1, b"x")).offset > offsets[-1]
    await store.close()


async def test_background_trim_runs(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, retention=lambda t: keep(max_messages=1), trim_interval=0.01)
    offsets = await fill(store, 5)
    for _ in range(500):  # a pass may run mid-fill and trim less; the next one catches up
        if store.trimmed_through(TOPIC) == offsets[-2]:
            break
        await asyncio.sleep(0.01)
    assert store.trimmed_through(TOPIC) == offsets[-2]
    await store.close()

"""Group commit batches concurrent appends; a failed sync is fatal and never acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import UNIT
from tests.log.filesystems import (
    CountingFileSystem,
    FailingFileSystem,
    HeldFileSystem,
    OneShardFailingFileSystem,
)
from tidings.errors import StorageError, SyncFailed
from tidings.log import AppendResult, Store
from tidings.log.shard import settle
from tidings.protocol.topics import shard_of

TOPIC = "conv/team-7/task-42"


async def test_concurrent_appends_share_fdatasyncs(tmp_path: Path) -> None:
    fs = CountingFileSystem()
    store = await Store.open(tmp_path, shards=1, files=fs, trim_interval=None)
    before = fs.syncs
    results = await asyncio.gather(*(store.append(TOPIC, f"id{i}", i, b"x" * 200) for i in range(64)))
    assert len({r.offset for r in results}) == 64
    stats = store.shards[0].stats
    assert stats.records == 64
    assert stats.syncs <= 4
    assert stats.max_batch >= 16
    assert fs.syncs - before <= 8  # batch syncs plus the occasional preallocation
    await store.close()


async def test_batches_form_while_a_sync_is_in_flight(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, shards=1, trim_interval=None)

    async def publisher(n: int) -> None:
        for i in range(20):
            await store.append(TOPIC, f"{n}-{i}", i, b"x" * 200)

    await asyncio.gather(*(publisher(n) for n in range(16)))
    stats = store.shards[0].stats
    assert stats.records == 320
    assert stats.syncs < 320 // 4
    assert stats.mean_batch > 4
    await store.close()


async def test_what_a_sync_sets_free_joins_the_batch_queued_during_it(tmp_path: Path) -> None:
    """A publisher answered by a sync publishes again a loop turn later: that append goes in
    one batch with what queued during the sync, not in a batch of its own (``Shard._gather``)."""
    fs = HeldFileSystem()
    store = await Store.open(tmp_path, shards=1, files=fs, trim_interval=None)
    loop = asyncio.get_running_loop()
    outcomes = {name: loop.create_future() for name in "abc"}

    def done(name: str) -> Callable[[AppendResult | BaseException], None]:
        return partial(settle, outcomes[name])

    def a_done(outcome: AppendResult | BaseException) -> None:
        done("a")(outcome)
        loop.call_soon(store.submit, TOPIC, "c", 3, b"c", done("c"))  # the publisher of "a" again

    fs.armed = True
    store.submit(TOPIC, "a", 1, b"a", a_done)
    await asyncio.to_thread(fs.entered.wait, 10 * UNIT)  # "a" is being synced
    store.submit(TOPIC, "b", 2, b"b", done("b"))
    fs.release.set()
    results = await asyncio.wait_for(asyncio.gather(*outcomes.values()), 10 * UNIT)
    assert [r.offset for r in results] == [1, 2, 3]
    stats = store.shards[0].stats
    assert (stats.syncs, stats.max_batch) == (2, 2)  # [a], then [b, c]
    await store.close()


async def test_an_idle_shard_syncs_a_lone_append_at_once(tmp_path: Path) -> None:
    """With nothing queued when a sync ends, the shard goes idle: the next append is not held."""
    store = await Store.open(tmp_path, shards=1, trim_interval=None)
    await store.append(TOPIC, "a", 1, b"a")
    assert not store.shards[0]._writing
    await store.append(TOPIC, "b", 2, b"b")
    assert store.shards[0].stats.syncs == 2
    await store.close()


async def test_failed_sync_fails_every_pending_and_later_append(tmp_path: Path) -> None:
    fs = FailingFileSystem(delay=0.02)
    fatal: list[BaseException] = []
    store = await Store.open(tmp_path, shards=2, files=fs, on_fatal=fatal.append, trim_interval=None)
    await store.append(TOPIC, "before", 1, b"ok")
    fs.failing = True
    first = [asyncio.ensure_future(store.append(TOPIC, f"a{i}", i, b"x")) for i in range(32)]
    await asyncio.sleep(0.005)  # the first batch is in its (failing) sync now
    second = [asyncio.ensure_future(store.append(TOPIC, f"b{i}", i, b"x")) for i in range(32)]
    dup = asyncio.ensure_future(store.append(TOPIC, "a0", 0, b"x"))
    results = await asyncio.gather(*first, *second, dup, return_exceptions=True)
    assert all(isinstance(r, SyncFailed) for r in results), results
    assert len(fatal) == 1 and isinstance(fatal[0], OSError)
    assert store.failed is fatal[0]
    with pytest.raises(SyncFailed):
        await store.append(TOPIC, "later", 2, b"x")
    with pytest.raises(SyncFailed):  # other shards refuse too: the server must stop
        await store.append("conv/another-group/t", "later", 2, b"x")
    assert [r.id for r in store.read(TOPIC, 0)] == ["before"]
    assert isinstance(SyncFailed(), StorageError)
    await store.close()


async def test_a_failed_shard_stops_the_others_without_losing_their_durable_batch(tmp_path: Path) -> None:
    fs = OneShardFailingFileSystem("shard-000", delay=0.05)
    store = await Store.open(tmp_path, shards=2, files=fs, trim_interval=None)
    bad, good = (next(f"conv/g{g}/t" for g in range(100) if shard_of(f"conv/g{g}/t", 2) == n) for n in (0, 1))
    fs.failing = True
    in_flight = asyncio.ensure_future(store.append(good, "g1", 1, b"x"))
    await asyncio.sleep(0.01)  # the good shard's batch is in its (slow) sync now
    with pytest.raises(SyncFailed):
        await store.append(bad, "b1", 1, b"x")
    result = await asyncio.wait_for(asyncio.gather(in_flight, return_exceptions=True), 10)
    # Synced before anything was refused on its own shard: either answer is truthful.
    assert isinstance(result[0], AppendResult | SyncFailed)
    with pytest.raises(SyncFailed):
        await store.append(good, "g2", 2, b"x")
    await store.close()

"""The fault file system itself: what a power cut keeps, and a failing fsync."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.faultfs import FaultFileSystem
from tidings.errors import SyncFailed
from tidings.log import FileSystem, Store


def test_a_cut_keeps_what_was_synced_and_nothing_else(tmp_path: Path) -> None:
    fs = FaultFileSystem(seed=1, tear=0.0)
    path = tmp_path / "f"
    fd = fs.open(path, create=True)
    fs.fsync_dir(tmp_path)
    fs.pwrite(fd, b"A" * 100, 0)
    fs.fdatasync(fd)
    fs.pwrite(fd, b"B" * 100, 100)  # grows the file, unsynced
    fs.pwrite(fd, b"C" * 50, 50)  # overwrites synced bytes, unsynced
    fs.truncate(fd, 120)
    created = tmp_path / "new"
    fs.close(fs.open(created, create=True))  # its directory entry is never synced
    assert fs.lose_unsynced() == (3, 0)
    assert path.read_bytes() == b"A" * 100
    assert not created.exists()


@pytest.mark.parametrize("seed", range(20))
def test_a_cut_may_tear_the_newest_write_at_a_random_byte(tmp_path: Path, seed: int) -> None:
    fs = FaultFileSystem(seed=seed, tear=1.0)
    path = tmp_path / "f"
    fd = fs.open(path, create=True)
    fs.fsync_dir(tmp_path)
    fs.pwrite(fd, b"A" * 10, 0)
    fs.fdatasync(fd)
    fs.pwrite(fd, b"B" * 10, 10)
    fs.pwrite(fd, b"C" * 10, 20)
    undone, torn = fs.lose_unsynced()
    assert undone == 2 and 1 <= torn < 10
    assert path.read_bytes() == b"A" * 10 + bytes(10) + b"C" * torn  # B undone, C torn back in


async def test_a_failing_fsync_loses_the_batch_and_nothing_acknowledged(tmp_path: Path) -> None:
    fs = FaultFileSystem()
    fatal: list[BaseException] = []
    store = await Store.open(tmp_path, 1, files=fs, on_fatal=fatal.append, trim_interval=None)
    acked = [await store.append("conv/a/b", f"m{i}", 0, b"x" * 100) for i in range(10)]
    fs.fail_syncs()
    with pytest.raises(SyncFailed):
        await store.append("conv/a/b", "unsynced", 0, b"y" * 100)
    assert fatal
    await store.close()
    reopened = await Store.open(tmp_path, 1, files=FileSystem(), trim_interval=None)
    try:
        stored = reopened.read("conv/a/b", 0)
        assert [r.id for r in stored] == [f"m{i}" for i in range(10)]
        assert [r.offset for r in stored] == [a.offset for a in acked]
    finally:
        await reopened.close()

"""The cursor journal: saves survive reopening, a torn tail is cut, compaction keeps the latest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import pytest

from tidings.log import cursors
from tidings.log.cursors import CursorFile, CursorStore


def test_latest_save_wins_across_reopen(tmp_path: Path) -> None:
    store = CursorStore(tmp_path)
    store.save_many({"a": {"floor": 1}, "b": {"floor": 2}})
    store.save_many({"a": {"floor": 5}})
    again = CursorStore(tmp_path)
    assert again.load("a") == {"floor": 5}
    assert again.load("b") == {"floor": 2}
    assert again.load("c") is None


def test_torn_tail_is_cut(tmp_path: Path) -> None:
    store = CursorStore(tmp_path)
    store.save_many({"a": {"floor": 1}})
    size = store.path.stat().st_size
    store.save_many({"a": {"floor": 9}})
    with open(store.path, "r+b") as fh:  # a crash in the middle of the second save
        fh.truncate(size + 5)
    again = CursorStore(tmp_path)
    assert again.load("a") == {"floor": 1}
    assert again.path.stat().st_size == size
    again.save_many({"a": {"floor": 3}})
    assert CursorStore(tmp_path).load("a") == {"floor": 3}


def test_damaged_batch_ends_the_replay(tmp_path: Path) -> None:
    store = CursorStore(tmp_path)
    store.save_many({"a": {"floor": 1}})
    size = store.path.stat().st_size
    store.save_many({"a": {"floor": 2}})
    data = bytearray(store.path.read_bytes())
    data[-1] ^= 0xFF
    store.path.write_bytes(bytes(data))
    assert CursorStore(tmp_path).load("a") == {"floor": 1}
    assert store.path.stat().st_size == size


def test_compaction_keeps_the_latest_states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cursors, "COMPACT_MIN_BYTES", 256)
    store = CursorStore(tmp_path)
    for i in range(200):
        store.save_many({f"k{i % 5}": {"floor": i}})
    assert store.path.stat().st_size < 1024
    again = CursorStore(tmp_path)
    assert {again.load(f"k{j}")["floor"] for j in range(5)} == {195, 196, 197, 198, 199}


def test_cursor_files_of_the_earlier_format_are_read(tmp_path: Path) -> None:
    directory = tmp_path / "cursors"
    directory.mkdir()
    name = hashlib.sha256(b"old").hexdigest()[:32] + ".cur"
    (directory / name).write_bytes(msgspec.msgpack.encode(CursorFile("old", {"floor": 7})))
    store = CursorStore(tmp_path)
    assert store.load("old") == {"floor": 7}
    store.save_many({"old": {"floor": 8}})
    assert CursorStore(tmp_path).load("old") == {"floor": 8}

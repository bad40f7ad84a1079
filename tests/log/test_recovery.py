"""Recovery: a torn tail is cut back to the last whole batch; damage elsewhere is refused."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.log.filesystems import segment_files
from tidings.errors import CorruptLog
from tidings.log import Store
from tidings.log.record import BATCH_HEADER, RECORD_OVERHEAD

TOPIC = "conv/team-7/task-42"

Written = list[tuple[str, bytes]]


def batch_size(msg_id: str, payload: bytes) -> int:
    """Bytes of a batch holding one record, computed from the documented layout."""
    return BATCH_HEADER.size + RECORD_OVERHEAD + len(TOPIC.encode()) + len(msg_id.encode()) + len(payload)


async def write(directory: Path, payloads: list[bytes], start: int = 0) -> Written:
    """Append one record per batch (each append is awaited) and close."""
    store = await Store.open(directory, shards=1, trim_interval=None)
    written = []
    for i, payload in enumerate(payloads, start):
        await store.append(TOPIC, f"m{i}", i, payload)
        written.append((f"m{i}", payload))
    await store.close()
    return written


async def read_all(directory: Path) -> Written:
    store = await Store.open(directory, shards=1, trim_interval=None)
    try:
        return [(r.id, r.payload) for r in store.read(TOPIC, 0, limit=100_000)]
    finally:
        await store.close()


def mutate(path: Path, written: Written, kind: str, where: float, data: bytes) -> int:
    """Damage the tail of ``path``; return how many records are whole before the damage."""
    ends = []
    end = 0
    for msg_id, payload in written:
        end += batch_size(msg_id, payload)
        ends.append(end)
    last_start = ends[-2] if len(ends) > 1 else 0
    with path.open("r+b") as f:
        if kind == "truncate":
            cut = int(where * end)
            f.truncate(cut)
        elif kind == "zero-fill":
            cut = int(where * end)
            f.seek(cut)
            f.write(bytes(end - cut + 4096))
        elif kind == "garbage":
            cut = int(where * end)
            f.truncate(cut)
            f.seek(cut)
            f.write(data)
        elif kind == "bit-flip-last":
            cut = last_start + int(where * (end - last_start - 1))
            f.seek(cut)
            byte = f.read(1)[0]
            f.seek(cut)
            f.write(bytes([byte ^ (1 << (len(data) % 8))]))
        else:
            raise AssertionError(kind)
    return sum(1 for e in ends if e <= cut)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    payloads=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=12),
    kind=st.sampled_from(["truncate", "zero-fill", "garbage", "bit-flip-last"]),
    where=st.floats(min_value=0.0, max_value=1.0),
    data=st.binary(min_size=0, max_size=200),
)
def test_a_damaged_tail_recovers_the_valid_prefix(
    payloads: list[bytes], kind: str, where: float, data: bytes
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        written = asyncio.run(write(directory, payloads))
        (segment,) = segment_files(directory)
        whole = mutate(segment, written, kind, where, data)

        assert asyncio.run(read_all(directory)) == written[:whole]

        more = asyncio.run(write(directory, [b"after-1", b"after-2"], start=100))
        assert asyncio.run(read_all(directory)) == written[:whole] + more


@settings(max_examples=25, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=0, max_size=200), min_size=2, max_size=8),
    victim=st.integers(min_value=0),
    where=st.floats(min_value=0.0, max_value=1.0),
    bit=st.integers(min_value=0, max_value=7),
)
def test_a_flipped_bit_before_the_last_batch_is_refused(
    payloads: list[bytes], victim: int, where: float, bit: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        written = asyncio.run(write(directory, payloads))
        (segment,) = segment_files(directory)
        sizes = [batch_size(i, p) for i, p in written]
        victim %= len(written) - 1
        start = sum(sizes[:victim])
        position = start + int(where * (sizes[victim] - 1))
        with segment.open("r+b") as f:
            f.seek(position)
            byte = f.read(1)[0]
            f.seek(position)
            f.write(bytes([byte ^ (1 << bit)]))

        with pytest.raises(CorruptLog) as caught:
            asyncio.run(read_all(directory))
        assert caught.value.path == str(segment)
        assert caught.value.position == start
        assert str(segment) in str(caught.value) and f"byte {start}" in str(caught.value)


async def test_damage_in_a_segment_that_is_not_the_last_is_refused(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, shards=1, segment_bytes=1000, trim_interval=None)
    for i in range(20):
        await store.append(TOPIC, f"m{i}", i, b"p" * 200)
    await store.close()
    first, *_ = segments = segment_files(tmp_path)
    assert len(segments) > 3
    size = first.stat().st_size
    assert size < 1500  # sealed: no preallocated zeros left in a full segment
    with first.open("r+b") as f:
        f.truncate(size - 10)  # a "torn tail" is impossible here: it is corruption
    with pytest.raises(CorruptLog) as caught:
        await Store.open(tmp_path, shards=1, trim_interval=None)
    assert caught.value.path == str(first)


async def test_zero_filled_tail_of_the_last_segment_is_free_space(tmp_path: Path) -> None:
    written = await write(tmp_path, [b"a", b"b", b"c"])
    (segment,) = segment_files(tmp_path)
    logical = sum(batch_size(i, p) for i, p in written)
    assert segment.stat().st_size > logical  # preallocated
    assert await read_all(tmp_path) == written
    assert segment.stat().st_size > logical  # not truncated: zeros are not damage
    more = await write(tmp_path, [b"d"], start=3)
    assert await read_all(tmp_path) == written + more


async def test_a_record_damaged_after_open_is_reported_on_read(tmp_path: Path) -> None:
    store = await Store.open(tmp_path, shards=1, trim_interval=None)
    await store.append(TOPIC, "m0", 0, b"payload-0")
    await store.append(TOPIC, "m1", 1, b"payload-1")
    (segment,) = segment_files(tmp_path)
    fd = os.open(segment, os.O_RDWR)
    try:
        position = batch_size("m0", b"payload-0") + BATCH_HEADER.size + 30
        os.pwrite(fd, b"\xff", position)
    finally:
        os.close(fd)
    assert [r.id for r in store.read(TOPIC, 0, limit=1)] == ["m0"]
    with pytest.raises(CorruptLog) as caught:
        store.read(TOPIC, 0)
    assert caught.value.path == str(segment)
    await store.close()

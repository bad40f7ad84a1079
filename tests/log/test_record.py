"""The record decoders take any bytes: a result or a refusal, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.errors import CorruptLog
from tidings.log.record import decode_record, encode_batch, encode_record, find_batch, parse_batch


def test_round_trip() -> None:
    records = [encode_record(7 + i, 1000 + i, b"conv/a/b", b"id%d" % i, b"payload%d" % i) for i in range(3)]
    batch = encode_batch(records)
    parsed = parse_batch(batch, 0, 0, {})
    assert parsed is not None
    infos, end = parsed
    assert end == len(batch)
    assert [(r.offset, r.ts, r.topic, r.id) for r in infos] == [
        (7 + i, 1000 + i, "conv/a/b", f"id{i}") for i in range(3)
    ]
    decoded, stop = decode_record(batch, infos[1].position, "f", 0)
    assert decoded.payload == b"payload1" and stop == infos[1].position + infos[1].size
    assert parse_batch(batch, 0, 7, {}) is None  # offsets must be above the previous record's
    assert find_batch(b"junk" + batch, 0, 0) == 4


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=400))
def test_arbitrary_bytes_never_crash_the_decoders(data: bytes, pos: int) -> None:
    assert parse_batch(data, pos, 0, {}) is None or pos < len(data)
    find_batch(data, 0, 0)
    try:
        decode_record(data, min(pos, len(data)), "f", 0)
    except CorruptLog:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.data())
def test_every_single_byte_change_of_a_batch_is_detected(payload: bytes, data: st.DataObject) -> None:
    batch = bytearray(encode_batch([encode_record(1, 2, b"conv/a/b", b"id", payload)]))
    i = data.draw(st.integers(min_value=0, max_value=len(batch) - 1))
    batch[i] ^= data.draw(st.integers(min_value=1, max_value=255))
    assert parse_batch(bytes(batch), 0, 0, {}) is None


def test_oversized_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="65535"):
        encode_record(1, 1, b"t" * 70_000, b"id", b"")

"""The byte layout of the log: batches of records, each with a CRC. No I/O here.

All integers are little-endian.

    Batch =>                  one group commit: one write() and one fdatasync()
      magic       4 bytes     b"TDB1"
      length      uint32      bytes of records after this header
      count       uint32      number of records, >= 1
      header_crc  uint32      zlib.crc32 of magic, length and count
      records     Record * count, exactly `length` bytes

    Record =>
      length      uint32      bytes after this field
      crc         uint32      zlib.crc32 of everything after this field
      offset      uint64      shard sequence number: >= 1, strictly increasing in the shard
      ts          int64       ms since the epoch, gateway receive time
      topic_len   uint16
      id_len      uint16
      topic       topic_len bytes, UTF-8
      id          id_len bytes, UTF-8
      payload     length - 24 - topic_len - id_len bytes, opaque

The batch is the unit of durability. A shard never writes batch k+1 before the
fdatasync of batch k returned, so after a crash at most the last batch of the last
segment can be damaged, and then it is damaged as a whole (its records were never
acknowledged). That is why recovery decides "torn tail or corruption" per batch
(see ``segment.py``), and why the batch carries a magic: finding the next candidate
batch is a fast ``bytes.find``, not a byte-by-byte walk in Python.

Every length is checked against the bytes that remain before anything is sliced,
so a damaged length field never causes a large allocation.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from tidings.errors import CorruptLog

MAGIC = b"TDB1"
BATCH_HEADER = struct.Struct("<4sIII")
RECORD_PREFIX = struct.Struct("<II")  # length, crc
RECORD_BODY = struct.Struct("<QqHH")  # offset, ts, topic_len, id_len
RECORD_OVERHEAD = RECORD_PREFIX.size + RECORD_BODY.size  # 28 bytes
MAX_NAME_BYTES = 0xFFFF
#: A record larger than this is refused on write and treated as damage on read.
MAX_RECORD_BYTES = 16 * 1024 * 1024

_unpack_header = BATCH_HEADER.unpack_from
_unpack_prefix = RECORD_PREFIX.unpack_from
_unpack_body = RECORD_BODY.unpack_from
_pack_prefix = RECORD_PREFIX.pack
_pack_body = RECORD_BODY.pack
_crc32 = zlib.crc32


class RecordInfo(NamedTuple):
    """Where a record sits in its segment, as recovery finds it."""

    offset: int
    ts: int
    topic: str
    id: str
    position: int  # of the record's first byte in the segment file
    size: int  # of the whole encoded record


class Decoded(NamedTuple):
    offset: int
    ts: int
    topic: str
    id: str
    payload: bytes


def encode_record(offset: int, ts: int, topic: bytes, msg_id: bytes, payload: bytes) -> bytes:
    """Encode one record. Raises ``ValueError`` when a field does not fit the layout."""
    if len(topic) > MAX_NAME_BYTES or len(msg_id) > MAX_NAME_BYTES:
        raise ValueError("topic and id must each be at most 65535 bytes of UTF-8")
    body = _pack_body(offset, ts, len(topic), len(msg_id)) + topic + msg_id + payload
    if len(body) + 8 > MAX_RECORD_BYTES:
        raise ValueError(f"record of {len(body) + 8} bytes is over the limit of {MAX_RECORD_BYTES}")
    return _pack_prefix(len(body) + 4, _crc32(body)) + body


def encode_batch(records: list[bytes]) -> bytes:
    """Frame already encoded records as one batch, ready for a single write()."""
    length = sum(map(len, records))
    head = MAGIC + struct.pack("<II", length, len(records))
    records.insert(0, head + struct.pack("<I", _crc32(head)))
    data = b"".join(records)
    del records[0]
    return data


def decode_record(buf: bytes, pos: int, path: str, file_position: int) -> tuple[Decoded, int]:
    """Decode the record at ``buf[pos:]``; return it and the position after it.

    ``path`` and ``file_position`` (of ``buf[0]`` in the file) only name the place in
    the ``CorruptLog`` raised when the bytes are not a valid record.
    """
    end = len(buf)
    if pos + RECORD_OVERHEAD > end:
        raise CorruptLog(f"{path}: short record at byte {file_position + pos}", path, file_position + pos)
    length, crc = _unpack_prefix(buf, pos)
    stop = pos + 4 + length
    if length < RECORD_OVERHEAD - 4 or stop > end:
        raise CorruptLog(
            f"{path}: bad record length at byte {file_position + pos}", path, file_position + pos
        )
    view = memoryview(buf)[pos + 8 : stop]
    if _crc32(view) != crc:
        raise CorruptLog(
            f"{path}: record CRC mismatch at byte {file_position + pos}", path, file_position + pos
        )
    offset, ts, topic_len, id_len = _unpack_body(buf, pos + 8)
    t = pos + RECORD_OVERHEAD
    i = t + topic_len
    p = i + id_len
    if p > stop:
        raise CorruptLog(f"{path}: bad name lengths at byte {file_position + pos}", path, file_position + pos)
    topic = bytes(buf[t:i]).decode()
    msg_id = bytes(buf[i:p]).decode()
    return Decoded(offset, ts, topic, msg_id, bytes(buf[p:stop])), stop


def parse_batch(
    buf: bytes, pos: int, after_offset: int, names: dict[bytes, str]
) -> tuple[list[RecordInfo], int] | None:
    """Validate the batch at ``buf[pos:]``; return its records and the position after it.

    Returns None when the bytes there are not one whole valid batch whose offsets are
    all above ``after_offset`` and strictly increasing. ``names`` interns topic strings.
    """
    end = len(buf)
    if pos + BATCH_HEADER.size > end:
        return None
    magic, length, count, header_crc = _unpack_header(buf, pos)
    if magic != MAGIC or _crc32(memoryview(buf)[pos : pos + 12]) != header_crc:
        return None
    stop = pos + BATCH_HEADER.size + length
    if stop > end or count < 1 or count * RECORD_OVERHEAD > length:
        return None
    records: list[RecordInfo] = []
    p = pos + BATCH_HEADER.size
    last = after_offset
    view = memoryview(buf)
    for _ in range(count):
        if p + RECORD_OVERHEAD > stop:
            return None
        rlen, crc = _unpack_prefix(buf, p)
        rstop = p + 4 + rlen
        if rlen < RECORD_OVERHEAD - 4 or rstop > stop or _crc32(view[p + 8 : rstop]) != crc:
            return None
        offset, ts, topic_len, id_len = _unpack_body(buf, p + 8)
        t = p + RECORD_OVERHEAD
        if offset <= last or t + topic_len + id_len > rstop:
            return None
        raw_topic = bytes(buf[t : t + topic_len])
        try:
            topic = names.get(raw_topic) or names.setdefault(raw_topic, raw_topic.decode())
            msg_id = bytes(buf[t + topic_len : t + topic_len + id_len]).decode()
        except UnicodeDecodeError:
            return None
        records.append(RecordInfo(offset, ts, topic, msg_id, p, rlen + 4))
        last = offset
        p = rstop
    if p != stop:
        return None
    return records, stop


def find_batch(buf: bytes, start: int, after_offset: int) -> int | None:
    """Position of the first valid batch at or after ``start`` (offsets above ``after_offset``)."""
    pos = buf.find(MAGIC, start)
    names: dict[bytes, str] = {}
    while pos != -1:
        if parse_batch(buf, pos, after_offset, names) is not None:
            return pos
        pos = buf.find(MAGIC, pos + 1)
    return None

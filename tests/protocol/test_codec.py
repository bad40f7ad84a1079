from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.errors import FrameTooLarge, ProtocolError
from tidings.protocol import frames as f
from tidings.protocol.codec import JSON, MSGPACK, client_codec, negotiate, server_codec

CODECS = [JSON, MSGPACK]

CLIENT_FRAMES: list[msgspec.Struct] = [
    f.Hello(token="t", client="c", rid=1, capabilities=["x"], status="idle"),
    f.Sub(topic="conv/a/>", rid=2, consumer="planner", start=f.Position(offset=5), max_inflight=10),
    f.Sub(topic="conv/a/>", start="earliest"),
    f.Unsub(sid=3, rid=4),
    f.Pub(
        topic="sig/a/b",
        body={"k": [1, 2.5, None, "s"]},
        rid=5,
        id="m1",
        parent="m0",
        lamport=9,
        headers={"traceparent": "00-abc"},
    ),
    f.Ack(sid=1, topic="conv/a/b", offset=7),
    f.Nack(sid=1, topic="conv/a/b", offset=7, delay_ms=100),
    f.Chunk(stream="s1", topic="sig/a/b", seq=0, data="tok"),
    f.Commit(stream="s1", topic="conv/a/b", rid=6),
    f.Abort(stream="s1", topic="conv/a/b", reason="cancelled"),
    f.PresenceUpdate(status="busy", capabilities=["code"]),
]

SERVER_FRAMES: list[msgspec.Struct] = [
    f.Welcome(
        agent="a",
        session="s",
        server="tidings",
        rid=0,
        limits=f.Limits(max_frame_bytes=1, max_subscriptions=2, max_topic_length=3),
    ),
    f.Subbed(sid=1, topic="conv/>", rid=2, durable=True),
    f.Unsubbed(sid=1, rid=3),
    f.Msg(
        topic="conv/a/b",
        id="m",
        sender="alice",
        ts=1,
        body=[1],
        offset=4,
        parent="p",
        lamport=2,
        headers={"h": "v"},
        attempt=2,
        sid=9,
    ),
    f.Puback(id="m", rid=1, offset=3, duplicate=True),
    f.Error(code="forbidden", message="no", rid=1, retriable=False),
    f.Gap(sid=1, topic="conv/a/b", first=1, last=9, reason="retention"),
    f.Dropped(sid=1, topic="sig/a/b", count=3),
    f.PresenceEvent(agent="a", event="join", status="idle", topic="conv/a/b"),
]


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("frame", CLIENT_FRAMES, ids=lambda fr: type(fr).__name__)
def test_client_frames_round_trip(name: str, frame: msgspec.Struct) -> None:
    assert server_codec(name).decode(client_codec(name).encode(frame)) == [frame]


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda fr: type(fr).__name__)
def test_server_frames_round_trip(name: str, frame: msgspec.Struct) -> None:
    assert client_codec(name).decode(server_codec(name).encode(frame)) == [frame]


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("n", [1, 2, 15, 16, 300])
def test_batches_round_trip(name: str, n: int) -> None:
    codec = server_codec(name)
    frames = [f.Puback(id=str(i), rid=i) for i in range(n)]
    assert client_codec(name).decode(codec.join([codec.encode(x) for x in frames])) == frames


@pytest.mark.parametrize("name", CODECS)
def test_stamp_adds_sid_to_shared_encoding(name: str) -> None:
    codec = server_codec(name)
    msg = f.Msg(topic="sig/a/b", id="1", sender="s", ts=5, body={"x": "y"}, offset=None, headers={"a": "b"})
    shared = codec.encode_shared(msg)
    for sid in (0, 7, 127, 128, 65536, 2**40):
        (decoded,) = client_codec(name).decode(codec.stamp(shared, sid))
        assert decoded == msgspec.structs.replace(msg, sid=sid)


def test_json_wire_shape_is_documented_form() -> None:
    data = client_codec(JSON).encode(f.Sub(topic="conv/a/>", start=f.Position(offset=3), rid=1))
    assert msgspec.json.decode(data) == {"op": "sub", "topic": "conv/a/>", "rid": 1, "from": {"offset": 3}}


@pytest.mark.parametrize("name", CODECS)
def test_size_is_checked_before_parsing(name: str) -> None:
    codec = server_codec(name, max_frame_bytes=64)
    with pytest.raises(FrameTooLarge):
        codec.decode(b"\x00" * 65)  # not even valid: the size check comes first


@pytest.mark.parametrize("name", CODECS)
def test_batch_over_limit_is_refused(name: str) -> None:
    codec = client_codec(name)
    data = codec.join([codec.encode(f.Unsub(sid=1)) for _ in range(1025)])
    with pytest.raises(FrameTooLarge):
        server_codec(name, max_frame_bytes=1 << 20).decode(data)


def test_negotiation() -> None:
    assert negotiate([]) == JSON
    assert negotiate(["x", MSGPACK, JSON]) == MSGPACK
    assert negotiate(["graphql-ws"]) is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
@pytest.mark.parametrize("name", CODECS)
def test_fuzz_arbitrary_bytes_give_frames_or_protocol_error(name: str, data: bytes) -> None:
    for codec in (server_codec(name), client_codec(name)):
        try:
            out = codec.decode(data)
        except ProtocolError:
            continue
        assert isinstance(out, list)
        assert all(isinstance(x, msgspec.Struct) for x in out)


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
OPS = st.sampled_from(["hello", "sub", "pub", "ack", "nack", "unsub", "chunk", "msg", "welcome", "x", 1])


@settings(max_examples=400, deadline=None)
@given(
    OPS, st.dictionaries(st.sampled_from(["topic", "sid", "rid", "body", "from", "offset", "id"]), JSONISH)
)
@pytest.mark.parametrize("name", CODECS)
def test_fuzz_frame_shaped_objects(name: str, op: object, fields: dict[str, object]) -> None:
    raw = {"op": op, **fields}
    data = msgspec.msgpack.encode(raw) if name == MSGPACK else msgspec.json.encode(raw)
    for codec in (server_codec(name), client_codec(name)):
        try:
            codec.decode(data)
        except ProtocolError:
            pass


@pytest.mark.parametrize("name", CODECS)
def test_deep_nesting_is_a_protocol_error_not_a_crash(name: str) -> None:
    deep: object = 1
    for _ in range(2000):
        deep = [deep]
    data = b'{"op":"pub","topic":"sig/a/b","body":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    if name == MSGPACK:
        data = b"\x82\xa2op\xa3pub\xa4body" + b"\x91" * 100_000 + b"\x01"
    try:
        server_codec(name, max_frame_bytes=1 << 20).decode(data)
    except ProtocolError:
        pass

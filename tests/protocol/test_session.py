"""The session state machine, driven without any event loop or socket."""

from __future__ import annotations

import msgspec

from tidings.errors import Unauthorized
from tidings.protocol import frames as f
from tidings.protocol.codec import JSON, client_codec
from tidings.protocol.session import TRANSITIONS, ClientSession, CloseCode, ServerSession, State

CLIENT = client_codec(JSON)
WELCOME = f.Welcome(
    agent="a",
    session="s",
    server="t",
    limits=f.Limits(max_frame_bytes=1, max_subscriptions=1, max_topic_length=1),
)


def out(session: ServerSession) -> list[object]:
    return [frame for data in session.data_to_send() for frame in CLIENT.decode(data)]


def test_hello_then_accept_opens_the_session() -> None:
    s = ServerSession(JSON, 1024)
    s.receive_data(CLIENT.encode(f.Hello(token="t", rid=1)))
    (hello,) = list(s.events_received())
    assert isinstance(hello, f.Hello) and s.state is State.AUTHENTICATING
    s.accept(msgspec.structs.replace(WELCOME, rid=hello.rid))
    assert s.state is State.OPEN
    assert out(s) == [msgspec.structs.replace(WELCOME, rid=1)]


def test_batch_hello_and_sub_is_checked_frame_by_frame() -> None:
    s = ServerSession(JSON, 1024)
    s.receive_data(CLIENT.join([CLIENT.encode(f.Hello(token="t")), CLIENT.encode(f.Sub(topic="sig/a/b"))]))
    events = s.events_received()
    assert isinstance(next(events), f.Hello)
    s.accept(WELCOME)
    assert isinstance(next(events), f.Sub)


def test_frames_before_hello_close_with_policy_violation() -> None:
    s = ServerSession(JSON, 1024)
    s.receive_data(CLIENT.encode(f.Pub(topic="sig/a/b")))
    assert list(s.events_received()) == []
    assert s.close_code == CloseCode.POLICY_VIOLATION
    (err,) = out(s)
    assert isinstance(err, f.Error) and err.code == "protocol_error"


def test_reject_sends_error_and_closes() -> None:
    s = ServerSession(JSON, 1024)
    s.receive_data(CLIENT.encode(f.Hello(token="bad", rid=3)))
    list(s.events_received())
    s.reject(Unauthorized("token has expired"), rid=3)
    assert s.close_code == CloseCode.POLICY_VIOLATION and s.close_reason == "token has expired"
    assert out(s) == [f.Error(code="unauthorized", message="token has expired", rid=3)]


def test_oversize_closes_with_message_too_big() -> None:
    s = ServerSession(JSON, 16)
    s.receive_data(b" " * 17)
    assert s.close_code == CloseCode.MESSAGE_TOO_BIG
    assert out(s)[0].code == "frame_too_large"  # type: ignore[attr-defined]


def test_garbage_after_hello_is_answered_and_survived() -> None:
    s = ServerSession(JSON, 1024)
    s.receive_data(CLIENT.encode(f.Hello(token="t")))
    list(s.events_received())
    s.accept(WELCOME)
    out(s)
    s.receive_data(b"{not json")
    assert s.state is State.OPEN and s.close_code is None
    (err,) = out(s)
    assert isinstance(err, f.Error) and err.code == "invalid_frame"


def test_hello_deadline() -> None:
    s = ServerSession(JSON, 1024)
    s.hello_deadline_passed()
    assert s.close_code == CloseCode.POLICY_VIOLATION
    opened = ServerSession(JSON, 1024)
    opened.receive_data(CLIENT.encode(f.Hello()))
    list(opened.events_received())
    opened.accept(WELCOME)
    opened.hello_deadline_passed()
    assert opened.close_code is None


def test_everything_queued_in_a_turn_leaves_as_one_message() -> None:
    s = ServerSession(JSON, 1024)
    for i in range(5):
        s.send(f.Puback(id=str(i)))
    (data,) = s.data_to_send()
    assert data.startswith(b"[")
    assert s.data_to_send() == []


def test_outgoing_batches_respect_the_limits_the_peer_is_held_to() -> None:
    s = ServerSession(JSON, 4096)
    for i in range(3000):
        s.send(f.Puback(id=str(i)))
    s.send(f.Puback(id="x" * 10_000))  # one frame over the limit still goes, alone
    messages = s.data_to_send()
    decoded = [client_codec(JSON, 1 << 20).decode(m) for m in messages]
    assert [p.id for batch in decoded for p in batch] == [*map(str, range(3000)), "x" * 10_000]
    assert all(len(batch) <= 1024 for batch in decoded)
    assert all(len(m) <= 4096 for m in messages[:-1])


def test_client_session_sends_hello_and_opens_on_welcome() -> None:
    c = ClientSession(JSON, f.Hello(token="t", rid=0))
    (first,) = c.data_to_send()
    assert b'"op":"hello"' in first
    c.receive_data(msgspec.json.encode(WELCOME))
    assert [type(x) for x in c.events_received()] == [f.Welcome]
    assert c.state is State.OPEN and c.welcome == WELCOME


def test_transition_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)

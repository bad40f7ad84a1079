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


def opened() -> ServerSession:
    s = ServerSession(JSON, 1024)
    s.receive_data(CLIENT.encode(f.Hello()))
    list(s.events_received())
    s.accept(WELCOME)
    out(s)
    return s


def test_receive_one_takes_out_a_lone_frame_that_keeps_the_state() -> None:
    s = opened()
    pub = f.Pub(topic="conv/g/c", body="hi", rid=1)
    assert s.receive_one(CLIENT.encode(pub)) == pub
    assert s.state is State.OPEN and not s.has_incoming


def test_receive_one_queues_what_events_received_must_check() -> None:
    # a frame that moves the state on, and one the state does not accept
    fresh = ServerSession(JSON, 1024)
    assert fresh.receive_one(CLIENT.encode(f.Hello(rid=1))) is None
    (hello,) = list(fresh.events_received())
    assert isinstance(hello, f.Hello) and fresh.state is State.AUTHENTICATING
    early = ServerSession(JSON, 1024)
    assert early.receive_one(CLIENT.encode(f.Pub(topic="conv/g/c"))) is None
    assert list(early.events_received()) == [] and early.close_code == CloseCode.POLICY_VIOLATION
    # a batch, and a lone frame behind frames that wait: both keep their order
    s = opened()
    first, second, third = (f.Pub(topic="conv/g/c", rid=i) for i in range(3))
    assert s.receive_one(CLIENT.join([CLIENT.encode(first), CLIENT.encode(second)])) is None
    assert s.receive_one(CLIENT.encode(third)) is None
    assert list(s.events_received()) == [first, second, third]


def test_receive_one_answers_a_bad_message_like_receive_data() -> None:
    s = opened()
    assert s.receive_one(b"{not json") is None
    assert s.state is State.OPEN and not s.has_incoming
    (err,) = out(s)
    assert isinstance(err, f.Error) and err.code == "invalid_frame"
    assert s.receive_one(b" " * 2048) is None
    assert s.close_code == CloseCode.MESSAGE_TOO_BIG


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

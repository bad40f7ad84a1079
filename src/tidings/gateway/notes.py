"""The notes gateways send each other about shared durable consumers (``sharing.py``).

Each is a msgpack array (its tag first) sent over core NATS to ``tidings.gw.to.<id>``
(``Peers.send``): at most once, so a lost ``Deliver`` or ``Settle`` is repaired by
ack_wait, as a lost frame would be. ``sender`` is always the sending gateway's id,
``key`` the consumer's key, ``member`` the member's id on the proxy's gateway.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from tidings.protocol import frames as f

_NOTE = {"array_like": True}


class Join(msgspec.Struct, tag="join", **_NOTE):
    sender: str
    key: str
    member: str
    pattern: str
    max_inflight: int | None = None
    ack_wait_ms: int | None = None
    start: f.Start | None = None
    echo: bool = True


class Joined(msgspec.Struct, tag="joined", **_NOTE):
    sender: str
    key: str
    member: str


class Refused(msgspec.Struct, tag="refused", **_NOTE):
    """The sender does not own the consumer (``owner``: who it thinks does) or could not open it."""

    sender: str
    key: str
    member: str
    owner: str
    reason: str


class Leave(msgspec.Struct, tag="leave", **_NOTE):
    sender: str
    key: str
    member: str


class Dropped(msgspec.Struct, tag="dropped", **_NOTE):
    """The sender (the owner) no longer has the member attached: it should join again."""

    sender: str
    key: str
    member: str


class TookOver(msgspec.Struct, tag="took_over", **_NOTE):
    """The sender owns the consumer now: it took it over while the receiver was taken for gone."""

    sender: str
    key: str


class Deliver(msgspec.Struct, tag="deliver", **_NOTE):
    sender: str
    key: str
    member: str
    msg: f.Msg
    attempt: int


class GapNote(msgspec.Struct, tag="gap", **_NOTE):
    sender: str
    key: str
    member: str
    topic: str
    first: int
    last: int
    reason: str


class Settle(msgspec.Struct, tag="settle", **_NOTE):
    sender: str
    key: str
    member: str
    kind: Literal["ack", "nack", "progress", "undeliverable"]
    topic: str
    offset: int
    delay_ms: int = 0
    queued_us: int | None = None
    handled_us: int | None = None
    reason: str = ""


Note = Join | Joined | Refused | Leave | Dropped | TookOver | Deliver | GapNote | Settle

"""One physical WebSocket connection of an agent, and small helpers it needs."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from tidings.errors import BY_CODE, RetryLater, TidingsError
from tidings.protocol import frames as f
from tidings.protocol.session import ClientSession

if TYPE_CHECKING:
    from tidings.sdk.agent import Agent


def new_id() -> str:
    """A time-ordered unique id (UUIDv7 layout: 48-bit ms timestamp, then random bits)."""
    ms = time.time_ns() // 1_000_000
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def error_from_frame(frame: f.Error) -> TidingsError:
    """Rebuild the exception an ``error`` frame reports."""
    cls = BY_CODE.get(frame.code, TidingsError)
    if cls is RetryLater:
        return RetryLater(frame.message, frame.retry_after_ms or 0)
    return cls(frame.message)


class Link(WSListener):
    """One physical connection; reports frames and its end to the agent."""

    def __init__(self, agent: Agent, session: ClientSession) -> None:
        super().__init__()
        self.agent = agent
        self.session = session
        self.transport: WSTransport | None = None
        self.flush_scheduled = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self.agent._on_data(self, frame.get_payload_as_memoryview())
        elif frame.msg_type is WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.agent._on_lost(self, code.value, frame.get_close_reason())
            transport.send_close(WSCloseCode.OK if code is WSCloseCode.NO_INFO else code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.agent._on_lost(self, WSCloseCode.ABNORMAL_CLOSURE.value, "connection lost")

    def send(self, frame: Any) -> None:
        self.session.send(frame)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        kind = WSMsgType.BINARY if self.session.codec.binary else WSMsgType.TEXT
        for data in self.session.data_to_send():
            transport.send(kind, data)

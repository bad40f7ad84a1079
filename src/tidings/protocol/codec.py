"""The two wire codecs: ``tidings.v1.json`` and ``tidings.v1.msgpack``.

A WebSocket message carries either one frame (an object) or a batch (an array
of frames). Decoding checks the size before it parses anything and turns every
decoding failure into ``InvalidFrame``; no other exception escapes.

Delivery frames are encoded once per codec and shared by every subscriber;
``stamp`` splices the per-subscriber ``sid`` into that shared encoding:

    json:     {"op":"msg",...}            ->  {"op":"msg",...,"sid":7}
    msgpack:  fixmap(n) "op" "msg" ...    ->  fixmap(n+1) "op" "msg" ... "sid" 7

(msgpack fixmap is one byte 0x80|n for n < 16; a Msg has at most 12 fields.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Final, Generic, TypeVar

import msgspec

from tidings.errors import FrameTooLarge, InvalidFrame
from tidings.protocol.frames import ClientFrame, Msg, ServerFrame

JSON: Final = "tidings.v1.json"
MSGPACK: Final = "tidings.v1.msgpack"
SUBPROTOCOLS: Final = (JSON, MSGPACK)

DEFAULT_MAX_FRAME_BYTES: Final = 1024 * 1024
MAX_BATCH: Final = 1024

F = TypeVar("F")


class Codec(Generic[F]):
    """Encode outgoing frames and decode incoming ones for one subprotocol.

    ``F`` is the union of frames this side receives: a server decodes
    ``ClientFrame``, a client decodes ``ServerFrame``.
    """

    name: str
    binary: bool

    def __init__(self, name: str, incoming: Any, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if name not in SUBPROTOCOLS:
            raise ValueError(f"unknown subprotocol {name!r}")
        self.name = name
        self.binary = name == MSGPACK
        self.max_frame_bytes = max_frame_bytes
        if self.binary:
            self._enc: msgspec.msgpack.Encoder | msgspec.json.Encoder = msgspec.msgpack.Encoder()
            self._dec: Any = msgspec.msgpack.Decoder(incoming | list[incoming], ext_hook=_refuse_ext)
        else:
            self._enc = msgspec.json.Encoder()
            self._dec = msgspec.json.Decoder(incoming | list[incoming])

    def decode(self, data: bytes | bytearray | memoryview) -> list[F]:
        """Decode one WebSocket message into its frames.

        Raises ``FrameTooLarge`` if ``data`` is over the limit (checked before
        parsing) or the batch is longer than ``MAX_BATCH``, and ``InvalidFrame``
        for anything that is not a valid frame or batch of frames.
        """
        if len(data) > self.max_frame_bytes:
            raise FrameTooLarge(f"message of {len(data)} bytes is over the limit of {self.max_frame_bytes}")
        try:
            decoded = self._dec.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError) as exc:
            raise InvalidFrame(f"undecodable {self.name} frame: {exc}") from None
        if isinstance(decoded, list):
            if len(decoded) > MAX_BATCH:
                raise FrameTooLarge(f"batch of {len(decoded)} frames is over the limit of {MAX_BATCH}")
            return decoded
        return [decoded]

    def encode(self, frame: msgspec.Struct) -> bytes:
        """Encode one frame on its own."""
        return self._enc.encode(frame)

    @property
    def encoder(self) -> Callable[[Any], bytes]:
        """``encode`` as the encoder's own method (no Python frame: for per-frame paths)."""
        return self._enc.encode

    def encode_shared(self, msg: Msg) -> bytes:
        """Encode a delivery once, without ``sid``, for ``stamp`` to reuse."""
        if msg.sid is not None:
            raise InvalidFrame("a shared delivery must not carry a sid", side="local")
        return self._enc.encode(msg)

    def stamp(self, shared: bytes, sid: int) -> bytes:
        """Return the encoding of ``shared`` with ``sid`` added as its last field."""
        return self.open_shared(shared) + self.sid_suffix(sid)

    def open_shared(self, shared: bytes) -> bytes:
        """The shared encoding made ready for one more field (once per message).

        Fanout computes this once per message and appends each subscriber's
        precomputed ``sid_suffix``: one bytes concatenation per delivery.
        """
        if self.binary:
            return bytes((shared[0] + 1,)) + shared[1:]
        return shared[:-1]

    def sid_suffix(self, sid: int) -> bytes:
        """The bytes that close an ``open_shared`` encoding with ``sid`` (once per subscription)."""
        if self.binary:
            return b"\xa3sid" + self._enc.encode(sid)
        return b',"sid":%d}' % sid

    def join(self, encoded: Sequence[bytes]) -> bytes:
        """Join already encoded frames into one WebSocket message.

        One frame is sent as itself; several as an array (a batch).
        """
        if len(encoded) == 1:
            return encoded[0]
        if self.binary:
            n = len(encoded)
            if n < 16:
                header = bytes((0x90 | n,))
            elif n < 0x10000:
                header = b"\xdc" + n.to_bytes(2, "big")
            else:
                header = b"\xdd" + n.to_bytes(4, "big")
            return header + b"".join(encoded)
        return b"[" + b",".join(encoded) + b"]"


def _refuse_ext(code: int, data: memoryview) -> Any:
    # Extension types have no JSON form: a body that holds one could not reach a
    # JSON subscriber, so it is refused at the door.
    raise ValueError(f"msgpack extension type {code} is not supported in frames")


@lru_cache(maxsize=64)
def server_codec(name: str, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Codec[ClientFrame]:
    """The codec a server uses: decodes client frames, encodes server frames.

    Codecs hold no per-connection state, so one is shared by every connection
    with the same settings (a msgspec decoder of the frame union is not small).
    """
    return Codec(name, ClientFrame, max_frame_bytes)


@lru_cache(maxsize=64)
def client_codec(name: str, max_frame_bytes: int = 64 * DEFAULT_MAX_FRAME_BYTES) -> Codec[ServerFrame]:
    """The codec a client uses: decodes server frames, encodes client frames."""
    return Codec(name, ServerFrame, max_frame_bytes)


def negotiate(offered: Sequence[str]) -> str | None:
    """Pick the subprotocol from a client's offer, in the client's order of preference.

    A client that offers none gets JSON (``None`` is returned only when the
    client offered subprotocols and none of them is ours).
    """
    if not offered:
        return JSON
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    return None

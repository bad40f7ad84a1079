"""One exception tree for all of tidings.

Every error has a stable wire ``code`` (sent in ``error`` frames and never
renamed) and a ``retriable`` flag that retry logic reads: the SDK's reconnect
loop retries what is retriable and surfaces the rest.

    TidingsError
    ├── ProtocolError            a party broke the wire protocol
    │   ├── FrameTooLarge        a frame or message over the size limit
    │   └── InvalidFrame         undecodable bytes or a frame of the wrong shape
    ├── InvalidTopic             a topic name or pattern that is not well formed
    ├── AuthError
    │   ├── Unauthorized         missing, malformed, expired or revoked token
    │   └── Forbidden            the token does not grant this topic
    ├── LimitExceeded            a per-connection limit (subscriptions, ...)
    ├── NotSupported             an operation this server or topic does not offer
    ├── NotFound                 no such conversation, agent or command (control plane)
    ├── Conflict                 it exists already (control plane)
    ├── RetryLater               backpressure: try again after ``retry_after_ms``
    ├── ConnectionLost           the transport went away (retriable)
    └── StorageError             the durable store failed
        ├── CorruptLog           a log file is damaged where it must not be
        └── SyncFailed           fsync failed: the process must stop

``ProtocolError`` carries ``side``: ``"remote"`` when the peer sent something
invalid, ``"local"`` when our own code tried to send something invalid (the
distinction h11 draws between RemoteProtocolError and LocalProtocolError).
"""

from __future__ import annotations

from typing import ClassVar, Literal


class TidingsError(Exception):
    """Root of every error tidings raises on purpose."""

    code: ClassVar[str] = "internal"
    retriable: ClassVar[bool] = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class ProtocolError(TidingsError):
    """A frame that breaks the wire protocol. ``side`` names who broke it."""

    code = "protocol_error"

    def __init__(self, message: str, side: Literal["remote", "local"] = "remote") -> None:
        super().__init__(message)
        self.side = side


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"


class InvalidFrame(ProtocolError):
    code = "invalid_frame"


class InvalidTopic(TidingsError):
    code = "invalid_topic"


class AuthError(TidingsError):
    code = "auth_error"


class Unauthorized(AuthError):
    code = "unauthorized"


class Forbidden(AuthError):
    code = "forbidden"


class LimitExceeded(TidingsError):
    code = "limit_exceeded"


class NotSupported(TidingsError):
    code = "not_supported"


class NotFound(TidingsError):
    code = "not_found"


class Conflict(TidingsError):
    code = "conflict"


class RetryLater(TidingsError):
    """Backpressure: the request was refused, nothing was stored; retry later."""

    code = "retry_later"
    retriable = True

    def __init__(self, message: str = "", retry_after_ms: int = 100) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class ConnectionLost(TidingsError):
    code = "connection_lost"
    retriable = True


class StorageError(TidingsError):
    code = "storage_error"


class CorruptLog(StorageError):
    """A log file is damaged somewhere other than its tail; it is refused, never skipped."""

    code = "corrupt_log"

    def __init__(self, message: str, path: str = "", position: int = -1) -> None:
        super().__init__(message)
        self.path = path
        self.position = position


class SyncFailed(StorageError):
    """fsync/fdatasync failed. Nothing after the last good sync may be acknowledged."""

    code = "sync_failed"


#: Every wire code, mapped to its class, so a client can rebuild the exception.
BY_CODE: dict[str, type[TidingsError]] = {
    cls.code: cls
    for cls in (
        TidingsError,
        ProtocolError,
        FrameTooLarge,
        InvalidFrame,
        InvalidTopic,
        AuthError,
        Unauthorized,
        Forbidden,
        LimitExceeded,
        NotSupported,
        NotFound,
        Conflict,
        RetryLater,
        ConnectionLost,
        StorageError,
        CorruptLog,
        SyncFailed,
    )
}

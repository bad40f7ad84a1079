"""Talking to a cluster that may be electing a leader: retries, and NATS errors as tidings errors."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import Error as JsError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from tidings.errors import RetryLater, StorageError

log = logging.getLogger("tidings.engine.nats")

API = "$JS.API"
#: How long a publish or read keeps retrying through a leader election before ``RetryLater``.
RETRY_FOR_S = 10.0
REQUEST_TIMEOUT_S = 2.0
NO_MESSAGE_FOUND = 10037  # JetStream: "no message found"
STREAM_NAME_IN_USE = 10058  # JetStream: "stream name already in use with a different configuration"
T = TypeVar("T")


def kv_key(key: str) -> str:
    """A key-value key for any string (the bucket's key alphabet is narrow)."""
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=") or "_"


async def log_error(exc: Exception) -> None:
    log.warning("nats: %r", exc)


async def retry(what: str, call: Callable[[], Awaitable[T]], for_s: float = RETRY_FOR_S) -> T:
    """Await ``call()`` until it stops raising a transient NATS error, for at most ``for_s``.

    Timeouts, "no responders" and JetStream's 503 are what a leader election
    looks like from a client (FIELD-NOTES: up to ~5 s), and "no suitable peers for
    placement" what a node still rejoining looks like; then ``RetryLater``. Anything else NATS
    raises is a ``StorageError``. (nats-py's JetStream publish, which the cursor bucket's ``put``
    uses, turns "no responders" into ``NoStreamResponseError``.)
    """
    deadline = time.monotonic() + for_s
    delay = 0.05
    while True:
        try:
            return await call()
        except (
            NatsTimeout,
            NoRespondersError,
            NoStreamResponseError,
            ServiceUnavailableError,
            TimeoutError,
            Stale,
            Unplaced,
        ) as exc:
            if time.monotonic() + delay > deadline:
                raise RetryLater(f"{what}: NATS did not answer for {for_s} s ({exc!r})", 1000) from None
        except (NatsError, JsError) as exc:
            raise StorageError(f"{what}: {exc!r}") from None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


class Unplaced(Exception):
    """JetStream cannot place a stream's replicas yet: a node is offline or rejoining."""


class Stale(Exception):
    """A replica answered with less than this engine has already announced."""

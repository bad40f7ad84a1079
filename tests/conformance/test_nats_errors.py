"""How the NATS engine classifies what nats-py raises while a stream elects a leader."""

from __future__ import annotations

import pytest
from nats.js.errors import APIError, NoStreamResponseError

from tidings.engine.nats.calls import retry
from tidings.errors import StorageError


async def test_a_stream_with_no_leader_yet_is_waited_for_like_an_election() -> None:
    """Saving a cursor (a key-value ``put``: a JetStream publish) while the bucket's leader
    was killed raises ``NoStreamResponseError``: retried, not a storage failure. (Found by the
    NATS crash loop: every kill of a node logged cursor saves as failed, with a traceback.)"""
    calls = 0

    async def put() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise NoStreamResponseError
        return "saved"

    assert await retry("save a cursor", put) == "saved"
    assert calls == 3


async def test_other_jetstream_errors_are_storage_errors() -> None:
    async def put() -> str:
        raise APIError(code=400, description="bad request")

    with pytest.raises(StorageError, match="save a cursor"):
        await retry("save a cursor", put)

"""Shared fixtures: real in-process gateways on port 0, tokens, and one time unit.

Every timeout in the suite is a multiple of ``UNIT`` seconds; a slow machine
stretches them all with ``TIDINGS_TEST_TIME_SCALE=3``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tidings.auth import Authority
from tidings.config import Settings
from tidings.gateway import Gateway

UNIT = float(os.environ.get("TIDINGS_TEST_TIME_SCALE", "1"))
SECRET = b"test-secret-0123456789abcdef-0123456789"


@pytest.fixture(autouse=True)
def _collect_after() -> Iterator[None]:
    """Collect garbage after each test, so that a resource it leaked in a reference cycle
    (an unclosed socket) is reported against that test, not whichever runs when the
    collector next happens to run."""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own directory, so ./tidings-data never collides."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def authority() -> Authority:
    return Authority(SECRET)


async def start_gateway(authority: Authority, **settings: Any) -> Gateway:
    """A started in-process gateway on port 0 (or ``port=``), with ``Settings(**settings)``."""
    gw = Gateway(Settings(**{"port": 0, **settings}), authority)
    await gw.start()
    return gw


@pytest.fixture
async def gw(authority: Authority) -> AsyncIterator[Gateway]:
    """A gateway with default settings."""
    g = await start_gateway(authority)
    yield g
    await g.stop()


@pytest.fixture
async def gateway(authority: Authority) -> AsyncIterator[Gateway]:
    """A gateway with a short hello deadline and at most 5 subscriptions per connection."""
    gw = Gateway(Settings(port=0, hello_timeout=1.0 * UNIT, max_subscriptions=5), authority)
    await gw.start()
    yield gw
    await gw.stop()

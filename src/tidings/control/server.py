"""Running the control plane: uvicorn in the caller's event loop.

``tidings serve`` runs it beside the gateway on ``control_port`` (7701), sharing
the gateway's engine and catalog; ``tidings control`` runs it alone over its
own engine (with the embedded engine: while no gateway holds the data
directory, e.g. to read history or queue commands; see docs/control-plane.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from tidings.auth import Authority
from tidings.catalog import Catalog
from tidings.config import Settings
from tidings.control.api import create_app
from tidings.engine.base import Engine
from tidings.metrics import GatewayStats

log = logging.getLogger("tidings.control")


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        authority: Authority,
        engine: Engine,
        catalog: Catalog,
        stats: GatewayStats | None = None,
    ) -> None:
        """``engine`` must be started and ``catalog`` opened on it before ``start()``;
        ``stats`` are the figures of the gateway beside it, if any."""
        self.settings = settings
        self.app = create_app(engine, catalog, authority, stats)
        self._server: _Server | None = None
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen on ``settings.host``/``settings.control_port``. Raises ``OSError`` if the port is taken."""
        sock = socket.create_server((self.settings.host, self.settings.control_port), reuse_port=False)
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="tidings-control")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError("the control plane stopped while starting")
            await asyncio.sleep(0.01)
        self._sock = sock

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._sock is not None, "start() first"
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = None


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds it owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

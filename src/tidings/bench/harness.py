"""Start a ``tidings serve`` process for a benchmark and measure its CPU time."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from tidings.auth import SECRET_FILE
from tidings.metrics import percentile

__all__ = [
    "BenchServer",
    "ServerCpu",
    "ServerProcess",
    "free_port",
    "latency_figures",
    "percentile",
    "pin_to",
    "process_cpu_seconds",
    "raise_fd_limit",
]


def pin_to(core: int) -> None:
    """Pin this process to one core when the machine has more than one."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {core})


def raise_fd_limit(needed: int) -> None:
    """Let this process open ``needed`` files (as far as the hard limit allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def flood(
    send_batch: Callable[[], None],
    delivered: Callable[[], int],
    per_batch: int,
    duration: float,
    window: int = 4096,
) -> tuple[int, float]:
    """Publish batches as fast as the slowest subscriber keeps up, for ``duration`` s.

    ``delivered()`` is the count of the slowest subscriber; at most ``window``
    publishes run ahead of it. Returns (messages published, seconds elapsed).
    """
    sent = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration:
        if sent - delivered() < window:
            send_batch()
            sent += per_batch
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(0.0005)
    return sent, time.perf_counter() - started


def latency_figures(published: int, latencies: list[float]) -> dict[str, float]:
    """The fixed-rate W1 figures every system reports: counts and p50/p99/p99.9 in ms."""
    lat = sorted(latencies)
    return {
        "published": published,
        "deliveries": len(lat),
        "p50_ms": round(percentile(lat, 0.50), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "p999_ms": round(percentile(lat, 0.999), 3),
    }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (Linux)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerCpu:
    """``ServerCpu(pids)()``: CPU seconds used so far by servers started elsewhere
    (e.g. the gateways and nodes of ``tidings cluster up``; their pidfiles name them)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def __call__(self) -> float:
        return sum(process_cpu_seconds(pid) for pid in self.pids)


class ServerProcess:
    """A server under test: ``cmd`` started on core 0; ready once a stdout line matches ``ready``.

    ``match`` is that line's match. Raises ``RuntimeError`` when the process exits first.
    """

    def __init__(self, cmd: list[str], ready: str, env: dict[str, str] | None = None) -> None:
        if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
            cmd = ["taskset", "-c", "0", *cmd]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{cmd[0]} exited before it was ready")
            if m := re.search(ready, line):
                self.match = m
                return

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process has used so far."""
        return process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class BenchServer(ServerProcess):
    """``with BenchServer() as server:`` runs ``tidings serve`` on core 0 in a fresh data dir."""

    def __init__(self, env: dict[str, str] | None = None, data_dir: Path | None = None) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="tidings-bench-"))
        cmd = [sys.executable, "-m", "tidings", "serve", "--port", "0", "--allow-anonymous"]
        cmd += ["--data-dir", str(self.data_dir)]
        super().__init__(cmd, r"listening on (ws://\S+)", {"TIDINGS_LOG_LEVEL": "warning", **(env or {})})
        self.url = self.match.group(1)

    @property
    def secret(self) -> bytes:
        """The secret the server signs and checks tokens with (created when it started)."""
        return (self.data_dir / SECRET_FILE).read_bytes().strip()

    def stop(self) -> None:
        super().stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

"""Start and stop a real ``tidings serve`` process for crash tests."""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import UNIT

#: The repository root, so a server process can import test modules (the fault file system).
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``tidings serve`` on ``data_dir``; ``env`` adds environment variables (e.g. the fault FS).

    Its output is read by a thread all along (a full pipe would block the server);
    the last lines are kept in ``output`` for failure messages.
    """

    def __init__(self, data_dir: Path, *extra: str, port: int = 0, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--data-dir", str(data_dir)]
        full_env = {**os.environ, **(env or {})}
        if env:
            full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [*cmd, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=full_env,
        )
        assert self.proc.stdout is not None
        self.url = self.token = ""
        self.output: collections.deque[str] = collections.deque(maxlen=200)
        deadline = time.monotonic() + 30 * UNIT
        while not self.token and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if m := re.search(r"listening on (ws://\S+)", line):
                self.url = m.group(1)
            if m := re.search(r"TIDINGS_TOKEN=(\S+)", line):
                self.token = m.group(1)
        assert self.url and self.token, "server did not start:\n" + "".join(self.output)
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no drain, no flush, no goodbye."""
        self.proc.kill()
        self.wait()

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to end (it was killed or stopped by itself); return its status."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def terminate(self) -> int:
        self.proc.terminate()
        return self.wait(timeout=20 * UNIT)

"""Start and stop a real ``tidings serve`` process for crash tests."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import UNIT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, data_dir: Path, *extra: str, port: int = 0) -> None:
        cmd = [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(
            [*cmd, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.token = ""
        deadline = time.monotonic() + 30 * UNIT
        lines = []
        while not self.token and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"listening on (ws://\S+)", line):
                self.url = m.group(1)
            if m := re.search(r"TIDINGS_TOKEN=(\S+)", line):
                self.token = m.group(1)
        assert self.url and self.token, "server did not start:\n" + "".join(lines)

    def kill(self) -> None:
        """SIGKILL: no drain, no flush, no goodbye."""
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def terminate(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=20 * UNIT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

"""The programs in examples/ work together against a real ``tidings serve``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import UNIT
from tests.reliability_helpers import ServerProcess

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TEXT = "one two three four five six seven eight nine ten"


def test_planner_workers_and_reviewer_merge_a_task(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    env = {**os.environ, "TIDINGS_URL": server.url, "TIDINGS_TOKEN": server.token}

    def start(name: str, *args: str) -> subprocess.Popen[str]:
        cmd = [sys.executable, str(EXAMPLES / f"{name}.py"), *args]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs: dict[str, subprocess.Popen[str]] = {}
    outputs: dict[str, tuple[int, str, str]] = {}
    try:
        procs["reviewer"] = start("reviewer", "--count", "1")
        procs["worker-a"] = start("worker", "--count", "2")
        procs["worker-b"] = start("worker", "--count", "2")
        procs["planner"] = start("planner", "--pieces", "4", TEXT)
        deadline = time.monotonic() + 60 * UNIT
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            outputs[name] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()  # reaps it and closes its pipes
        assert server.terminate() == 0

    for name, (code, out, err) in outputs.items():
        assert code == 0, f"{name} exited with {code}:\n{out}\n{err}"
    assert f"result: {TEXT.upper()}\n" in outputs["planner"][1]
    assert f"merged: {TEXT.upper()}\n" in outputs["reviewer"][1]
    done = [line for name in ("worker-a", "worker-b") for line in outputs[name][1].splitlines()]
    assert sorted(line.split()[1] for line in done) == ["0", "1", "2", "3"], "each piece done once"

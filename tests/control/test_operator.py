"""What an operator sees: presence leases, the CLI, and the API under schemathesis."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import UNIT
from tests.control.conftest import start_node, stop_node
from tests.reliability_helpers import free_port
from tidings.auth import Authority

pytestmark = pytest.mark.timeout(120)

AGENT_SCRIPT = """
import asyncio, sys
import tidings

async def main():
    agent = tidings.connect(sys.argv[1], sys.argv[2], capabilities=["search"], status="idle")
    await agent.open()
    await agent.subscribe("conv/ops/room")
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_frozen_agent_is_reported_offline_within_the_lease(authority: Authority) -> None:
    """SIGSTOP: the agent's socket stays open but nothing answers the server's pings."""
    lease = 2.0 * UNIT
    node = await start_node(authority, presence_timeout=lease)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_SCRIPT, node.gateway.url, node.token("frozen"), stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30 * UNIT)).strip() == b"ready"
        agent = (await node.http.get("/v1/agents/frozen")).json()
        assert agent["online"] and agent["conversations"] == ["conv/ops/room"]
        proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        while (await node.http.get("/v1/agents/frozen")).json()["online"]:
            assert time.monotonic() - stopped < lease + 1.0 * UNIT, "still online after the lease"
            await asyncio.sleep(0.05)
        took = time.monotonic() - stopped
        assert took <= lease + 1.0 * UNIT
        offline = (await node.http.get("/v1/agents", params={"online": "false"})).json()
        assert [a["agent"] for a in offline] == ["frozen"]
    finally:
        proc.kill()
        await proc.wait()
        await stop_node(node)


class Served:
    def __init__(self, proc: subprocess.Popen[str], ws: str, control: str, admin: str) -> None:
        self.proc, self.ws, self.control, self.admin = proc, ws, control, admin


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """``tidings serve`` as an operator runs it (ports 0), with the URLs and tokens it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + 30 * UNIT
    while len(found) < 3 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        for key, pattern in (
            ("ws", r"listening on (ws://\S+)"),
            ("control", r"control plane on (http://\S+)"),
            ("admin", r"TIDINGS_ADMIN_TOKEN=(\S+)"),
        ):
            if m := re.search(pattern, line):
                found[key] = m.group(1)
    assert len(found) == 3, f"serve printed {found}"
    yield Served(proc, found["ws"], found["control"], found["admin"])
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20 * UNIT)
    proc.stdout.close()


def tidings_cli(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIDINGS_CONTROL_URL": served.control, "TIDINGS_ADMIN_TOKEN": served.admin}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args], env=env, capture_output=True, text=True, timeout=60 * UNIT
    )


def test_cli_wraps_the_api(served: Served) -> None:
    made = tidings_cli(
        served, "conversations", "create", "conv/ops/war-room", "--member", "ann", "--max-deliver", "2"
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["policy"]["max_deliver"] == 2
    listed = json.loads(tidings_cli(served, "conversations", "list").stdout)
    assert [c["topic"] for c in listed] == ["conv/ops/war-room"]
    sent = tidings_cli(served, "command", "ann", "steer", "--arg", "heading=270", "--arg", "why=storm")
    assert sent.returncode == 0, sent.stderr
    cmd = json.loads(sent.stdout)
    assert cmd["command"] == "steer" and cmd["online"] is False and cmd["acked"] is False
    history = json.loads(tidings_cli(served, "conversations", "history", "ops/war-room").stdout)
    assert history["messages"] == []
    assert json.loads(tidings_cli(served, "agents", "list").stdout) == []
    bad = tidings_cli(served, "conversations", "get", "ops/nowhere")
    assert bad.returncode == 1 and "not_found" in bad.stderr
    closed = tidings_cli(served, "conversations", "close", "conv/ops/war-room")
    assert json.loads(closed.stdout)["state"] == "closed"
    no_token = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidings",
            "agents",
            "list",
            "--admin-token",
            "nonsense",
            "--control-url",
            served.control,
        ],
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
    )
    assert no_token.returncode == 1 and "unauthorized" in no_token.stderr


def test_schemathesis_finds_no_server_error(served: Served, tmp_path: Path) -> None:
    """A short schemathesis run over every operation of /openapi.json (make test's version)."""
    schemathesis = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{served.control}/openapi.json",
            "--header",
            f"Authorization: Bearer {served.admin}",
            "--max-examples",
            "15",
            "--seed",
            "1",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing",
        ],
        capture_output=True,
        text=True,
        timeout=110 * UNIT,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    health = httpx.get(f"{served.control}/healthz", timeout=5)
    assert health.status_code == 200


def test_tidings_control_runs_alone_over_a_data_directory(tmp_path: Path) -> None:
    """With no gateway holding the data directory, the control plane reads and writes it alone;
    a command queued then is delivered when the gateway is back."""
    data = tmp_path / "data"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "control", "--control-port", str(port), "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 30 * UNIT
        while time.monotonic() < deadline and not any("control plane on" in x for x in lines):
            lines.append(proc.stdout.readline())  # (asyncio debug warnings may come first)
        assert any(f"control plane on http://127.0.0.1:{port}" in x for x in lines), lines
        admin = Authority.from_data_dir(data).mint("operator", admin=True)
        headers = {"Authorization": f"Bearer {admin}"}
        url = f"http://127.0.0.1:{port}"
        made = httpx.post(f"{url}/v1/conversations", json={"topic": "conv/ops/offline"}, headers=headers)
        assert made.status_code == 201, made.text
        sent = httpx.post(f"{url}/v1/agents/ann/commands", json={"command": "start"}, headers=headers)
        assert sent.status_code == 202 and sent.json()["online"] is False
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20 * UNIT)
        assert proc.stdout is not None
        proc.stdout.close()
    # the gateway, started afterwards on the same directory, knows the conversation and the command
    served = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--port", "0", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert served.stdout is not None
        control = ""
        deadline = time.monotonic() + 30 * UNIT
        while not control and time.monotonic() < deadline:
            if m := re.search(r"control plane on (http://\S+)", served.stdout.readline()):
                control = m.group(1)
        got = httpx.get(f"{control}/v1/conversations/ops/offline", headers=headers)
        assert got.status_code == 200 and got.json()["state"] == "open"
        command = httpx.get(f"{control}/v1/agents/ann/commands/{sent.json()['offset']}", headers=headers)
        assert command.status_code == 200 and command.json()["command"] == "start"
    finally:
        served.send_signal(signal.SIGTERM)
        served.wait(timeout=20 * UNIT)
        assert served.stdout is not None
        served.stdout.close()

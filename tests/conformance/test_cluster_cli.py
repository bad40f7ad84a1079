"""``tidings cluster up`` starts 3 nodes and 2 gateways that serve one log; ``down`` stops them."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

import tidings
from tests.conftest import UNIT


def two_free_ports() -> int:
    """A port that is free, with the one after it free too, below the ephemeral range.

    ``cluster up`` puts the second gateway on ``port + 1``. A port of ``free_ports`` is
    ephemeral, and so is the one after it: the NATS routes and the first gateway's
    client connections, made before the second gateway binds, could take ``port + 1``
    meanwhile (they did, in two full runs of the suite of three).
    """
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    start = random.randrange(10_000, max(10_001, ephemeral - 2_002))
    for port in range(start, start + 2_000):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports below the ephemeral range")


def tidings_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args], capture_output=True, text=True, timeout=120 * UNIT
    )


async def test_cluster_up_serves_one_log_through_both_gateways_and_down_stops_it(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    port = two_free_ports()
    up = tidings_cli("cluster", "up", "--state-dir", str(state), "--port", str(port))
    assert up.returncode == 0, up.stderr + up.stdout
    gateways = re.findall(r"gateway: (ws://\S+)", up.stdout)
    assert gateways == [f"ws://127.0.0.1:{port}/", f"ws://127.0.0.1:{port + 1}/"]
    token = re.search(r"TIDINGS_TOKEN=(\S+)", up.stdout)
    assert token is not None and "sync_interval: always" in up.stdout
    pids = [int(p.read_text()) for p in state.glob("*.pid")]
    assert len(pids) == 5
    assert "sync_interval: always" in (state / "n1.conf").read_text()
    try:
        again = tidings_cli("cluster", "up", "--state-dir", str(state), "--port", str(port))
        assert again.returncode == 1 and "already running" in again.stderr
        async with (
            tidings.connect(gateways[0], token.group(1)) as a,
            tidings.connect(gateways[1], token.group(1)) as b,
        ):
            ack = await a.publish("conv/cli/chat", {"hello": 1}, id="first")
            again_ack = await b.publish("conv/cli/chat", {"hello": 1}, id="first")
            assert (again_ack.offset, again_ack.duplicate) == (ack.offset, True)
    finally:
        down = tidings_cli("cluster", "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert "gw1" in down.stdout and "n3" in down.stdout
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive = True
        except OSError:
            alive = False
        assert not alive, f"pid {pid} still running after cluster down"
    assert not list(state.glob("*.pid"))

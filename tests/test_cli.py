"""The tidings command as a user runs it: real subprocesses, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import UNIT
from tidings.auth import Authority
from tidings.config import load_settings

TIDINGS = [sys.executable, "-m", "tidings"]


class Server:
    def __init__(self, proc: subprocess.Popen[str], url: str, token: str) -> None:
        self.proc, self.url, self.token = proc, url, token


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    proc = subprocess.Popen(
        [*TIDINGS, "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    url = token = ""
    deadline = time.monotonic() + 20 * UNIT
    while not token and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if m := re.search(r"listening on (ws://\S+)", line):
            url = m.group(1)
        if m := re.search(r"TIDINGS_TOKEN=(\S+)", line):
            token = m.group(1)
    assert url and token, "server did not print its URL and dev token"
    yield Server(proc, url, token)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    proc.stdout.close()


def test_serve_creates_secret_prints_dev_token_and_drains_on_sigterm(server: Server, tmp_path: Path) -> None:
    secret = tmp_path / "data" / "secret.key"
    assert secret.exists()
    assert secret.stat().st_mode & 0o777 == 0o600
    assert Authority(secret.read_bytes().strip()).verify(server.token).agent == "dev"
    server.proc.send_signal(signal.SIGTERM)
    out, _ = server.proc.communicate(timeout=10 * UNIT)
    assert server.proc.returncode == 0
    assert "stopped" in out


def test_cli_pub_and_sub_against_serve(server: Server) -> None:
    env = {**os.environ, "TIDINGS_URL": server.url, "TIDINGS_TOKEN": server.token}
    sub = subprocess.Popen(
        [*TIDINGS, "sub", "sig/team-1/>", "--count", "1"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        body = '{"hello": "world"}'
        for _ in range(50):  # until the subscriber is up; each pub is a real round trip
            pub = subprocess.run(
                [*TIDINGS, "pub", "sig/team-1/x", body], env=env, capture_output=True, text=True, timeout=20
            )
            assert pub.returncode == 0, pub.stderr
            assert '"duplicate": false' in pub.stdout
            try:
                out, _ = sub.communicate(timeout=0.5 * UNIT)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            pytest.fail("subscriber never received a message")
        assert '"body":{"hello":"world"}' in out
        assert '"sender":"dev"' in out
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
        assert sub.stdout is not None
        sub.stdout.close()


def test_cli_reports_forbidden_clearly(server: Server, tmp_path: Path) -> None:
    minted = subprocess.run(
        [*TIDINGS, "token", "--agent", "narrow", "--pub", "sig/only/>", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {**os.environ, "TIDINGS_URL": server.url, "TIDINGS_TOKEN": minted}
    pub = subprocess.run([*TIDINGS, "pub", "sig/other/x", "1"], env=env, capture_output=True, text=True)
    assert pub.returncode == 1
    assert "error [forbidden]" in pub.stderr


def test_token_command_mints_with_grants(tmp_path: Path) -> None:
    out = subprocess.run(
        [*TIDINGS, "token", "--agent", "a1", "--pub", "conv/t/>", "--sub", "conv/t/>", "--sub", "sig/t/>",
         "--ttl", "60", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    grants = Authority.from_data_dir(tmp_path).verify(out)
    assert grants.agent == "a1"
    assert grants.pub == ("conv/t/>",)
    assert grants.subs == ("conv/t/>", "sig/t/>")
    assert grants.expires_at is not None and grants.expires_at - time.time() <= 61


def test_token_command_refuses_bad_pattern(tmp_path: Path) -> None:
    run = subprocess.run(
        [*TIDINGS, "token", "--agent", "a", "--pub", "conv/>/x", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "'>' must be the last segment" in run.stderr


def test_settings_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "t.toml"
    toml.write_text('port = 7800\nhost = "0.0.0.0"\nmax_subscriptions = 7\n')
    env = {"TIDINGS_PORT": "7900", "TIDINGS_ALLOW_ANONYMOUS": "true"}
    s = load_settings(toml, environ=env, host=None, max_subscriptions=9)
    assert (s.port, s.host, s.max_subscriptions, s.allow_anonymous) == (7900, "0.0.0.0", 9, True)
    with pytest.raises(ValueError, match="port"):
        load_settings(None, environ={"TIDINGS_PORT": "99999"})
    with pytest.raises(ValueError, match="invalid setting"):
        load_settings(None, environ={"TIDINGS_PORT": "abc"})


def test_serve_refuses_bad_settings_clearly() -> None:
    run = subprocess.run(
        [*TIDINGS, "serve"], env={**os.environ, "TIDINGS_PORT": "nope"}, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "invalid setting" in run.stderr


def test_replay_prints_history_and_tail_follows(server: Server) -> None:
    env = {**os.environ, "TIDINGS_URL": server.url, "TIDINGS_TOKEN": server.token}
    offsets = []
    for i in range(3):
        pub = subprocess.run(
            [*TIDINGS, "pub", "conv/team-1/log", f'{{"n": {i}}}'], env=env, capture_output=True, text=True
        )
        assert pub.returncode == 0, pub.stderr
        offsets.append(json.loads(pub.stdout)["offset"])
    assert offsets == sorted(offsets)
    replay = subprocess.run(
        [*TIDINGS, "replay", "conv/team-1/log", "--from", str(offsets[0])],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    lines = [json.loads(line) for line in replay.stdout.splitlines()]
    assert [m["body"]["n"] for m in lines] == [1, 2]
    assert [m["offset"] for m in lines] == offsets[1:]
    tail = subprocess.Popen(
        [*TIDINGS, "tail", "conv/team-1/>", "--count", "1"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        for i in range(50):
            subprocess.run([*TIDINGS, "pub", "conv/team-1/log", f'{{"late": {i}}}'], env=env, check=True,
                           capture_output=True)  # fmt: skip
            try:
                out, _ = tail.communicate(timeout=0.5 * UNIT)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            pytest.fail("tail never printed a message")
        line = json.loads(out.splitlines()[0])
        assert "late" in line["body"], "tail starts from now, not from the history"
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
        assert tail.stdout is not None
        tail.stdout.close()

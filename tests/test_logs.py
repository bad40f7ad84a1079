"""Structured logs from a real ``tidings serve``: JSON lines with context, never bodies or tokens."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import tidings
from tests.conftest import UNIT
from tests.gateway.wsclient import Raw


async def test_json_logs_carry_context_and_never_bodies_or_tokens(tmp_path: Path) -> None:
    errors = tmp_path / "serve.log"
    env = {**os.environ, "TIDINGS_LOG_LEVEL": "debug"}
    with errors.open("wb") as stderr:
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; reading is threaded
            [sys.executable, "-m", "tidings", "serve", "--port", "0", "--log-format", "json"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=tmp_path,
        )
    try:
        assert proc.stdout is not None
        url = token = ""
        deadline = time.monotonic() + 30 * UNIT
        while not (url and token) and time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stdout.readline)
            url = m.group(1) if (m := re.search(r"listening on (ws://\S+)", line)) else url
            token = m.group(1) if (m := re.search(r"TIDINGS_TOKEN=(\S+)", line)) else token
        secret_body = "do-not-log-this-body-7f3a"
        async with tidings.connect(url, token, name="logged") as agent:
            await agent.publish("conv/logs/x", {"text": secret_body})
        refused = await Raw.open(url)
        assert (await refused.hello(token + "tampered"))["code"] == "unauthorized"
        await refused.close()
        await asyncio.sleep(0.3)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)
        assert proc.stdout is not None
        proc.stdout.close()
    lines = [json.loads(line) for line in errors.read_text().splitlines() if line.strip()]
    assert lines, "no log lines"
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    connected = [x for x in lines if "connected" in x["msg"] and x.get("agent") == "dev"]
    assert connected and all(x["conn"] and x["logger"] == "tidings.gateway" for x in connected)
    refusals = [x for x in lines if x["msg"].startswith("hello refused")]
    assert refusals and refusals[0]["code"] == "unauthorized"
    text = errors.read_text()
    assert secret_body not in text
    assert token not in text and token.split(".")[1] not in text  # nor the claims part of it

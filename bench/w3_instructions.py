"""W3's server cost in CPU instructions: a deterministic A/B of two source trees.

Wall-clock CPU per delivery drifts by ±8-10% between identical runs on this
shared 2-core machine, which hides most single changes. Instructions do not
drift: this runs ``tidings serve`` from each source tree under valgrind's
callgrind, offers it the same small W3 load (``tidings bench w3 --url``, agents
with tokens of their own), and prints the instructions the server executed
while the load ran. Identical runs agree within ~0.3%.

    python bench/w3_instructions.py --src /path/to/base --src . --rounds 2

Instructions are not time: at full load this machine runs the server's Python at
~1.8 billion instructions a second against ~4 in a tight loop (cache misses, the
kernel's share), so a change that saves 10% of the instructions may save less
of the CPU (docs/performance.md, "Instructions and time"). The load is kept far
below what the server can do under valgrind (about 50 times slower), so that
frames are not batched more than they would be natively.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def measure(src: Path, rate: float, agents: int, conversations: int, duration: float) -> dict[str, object]:
    """Instructions of one server run from ``src`` under one W3 load (the client is this tree's)."""
    work = Path(tempfile.mkdtemp(prefix="tidings-icount-"))
    out = work / "callgrind.out"
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "TIDINGS_LOG_LEVEL": "warning"}
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--instr-atstart=no"]
    cmd += [PYTHON, "-m", "tidings", "serve", "--port", "0", "--allow-anonymous", "--no-control"]
    cmd += ["--data-dir", str(work / "data")]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = None
        assert server.stdout is not None
        for line in server.stdout:  # start-up is not counted: instrumentation starts below
            if m := re.search(r"listening on (ws://\S+)", line):
                url = m.group(1)
                break
        if url is None:
            raise RuntimeError(f"the server from {src} did not start")
        subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True)
        bench = [PYTHON, "-m", "tidings", "bench", "w3", "--url", url, "--agents", str(agents)]
        bench += ["--conversations", str(conversations), "--rate", str(rate), "--duration", str(duration)]
        bench += ["--p99-limit-ms", "1000000", "--secret-file", str(work / "data" / "secret.key"), "--json"]
        client_env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run(bench, env=client_env, capture_output=True, text=True, check=True)
        subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
    shutil.rmtree(work, ignore_errors=True)
    if totals is None:
        raise RuntimeError("callgrind wrote no totals")
    step = json.loads(done.stdout)["steps"][0]
    return {
        "src": str(src),
        "instructions": int(totals.group(1)),
        "published": step["published"],
        "delivered_per_s": step["delivered_per_s"],
        "own_copies_per_s": step["own_copies_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", type=Path, action="append", help="a source tree (repeat; default: this one)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tree, taking turns")
    parser.add_argument("--rate", type=float, default=0.3, help="publishes/s per agent")
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("needs valgrind (Debian's package valgrind)")
    for _ in range(args.rounds):
        for src in args.src or [ROOT]:
            started = time.monotonic()
            r = measure(src.resolve(), args.rate, args.agents, args.conversations, args.duration)
            r["seconds"] = round(time.monotonic() - started, 1)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()

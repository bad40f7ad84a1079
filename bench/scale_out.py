"""W1 and W3 with 2 gateways over a 3-node JetStream cluster, against the embedded engine.

Starts ``tidings cluster up`` (3 nats-server nodes, R3, ``sync_interval: always``,
2 gateways) pinned to core 0, the core a benchmark's ``tidings serve`` gets, so
both engines have the same server budget; the load generators run on core 1.
Each configuration runs ``--runs`` times, the engines taking turns. Every run is
one ``tidings bench`` command (printed, and kept in the results); the cluster's
CPU is that of its five processes.

    .venv/bin/python bench/scale_out.py --runs 3        (~12 min; results in bench/results/)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TIDINGS = str(Path(sys.executable).parent / "tidings")
W1 = [(10, 64), (100, 64)]
W3_RATES = [0.1, 0.25, 0.5]
#: W3 runs every rate: the cluster is over 50 ms from the first one
W3_LIMIT_MS = 10_000


def commands(urls: list[str], pids: list[int], secret: Path) -> list[tuple[str, str, list[str]]]:
    """(figure, engine, argv) for one round of every configuration, engines taking turns."""
    remote = [a for u in urls for a in ("--url", u)] + [a for p in pids for a in ("--server-pid", str(p))]
    out = []
    for n, size in W1:
        argv = ["bench", "w1", "--subscribers", str(n), "--body-bytes", str(size)]
        argv += ["--duration", "3", "--json"]
        out += [(f"w1 n={n} {size} B", "embedded", argv), (f"w1 n={n} {size} B", "nats", argv + remote)]
    rates = [a for r in W3_RATES for a in ("--rate", f"{r:g}")]
    argv = ["bench", "w3", "--agents", "1000", "--conversations", "100", *rates, "--duration", "4"]
    argv += ["--p99-limit-ms", str(W3_LIMIT_MS), "--json"]
    w3_remote = [*remote, "--secret-file", str(secret)]
    out += [("w3 1000 agents", "embedded", argv), ("w3 1000 agents", "nats", argv + w3_remote)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=7810, help="first gateway port of the cluster")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="tidings-scale-out-"))
    env = {**os.environ, "TIDINGS_ALLOW_ANONYMOUS": "1", "TIDINGS_LOG_LEVEL": "warning"}
    up = ["taskset", "-c", "0", TIDINGS, "cluster", "up", "--state-dir", str(state), "--port", str(args.port)]
    subprocess.run(up, check=True, env=env, stdout=subprocess.DEVNULL)
    records: list[dict[str, Any]] = []
    loads = [_uptime()]
    try:
        info = json.loads((state / "cluster.json").read_text())
        pids = [int(p.read_text()) for p in sorted(state.glob("*.pid"))]
        secret = state / "gateway-data" / "secret.key"
        for run in range(1, args.runs + 1):
            for figure, engine, argv in commands(info["gateways"], pids, secret):
                shown = shlex.join([".venv/bin/tidings", *argv]).replace(str(state), "$STATE")
                started = time.perf_counter()
                done = subprocess.run([TIDINGS, *argv], capture_output=True, text=True)
                seconds = round(time.perf_counter() - started, 1)
                record = {"figure": figure, "engine": engine, "run": run, "command": shown}
                record["seconds"] = seconds
                if done.returncode == 0:
                    record["result"] = json.loads(done.stdout.strip().splitlines()[-1])
                else:
                    record["error"] = done.stderr[-2000:]
                records.append(record)
                failed = " ERROR" if "error" in record else ""
                print(f"{figure} {engine} run {run}: {seconds} s{failed}", flush=True)
            loads.append(_uptime())
    finally:
        subprocess.run([TIDINGS, "cluster", "down", "--state-dir", str(state)], check=False)
    out = HERE / "results" / (datetime.now().strftime("%Y-%m-%d-%H%M") + "-scale-out.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"uptime": loads, "records": records}, indent=1) + "\n")
    print(f"wrote {out}")
    summarize(records)


def summarize(records: list[dict[str, Any]]) -> None:
    """Print each figure's median and range over the runs."""
    keys = dict.fromkeys((r["figure"], r["engine"]) for r in records)
    for figure, engine in keys:
        mine = [r for r in records if (r["figure"], r["engine"]) == (figure, engine)]
        runs = [r["result"] for r in mine if "result" in r]
        if figure.startswith("w1"):
            for field in ("deliveries_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_msg"):
                print(figure, engine, field, _spread([r[field] for r in runs]))
        else:
            for i, rate in enumerate(W3_RATES):
                steps = [r["steps"][i] for r in runs if len(r["steps"]) > i]
                for field in ("delivered_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_msg"):
                    print(figure, engine, rate, field, _spread([s[field] for s in steps]))


def _spread(values: list[Any]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return f"- ({len(values)} runs, none measured)"
    return f"{statistics.median(known):,.3g} ({min(known):,.3g} - {max(known):,.3g}) of {len(values)}"


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()

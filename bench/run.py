"""``make bench``: every workload against tidings and its peers, interleaved, in one run.

For each workload configuration the systems take turns (tidings, peer, peer,
tidings, peer, peer, ...) ``--runs`` times, so drift on a shared machine hits
them alike; each figure is the median of the runs, kept with every run's value.
Raw results go to ``bench/results/<date>.json``; ``bench/report.py`` turns them
into ``docs/benchmarks.md`` and its plots (this script calls it at the end).

Every measurement records the command that reproduces it alone; the functions
called here are the ones those commands call, with the same arguments.

    .venv/bin/python bench/run.py                 (what make bench runs)
    .venv/bin/python bench/run.py --quick         (one short run of everything, to check the machinery)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))

import autogen_w3  # noqa: E402
import jetstream_w2  # noqa: E402
import nats_w1  # noqa: E402
import report  # noqa: E402
import socketio_peer  # noqa: E402

from tidings.bench import w1, w2, w3, w4  # noqa: E402
from tidings.bench.harness import pin_to  # noqa: E402

PY = ".venv/bin/python"
Measure = Callable[[], dict[str, Any]]


class Plan:
    """Groups of (system, command, measure) that run interleaved."""

    def __init__(self) -> None:
        self.groups: list[tuple[str, dict[str, Any], list[tuple[str, str, Measure]]]] = []

    def add(self, workload: str, params: dict[str, Any], systems: list[tuple[str, str, Measure]]) -> None:
        self.groups.append((workload, params, systems))


def _rates(values: list[float]) -> str:
    return " ".join(f"--rate {r:g}" for r in values)


def build(quick: bool) -> Plan:
    d1, d2, d3 = (1.0, 1.0, 1.5) if quick else (3.0, 4.0, 4.0)
    plan = Plan()
    for n in (10, 100):
        for size in (64, 1024):
            args = f"--subscribers {n} --body-bytes {size} --duration {d1:g}"
            plan.add(
                "w1",
                {"subscribers": n, "body_bytes": size},
                [
                    (
                        "tidings",
                        f".venv/bin/tidings bench w1 {args} --json",
                        lambda n=n, size=size: w1.run(subscribers=n, body_bytes=size, duration=d1),
                    ),
                    (
                        "nats-server",
                        f"{PY} bench/peers/nats_w1.py {args} --runs 1",
                        lambda n=n, size=size: nats_w1.measure(n, size, d1),
                    ),
                    (
                        "python-socketio",
                        f"{PY} bench/peers/socketio_peer.py w1 {args}",
                        lambda n=n, size=size: socketio_peer.run_w1(n, size, d1),
                    ),
                ],
            )
    # (publishers, connections): None is one connection per publisher; 256 on 8 is the
    # shape of a few SDK processes each running many agents
    for p, c in ((1, None), (32, None), (256, None), (256, 8)):
        shape = f"--publishers {p}" + (f" --connections {c}" if c else "")
        plan.add(
            "w2",
            {"publishers": p, **({"connections": c} if c else {})},
            [
                (
                    "tidings",
                    f".venv/bin/tidings bench w2 {shape} --duration {d2:g} --json",
                    lambda p=p, c=c: w2.run(publishers=p, duration=d2, connections=c),
                ),
                *[
                    (
                        f"jetstream-{sync}",
                        f"{PY} bench/peers/jetstream_w2.py {shape} --sync {sync} --duration {d2:g}",
                        lambda p=p, c=c, sync=sync: jetstream_w2.measure(p, sync, d2, connections=c),
                    )
                    for sync in ("lazy", "always")
                ],
            ],
        )
    base = [0.1, 0.25, 0.5, 1.0, 1.5, 2.25, 3.0, 4.5]
    for agents, scale in ((1000, 1.0), (10_000, 0.1)):
        if quick and agents > 1000:
            continue
        rates = [round(r * scale, 4) for r in base]
        conv = agents // 10
        systems = [
            (
                "tidings",
                f".venv/bin/tidings bench w3 --agents {agents} --conversations {conv} {_rates(rates)} "
                f"--duration {d3:g} --json",
                lambda a=agents, c=conv, r=rates: w3.run(a, c, r, d3),
            ),
            (
                "python-socketio",
                f"{PY} bench/peers/socketio_peer.py w3 --agents {agents} --conversations {conv} "
                f"--rate {' '.join(f'{r:g}' for r in rates)} --duration {d3:g}",
                lambda a=agents, c=conv, r=rates: socketio_peer.run_w3(a, c, r, d3),
            ),
        ]
        if agents <= 1000:
            systems.append(
                (
                    "autogen-grpc",
                    f"{PY} bench/peers/autogen_w3.py --agents {agents} --conversations {conv} "
                    f"--rate {' '.join(f'{r:g}' for r in rates)} --duration {d3:g}",
                    lambda a=agents, c=conv, r=rates: autogen_w3.run_w3(a, c, r, d3),
                )
            )
        plan.add("w3", {"agents": agents, "conversations": conv}, systems)
    conns = 1000 if quick else 10_000
    plan.add(
        "w4",
        {"connections": conns},
        [
            (
                "tidings",
                f".venv/bin/tidings bench w4 --connections {conns} --json",
                lambda: w4.run(connections=conns),
            )
        ],
    )
    return plan


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }


def execute(plan: Plan, runs: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for workload, params, systems in plan.groups:
        for run in range(1, runs + 1):
            for system, command, measure in systems:
                started = time.perf_counter()
                record: dict[str, Any] = {
                    "workload": workload,
                    "params": params,
                    "system": system,
                    "run": run,
                    "command": command,
                }
                try:
                    record["result"] = measure()
                except Exception as exc:
                    record["error"] = f"{type(exc).__name__}: {exc}"
                    log(traceback.format_exc())
                record["seconds"] = round(time.perf_counter() - started, 1)
                log(
                    f"{workload} {params} {system} run {run}: {record['seconds']} s"
                    + (f" ERROR {record['error']}" if "error" in record else "")
                )
                records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one short run of everything")
    parser.add_argument("--only", nargs="*", help="workloads to run (w1 w2 w3 w4)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    pin_to(1)
    plan = build(args.quick)
    if args.only:
        plan.groups = [g for g in plan.groups if g[0] in args.only]
    runs = 1 if args.quick else args.runs
    started = time.perf_counter()
    before = machine()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {line}", flush=True)

    records = execute(plan, runs, log)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    results = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "commit": commit.stdout.strip(),
        "runs": runs,
        "quick": args.quick,
        "machine_before": before,
        "machine_after": machine(),
        "seconds": round(time.perf_counter() - started),
        "records": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = datetime.now().strftime("%Y-%m-%d-%H%M") + ("-quick" if args.quick else "")
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {path}")
    if not args.no_report:  # a quick run's report stays beside its results
        report.main([str(path)] + ([str(args.out)] if args.quick else []))


if __name__ == "__main__":
    main()

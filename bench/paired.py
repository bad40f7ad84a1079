"""Two revisions of tidings benched at the same time, for changes smaller than one run's noise.

    .venv/bin/python bench/paired.py REV_A REV_B [--runs 4] [--key acked_per_s] [-- BENCH ARGS]

(BENCH ARGS: ``tidings bench``'s, by default ``w2 --publishers 256 --duration 6``.)

Each revision's ``src`` is taken out of git (``git archive``) into a temporary
directory; every run starts ``tidings bench ARGS --json`` once for each, at the same
time (the start order alternates from run to run), with ``PYTHONPATH`` pointing at
that revision. Both servers share core 0 and both load generators core 1, so the
machine's drift hits the two alike, and each run compares the two processes' own
figures: ``server_cpu_us_per_msg`` and ``--key`` (the rate), B against A. A revision
paired with itself gave 0.957-1.004 (3 runs) on W2 at 256 connections, where five
interleaved solo pairs could not show a 5% change (docs/performance.md). The rates
are about half of a solo run's; the ratios are what count.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIDINGS = Path(sys.executable).parent / "tidings"


def checkout(rev: str, into: Path) -> Path:
    """Extract ``rev``'s ``src`` into ``into``; return the directory to put on ``PYTHONPATH``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def start(src: Path, args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [str(TIDINGS), "bench", *args, "--json"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def figures(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate()
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"tidings bench exited with {proc.returncode}")
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rev_a")
    parser.add_argument("rev_b")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--key", default=None, help="the rate to compare (default: by workload)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    opts = parser.parse_args(argv[:cut])
    args = argv[cut + 1 :] or ["w2", "--publishers", "256", "--duration", "6"]
    key = opts.key or {"w1": "deliveries_per_s", "w2": "acked_per_s", "w3": "delivered_per_s"}[args[0]]
    cpu_ratios, rate_ratios = [], []
    with tempfile.TemporaryDirectory(prefix="tidings-paired-") as tmp:
        trees = {"A": checkout(opts.rev_a, Path(tmp) / "a"), "B": checkout(opts.rev_b, Path(tmp) / "b")}
        for run in range(opts.runs):
            order = ["A", "B"] if run % 2 == 0 else ["B", "A"]
            procs = {}
            for name in order:
                procs[name] = start(trees[name], args)
                time.sleep(0.3)
            a, b = figures(procs["A"]), figures(procs["B"])
            cpu = b["server_cpu_us_per_msg"] / a["server_cpu_us_per_msg"]
            rate = b[key] / a[key]
            cpu_ratios.append(cpu)
            rate_ratios.append(rate)
            print(
                f"run {run + 1}: A {a[key]:,.0f} {key} at {a['server_cpu_us_per_msg']} µs, "
                f"B {b[key]:,.0f} at {b['server_cpu_us_per_msg']} µs: "
                f"B/A server CPU per message {cpu:.3f}, rate {rate:.3f}",
                flush=True,
            )
    print(
        f"{opts.rev_b} against {opts.rev_a}, {opts.runs} runs: server CPU per message "
        f"{min(cpu_ratios):.3f}-{max(cpu_ratios):.3f} (median {statistics.median(cpu_ratios):.3f}), "
        f"rate {min(rate_ratios):.3f}-{max(rate_ratios):.3f} (median {statistics.median(rate_ratios):.3f})"
    )


if __name__ == "__main__":
    main()

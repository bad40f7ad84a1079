"""Healthy clients' p99 while an attacker runs the hostile-input cases (issue #9's figure).

A real ``tidings serve`` (every thread on core 0, no asyncio debug mode) with the
settings the hostile cases assume, and the healthy clients (an SDK publisher and
an SDK subscriber, 400 signals/s, in this process) also on core 0; the attacker
process (``python -m tests.reliability.hostile``: every case in a loop, 100
slowloris connections held open) alone on core 1, as an attacker on another
machine would be: it makes the server do all the work the attacks cause, but does
not take the server's or the healthy clients' CPU for its own. Each round
measures the healthy p99 for ``--seconds`` without attack, then with it.

The healthy clients stand for clients on other machines too, so they should not
wait for the CPU behind the server they measure: they run at ``SCHED_FIFO``
(where permitted; ``healthy_sched`` in the output says which), so they take the
core as soon as a message reaches them, and the server and the attacker stay at
the normal policy (``SCHED_RESET_ON_FORK``). At the normal policy the scheduler
could keep them waiting a time slice behind a busy server: the subscription
flood measured ~5x that way and ~2x at ``SCHED_FIFO`` (docs/reliability.md).
``--no-realtime`` measures the old way. Prints one JSON object:

    python bench/hostile_p99.py --rounds 5 --seconds 3
    python bench/hostile_p99.py --rounds 5 --seconds 3 --cases many_subscriptions
    python bench/hostile_p99.py --rounds 7 --seconds 3 --cases all

``ratio`` is the median over the rounds of (p99 under attack / p99 without);
the target is ``ratio`` <= 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.hostile import ATTACKS, ENV, p99_under, prepare  # noqa: E402
from tests.reliability_helpers import ServerProcess  # noqa: E402

from tidings.bench.harness import pin_to  # noqa: E402

#: every case but the subscription flood, which has its own row (``--cases many_subscriptions``)
PER_MESSAGE = [name for name in ATTACKS if name != "many_subscriptions"]


def _pin_process(pid: int, core: int) -> None:
    """Pin every thread of ``pid`` (the log's writer threads too) to ``core``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {core})


def _realtime() -> str:
    """Run this thread (the healthy clients) at SCHED_FIFO, its children at the normal policy."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(10))
    except (AttributeError, OSError):  # not Linux, or not permitted
        return "SCHED_OTHER (SCHED_FIFO not permitted)"
    return "SCHED_FIFO"


async def _rounds(cases: list[str], rounds: int, seconds: float, realtime: bool) -> dict[str, Any]:
    sched = _realtime() if realtime else "SCHED_OTHER"
    data = Path(tempfile.mkdtemp(prefix="tidings-hostile-")) / "data"
    server = ServerProcess(data, env={**ENV, "PYTHONASYNCIODEBUG": ""})
    try:
        _pin_process(server.proc.pid, 0)
        target = prepare(server, data)
        prefix = ["taskset", "-c", "1"] if shutil.which("taskset") else []
        results = [await p99_under(target, cases, seconds, prefix) for _ in range(rounds)]
        assert target.control is not None
        target.control.close()
    finally:
        server.terminate()
        shutil.rmtree(data.parent, ignore_errors=True)
    lost = sum(r.sent - r.received for r in results)
    return {
        "figure": "healthy p99 under attack",
        "cases": cases,
        "rounds": rounds,
        "seconds": seconds,
        "p99_base_ms": [round(r.p99_base, 2) for r in results],
        "p99_attack_ms": [round(r.p99_attack, 2) for r in results],
        "ratios": [round(r.ratio, 2) for r in results],
        "ratio": round(statistics.median(r.ratio for r in results), 2),
        "attacks_run": {name: sum(r.runs.get(name, 0) for r in results) for name in results[0].runs},
        "healthy_lost": lost,
        "healthy_sched": sched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--cases", default=",".join(PER_MESSAGE), help="attack names (comma-separated), or 'all'"
    )
    parser.add_argument(
        "--no-realtime", action="store_true", help="healthy clients at the normal policy, not SCHED_FIFO"
    )
    args = parser.parse_args()
    cases = list(ATTACKS) if args.cases == "all" else args.cases.split(",")
    unknown = set(cases) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if (os.cpu_count() or 1) > 1:
        pin_to(0)
    print(json.dumps(asyncio.run(_rounds(cases, args.rounds, args.seconds, not args.no_realtime))))


if __name__ == "__main__":
    main()

"""The crash loop over the SDK (SIGKILL, then simulated power cuts), judged by the checker.

``make test`` runs a few cycles of each; ``make reliability`` runs the long
versions (``TIDINGS_RELIABILITY_LONG=1``): at least 100 kill cycles and
1,000,000 acknowledged messages, and at least 100 power cuts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.checker import read_history
from tests.reliability.crashloop import run_crash_loop

LONG = os.environ.get("TIDINGS_RELIABILITY_LONG") == "1"


def acks_between(history: Path, windows: list[tuple[float, float]]) -> int:
    return sum(
        1
        for ev in read_history(history)
        if ev["type"] == "ok" and ev["f"] == "publish" and any(a <= ev["time"] <= b for a, b in windows)
    )


def _verdict(result: object) -> None:
    from tests.reliability.crashloop import LoopResult

    assert isinstance(result, LoopResult)
    report = result.report
    print(f"\n{result.cycles} cycles in {result.seconds:.0f} s: {report.summary()}")
    if result.cuts_with_unsynced or result.cuts_torn:
        print(
            f"power cuts that threw unsynced writes away: {result.cuts_with_unsynced},"
            f" that tore one: {result.cuts_torn}"
        )
    assert report.valid, report.as_dict()
    assert report.lost.count == 0 and report.lost_middle.count == 0
    assert report.acknowledged > result.cycles * 10, "publishers got acknowledgements between the kills"


async def test_sigkill_crash_loop(tmp_path: Path) -> None:
    result = await run_crash_loop(tmp_path, cycles=3, gap=(0.5, 1.5), seed=11)
    _verdict(result)
    assert result.report.deliveries > 0


async def test_power_cut_loop(tmp_path: Path) -> None:
    result = await run_crash_loop(tmp_path, cycles=3, kill="power", gap=(0.5, 1.5), seed=12)
    _verdict(result)


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.skipif(not LONG, reason="make reliability")
async def test_sigkill_crash_loop_long(tmp_path: Path) -> None:
    result = await run_crash_loop(
        tmp_path, cycles=100, min_acked=1_000_000, publishers=8, inflight=32, seed=21, progress=True
    )
    _verdict(result)
    assert result.cycles >= 100 and result.report.acknowledged >= 1_000_000


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.skipif(not LONG, reason="make reliability")
async def test_power_cut_loop_long(tmp_path: Path) -> None:
    # 0.5-2 s apart (not 5): the cuts are the point here, and a shorter log restarts faster.
    result = await run_crash_loop(
        tmp_path, cycles=100, kill="power", publishers=2, inflight=16, gap=(0.5, 2.0), seed=22, progress=True
    )
    _verdict(result)
    assert result.cycles >= 100


async def test_failing_fsync_stops_the_server_and_acknowledges_nothing_unsynced(tmp_path: Path) -> None:
    """Each cycle makes every fdatasync fail (the fault layer also throws the failed batch's
    bytes away): ``tidings serve`` must exit with 70, and every acknowledged message must
    be on disk after the restart, including those acknowledged after the failure began."""
    result = await run_crash_loop(tmp_path, cycles=3, kill="fsync", gap=(0.5, 1.5), seed=13)
    _verdict(result)
    assert len(result.sync_failures) == 3  # each ended with status 70 (asserted in the loop)
    late = acks_between(result.history, result.sync_failures)
    print(f"pubacks received between a failing fsync and the exit: {late} (all of them on disk)")

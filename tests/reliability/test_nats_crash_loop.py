"""The crash loop with the NATS engine: a NATS node and a gateway SIGKILLed every cycle.

``make test`` runs 3 cycles; ``make reliability`` runs the long version
(``TIDINGS_RELIABILITY_LONG=1``): as many cycles as fit in about 15 minutes,
at least 20. Acceptance: 0 acknowledged messages lost (docs/reliability.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.natsloop import NatsLoopResult, run_nats_crash_loop

LONG = os.environ.get("TIDINGS_RELIABILITY_LONG") == "1"


def _verdict(result: NatsLoopResult) -> None:
    report = result.report
    worst = max(result.recoveries, default=0.0)
    print(
        f"\n{result.cycles} cycles (a NATS node and a gateway killed in each) in {result.seconds:.0f} s;"
        f" a killed node was healthy again within {worst:.1f} s: {report.summary()};"
        f" acknowledged but never delivered, per consumer: {result.missing}"
        f" (caught up {result.catch_up_s:.1f} s after the last publish)"
    )
    assert report.valid, report.as_dict()
    assert not result.refused, result.refused
    assert all(n == 0 for n in result.missing.values()), "a consumer never got acknowledged messages"
    assert report.lost.count == 0 and report.lost_middle.count == 0
    assert report.deliveries > 0
    assert report.acknowledged > result.cycles * 10, "publishers got acknowledgements between the kills"


async def test_nats_crash_loop(tmp_path: Path) -> None:
    result = await run_nats_crash_loop(tmp_path, cycles=3, gap=(1.0, 3.0), seed=31)
    _verdict(result)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not LONG, reason="make reliability")
async def test_nats_crash_loop_long(tmp_path: Path) -> None:
    result = await run_nats_crash_loop(tmp_path, cycles=20, budget_s=14 * 60, seed=41, progress=True)
    _verdict(result)
    assert result.cycles >= 20

from __future__ import annotations

import io
import re

from rich.console import Console

from tidings.demo import run_demo


async def test_demo_survives_a_sigkill_with_nothing_lost() -> None:
    out = io.StringIO()
    figures = await run_demo(
        agents=30, conversations=5, duration=4.0, rate=4.0, console=Console(file=out, width=200)
    )
    acked = sum(len(ids) for ids in figures.acked.values())
    assert acked > 50
    assert figures.missing == 0, "every acknowledged message reached every member of its conversation"
    assert figures.reconnects >= 30, "every agent reconnected after the kill"
    assert figures.latencies_ms
    replies = sum(parent is not None for parents in figures.parents.values() for parent in parents.values())
    assert replies > acked // 2, "most messages answer an earlier one, so the causal graph has edges"
    text = out.getvalue()
    assert "server killed with SIGKILL" in text
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/ui/#token=\S+", text)
    assert "every acknowledged message reached every member" in text

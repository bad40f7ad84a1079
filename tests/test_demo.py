from __future__ import annotations

import io

from rich.console import Console

from tidings.demo import run_demo


async def test_demo_swarm_talks_and_summarises() -> None:
    out = io.StringIO()
    figures = await run_demo(agents=30, conversations=5, duration=2.0, rate=10.0, console=Console(file=out))
    assert figures.published > 100
    # Each conversation has 6 members who all hear every message (their own included).
    assert figures.delivered >= figures.published * 6 * 0.9
    assert figures.latencies_ms
    text = out.getvalue()
    assert "summary" in text
    assert "latency p50" in text

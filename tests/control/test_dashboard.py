"""The dashboard in a real browser: Playwright driving Debian's Chromium.

``tidings serve`` runs as a child process and the demo's swarm talks through
it (agents replying to each other, so messages carry ``parent`` links). The
test opens ``/ui/#token=...``, watches the live figures move, opens a
conversation and counts the causal graph's nodes and edges against what the
swarm published and what the API answers, then saves the screenshot the
README shows (``docs/img/dashboard.png``).

Without the ``playwright`` package or ``/usr/bin/chromium`` it skips and says
why (``make test`` installs both where it can); under ``CI=true`` it fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import UNIT
from tidings.bench.harness import free_port
from tidings.demo import Figures, Server, Swarm

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: the README's screenshot, rewritten only when asked (TIDINGS_UPDATE_SCREENSHOT=1), so that
#: make test leaves the checkout clean; otherwise the screenshot goes to the test's temp dir
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"
CONVERSATION = "conv/team-0/chat"
#: the dashboard's graph window in this test (the swarm publishes about half of it)
WINDOW = 300
NO_FIGURE = "\u2013"  # what the dashboard shows before it has a figure


def _need_a_browser() -> None:
    missing = []
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium; make test does it as root)")
    if missing:
        reason = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: a missing browser is a failure)")
        pytest.skip(reason)


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout * UNIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_dashboard_shows_live_figures_and_the_causal_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    _need_a_browser()
    from playwright.async_api import async_playwright

    # Chromium writes under $HOME (.config, .cache) even with a temporary profile. (A short
    # path under /tmp: the unix socket it makes in TMPDIR must fit in 108 bytes.)
    home = Path(tempfile.mkdtemp(prefix="tidings-ui-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    for var in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "TMPDIR"):
        (home / var.lower()).mkdir()
        monkeypatch.setenv(var, str(home / var.lower()))

    server = Server(tmp_path / "data", free_port(), free_port())
    await asyncio.to_thread(server.start)
    figures = Figures()
    # two teams of five (every role, the nacking critic included), about 15 messages/s each
    swarm = Swarm(server, agents=10, conversations=2, figures=figures)
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    try:
        await server.create_conversations(swarm.members)
        swarm.start(rate=3.0)
        async with (
            async_playwright() as pw,
            httpx.AsyncClient(base_url=server.control_url, headers=admin, timeout=10) as http,
        ):
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(server.dashboard_url)
            assert "token=" not in page.url, "the token is taken out of the address bar"

            # the lists: both conversations, every agent online
            conversations = page.locator("#conversations li[data-conversation]")
            await _until("both conversations listed", lambda: _is(conversations.count(), 2))
            online = page.locator('#agents li[data-online="true"]')
            await _until("ten agents online", lambda: _is(online.count(), 10))
            await _until("ten connections", lambda: _is(page.inner_text("#fig-connections"), "10"))

            # live figures move while the swarm talks
            total = page.locator("#fig-published-total")
            first = await total.inner_text()
            await _until("the published total to change", lambda: _differs(total.inner_text(), first))
            rate = page.locator("#fig-published-rate")
            await _until("a published rate", lambda: _positive(rate.inner_text()))
            p50 = page.locator('#latency-table tr[data-stage="publish_deliver"] .p50')
            await _until("a publish->deliver p50", lambda: _differs(p50.inner_text(), NO_FIGURE))

            # the causal graph grows live
            await page.click(f'#conversations li[data-conversation="{CONVERSATION.removeprefix("conv/")}"]')
            await page.select_option("#graph-limit", str(WINDOW))
            nodes = page.locator("#graph-svg [data-node-id]")
            await _until("graph nodes", lambda: _at_least(nodes.count(), 1))
            seen = await nodes.count()
            await _until("the graph to grow", lambda: _at_least(nodes.count(), seen + 5))
            # the README's picture, taken while the swarm talks (a few seconds of sparkline)
            await asyncio.sleep(2.0)
            shot = SCREENSHOT if os.environ.get("TIDINGS_UPDATE_SCREENSHOT") else tmp_path / "dashboard.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            await swarm.quiesce()
            assert swarm.verify() == 0
            acked = figures.acked[CONVERSATION]
            parents = figures.parents[CONVERSATION]
            replies = sum(parent is not None for parent in parents.values())
            assert 30 < len(acked) < WINDOW, "the whole conversation fits in the dashboard's window"
            assert replies > len(acked) // 2, "most messages answer an earlier one"

            graph: dict[str, Any] = {}

            async def api_has_it_all() -> bool:
                graph.update((await http.get(f"/v1/conversations/team-0/chat/graph?limit={WINDOW}")).json())
                return len(graph["nodes"]) == len(acked)

            await _until("the API's graph to hold every acknowledged message", api_has_it_all)
            assert {n["id"] for n in graph["nodes"]} == acked
            assert {(e["source"], e["target"]) for e in graph["edges"]} == {
                (parent, child) for child, parent in parents.items() if parent is not None
            }

            # the dashboard draws exactly that graph
            summary = page.locator(f'#graph-summary[data-nodes="{len(acked)}"][data-edges="{replies}"]')
            await summary.wait_for(timeout=10_000 * UNIT)
            assert await nodes.count() == len(acked)
            assert await page.locator("#graph-svg [data-edge]").count() == replies
            drawn = await nodes.evaluate_all("els => els.map(e => e.dataset.nodeId)")
            assert set(drawn) == acked

            # redeliveries and dead letters are marked (the last ones may still be happening: retry)
            async def marked_as_the_api_says() -> bool:
                api = (await http.get(f"/v1/conversations/team-0/chat/graph?limit={WINDOW}")).json()
                want = {n["id"]: [n["redeliveries"] > 0, n["dead_letter"]] for n in api["nodes"]}
                drawn = await nodes.evaluate_all(
                    """els => Object.fromEntries(els.map(e => [e.dataset.nodeId,
                        [e.classList.contains("redelivered"), e.classList.contains("dead")]]))"""
                )
                return bool(drawn == want)

            await _until("redeliveries and dead letters marked as the API says", marked_as_the_api_says)

            # "fit to width" draws the same graph, smaller
            await page.check("#graph-fit")
            await page.locator("#graph-svg .node.compact").first.wait_for(timeout=5_000 * UNIT)
            assert await nodes.count() == len(acked)
            assert await page.locator("#graph-svg [data-edge]").count() == replies
            await page.uncheck("#graph-fit")

            # a node opens its details and highlights its thread
            child = next(c for c in reversed(drawn) if parents[c])  # the latest reply
            await page.click(f'#graph-svg [data-node-id="{child}"]')
            assert await page.inner_text("#d-parent") == parents[child]
            await page.click("#graph-svg", position={"x": 3, "y": 3})  # back to the whole graph

            assert not errors, errors
            await browser.close()
    finally:
        await swarm.close()
        server.stop()


async def _is(value: Awaitable[object], expected: object) -> bool:
    return (await value) == expected


async def _differs(value: Awaitable[str], old: str) -> bool:
    return (await value) != old


async def _at_least(value: Awaitable[int], n: int) -> bool:
    return (await value) >= n


async def _positive(value: Awaitable[str]) -> bool:
    text = (await value).replace(",", "")
    return text.isdigit() and int(text) > 0

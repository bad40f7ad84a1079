"""The control plane over real HTTP, with agents on real WebSocket connections."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import tidings
from tests.conftest import UNIT
from tests.control.conftest import Node, start_node, stop_node
from tests.gateway.wsclient import Raw, authed
from tidings.auth import Authority
from tidings.errors import Forbidden
from tidings.protocol.frames import Msg

pytestmark = pytest.mark.timeout(60)


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout * UNIT
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_conversation_lifecycle_members_history_close_delete(node: Node) -> None:
    joined: list[Any] = []
    async with tidings.connect(node.gateway.url, node.token("ann"), name="ann") as ann:

        @ann.on_command("join")
        async def on_join(msg: tidings.Message) -> None:
            joined.append(msg.body)

        r = await node.http.post(
            "/v1/conversations",
            json={
                "topic": "conv/team/plan",
                "members": ["ann", "bob"],
                "policy": {"max_deliver": 3, "dedup_window_s": 60},
            },
        )
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["id"] == "team/plan" and created["state"] == "open"
        assert created["members"] == ["ann", "bob"] and created["policy"]["max_deliver"] == 3
        assert node.gateway.catalog.policy("conv/team/plan").max_deliver == 3
        assert node.gateway.catalog.retention("conv/team/plan").dedup_window_ms == 60_000

        again = await node.http.post("/v1/conversations", json={"topic": "conv/team/plan"})
        assert again.status_code == 409 and again.json()["code"] == "conflict"

        # each member got a join command on its control topic; ann is connected and acts on it
        await wait_for(lambda: len(joined) == 1)
        assert joined[0]["conversation"] == "conv/team/plan" and joined[0]["command"] == "join"
        assert await node.gateway.engine.head("ctl/bob/commands") > 0  # queued for bob, who is away

        sub = await ann.subscribe("conv/team/plan")
        for i in range(3):
            await ann.publish("conv/team/plan", {"n": i})
        got = (await node.http.get("/v1/conversations/team/plan")).json()
        assert got["messages"] == 3 and got["head"] > 0 and got["members_online"] == ["ann"]
        assert got["last_activity_ms"] is not None
        await sub.unsubscribe()

        page = (await node.http.get("/v1/conversations/team/plan/messages", params={"limit": 2})).json()
        assert [m["body"]["n"] for m in page["messages"]] == [0, 1] and page["messages"][0]["sender"] == "ann"
        rest = (
            await node.http.get("/v1/conversations/team/plan/messages", params={"from": page["next"]})
        ).json()
        assert [m["body"]["n"] for m in rest["messages"]] == [2]

        listed = (await node.http.get("/v1/conversations", params={"member": "bob"})).json()
        assert [c["topic"] for c in listed] == ["conv/team/plan"]
        assert (await node.http.get("/v1/conversations", params={"group": "other"})).json() == []

        closed = await node.http.post("/v1/conversations/team/plan/close")
        assert closed.status_code == 200 and closed.json()["state"] == "closed"
        with pytest.raises(Forbidden, match="closed"):
            await ann.publish("conv/team/plan", {"n": 3})
        assert len((await node.http.get("/v1/conversations/team/plan/messages")).json()["messages"]) == 3

        gone = await node.http.delete("/v1/conversations/team/plan")
        assert gone.status_code == 204
        assert (await node.http.get("/v1/conversations/team/plan")).status_code == 404
        # retention removes a deleted conversation's messages in the background
        await wait_for(lambda: node.gateway.engine.store.count("conv/team/plan") == 0, timeout=5)
        # and its name can be used again
        r = await node.http.post("/v1/conversations", json={"topic": "conv/team/plan"})
        assert r.status_code == 201 and r.json()["messages"] == 0


async def test_cancel_reaches_a_busy_agent_ahead_of_10000_queued_messages(node: Node) -> None:
    """The agent is busy with one message and 10,000 more wait for it; a cancel from the
    control plane reaches it at once (the ctl/ lane), before any of the 10,000."""
    handled: list[Any] = []
    started, cancelled = asyncio.Event(), asyncio.Event()
    seen_at_cancel: list[Any] = []
    async with (
        tidings.connect(node.gateway.url, node.token("worker"), name="worker") as worker,
        tidings.connect(node.gateway.url, node.token("boss"), name="boss") as boss,
    ):

        @worker.on("conv/jobs/queue", consumer="work")
        async def work(msg: tidings.Message) -> None:
            handled.append(msg.body)
            if msg.body == "task":
                started.set()
                await asyncio.sleep(3600)  # a long model call, until cancelled

        @worker.on_command("cancel")
        async def on_cancel(msg: tidings.Message) -> None:
            seen_at_cancel.extend(handled)
            cancelled.set()

        await boss.publish("conv/jobs/queue", "task")
        await asyncio.wait_for(started.wait(), 5 * UNIT)
        engine = node.gateway.engine
        await asyncio.gather(
            *(
                engine.publish(Msg(topic="conv/jobs/queue", id=f"q{i}", sender="boss", ts=0, body=i))
                for i in range(10_000)
            )
        )
        t0 = time.monotonic()
        r = await node.http.post(
            "/v1/agents/worker/commands",
            json={"command": "cancel", "args": {"conversation": "conv/jobs/queue"}},
        )
        assert r.status_code == 202 and r.json()["online"] is True
        await asyncio.wait_for(cancelled.wait(), 5 * UNIT)
        assert time.monotonic() - t0 < 1.0 * UNIT
        assert seen_at_cancel == ["task"], "a queued data message was handled before the cancel"
        # the cancelled work was acked and the queue moves on
        await wait_for(lambda: len(handled) > 100, timeout=20)
        offset = r.json()["offset"]
        deadline = time.monotonic() + 5 * UNIT
        while not (await node.http.get(f"/v1/agents/worker/commands/{offset}")).json()["acked"]:
            assert time.monotonic() < deadline, "the cancel command was never acked"
            await asyncio.sleep(0.05)


async def test_command_status_and_stale_epochs_are_ignored(node: Node) -> None:
    steered: list[int] = []
    async with tidings.connect(node.gateway.url, node.token("pilot"), name="pilot") as pilot:

        @pilot.on_command("steer")
        async def steer(msg: tidings.Message) -> None:
            steered.append(msg.body["epoch"])

        pilot.accept_commands()
        for epoch in (5, 3, 7):  # 3 arrives after 5 for the same key: stale
            r = await node.http.post(
                "/v1/agents/pilot/commands",
                json={"command": "steer", "key": "course", "epoch": epoch, "args": {"heading": epoch}},
            )
            assert r.status_code == 202, r.text
        await wait_for(lambda: 7 in steered)
        assert steered == [5, 7]

        # a late resume cannot undo a later pause for the same key
        for command, epoch in (("pause", 20), ("resume", 19)):
            await node.http.post(
                "/v1/agents/pilot/commands", json={"command": command, "key": "agent", "epoch": epoch}
            )
        last = await node.http.post(
            "/v1/agents/pilot/commands", json={"command": "steer", "key": "course", "epoch": 8}
        )
        await wait_for(lambda: 8 in steered)
        assert not pilot.work.resumed.is_set(), "the stale resume was acted on"
        await node.http.post("/v1/agents/pilot/commands", json={"command": "resume", "key": "agent"})
        await wait_for(pilot.work.resumed.is_set)

        offset = last.json()["offset"]
        await asyncio.sleep(0.5)  # cursors are saved every 0.2 s
        status = (await node.http.get(f"/v1/agents/pilot/commands/{offset}")).json()
        assert status["command"] == "steer" and status["epoch"] == 8 and status["acked"] is True
    missing = await node.http.get("/v1/agents/pilot/commands/999999")
    assert missing.status_code == 404


async def test_revoking_a_token_closes_its_connection_within_a_second(node: Node) -> None:
    minted = await node.http.post(
        "/v1/tokens", json={"agent": "mallory", "pub": ["sig/>"], "subs": ["sig/>"]}
    )
    assert minted.status_code == 201, minted.text
    token, jti = minted.json()["token"], minted.json()["jti"]
    raw = await authed(node.gateway.url, token)
    t0 = time.monotonic()
    r = await node.http.delete(f"/v1/tokens/{jti}")
    assert r.status_code == 200 and r.json()["revoked"] is True
    code, reason = await raw.closed(timeout=2)
    assert time.monotonic() - t0 < 1.0 * UNIT
    assert code == 1008 and "revoked" in reason
    again = await Raw.open(node.gateway.url)
    refused = await again.hello(token)
    assert refused["op"] == "error" and refused["code"] == "unauthorized" and "revoked" in refused["message"]


async def test_revocation_survives_a_restart(authority: Authority) -> None:
    node = await start_node(authority)
    minted = (await node.http.post("/v1/tokens", json={"agent": "eve"})).json()
    await node.http.delete(f"/v1/tokens/{minted['jti']}")
    await stop_node(node)
    node = await start_node(authority)
    try:
        raw = await Raw.open(node.gateway.url)
        refused = await raw.hello(minted["token"])
        assert refused["code"] == "unauthorized"
    finally:
        await stop_node(node)


async def test_admin_routes_need_an_admin_token(node: Node) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=node.plane.url) as anonymous:
        r = await anonymous.get("/v1/agents")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        r = await anonymous.get("/v1/agents", headers={"Authorization": f"Bearer {node.token('ann')}"})
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        r = await anonymous.get("/v1/agents", headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401
    assert (await node.http.get("/openapi.json")).json()["info"]["title"] == "tidings control plane"


async def test_presence_capabilities_status_and_events(node: Node) -> None:
    events: list[dict[str, Any]] = []
    async with tidings.connect(node.gateway.url, node.token("watcher")) as watcher:
        watch = await watcher.subscribe("sig/presence/conv/team/x")

        async def collect() -> None:
            async for msg in watch:
                events.append(msg.body)

        collector = asyncio.create_task(collect())
        agent = tidings.connect(
            node.gateway.url, node.token("scout"), capabilities=["search", "code"], status="idle"
        )
        await agent.open()
        sub = await agent.subscribe("conv/team/x")
        await wait_for(lambda: len(events) == 1)
        await agent.set_status("busy")
        await wait_for(lambda: len(events) == 2)

        found = (await node.http.get("/v1/agents", params={"capability": "search"})).json()
        assert [a["agent"] for a in found] == ["scout"]
        scout = found[0]
        assert scout["online"] and scout["status"] == "busy" and scout["conversations"] == ["conv/team/x"]
        assert scout["capabilities"] == ["code", "search"]
        idle = (await node.http.get("/v1/agents", params={"status": "idle"})).json()
        assert "scout" not in [a["agent"] for a in idle]
        await node.http.post(
            "/v1/conversations", json={"topic": "conv/team/x", "members": ["scout", "ghost"]}
        )
        present = (await node.http.get("/v1/conversations/team/x/presence")).json()
        assert [(p["agent"], p["online"]) for p in present] == [("scout", True), ("ghost", False)]

        await sub.unsubscribe()
        await agent.close()
        await wait_for(lambda: len(events) == 3)
        collector.cancel()
    assert [(e["agent"], e["event"], e["status"]) for e in events] == [
        ("scout", "join", "idle"),
        ("scout", "status", "busy"),
        ("scout", "leave", "busy"),
    ]
    gone = (await node.http.get("/v1/agents/scout")).json()
    assert gone["online"] is False


async def test_data_flows_while_the_control_plane_is_stopped(node: Node) -> None:
    """The control plane is never in the path of a data message."""
    await node.plane.stop()
    async with (
        tidings.connect(node.gateway.url, node.token("a")) as a,
        tidings.connect(node.gateway.url, node.token("b")) as b,
    ):
        sub = await b.subscribe("conv/team/live", consumer="b")
        ack = await a.publish("conv/team/live", {"hello": "b"})
        msg = await asyncio.wait_for(anext(aiter(sub)), 5 * UNIT)
        assert msg.id == ack.id and msg.body == {"hello": "b"}

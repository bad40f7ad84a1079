from __future__ import annotations

import asyncio

import pytest

import tidings
from tests.conftest import UNIT
from tidings.auth import Authority
from tidings.gateway import Gateway
from tidings.sdk.requests import deadline_left

ALL = {"pub": [">"], "subs": [">"]}


async def test_request_reply_with_deadline(gateway: Gateway, authority: Authority) -> None:
    async with (
        tidings.connect(gateway.url, authority.mint("asker", **ALL)) as asker,
        tidings.connect(gateway.url, authority.mint("helper", **ALL)) as helper,
    ):
        left: list[float | None] = []

        @helper.on("conv/rr/ask", consumer="helper")
        async def answer(msg: tidings.Message) -> None:
            left.append(deadline_left(msg.raw))
            await helper.reply(msg, {"answer": msg.body["q"] * 2})

        await asyncio.sleep(0.1)
        reply = await asyncio.wait_for(
            asyncio.shield(asker.request("conv/rr/ask", {"q": 21}, timeout=5)), 6 * UNIT
        )
        assert reply.body == {"answer": 42}
        assert reply.sender == "helper"
        assert left[0] is not None and 0 < left[0] <= 5


async def test_request_timeout_sends_a_cancel(gateway: Gateway, authority: Authority) -> None:
    async with (
        tidings.connect(gateway.url, authority.mint("asker", **ALL)) as asker,
        tidings.connect(gateway.url, authority.mint("watcher", **ALL)) as watcher,
    ):
        seen = await watcher.subscribe("sig/slow/>")
        with pytest.raises(TimeoutError):
            await asker.request("sig/slow/ask", "anyone?", timeout=0.2)
        request = await asyncio.wait_for(anext(aiter(seen)), 3 * UNIT)
        cancel = await asyncio.wait_for(anext(aiter(seen)), 3 * UNIT)
        assert cancel.headers["tidings-cancel"] == request.headers["tidings-correlation"]


async def test_commands_with_epoch_fencing(gateway: Gateway, authority: Authority) -> None:
    acted: list[tuple[str, int]] = []
    done = asyncio.Event()
    async with (
        tidings.connect(gateway.url, authority.mint("worker-1", **ALL)) as worker,
        tidings.connect(gateway.url, authority.mint("control", **ALL)) as control,
    ):

        @worker.on_command("cancel")
        async def cancel(msg: tidings.Message) -> None:
            acted.append(("cancel", msg.body["epoch"]))

        @worker.on_command("resume")
        async def resume(msg: tidings.Message) -> None:
            acted.append(("resume", msg.body["epoch"]))
            if msg.body["epoch"] == 9:
                done.set()

        await asyncio.sleep(0.1)
        topic = "ctl/worker-1/commands"
        await control.publish(topic, {"command": "cancel", "key": "task-1", "epoch": 5})
        await control.publish(topic, {"command": "resume", "key": "task-1", "epoch": 4})  # late: ignored
        await control.publish(topic, {"command": "resume", "key": "task-1", "epoch": 9})
        await asyncio.wait_for(done.wait(), 5 * UNIT)
    assert acted == [("cancel", 5), ("resume", 9)]

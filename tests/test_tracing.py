"""Traces across agents: W3C traceparent in headers, and OpenTelemetry spans when configured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import UNIT
from tidings.tracing import child_of, parse

ALL = {"pub": [">"], "subs": [">"]}


def test_traceparent_children_keep_the_trace_and_take_a_new_span() -> None:
    root = child_of(None)
    trace_id, span_id, _ = parse(root) or ("", "", "")
    child = child_of(root)
    assert parse(child) is not None
    assert child.split("-")[1] == trace_id and child.split("-")[2] != span_id
    assert parse("00-" + "0" * 32 + "-" + "1" * 16 + "-01") is None  # an all-zero trace id is invalid
    assert parse("garbage") is None and parse(child_of("garbage")) is not None


#: Runs in its own process: an OpenTelemetry tracer provider is set once per process and
#: cannot be taken back, and the rest of the suite must run without one.
SCENARIO = """
import asyncio, json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

import tidings
from tidings.auth import Authority
from tidings.config import Settings
from tidings.gateway import Gateway

ALL = {"pub": [">"], "subs": [">"]}

async def main():
    authority = Authority(b"tracing-test-secret-0123456789abcdef")
    gw = Gateway(Settings(port=0, data_dir=sys.argv[1]), authority)
    await gw.start()
    answered = asyncio.Event()
    async with (
        tidings.connect(gw.url, authority.mint("asker", **ALL)) as asker,
        tidings.connect(gw.url, authority.mint("answerer", **ALL)) as answerer,
    ):
        @answerer.on("conv/t/questions", consumer="answerer")
        async def answer(msg):
            await answerer.publish("conv/t/answers", {"re": msg.body})

        @asker.on("conv/t/answers", consumer="asker")
        async def got(msg):
            answered.set()

        await asker.publish("conv/t/questions", "why?")
        await asyncio.wait_for(answered.wait(), 10)
        await asyncio.sleep(0.2)
    await gw.stop()
    for span in exporter.get_finished_spans():
        print(json.dumps({
            "name": span.name,
            "trace": span.context.trace_id,
            "span": span.context.span_id,
            "parent": span.parent.span_id if span.parent else None,
        }))

asyncio.run(main())
"""


def test_a_conversation_is_one_trace_across_agents_and_the_gateway(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    run = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    finished = [json.loads(line) for line in run.stdout.splitlines()]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in finished:
        by_name.setdefault(span["name"], []).append(span)
    assert {
        "publish conv/t/questions",
        "handle conv/t/questions",
        "publish conv/t/answers",
        "handle conv/t/answers",
        "tidings publish",
        "tidings deliver",
    } <= set(by_name), set(by_name)
    # one trace, from the question to the handled answer, each hop a child of the one before
    assert len({s["trace"] for s in finished}) == 1
    (ask,) = by_name["publish conv/t/questions"]
    (handle_q,) = by_name["handle conv/t/questions"]
    (reply,) = by_name["publish conv/t/answers"]
    (handle_a,) = by_name["handle conv/t/answers"]
    assert handle_q["parent"] == ask["span"]
    assert reply["parent"] == handle_q["span"]
    assert handle_a["parent"] == reply["span"]
    assert {p["parent"] for p in by_name["tidings publish"]} == {ask["span"], reply["span"]}
    assert {d["parent"] for d in by_name["tidings deliver"]} == {ask["span"], reply["span"]}

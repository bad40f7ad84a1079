"""W3 against AutoGen's distributed gRPC runtime (autogen-ext[grpc]): what an agent-framework user has today.

The same topology as ``tidings bench w3``: agent ``i`` talks in conversation
``i % conversations``. The host (``GrpcWorkerAgentRuntimeHost``) is the server,
on core 0; the agents live in ``GrpcWorkerAgentRuntime`` workers, one per
load-generator process on core 1 (``tidings.bench.swarm``). Each agent is its own
agent type (``agent-<i>``, as type names must be unique across workers) with a
``TypeSubscription`` to its conversation's topic type ``conv-<n>``, and publishes
with ``publish_message(..., sender=its id)``; the runtime does not deliver a
message back to its sender. A delivery is counted when the receiving agent's
``@message_handler`` runs (``publish_message`` only enqueues, so waiting for it
would lose messages). AutoGen has no acks and stores nothing.

    .venv/bin/python bench/peers/autogen_w3.py --agents 1000 --rate 0.2 0.5

``python bench/peers/autogen_w3.py host --port P`` runs the host alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autogen_core import (
    AgentId,
    MessageContext,
    RoutedAgent,
    TopicId,
    TypeSubscription,
    message_handler,
    try_get_known_serializers_for_type,
)
from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime, GrpcWorkerAgentRuntimeHost

from tidings.bench import w3
from tidings.bench.harness import ServerProcess, free_port, pin_to
from tidings.bench.swarm import Swarm, Tally


@dataclass
class Chat:
    ts: int
    sender: int
    pad: str


class Member(RoutedAgent):
    def __init__(self, index: int, tally: Tally) -> None:
        super().__init__("a W3 swarm member")
        self.index = index
        self.tally = tally

    @message_handler
    async def on_chat(self, message: Chat, ctx: MessageContext) -> None:
        self.tally.received(time.monotonic_ns(), message.ts, message.sender == self.index)


_runtime: GrpcWorkerAgentRuntime | None = None
_runtime_lock: asyncio.Lock | None = None


async def _worker_runtime(host: str) -> GrpcWorkerAgentRuntime:
    """This load-generator process's one worker runtime, started on first use."""
    global _runtime, _runtime_lock
    if _runtime_lock is None:
        _runtime_lock = asyncio.Lock()
    async with _runtime_lock:
        if _runtime is None:
            runtime = GrpcWorkerAgentRuntime(host_address=host)
            runtime.add_message_serializer(try_get_known_serializers_for_type(Chat))
            await runtime.start()
            _runtime = runtime
    return _runtime


class Agent:
    def __init__(
        self, runtime: GrpcWorkerAgentRuntime, index: int, conversation: int, body_bytes: int
    ) -> None:
        self.runtime = runtime
        self.index = index
        self.id = AgentId(f"agent-{index}", "default")
        self.topic = TopicId(f"conv-{conversation}", "default")
        self.pad = "x" * max(0, body_bytes - 32)
        self.tasks: set[asyncio.Task[None]] = set()

    def publish(self, published_ns: int) -> None:
        task = asyncio.ensure_future(
            self.runtime.publish_message(Chat(published_ns, self.index, self.pad), self.topic, sender=self.id)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def close(self) -> None:
        pass


async def connect_agent(
    host: str, index: int, conversation: int, members: int, body_bytes: int, tally: Tally
) -> Agent:
    runtime = await _worker_runtime(host)
    kind = f"agent-{index}"
    await Member.register(
        runtime,
        kind,
        lambda: Member(index, tally),
        skip_class_subscriptions=True,
        skip_direct_message_subscription=True,
    )
    await runtime.add_subscription(TypeSubscription(topic_type=f"conv-{conversation}", agent_type=kind))
    return Agent(runtime, index, conversation, body_bytes)


class AutoGenHost(ServerProcess):
    def __init__(self) -> None:
        port = free_port()
        super().__init__([sys.executable, str(Path(__file__)), "host", "--port", str(port)], r"listening on")
        self.url = f"127.0.0.1:{port}"


async def _host(port: int) -> None:
    host = GrpcWorkerAgentRuntimeHost(address=f"127.0.0.1:{port}")
    host.start()
    await asyncio.sleep(0.5)  # start() only schedules the server
    print(f"listening on {port}", flush=True)
    await asyncio.Event().wait()


def run_w3(
    agents: int,
    conversations: int,
    rates: list[float],
    duration: float,
    processes: int = 4,
    body_bytes: int = 200,
) -> dict[str, Any]:
    """W3 at rising loads against a fresh AutoGen host; the shape of ``w3.run``'s result."""
    with (
        AutoGenHost() as host,
        Swarm(
            connect_agent,
            host.url,
            agents,
            conversations,
            processes,
            body_bytes,
            use_uvloop=False,
            parallel=20,
        ) as swarm,
    ):
        steps = w3.sweep(swarm, rates, duration, host.cpu_seconds)
        connect_seconds = swarm.connect_seconds
    return {
        "workload": "w3",
        "system": "autogen-grpc",
        "agents": agents,
        "conversations": conversations,
        "members": agents // conversations,
        "body_bytes": body_bytes,
        "duration_s": duration,
        "processes": processes,
        "rates_per_agent": rates,
        "connect_seconds": round(connect_seconds, 2),
        **w3.summary(steps),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=["w3", "host"], default="w3")
    parser.add_argument("--port", type=int)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--rate", type=float, nargs="+", default=[0.2])
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    if args.mode == "host":
        asyncio.run(_host(args.port))
        return
    pin_to(1)
    print(json.dumps(run_w3(args.agents, args.conversations, args.rate, args.duration)), flush=True)


if __name__ == "__main__":
    main()

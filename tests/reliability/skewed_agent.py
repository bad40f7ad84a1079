"""An agent process whose wall clock is off: ``python -m tests.reliability.skewed_agent URL TOKEN ROLE SKEW``.

``time.time`` and ``time.time_ns`` are shifted by SKEW seconds before tidings is
imported, so everything the SDK takes from the wall clock (message ids, resume
times, deadlines) is off by that much. Roles, on ``conv/skew/chat``:

- ``asker``: publishes ``{"step": "ask", "n": i}`` for each round, waiting for the
  round's last answer before the next;
- ``second``: answers each ``first`` answer with ``{"step": "second", "n": i}``.
"""

from __future__ import annotations

import asyncio
import sys
import time

SKEW = float(sys.argv[4])
_real_time, _real_time_ns = time.time, time.time_ns
time.time = lambda: _real_time() + SKEW  # type: ignore[assignment]
time.time_ns = lambda: _real_time_ns() + int(SKEW * 1e9)  # type: ignore[assignment]

import tidings  # noqa: E402 - after the clock is moved

TOPIC = "conv/skew/chat"
ROUNDS = 30


async def main(url: str, token: str, role: str) -> None:
    async with tidings.connect(url, token, name=role) as agent:
        done = asyncio.Event()
        answered: set[int] = set()

        @agent.on(TOPIC, consumer=role)
        async def handle(msg: tidings.Message) -> None:
            step, n = msg.body["step"], msg.body["n"]
            if role == "second" and step == "first":
                await agent.publish(TOPIC, {"step": "second", "n": n})
                answered.add(n)
            if role == "asker" and step == "second":
                answered.add(n)
            if len(answered) == ROUNDS:
                done.set()

        if role == "asker":
            for n in range(ROUNDS):
                await agent.publish(TOPIC, {"step": "ask", "n": n})
                while n not in answered:  # noqa: ASYNC110 - one round at a time
                    await asyncio.sleep(0.01)
        await asyncio.wait_for(done.wait(), 60)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))

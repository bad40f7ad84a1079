"""Worker: take pieces from conv/<team>/tasks and publish each one's result to conv/<team>/done.

Workers that run with the same agent id (token) share the consumer "workers": each piece goes
to one of them, and what one leaves unacknowledged is redelivered to the others.

    python examples/worker.py            # until Ctrl-C
    python examples/worker.py --count 2  # exit after two pieces
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

import tidings


async def main(args: argparse.Namespace) -> None:
    handled = 0
    enough = asyncio.Event()
    async with tidings.connect(args.url, args.token, name="worker") as agent:

        @agent.on(f"conv/{args.team}/tasks", consumer="workers")
        async def work(msg: tidings.Message) -> None:
            nonlocal handled
            if msg.body.get("kind") != "piece":
                return  # the task message itself: nothing to do, returning acks it
            if enough.is_set():
                await asyncio.Event().wait()  # over --count: unacked, so on close it goes to another worker
            body = msg.body
            await asyncio.sleep(0.05)  # the "work"
            done = {**body, "kind": "done", "text": body["text"].upper()}
            # parent = msg.id, set by the SDK inside a handler. The id derived from the piece's id
            # makes a redone piece (a redelivery after a crash) a duplicate the server stores once.
            ack = await agent.publish(f"conv/{args.team}/done", done, id=f"{msg.id}.done")
            handled += 1
            print(f"piece {body['index']} of {body['task']} done, duplicate={ack.duplicate}", flush=True)
            if args.count and handled >= args.count:
                enough.set()  # returning from here acks the piece; close() flushes that ack

        if args.count:
            await enough.wait()
        else:
            await agent.run_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--count", type=int, default=0, help="exit after this many pieces [0: never]")
    parser.add_argument("--team", default="team-1", help="conversation group [team-1]")
    parser.add_argument("--url", default=os.environ.get("TIDINGS_URL", "ws://127.0.0.1:7700/"))
    parser.add_argument("--token", default=os.environ.get("TIDINGS_TOKEN"))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))

"""Planner: split a task into pieces for the workers, then wait for the reviewer's merged result.

python examples/planner.py --pieces 4 "the text the workers will shout, one piece each"
"""

from __future__ import annotations

import argparse
import asyncio
import os

import tidings

TEXT = "a planner splits the work the workers do the pieces and a reviewer puts them back together"


async def main(args: argparse.Namespace) -> None:
    async with tidings.connect(args.url, args.token, name="planner") as agent:
        # Subscribe before publishing, so the result cannot slip past. Durable: a result that
        # arrives while this planner is reconnecting is delivered after the reconnect.
        results = await agent.subscribe(f"conv/{args.team}/results", consumer="planner")

        words = args.text.split()
        task = await agent.publish(f"conv/{args.team}/tasks", {"kind": "task", "pieces": args.pieces})
        bounds = [len(words) * i // args.pieces for i in range(args.pieces + 1)]
        for index in range(args.pieces):
            piece = {
                "kind": "piece",
                "task": task.id,
                "index": index,
                "pieces": args.pieces,
                "text": " ".join(words[bounds[index] : bounds[index + 1]]),
            }
            await agent.publish(f"conv/{args.team}/tasks", piece, parent=task.id)
        print(f"task {task.id}: {args.pieces} pieces published", flush=True)

        async for msg in results:
            msg.ack()  # results of earlier tasks are acknowledged and skipped
            if msg.body["task"] == task.id:
                print(f"result: {msg.body['text']}", flush=True)
                return
        raise SystemExit(f"the agent gave up before the result came: {agent.close_reason}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("text", nargs="?", default=TEXT, help="the task: words to split into pieces")
    parser.add_argument("--pieces", type=int, default=4, help="how many pieces [4]")
    parser.add_argument("--team", default="team-1", help="conversation group [team-1]")
    parser.add_argument("--url", default=os.environ.get("TIDINGS_URL", "ws://127.0.0.1:7700/"))
    parser.add_argument("--token", default=os.environ.get("TIDINGS_TOKEN"))
    asyncio.run(main(parser.parse_args()))

"""Reviewer: collect the finished pieces of each task from conv/<team>/done and, once all are in,
publish the merged text to conv/<team>/results.

    python examples/reviewer.py            # until Ctrl-C
    python examples/reviewer.py --count 1  # exit after one merged task
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

import tidings


async def main(args: argparse.Namespace) -> None:
    pieces: dict[str, dict[int, str]] = {}  # task id -> piece index -> text
    merged = 0
    enough = asyncio.Event()
    async with tidings.connect(args.url, args.token, name="reviewer") as agent:

        @agent.on(f"conv/{args.team}/done", consumer="reviewer")
        async def review(msg: tidings.Message) -> None:
            nonlocal merged
            if enough.is_set():
                await asyncio.Event().wait()  # over --count: leave it unacked for the next reviewer
            task, index, total = msg.body["task"], msg.body["index"], msg.body["pieces"]
            # Kept in memory only: pieces acked here are lost if this process dies before the task
            # is complete. A reviewer that must survive crashes would store them before returning.
            got = pieces.setdefault(task, {})
            got[index] = msg.body["text"]  # a piece delivered twice just overwrites itself
            if len(got) < total:
                return
            text = " ".join(got[i] for i in range(total) if got[i])
            result = {"task": task, "text": text}
            await agent.publish(f"conv/{args.team}/results", result, id=f"{task}.result")
            del pieces[task]
            merged += 1
            print(f"task {task} merged: {text}", flush=True)
            if args.count and merged >= args.count:
                enough.set()

        if args.count:
            await enough.wait()
        else:
            await agent.run_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--count", type=int, default=0, help="exit after this many tasks [0: never]")
    parser.add_argument("--team", default="team-1", help="conversation group [team-1]")
    parser.add_argument("--url", default=os.environ.get("TIDINGS_URL", "ws://127.0.0.1:7700/"))
    parser.add_argument("--token", default=os.environ.get("TIDINGS_TOKEN"))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))

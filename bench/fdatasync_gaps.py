"""How long one fdatasync takes when the disk has been idle for a moment before it.

``tidings bench w2`` compares the ack p99 with the raw fdatasync p99 of syncs timed
back to back. With one publisher the log never syncs back to back: between two syncs
lie the puback's way to the client and the next pub's way back. This times 256-byte
overwrites + fdatasync in a preallocated file (as the log writes) after gaps of 0,
0.1, 0.2 and 0.5 ms, spent either spinning (the CPU stays busy) or sleeping (it may
halt), the gaps taking turns so drift hits them alike. Prints one JSON line per gap
and way of waiting. (With no gap both ways are the same test; ``time.sleep`` oversleeps
by the kernel's timer slack, ~50 µs, so the sleeping gaps are longer than labelled and
the spinning ones are exact.)

    .venv/bin/python bench/fdatasync_gaps.py --rounds 6 --syncs 300
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from tidings.bench.harness import percentile

GAPS_S = (0.0, 0.0001, 0.0002, 0.0005)
FILE_BYTES = 1 << 20
BLOCK_BYTES = 256


def _wait(seconds: float, spin: bool) -> None:
    if not seconds:
        return
    if spin:
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            pass
    else:
        time.sleep(seconds)


def measure(directory: Path, rounds: int, syncs: int) -> list[dict[str, object]]:
    fd = os.open(directory / "gaps.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, bytes(FILE_BYTES), 0)
        os.fsync(fd)
        block = os.urandom(BLOCK_BYTES)
        times: dict[tuple[float, bool], list[float]] = {(g, s): [] for s in (True, False) for g in GAPS_S}
        position = 0
        for _ in range(rounds):
            for gap, spin in times:
                for _ in range(syncs):
                    position = (position + BLOCK_BYTES) % FILE_BYTES
                    _wait(gap, spin)
                    started = time.perf_counter()
                    os.pwrite(fd, block, position)
                    os.fdatasync(fd)
                    times[gap, spin].append(time.perf_counter() - started)
    finally:
        os.close(fd)
    results = []
    for (gap, spin), samples in times.items():
        samples.sort()
        results.append(
            {
                "gap_ms": gap * 1000,
                "waiting": "spin" if spin else "sleep",
                "syncs": len(samples),
                "p50_ms": round(percentile(samples, 0.50) * 1000, 3),
                "p99_ms": round(percentile(samples, 0.99) * 1000, 3),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--syncs", type=int, default=300, help="syncs per gap and round")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="tidings-gaps-"))
    try:
        for result in measure(directory, args.rounds, args.syncs):
            print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

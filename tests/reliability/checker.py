"""A history recorder and checker, after Jepsen's: record every client operation, judge the whole.

A history is a JSON-lines file; each line is one operation event:

    {"process": "p3.17", "type": "invoke", "f": "publish", "value": {"topic": T, "id": I}, "time": 1.25}

``type`` is ``invoke`` (the client starts an operation), ``ok`` (it certainly
happened), ``fail`` (it certainly did not happen) or ``info`` (indeterminate: a
timeout, a dropped connection). ``time`` is seconds on a monotonic clock. Every
published id is unique. The operations (``f``):

- ``publish``: invoke ``{topic, id}``; ok ``{topic, id, offset}`` (the puback);
  fail ``{topic, id, error}``; info ``{topic, id}``.
- ``deliver``: a message handed to a durable consumer, recorded as a lone
  ``ok`` ``{topic, id, offset, consumer}``.
- ``read``: a full read of one topic from its start (a fresh replay reader):
  invoke ``{topic}``, ok ``{topic, messages: [[id, offset], ...]}``.

``check(events)`` reports:

- **acknowledged but lost**: acked publishes absent from the last read of their
  topic, split by when the puback came: *before* that read began (a real loss),
  *during* it (``middle``: the read may legitimately have missed it) or *after*
  it ended (nothing can be said);
- **read then lost**: ids some consumer or earlier read saw that the last read
  of their topic lacks (stored data that disappeared);
- **unexpected**: ids read that nobody published;
- **duplicates stored**: one id at two offsets (or twice) in one read;
- **duplicate deliveries**: deliveries of an id a consumer already had (allowed:
  at-least-once), as a count and a rate;
- **order violations**: a read whose offsets do not strictly increase, or a
  consumer whose first deliveries of a topic go back in offset order;
- **inconsistent offsets**: two ids at one ``(topic, offset)``, or an id whose
  puback named another offset than the one it is read at;
- **failed but read**: a publish that ended in ``fail`` and was read anyway.

Events of the process ``nemesis`` (the faults a test injected) are skipped.

``python -m tests.reliability.checker HISTORY.jsonl`` prints the report as JSON
and exits 1 if the history is not valid.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

Event = dict[str, Any]
#: examples of each anomaly kept in a report
SAMPLES = 10


class Recorder:
    """Append operation events to a JSON-lines history file (buffered; ``close()`` flushes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO = path.open("w", buffering=1 << 20)
        self._t0 = time.monotonic()
        self.events = 0
        self.acked = 0

    def now(self) -> float:
        return time.monotonic() - self._t0

    def record(self, process: str, type_: str, f: str, value: Any) -> float:
        t = self.now()
        self._file.write(
            json.dumps({"process": process, "type": type_, "f": f, "value": value, "time": t}) + "\n"
        )
        self.events += 1
        if type_ == "ok" and f == "publish":
            self.acked += 1
        return t

    def flush(self) -> None:
        """Write what is buffered, so ``read_history`` sees every event so far."""
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_history(path: Path) -> Iterator[Event]:
    with path.open() as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


@dataclass
class Anomaly:
    count: int = 0
    samples: list[Any] = field(default_factory=list)

    def add(self, sample: Any) -> None:
        self.count += 1
        if len(self.samples) < SAMPLES:
            self.samples.append(sample)


@dataclass
class Report:
    published: int = 0
    acknowledged: int = 0
    failed: int = 0
    indeterminate: int = 0
    deliveries: int = 0
    read_messages: int = 0
    lost: Anomaly = field(default_factory=Anomaly)  # acked before the last read began
    lost_middle: Anomaly = field(default_factory=Anomaly)
    lost_after: Anomaly = field(default_factory=Anomaly)
    read_then_lost: Anomaly = field(default_factory=Anomaly)
    unexpected: Anomaly = field(default_factory=Anomaly)
    duplicates_stored: Anomaly = field(default_factory=Anomaly)
    duplicate_deliveries: Anomaly = field(default_factory=Anomaly)
    order_violations: Anomaly = field(default_factory=Anomaly)
    inconsistent_offsets: Anomaly = field(default_factory=Anomaly)
    failed_but_read: Anomaly = field(default_factory=Anomaly)
    unread_topics: list[str] = field(default_factory=list)

    @property
    def duplicate_delivery_rate(self) -> float:
        return self.duplicate_deliveries.count / self.deliveries if self.deliveries else 0.0

    @property
    def valid(self) -> bool:
        return not (
            self.lost.count
            or self.read_then_lost.count
            or self.unexpected.count
            or self.duplicates_stored.count
            or self.order_violations.count
            or self.inconsistent_offsets.count
            or self.failed_but_read.count
            or self.unread_topics
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["duplicate_delivery_rate"] = self.duplicate_delivery_rate
        out["valid"] = self.valid
        return out

    def summary(self) -> str:
        return (
            f"published {self.published}, acknowledged {self.acknowledged}, failed {self.failed},"
            f" indeterminate {self.indeterminate}; read {self.read_messages}, delivered {self.deliveries};"
            f" lost {self.lost.count} (during the last read {self.lost_middle.count},"
            f" after it {self.lost_after.count}), read then lost {self.read_then_lost.count},"
            f" unexpected {self.unexpected.count}, duplicates stored {self.duplicates_stored.count},"
            f" duplicate deliveries {self.duplicate_deliveries.count}"
            f" ({self.duplicate_delivery_rate:.4%}), order violations {self.order_violations.count},"
            f" inconsistent offsets {self.inconsistent_offsets.count},"
            f" failed but read {self.failed_but_read.count}"
        )


@dataclass
class _Publish:
    topic: str
    outcome: str = "invoke"  # invoke | ok | fail | info
    offset: int | None = None
    ok_time: float | None = None


@dataclass
class _Read:
    invoked: float
    completed: float
    messages: list[tuple[str, int]]


def check(events: Iterable[Event]) -> Report:
    """Judge a whole history; see the module docstring for what is reported."""
    report = Report()
    publishes: dict[str, _Publish] = {}  # id -> what its publisher saw
    read_invoked: dict[str, float] = {}  # process -> time its read began
    last_read: dict[str, _Read] = {}  # topic -> the last completed read of it
    seen_before: dict[str, set[str]] = defaultdict(set)  # topic -> ids delivered or read earlier
    delivered: dict[tuple[str, str], set[str]] = defaultdict(set)  # (consumer, topic) -> ids
    first_offset: dict[tuple[str, str], int] = {}  # (consumer, topic) -> last first-delivery offset
    at_offset: dict[tuple[str, int], str] = {}  # (topic, offset) -> id

    def place(topic: str, offset: int, msg_id: str, where: str) -> None:
        other = at_offset.setdefault((topic, offset), msg_id)
        if other != msg_id:
            report.inconsistent_offsets.add(
                {"topic": topic, "offset": offset, "ids": [other, msg_id], "in": where}
            )

    for ev in events:
        if ev["process"] == "nemesis":
            continue  # the faults the test injected: context for people, nothing to judge
        kind, op, value, t = ev["type"], ev["f"], ev["value"], float(ev["time"])
        if op == "publish":
            msg_id = value["id"]
            if kind == "invoke":
                report.published += 1
                publishes[msg_id] = _Publish(value["topic"])
                continue
            pub = publishes.setdefault(msg_id, _Publish(value["topic"]))
            pub.outcome = kind
            if kind == "ok":
                report.acknowledged += 1
                pub.offset, pub.ok_time = int(value["offset"]), t
                place(pub.topic, pub.offset, msg_id, "puback")
            elif kind == "fail":
                report.failed += 1
            else:
                report.indeterminate += 1
        elif op == "deliver":
            report.deliveries += 1
            topic, msg_id, offset = value["topic"], value["id"], int(value["offset"])
            key = (value.get("consumer", ev["process"]), topic)
            if msg_id in delivered[key]:
                report.duplicate_deliveries.add({"consumer": key[0], "topic": topic, "id": msg_id})
            else:
                delivered[key].add(msg_id)
                previous = first_offset.get(key, 0)
                if offset <= previous:
                    report.order_violations.add(
                        {"consumer": key[0], "topic": topic, "offset": offset, "after": previous}
                    )
                first_offset[key] = max(previous, offset)
            seen_before[topic].add(msg_id)
            place(topic, offset, msg_id, "deliver")
        elif op == "read":
            if kind == "invoke":
                read_invoked[ev["process"]] = t
                continue
            if kind != "ok":
                continue
            topic = value["topic"]
            messages = [(str(i), int(o)) for i, o in value["messages"]]
            previous_read = last_read.get(topic)
            if previous_read is not None:
                seen_before[topic].update(i for i, _ in previous_read.messages)
            last_read[topic] = _Read(read_invoked.pop(ev["process"], t), t, messages)
        else:
            raise ValueError(f"unknown operation {op!r} in {ev}")

    acked_by_topic: dict[str, list[str]] = defaultdict(list)
    for msg_id, pub in publishes.items():
        if pub.outcome == "ok":
            acked_by_topic[pub.topic].append(msg_id)
    report.unread_topics = sorted(set(acked_by_topic) - set(last_read))
    for topic, read in last_read.items():
        report.read_messages += len(read.messages)
        ids_here: set[str] = set()
        previous_offset = 0
        for msg_id, offset in read.messages:
            if offset <= previous_offset:
                report.order_violations.add({"read": topic, "offset": offset, "after": previous_offset})
            previous_offset = max(previous_offset, offset)
            if msg_id in ids_here:
                report.duplicates_stored.add({"topic": topic, "id": msg_id, "offset": offset})
            ids_here.add(msg_id)
            place(topic, offset, msg_id, "read")
            pub = publishes.get(msg_id)
            if pub is None or pub.topic != topic:
                report.unexpected.add({"topic": topic, "id": msg_id, "offset": offset})
            elif pub.outcome == "fail":
                report.failed_but_read.add({"topic": topic, "id": msg_id})
            elif pub.offset is not None and pub.offset != offset:
                report.inconsistent_offsets.add(
                    {"topic": topic, "id": msg_id, "acked_at": pub.offset, "read_at": offset}
                )
        for msg_id in seen_before.get(topic, ()):
            if msg_id not in ids_here:
                report.read_then_lost.add({"topic": topic, "id": msg_id})
        read.messages = []  # only ids_here is needed from now on
        for msg_id in acked_by_topic.get(topic, ()):
            if msg_id in ids_here:
                continue
            pub = publishes[msg_id]
            assert pub.ok_time is not None
            sample = {"topic": topic, "id": msg_id, "offset": pub.offset}
            if pub.ok_time < read.invoked:
                report.lost.add(sample)
            elif pub.ok_time <= read.completed:
                report.lost_middle.add(sample)
            else:
                report.lost_after.add(sample)
    return report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.reliability.checker HISTORY.jsonl", file=sys.stderr)
        return 2
    report = check(read_history(Path(args[0])))
    print(json.dumps(report.as_dict(), indent=2))
    print(report.summary(), file=sys.stderr)
    return 0 if report.valid else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The checker judged on hand-made histories: a clean one, then one per anomaly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.reliability.checker import Event, Recorder, check

T = "conv/c/t"


class H:
    """Builds a history with a clock that ticks once per event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.t = 0.0

    def ev(self, process: str, type_: str, f: str, value: Any) -> H:
        self.t += 1
        self.events.append({"process": process, "type": type_, "f": f, "value": value, "time": self.t})
        return self

    def pub(self, msg_id: str, offset: int | None, outcome: str = "ok", topic: str = T) -> H:
        self.ev("p", "invoke", "publish", {"topic": topic, "id": msg_id})
        value: dict[str, Any] = {"topic": topic, "id": msg_id}
        if offset is not None:
            value["offset"] = offset
        return self.ev("p", outcome, "publish", value)

    def deliver(self, msg_id: str, offset: int, consumer: str = "c1", topic: str = T) -> H:
        return self.ev(
            "c", "ok", "deliver", {"topic": topic, "id": msg_id, "offset": offset, "consumer": consumer}
        )

    def read(self, *messages: tuple[str, int], topic: str = T) -> H:
        self.ev("r", "invoke", "read", {"topic": topic})
        return self.ev("r", "ok", "read", {"topic": topic, "messages": [list(m) for m in messages]})


def clean() -> H:
    return H().pub("a", 1).pub("b", 3).deliver("a", 1).deliver("b", 3).read(("a", 1), ("b", 3))


def test_a_clean_history_is_valid() -> None:
    report = check(clean().events)
    assert report.valid, report.summary()
    assert (report.published, report.acknowledged, report.read_messages, report.deliveries) == (2, 2, 2, 2)
    assert report.lost.count == report.duplicate_deliveries.count == 0


def test_acknowledged_but_lost_is_split_around_the_last_read() -> None:
    h = H().pub("before", 1)
    h.ev("r", "invoke", "read", {"topic": T})
    h.pub("middle", 2)  # acked while the read runs
    h.ev("r", "ok", "read", {"topic": T, "messages": []})
    h.pub("after", 5)
    report = check(h.events)
    assert [s["id"] for s in report.lost.samples] == ["before"]
    assert [s["id"] for s in report.lost_middle.samples] == ["middle"]
    assert [s["id"] for s in report.lost_after.samples] == ["after"]
    assert not report.valid


def test_only_the_last_read_of_a_topic_counts_and_earlier_reads_must_not_shrink() -> None:
    h = H().pub("a", 1).read(("a", 1)).read()  # the second read lost what the first had
    report = check(h.events)
    assert report.lost.count == 1 and report.read_then_lost.count == 1
    assert not report.valid


def test_a_delivered_message_missing_from_the_last_read_was_lost_even_unacknowledged() -> None:
    h = H().pub("x", None, outcome="info").deliver("x", 4).read()
    report = check(h.events)
    assert report.lost.count == 0 and report.read_then_lost.count == 1
    assert not report.valid


def test_unexpected_values() -> None:
    report = check(clean().read(("a", 1), ("b", 3), ("ghost", 9)).events)
    assert [s["id"] for s in report.unexpected.samples] == ["ghost"]
    assert not report.valid


def test_a_message_read_in_another_topic_than_published_is_unexpected() -> None:
    h = H().pub("a", 1).read(("a", 1)).read(("a", 1), topic="conv/c/other")
    assert check(h.events).unexpected.count == 1


def test_duplicates_stored() -> None:
    report = check(clean().read(("a", 1), ("b", 3), ("a", 4)).events)
    assert report.duplicates_stored.count == 1
    assert report.inconsistent_offsets.count == 1  # acked at 1, also read at 4
    assert not report.valid


def test_duplicate_deliveries_are_allowed_and_reported_as_a_rate() -> None:
    report = check(clean().deliver("a", 1).deliver("a", 1).events)
    assert report.duplicate_deliveries.count == 2
    assert report.duplicate_delivery_rate == 2 / 4
    assert report.valid  # at-least-once: not an error
    # another consumer getting it is not a duplicate
    assert check(clean().deliver("a", 1, consumer="c2").events).duplicate_deliveries.count == 0


def test_order_violations_in_a_read_and_in_first_deliveries() -> None:
    report = check(H().pub("a", 1).pub("b", 3).read(("b", 3), ("a", 1)).events)
    assert report.order_violations.count == 1 and not report.valid
    h = H().pub("a", 1).pub("b", 3).deliver("b", 3).deliver("a", 1).read(("a", 1), ("b", 3))
    assert check(h.events).order_violations.count == 1
    # a redelivery of an earlier offset is a duplicate, not an order violation
    h = H().pub("a", 1).pub("b", 3).deliver("a", 1).deliver("b", 3).deliver("a", 1).read(("a", 1), ("b", 3))
    report = check(h.events)
    assert report.order_violations.count == 0 and report.duplicate_deliveries.count == 1


def test_inconsistent_offsets() -> None:
    # two ids at one offset: one from a puback, one from a read
    report = check(H().pub("a", 1).pub("b", 1).read(("a", 1), ("b", 2)).events)
    assert report.inconsistent_offsets.count >= 1 and not report.valid
    # an id read at another offset than its puback named
    report = check(H().pub("a", 1).read(("a", 2)).events)
    assert [s.get("acked_at") for s in report.inconsistent_offsets.samples] == [1]


def test_failed_publishes_that_were_read() -> None:
    h = H().pub("a", 1).pub("f", None, outcome="fail").read(("a", 1), ("f", 2))
    report = check(h.events)
    assert [s["id"] for s in report.failed_but_read.samples] == ["f"]
    assert report.failed == 1 and not report.valid


def test_indeterminate_publishes_may_or_may_not_be_read() -> None:
    h = H().pub("a", 1).pub("i", None, outcome="info").pub("j", None, outcome="info").read(("a", 1), ("i", 2))
    report = check(h.events)
    assert report.valid and report.indeterminate == 2


def test_a_topic_with_acknowledged_messages_and_no_read_is_invalid() -> None:
    report = check(H().pub("a", 1).pub("z", 1, topic="conv/c/unread").read(("a", 1)).events)
    assert report.unread_topics == ["conv/c/unread"] and not report.valid


def test_recorder_and_command_line(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    rec = Recorder(path)
    rec.record("p0", "invoke", "publish", {"topic": T, "id": "a"})
    rec.record("p0", "ok", "publish", {"topic": T, "id": "a", "offset": 1})
    rec.record("r", "invoke", "read", {"topic": T})
    rec.record("r", "ok", "read", {"topic": T, "messages": []})
    rec.close()
    run = subprocess.run(
        [sys.executable, "-m", "tests.reliability.checker", str(path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert run.returncode == 1, run.stderr
    assert '"valid": false' in run.stdout and "lost 1" in run.stderr

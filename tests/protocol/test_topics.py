from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import InvalidTopic
from tidings.protocol.topics import (
    covers,
    is_durable,
    matches,
    shard_of,
    validate_pattern,
    validate_topic,
)


@pytest.mark.parametrize("name", ["conv/team-7/task-42", "sig/a/b/c/d", "ctl/agent-1/cmd", "dlq/x/y"])
def test_valid_topics(name: str) -> None:
    assert validate_topic(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "conv",
        "conv/team",
        "conv//x",
        "conv/a/*",
        "conv/a/>",
        "nope/a/b",
        "conv/a b/c",
        "conv/a/" + "x" * 300,
    ],
)
def test_invalid_topics(name: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_topic(name)


def test_topic_length_limit_is_configurable() -> None:
    with pytest.raises(InvalidTopic, match="over the limit of 10"):
        validate_topic("conv/team-7/task-42", max_length=10)


@pytest.mark.parametrize("pattern", ["conv/>", ">", "conv/*/x", "*/*/*", "sig/team-1/>"])
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["conv/>/x", "conv/a*/b", "", "conv//b"])
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("conv/a/b", "conv/a/b", True),
        ("conv/a/b", "conv/a/c", False),
        ("conv/*/b", "conv/x/b", True),
        ("conv/*/b", "conv/x/y/b", False),
        ("conv/>", "conv/a/b", True),
        ("conv/a/>", "conv/a", False),
        ("conv/a/>", "conv/a/b/c", True),
        (">", "sig/a/b", True),
        ("conv/a", "conv/a/b", False),
    ],
)
def test_matches(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected


@pytest.mark.parametrize(
    ("grant", "pattern", "expected"),
    [
        (">", "conv/>", True),
        ("conv/team-7/>", "conv/team-7/*", True),
        ("conv/team-7/>", "conv/>", False),
        ("conv/*/x", "conv/a/x", True),
        ("conv/*/x", "conv/*/x", True),
        ("conv/a/x", "conv/*/x", False),
        ("conv/*/>", "conv/a/b/c", True),
        ("conv/a/b", "conv/a/b", True),
    ],
)
def test_covers(grant: str, pattern: str, expected: bool) -> None:
    assert covers(grant, pattern) is expected


SEG = st.sampled_from(["a", "b", "c"])


@given(
    st.lists(SEG, min_size=1, max_size=4),
    st.lists(st.sampled_from(["a", "b", "*", ">"]), min_size=1, max_size=4),
)
def test_covers_agrees_with_matches(topic_segs: list[str], pattern_segs: list[str]) -> None:
    """If a grant covers a pattern, every topic the pattern matches, the grant matches."""
    if ">" in pattern_segs[:-1]:
        return
    pattern = "/".join(pattern_segs)
    topic = "/".join(topic_segs)
    for grant in (">", "a/>", "*/b", "a/*/>", pattern):
        if covers(grant, pattern) and matches(pattern, topic):
            assert matches(grant, topic)


def test_shard_is_stable_and_by_group() -> None:
    # crc32("team-7") is a fixed number: the shard never changes across versions.
    assert shard_of("conv/team-7/a", 8) == shard_of("conv/team-7/b", 8) == 4
    assert all(0 <= shard_of(f"conv/g{i}/x", 8) < 8 for i in range(100))


def test_durable_namespaces() -> None:
    assert is_durable("conv/a/b") and is_durable("ctl/a/b") and not is_durable("sig/a/b")

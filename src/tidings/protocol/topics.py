"""Topic names, subscription patterns, and the stable shard hash.

A topic is ``<namespace>/<group>/<rest>``: at least three ``/``-separated
segments, e.g. ``conv/team-7/task-42``. The namespace picks the topic's policy,
the group picks its shard. A pattern may use ``*`` for exactly one segment and
``>`` (last segment only) for one or more remaining segments.

Segments are 1-128 characters from ``[A-Za-z0-9_.:@=+-]``; the whole name is at
most ``MAX_TOPIC_LENGTH`` characters. The narrow alphabet keeps topics safe as
file names, NATS subjects and metric labels.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

from tidings.errors import InvalidTopic

MAX_TOPIC_LENGTH = 256
MIN_SEGMENTS = 3

_SEGMENT = re.compile(r"[A-Za-z0-9_.:@=+\-]{1,128}")

#: Namespaces whose messages are stored in the durable log.
DURABLE_NAMESPACES = frozenset({"conv", "ctl", "dlq"})
#: the system's own durable topics (the catalog): agents' ids may not start with "_",
#: so no agent owns them, and no namespace retention ever trims them
SYSTEM_PREFIX = "ctl/_tidings/"
#: Namespaces whose messages are only fanned out to who listens now.
EPHEMERAL_NAMESPACES = frozenset({"sig"})
NAMESPACES = DURABLE_NAMESPACES | EPHEMERAL_NAMESPACES


def _check_length(name: str, max_length: int) -> None:
    if not name:
        raise InvalidTopic("topic is empty")
    if len(name) > max_length:
        raise InvalidTopic(f"topic is {len(name)} characters, over the limit of {max_length}")


@lru_cache(maxsize=65536)
def validate_topic(name: str, max_length: int = MAX_TOPIC_LENGTH) -> str:
    """Return ``name`` if it is a well-formed concrete topic; raise ``InvalidTopic``."""
    _check_length(name, max_length)
    segments = name.split("/")
    if len(segments) < MIN_SEGMENTS:
        raise InvalidTopic(f"topic {name!r} needs at least {MIN_SEGMENTS} segments: ns/group/name")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            raise InvalidTopic(f"topic {name!r} has an invalid segment {segment!r}")
    if segments[0] not in NAMESPACES:
        raise InvalidTopic(f"topic {name!r} has unknown namespace {segments[0]!r}")
    return name


@lru_cache(maxsize=65536)
def validate_pattern(pattern: str, max_length: int = MAX_TOPIC_LENGTH) -> str:
    """Return ``pattern`` if it is a well-formed subscription pattern; raise ``InvalidTopic``.

    ``>`` may only be the last segment; ``*`` and ``>`` must be whole segments.
    A pattern must be able to match some topic: a literal namespace must be a
    known one, and a pattern without ``>`` needs three segments (``conv/>`` is
    fine, ``conv/team`` matches nothing and is refused).
    """
    _check_length(pattern, max_length)
    segments = pattern.split("/")
    if segments[0] not in NAMESPACES and segments[0] not in ("*", ">"):
        raise InvalidTopic(f"pattern {pattern!r} has unknown namespace {segments[0]!r}")
    if segments[-1] != ">" and len(segments) < MIN_SEGMENTS:
        raise InvalidTopic(f"pattern {pattern!r} can match no topic: topics have {MIN_SEGMENTS}+ segments")
    for i, segment in enumerate(segments):
        if segment == ">":
            if i != len(segments) - 1:
                raise InvalidTopic(f"pattern {pattern!r}: '>' must be the last segment")
        elif segment != "*" and not _SEGMENT.fullmatch(segment):
            raise InvalidTopic(f"pattern {pattern!r} has an invalid segment {segment!r}")
    return pattern


def is_wildcard(pattern: str) -> bool:
    return "*" in pattern.split("/") or pattern.endswith("/>") or pattern == ">"


def matches(pattern: str, topic: str) -> bool:
    """Whether the concrete ``topic`` matches the subscription ``pattern``."""
    p = pattern.split("/")
    t = topic.split("/")
    for i, seg in enumerate(p):
        if seg == ">":
            return len(t) > i
        if i >= len(t):
            return False
        if seg != "*" and seg != t[i]:
            return False
    return len(p) == len(t)


@lru_cache(maxsize=65536)
def covers(grant: str, pattern: str) -> bool:
    """Whether every topic that matches ``pattern`` also matches ``grant``.

    Used for permissions: a token granting ``conv/team-7/>`` may subscribe to
    ``conv/team-7/*`` but not to ``conv/>``.
    """
    g = grant.split("/")
    p = pattern.split("/")
    for i, gseg in enumerate(g):
        if gseg == ">":
            return len(p) > i
        if i >= len(p):
            return False
        pseg = p[i]
        if pseg == ">":
            return False  # pattern reaches topics of any depth; grant does not
        if gseg != "*" and gseg != pseg:
            return False
    return len(g) == len(p)


def namespace_of(topic: str) -> str:
    return topic.split("/", 1)[0]


def group(topic: str) -> str:
    return topic.split("/", 2)[1]


def is_durable(topic: str) -> bool:
    return namespace_of(topic) in DURABLE_NAMESPACES


def shard_of(topic: str, shards: int) -> int:
    """The shard of a topic: ``crc32(group) mod shards``.

    CRC-32 (zlib) is stable across processes, machines and Python versions,
    unlike ``hash()``; the same group always lands on the same shard.
    """
    return zlib.crc32(group(topic).encode()) % shards

"""Where a topic lives in NATS: its subject, its stream, its JetStream message id."""

from __future__ import annotations

import hashlib

from tidings.engine.embedded import from_record
from tidings.log.types import StoredRecord
from tidings.protocol.frames import Msg
from tidings.protocol.topics import SYSTEM_PREFIX, shard_of

EPHEMERAL_PREFIX = "tidings.eph."
#: the system's topics (``SYSTEM_PREFIX``) live in a stream of their own, without limits
SYSTEM_STREAM = "TIDINGS_system"
SYSTEM_SUBJECTS = "tidings.sys.>"


def subject_of(topic: str, shards: int) -> str:
    """The JetStream subject of a durable topic (or, with ``shards=0``, of an ephemeral one)."""
    tokens = topic.replace(".", "%").replace("/", ".")
    if shards == 0:
        return EPHEMERAL_PREFIX + tokens
    if topic.startswith(SYSTEM_PREFIX):
        return "tidings.sys." + tokens
    return f"tidings.{shard_of(topic, shards)}.{tokens}"


def stream_of_topic(topic: str, shards: int) -> str:
    """The stream a durable topic lives in."""
    if topic.startswith(SYSTEM_PREFIX):
        return SYSTEM_STREAM
    return stream_of(topic.split("/", 1)[0], shard_of(topic, shards))


def topic_of(subject: str) -> str:
    """The topic of a subject made by ``subject_of``."""
    tokens = subject.split(".", 2)[2]
    return tokens.replace(".", "/").replace("%", ".")


def stream_of(namespace: str, shard: int) -> str:
    return f"TIDINGS_{namespace}_{shard}"


def msg_id_of(topic: str, msg_id: str) -> str:
    return hashlib.blake2b(f"{topic}\x00{msg_id}".encode(), digest_size=16).hexdigest()


def decode(subject: str, seq: int, data: bytes) -> Msg:
    topic = topic_of(subject)
    return from_record(StoredRecord(seq, topic, "", 0, data))

"""The system's topics (the catalog) live in a JetStream stream of their own, without limits.

Versions before it kept the catalog in the ``ctl`` streams, whose per-subject limit
(10,000 by default) would one day have trimmed old revocations away. A gateway that
finds no system stream moves what the ``ctl`` streams hold of the catalog into it.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import nats

from tests.conformance.conftest import NATS_SHARDS, Deployment
from tidings.auth import Authority
from tidings.catalog import CATALOG_TOPIC, SYSTEM_SENDER
from tidings.cluster import NatsCluster
from tidings.engine.embedded import to_record_payload
from tidings.engine.nats.subjects import SYSTEM_STREAM, msg_id_of
from tidings.protocol.frames import Msg
from tidings.protocol.topics import shard_of


async def test_a_catalog_kept_in_a_ctl_stream_is_moved_into_the_system_stream(
    authority: Authority, tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    deployment = Deployment("nats", authority, tmp_path / "data", nats_cluster)
    (gw,) = await deployment.start()  # creates every stream
    await deployment.stop()
    jtis = [uuid.uuid4().hex for _ in range(3)]
    nc = await nats.connect(nats_cluster.urls)
    try:
        # The layout before the system stream: catalog events in the ctl stream of its shard.
        old_subject = f"tidings.{shard_of(CATALOG_TOPIC, NATS_SHARDS)}.ctl._tidings.catalog"
        for jti in jtis:
            body = {"kind": "revoke", "jti": jti, "expires_ms": int(time.time() * 1000) + 3_600_000}
            event = Msg(topic=CATALOG_TOPIC, id=jti, sender=SYSTEM_SENDER, ts=0, body=body)
            headers = {"Nats-Msg-Id": msg_id_of(CATALOG_TOPIC, jti)}
            ack = await nc.request(old_subject, to_record_payload(event), timeout=5, headers=headers)
            assert b'"seq"' in ack.data, ack.data
        await nc.request(f"$JS.API.STREAM.DELETE.{SYSTEM_STREAM}", b"", timeout=5)
    finally:
        await nc.close()
    try:
        (gw,) = await deployment.start()
        assert all(gw.catalog.is_revoked(jti) for jti in jtis), "moved, then replayed"
        (other,) = await deployment.start()  # finds the system stream: moves nothing again
        assert all(other.catalog.is_revoked(jti) for jti in jtis)
        assert await other.engine.count(CATALOG_TOPIC) == len(jtis)
    finally:
        await deployment.stop()

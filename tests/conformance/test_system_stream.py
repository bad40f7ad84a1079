"""The system's topics (the catalog) live in a JetStream stream of their own, without limits.

Versions before it kept the catalog in the ``ctl`` streams, whose per-subject limit
(10,000 by default) would one day have trimmed old revocations away. Until the marker
says it is done, a gateway that starts moves what the ``ctl`` streams hold of the
catalog into it, going on from what a copy cut short already moved.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import nats
from nats.js.errors import NoStreamResponseError

from tests.conformance.conftest import NATS_SHARDS, Deployment
from tidings.auth import Authority
from tidings.catalog import CATALOG_TOPIC, SYSTEM_SENDER
from tidings.cluster import NatsCluster
from tidings.engine.embedded import to_record_payload
from tidings.engine.nats.engine import MOVED_MARKER
from tidings.engine.nats.subjects import SYSTEM_STREAM, SYSTEM_SUBJECTS, msg_id_of, subject_of
from tidings.protocol.frames import Msg
from tidings.protocol.topics import shard_of


async def test_a_catalog_kept_in_a_ctl_stream_is_moved_into_the_system_stream(
    authority: Authority, tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    deployment = Deployment("nats", authority, tmp_path / "data", nats_cluster)
    await deployment.start()  # creates every stream
    await deployment.stop()
    jtis = [uuid.uuid4().hex for _ in range(3)]
    events = [
        Msg(
            topic=CATALOG_TOPIC,
            id=jti,
            sender=SYSTEM_SENDER,
            ts=0,
            body={"kind": "revoke", "jti": jti, "expires_ms": int(time.time() * 1000) + 3_600_000},
        )
        for jti in jtis
    ]
    nc = await nats.connect(nats_cluster.urls)
    try:
        # The layout before the system stream: catalog events in the ctl stream of its shard.
        old_subject = f"tidings.{shard_of(CATALOG_TOPIC, NATS_SHARDS)}.ctl._tidings.catalog"
        for event in events:
            headers = {"Nats-Msg-Id": msg_id_of(CATALOG_TOPIC, event.id)}
            ack = await nc.request(old_subject, to_record_payload(event), timeout=5, headers=headers)
            assert b'"seq"' in ack.data, ack.data
        # A copy cut short: the system stream holds the first event only, and no marker.
        await nc.request(f"$JS.API.STREAM.DELETE.{SYSTEM_STREAM}", b"", timeout=5)
        js = nc.jetstream()
        await js.add_stream(name=SYSTEM_STREAM, subjects=[SYSTEM_SUBJECTS])
        headers = {"Nats-Msg-Id": msg_id_of(CATALOG_TOPIC, events[0].id)}
        # The new stream lives on one node of the cluster; until the other nodes have
        # heard of its subjects, a publish through them finds no responder (seen in CI).
        for attempt in range(50):
            try:
                await js.publish(
                    subject_of(CATALOG_TOPIC, NATS_SHARDS), to_record_payload(events[0]), headers=headers
                )
                break
            except NoStreamResponseError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        await (await js.key_value("tidings_cursors")).delete(MOVED_MARKER)
    finally:
        await nc.close()
    try:
        (gw,) = await deployment.start()
        assert all(gw.catalog.is_revoked(jti) for jti in jtis), "moved, then replayed"
        assert [m.id for m in await gw.engine.read(CATALOG_TOPIC, 0)] == jtis, "in order, each once"
        (other,) = await deployment.start()  # finds the marker: moves nothing again
        assert all(other.catalog.is_revoked(jti) for jti in jtis)
        assert await other.engine.count(CATALOG_TOPIC) == len(jtis)
    finally:
        await deployment.stop()

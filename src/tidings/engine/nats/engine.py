"""The NATS engine (the layout is drawn in ``tidings.engine.nats``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg as NatsMsg
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from tidings.engine.base import (
    CommitCallback,
    CursorState,
    Engine,
    EphemeralCallback,
    PublishDone,
    PublishResult,
)
from tidings.engine.embedded import to_record_payload
from tidings.engine.nats.calls import (
    API,
    NO_MESSAGE_FOUND,
    REQUEST_TIMEOUT_S,
    STREAM_NAME_IN_USE,
    Stale,
    Unplaced,
    kv_key,
    log_error,
    retry,
)
from tidings.engine.nats.peers import GONE_S, NatsPeers
from tidings.engine.nats.subjects import (
    SYSTEM_STREAM,
    SYSTEM_SUBJECTS,
    decode,
    msg_id_of,
    stream_of,
    stream_of_topic,
    subject_of,
    topic_of,
)
from tidings.engine.nats.tail import Tail
from tidings.errors import RetryLater, StorageError
from tidings.leases import LeaseBoard, LeaseWriter
from tidings.log.types import UNLIMITED, RetentionPolicy
from tidings.presence import PresenceView
from tidings.protocol.frames import Msg
from tidings.protocol.topics import DURABLE_NAMESPACES, SYSTEM_PREFIX, is_durable, matches

log = logging.getLogger("tidings.engine.nats")

CURSOR_BUCKET = "tidings_cursors"
PRESENCE_BUCKET = "tidings_presence"
PRESENCE_STREAM = f"KV_{PRESENCE_BUCKET}"
PRESENCE_PREFIX = f"$KV.{PRESENCE_BUCKET}."
TRIM_INTERVAL_S = 5.0
#: in the cursor bucket once the system's topics are in the system stream (``_move_system_topics``)
MOVED_MARKER = "_tidings_system_stream"
#: lease writes in flight at once
LEASE_WRITES = 256
EPHEMERAL_PREFIX = "tidings.eph."


class NatsEngine(Engine):
    """Durable topics in a JetStream cluster, shared by every gateway connected to it."""

    shared = True

    def __init__(
        self,
        urls: list[str],
        shards: int = 8,
        replicas: int | None = None,
        retention: Callable[[str], RetentionPolicy] | None = None,
        dedup_window_s: float = 3600.0,
        name: str = "tidings-gateway",
        presence_lease_s: float = 15.0,
        peer_timeout_s: float = GONE_S,
        retained_otherwise: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        """``replicas`` None: 3 when the server is part of a cluster, 1 when it is alone.

        ``retention(topic)`` gives each topic's policy; a namespace's (asked with
        ``<ns>/_/_``) becomes its streams' limits, and the topics ``retained_otherwise()``
        names (a conversation's own policy) are trimmed by ``trim``. JetStream cannot
        bound a subject's bytes, so a namespace's ``max_bytes`` is refused (a topic's is
        not applied).
        ``presence_lease_s``: how long this gateway's presence outlives it (renewed
        every third of it); set the same on every gateway. ``peer_timeout_s``: how
        long a gateway may go unheard before its consumers are taken over.
        """
        if not urls:
            raise ValueError("the nats engine needs at least one server URL (--nats-url)")
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.urls = urls
        self.shards = shards
        self.replicas = replicas
        self._retention = retention or (lambda topic: RetentionPolicy())
        self.dedup_window_s = dedup_window_s
        self._name = name
        self._nc: Client | None = None
        self._kv: KeyValue | None = None
        self._tails: list[Tail] = []
        self._commit_callbacks: list[tuple[CommitCallback, Callable[[str], bool] | None]] = []
        self._ephemeral_callbacks: list[EphemeralCallback] = []
        #: per topic, the highest offset this engine has announced (reads must reach it)
        self._announced: dict[str, int] = {}
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._publishing: set[asyncio.Task[PublishResult]] = set()  # submit()'s, until done
        self._peers: NatsPeers | None = None
        self._retained_otherwise = retained_otherwise or (lambda: ())
        #: seconds between two ``trim`` rounds
        self.trim_interval_s = TRIM_INTERVAL_S
        self.peer_timeout_s = peer_timeout_s
        if presence_lease_s <= 0:
            raise ValueError("presence_lease_s must be positive")
        self.presence_lease_s = presence_lease_s
        #: this process's name in the presence bucket
        self.gateway_id = uuid.uuid4().hex[:12]
        self._leases = LeaseBoard(self.gateway_id, presence_lease_s)
        self._lease_writer: LeaseWriter | None = None
        self._lease_tail: Tail | None = None
        self._lease_lock = asyncio.Lock()
        self._leases_read = asyncio.Event()  # set once the bucket's content at the first read is in
        self._leases_target = 0
        for ns in DURABLE_NAMESPACES:
            if self._retention(f"{ns}/_/_").max_bytes is not None:
                raise ValueError(f"namespace {ns!r}: max_bytes per topic is not available with NATS")

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "start() first"
        return self._nc

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Connect, create or update the streams and the cursor bucket, follow every stream.

        Raises ``StorageError`` if the cluster cannot be reached or refuses the configuration.
        """
        try:
            self._nc = await nats.connect(
                self.urls,
                name=self._name,
                error_cb=log_error,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                connect_timeout=REQUEST_TIMEOUT_S,
            )
        except (NatsError, OSError) as exc:
            raise StorageError(f"cannot reach NATS at {', '.join(self.urls)}: {exc!r}") from None
        if self.replicas is None:
            self.replicas = 3 if self.nc._server_info.get("cluster") else 1
        for ns in sorted(DURABLE_NAMESPACES):
            policy = self._retention(f"{ns}/_/_")
            for shard in range(self.shards):
                last = await self._ensure_stream(stream_of(ns, shard), f"tidings.{shard}.{ns}.>", policy)
                self._tails.append(Tail(self, stream_of(ns, shard), last, self._announce))
        await self._ensure_stream(SYSTEM_STREAM, SYSTEM_SUBJECTS, UNLIMITED)
        js = self.nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        self._kv = await retry(
            f"create bucket {CURSOR_BUCKET}",
            lambda: js.create_key_value(bucket=CURSOR_BUCKET, history=1, replicas=self.replicas),
            for_s=60.0,
        )
        await self._move_system_topics()
        last = int((await self._stream_state(SYSTEM_STREAM, ""))["last_seq"])
        self._tails.append(Tail(self, SYSTEM_STREAM, last, self._announce))
        peers = NatsPeers(self.nc, self.gateway_id, self.replicas, gone_s=self.peer_timeout_s)
        await peers.start()
        self.peers = self._peers = peers
        for tail in self._tails:
            await tail.start()
        await self.nc.subscribe(EPHEMERAL_PREFIX + ">", cb=self._on_ephemeral)
        self._tasks.append(asyncio.create_task(self._send_ephemeral(), name="tidings-nats-ephemeral"))
        await self._ensure_presence_bucket()
        writer = LeaseWriter(self.presence, self.gateway_id, self.presence_lease_s, self._write_leases)
        self._lease_writer = writer
        self._tasks.append(asyncio.create_task(writer.run(), name="tidings-nats-presence"))
        self._tasks.append(asyncio.create_task(self._trim_every(), name="tidings-nats-trim"))

    async def _ensure_stream(self, name: str, subjects: str, policy: RetentionPolicy) -> int:
        """Create a stream with ``policy`` as its limits, or bring its config up to date; return
        its last seq."""
        max_age_ns = 0 if policy.max_age_ms is None else policy.max_age_ms * 1_000_000
        window_ns = int(self.dedup_window_s * 1e9)
        config = {
            "name": name,
            "subjects": [subjects],
            "retention": "limits",
            "storage": "file",
            "num_replicas": self.replicas,
            "max_msgs_per_subject": policy.max_messages or -1,
            "max_age": max_age_ns,
            "duplicate_window": min(window_ns, max_age_ns) if max_age_ns else window_ns,
            "discard": "old",
            "allow_direct": True,
        }
        info = await self._create_or_update(config)
        return int(info["state"]["last_seq"])

    async def _create_or_update(self, config: dict[str, Any]) -> dict[str, Any]:
        """Create a stream or bring its config up to date (ours wins); return its info."""
        payload = json.dumps(config).encode()
        name = config["name"]

        async def ensure() -> dict[str, Any]:
            info = await self._api(f"STREAM.CREATE.{name}", payload, allow=(STREAM_NAME_IN_USE,))
            if "error" in info:  # exists with another config: ours wins
                info = await self._api(f"STREAM.UPDATE.{name}", payload)
            return info

        # A cluster that is still electing its meta leader answers "no responders" or not at all.
        return await retry(f"create stream {name}", ensure, for_s=60.0)

    async def stop(self) -> None:
        if self._peers is not None:
            await self._peers.stop()
            self._peers = None
        if self._lease_writer is not None:
            writer, self._lease_writer = self._lease_writer, None
            with contextlib.suppress(TimeoutError):  # else the leases expire on their own
                await asyncio.wait_for(writer.release(), REQUEST_TIMEOUT_S)
        if self._lease_tail is not None:
            await self._lease_tail.stop()
            self._lease_tail = None
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for tail in self._tails:
            await tail.stop()
        self._tails.clear()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(NatsError):
                await self._nc.drain()
        self._nc = None

    async def _api(self, call: str, payload: bytes = b"", allow: tuple[int, ...] = ()) -> dict[str, Any]:
        """One JetStream API request; raises ``StorageError`` for an error not in ``allow``."""
        answer = await self.nc.request(f"{API}.{call}", payload, timeout=REQUEST_TIMEOUT_S)
        body: dict[str, Any] = json.loads(answer.data)
        error = body.get("error")
        if error is not None and error.get("err_code") not in allow:
            description = str(error.get("description"))
            if "no suitable peers" in description:
                # A node is down or rejoining: an R3 stream cannot be placed yet (transient).
                raise Unplaced(f"JetStream refused {call}: {description}")
            raise StorageError(f"JetStream refused {call}: {description}")
        return body

    # -- publishing ---------------------------------------------------------

    async def publish(self, msg: Msg) -> PublishResult:
        payload = to_record_payload(msg)
        stream = self._stream(msg.topic)
        headers = {"Nats-Msg-Id": msg_id_of(msg.topic, msg.id), "Nats-Expected-Stream": stream}
        subject = subject_of(msg.topic, self.shards)
        # A publish that timed out may have been stored: sending it again with the same
        # Nats-Msg-Id is safe (its ack then says duplicate, with the original offset).
        answer = await retry(
            f"publish to {msg.topic}",
            lambda: self.nc.request(subject, payload, timeout=REQUEST_TIMEOUT_S, headers=headers),
        )
        ack = json.loads(answer.data)
        if "error" in ack:
            raise StorageError(f"JetStream refused a publish to {msg.topic}: {ack['error']}")
        return PublishResult(int(ack["seq"]), bool(ack.get("duplicate")))

    def submit(self, msg: Msg, done: PublishDone) -> None:
        # A task per message: the request/reply round trip to JetStream needs one anyway.
        task = asyncio.ensure_future(self.publish(msg))
        self._publishing.add(task)
        task.add_done_callback(partial(self._published, done))

    def _published(self, done: PublishDone, task: asyncio.Task[PublishResult]) -> None:
        self._publishing.discard(task)
        if task.cancelled():
            log.error("a durable publish was cancelled before JetStream answered")
            done(StorageError("the publish was cancelled"))
        else:
            done(task.exception() or task.result())

    def publish_ephemeral(self, msg: Msg) -> None:
        self._outbox.put_nowait((subject_of(msg.topic, 0), to_record_payload(msg)))

    async def _send_ephemeral(self) -> None:
        while True:
            subject, payload = await self._outbox.get()
            try:
                await self.nc.publish(subject, payload)
            except NatsError as exc:  # ephemeral is at-most-once: count it lost, carry on
                log.warning("ephemeral message to %s lost: %r", subject, exc)

    async def _on_ephemeral(self, raw: NatsMsg) -> None:
        msg = decode(raw.subject, 0, raw.data)
        msg = msgspec.structs.replace(msg, offset=None)
        for callback in self._ephemeral_callbacks:
            callback(msg)

    def _announce(self, raw: NatsMsg, seq: int, stored_ns: int) -> None:
        subject, data = raw.subject, raw.data
        topic = topic_of(subject)
        self._announced[topic] = seq
        msg: Msg | None = None
        for callback, interested in self._commit_callbacks:
            if interested is None or interested(topic):
                if msg is None:
                    msg = decode(subject, seq, data)
                callback(msg)

    # -- reading ------------------------------------------------------------

    def _stream(self, topic: str) -> str:
        return stream_of_topic(topic, self.shards)

    async def read(self, topic: str, after: int, limit: int = 1000) -> list[Msg]:
        # Direct gets may be answered by a replica that lags the leader; this
        # engine has announced ``announced`` already, so a short read must reach it.
        want = self._announced.get(topic, 0)

        async def read() -> list[Msg]:
            msgs = await self._read_subject(self._stream(topic), subject_of(topic, self.shards), after, limit)
            last = msgs[-1].offset if msgs else after
            if len(msgs) < limit and last is not None and last < want:
                raise Stale(f"read {topic} through {last}, announced {want}")
            return msgs

        return await retry(f"read {topic}", read)

    async def _read_subject(self, stream: str, subject: str, after: int, limit: int) -> list[Msg]:
        request = {"seq": after + 1, "next_by_subj": subject, "batch": limit}
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            await self.nc.publish(f"{API}.DIRECT.GET.{stream}", json.dumps(request).encode(), inbox)
            out: list[Msg] = []
            while True:
                raw = await sub.next_msg(timeout=REQUEST_TIMEOUT_S)
                status = raw.headers.get("Status") if raw.headers else None
                if status is not None:
                    if status in ("204", "404"):  # end of batch; nothing there
                        return out
                    raise StorageError(f"reading {subject}: status {status} {raw.headers}")
                assert raw.headers is not None
                out.append(decode(subject, int(raw.headers["Nats-Sequence"]), raw.data))
        finally:
            await sub.unsubscribe()

    async def _get(self, topic: str, request: dict[str, Any]) -> int | None:
        """The sequence of the message a get finds, or None.

        Asked of the stream leader (``STREAM.MSG.GET``), not of any replica as a
        direct get may be: a replica that has not yet applied a retention
        removal would make ``trimmed_through`` miss it and hide the gap.
        """
        stream, payload = self._stream(topic), json.dumps(request).encode()
        answer = await retry(
            f"look up {topic}",
            lambda: self._api(f"STREAM.MSG.GET.{stream}", payload, allow=(NO_MESSAGE_FOUND,)),
        )
        if "error" in answer:
            return None
        return int(answer["message"]["seq"])

    async def head(self, topic: str) -> int:
        last = await self._get(topic, {"last_by_subj": subject_of(topic, self.shards)})
        return max(last or 0, self._announced.get(topic, 0))

    async def trimmed_through(self, topic: str) -> int:
        """What retention removed, as JetStream lets us see it (``docs/scaling.md``).

        JetStream does not say which sequences of a subject it removed. Removal
        is always of a topic's oldest messages, so: with ``max_messages`` and
        the topic at that count, everything below its first retained message
        may have been removed; with the namespace's ``max_age``, everything below
        the stream's first sequence was; with a ``max_age`` of the topic's own
        (``trim``), everything below its first retained message may have been.
        The answer may cover sequences that never were this topic's, never one
        that still is.
        """
        own, base = self._retention(topic), self._namespace_policy(topic)
        count_limit = _least(own.max_messages, base.max_messages)
        own_age = _tighter(own.max_age_ms, base.max_age_ms)
        if count_limit is None and base.max_age_ms is None and own_age is None:
            return 0
        subject = subject_of(topic, self.shards)
        state = await self._stream_state(self._stream(topic), subject)
        first = await self._get(topic, {"seq": 1, "next_by_subj": subject})
        aged_below = int(state["first_seq"]) - 1 if base.max_age_ms is not None else 0
        if first is None:  # nothing retained: all of it was removed, if there ever was any
            return max(await self.head(topic), aged_below)
        trimmed = aged_below
        if own_age is not None:
            trimmed = first - 1
        count = int(state.get("subjects", {}).get(subject, 0))
        if count_limit is not None and count >= count_limit:
            trimmed = max(trimmed, first - 1)
        return min(trimmed, first - 1)

    def _namespace_policy(self, topic: str) -> RetentionPolicy:
        """The limits of the stream ``topic`` lives in (the system stream has none)."""
        if topic.startswith(SYSTEM_PREFIX):
            return UNLIMITED
        return self._retention(topic.split("/", 1)[0] + "/_/_")

    async def _stream_state(self, stream: str, subjects_filter: str, offset: int = 0) -> dict[str, Any]:
        request = json.dumps({"subjects_filter": subjects_filter, "offset": offset}).encode()
        info = await retry(f"stream info {stream}", lambda: self._api(f"STREAM.INFO.{stream}", request))
        state: dict[str, Any] = info["state"]
        state["_total"] = info.get("total", 0)
        return state

    async def offset_at_time(self, topic: str, ts_ms: int) -> int:
        # JetStream's own timestamps (stored when the stream leader received the
        # message), within milliseconds of the gateway's ``ts``.
        when = datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
        found = await self._get(topic, {"start_time": when, "next_by_subj": subject_of(topic, self.shards)})
        return await self.head(topic) if found is None else found - 1

    async def topics(self, matching: str = ">") -> list[str]:
        first = matching.split("/", 1)[0]
        namespaces = sorted(DURABLE_NAMESPACES) if first in ("*", ">") else [first]
        out: list[str] = []
        for ns in namespaces:
            if ns not in DURABLE_NAMESPACES:
                continue
            places = [(stream_of(ns, shard), f"tidings.{shard}.{ns}.>") for shard in range(self.shards)]
            if ns == "ctl":
                places.append((SYSTEM_STREAM, SYSTEM_SUBJECTS))
            for stream, subjects_filter in places:
                async for subject, _ in self._subjects(stream, subjects_filter):
                    if matches(matching, topic := topic_of(subject)):
                        out.append(topic)
        return out

    async def _subjects(self, stream: str, subjects_filter: str) -> AsyncIterator[tuple[str, int]]:
        """Every subject of ``stream`` matching ``subjects_filter`` with its message count."""
        offset = 0
        while True:
            state = await self._stream_state(stream, subjects_filter, offset)
            subjects: dict[str, int] = state.get("subjects") or {}
            for item in subjects.items():
                yield item
            offset += len(subjects)
            if not subjects or offset >= state["_total"]:
                return

    # -- retention of a topic's own ------------------------------------------------

    async def trim(self) -> int:
        """Apply the retention of topics whose policy is not their namespace's; return how many
        messages were removed.

        A stream applies its namespace's limits on every publish; a conversation's own
        (tighter) ``max_messages`` or ``max_age``, or its deletion, are applied here by
        purging its subject. Every gateway trims (a purge is idempotent).
        """
        removed = 0
        now_ms = int(time.time() * 1000)
        for topic in self._retained_otherwise():
            if topic.startswith(SYSTEM_PREFIX) or not is_durable(topic):
                continue
            own, base = self._retention(topic), self._namespace_policy(topic)
            keep = (
                own.max_messages if _least(own.max_messages, base.max_messages) != base.max_messages else None
            )
            age = own.max_age_ms if _least(own.max_age_ms, base.max_age_ms) != base.max_age_ms else None
            if keep is None and age is None:
                continue  # the stream's own limits are as tight
            stream, subject = self._stream(topic), subject_of(topic, self.shards)
            state = await self._stream_state(stream, subject)
            if not int(state.get("subjects", {}).get(subject, 0)):
                continue
            if keep is not None:
                removed += await self._purge(stream, {"filter": subject, "keep": keep})
            if age is not None:
                # Below the first young message, or below what was last before the lookup: a
                # message published meanwhile is never purged by a lookup that did not see it.
                last = await self._get(topic, {"last_by_subj": subject})
                cutoff = datetime.fromtimestamp((now_ms - age) / 1000, UTC)
                when = cutoff.isoformat().replace("+00:00", "Z")
                young = await self._get(topic, {"start_time": when, "next_by_subj": subject})
                below = young if young is not None else (last + 1 if last is not None else None)
                if below is not None:
                    removed += await self._purge(stream, {"filter": subject, "seq": below})
        return removed

    async def _purge(self, stream: str, request: dict[str, Any]) -> int:
        payload = json.dumps(request).encode()
        answer = await retry(f"trim {stream}", lambda: self._api(f"STREAM.PURGE.{stream}", payload))
        return int(answer.get("purged", 0))

    async def _trim_every(self) -> None:
        while True:
            await asyncio.sleep(self.trim_interval_s)
            try:
                await self.trim()
            except Exception:
                log.exception("trimming topics with a retention of their own failed; will retry")

    async def _move_system_topics(self) -> None:
        """Copy the system's topics from where versions before the system stream kept them
        (the ``ctl`` streams, whose limits could trim them) into the system stream, once.

        Done when the marker ``MOVED_MARKER`` is in the cursor bucket; until then every
        gateway that starts (none serves before) goes on from what the system stream
        already holds of each topic, so a copy cut short by a crash or an election is
        finished, in order, and each message is stored once (its ``Nats-Msg-Id`` also
        dedups two gateways copying at once).
        """
        kv = self._kv
        assert kv is not None

        async def marker() -> bool:
            try:
                await kv.get(MOVED_MARKER)
                return True
            except NotFoundError:
                return False

        # At start-up, on a cluster that may still be electing leaders: wait as stream creation does.
        if await retry("look up the system stream's marker", marker, for_s=60.0):
            return
        tokens = SYSTEM_PREFIX.replace("/", ".")
        for shard in range(self.shards):
            old_stream = stream_of("ctl", shard)
            async for subject, count in self._subjects(old_stream, f"tidings.{shard}.{tokens}>"):
                topic = topic_of(subject)
                new_subject = subject_of(topic, self.shards)
                state = await self._stream_state(SYSTEM_STREAM, new_subject)
                done = int(state.get("subjects", {}).get(new_subject, 0))
                after, seen = 0, 0
                for _ in range(50):  # a replica answering a direct get may lag the leader's count
                    while batch := await self._read_subject(old_stream, subject, after, 256):
                        for msg in batch:
                            seen += 1
                            if seen > done:
                                await self.publish(msg)
                        after = batch[-1].offset or after
                    if seen >= count:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise RetryLater(f"moving {topic}: read {seen} of its {count} messages", 1000)
                if seen > done:
                    log.info("moved %d messages of %s into the system stream", seen - done, topic)
        await retry("mark the system stream", lambda: kv.put(MOVED_MARKER, b"1"), for_s=60.0)

    # -- presence -----------------------------------------------------------

    async def _ensure_presence_bucket(self) -> None:
        """The presence bucket: a key-value bucket (the stream layout nats-py's KV reads),
        in memory (presence outlives no restart of the whole cluster), with a TTL."""
        lease_ns = int(self.presence_lease_s * 1e9)
        await self._create_or_update(
            {
                "name": PRESENCE_STREAM,
                "subjects": [PRESENCE_PREFIX + ">"],
                "retention": "limits",
                "storage": "memory",
                "num_replicas": self.replicas,
                "max_msgs_per_subject": 1,
                "max_age": lease_ns,
                "duplicate_window": min(lease_ns, 120 * 10**9),
                "discard": "new",
                "allow_direct": True,
                "allow_rollup_hdrs": True,
                "deny_delete": True,
            }
        )

    async def _write_leases(self, batch: dict[str, bytes | None]) -> set[str]:
        """Put (or, for ``None``, delete) presence leases; return the keys that failed."""

        async def write(key: str, value: bytes | None) -> None:
            headers = {"KV-Operation": "DEL"} if value is None else None
            answer = await self.nc.request(
                PRESENCE_PREFIX + key, value or b"", timeout=REQUEST_TIMEOUT_S, headers=headers
            )
            if b'"error"' in answer.data:
                raise StorageError(f"JetStream refused a presence lease: {answer.data!r}")

        items = list(batch.items())
        failed: set[str] = set()
        for i in range(0, len(items), LEASE_WRITES):
            chunk = items[i : i + LEASE_WRITES]
            done = await asyncio.gather(*(write(k, v) for k, v in chunk), return_exceptions=True)
            failed.update(key for (key, _), result in zip(chunk, done, strict=True) if result is not None)
        return failed

    async def presence_view(self) -> PresenceView:
        """Every gateway's presence: this one's table and the others' leases.

        The first call starts following the presence bucket and waits (at most
        ``REQUEST_TIMEOUT_S``) until it has read what the bucket held then.
        """
        if self._lease_tail is None:
            async with self._lease_lock:
                if self._lease_tail is None:
                    await self._follow_leases()
        return self._leases.view(self.presence)

    async def _follow_leases(self) -> None:
        call = f"STREAM.INFO.{PRESENCE_STREAM}"
        info = await retry(f"stream info {PRESENCE_STREAM}", lambda: self._api(call))
        target = int(info["state"]["last_seq"])
        self._leases_read = asyncio.Event()
        if target == 0:
            self._leases_read.set()
        self._leases_target = target
        tail = Tail(self, PRESENCE_STREAM, 0, self._on_lease)
        await tail.start()
        self._lease_tail = tail
        # The last lease may expire before it is read: then stop waiting after a while.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._leases_read.wait(), REQUEST_TIMEOUT_S)

    def _on_lease(self, raw: NatsMsg, seq: int, stored_ns: int) -> None:
        operation = raw.headers.get("KV-Operation") if raw.headers else None
        value = None if operation in ("DEL", "PURGE") else raw.data
        self._leases.apply(raw.subject.removeprefix(PRESENCE_PREFIX), value, stored_ns // 1_000_000)
        if seq >= self._leases_target:
            self._leases_read.set()

    # -- cursors ------------------------------------------------------------

    async def load_cursor(self, key: str) -> CursorState | None:
        assert self._kv is not None, "start() first"
        kv = self._kv

        async def load() -> bytes | None:
            try:
                return (await kv.get(kv_key(key))).value
            except NotFoundError:  # a key-value "not found" is a JetStream API error
                return None

        value = await retry("load a cursor", load)
        return None if value is None else msgspec.json.decode(value, type=CursorState)

    async def save_cursors(self, states: dict[str, CursorState]) -> None:
        kv = self._kv
        assert kv is not None, "start() first"

        async def save(key: str, state: CursorState) -> None:
            await retry("save a cursor", lambda: kv.put(kv_key(key), msgspec.json.encode(state)))

        await asyncio.gather(*(save(k, s) for k, s in states.items()))


def _least(a: int | None, b: int | None) -> int | None:
    """The tighter of two limits (None: no limit)."""
    return b if a is None else a if b is None else min(a, b)


def _tighter(own: int | None, base: int | None) -> int | None:
    """``own`` if it is a tighter limit than ``base`` (a stream's), else None."""
    return own if own is not None and (base is None or own < base) else None

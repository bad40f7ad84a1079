"""Typed settings, read from (lowest to highest precedence) defaults, a TOML
file, ``TIDINGS_*`` environment variables, and command-line flags.

    # tidings.toml
    host = "127.0.0.1"
    port = 7700
    data_dir = "./tidings-data"
    max_subscriptions = 1000

Each field ``name`` is also read from the environment variable
``TIDINGS_<NAME>`` (e.g. ``TIDINGS_PORT=7800``, ``TIDINGS_ALLOW_ANONYMOUS=1``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from tidings.log.types import RetentionPolicy

ENV_PREFIX = "TIDINGS_"
DEFAULT_CONTROL_PORT = 7701
#: settings that are lists: comma-separated in the environment
LIST_FIELDS = frozenset({"allowed_origins"})


class NamespacePolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How the topics of one namespace are kept and delivered.

    Retention (``None``: no limit) is per topic and also bounds the dedup
    window: an id is remembered for as long as its message is retained.
    """

    max_messages: int | None = None
    max_bytes: int | None = None
    max_age_s: float | None = None
    #: seconds an id is remembered for dedup (None: as long as its message is retained)
    dedup_window_s: float | None = None
    #: ms a durable consumer has to ack a delivery before it is redelivered
    ack_wait_ms: int = 30_000
    #: deliveries before a message goes to ``dlq/<topic>``
    max_deliver: int = 5
    #: unacked deliveries per durable subscription before delivery pauses
    max_inflight: int = 1000

    def __post_init__(self) -> None:
        if self.ack_wait_ms < 1 or self.max_deliver < 1 or self.max_inflight < 1:
            raise ValueError("ack_wait_ms, max_deliver and max_inflight must be at least 1")

    def retention(self) -> RetentionPolicy:
        age = None if self.max_age_s is None else int(self.max_age_s * 1000)
        window = None if self.dedup_window_s is None else int(self.dedup_window_s * 1000)
        return RetentionPolicy(self.max_messages, self.max_bytes, age, window)


def default_namespaces() -> dict[str, NamespacePolicy]:
    return {
        "conv": NamespacePolicy(),
        "ctl": NamespacePolicy(max_messages=10_000),
        "dlq": NamespacePolicy(max_age_s=14 * 86400.0),
        "sig": NamespacePolicy(),
    }


#: JetStream streams per durable namespace when ``Settings.shards`` is unset.
DEFAULT_NATS_SHARDS = 8


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 7700
    data_dir: str = "./tidings-data"
    allow_anonymous: bool = False
    #: seconds a new connection has to send its ``hello``
    hello_timeout: float = 5.0
    #: largest WebSocket message accepted, in bytes (checked before buffering)
    max_frame_bytes: int = 1024 * 1024
    max_subscriptions: int = 1000
    max_topic_length: int = 256
    #: frames a connection may have refused for its own fault (invalid, forbidden, over a
    #: limit) in a burst, refilled at a tenth of it a second; past it the connection is
    #: closed with 1008, so no client can keep the server refusing frames for ever
    max_refusals: int = 1000
    #: refused ``hello``s (bad, expired, revoked tokens) one address may have answered at
    #: once in a burst, refilled at a tenth of it a second; past it each refusal is sent
    #: ``refusal_delay`` seconds late, so a client guessing tokens tries slowly. A close
    #: for ``max_refusals`` counts as ten, and past the budget waits ten times as long
    #: (``gateway/tarpit.py``)
    refused_hellos: int = 20
    #: seconds a refusal past ``refused_hellos`` waits (0: never delayed)
    refusal_delay: float = 1.0
    #: shards of the durable log: shard = crc32(group) mod shards. Unset: the embedded
    #: engine keeps the count its data directory was created with, and creates new
    #: ones with 1 (docs/decisions.md, "Shards"); the NATS engine uses 8 streams.
    shards: int | None = None
    #: seconds SIGTERM waits for connections to drain before closing them
    drain_timeout: float = 5.0
    #: bytes a connection may have waiting to be written; past it, live deliveries
    #: to it are dropped (and counted in a ``dropped`` notice) and durable ones pause
    max_outbound_bytes: int = 4 * 1024 * 1024
    #: seconds a connection may stay over ``max_outbound_bytes`` before it is closed
    write_timeout: float = 30.0
    #: durable publishes a connection may have waiting for their puback (its publish
    #: credit); past it, publishes are answered ``retry_later``
    max_unacked_publishes: int = 1000
    #: per-token publish rate (messages/s and body bytes/s; None: no limit), with a
    #: burst of one second's worth; over it, publishes are answered ``retry_later``
    publish_rate: float | None = None
    publish_bytes_rate: float | None = None
    #: appends one shard of the durable log may have queued for its writer; past it,
    #: durable publishes to that shard are answered ``retry_later``
    max_write_queue: int = 50_000
    #: seconds a silent peer keeps its connection (and its agent's presence):
    #: the gateway pings after half of it idle and waits the other half for the pong
    presence_timeout: float = 30.0
    #: engine "nats": seconds a gateway's presence entries live in the shared bucket
    #: unless renewed (every third of it); a dead gateway's agents go offline after it
    presence_lease: float = 15.0
    #: engine "nats": seconds a gateway may go unheard (it beats every 0.5 s) before the
    #: others take over the durable consumers it owns (docs/scaling.md, "Shared consumers")
    peer_timeout: float = 3.0
    #: the control plane's HTTP port (0: any free port); ``tidings serve`` starts it.
    #: Unset: 7701, or any free port when ``port`` is 0 (so test servers never collide)
    control_port: int | None = None
    #: browser origins (``scheme://host[:port]``) allowed to open a WebSocket; a handshake
    #: whose ``Origin`` header is not listed is refused with HTTP 403. Empty: no check.
    #: Requests without ``Origin`` (non-browser clients) are never refused by it.
    #: Environment: ``TIDINGS_ALLOWED_ORIGINS=https://a.example,https://b.example``.
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    log_level: str = "info"
    #: "console" (human) or "json" (one object per line, for a log pipeline)
    log_format: str = "console"
    #: send each connection's frames of one event-loop turn as one WebSocket
    #: message. Turn off only to measure what coalescing buys (bench/fanout.py).
    coalesce: bool = True
    #: where durable topics live: "embedded" (this process's disk) or "nats" (JetStream)
    engine: str = "embedded"
    #: the NATS servers of engine "nats", comma-separated
    nats_url: str = "nats://127.0.0.1:4222"
    #: JetStream replicas per stream; 0: 3 if the server is in a cluster, else 1
    nats_replicas: int = 0
    #: per-namespace policies; a TOML ``[namespaces.conv]`` table overrides fields
    namespaces: dict[str, NamespacePolicy] = msgspec.field(default_factory=default_namespaces)

    def __post_init__(self) -> None:
        if self.log_format not in ("console", "json"):
            raise ValueError(f"log_format is 'console' or 'json', not {self.log_format!r}")
        if self.control_port is None:
            self.control_port = 0 if self.port == 0 else DEFAULT_CONTROL_PORT
        for name in ("port", "control_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} {getattr(self, name)} is out of range")
        for name in (
            "hello_timeout",
            "drain_timeout",
            "write_timeout",
            "presence_timeout",
            "presence_lease",
            "peer_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.engine not in ("embedded", "nats"):
            raise ValueError(f"engine must be 'embedded' or 'nats', not {self.engine!r}")
        if not 0 <= self.nats_replicas <= 5:
            raise ValueError(f"nats_replicas must be 0 (automatic) to 5, not {self.nats_replicas}")
        for name in (
            "max_frame_bytes",
            "max_subscriptions",
            "max_topic_length",
            "max_refusals",
            "refused_hellos",
            "max_outbound_bytes",
            "max_unacked_publishes",
            "max_write_queue",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.refusal_delay < 0:
            raise ValueError("refusal_delay must not be negative")
        if self.shards is not None and self.shards < 1:
            raise ValueError("shards must be at least 1")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def policy(self, topic: str) -> NamespacePolicy:
        """The policy of ``topic``'s namespace."""
        ns = topic.split("/", 1)[0]
        return self.namespaces.get(ns) or self.namespaces.setdefault(ns, NamespacePolicy())

    def retention(self, topic: str) -> RetentionPolicy:
        return self.policy(topic).retention()


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build ``Settings`` from a TOML file, the environment and explicit overrides.

    ``None`` overrides are ignored so CLI options left unset fall through.
    Raises ``ValueError`` with the offending source on a bad value.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, "rb") as fh:
            values.update(tomllib.load(fh))
    env = os.environ if environ is None else environ
    for name in Settings.__struct_fields__:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = [v.strip() for v in raw.split(",") if v.strip()] if name in LIST_FIELDS else raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    # A [namespaces.X] table changes the fields it names and keeps the other defaults.
    namespaces = {k: msgspec.to_builtins(v) for k, v in default_namespaces().items()}
    for ns, fields in (values.get("namespaces") or {}).items():
        namespaces.setdefault(ns, {}).update(fields if isinstance(fields, dict) else {})
    values["namespaces"] = namespaces
    try:
        # str values (from the environment) are converted to the field's type.
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid setting: {exc}") from None

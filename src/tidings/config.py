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

ENV_PREFIX = "TIDINGS_"


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
    #: shards of the durable log: shard = crc32(group) mod shards
    shards: int = 8
    #: seconds SIGTERM waits for connections to drain before closing them
    drain_timeout: float = 5.0
    log_level: str = "info"
    #: send each connection's frames of one event-loop turn as one WebSocket
    #: message. Turn off only to measure what coalescing buys (bench/fanout.py).
    coalesce: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range")
        for name in ("hello_timeout", "drain_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_frame_bytes", "max_subscriptions", "max_topic_length", "shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


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
            values[name] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        # str values (from the environment) are converted to the field's type.
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid setting: {exc}") from None

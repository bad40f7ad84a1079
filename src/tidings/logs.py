"""Structured logs: one line per event, as JSON or for a console.

Log calls put their context in ``extra`` under the names in ``CONTEXT``
(``conn``, ``agent``, ``topic``, ...); the JSON formatter emits them as fields,
the console formatter appends them as ``key=value``. What is never logged:
message bodies and tokens (a test checks both while a scenario runs).

    tidings serve --log-format json      # or TIDINGS_LOG_FORMAT=json
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

#: the context fields a log record may carry (``log.info(..., extra={"agent": ...})``)
CONTEXT = ("conn", "agent", "topic", "consumer", "peer", "code", "jti_hint")

LogFormat = Literal["console", "json"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{key}={record.__dict__[key]}" for key in CONTEXT if record.__dict__.get(key) is not None
        )
        return f"{line} [{context}]" if context else line


def configure(level: str = "info", fmt: LogFormat = "console") -> None:
    """Send tidings' logs (and the libraries') to stderr in ``fmt``, at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # picows logs every accepted and closed connection at INFO: connection churn
    # (a reconnect storm, a handshake flood) would become a log flood.
    logging.getLogger("picows").setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)

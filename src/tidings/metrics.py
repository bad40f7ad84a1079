"""Counters the gateway keeps about itself.

Plain integer attributes, cheap enough to bump on every message; the demo and
``tidings serve`` read them for live figures. Prometheus export of these and of
latency histograms lands with issue #7 (observability).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class GatewayStats:
    connections_opened: int = 0
    connections_closed: int = 0
    #: messages accepted from publishers
    published: int = 0
    #: message deliveries to subscribers (one per matching subscription)
    delivered: int = 0
    #: WebSocket messages written (each may carry a batch of frames)
    messages_out: int = 0
    #: requests answered with an error
    rejected: int = 0
    #: live deliveries dropped because the subscriber's outgoing buffer was full
    dropped: int = 0
    #: connections closed because they stopped reading for write_timeout
    write_timeouts: int = 0

    def snapshot(self) -> dict[str, int]:
        return {fld.name: getattr(self, fld.name) for fld in fields(self)}

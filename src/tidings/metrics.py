"""Counters the gateway keeps about itself.

Plain integer attributes, cheap enough to bump on every message; the demo and
``tidings serve`` read them for live figures. Prometheus export of these and of
latency histograms lands with issue #7 (observability).
"""

from __future__ import annotations

from dataclasses import dataclass


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank; 0.0 if empty."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


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

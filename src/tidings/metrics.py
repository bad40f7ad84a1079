"""Every figure tidings reports about itself, and its Prometheus export.

The hot path bumps plain integers and dicts (``GatewayStats``): a
``prometheus_client`` counter costs a microsecond or more per call, which on a
fanout of a million deliveries a second is the whole budget. At scrape time a
collector (``StatsCollector``) turns them into metric families, so
``GET /metrics`` shows counters and histograms as usual.

Labels are bounded: ``namespace`` (conv, ctl, dlq, sig), ``reason`` (a fixed
list), ``stage`` (three), and ``consumer`` (the first ``MAX_CONSUMER_LABELS``
names seen; the rest count as "other"). No topic is ever a label.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from tidings.protocol.topics import namespace_of

#: latency buckets in seconds: 1-2-5 steps from 50 us to 30 s
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
    0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
#: the end-to-end stages the SDK's acks let the gateway measure
STAGES = ("publish_deliver", "deliver_handled", "handled_ack")
MAX_CONSUMER_LABELS = 100
#: messages whose redeliveries are remembered for the dashboard's causal graph
REMEMBERED_REDELIVERIES = 10_000


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank; 0.0 if empty."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Histogram:
    """Fixed buckets, cumulative on export; ``observe`` is one bisect and two adds."""

    __slots__ = ("bounds", "counts", "sum", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += 1
        self.sum += value

    def quantile(self, q: float) -> float:
        """The ``q`` quantile, interpolated linearly inside the bucket it falls in
        (as Prometheus' ``histogram_quantile`` does); 0.0 when empty."""
        if not self.total:
            return 0.0
        rank = q * self.total
        seen, lower = 0, 0.0
        for i, count in enumerate(self.counts):
            if i == len(self.bounds):  # above the last bound: all we can say is "more"
                return self.bounds[-1]
            upper = self.bounds[i]
            if count and seen + count >= rank:
                return lower + (upper - lower) * (rank - seen) / count
            seen += count
            lower = upper
        return self.bounds[-1]

    def buckets(self) -> list[tuple[str, float]]:
        out, seen = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            seen += count
            out.append((bound, float(seen)))
        return out


def _counts() -> defaultdict[str, int]:
    return defaultdict(int)


@dataclass(slots=True)
class GatewayStats:
    """What one gateway counts. Per-namespace dicts are keyed by a topic's first segment."""

    connections_opened: int = 0
    connections_closed: int = 0
    #: messages accepted from publishers (ephemeral and durable, before storage)
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
    #: connections closed because they kept sending frames that were refused (max_refusals)
    refusal_closes: int = 0
    #: refused hellos and max_refusals closes answered late (``gateway/tarpit.py``)
    tarpitted: int = 0
    #: subscriptions open now (live and durable)
    subscriptions: int = 0
    messages_in: defaultdict[str, int] = field(default_factory=_counts)
    bytes_in: defaultdict[str, int] = field(default_factory=_counts)
    deliveries: defaultdict[str, int] = field(default_factory=_counts)
    publish_acks: defaultdict[str, int] = field(default_factory=_counts)
    duplicates: defaultdict[str, int] = field(default_factory=_counts)
    redeliveries: defaultdict[str, int] = field(default_factory=_counts)
    dead_letters: defaultdict[str, int] = field(default_factory=_counts)
    drops: defaultdict[str, int] = field(default_factory=_counts)
    acks: defaultdict[str, int] = field(default_factory=_counts)
    #: errors answered, by wire code (a fixed set: errors.BY_CODE)
    rejects: defaultdict[str, int] = field(default_factory=_counts)
    #: (stage, namespace, consumer) -> histogram of seconds
    latency: dict[tuple[str, str, str], Histogram] = field(default_factory=dict)
    #: (topic, message id) -> deliveries beyond the first, for the causal graph
    redelivered_ids: OrderedDict[tuple[str, str], int] = field(default_factory=OrderedDict)
    _consumers: set[str] = field(default_factory=set)

    @property
    def connections(self) -> int:
        return self.connections_opened - self.connections_closed

    def reject(self, code: str) -> None:
        self.rejected += 1
        self.rejects[code] += 1

    def redelivered(self, topic: str, msg_id: str) -> None:
        self.redeliveries[namespace_of(topic)] += 1
        key = (topic, msg_id)
        self.redelivered_ids[key] = self.redelivered_ids.pop(key, 0) + 1
        if len(self.redelivered_ids) > REMEMBERED_REDELIVERIES:
            self.redelivered_ids.popitem(last=False)

    def observe(self, stage: str, namespace: str, consumer: str, seconds: float) -> None:
        # Up to three times per delivery: the common case is one dict lookup.
        histogram = self.latency.get((stage, namespace, consumer))
        if histogram is None:
            histogram = self._histogram(stage, namespace, consumer)
        histogram.observe(seconds if seconds > 0.0 else 0.0)

    def _histogram(self, stage: str, namespace: str, consumer: str) -> Histogram:
        """The histogram of a new key; past ``MAX_CONSUMER_LABELS`` consumers, the "other" one."""
        if consumer not in self._consumers:
            if len(self._consumers) >= MAX_CONSUMER_LABELS:
                consumer = "other"
            else:
                self._consumers.add(consumer)
        key = (stage, namespace, consumer)
        histogram = self.latency.get(key)
        if histogram is None:
            histogram = self.latency[key] = Histogram()
        return histogram

    def stage(self, stage: str) -> Histogram:
        """One histogram of ``stage`` over every namespace and consumer (for the dashboard)."""
        merged = Histogram()
        for (s, _, _), h in self.latency.items():
            if s == stage:
                merged.total += h.total
                merged.sum += h.sum
                merged.counts = [a + b for a, b in zip(merged.counts, h.counts, strict=True)]
        return merged


@dataclass(slots=True)
class StorageFigures:
    """What the durable engine reports (the embedded engine: from its shards' writers)."""

    syncs: int = 0
    records: int = 0
    queue_depth: int = 0
    sync_seconds: Histogram = field(default_factory=Histogram)
    batch_records: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))


class StatsCollector(Collector):
    """Exports a gateway's ``GatewayStats`` (and the engine's storage figures) to Prometheus."""

    def __init__(
        self,
        stats: GatewayStats,
        storage: Callable[[], StorageFigures | None] = lambda: None,
        gauges: Callable[[], dict[str, float]] = dict,
    ) -> None:
        self.stats = stats
        self.storage = storage
        self.gauges = gauges

    def collect(self) -> Iterator[Any]:
        s = self.stats
        yield _counter("tidings_connections_opened", "WebSocket connections accepted", s.connections_opened)
        yield _counter("tidings_write_timeouts", "connections closed for not reading", s.write_timeouts)
        yield _counter(
            "tidings_refusal_closes", "connections closed for too many refused frames", s.refusal_closes
        )
        yield _counter(
            "tidings_tarpitted",
            "refused hellos and max_refusals closes answered late (past their address's budget)",
            s.tarpitted,
        )
        for name, value in self.gauges().items():
            yield GaugeMetricFamily(f"tidings_{name}", name.replace("_", " "), value=value)
        by_namespace = (
            ("messages_in", s.messages_in, "messages accepted from publishers"),
            ("bytes_in", s.bytes_in, "bytes of message bodies accepted"),
            ("deliveries", s.deliveries, "messages delivered to subscribers"),
            ("publish_acks", s.publish_acks, "durable publishes acknowledged (puback)"),
            ("duplicates", s.duplicates, "publishes answered as duplicates (nothing stored)"),
            ("acks", s.acks, "deliveries acknowledged by consumers"),
            ("redeliveries", s.redeliveries, "deliveries after the first (ack_wait or nack)"),
            ("dead_letters", s.dead_letters, "messages moved to dlq/ after max_deliver"),
            ("dropped", s.drops, "live deliveries dropped for a full outgoing buffer"),
        )
        for name, counts, doc in by_namespace:
            family = CounterMetricFamily(f"tidings_{name}", doc, labels=["namespace"])
            for namespace, value in sorted(counts.items()):
                family.add_metric([namespace], value)
            yield family
        rejects = CounterMetricFamily(
            "tidings_rejected", "requests refused, by error code", labels=["reason"]
        )
        for reason, value in sorted(s.rejects.items()):
            rejects.add_metric([reason], value)
        yield rejects
        latency = HistogramMetricFamily(
            "tidings_latency_seconds",
            "end-to-end latency by stage, from the SDK's acks",
            labels=["stage", "namespace", "consumer"],
        )
        for (stage, namespace, consumer), h in sorted(s.latency.items()):
            latency.add_metric([stage, namespace, consumer], h.buckets(), h.sum)
        yield latency
        storage = self.storage()
        if storage is not None:
            yield _counter("tidings_fsyncs", "fdatasync calls of group commits", storage.syncs)
            yield _counter("tidings_records_written", "records made durable", storage.records)
            yield GaugeMetricFamily(
                "tidings_write_queue_depth", "appends waiting for the writer", value=storage.queue_depth
            )
            for name, h, doc in (
                ("tidings_fsync_seconds", storage.sync_seconds, "write + fdatasync time of a group commit"),
                ("tidings_group_commit_records", storage.batch_records, "records per group commit"),
            ):
                histogram = HistogramMetricFamily(name, doc)
                histogram.add_metric([], h.buckets(), h.sum)
                yield histogram


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def now_ms() -> int:
    return time.time_ns() // 1_000_000

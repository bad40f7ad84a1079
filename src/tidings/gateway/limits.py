"""Ingress backpressure: per-token publish rates (token buckets).

A publisher over its rate is answered ``retry_later {retry_after_ms}`` with
nothing stored; the SDK waits that long and sends the same message (same id)
again, so a rate limit slows an agent down without losing or duplicating
anything. The bucket is per token (its ``jti``; the agent id for tokens
without one), shared by every connection of that token on this gateway.

The other two ingress bounds live where their state is: the per-connection
publish credit (unacknowledged durable publishes) in ``connection.py``, and
the per-shard write queue in the engine (``EmbeddedEngine.submit``).
"""

from __future__ import annotations

import time

from tidings.auth import Grants
from tidings.errors import RetryLater

#: buckets kept before idle (full) ones are forgotten
MAX_BUCKETS = 100_000


class TokenBucket:
    """``rate`` per second, up to ``burst`` at once."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, amount: float, now: float) -> float:
        """Take ``amount``; return 0.0, or the seconds until it would be available (nothing taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= amount:
            self.tokens -= amount
            return 0.0
        return (min(amount, self.burst) - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


class Limiter:
    """Messages/s and bytes/s per token; ``None`` rates mean no limit."""

    def __init__(self, messages_per_s: float | None, bytes_per_s: float | None, burst_s: float = 1.0) -> None:
        self.messages_per_s = messages_per_s
        self.bytes_per_s = bytes_per_s
        self.burst_s = burst_s
        #: whether any rate is limited (an attribute: it is asked once per publish; the
        #: rates are fixed for the limiter's life)
        self.active = messages_per_s is not None or bytes_per_s is not None
        self._messages: dict[str, TokenBucket] = {}
        self._bytes: dict[str, TokenBucket] = {}

    def check(self, grants: Grants, size: int) -> None:
        """Count one publish of ``size`` bytes; raise ``RetryLater`` if the token is over its rate."""
        key = grants.jti or grants.agent
        now = time.monotonic()
        wait = 0.0
        if self.messages_per_s is not None:
            wait = self._bucket(self._messages, key, self.messages_per_s).take(1, now)
        if not wait and self.bytes_per_s is not None:
            wait = self._bucket(self._bytes, key, self.bytes_per_s).take(size, now)
            if wait and self.messages_per_s is not None:
                self._messages[key].tokens += 1  # refused: give the message back
        if wait:
            raise RetryLater(
                f"agent {grants.agent!r} is over its publish rate", retry_after_ms=max(1, int(wait * 1000))
            )

    def _bucket(self, buckets: dict[str, TokenBucket], key: str, rate: float) -> TokenBucket:
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= MAX_BUCKETS:
                now = time.monotonic()
                for k in [k for k, b in buckets.items() if b.full(now)]:
                    del buckets[k]
            bucket = buckets[key] = TokenBucket(rate, max(1.0, rate * self.burst_s))
        return bucket

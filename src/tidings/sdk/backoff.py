"""Exponential backoff with full jitter (the AWS architecture blog's "full jitter").

    delay(n) = uniform(0, min(cap, base * 2**n))

Full jitter spreads a crowd of clients that lost the same server over the whole
window instead of bunching them at the same instants, so a restarted server is
not hit by every client at once.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base: float = 0.1
    cap: float = 10.0
    #: attempts before giving up; None retries forever
    max_attempts: int | None = None
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError("backoff needs 0 < base <= cap")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay before attempt ``attempt`` (0-based)."""
        return float(min(self.cap, self.base * 2.0 ** min(attempt, 62)))

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0, self.ceiling(attempt))

    def delays(self) -> Iterator[float]:
        """One delay per attempt, ending after ``max_attempts``."""
        attempt = 0
        while self.max_attempts is None or attempt < self.max_attempts:
            yield self.delay(attempt)
            attempt += 1

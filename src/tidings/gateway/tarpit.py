"""Refused handshakes past a per-address budget are answered late: a tarpit.

A client that keeps presenting bad tokens (guessing them, or a misconfigured
agent retrying in a tight loop) costs the server a TCP accept, an HTTP upgrade,
a frame decode and a token check per attempt: about 450 µs here, and one
sequential client makes 1,000-1,600 attempts a second (docs/reliability.md,
"Hostile input"). A faster refusal only lets it try faster. So each address has
a budget of refused ``hello``s, a token bucket of ``burst`` refilled at a tenth
of it a second; past it a refusal (the same ``error`` and close code) is sent
``delay`` seconds late, and nothing the connection sends meanwhile is acted on. A healthy
client is never refused, so never delayed, whatever its address.

At most ``MAX_HELD`` connections are held at once (each holds a file
descriptor); past that a refusal goes out at once. The budgets of at most
``MAX_ADDRESSES`` addresses are kept, the least recently refused forgotten
first. The address is the socket's peer, never a header a client could choose.
"""

from __future__ import annotations

import time
from collections import OrderedDict

#: connections held for a late refusal at once, over all addresses
MAX_HELD = 1000
#: addresses whose budgets are remembered
MAX_ADDRESSES = 10_000


class Tarpit:
    """``delay(address)`` for each refused handshake; ``release()`` when a held one is answered or gone."""

    def __init__(self, burst: int, delay_s: float) -> None:
        self.burst = burst
        self.delay_s = delay_s
        #: connections held now
        self.held = 0
        #: refusals answered late so far
        self.delayed = 0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)

    def delay(self, address: str, cost: float = 1.0) -> float:
        """Count one refusal from ``address`` (``cost``: refused hellos it is worth): 0.0
        to answer it now, else the seconds to hold it first (then ``release()``)."""
        if self.delay_s <= 0:
            return 0.0
        now = time.monotonic()
        tokens, at = self._buckets.pop(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.burst / 10)
        delay = 0.0
        if tokens >= cost:
            tokens -= cost
        elif self.held < MAX_HELD:
            delay = self.delay_s * cost
            self.held += 1
            self.delayed += 1
        self._buckets[address] = (tokens, now)  # the most recently refused last
        if len(self._buckets) > MAX_ADDRESSES:
            self._buckets.popitem(last=False)
        return delay

    def release(self) -> None:
        """A held connection was answered, or went away first."""
        self.held -= 1

"""Handshake deadlines, each drawn a little later than ``hello_timeout``, so they do not fire together.

A connection must complete its WebSocket upgrade within ``hello_timeout``
seconds of being accepted (and then send ``hello`` within as long again,
``Connection._hello_deadline``). With one fixed deadline, connections opened
together are dropped together: a slowloris attacker's hundred connections, all
opened at once, were all dropped in the same event-loop turn, reconnected at
once and were accepted in one burst, about 25 ms of the server's loop every
`hello_timeout` during which a healthy client's message waited (its p99 ~2x;
docs/reliability.md, "Healthy p99 under attack"). Each deadline is therefore
drawn between ``hello_timeout`` and ``SPREAD`` times it: never earlier than
promised, and a burst of connections is let go over a quarter of the deadline,
a few per turn.

picows keeps one fixed handshake timeout per server; ``Handshakes.install``
wraps the server's protocol factory (aiofastnet's ``Server._protocol_factory``)
to arm a drawn deadline per connection, and picows's own timeout stays armed
behind it (at ``SPREAD`` times ``hello_timeout`` plus a second) in case it is
not there. An upgrade cancels the drawn deadline (``opened``).
"""

from __future__ import annotations

import asyncio
import logging
import random

from picows import WSTransport

#: deadlines are drawn in [hello_timeout, SPREAD * hello_timeout]
SPREAD = 1.25
_log = logging.getLogger(__name__)


def spread(seconds: float) -> float:
    """A deadline of at least ``seconds``, drawn up to ``SPREAD`` times it."""
    return seconds * (1 + (SPREAD - 1) * random.random())


def fallback_timeout(seconds: float) -> float:
    """picows's own handshake timeout, behind the drawn ones."""
    return seconds * SPREAD + 1.0


class Handshakes:
    """The drawn upgrade deadline of each connection that has not upgraded yet."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._pending: dict[object, asyncio.TimerHandle] = {}  # protocol -> its deadline

    @property
    def pending(self) -> int:
        """Connections accepted and not upgraded yet (nor past their deadline)."""
        return len(self._pending)

    def install(self, server: asyncio.AbstractServer) -> bool:
        """Arm a drawn deadline for each connection ``server`` accepts from now on;
        False (and picows's fixed timeout alone) if its protocol factory is not to be found."""
        factory = getattr(server, "_protocol_factory", None)
        if not callable(factory):
            _log.warning(
                "handshake deadlines are not spread: %s has no protocol factory to wrap",
                type(server).__name__,
            )
            return False
        loop = asyncio.get_running_loop()  # the server's: its factory is called in it

        def protocol() -> object:
            proto = factory()
            self._pending[proto] = loop.call_later(spread(self.seconds), self._expire, proto)
            return proto

        server._protocol_factory = protocol  # type: ignore[attr-defined]
        return True

    def opened(self, transport: WSTransport) -> None:
        """``transport`` completed its upgrade: its deadline is off."""
        handle = self._pending.pop(transport.underlying_transport.get_protocol(), None)
        if handle is not None:
            handle.cancel()

    def _expire(self, proto: object) -> None:
        self._pending.pop(proto, None)
        transport: WSTransport | None = getattr(proto, "transport", None)
        if transport is not None and not transport.is_disconnected:
            transport.disconnect()

    def close(self) -> None:
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()

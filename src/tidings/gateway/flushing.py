"""Coalescing each connection's outgoing frames into one send per event-loop turn.

Whatever a loop turn produces for a connection (its replies, the deliveries of
every fanout and consumer it is in) is queued in its session, and the
connection is marked dirty; at the end of the turn ``Flusher`` sends each dirty
connection's frames as few WebSocket messages as the limits allow
(``Connection.flush``). Sending every frame on its own measured 10x fewer
deliveries a second (docs/performance.md).

One exception, for a connection whose big batch of frames is worked through in
0.5 ms slices over several turns (``Connection._process``): the connections that
batch feeds may have their flush held back a little (``batch_continues``), so that
a fanout sends each subscriber a few large messages rather than one small one per
slice (docs/protocol.md section 9).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidings.gateway.connection import Connection

#: longest a connection fed by a batch still being worked through waits for its flush
#: (``Flusher.batch_continues``), and the bytes after which it is flushed anyway
BATCH_FLUSH_DELAY_S = 0.002
BATCH_FLUSH_BYTES = 64 * 1024


class Flusher:
    """The gateway's once-per-loop-turn flush. ``start(loop)`` before the first ``mark_dirty``.

    ``coalesce=False`` flushes on every ``mark_dirty`` instead (for measuring what
    coalescing is worth); ``on_flush`` runs at the start of every flush (the gateway
    forgets the deliveries it encoded during the turn).
    """

    def __init__(self, coalesce: bool = True, on_flush: Callable[[], None] | None = None) -> None:
        self.coalesce = coalesce
        self._on_flush = on_flush
        self._loop: asyncio.AbstractEventLoop | None = None
        #: connections to flush at the end of this turn, in the order they became dirty
        #: (read it: its length is what ``batch_continues`` takes as ``fed_from``)
        self.to_flush: list[Connection] = []
        #: connections whose batch of frames goes on in a later loop turn (``batch_continues``)
        self.sliced: set[Connection] = set()
        #: connections fed by such a batch, whose flush is held back -> since when (``_hold_back``)
        self._held: dict[Connection, float] = {}
        self._scheduled = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def mark_dirty(self, conn: Connection) -> None:
        """Flush ``conn`` at the end of this event-loop turn (once, however many frames)."""
        if not self.coalesce:
            conn.flush()
            return
        if conn.dirty:
            return
        conn.dirty = True
        self.to_flush.append(conn)
        if not self._scheduled:
            self._schedule()

    def forget(self, conn: Connection) -> None:
        """``conn`` is gone: nothing of it is held or sliced any more."""
        self.sliced.discard(conn)
        self._held.pop(conn, None)

    def batch_continues(self, conn: Connection, fed_from: int) -> None:
        """``conn``'s frames go on in a later turn; the connections made dirty since
        ``fed_from`` (what this slice of the batch fed) may have their flush held back.

        A fanout worked through in 0.5 ms slices would otherwise send each subscriber
        one small message per slice, and at 100 subscribers those sends were the
        server's largest cost (docs/performance.md, "Where W1 ... spends the server").
        A held connection is flushed once ``BATCH_FLUSH_DELAY_S`` have passed or
        ``BATCH_FLUSH_BYTES`` wait for it, and at once when no batch goes on any more.
        Connections made dirty by anything else (another client's own replies) are
        never held.
        """
        self.sliced.add(conn)
        now = time.monotonic()
        held = self._held
        for fed in itertools.islice(self.to_flush, fed_from, None):
            held.setdefault(fed, now)

    def batch_done(self, conn: Connection) -> None:
        """``conn`` has acted on every frame it received (see ``batch_continues``)."""
        self.sliced.discard(conn)

    def _schedule(self) -> None:
        self._scheduled = True
        assert self._loop is not None, "Flusher.start() was not called"
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what every dirty connection has queued (what is held back waits on).

        Runs at the end of every loop turn that made a connection dirty; the gateway
        also calls it when it stops, after telling every client it goes away.
        """
        self._scheduled = False
        if self._on_flush is not None:
            self._on_flush()
        dirty, self.to_flush = self.to_flush, []
        if self._held:
            dirty = self._hold_back(dirty)
        for conn in dirty:
            conn.flush()

    def _hold_back(self, dirty: list[Connection]) -> list[Connection]:
        """The connections of ``dirty`` to flush now; the held ones stay dirty for a later turn."""
        held = self._held
        if not self.sliced:  # no batch goes on: nothing waits any longer
            held.clear()
            return dirty
        now = time.monotonic()
        flush = []
        for conn in dirty:
            since = held.get(conn)
            if (
                since is not None
                and now - since < BATCH_FLUSH_DELAY_S
                and conn.session.pending_bytes < BATCH_FLUSH_BYTES
                and conn.session.close_code is None
            ):
                self.to_flush.append(conn)
            else:
                if since is not None:
                    del held[conn]
                flush.append(conn)
        if self.to_flush and not self._scheduled:
            self._schedule()
        return flush

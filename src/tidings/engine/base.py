"""The engine interface: the one seam between the gateway and where messages live.

Every engine keeps the contract in DESIGN.md ("Guarantees"): a durable publish
returns only once the message is durable; the same id in the same topic is
stored once; readers see a topic in offset order; removed messages are
reported, never skipped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import msgspec

from tidings.log.types import AppendResult as PublishResult
from tidings.metrics import StorageFigures
from tidings.presence import PresenceTable, PresenceView
from tidings.protocol.frames import Msg

__all__ = ["CursorState", "Engine", "Peers", "PublishDone", "PublishResult", "TopicCursor", "consumer_key"]

#: Called once with a durable publish's result, or with the exception that failed it.
PublishDone = Callable[[PublishResult | BaseException], None]


def consumer_key(agent: str, name: str, pattern: str) -> str:
    """The key a durable consumer's cursor is saved under: one per (agent, consumer, pattern)."""
    return f"{agent}\x00{name}\x00{pattern}"


class TopicCursor(msgspec.Struct):
    """How far a durable consumer got in one topic.

    Every offset ``<= floor`` is acknowledged; so is each offset in ``acked``
    (acknowledged out of order, above the floor).
    """

    floor: int = 0
    acked: list[int] = []
    #: delivery attempts so far of offsets above the floor delivered but not acked,
    #: so that ``max_deliver`` counts across gateways and restarts
    attempts: dict[int, int] = {}


class CursorState(msgspec.Struct):
    topics: dict[str, TopicCursor] = {}


class Peers(ABC):
    """The other gateways of a shared engine, and a way to talk to them.

    Durable consumers are shared through it (``gateway/sharing.py``): one gateway
    owns each consumer (its cursor, what is in flight, attempts) and the others
    pass their members' deliveries and acks to and from it. Messages are sent at
    most once and in order per pair of gateways; a lost one is a delivery or ack
    lost, which ``ack_wait`` repairs.
    """

    #: this gateway's name among its peers
    gateway_id: str

    @abstractmethod
    def alive(self, gateway: str) -> bool:
        """Whether ``gateway`` has been heard from lately (this gateway always is)."""

    @abstractmethod
    async def claim(self, name: str) -> str:
        """Make this gateway the owner of ``name`` unless a live gateway owns it; return the owner.

        Raises ``RetryLater`` or ``StorageError`` when the claim cannot be decided.
        """

    @abstractmethod
    async def release(self, name: str) -> None:
        """Give up owning ``name`` (nothing happens if another gateway took it meanwhile)."""

    @abstractmethod
    def send(self, gateway: str, data: bytes) -> None:
        """Send ``data`` to ``gateway``'s message callback (at most once, in order)."""

    @abstractmethod
    def on_message(self, callback: Callable[[bytes], None]) -> None:
        """Call ``callback`` with each message another gateway sent to this one."""

    @abstractmethod
    def on_gone(self, callback: Callable[[str], None]) -> None:
        """Call ``callback`` with each gateway that stopped, or stopped being heard from."""

    @abstractmethod
    def on_back(self, callback: Callable[[str], None]) -> None:
        """Call ``callback`` with each gateway heard from again after it was taken for gone."""

    @abstractmethod
    def on_taken_over(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(name, previous owner)`` when a claim took ``name`` over from a
        gateway taken for gone (which may yet be alive and think it still owns it)."""


#: Called with each newly durable message, per topic in offset order.
CommitCallback = Callable[[Msg], None]
#: Called with each ephemeral message published anywhere.
EphemeralCallback = Callable[[Msg], object]


class Engine(ABC):
    """What the gateway needs from wherever messages live.

    Reads are coroutines: the NATS engine answers them over the network. A
    reader that must not miss a commit while a read is in flight holds the
    commits that arrive meanwhile and merges them by offset (``gateway/consumer.py``).
    """

    #: True when several gateways share this engine's topics and cursors (NATS):
    #: a gateway then keeps no consumer state once its last member has left.
    shared: bool = False
    #: the other gateways of a shared engine (None: this gateway is alone)
    peers: Peers | None = None

    _presence: PresenceTable | None = None
    #: who ``on_commit`` and ``on_ephemeral`` registered (each engine calls them)
    _commit_callbacks: list[tuple[CommitCallback, Callable[[str], bool] | None]]
    _ephemeral_callbacks: list[EphemeralCallback]

    @property
    def presence(self) -> PresenceTable:
        """Who is connected to this gateway: it reports here, synchronously, from socket callbacks."""
        if self._presence is None:
            self._presence = PresenceTable()
        return self._presence

    async def presence_view(self) -> PresenceView:
        """Who is connected to any gateway of this engine: what the control plane reads.

        An engine whose gateways share nothing but this process answers with its
        table; a shared engine merges what every gateway wrote behind (NATS:
        ``tidings.leases``). Read it again for each answer: it is a snapshot.
        """
        return self.presence

    @abstractmethod
    async def start(self) -> None:
        """Open storage and connections. Raises ``StorageError`` (e.g. ``CorruptLog``)."""

    @abstractmethod
    async def stop(self) -> None:
        """Finish what is in flight and release everything. Idempotent."""

    # -- publishing ---------------------------------------------------------

    @abstractmethod
    async def publish(self, msg: Msg) -> PublishResult:
        """Store a message of a durable topic; return once it is durable.

        ``msg.offset`` is ignored (the engine assigns it). A message whose id is
        already stored in the topic stores nothing and answers the original
        offset with ``duplicate=True``. Raises ``SyncFailed`` (the process must
        stop), ``RetryLater`` (try again), ``InvalidFrame`` (unstorable body).
        """

    @abstractmethod
    def submit(self, msg: Msg, done: PublishDone) -> None:
        """``publish`` without awaiting it, queued in call order (the gateway's path).

        ``done`` is called once, later (never before this returns), with what
        ``publish`` would return or the exception it would raise. Errors found at
        once (an unstorable body, a full write queue) are raised here.
        """

    @abstractmethod
    def publish_ephemeral(self, msg: Msg) -> None:
        """Hand an ephemeral message to every gateway's ephemeral callback."""

    def on_commit(self, callback: CommitCallback, interested: Callable[[str], bool] | None = None) -> None:
        """Call ``callback`` with every message once durable, per topic in offset order.

        ``interested(topic)``, if given, lets the engine skip decoding messages of
        topics nobody on this gateway listens to (it must be cheap and exact).

        A message passed to the callback is already durable, so a ``read``
        that starts after the callback returned includes it. A reader that
        holds what the callback passes while its ``read`` is in flight, then
        merges both by offset, sees no gap and no repeat.
        """
        self._commit_callbacks.append((callback, interested))

    def on_ephemeral(self, callback: EphemeralCallback) -> None:
        """Call ``callback`` with every ephemeral message published on any gateway."""
        self._ephemeral_callbacks.append(callback)

    # -- reading ------------------------------------------------------------

    @abstractmethod
    async def read(self, topic: str, after: int, limit: int = 1000) -> list[Msg]:
        """Up to ``limit`` retained messages of ``topic`` after offset ``after``, ascending."""

    @abstractmethod
    async def head(self, topic: str) -> int:
        """The highest offset ever stored in ``topic``; 0 if none."""

    @abstractmethod
    async def trimmed_through(self, topic: str) -> int:
        """The highest offset of ``topic`` removed by retention; 0 if none."""

    @abstractmethod
    async def offset_at_time(self, topic: str, ts_ms: int) -> int:
        """The ``after`` offset from which ``read`` starts at the first message at or after ``ts_ms``."""

    def storage_figures(self) -> StorageFigures | None:
        """Group-commit figures for /metrics; None where the engine has none to report."""
        return None

    async def count(self, topic: str) -> int:
        """How many messages of ``topic`` are retained (engines override the scan)."""
        total, after = 0, await self.trimmed_through(topic)
        while batch := await self.read(topic, after, 1000):
            total += len(batch)
            after = batch[-1].offset or after
        return total

    @abstractmethod
    async def topics(self, matching: str = ">") -> list[str]:
        """Every durable topic matching the pattern ``matching`` with retained messages or history."""

    # -- cursors of durable consumers ------------------------------------------

    @abstractmethod
    async def load_cursor(self, key: str) -> CursorState | None:
        """The saved state of a durable consumer; None if it never existed."""

    @abstractmethod
    async def save_cursors(self, states: dict[str, CursorState]) -> None:
        """Make these consumers' states durable. Raises ``StorageError``."""

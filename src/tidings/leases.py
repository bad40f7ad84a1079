"""Presence leases: each gateway's presence in a shared key-value bucket, merged for the control plane.

A shared engine (NATS) keeps, per gateway and agent, one key of a bucket whose
entries expire after ``lease_s`` unless written again:

    key    <gateway id>.<agent, base64url without padding>
    value  Lease, JSON: the agent's connections on that gateway

``LeaseWriter`` is the gateway's side. The gateway reports to its
``PresenceTable`` synchronously from its socket callbacks; the writer is told
which agents changed and writes them behind, from a task of its own, in
batches: a put for an agent online here, a delete for one that left. Every
``lease_s / 3`` it writes every online agent again (the renewal), so an entry
outlives a lost write or a leader election, and the entries of a gateway that
died expire within ``lease_s``.

``LeaseBoard`` is the reader's side: it is fed every write to the bucket (with
the time the bucket stored it) and answers ``view()``, a ``PresenceView`` that
merges this gateway's own table (exact and current) with every other
gateway's leases still within ``lease_s`` of their last write.

This module does no I/O: the engine brings the bucket (``engine/nats/engine.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import msgspec

from tidings.presence import OFFLINE_REMEMBERED, AgentPresence, PresenceTable, filtered

log = logging.getLogger("tidings.presence")

#: ``write({key: value or None for a delete})`` -> the keys whose write failed
WriteLeases = Callable[[dict[str, bytes | None]], Awaitable[set[str]]]


class Lease(msgspec.Struct, kw_only=True):
    """One gateway's report of one agent."""

    agent: str
    status: str
    #: ms since the epoch when ``status`` was set; across gateways the latest wins
    status_ms: int
    capabilities: list[str]
    conversations: list[str]
    connections: int
    since_ms: int


def lease_key(gateway: str, agent: str) -> str:
    return f"{gateway}.{base64.urlsafe_b64encode(agent.encode()).decode().rstrip('=')}"


def parse_key(key: str) -> tuple[str, str]:
    """(gateway, agent) of a key made by ``lease_key``. Raises ``ValueError`` for another key."""
    gateway, _, encoded = key.partition(".")
    agent = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    if not gateway or not agent:
        raise ValueError(f"not a presence lease key: {key!r}")
    return gateway, agent


class LeaseWriter:
    """Writes one gateway's ``PresenceTable`` behind into the bucket; ``run()`` is its task."""

    def __init__(self, table: PresenceTable, gateway: str, lease_s: float, write: WriteLeases) -> None:
        self.table = table
        self.gateway = gateway
        self.renew_s = lease_s / 3
        self._write = write
        self._dirty: set[str] = set()
        self._written: dict[str, bytes] = {}  # agent -> its value in the bucket now
        self._failed: set[str] = set()  # agents whose last write failed
        self._wake = asyncio.Event()
        table.watch(self._changed)

    def _changed(self, agent: str) -> None:
        self._dirty.add(agent)
        self._wake.set()

    async def run(self) -> None:
        """Write changes as they come and renew every lease each ``lease_s / 3``; until cancelled."""
        renew_at = time.monotonic() + self.renew_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, renew_at - time.monotonic()))
            self._wake.clear()
            renew = time.monotonic() >= renew_at
            if renew:
                renew_at = time.monotonic() + self.renew_s
            await self.flush(renew)

    async def flush(self, renew: bool = False) -> None:
        """Write what changed since the last flush (and, with ``renew``, every lease held)."""
        batch: dict[str, bytes | None] = {}
        dirty, self._dirty = self._dirty, set()
        for agent in dirty:
            found = self.table.online_summary(agent)
            if found is not None:
                summary, status_ms = found
                value = msgspec.json.encode(
                    Lease(
                        agent=agent,
                        status=summary.status,
                        status_ms=status_ms,
                        capabilities=summary.capabilities,
                        conversations=summary.conversations,
                        connections=summary.connections,
                        since_ms=summary.since_ms,
                    )
                )
                if value != self._written.get(agent) or renew or agent in self._failed:
                    batch[lease_key(self.gateway, agent)] = self._written[agent] = value
            elif agent in self._written:
                batch[lease_key(self.gateway, agent)] = None
        if renew:
            for agent, value in self._written.items():
                batch.setdefault(lease_key(self.gateway, agent), value)
        if not batch:
            return
        failed = await self._write(batch)
        for key, written in batch.items():
            agent = parse_key(key)[1]
            if key in failed:
                self._dirty.add(agent)  # tried again at the next change or renewal
                self._failed.add(agent)
                continue
            self._failed.discard(agent)
            if written is None and self.table.online_summary(agent) is None:
                self._written.pop(agent, None)
        if failed:
            log.warning("presence: %d of %d lease writes failed; retrying", len(failed), len(batch))

    async def release(self) -> None:
        """Delete every lease this gateway holds (it is stopping): its agents go offline at once."""
        batch: dict[str, bytes | None] = {lease_key(self.gateway, a): None for a in self._written}
        self._written.clear()
        if batch:
            await self._write(batch)


class LeaseBoard:
    """Every gateway's leases as the bucket stored them; ``view()`` merges them with this gateway's."""

    def __init__(self, gateway: str, lease_s: float) -> None:
        self.gateway = gateway
        self.lease_ms = int(lease_s * 1000)
        self._leases: dict[str, dict[str, tuple[Lease, int]]] = {}  # agent -> gateway -> (lease, stored)
        self._offline: OrderedDict[str, AgentPresence] = OrderedDict()

    def apply(self, key: str, value: bytes | None, stored_ms: int) -> None:
        """One write to the bucket: a lease, or ``None`` for a delete."""
        try:
            gateway, agent = parse_key(key)
        except ValueError:
            return
        if gateway == self.gateway:
            return  # this gateway's own table is fresher than what it wrote
        if value is None:
            self._drop(agent, gateway, stored_ms)
            return
        try:
            lease = msgspec.json.decode(value, type=Lease)
        except msgspec.DecodeError:
            log.warning("presence: undecodable lease %r", key)
            return
        self._leases.setdefault(agent, {})[gateway] = (lease, stored_ms)
        self._offline.pop(agent, None)

    def expire(self, now_ms: int) -> None:
        """Forget the leases not written for ``lease_s``: their gateway died or lost NATS."""
        for agent, by_gateway in list(self._leases.items()):
            for gateway, (_, stored_ms) in list(by_gateway.items()):
                if stored_ms + self.lease_ms <= now_ms:
                    self._drop(agent, gateway, stored_ms + self.lease_ms)

    def _drop(self, agent: str, gateway: str, when_ms: int) -> None:
        by_gateway = self._leases.get(agent, {})
        gone = by_gateway.pop(gateway, None)
        if by_gateway or gone is None:
            return
        del self._leases[agent]
        lease = gone[0]
        self._offline[agent] = AgentPresence(
            agent=agent, online=False, status=lease.status, capabilities=lease.capabilities, since_ms=when_ms
        )
        self._offline.move_to_end(agent)
        while len(self._offline) > OFFLINE_REMEMBERED:
            self._offline.popitem(last=False)

    def view(self, local: PresenceTable, now_ms: int | None = None) -> MergedPresence:
        """Everything known now: ``local`` (this gateway's table) and the other gateways' leases."""
        self.expire(_now_ms() if now_ms is None else now_ms)
        return MergedPresence(local, self._leases, self._offline)


class MergedPresence:
    """A ``PresenceView`` over one gateway's table and the other gateways' leases.

    An agent is online if any gateway has it; its connections, capabilities and
    conversations are those of every gateway together; its status is the one set
    last; ``since_ms`` is when its earliest connection began.
    """

    def __init__(
        self,
        local: PresenceTable,
        leases: dict[str, dict[str, tuple[Lease, int]]],
        offline: OrderedDict[str, AgentPresence],
    ) -> None:
        self._local = local
        self._leases = leases
        self._offline = offline

    def is_online(self, agent: str) -> bool:
        return agent in self._leases or self._local.is_online(agent)

    def get(self, agent: str) -> AgentPresence | None:
        parts: list[tuple[AgentPresence, int]] = []
        mine = self._local.online_summary(agent)
        if mine is not None:
            parts.append(mine)
        for lease, _ in self._leases.get(agent, {}).values():
            parts.append((_presence_of(lease), lease.status_ms))
        if parts:
            return _merge(parts)
        gone = [p for p in (self._offline.get(agent), self._local.get(agent)) if p is not None]
        return max(gone, key=lambda p: p.since_ms) if gone else None

    def agents(
        self,
        *,
        capability: str | None = None,
        status: str | None = None,
        conversation: str | None = None,
        online: bool | None = None,
    ) -> list[AgentPresence]:
        """Every known agent (online first, by name; then recently offline, latest first), filtered."""
        names = sorted(set(self._leases) | set(self._local.online_agents()))
        found = [p for a in names if (p := self.get(a)) is not None]
        if online is not True:
            here = set(names)
            gone = {p.agent: p for p in self._offline.values() if p.agent not in here}
            for p in self._local.offline():
                if p.agent not in here and p.since_ms >= gone.get(p.agent, p).since_ms:
                    gone[p.agent] = p
            found += sorted(gone.values(), key=lambda p: p.since_ms, reverse=True)
        return filtered(found, capability, status, conversation, online)

    def members_online(self, topic: str) -> list[str]:
        return [p.agent for p in self.agents(online=True, conversation=topic)]


def _presence_of(lease: Lease) -> AgentPresence:
    return AgentPresence(
        agent=lease.agent,
        online=True,
        status=lease.status,
        capabilities=lease.capabilities,
        conversations=lease.conversations,
        connections=lease.connections,
        since_ms=lease.since_ms,
    )


def _merge(parts: list[tuple[AgentPresence, int]]) -> AgentPresence:
    latest = max(parts, key=lambda part: part[1])[0]
    return AgentPresence(
        agent=latest.agent,
        online=True,
        status=latest.status,
        capabilities=sorted({c for p, _ in parts for c in p.capabilities}),
        conversations=sorted({t for p, _ in parts for t in p.conversations}),
        connections=sum(p.connections for p, _ in parts),
        since_ms=min(p.since_ms for p, _ in parts),
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

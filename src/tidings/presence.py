"""Presence: which agents are connected, what they can do, what they are doing.

Agents declare ``capabilities`` and a ``status`` in ``hello`` and may change
them later with a ``presence`` frame. An agent is online while it holds at
least one connection; a connection is a lease kept by WebSocket heartbeats: a
peer that stops answering pings is disconnected after ``presence_timeout``
(``Settings``), and its agent goes offline with it.

The table is owned by the engine (``Engine.presence``): it holds the
connections of one gateway, which reports connections and conversation
membership here, synchronously, from its socket callbacks. The control plane
reads ``await engine.presence_view()`` (a ``PresenceView``): with the embedded
engine that is this table itself; the NATS engine writes each gateway's table
behind, into leases in a shared bucket, and merges every gateway's
(``tidings.leases``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

import msgspec

from tidings.errors import InvalidFrame

#: offline agents remembered (with their last status and last-seen time)
OFFLINE_REMEMBERED = 10_000
#: what an agent may declare about itself in hello and presence frames
MAX_CAPABILITIES = 64
MAX_LABEL = 64


def checked_status(status: str) -> str:
    """``status`` if it is a valid status label; else ``InvalidFrame``."""
    if len(status) > MAX_LABEL:
        raise InvalidFrame(f"status is longer than {MAX_LABEL} characters")
    return status


def checked_capabilities(capabilities: list[str]) -> list[str]:
    """``capabilities`` if each is a valid label and there are not too many; else ``InvalidFrame``."""
    if len(capabilities) > MAX_CAPABILITIES:
        raise InvalidFrame(f"more than {MAX_CAPABILITIES} capabilities")
    if any(not isinstance(c, str) or not c or len(c) > MAX_LABEL for c in capabilities):
        raise InvalidFrame(f"each capability is a non-empty string of at most {MAX_LABEL} characters")
    return capabilities


class AgentPresence(msgspec.Struct, kw_only=True):
    """What the control plane reports for one agent."""

    agent: str
    online: bool
    status: str = ""
    capabilities: list[str] = []
    #: durable conversation topics the agent is subscribed to now
    conversations: list[str] = []
    connections: int = 0
    #: ms since the epoch: when it came online (or went offline, when offline)
    since_ms: int = 0


class PresenceEvent(msgspec.Struct, kw_only=True):
    """A change to announce on ``sig/presence/<topic>``: join, leave or status."""

    agent: str
    event: str
    topic: str
    status: str = ""


PresenceListener = Callable[[PresenceEvent], None]


class PresenceView(Protocol):
    """What the control plane reads: every agent connected to any gateway of the engine."""

    def is_online(self, agent: str) -> bool: ...

    def get(self, agent: str) -> AgentPresence | None: ...

    def agents(
        self,
        *,
        capability: str | None = None,
        status: str | None = None,
        conversation: str | None = None,
        online: bool | None = None,
    ) -> list[AgentPresence]: ...

    def members_online(self, topic: str) -> list[str]: ...


class _Conn:
    __slots__ = ("agent", "capabilities", "status", "status_ms", "topics")

    def __init__(self, agent: str, status: str, capabilities: list[str]) -> None:
        self.agent = agent
        self.status = status
        self.status_ms = _now_ms()  # when ``status`` was set: the latest wins across gateways
        self.capabilities = capabilities
        self.topics: dict[str, int] = {}  # conversation topic -> subscriptions to it


class PresenceTable:
    """Agents by connection. All methods are synchronous and cheap (called from the gateway)."""

    def __init__(self) -> None:
        self._conns: dict[object, _Conn] = {}
        self._online: dict[str, dict[object, None]] = {}
        #: agent -> conversation topic -> subscriptions to it over all its connections, so
        #: that a join or a disconnect costs the same however many connections the agent
        #: holds (a pool of 5,000 workers under one identity took 10 s of the loop to
        #: connect and disconnect when each of them looked at all the others)
        self._topics: dict[str, dict[str, int]] = {}
        self._since: dict[str, int] = {}
        self._offline: OrderedDict[str, AgentPresence] = OrderedDict()
        self._listeners: list[PresenceListener] = []
        self._watchers: list[Callable[[str], None]] = []

    def listen(self, listener: PresenceListener) -> None:
        """Call ``listener`` with every join, leave and status event."""
        self._listeners.append(listener)

    def watch(self, watcher: Callable[[str], None]) -> None:
        """Call ``watcher(agent)`` whenever what ``online_summary(agent)`` answers may have changed."""
        self._watchers.append(watcher)

    # -- what gateways report -------------------------------------------------

    def connected(self, conn: object, agent: str, status: str, capabilities: Iterable[str]) -> None:
        self._conns[conn] = _Conn(agent, status or "idle", sorted(set(capabilities)))
        if agent not in self._online:
            self._online[agent] = {}
            self._topics[agent] = {}
            self._since[agent] = _now_ms()
            self._offline.pop(agent, None)
        self._online[agent][conn] = None
        self._changed(agent)

    def disconnected(self, conn: object) -> None:
        entry = self._conns.get(conn)
        if entry is None:
            return
        agent = entry.agent
        conns = self._online[agent]
        counts = self._topics[agent]
        gone = []
        for topic, n in entry.topics.items():
            if counts[topic] == n:
                del counts[topic]
                gone.append(topic)
            else:
                counts[topic] -= n
        if len(conns) == 1:  # its last connection: remember how it was when it left
            summary = self._summary(agent)
            summary.online, summary.connections, summary.conversations = False, 0, []
            summary.since_ms = _now_ms()
            del self._online[agent], self._topics[agent], self._since[agent]
            self._offline[agent] = summary
            while len(self._offline) > OFFLINE_REMEMBERED:
                self._offline.popitem(last=False)
        else:
            del conns[conn]
        del self._conns[conn]
        for topic in sorted(gone):
            self._emit(PresenceEvent(agent=agent, event="leave", topic=topic, status=entry.status))
        self._changed(agent)

    def update(self, conn: object, status: str | None, capabilities: Iterable[str] | None) -> None:
        """A ``presence`` frame: new status and/or capabilities for the agent of ``conn``."""
        entry = self._conns.get(conn)
        if entry is None:
            return
        if capabilities is not None:
            entry.capabilities = sorted(set(capabilities))
        if status and status != entry.status:
            now = _now_ms()
            for other in self._online[entry.agent]:
                self._conns[other].status = status
                self._conns[other].status_ms = now
            for topic in sorted(self._topics[entry.agent]):
                self._emit(PresenceEvent(agent=entry.agent, event="status", topic=topic, status=status))
        self._changed(entry.agent)

    def joined(self, conn: object, topic: str) -> None:
        """``conn`` subscribed to conversation ``topic``."""
        entry = self._conns.get(conn)
        if entry is None:
            return
        counts = self._topics[entry.agent]
        first = topic not in counts
        counts[topic] = counts.get(topic, 0) + 1
        entry.topics[topic] = entry.topics.get(topic, 0) + 1
        if first:
            self._emit(PresenceEvent(agent=entry.agent, event="join", topic=topic, status=entry.status))
            self._changed(entry.agent)

    def left(self, conn: object, topic: str) -> None:
        """``conn`` dropped one subscription to conversation ``topic``."""
        entry = self._conns.get(conn)
        if entry is None or topic not in entry.topics:
            return
        entry.topics[topic] -= 1
        if entry.topics[topic] == 0:
            del entry.topics[topic]
        counts = self._topics[entry.agent]
        counts[topic] -= 1
        if counts[topic] == 0:  # no connection of the agent is in it any more
            del counts[topic]
            self._emit(PresenceEvent(agent=entry.agent, event="leave", topic=topic, status=entry.status))
            self._changed(entry.agent)

    # -- what the control plane reads -------------------------------------------

    def is_online(self, agent: str) -> bool:
        return agent in self._online

    def get(self, agent: str) -> AgentPresence | None:
        if agent in self._online:
            return self._summary(agent)
        return self._offline.get(agent)

    def agents(
        self,
        *,
        capability: str | None = None,
        status: str | None = None,
        conversation: str | None = None,
        online: bool | None = None,
    ) -> list[AgentPresence]:
        """Every known agent (online first, then recently offline), filtered."""
        found = [self._summary(a) for a in sorted(self._online)]
        found += list(reversed(self._offline.values()))
        return filtered(found, capability, status, conversation, online)

    def members_online(self, topic: str) -> list[str]:
        """Agents subscribed to conversation ``topic`` right now."""
        return sorted(a for a, topics in self._topics.items() if topic in topics)

    # -- what a shared engine writes behind -------------------------------------

    def online_agents(self) -> list[str]:
        return list(self._online)

    def online_summary(self, agent: str) -> tuple[AgentPresence, int] | None:
        """The agent's presence on this gateway and when its status was set (ms); None if offline here."""
        if agent not in self._online:
            return None
        latest = self._conns[next(reversed(self._online[agent]))]
        return self._summary(agent), latest.status_ms

    def offline(self) -> list[AgentPresence]:
        """The agents that went offline here, most recent first."""
        return list(reversed(self._offline.values()))

    # -- helpers ----------------------------------------------------------------

    def _summary(self, agent: str) -> AgentPresence:
        entries = [self._conns[c] for c in self._online[agent]]
        latest = entries[-1]
        return AgentPresence(
            agent=agent,
            online=True,
            status=latest.status,
            capabilities=sorted({c for e in entries for c in e.capabilities}),
            conversations=sorted(self._topics[agent]),
            connections=len(entries),
            since_ms=self._since[agent],
        )

    def _emit(self, event: PresenceEvent) -> None:
        for listener in self._listeners:
            listener(event)

    def _changed(self, agent: str) -> None:
        for watcher in self._watchers:
            watcher(agent)


def filtered(
    found: Iterable[AgentPresence],
    capability: str | None = None,
    status: str | None = None,
    conversation: str | None = None,
    online: bool | None = None,
) -> list[AgentPresence]:
    """The agents of ``found`` that pass every filter given."""
    return [
        p
        for p in found
        if (capability is None or capability in p.capabilities)
        and (status is None or p.status == status)
        and (conversation is None or conversation in p.conversations)
        and (online is None or p.online == online)
    ]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

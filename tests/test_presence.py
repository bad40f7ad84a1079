"""PresenceTable on its own: one agent holding many connections."""

from __future__ import annotations

from tidings.presence import PresenceEvent, PresenceTable


def test_an_agent_with_many_connections_joins_and_leaves_each_conversation_once() -> None:
    table = PresenceTable()
    events: list[PresenceEvent] = []
    table.listen(events.append)
    conns = [object() for _ in range(2_000)]
    for i, conn in enumerate(conns):
        table.connected(conn, "pool", "idle", [f"cap{i % 3}"])
        table.joined(conn, "conv/c1/chat")
        if i % 2:
            table.joined(conn, "conv/c2/chat")
    assert [(e.event, e.topic) for e in events] == [("join", "conv/c1/chat"), ("join", "conv/c2/chat")]
    assert table.members_online("conv/c2/chat") == ["pool"]
    presence = table.get("pool")
    assert presence is not None
    assert (presence.connections, presence.conversations) == (2_000, ["conv/c1/chat", "conv/c2/chat"])
    assert presence.capabilities == ["cap0", "cap1", "cap2"]

    for conn in conns[1::2]:  # every connection in conv/c2 goes: the agent leaves it, not conv/c1
        table.left(conn, "conv/c2/chat")
    assert [(e.event, e.topic) for e in events[2:]] == [("leave", "conv/c2/chat")]
    assert table.members_online("conv/c2/chat") == []
    for conn in conns[:-1]:
        table.disconnected(conn)
    assert table.is_online("pool") and len(events) == 3
    table.disconnected(conns[-1])
    assert [(e.event, e.topic) for e in events[3:]] == [("leave", "conv/c1/chat")]
    gone = table.get("pool")
    assert gone is not None and not gone.online and gone.connections == 0 and gone.conversations == []
    assert table.members_online("conv/c1/chat") == []

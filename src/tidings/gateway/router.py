"""The subscription index: which subscriptions match a topic.

A trie over topic segments. Each node keeps the subscriptions whose pattern
ends there, the ones whose pattern ends there with ``>`` (the rest), and the
children for a literal segment or ``*``. Matching a topic walks at most two
branches per segment, so its cost grows with the number of matching patterns,
not with the number of subscriptions. Results are cached per topic until the
next ``add`` or ``remove`` (a conversation's topics are published to again and
again; subscriptions change far less often).
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Routable(Protocol):
    @property
    def pattern(self) -> str: ...


S = TypeVar("S", bound=Routable)


class _Node(Generic[S]):
    __slots__ = ("children", "exact", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node[S]] = {}
        self.exact: dict[S, None] = {}  # insertion-ordered set
        self.rest: dict[S, None] = {}


class Router(Generic[S]):
    """Add, remove and match subscriptions by pattern."""

    CACHE_LIMIT = 65536

    def __init__(self) -> None:
        self._root: _Node[S] = _Node()
        #: subscriptions held (an attribute, not just ``len``: asked once per message)
        self.count = 0
        self._cache: dict[str, list[S]] = {}

    def __len__(self) -> int:
        return self.count

    def add(self, sub: S) -> None:
        self._cache.clear()
        node = self._root
        segments = sub.pattern.split("/")
        for seg in segments:
            if seg == ">":
                node.rest[sub] = None
                self.count += 1
                return
            node = node.children.setdefault(seg, _Node())
        node.exact[sub] = None
        self.count += 1

    def remove(self, sub: S) -> None:
        """Remove ``sub``; pruning empty nodes so the trie does not grow forever."""
        self._cache.clear()
        path: list[tuple[_Node[S], str]] = []
        node = self._root
        for seg in sub.pattern.split("/"):
            if seg == ">":
                if node.rest.pop(sub, False) is not False:
                    self.count -= 1
                break
            child = node.children.get(seg)
            if child is None:
                return
            path.append((node, seg))
            node = child
        else:
            if node.exact.pop(sub, False) is not False:
                self.count -= 1
        for parent, seg in reversed(path):
            child = parent.children[seg]
            if child.children or child.exact or child.rest:
                break
            del parent.children[seg]

    def match(self, topic: str) -> list[S]:
        """Every subscription whose pattern matches ``topic`` (do not modify the list)."""
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        out = self._match(topic)
        if len(self._cache) >= self.CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = out
        return out

    def _match(self, topic: str) -> list[S]:
        out: list[S] = []
        segments = topic.split("/")
        last = len(segments)
        frontier = [self._root]
        for i, seg in enumerate(segments):
            nxt: list[_Node[S]] = []
            for node in frontier:
                if node.rest:
                    out.extend(node.rest)
                child = node.children.get(seg)
                if child is not None:
                    nxt.append(child)
                star = node.children.get("*")
                if star is not None:
                    nxt.append(star)
            if not nxt:
                return out
            frontier = nxt
            if i + 1 == last:
                for node in frontier:
                    out.extend(node.exact)
        return out

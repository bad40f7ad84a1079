"""nats-py has one home: the ``engine/nats`` package (CRAFT.md, habit 1)."""

from __future__ import annotations

from pathlib import Path

from tests.protocol.test_layering import SRC, imported_modules


def test_only_the_nats_engine_imports_nats() -> None:
    importers = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if any(name == "nats" or name.startswith("nats.") for name in imported_modules(path))
    )
    home = Path("engine") / "nats"
    assert importers, "the NATS engine imports nats"
    assert all(Path(p).parent == home for p in importers), importers

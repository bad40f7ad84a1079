"""Layers point one way: protocol/ and log/ do no networking and know no framework."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tidings"
FORBIDDEN = (
    "picows",
    "websockets",
    "aiohttp",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "nats",
    "socket",
    "ssl",
    "http",
    "asyncio.streams",
    "selectors",
    "tidings.gateway",
    "tidings.engine",
    "tidings.sdk",
    "tidings.control",
)


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", ["protocol", "log"])
def test_core_packages_import_no_networking(package: str) -> None:
    files = sorted((SRC / package).rglob("*.py"))
    assert files or package == "log"
    for path in files:
        for name in imported_modules(path):
            bad = [f for f in FORBIDDEN if name == f or name.startswith(f + ".")]
            assert not bad, f"{path.relative_to(SRC)} imports {name}"


def test_protocol_uses_no_asyncio_at_all() -> None:
    for path in (SRC / "protocol").rglob("*.py"):
        assert not any(n.split(".")[0] == "asyncio" for n in imported_modules(path)), path


def test_sdk_needs_nothing_of_the_server() -> None:
    """The SDK works without the server: it imports the protocol, never the server's parts."""
    server_parts = ("tidings.gateway", "tidings.engine", "tidings.log", "tidings.control", "tidings.config",
                    "tidings.auth", "tidings.cli", "tidings.demo", "fastapi", "uvicorn", "nats")  # fmt: skip
    for path in (SRC / "sdk").rglob("*.py"):
        for name in imported_modules(path):
            assert not name.startswith(server_parts), f"{path.relative_to(SRC)} imports {name}"


def test_control_plane_never_touches_the_gateway() -> None:
    """DESIGN: the control plane sees the engine interface, auth and metrics, never a gateway
    (so it cannot sit in the path of a data message)."""
    for path in sorted((SRC / "control").rglob("*.py")):
        for name in imported_modules(path):
            assert not (name == "tidings.gateway" or name.startswith("tidings.gateway.")), (
                f"{path.relative_to(SRC)} imports {name}"
            )

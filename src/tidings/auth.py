"""Tokens and permissions.

A token is a JWT (HS256 by default) with these claims:

    sub    the agent id; the gateway stamps it as ``sender`` on every message
    pub    list of topic patterns the agent may publish to
    subs   list of topic patterns the agent may subscribe to
    exp    expiry (seconds since the epoch); required
    jti    token id (for revocation)
    iat    issued at
    admin  true for an operator's token: the control plane's admin API

Agent ids starting with ``_`` are reserved for the system (``ctl/_tidings/...``).

(``sub`` is the JWT subject, so subscribe grants live in ``subs``.)

A request is allowed when one grant pattern *covers* it: every topic the
request could reach also matches the grant (``protocol.topics.covers``).
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import msgspec

from tidings.errors import Forbidden, Unauthorized
from tidings.protocol.topics import covers, validate_pattern

ALGORITHM = "HS256"
SECRET_FILE = "secret.key"
ANONYMOUS = "anonymous"


class Grants(msgspec.Struct, frozen=True):
    """What one connection may do: who it is and which topics it may touch."""

    agent: str
    pub: tuple[str, ...]
    subs: tuple[str, ...]
    expires_at: float | None = None
    jti: str = ""
    admin: bool = False

    def check_publish(self, topic: str) -> None:
        """Raise ``Forbidden`` unless a ``pub`` grant covers ``topic``."""
        if not any(covers(g, topic) for g in self.pub):
            raise Forbidden(f"agent {self.agent!r} may not publish to {topic!r}")

    def check_subscribe(self, pattern: str) -> None:
        """Raise ``Forbidden`` unless a ``subs`` grant covers ``pattern``."""
        if not any(covers(g, pattern) for g in self.subs):
            raise Forbidden(f"agent {self.agent!r} may not subscribe to {pattern!r}")


ANONYMOUS_GRANTS = Grants(agent=ANONYMOUS, pub=(">",), subs=(">",))


class Authority:
    """Mints and verifies tokens with one shared secret."""

    def __init__(self, secret: bytes, algorithm: str = ALGORITHM) -> None:
        if len(secret) < 32:
            raise ValueError("token secret must be at least 32 bytes")
        self._secret = secret
        self._algorithm = algorithm

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> Authority:
        """Load the secret from ``data_dir``, creating it (mode 0600) on first start."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / SECRET_FILE
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(secrets.token_hex(32).encode())
            tmp.chmod(0o600)
            tmp.replace(path)
        return cls(path.read_bytes().strip())

    def mint(
        self,
        agent: str,
        pub: list[str] | tuple[str, ...] = (),
        subs: list[str] | tuple[str, ...] = (),
        ttl: float = 3600.0,
        *,
        admin: bool = False,
    ) -> str:
        """Return a signed token for ``agent`` valid for ``ttl`` seconds.

        Raises ``InvalidTopic`` for a malformed pattern, ``ValueError`` for a bad agent id.
        """
        validate_agent_id(agent)
        for pattern in (*pub, *subs):
            validate_pattern(pattern)
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": agent,
            "pub": list(pub),
            "subs": list(subs),
            "iat": now,
            "exp": now + int(ttl),
            "jti": uuid.uuid4().hex,
        }
        if admin:
            claims["admin"] = True
        return jwt.encode(claims, self._secret, algorithm=self._algorithm)

    def verify(self, token: str | None) -> Grants:
        """Return the grants of a valid token; raise ``Unauthorized`` otherwise."""
        if not token:
            raise Unauthorized("a token is required (hello.token)")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token has expired") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("token signature is invalid") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"token is malformed: {exc}") from None
        if not isinstance(claims["sub"], str) or not _valid_agent_id(claims["sub"]):
            raise Unauthorized("token subject is not a valid agent id")
        pub, subs = claims.get("pub", []), claims.get("subs", [])
        if not (isinstance(pub, list) and isinstance(subs, list)):
            raise Unauthorized("token claims 'pub' and 'subs' must be lists")
        if not all(isinstance(p, str) for p in (*pub, *subs)):
            raise Unauthorized("token grant patterns must be strings")
        return Grants(
            agent=str(claims["sub"]),
            pub=tuple(pub),
            subs=tuple(subs),
            expires_at=float(claims["exp"]),
            jti=str(claims.get("jti", "")),
            admin=claims.get("admin") is True,
        )


#: an agent id: it names the agent's ``ctl/<agent>/`` topics, so it is one topic segment,
#: and it may not start with "_" (reserved for the system)
AGENT_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:@=+-]{0,127}$"
_AGENT_ID = re.compile(AGENT_ID)


def _valid_agent_id(agent: str) -> bool:
    return _AGENT_ID.fullmatch(agent) is not None


def validate_agent_id(agent: str) -> str:
    """Raise ``ValueError`` unless ``agent`` can name an agent (and its ``ctl/<agent>/`` topics)."""
    if not _valid_agent_id(agent):
        raise ValueError(
            f"agent id {agent!r} is invalid: 1-128 of A-Z a-z 0-9 _ . : @ = + -, "
            "starting with a letter or digit"
        )
    return agent

"""The control plane's request and response bodies (pydantic: they make the OpenAPI spec).

Requests are strict (no coercion of "1" into 1) and refuse unknown fields, so
a typo is a 422 rather than a silently ignored option.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from tidings.auth import AGENT_ID

_S = r"[A-Za-z0-9_.:@=+-]"
SEGMENT = rf"^{_S}{{1,120}}$"
COMMAND_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
TOPIC = rf"^conv/{_S}{{1,120}}/{_S}{{1,120}}$"
_NS = r"(?:conv|ctl|dlq|sig|\*)"
_W = rf"(?:{_S}{{1,128}}|\*)"
#: a grant pattern (protocol/topics.py validate_pattern): '>' last, 3+ segments without it
PATTERN = rf"^(?:>|{_NS}(?:/{_W})*/>|{_NS}(?:/{_W}){{2,}})$"


def _integral(value: Any) -> Any:
    """JSON has one number type: 5.0 is the integer 5 (as JSON Schema says); 5.5 stays refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# (the bounds first, then the validator: that way round they reach the JSON schema)
Count = Annotated[int, Field(ge=0, le=2**53), BeforeValidator(_integral)]
Millis = Annotated[int, Field(ge=1, le=7 * 86400 * 1000), BeforeValidator(_integral)]
Deliveries = Annotated[int, Field(ge=1, le=1000), BeforeValidator(_integral)]
Seconds = Annotated[float, Field(gt=0, le=10 * 365 * 86400)]
Epoch = Annotated[int, Field(ge=0, le=2**53), BeforeValidator(_integral)]
TtlSeconds = Annotated[int, Field(ge=1, le=365 * 86400), BeforeValidator(_integral)]
Pattern = Annotated[str, Field(pattern=PATTERN, max_length=256)]

BUILTIN_COMMANDS = ("join", "leave", "start", "stop", "cancel", "pause", "resume")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Problem(BaseModel):
    """Every error: a stable ``code`` (as on the wire) and a sentence for humans."""

    code: str
    message: str


class PolicyIn(Strict):
    """Overrides of the namespace's policy for one conversation (omit to keep the default)."""

    max_messages: Count | None = None
    max_bytes: Count | None = None
    max_age_s: Seconds | None = None
    dedup_window_s: Seconds | None = None
    ack_wait_ms: Millis | None = None
    max_deliver: Deliveries | None = None


class ConversationIn(Strict):
    topic: str = Field(pattern=TOPIC, description="conv/<group>/<name>")
    members: list[Annotated[str, Field(pattern=AGENT_ID)]] = Field(default=[], max_length=1000)
    policy: PolicyIn = PolicyIn()


class ConversationOut(BaseModel):
    id: str = Field(description="<group>/<name>: the path of this conversation under /v1/conversations")
    topic: str
    state: Literal["open", "closed", "deleted"]
    members: list[str]
    policy: PolicyIn
    created_ms: int
    updated_ms: int
    #: figures read from the engine and presence
    head: int = Field(description="the highest offset ever stored in the topic (0: none)")
    messages: int = Field(description="messages retained")
    members_online: list[str]
    last_activity_ms: int | None = Field(description="time of the newest retained message")


class MessageOut(BaseModel):
    topic: str
    id: str
    sender: str
    ts: int
    offset: int
    body: Any = None
    parent: str | None = None
    lamport: int = 0
    headers: dict[str, str] = {}


class MessagePage(BaseModel):
    messages: list[MessageOut]
    next: int = Field(description="pass as ?from= for the next page")
    head: int
    gap: list[int] | None = Field(
        default=None, description="[from, to]: offsets removed by retention before this page"
    )


class AgentOut(BaseModel):
    agent: str
    online: bool
    status: str
    capabilities: list[str]
    conversations: list[str]
    connections: int
    since_ms: int


class CommandIn(Strict):
    command: str = Field(
        pattern=COMMAND_NAME,
        description="join, leave, start, stop, cancel, pause, resume, or a name of your own",
    )
    args: dict[str, Any] = Field(default={}, description="extra fields of the command's body")
    key: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None,
        description="what the command is about, for fencing (default: args.conversation, "
        "args.request, or 'agent')",
    )
    epoch: Epoch | None = Field(
        default=None, description="fencing epoch (default: the next one for this agent)"
    )


class CommandOut(BaseModel):
    agent: str
    id: str
    command: str
    key: str
    epoch: int
    offset: int
    online: bool = Field(description="whether the agent was connected when the command was stored")
    acked: bool = Field(description="whether the agent's command consumer has acknowledged it")


class TokenIn(Strict):
    agent: str = Field(pattern=AGENT_ID)
    pub: list[Pattern] = Field(default=[], max_length=100)
    subs: list[Pattern] = Field(default=[], max_length=100)
    ttl_s: TtlSeconds = 3600
    admin: bool = False


class TokenOut(BaseModel):
    token: str
    jti: str
    agent: str
    expires_ms: int


class Revoked(BaseModel):
    jti: str
    revoked: bool = True


class LatencyOut(BaseModel):
    p50: float
    p99: float
    count: int


class StorageOut(BaseModel):
    fsync_p50_ms: float
    fsync_p99_ms: float
    commit_batch_mean: float
    queue_depth: int


class StatsOut(BaseModel):
    """Live figures for the dashboard; rates come from differencing ``totals`` over time."""

    time_ms: int
    connections: int
    subscriptions: int
    agents_online: int
    conversations: int
    totals: dict[str, int]
    rejected: dict[str, int] = Field(description="requests refused, by error code")
    latency_ms: dict[str, LatencyOut] = Field(description="publish_deliver, deliver_handled, handled_ack")
    storage: StorageOut | None


class GraphNode(BaseModel):
    id: str
    offset: int
    sender: str
    ts: int
    lamport: int
    parent: str | None
    redeliveries: int = Field(description="deliveries after the first that this gateway made")
    dead_letter: bool = Field(description="moved to dlq/ after max_deliver")
    preview: str


class GraphEdge(BaseModel):
    source: str = Field(description="the parent's id")
    target: str = Field(description="the child's id")


class GraphOut(BaseModel):
    """A conversation's causal graph: messages as nodes, ``parent`` links as edges."""

    topic: str
    head: int
    nodes: list[GraphNode]
    edges: list[GraphEdge]

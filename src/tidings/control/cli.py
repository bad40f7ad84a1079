"""Operator commands that wrap the control plane's HTTP API.

    tidings conversations create conv/team/plan --member planner --member worker
    tidings conversations list | get | close | delete | history | presence
    tidings agents list [--capability C] [--status S] | get AGENT
    tidings command AGENT NAME [--arg key=value ...] [--wait]
    tidings tokens create --agent A [--pub P] [--sub S] | revoke JTI

Each prints the API's JSON answer. The admin token comes from ``--admin-token``
or ``TIDINGS_ADMIN_TOKEN``; failing both, one is minted for five minutes from
the data directory's secret (which works on the server's own machine).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from tidings.auth import Authority
from tidings.config import load_settings

URLOpt = Annotated[
    str, typer.Option("--control-url", help="Control plane URL.", envvar="TIDINGS_CONTROL_URL")
]
AdminOpt = Annotated[
    str | None, typer.Option("--admin-token", help="Admin token.", envvar="TIDINGS_ADMIN_TOKEN")
]
DataDirOpt = Annotated[str | None, typer.Option(help="Data directory whose secret may mint the admin token.")]
DEFAULT_URL = "http://127.0.0.1:7701"

conversations = typer.Typer(help="Create, inspect, close and delete conversations.", no_args_is_help=True)
agents = typer.Typer(help="Agents and their presence.", no_args_is_help=True)
tokens = typer.Typer(help="Mint and revoke agent tokens.", no_args_is_help=True)


def add_commands(app: typer.Typer) -> None:
    app.add_typer(conversations, name="conversations")
    app.add_typer(agents, name="agents")
    app.add_typer(tokens, name="tokens")
    app.command("command")(command)


class _Api:
    def __init__(self, url: str, token: str | None, data_dir: str | None) -> None:
        if not token:
            settings = load_settings(None, data_dir=data_dir)
            secret = Path(settings.data_dir) / "secret.key"
            if not secret.exists():
                _fail("no admin token: pass --admin-token or set TIDINGS_ADMIN_TOKEN")
            token = Authority.from_data_dir(settings.data_path).mint("operator", ttl=300, admin=True)
        self.client = httpx.Client(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=10.0
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach the control plane at {self.client.base_url}: {exc}")
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            _fail(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            _fail(f"[{body.get('code', response.status_code)}] {body.get('message', body)}")
        return body


def _fail(message: str) -> Any:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _print(value: Any) -> None:
    if value is not None:
        print(json.dumps(value, indent=2))


def _path(conversation: str) -> str:
    """``conv/group/name`` or ``group/name`` -> the API path of that conversation."""
    rest = conversation.removeprefix("conv/")
    if rest.count("/") != 1:
        _fail(f"a conversation is conv/<group>/<name> or <group>/<name>, not {conversation!r}")
    return f"/v1/conversations/{rest}"


@conversations.command("create")
def conversation_create(
    topic: Annotated[str, typer.Argument(help="conv/<group>/<name>")],
    member: Annotated[
        list[str] | None, typer.Option(help="A member agent (repeat); gets a join command.")
    ] = None,
    max_messages: Annotated[int | None, typer.Option(help="Retention: messages kept.")] = None,
    max_age_s: Annotated[float | None, typer.Option(help="Retention: seconds kept.")] = None,
    dedup_window_s: Annotated[float | None, typer.Option(help="Seconds an id is remembered.")] = None,
    ack_wait_ms: Annotated[int | None, typer.Option(help="Redelivery after this many ms unacked.")] = None,
    max_deliver: Annotated[int | None, typer.Option(help="Deliveries before dlq/.")] = None,
    url: URLOpt = DEFAULT_URL,
    admin_token: AdminOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a conversation."""
    policy = {
        k: v
        for k, v in dict(
            max_messages=max_messages,
            max_age_s=max_age_s,
            dedup_window_s=dedup_window_s,
            ack_wait_ms=ack_wait_ms,
            max_deliver=max_deliver,
        ).items()
        if v is not None
    }
    body = {"topic": topic, "members": member or [], "policy": policy}
    _print(_Api(url, admin_token, data_dir).call("POST", "/v1/conversations", json=body))


@conversations.command("list")
def conversation_list(
    state: Annotated[str | None, typer.Option(help="open or closed.")] = None,
    group: Annotated[str | None, typer.Option(help="Only this group.")] = None,
    member: Annotated[str | None, typer.Option(help="Only with this member.")] = None,
    url: URLOpt = DEFAULT_URL,
    admin_token: AdminOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List conversations."""
    params = {k: v for k, v in dict(state=state, group=group, member=member).items() if v is not None}
    _print(_Api(url, admin_token, data_dir).call("GET", "/v1/conversations", params=params))


@conversations.command("get")
def conversation_get(
    conversation: str, url: URLOpt = DEFAULT_URL, admin_token: AdminOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Show one conversation: head offset, size, members online, last activity."""
    _print(_Api(url, admin_token, data_dir).call("GET", _path(conversation)))


@conversations.command("close")
def conversation_close(
    conversation: str, url: URLOpt = DEFAULT_URL, admin_token: AdminOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Close a conversation: no more publishes; history is kept."""
    _print(_Api(url, admin_token, data_dir).call("POST", _path(conversation) + "/close"))


@conversations.command("delete")
def conversation_delete(
    conversation: str, url: URLOpt = DEFAULT_URL, admin_token: AdminOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Delete a conversation and its messages."""
    _Api(url, admin_token, data_dir).call("DELETE", _path(conversation))
    print(json.dumps({"deleted": conversation}))


@conversations.command("history")
def conversation_history(
    conversation: str,
    from_: Annotated[int, typer.Option("--from", help="Messages after this offset.")] = 0,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    url: URLOpt = DEFAULT_URL,
    admin_token: AdminOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print a page of a conversation's messages (read from the engine)."""
    params = {"from": from_, "limit": limit}
    _print(_Api(url, admin_token, data_dir).call("GET", _path(conversation) + "/messages", params=params))


@conversations.command("presence")
def conversation_presence(
    conversation: str, url: URLOpt = DEFAULT_URL, admin_token: AdminOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Who is in a conversation now."""
    _print(_Api(url, admin_token, data_dir).call("GET", _path(conversation) + "/presence"))


@agents.command("list")
def agent_list(
    capability: Annotated[str | None, typer.Option(help="Only agents with this capability.")] = None,
    status: Annotated[str | None, typer.Option(help="Only agents with this status.")] = None,
    conversation: Annotated[str | None, typer.Option(help="Only agents in this conversation.")] = None,
    url: URLOpt = DEFAULT_URL,
    admin_token: AdminOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List agents (online first) with status, capabilities and conversations."""
    params = {
        k: v for k, v in dict(capability=capability, status=status, conversation=conversation).items() if v
    }
    _print(_Api(url, admin_token, data_dir).call("GET", "/v1/agents", params=params))


@agents.command("get")
def agent_get(
    agent: str, url: URLOpt = DEFAULT_URL, admin_token: AdminOpt = None, data_dir: DataDirOpt = None
) -> None:
    """One agent's presence."""
    _print(_Api(url, admin_token, data_dir).call("GET", f"/v1/agents/{agent}"))


def command(
    agent: str,
    name: str,
    arg: Annotated[list[str] | None, typer.Option(help="key=value (repeat); JSON values are parsed.")] = None,
    key: Annotated[str | None, typer.Option(help="Fencing key (default: the target).")] = None,
    epoch: Annotated[int | None, typer.Option(help="Fencing epoch (default: the next).")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the agent's ack (0: don't).")] = 0.0,
    url: URLOpt = DEFAULT_URL,
    admin_token: AdminOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Send a command to an agent (join, leave, start, stop, cancel, pause, resume, or your own)."""
    args: dict[str, Any] = {}
    for item in arg or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            _fail(f"--arg takes key=value, not {item!r}")
        try:
            args[k] = json.loads(v)
        except json.JSONDecodeError:
            args[k] = v
    body: dict[str, Any] = {"command": name, "args": args}
    if key is not None:
        body["key"] = key
    if epoch is not None:
        body["epoch"] = epoch
    api = _Api(url, admin_token, data_dir)
    sent = api.call("POST", f"/v1/agents/{agent}/commands", json=body)
    deadline = time.monotonic() + wait
    while wait and not sent["acked"] and time.monotonic() < deadline:
        time.sleep(0.2)
        sent = api.call("GET", f"/v1/agents/{agent}/commands/{sent['offset']}")
    _print(sent)


@tokens.command("create")
def token_create(
    agent: Annotated[str, typer.Option(help="The agent id.")],
    pub: Annotated[list[str] | None, typer.Option(help="Publish grant (repeat).")] = None,
    sub: Annotated[list[str] | None, typer.Option(help="Subscribe grant (repeat).")] = None,
    ttl_s: Annotated[int, typer.Option(help="Seconds until it expires.")] = 3600,
    url: URLOpt = DEFAULT_URL,
    admin_token: AdminOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Mint an agent token through the control plane."""
    body = {"agent": agent, "pub": pub or [], "subs": sub or [], "ttl_s": ttl_s}
    _print(_Api(url, admin_token, data_dir).call("POST", "/v1/tokens", json=body))


@tokens.command("revoke")
def token_revoke(
    jti: str, url: URLOpt = DEFAULT_URL, admin_token: AdminOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Revoke a token: its connections close within a second."""
    _print(_Api(url, admin_token, data_dir).call("DELETE", f"/v1/tokens/{jti}"))

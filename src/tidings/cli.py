"""The ``tidings`` command: serve, token, demo, pub, sub."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tidings.auth import Authority
from tidings.config import Settings, load_settings
from tidings.errors import TidingsError
from tidings.logs import configure as configure_logs

app = typer.Typer(
    help="tidings: realtime messaging for multi-agent AI systems.",
    no_args_is_help=True,
    add_completion=False,
)

DEV_TOKEN_TTL = 24 * 3600


def _run(coro: Any) -> Any:
    """Run ``coro`` on uvloop where it is available."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(coro)


#: Container allocations between two collections of the garbage collector's youngest
#: generation in a serving process (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000
#: Young collections between two collections of the middle generation (CPython's default is 10).
GC_MIDDLE_THRESHOLD = 2


def _settle_garbage_collector() -> None:
    """Tune CPython's cyclic garbage collector for a long-running server, once it is up.

    Every durable publish allocates about ten short-lived containers (a future, the
    message, its record, callbacks), so with the default threshold of 700 the
    collector ran several hundred times a second, and each full collection walked
    the ~80,000 objects that importing the control plane leaves behind: at 256
    publishers that was up to 20% of the server's time, with pauses of over 100 ms
    (docs/performance.md). So: collect once, freeze the survivors of start-up into
    the permanent generation (never walked again), and collect the young
    generation every ``GC_YOUNG_THRESHOLD`` allocations.

    The middle generation is collected every ``GC_MIDDLE_THRESHOLD`` young
    collections instead of every 10: a collection of it walks every survivor of the
    young collections since the last one, and with 10,000 durable consumers (W3 at
    10,000 agents) those were the consumers' own state, 150-175 ms a pause, which was
    that workload's whole p99 (docs/performance.md, "W3 at 10,000 agents").
    """
    gc.collect()
    gc.freeze()
    young, _, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), GC_MIDDLE_THRESHOLD, old)


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **overrides)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file.")]
DataDirOpt = Annotated[str | None, typer.Option(help="Where tidings keeps its data [./tidings-data].")]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="WebSocket port [7700]; 0 picks a free one.")] = None,
    data_dir: DataDirOpt = None,
    allow_anonymous: Annotated[
        bool | None, typer.Option("--allow-anonymous", help="Accept hellos without a token.")
    ] = None,
    control_port: Annotated[
        int | None, typer.Option(help="Control plane HTTP port [7701]; 0 picks a free one.")
    ] = None,
    log_format: Annotated[str | None, typer.Option(help="console or json [console].")] = None,
    no_control: Annotated[bool, typer.Option("--no-control", help="Run the gateway alone.")] = False,
    engine: Annotated[str | None, typer.Option(help="embedded or nats [embedded].")] = None,
    nats_url: Annotated[str | None, typer.Option(help="NATS servers, comma-separated (engine nats).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the gateway and the control plane until SIGTERM or Ctrl-C, then drain and exit."""
    settings = _settings(
        config,
        host=host,
        port=port,
        data_dir=data_dir,
        allow_anonymous=allow_anonymous,
        control_port=control_port,
        log_format=log_format,
        engine=engine,
        nats_url=nats_url,
    )
    configure_logs(settings.log_level, "json" if settings.log_format == "json" else "console")
    _run(_serve(settings, control=not no_control))


async def _serve(settings: Settings, control: bool = True) -> None:
    from tidings.control import ControlPlane
    from tidings.gateway import Gateway

    authority = Authority.from_data_dir(settings.data_path)
    try:
        gateway = Gateway(
            settings, authority, engine=_fault_injection_engine(settings), on_fatal=_storage_failed
        )
        await gateway.start()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except TidingsError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    plane = None
    if control:
        plane = ControlPlane(settings, authority, gateway.engine, gateway.catalog, gateway.stats)
    if plane is not None:
        try:
            await plane.start()
        except OSError as exc:
            await gateway.stop()
            print(
                f"error: control plane cannot listen on port {settings.control_port}: {exc}", file=sys.stderr
            )
            raise SystemExit(1) from None
    stop = _stop_on_signal()
    _settle_garbage_collector()
    dev_token = authority.mint("dev", pub=[">"], subs=[">"], ttl=DEV_TOKEN_TTL)
    print(f"tidings listening on {gateway.url}", flush=True)
    print(f"dev token (agent 'dev', all topics, 24 h):\n  export TIDINGS_TOKEN={dev_token}", flush=True)
    if plane is not None:
        admin = authority.mint("operator", ttl=DEV_TOKEN_TTL, admin=True)
        print(f"control plane on {plane.url} (API docs: {plane.url}/docs)", flush=True)
        print(f"admin token (24 h):\n  export TIDINGS_ADMIN_TOKEN={admin}", flush=True)
    await stop.wait()
    print("draining...", flush=True)
    if plane is not None:
        await plane.stop()
    await gateway.stop()
    print("stopped", flush=True)


def _stop_on_signal() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT. Install it before printing the lines a
    supervisor waits for: whoever reads them may send SIGTERM at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


@app.command()
def control(
    host: Annotated[str | None, typer.Option(help="Interface to listen on [127.0.0.1].")] = None,
    control_port: Annotated[int | None, typer.Option(help="HTTP port [7701].")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run the control plane alone over the data directory (while no gateway holds it)."""
    settings = _settings(config, host=host, data_dir=data_dir, control_port=control_port)
    configure_logs(settings.log_level, "json" if settings.log_format == "json" else "console")
    _run(_control(settings))


async def _control(settings: Settings) -> None:
    from tidings.catalog import Catalog
    from tidings.control import ControlPlane
    from tidings.engine.embedded import EmbeddedEngine

    authority = Authority.from_data_dir(settings.data_path)
    catalog = Catalog(settings)
    engine = EmbeddedEngine(
        settings.data_path, settings.shards, retention=catalog.retention, on_fatal=_storage_failed
    )
    try:
        await engine.start()
        await catalog.open(engine)
    except (TidingsError, OSError) as exc:
        print(f"error: cannot open {settings.data_path}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    plane = ControlPlane(settings, authority, engine, catalog)
    try:
        await plane.start()
    except OSError as exc:
        await engine.stop()
        print(f"error: cannot listen on port {settings.control_port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    stop = _stop_on_signal()
    print(f"control plane on {plane.url} (API docs: {plane.url}/docs)", flush=True)
    await stop.wait()
    await plane.stop()
    await engine.stop()


#: Test-only, deliberately not a setting: ``module:factory`` of a ``tidings.log.FileSystem``
#: for the durable log (the reliability suite's fault layer: simulated power cuts, failing
#: fsyncs). Read here and nowhere else; see docs/reliability.md.
FAULT_INJECTION_ENV = "TIDINGS_TEST_FILESYSTEM"


def _fault_injection_engine(settings: Settings) -> Any:
    """The embedded engine over the file system ``TIDINGS_TEST_FILESYSTEM`` names, or None."""
    spec = os.environ.get(FAULT_INJECTION_ENV)
    if not spec:
        return None
    import importlib

    from tidings.engine.embedded import EmbeddedEngine

    module, _, factory = spec.partition(":")
    files = getattr(importlib.import_module(module), factory)()
    print(f"warning: the durable log runs on the test file system {spec}", file=sys.stderr, flush=True)
    return EmbeddedEngine(
        settings.data_path, settings.shards, settings.retention, on_fatal=_storage_failed, files=files
    )


def _storage_failed(exc: BaseException) -> None:
    # Guarantee 1: never acknowledge after a failed sync. The page cache may no
    # longer match the disk, so the only safe move is to stop at once; a restart
    # recovers from what the disk really holds.
    print(f"fatal: durable storage failed ({exc!r}); stopping with status 70", file=sys.stderr, flush=True)
    os._exit(70)


@app.command()
def token(
    agent: Annotated[str, typer.Option(help="The agent id (the token's subject).")],
    pub: Annotated[list[str] | None, typer.Option(help="Topic pattern it may publish to (repeat).")] = None,
    sub: Annotated[list[str] | None, typer.Option(help="Topic pattern it may subscribe to (repeat).")] = None,
    ttl: Annotated[int, typer.Option(help="Seconds until it expires.")] = 3600,
    admin: Annotated[bool, typer.Option("--admin", help="An operator token for the control plane.")] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Mint a token signed with the server's secret (created on first use)."""
    settings = _settings(config, data_dir=data_dir)
    authority = Authority.from_data_dir(settings.data_path)
    try:
        print(authority.mint(agent, pub=pub or [], subs=sub or [], ttl=ttl, admin=admin))
    except (ValueError, TidingsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


URLOpt = Annotated[str, typer.Option(help="Gateway URL.", envvar="TIDINGS_URL")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Agent token.", envvar="TIDINGS_TOKEN")]
CountOpt = Annotated[int, typer.Option(help="Stop after this many messages (0: never).")]


@app.command()
def pub(
    topic: str,
    body: Annotated[str, typer.Argument(help="JSON body (a bare word is sent as a string).")],
    url: URLOpt = "ws://127.0.0.1:7700/",
    token_: TokenOpt = None,
    parent: Annotated[str | None, typer.Option(help="Id of the message this one answers.")] = None,
) -> None:
    """Publish one message and print its puback."""
    try:
        value: Any = json.loads(body)
    except json.JSONDecodeError:
        value = body

    async def run() -> None:
        from tidings.sdk import connect

        async with connect(url, token_, name="tidings-cli") as agent:
            ack = await agent.publish(topic, value, parent=parent)
            print(json.dumps({"id": ack.id, "offset": ack.offset, "duplicate": ack.duplicate}))

    _guard(run)


async def _print_messages(
    url: str, token: str | None, pattern: str, start: Any = None, count: int = 0, replay: bool = False
) -> None:
    """Print what a subscription yields as JSON lines; stop after ``count`` (0: never),
    or, for a replay, at the topic's head when the replay began."""
    import msgspec

    from tidings.sdk import connect

    async with connect(url, token, name="tidings-cli") as agent:
        sub = await agent.subscribe(pattern, start=start)
        if replay and (not sub.head or sub.head <= (start or 0)):
            return
        seen = 0
        async for msg in sub:
            sys.stdout.write(msgspec.json.encode(msg.raw).decode() + "\n")
            sys.stdout.flush()
            seen += 1
            if (count and seen >= count) or (replay and sub.head and (msg.offset or 0) >= sub.head):
                return


@app.command()
def sub(
    pattern: str, url: URLOpt = "ws://127.0.0.1:7700/", token_: TokenOpt = None, count: CountOpt = 0
) -> None:
    """Subscribe (live) and print each message as a JSON line."""
    _guard(lambda: _print_messages(url, token_, pattern, count=count))


@app.command()
def replay(
    topic: str,
    from_: Annotated[int, typer.Option("--from", help="Print messages after this offset.")] = 0,
    url: URLOpt = "ws://127.0.0.1:7700/",
    token_: TokenOpt = None,
) -> None:
    """Print a durable topic's history after an offset as JSON lines, then exit."""
    _guard(lambda: _print_messages(url, token_, topic, start=from_, replay=True))


@app.command()
def tail(
    pattern: str, url: URLOpt = "ws://127.0.0.1:7700/", token_: TokenOpt = None, count: CountOpt = 0
) -> None:
    """Follow a durable topic or pattern from now on, as JSON lines (with offsets)."""
    _guard(lambda: _print_messages(url, token_, pattern, start="latest", count=count))


def _guard(run: Any) -> None:
    try:
        _run(run())
    except TidingsError as exc:
        typer.echo(f"error [{exc.code}]: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def demo(
    agents: Annotated[int, typer.Option(help="Simulated agents.")] = 120,
    conversations: Annotated[int, typer.Option(help="Conversations they talk in.")] = 12,
    duration: Annotated[float, typer.Option(help="Seconds to run.")] = 20.0,
    rate: Annotated[float, typer.Option(help="Messages per second per agent.")] = 2.0,
    crash: Annotated[bool, typer.Option(help="Kill the server with SIGKILL halfway and restart it.")] = True,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the server and its dashboard up until Ctrl-C.")
    ] = False,
) -> None:
    """Run a server and a swarm of agents in durable conversations; crash it midway; summarise."""
    from tidings.demo import run_demo

    try:
        figures = _run(
            run_demo(
                agents=agents,
                conversations=conversations,
                duration=duration,
                rate=rate,
                crash=crash,
                keep=keep,
            )
        )
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    if figures.missing:
        raise typer.Exit(1)


@app.command()
def bench(
    workload: Annotated[
        str, typer.Argument(help="w1 fanout, w2 durable publish, w3 agent swarm, w4 capacity.")
    ],
    subscribers: Annotated[int, typer.Option(help="Subscribers of the topic (w1).")] = 10,
    publishers: Annotated[int, typer.Option(help="Concurrent publishers (w2).")] = 32,
    connections: Annotated[
        int | None,
        typer.Option(help="w2: connections the publishers share (default one each); w4: how many."),
    ] = None,
    agents: Annotated[int, typer.Option(help="Agents, one connection each (w3).")] = 1000,
    conversations: Annotated[int, typer.Option(help="Conversations the agents share equally (w3).")] = 100,
    rate: Annotated[
        list[float] | None,
        typer.Option(help="w3: publishes/s per agent; repeat for rising loads (stops once p99 >= 50 ms)."),
    ] = None,
    processes: Annotated[int, typer.Option(help="Load-generator processes (w2, w3).")] = 4,
    p99_limit_ms: Annotated[
        float, typer.Option(help="w3: stop raising the load after a step whose p99 reaches this.")
    ] = 50.0,
    duration: Annotated[float, typer.Option(help="Seconds to measure.")] = 5.0,
    body_bytes: Annotated[int | None, typer.Option(help="Message body size (w1 64, w2 and w3 200).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    url: Annotated[
        list[str] | None,
        typer.Option(
            help="w1, w3: gateways already running (repeat for several, e.g. those of 'tidings cluster "
            "up' with TIDINGS_ALLOW_ANONYMOUS=1) instead of a fresh local server."
        ),
    ] = None,
    server_pid: Annotated[
        list[int] | None,
        typer.Option(help="With --url: processes whose CPU time counts as the server's (repeat)."),
    ] = None,
    secret_file: Annotated[
        Path | None,
        typer.Option(
            help="w3 with --url: the gateways' token secret; each agent then has a token of its own "
            "and is not sent its own messages (without it the agents are anonymous)."
        ),
    ] = None,
) -> None:
    """Run one benchmark workload against a fresh local server and print its figures."""
    from tidings.bench import w1, w2, w3, w4

    if url and workload not in ("w1", "w3"):
        typer.echo("error: --url works with w1 and w3", err=True)
        raise typer.Exit(2)
    if workload == "w1":
        result = w1.run(
            subscribers=subscribers,
            body_bytes=body_bytes or 64,
            duration=duration,
            urls=url,
            server_pids=server_pid,
        )
    elif workload == "w2":
        result = w2.run(publishers, duration, body_bytes or 200, connections, processes=processes)
    elif workload == "w3":
        result = w3.run(
            agents,
            conversations,
            rate or [2.0],
            duration,
            body_bytes or 200,
            processes,
            urls=url,
            server_pids=server_pid,
            p99_limit_ms=p99_limit_ms,
            secret_file=secret_file,
        )
    elif workload == "w4":
        result = w4.run(connections=connections or 10_000)
    else:
        typer.echo(f"error: unknown workload {workload!r} (available: w1, w2, w3, w4)", err=True)
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}  {value}")


from tidings.cluster_cli import cluster_app  # noqa: E402 - after the commands it sits beside

app.add_typer(cluster_app, name="cluster")


def main() -> None:
    from tidings.control.cli import add_commands

    add_commands(app)
    app()

"""``tidings cluster up / down``: a 3-node JetStream cluster and gateways on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

cluster_app = typer.Typer(help="Try the NATS engine on one machine: 3 nats-server nodes + gateways.")

StateOpt = Annotated[Path, typer.Option(help="Where configs, stores, logs and pidfiles go.")]


@cluster_app.command("up")
def cluster_up(
    state_dir: StateOpt = Path("./tidings-cluster"),
    gateways: Annotated[int, typer.Option(min=1, max=16, help="Gateways to start.")] = 2,
    port: Annotated[int, typer.Option(help="Port of the first gateway; the others follow.")] = 7700,
) -> None:
    """Start the cluster and the gateways in the background, print how to connect."""
    from tidings.cluster import ClusterError, up

    try:
        info = up(state_dir.resolve(), gateways=gateways, first_port=port)
    except ClusterError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    nats = ",".join(str(u) for u in info["nats"])  # type: ignore[attr-defined]
    print(f"NATS JetStream cluster (3 nodes, R3, sync_interval: always): {nats}")
    for url in info["gateways"]:  # type: ignore[attr-defined]
        print(f"gateway: {url}")
    print(
        f"control plane: {info['control']} (admin token: tidings token --admin --agent operator "
        f"--data-dir {info['data_dir']})"
    )
    print(f"state, logs and pidfiles: {state_dir}")
    print("dev token (agent 'dev', all topics, 24 h):")
    print(f"  export TIDINGS_TOKEN={info['token']}")
    print(f"  tidings pub conv/team-7/plan '{{\"step\": 1}}' --url {info['gateways'][0]}")  # type: ignore[index]
    print(f"stop with: tidings cluster down --state-dir {state_dir}")


@cluster_app.command("down")
def cluster_down(state_dir: StateOpt = Path("./tidings-cluster")) -> None:
    """Stop every gateway and node that ``up`` started from this state directory."""
    from tidings.cluster import down

    stopped = down(state_dir.resolve())
    print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing was running from {state_dir}")

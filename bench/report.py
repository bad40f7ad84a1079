"""Turn a ``bench/results/<date>.json`` of ``bench/run.py`` into ``docs/benchmarks.md`` and its plots.

    .venv/bin/python bench/report.py bench/results/2026-01-01-1200.json

Each figure is the median of the runs, with the lowest and highest run beside it.
Plots go to ``docs/bench/`` (matplotlib, PNG).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
IMG = DOCS / "bench"  # set by main() when writing elsewhere
W1_SYSTEMS = ["tidings", "nats-server", "python-socketio"]
W2_SYSTEMS = ["tidings", "jetstream-lazy", "jetstream-always"]
W3_SYSTEMS = ["tidings", "python-socketio", "autogen-grpc"]
P99_LIMIT_MS = 50.0
SCALE_OUT = "## Scale-out: 2 gateways over a 3-node JetStream cluster"


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


class Results:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.by: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        self.commands: dict[tuple[str, str, str], str] = {}
        self.errors: list[dict[str, Any]] = []
        self.params: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in data["records"]:
            k = (r["workload"], _key(r["params"]), r["system"])
            self.commands[k] = r["command"]
            if r["params"] not in self.params[r["workload"]]:
                self.params[r["workload"]].append(r["params"])
            if "error" in r:
                self.errors.append(r)
            else:
                self.by[k].append(r["result"])

    def runs(self, workload: str, params: dict[str, Any], system: str) -> list[dict[str, Any]]:
        return self.by.get((workload, _key(params), system), [])

    def command(self, workload: str, params: dict[str, Any], system: str) -> str | None:
        return self.commands.get((workload, _key(params), system))


def _num(v: Any) -> float:
    return math.inf if v is None else float(v)


def med(values: list[Any]) -> float | None:
    vals = [_num(v) for v in values]
    if not vals:
        return None
    return statistics.median(vals)


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "never"
    return f"{v:,.{digits}f}"


def cell(values: list[Any], digits: int = 0) -> str:
    """``median (low - high)`` of the runs, or the one value."""
    if not values:
        return "-"
    m = med(values)
    if len(values) == 1:
        return f"**{fmt(m, digits)}**"
    lo, hi = min(_num(v) for v in values), max(_num(v) for v in values)
    return f"**{fmt(m, digits)}** ({fmt(lo, digits)} - {fmt(hi, digits)})"


def field(runs: list[dict[str, Any]], name: str) -> list[Any]:
    return [r.get(name) for r in runs if name in r]


# -- sections ------------------------------------------------------------------


def w1_section(res: Results, out: list[str], checks: list[str]) -> None:
    out.append("## W1 fanout (ephemeral)\n")
    out.append(
        "One topic, one publisher, N subscribers; deliveries/s at saturation (the publisher keeps "
        "at most 4,096 messages ahead of the slowest subscriber). Server CPU is µs per delivery.\n"
    )
    out.append(
        "| subscribers | body | "
        + " | ".join(f"{s} deliveries/s" for s in W1_SYSTEMS)
        + " | tidings / nats | tidings / socketio | server CPU µs/delivery (t / n / s) |"
    )
    out.append("|---" * (len(W1_SYSTEMS) + 5) + "|")
    bars: dict[str, list[float]] = defaultdict(list)
    labels = []
    for p in res.params["w1"]:
        rates = {s: field(res.runs("w1", p, s), "deliveries_per_s") for s in W1_SYSTEMS}
        m = {s: med(v) for s, v in rates.items()}
        cpu = [fmt(med(field(res.runs("w1", p, s), "server_cpu_us_per_msg")), 1) for s in W1_SYSTEMS]
        ratio_n = m["tidings"] / m["nats-server"] if m["tidings"] and m["nats-server"] else None
        ratio_s = m["tidings"] / m["python-socketio"] if m["tidings"] and m["python-socketio"] else None
        size = f"{p['body_bytes']} B" if p["body_bytes"] < 1024 else f"{p['body_bytes'] // 1024} KB"
        out.append(
            f"| {p['subscribers']} | {size} | "
            + " | ".join(cell(rates[s]) for s in W1_SYSTEMS)
            + f" | {fmt(ratio_n, 2)} | {fmt(ratio_s, 1)} | {' / '.join(cpu)} |"
        )
        labels.append(f"N={p['subscribers']}\n{size}")
        for s in W1_SYSTEMS:
            bars[s].append(m[s] or 0)
        if p["subscribers"] == 100 and ratio_n is not None:
            checks.append(
                f"W1 N=100 {size}: tidings / nats-server = {ratio_n:.2f} (target >= 0.5): "
                + ("**met**" if ratio_n >= 0.5 else "**not met**")
            )
        if ratio_s is not None:
            checks.append(
                f"W1 N={p['subscribers']} {size}: tidings / python-socketio = {ratio_s:.1f} "
                "(target >= 10): " + ("**met**" if ratio_s >= 10 else "**not met**")
            )
    out.append("")
    _bars(
        labels, bars, W1_SYSTEMS, "deliveries/s", "W1 fanout: deliveries/s at saturation", "w1-deliveries.png"
    )
    out.append("![W1 deliveries/s](bench/w1-deliveries.png)\n")
    out.append(
        "Latency: 2,000 publishes/s into a 10-member topic, publish to receive (every W1 run "
        "measures it once; the median over all of a system's runs):\n"
    )
    out.append("| system | p50 ms | p99 ms | p99.9 ms |")
    out.append("|---|---|---|---|")
    for s in W1_SYSTEMS:
        runs = [r for p in res.params["w1"] for r in res.runs("w1", p, s)]
        out.append(
            f"| {s} | " + " | ".join(cell(field(runs, k), 3) for k in ("p50_ms", "p99_ms", "p999_ms")) + " |"
        )
        if s == "tidings" and runs:
            p99 = med(field(runs, "p99_ms"))
            checks.append(
                f"W1 p99 at 2,000 publishes/s x 10 members = {fmt(p99, 3)} ms (target <= 1 ms): "
                + ("**met**" if p99 is not None and p99 <= 1.0 else "**not met**")
            )
    out.append("")


def w2_section(res: Results, out: list[str], checks: list[str]) -> None:
    out.append("## W2 durable publish\n")
    out.append(
        "N publishers, each its own connection (or spread over the connections given) with one "
        "publish in flight, 200-byte messages, "
        "acknowledged after the store has them (tidings: after fdatasync; `jetstream-lazy`: JetStream's "
        "default, fsync every 2 minutes, not durable on power loss; `jetstream-always`: "
        "`sync_interval: always`, fsync before the ack).\n"
    )
    out.append(
        "| publishers | "
        + " | ".join(f"{s} acked/s" for s in W2_SYSTEMS)
        + " | ack p50 / p99 ms (t / lazy / always) | tidings / always | server CPU µs/msg (t / l / a) |"
    )
    out.append("|---" * (len(W2_SYSTEMS) + 4) + "|")
    bars: dict[str, list[float]] = defaultdict(list)
    labels = []
    for p in res.params["w2"]:
        runs = {s: res.runs("w2", p, s) for s in W2_SYSTEMS}
        acked = {s: field(runs[s], "acked_per_s") for s in W2_SYSTEMS}
        m = {s: med(v) for s, v in acked.items()}
        lat = " / ".join(
            f"{fmt(med(field(runs[s], 'ack_p50_ms')), 2)} / {fmt(med(field(runs[s], 'ack_p99_ms')), 1)}"
            for s in W2_SYSTEMS
        )
        cpu = " / ".join(fmt(med(field(runs[s], "server_cpu_us_per_msg")), 0) for s in W2_SYSTEMS)
        ratio = m["tidings"] / m["jetstream-always"] if m["tidings"] and m["jetstream-always"] else None
        on = f" on {p['connections']} connections" if "connections" in p else ""
        shape = f"{p['publishers']}{on}"
        out.append(
            f"| {shape} | "
            + " | ".join(cell(acked[s]) for s in W2_SYSTEMS)
            + f" | {lat} | {fmt(ratio, 1)} | {cpu} |"
        )
        labels.append(f"{p['publishers']} / {p.get('connections', p['publishers'])}")
        for s in W2_SYSTEMS:
            bars[s].append(m[s] or 0)
        if p["publishers"] == 256:
            t = m["tidings"] or 0
            checks.append(
                f"W2 256 publishers{on}: tidings {fmt(t)} acked/s (target >= 50,000): "
                + ("**met**" if t >= 50_000 else "**not met**")
            )
            if ratio is not None:
                checks.append(
                    f"W2 256 publishers{on}: tidings / jetstream-always = {ratio:.1f} (target >= 10): "
                    + ("**met**" if ratio >= 10 else "**not met**")
                )
    out.append("")
    _bars(labels, bars, W2_SYSTEMS, "acknowledged messages/s", "W2 durable publish", "w2-acked.png")
    out.append("![W2 acked/s](bench/w2-acked.png)\n")


def w3_steps(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median of each step (by rate) over the runs that reached it."""
    by_rate: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        for step in r["steps"]:
            by_rate[step["rate_per_agent"]].append(step)
    return [
        {
            "rate_per_agent": rate,
            "offered": steps[0]["offered_deliveries_per_s"],
            "delivered": med(field(steps, "delivered_per_s")),
            "p50": med(field(steps, "p50_ms")),
            "p99": med(field(steps, "p99_ms")),
            "cpu": med(field(steps, "server_cpu_us_per_msg")),
            "n": len(steps),
        }
        for rate, steps in sorted(by_rate.items())
    ]


def w3_section(res: Results, out: list[str], checks: list[str]) -> None:
    out.append("## W3 agent swarm\n")
    out.append(
        "Agents in conversations of 10, one connection each; every agent publishes at a fixed rate "
        "into its conversation and receives every message of it. tidings: durable publishes "
        "(puback after fsync) and a durable consumer per agent that acks every message; "
        "python-socketio: a room per conversation, `emit` with an ack, an `ack` event back per "
        "message, nothing stored; AutoGen: `publish_message` to a `TypeSubscription` per "
        "conversation, nothing stored, no acks. Delivered/s counts receipts by the *other* nine "
        "members; no system sends a publisher its own message (tidings: each agent has a token of "
        "its own and subscribes with `echo: false`). Latency is from the intended publish time to "
        "the receiving handler; a message still missing after the drain counts as never arriving. "
        "The load rises step by step until p99 reaches 50 ms.\n"
    )
    for p in res.params["w3"]:
        out.append(f"### {p['agents']:,} agents in {p['conversations']:,} conversations\n")
        out.append("Highest load with p99 under 50 ms (median of the runs; the runs' values in brackets):\n")
        out.append(
            "| system | delivered/s | p50 ms | p99 ms | server CPU µs/delivery | runs under the limit |"
        )
        out.append("|---|---|---|---|---|---|")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s in W3_SYSTEMS:
            runs = res.runs("w3", p, s)
            if not runs and res.command("w3", p, s) is None:
                continue
            ok = [r for r in runs if r.get("p99_under_limit")]
            out.append(
                f"| {s} | {cell(field(ok, 'delivered_per_s'))} | {fmt(med(field(ok, 'p50_ms')), 2)} | "
                f"{fmt(med(field(ok, 'p99_ms')), 2)} | {fmt(med(field(ok, 'server_cpu_us_per_msg')), 1)} | "
                f"{len(ok)} of {len(runs)} |"
            )
            steps = w3_steps(runs)
            if steps:
                xs = [st["offered"] for st in steps]
                p99s = [min(_num(st["p99"]), 1e5) for st in steps]
                (line,) = ax.plot(xs, p99s, marker="o", label=f"{s} p99")
                ax.plot(
                    xs,
                    [min(_num(st["p50"]), 1e5) for st in steps],
                    color=line.get_color(),
                    linestyle="--",
                    alpha=0.6,
                    label=f"{s} p50",
                )
            if s == "tidings" and p["agents"] == 1000:
                best = med(field(ok, "delivered_per_s")) or 0
                checks.append(
                    f"W3 1,000 agents: tidings sustains {fmt(best)} delivered/s with p99 < 50 ms "
                    "(target >= 20,000): " + ("**met**" if best >= 20_000 else "**not met**")
                )
        out.append("")
        ax.axhline(P99_LIMIT_MS, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered deliveries/s")
        ax.set_ylabel("publish to handler, ms")
        ax.set_title(f"W3: {p['agents']:,} agents, latency against offered load")
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"w3-latency-{p['agents']}.png"
        fig.savefig(IMG / name, dpi=110)
        plt.close(fig)
        out.append(f"![W3 latency, {p['agents']} agents](bench/{name})\n")
        out.append("Every step (medians over the runs that reached it):\n")
        out.append(
            "| system | publishes/s per agent | offered deliveries/s | delivered/s | p50 ms | p99 ms | "
            "server CPU µs/delivery |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for s in W3_SYSTEMS:
            for st in w3_steps(res.runs("w3", p, s)):
                out.append(
                    f"| {s} | {st['rate_per_agent']:g} | {st['offered']:,} | {fmt(st['delivered'])} | "
                    f"{fmt(st['p50'], 2)} | {fmt(st['p99'], 2)} | {fmt(st['cpu'], 1)} |"
                )
        out.append("")


def w4_section(res: Results, out: list[str], checks: list[str]) -> None:
    out.append("## W4 capacity\n")
    out.append(
        "Idle connections, each subscribed to its own live topic; server memory (RSS growth) "
        "per connection and the time to connect and subscribe them all.\n"
    )
    out.append(
        "| connections | bytes per connection | seconds to connect | server CPU µs per connection set-up |"
    )
    out.append("|---|---|---|---|")
    for p in res.params["w4"]:
        runs = res.runs("w4", p, "tidings")
        out.append(
            f"| {p['connections']:,} | {cell(field(runs, 'bytes_per_connection'))} | "
            f"{cell(field(runs, 'connect_seconds'), 2)} | {fmt(med(field(runs, 'server_cpu_us_per_msg')))} |"
        )
        b = med(field(runs, "bytes_per_connection"))
        if b is not None and p["connections"] >= 10_000:
            checks.append(
                f"W4 10,000 connections: {fmt(b)} bytes per idle subscribed connection "
                "(target <= 20 KB = 20,480 bytes): " + ("**met**" if b <= 20_480 else "**not met**")
            )
    out.append("")


def _bars(
    labels: list[str], bars: dict[str, list[float]], systems: list[str], ylabel: str, title: str, name: str
) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        xs = [x + i * width for x in range(len(labels))]
        ax.bar(xs, [max(v, 1) for v in bars[s]], width, label=s)
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(labels))], labels)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / name, dpi=110)
    plt.close(fig)


def commands(res: Results, out: list[str]) -> None:
    out.append("## Commands\n")
    out.append(
        "Each line reproduces one run of one figure alone (`make bench` runs them all, interleaved, "
        f"{res.data['runs']} times; they call the same functions with the same arguments):\n"
    )
    seen = set()
    for r in res.data["records"]:
        if r["command"] not in seen:
            seen.add(r["command"])
            out.append(f"    {r['command']}")
    out.append("")


def render(data: dict[str, Any], source: str) -> str:
    IMG.mkdir(parents=True, exist_ok=True)
    res = Results(data)
    before, after = data["machine_before"], data["machine_after"]
    out = [
        "# Benchmarks: tidings beside its peers\n",
        f"Generated by `make bench` (`bench/run.py`, then `bench/report.py`) on {data['date']} at commit "
        f"`{data['commit']}` from `{source}`; the whole run took {data['seconds'] // 60} min "
        f"{data['seconds'] % 60} s. Do not edit by hand: run `make bench` again.\n",
        f"The machine: {before['cpus']} cores, Python {before['python']}, Linux {before['kernel']}. The "
        "server under test runs pinned to core 0 (`taskset`), every load generator on core 1. "
        f"Load average before the run: {before['load_average']}, after: {after['load_average']}"
        " (other work on the machine shares its cores and disk, so expect run-to-run spread; "
        "the systems take turns so drift hits them alike). Each figure is the median of "
        f"{data['runs']} runs, with the lowest and highest in brackets.\n",
    ]
    checks: list[str] = []
    body: list[str] = []
    if "w1" in res.params:
        w1_section(res, body, checks)
    if "w2" in res.params:
        w2_section(res, body, checks)
    if "w3" in res.params:
        w3_section(res, body, checks)
    if "w4" in res.params:
        w4_section(res, body, checks)
    out.append("## Issue #5's targets\n")
    out.extend(f"- {c}" for c in checks)
    out.append("")
    out.extend(body)
    if res.errors:
        out.append("## Runs that failed\n")
        for e in res.errors:
            out.append(f"- {e['workload']} {e['params']} {e['system']} run {e['run']}: `{e['error']}`")
        out.append("")
    commands(res, out)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """``report.py RESULTS.json [DOCS_DIR]``: write DOCS_DIR/benchmarks.md (default docs/), plots in bench/"""
    global IMG
    args = argv if argv is not None else sys.argv[1:]
    if not args:
        raise SystemExit("usage: report.py bench/results/<date>.json [docs dir]")
    path = Path(args[0])
    docs = Path(args[1]) if len(args) > 1 else DOCS
    IMG = docs / "bench"
    data = json.loads(path.read_text())
    try:
        source = str(path.resolve().relative_to(ROOT))
    except ValueError:
        source = str(path)
    target = docs / "benchmarks.md"
    # The scale-out section holds bench/scale_out.py's figures (a cluster, not make bench): keep it.
    previous = target.read_text() if target.exists() else ""
    kept = previous[previous.index(SCALE_OUT) :] if SCALE_OUT in previous else ""
    target.write_text(render(data, source).rstrip("\n") + "\n" + ("\n" + kept if kept else ""))
    print(f"wrote {docs / 'benchmarks.md'}", flush=True)


if __name__ == "__main__":
    main()

"""`python -m benchmarks generator`: can the open-loop generator keep its schedule? Poisson arrivals at
`rate` against the trivial endpoint in another process (the bar: benchmarks.targets)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from benchmarks import targets, trivial_server
from benchmarks.rendering import machine_line, table_row
from runtime.capacity.load_generator import build_request, open_loop
from runtime.diagnostics import machine


def measure(results: Path, rate: float = 1500, duration_s: float = 10.0) -> dict:
    with trivial_server.in_subprocess() as port:
        request = build_request("127.0.0.1", port, "/", b"{}", {"Content-Type": "application/json"})
        summary = asyncio.run(open_loop("127.0.0.1", port, request, rate, duration_s)).summary()
    report = {"benchmark": "generator", "machine": machine.describe(), "duration_s": duration_s, **summary}
    results.mkdir(parents=True, exist_ok=True)
    (results / "generator.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def render(g: dict) -> list[str]:
    ok = g["achieved_rps"] >= targets.GENERATOR_RPS and g["send_lag_p99_ms"] < targets.GENERATOR_SEND_LAG_P99_MS
    return [
        "## Load generator self-check",
        "",
        machine_line(g["machine"]),
        "",
        f"Command: `python -m benchmarks generator` ({g['duration_s']:.0f} s, open loop, Poisson, trivial endpoint "
        "in another process).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        table_row(
            f">= {targets.GENERATOR_RPS:.0f} requests/s with send-lag p99 < {targets.GENERATOR_SEND_LAG_P99_MS:g} ms",
            f"offered {g['offered_rps']:.0f}/s, achieved {g['achieved_rps']:.0f}/s, send-lag p99 "
            f"{g['send_lag_p99_ms']:.2f} ms (latency p99 {g['p99_ms']:.2f} ms)",
            ok,
        ),
        "",
    ]


def add_parser(sub) -> None:
    p = sub.add_parser("generator", help="check the open-loop generator keeps its schedule (trivial endpoint)")
    p.add_argument("--rate", type=float, default=1500)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))


def run(args) -> None:
    report = measure(args.results, args.rate, args.duration)
    print(
        f"offered {report['offered_rps']:.0f}/s, achieved {report['achieved_rps']:.0f}/s, "
        f"send lag p99 {report['send_lag_p99_ms']:.2f} ms"
    )

"""The capacity planning section of RESULTS.md: each model's `validate` report (predicted against measured,
what calibration gave the simulator) and its plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks import targets
from benchmarks.rendering import machine_line, verdict


def _calibration(name: str, h: dict) -> str:
    sat, low = h["saturation"], h["low_load"]
    stalls = "; ".join(
        f"at {s['rate']:.0f} req/s {s['per_s']:.2f} stalls a second"
        + (f", mean {np.mean(s['lengths_ms']):.1f} ms" if s["lengths_ms"] else "")
        for s in h.get("stalls") or []
    )
    return (
        f"- {name}: event loop {h['per_request_ms']:.3f} ms a request and {h['per_call_ms']:.3f} ms an engine call "
        f"(saturation {sat['rps']:.0f} req/s at {sat['rows_per_engine_call']:.2f} rows a call); engine "
        f"{h['engine_slowdown']:.1f}x slower inside the saturated replica than alone "
        f"({sat['engine_ms_per_call_served']:.2f} vs {sat['engine_ms_per_call_profiled']:.2f} ms a call), "
        f"{low['engine_slowdown']:.1f}x at {low['rate']:.0f} req/s; {h['floor_p50_ms']:.2f} ms p50 / "
        f"{h['floor_p99_ms']:.2f} ms p99 outside the replica; {stalls}."
    )


def render(reports: list[dict], output: Path) -> list[str]:
    from benchmarks import plots

    plot_dir = output.parent / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    bands = targets.CAPACITY
    lines = [
        "## Capacity planning: predicted vs measured",
        "",
        machine_line(reports[0]["machine"]),
        "",
        "Command, per model: `python -m benchmarks validate --model M --slo-p99-ms S --results "
        f"benchmarks/results/M` ({reports[0]['window_s']:.0f} s per probe and window). Predicted from one "
        f"calibration taken before the measurement. Targets: max rate within +-{bands['max_rps']:.0%}, p99 at 70% "
        f"of the measured max within +-{bands['p99_ms']:.0%}.",
        "",
        "| model (workload) | SLO p99 | config | max rate predicted | measured | error | met "
        "| p99 at 70% predicted | measured | error | met |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in reports:
        p, m, e, met = r["predicted"], r["measured"], r["relative_error"], r["met"]
        sizes = ", ".join(f"{k}={v}" for k, v in r["workload"]["sizes"].items()) or "fixed shape"
        lines.append(
            f"| {r['model']} ({r['workload']['request']}, 1 row, {sizes}) | {r['slo_p99_ms']:g} ms "
            f"| max_batch_size {r['config']['max_batch_size']}, delay {r['config']['max_queue_delay_ms']:g} ms "
            f"| {p['max_rps']:.0f} req/s | {m['max_rps']:.0f} req/s | {e['max_rps']:+.1%} | {verdict(met['max_rps'])} "
            f"| {p['p99_ms']:.1f} ms | {m['p99_ms']:.1f} ms | {e['p99_ms']:+.1%} | {verdict(met['p99_ms'])} |"
        )
    lines += ["", "Each window's measured p99 at 70%, and rows per engine call (simulated vs measured):", ""]
    for r in reports:
        m, p = r["measured"], r["predicted"]
        lines.append(
            f"- {r['model']}: {', '.join(f'{v:.1f}' for v in m['window_p99_ms'])} ms "
            f"({m['windows']} windows, {'stable' if m['stable'] else 'not stable'}); rows per engine call "
            f"{p['rows_per_engine_call']:.2f} vs {m['rows_per_engine_call']:.2f}."
        )
    lines += ["", "What the simulator was given, measured in the same run (`benchmarks calibrate`):", ""]
    lines += [_calibration(r["model"], r["http"]) for r in reports]
    lines.append("")
    for r in reports:
        for png in plots.validation(r, plot_dir):
            lines.append(f"![{png.stem}]({png.relative_to(output.parent).as_posix()})")
        lines.append("")
    return lines

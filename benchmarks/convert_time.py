"""How long `convert build` takes, end to end, as a release pipeline runs it (a fresh process)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import targets
from benchmarks.rendering import machine_line, verdict
from runtime.diagnostics import machine
from runtime.engine.manifest import read_manifest


def measure(configs: list[Path], results: Path, repeats: int = 1) -> dict:
    runs = []
    for config in configs:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory(prefix="trtserve-bench-") as repo:
                command = [sys.executable, "-m", "convert", "build", str(config), "--repository", repo, "-q"]
                start = time.perf_counter()
                proc = subprocess.run(
                    command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
                )
                seconds = time.perf_counter() - start
                if proc.returncode != 0:
                    raise SystemExit(
                        f"benchmark failed: {shlex.join(command)} exited {proc.returncode}:\n{proc.stderr}"
                    )
                manifest = read_manifest(next(Path(repo).glob("*/1")))
            runs.append(
                {
                    "config": str(config),
                    "command": f"convert build {config}",
                    "seconds": round(seconds, 2),
                    "engines": [f"{e.backend} {e.precision}" for e in manifest.engines],
                    "parity_samples": manifest.parity[0].samples,
                    "exporter": manifest.onnx.exporter,
                }
            )
            print(f"{config}: {seconds:.1f} s", file=sys.stderr)
    report = {"benchmark": "convert", "machine": machine.describe(), "runs": runs}
    results.mkdir(parents=True, exist_ok=True)
    (results / "convert.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def render(data: dict) -> list[str]:
    lines = [
        "## Convert stage: `convert build`, wall time",
        "",
        machine_line(data["machine"]),
        "",
        "Command: `python -m benchmarks convert CONFIG...`; each run a fresh process into an empty repository.",
        "",
        "| command | engines | exporter | parity samples | seconds | target | met |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for run in data["runs"]:
        target = targets.CONVERT_S.get(Path(run["config"]).stem)
        met = "-" if target is None else verdict(run["seconds"] < target)
        lines.append(
            f"| `{run['command']}` | {', '.join(run['engines'])} | {run['exporter']} | {run['parity_samples']} "
            f"| {run['seconds']:.1f} | {f'< {target:.0f} s' if target else '-'} | {met} |"
        )
    return [*lines, ""]


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="time `convert build` end to end")
    p.add_argument("configs", nargs="+", type=Path)
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--repeats", type=int, default=1)


def run(args) -> None:
    measure(args.configs, args.results, args.repeats)

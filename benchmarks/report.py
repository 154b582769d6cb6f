"""`python -m benchmarks report`: benchmarks/RESULTS.md (and its plots) from the JSON the other subcommands
wrote. Each section is rendered beside its measurement (each benchmark module's `render`); every target
comes from benchmarks.targets; how each is measured is written once, in docs/design/measurement.md."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import (
    autoscale,
    batch_inference,
    capacity_results,
    compare,
    convert_time,
    generator_check,
    gpu_results,
    monitor,
    overhead,
    reliability,
    rollout,
    serving,
    soak,
)

# Runs on machines `make bench` does not have (a lent GPU), kept in the repository with their machine.
MEASURED = Path(__file__).parent / "measured"
HEADER = [
    "# Benchmark results",
    "",
    "Written by `python -m benchmarks report` from the JSON under `benchmarks/results/` (`make bench` runs",
    "every section's command, then this). Each figure is from the machine named in its section. How each",
    "is measured: docs/design/measurement.md. Targets: `benchmarks/targets.py`.",
    "",
]
# Each results file and its section, in RESULTS.md's order; the capacity planning section (every
# */validate.json) comes after the first three.
BEFORE_CAPACITY = (
    ("convert.json", convert_time.render),
    ("generator.json", generator_check.render),
    ("serving.json", serving.render),
)
AFTER_CAPACITY = (
    ("compare.json", compare.render),
    ("overhead.json", overhead.render),
    ("autoscale.json", autoscale.render),
    ("rollout.json", rollout.render),
    ("monitor.json", monitor.render),
    ("batch.json", batch_inference.render),
    ("reliability.json", reliability.render),
    ("soak.json", soak.render),
)


def render(results: Path, output: Path) -> str:
    lines = list(HEADER)
    lines += _sections(results, BEFORE_CAPACITY)
    validations = sorted(results.glob("*/validate.json"))
    if validations:
        lines += capacity_results.render([json.loads(v.read_text()) for v in validations], output)
    lines += _sections(results, AFTER_CAPACITY)
    for directory in sorted(p for p in MEASURED.glob("*/") if p.is_dir()):
        lines += gpu_results.render(directory)
    return "\n".join(lines)


def _sections(results: Path, sections) -> list[str]:
    lines: list[str] = []
    for name, section in sections:
        if (results / name).exists():
            lines += section(json.loads((results / name).read_text()))
    return lines


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="render RESULTS.md (and its plots) from a results directory")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--output", type=Path, default=Path("benchmarks/RESULTS.md"))


def run(args) -> None:
    args.output.write_text(render(args.results, args.output))
    print(args.output)

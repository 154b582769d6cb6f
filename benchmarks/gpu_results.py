"""The sections of RESULTS.md from a lent machine's directory, benchmarks/measured/<gpu>/: GPU memory and
packing (`profile` and `pack` with `--pressure`), and `make gpu-check`'s steps."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.rendering import machine_line

MiB = 2**20


def render(directory: Path) -> list[str]:
    return _memory_and_packing(directory) + _gpu_check(directory)


def _alone(directory: Path, model: str, batch: int) -> str:
    path = directory / f"profile-{model}.json"
    if not path.exists():
        return "no profile for one replica alone"
    points = [q for q in json.loads(path.read_text())["points"] if q["batch"] == batch]
    return f"one replica alone: {points[0]['rows_per_s']:.0f}" if points else "no profile at that batch"


def _memory_and_packing(directory: Path) -> list[str]:
    """GPU memory accounting, fractional packing and the batch step-down, measured on a lent machine."""
    packs = sorted(directory.glob("pack-*.json"))
    if not packs:
        return []
    first = json.loads(packs[0].read_text())
    lines = [
        f"## GPU memory and packing, {first['backend']} backend (measured on `{directory.name}`, not this machine)",
        "",
        machine_line(first["machine"]),
        "",
        f"Commands: `python -m benchmarks profile VERSION_DIR --backend {first['backend']}` and `python -m benchmarks "
        f"pack --model M --backend {first['backend']} --max-replicas 8 --duration 10 --pressure` (files in "
        f"`benchmarks/measured/{directory.name}/`).",
        "",
    ]
    for path in packs:
        pack = json.loads(path.read_text())
        model, need = pack["model"], pack["need"]
        footprint = need["models"][model]
        gpu = pack["gpu"] or {}
        dropped = (pack["free_before_bytes"] or 0) - (pack["free_lowest_bytes"] or 0)
        predicted = pack["replicas_run"] * (need["device_bytes"] or 0)
        profile_path = directory / f"profile-{model}.json"
        lines += [
            f"### {model} on {gpu.get('name', 'the GPU')} ({(gpu.get('total_bytes') or 0) / 2**30:.0f} GiB)",
            "",
            "| figure | value |",
            "|---|---|",
            f"| replica's GPU memory after warm-up at batch {footprint['max_batch_size']} "
            f"({footprint['device_method']}) | {need['device_bytes'] / MiB:.0f} MiB |",
        ]
        if profile_path.exists():
            reserved = json.loads(profile_path.read_text())["memory"].get("device_bytes")
            if reserved is not None:
                lines.append(
                    f"| the backend's own figure in the same kind of process | {reserved / MiB:.0f} MiB "
                    f"(NVML's per-process figure: {need['device_bytes'] / MiB:.0f} MiB, CUDA context included) |"
                )
        lines += [
            f"| replica's host RSS | {need['host_bytes'] / MiB:.0f} MiB |",
            f"| Ray options derived (headroom {pack['headroom']:.0%}) | `{pack['actor_options']}` |",
            f"| replicas that fit (1 / num_gpus) | {pack['replicas_fit']} |",
            f"| replicas run at once | {pack['replicas_run']}, {len(pack['workers'])} finished, "
            f"{len(pack['failures'])} failed |",
            f"| GPU memory they took, from the device's free memory | {dropped / MiB:.0f} MiB "
            f"(predicted {predicted / MiB:.0f} MiB = {pack['replicas_run']} x the measured need) |",
            f"| rows/s, all replicas together (batch {footprint['max_batch_size']}, {pack['duration_s']:.0f} s) | "
            f"{pack['rows_per_s_total']:.0f} ({_alone(directory, model, footprint['max_batch_size'])}) |",
        ]
        if "pressure" in pack:
            p = pack["pressure"]
            lines.append(
                f"| batch limit with free GPU memory under the low-water mark ({p['low_water_bytes'] / MiB:.0f} MiB),"
                f" then after it was freed | {p['configured']} -> {p['under_pressure']} -> {p['recovered']} |"
            )
        lines.append("")
        if profile_path.exists():
            profile = json.loads(profile_path.read_text())
            lines += [
                f"Engine latency against batch size, one process alone ({profile['backend']} on {profile['device']}):",
                "",
                "| batch | median ms | p10 ms | p90 ms | rows/s |",
                "|---:|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {q['batch']} | {q['median_ms']:.3f} | {q['p10_ms']:.3f} | {q['p90_ms']:.3f} "
                f"| {q['rows_per_s']:.0f} |"
                for q in profile["points"]
            ]
            lines.append("")
    tests = directory / "pytest.txt"
    if tests.exists():
        outcomes = [line.split(maxsplit=1) for line in tests.read_text().splitlines() if "::" in line]
        cuda = [f"`{test.split('::')[-1].split()[0]}` {status}" for status, test in outcomes if "gpu_memory" in test]
        lines += [f"The `cuda`-marked tests, run there: {'; '.join(cuda)}.", ""]
    return lines


def _gpu_check(directory: Path) -> list[str]:
    """`make gpu-check` on a lent machine: each step's outcome as it was recorded."""
    path = directory / "gpu-check.json"
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    lines = [
        f"## The TensorRT and CUDA path, `make gpu-check` (measured on `{directory.name}`, not this machine)",
        "",
        machine_line(report["machine"]),
        "",
        f"Command: `python -m benchmarks gpu-check` (`benchmarks/measured/{directory.name}/gpu-check.json`).",
        "",
        "| step | outcome | detail |",
        "|---|---|---|",
    ]
    for step in report["steps"]:
        detail = step["detail"] if isinstance(step["detail"], str) else json.dumps(step["detail"])
        lines.append(f"| {step['step']} | {step['status']} | {detail[:200].replace('|', '/')} |")
    return [*lines, ""]

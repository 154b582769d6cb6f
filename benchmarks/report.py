"""`python -m benchmarks report`: benchmarks/RESULTS.md (and its plots) from the JSON the other subcommands
wrote. Every figure comes from those files and every target from benchmarks.targets; how each is
measured is written once, in the README's Benchmarks section."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from benchmarks import targets

# Runs on machines `make bench` does not have (a lent GPU), kept in the repository with their machine.
MEASURED = Path(__file__).parent / "measured"
MiB = 2**20


def render(results: Path, output: Path) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks report` from the JSON under `benchmarks/results/` (`make bench` runs",
        "every section's command, then this). Each figure is from the machine named in its section. How each",
        "is measured: the README, section Benchmarks. Targets: `benchmarks/targets.py`.",
        "",
    ]
    sections = (
        ("convert.json", _convert),
        ("generator.json", _generator),
        ("serving.json", _serving),
        ("compare.json", _compare),
        ("autoscale.json", _autoscale),
        ("rollout.json", _rollout),
        ("monitor.json", _monitor),
        ("batch.json", _batch),
        ("reliability.json", _reliability),
        ("soak.json", _soak),
    )
    for name, section in sections[:3]:
        if (results / name).exists():
            lines += section(json.loads((results / name).read_text()))
    validations = sorted(results.glob("*/validate.json"))
    if validations:
        lines += _validation([json.loads(v.read_text()) for v in validations], output)
    for name, section in sections[3:]:
        if (results / name).exists():
            lines += section(json.loads((results / name).read_text()))
    for directory in sorted(p for p in MEASURED.glob("*/") if p.is_dir()):
        lines += _gpu_measured(directory)
        lines += _gpu_check(directory)
    return "\n".join(lines)


def _gpu_check(directory: Path) -> list[str]:
    """`make gpu-check` on a lent machine: each step's outcome as it was recorded."""
    path = directory / "gpu-check.json"
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    lines = [
        f"## The TensorRT and CUDA path, `make gpu-check` (measured on `{directory.name}`, not this machine)",
        "",
        _machine(report["machine"]),
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


def _machine(m: dict) -> str:
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}; "
        f"GPU: {m['gpu']}."
    )


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _row(target: str, measured: str, ok: bool) -> str:
    return f"| {target} | {measured} | {_met(ok)} |"


def _convert(data: dict) -> list[str]:
    lines = [
        "## Convert stage: `convert build`, wall time",
        "",
        _machine(data["machine"]),
        "",
        "Command: `python -m benchmarks convert CONFIG...`; each run a fresh process into an empty repository.",
        "",
        "| command | engines | exporter | parity samples | seconds | target | met |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for run in data["runs"]:
        target = targets.CONVERT_S.get(Path(run["config"]).stem)
        met = "-" if target is None else _met(run["seconds"] < target)
        lines.append(
            f"| `{run['command']}` | {', '.join(run['engines'])} | {run['exporter']} | {run['parity_samples']} "
            f"| {run['seconds']:.1f} | {f'< {target:.0f} s' if target else '-'} | {met} |"
        )
    return [*lines, ""]


def _generator(g: dict) -> list[str]:
    ok = g["achieved_rps"] >= targets.GENERATOR_RPS and g["send_lag_p99_ms"] < targets.GENERATOR_SEND_LAG_P99_MS
    return [
        "## Load generator self-check",
        "",
        _machine(g["machine"]),
        "",
        f"Command: `python -m benchmarks generator` ({g['duration_s']:.0f} s, open loop, Poisson, trivial endpoint "
        "in another process).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        _row(
            f">= {targets.GENERATOR_RPS:.0f} requests/s with send-lag p99 < {targets.GENERATOR_SEND_LAG_P99_MS:g} ms",
            f"offered {g['offered_rps']:.0f}/s, achieved {g['achieved_rps']:.0f}/s, send-lag p99 "
            f"{g['send_lag_p99_ms']:.2f} ms (latency p99 {g['p99_ms']:.2f} ms)",
            ok,
        ),
        "",
    ]


def _serving(data: dict) -> list[str]:
    cnn = data["cnn_json"]
    naive, naive_ha, ours = cnn["naive/proxy"], cnn["naive/haproxy"], cnn["trtserve/haproxy"]
    raw = {int(k): v for k, v in data["minilm_raw_engine_sentences_per_s"].items()}
    best_batch = max(raw, key=raw.get)
    mix, pad128 = data["minilm_text_mix"]["rows_per_s"], data["minilm_pad128"]["rows_per_s"]
    binary, as_json = data["image224_binary"]["rps"], data["image224_json"]["rps"]
    throughput = ours["c32"]["rps"] / naive["c32"]["rps"]
    p99 = ours["c32"]["p99_ms"] / naive["c32"]["p99_ms"]
    p50_gap = ours["c1"]["p50_ms"] - naive_ha["c1"]["p50_ms"]
    lines = [
        "## Serving against a naive Ray Serve deployment",
        "",
        _machine(data["machine"]),
        "",
        f"Command: `python -m benchmarks serving` ({data['duration_s']:.0f} s measured per point after 2 s of "
        "warm-up; trtserve behind its default ingress, HAProxy).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        _row(
            f"tiny CNN, JSON, concurrency 32: >= {targets.CNN_C32_THROUGHPUT_VS_NAIVE:g}x the requests/s of naive "
            "(default ingress)",
            f"{ours['c32']['rps']:.0f} vs {naive['c32']['rps']:.0f} req/s = {throughput:.2f}x",
            throughput >= targets.CNN_C32_THROUGHPUT_VS_NAIVE,
        ),
        _row(
            f"... with p99 <= {targets.CNN_C32_P99_VS_NAIVE:g}x naive's",
            f"{ours['c32']['p99_ms']:.1f} vs {naive['c32']['p99_ms']:.1f} ms = {p99:.2f}x",
            p99 <= targets.CNN_C32_P99_VS_NAIVE,
        ),
        _row(
            f"concurrency 1: p50 within {targets.CNN_C1_P50_GAP_MS:g} ms of naive behind the same ingress (HAProxy)",
            f"{ours['c1']['p50_ms']:.2f} vs {naive_ha['c1']['p50_ms']:.2f} ms ({p50_gap:+.2f} ms)",
            p50_gap <= targets.CNN_C1_P50_GAP_MS,
        ),
        _row(
            f"MiniLM, sentence mix: >= {targets.MINILM_VS_RAW_ENGINE:g}x the raw engine at its best batch size "
            f"({best_batch})",
            f"{mix:.0f} vs {raw[best_batch]:.0f} sentences/s = {mix / raw[best_batch]:.3f}x",
            mix >= targets.MINILM_VS_RAW_ENGINE * raw[best_batch],
        ),
        _row(
            f"MiniLM, sentence mix: >= {targets.MINILM_VS_PAD128:g}x padding every request to 128 tokens",
            f"{mix:.0f} vs {pad128:.0f} sentences/s = {mix / pad128:.2f}x",
            mix >= targets.MINILM_VS_PAD128 * pad128,
        ),
        _row(
            f"3x224x224 FP32: binary tensors >= {targets.BINARY_VS_JSON:g}x the requests/s of JSON",
            f"{binary:.0f} vs {as_json:.1f} req/s = {binary / as_json:.1f}x",
            binary >= targets.BINARY_VS_JSON * as_json,
        ),
        "",
        f"MiniLM inside the server: the engine took {data['minilm_server_compute_ms_per_sentence']:.2f} ms a "
        f"sentence ({data['minilm_server_rows_per_engine_call']:.1f} sentences per engine call, from /stats); the "
        f"raw engine, tokenization included, {1e3 / raw[best_batch]:.2f} ms a sentence at batch {best_batch}. "
        "Raw engine sentences/s by batch size: " + ", ".join(f"{b}: {v:.0f}" for b, v in raw.items()) + ".",
        "",
        f"Cold start, `serve run` to ready (Ray start and warm-up included): cnn "
        f"{data['cold_start_cnn']['ready_s']:.1f} s (warm-up {data['cold_start_cnn']['warmup_s']:.2f} s), minilm "
        f"{data['cold_start_minilm']['ready_s']:.1f} s (warm-up {data['cold_start_minilm']['warmup_s']:.2f} s).",
        "",
        "Tiny CNN, JSON, every deployment and ingress:",
        "",
        "| deployment / ingress | c=1 req/s | c=1 p50 ms | c=1 p99 ms | c=32 req/s | c=32 p50 ms | c=32 p99 ms "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, entry in cnn.items():
        c1, c32 = entry["c1"], entry["c32"]
        errors = {k: v for k, v in {**c1["statuses"], **c32["statuses"]}.items() if k != "200"}
        lines.append(
            f"| {name} | {c1['rps']:.0f} | {c1['p50_ms']:.2f} | {c1['p99_ms']:.2f} | {c32['rps']:.0f} | "
            f"{c32['p50_ms']:.1f} | {c32['p99_ms']:.1f} | {errors or 'none'} |"
        )
    return [*lines, ""]


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


def _validation(reports: list[dict], output: Path) -> list[str]:
    from benchmarks import plots

    plot_dir = output.parent / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    bands = targets.CAPACITY
    lines = [
        "## Capacity planning: predicted vs measured",
        "",
        _machine(reports[0]["machine"]),
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
            f"| {p['max_rps']:.0f} req/s | {m['max_rps']:.0f} req/s | {e['max_rps']:+.1%} | {_met(met['max_rps'])} "
            f"| {p['p99_ms']:.1f} ms | {m['p99_ms']:.1f} ms | {e['p99_ms']:+.1%} | {_met(met['p99_ms'])} |"
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


def _compare(data: dict) -> list[str]:
    lines = [
        "## Compare: one workload, every contender",
        "",
        _machine(data["machine"]),
        "",
        f"Command: `python -m benchmarks compare`. Workload: {data['workload']}; {data['duration_s']:.0f} s per "
        "point. Ratios: requests/s against trtserve (ONNX Runtime, HAProxy) at the same concurrency; in-process "
        "rows (the engine called back to back, no HTTP) against its concurrency 32.",
        "",
        "| contender | where | req/s | p50 ms | p99 ms | vs trtserve |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in data["table"]:
        ratio = f"{row['vs_trtserve']:.2f}x" if row["vs_trtserve"] is not None else "-"
        lines.append(
            f"| {row['contender']} | {row['where']} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {ratio} |"
        )
    return [*lines, ""]


def _autoscale(data: dict) -> list[str]:
    limit = data["memory_permitted_replicas"]
    reached = data["reached_limit_after_s"]
    not_sent = f" ({data['not_sent']} not sent: the generator's connection limit)" if data.get("not_sent") else ""
    return [
        "## Memory-aware autoscaling under a load ramp",
        "",
        _machine(data["machine"]),
        "",
        f"Command: `python -m benchmarks autoscale`. cnn with `autoscaling: {{...}}`, each replica declared at "
        f"{data['replica_mb']:.0f} MiB, a budget of {data['memory_budget_mb']:.0f} MiB (memory holds {limit} "
        f"replicas; Ray's max_replicas is {data['ray_max_replicas']}). Open loop, Poisson: "
        f"{data['ramp']['from_rps']:.0f} -> {data['ramp']['to_rps']:.0f} req/s over {data['ramp']['seconds']:.0f} s "
        f"(10% -> 200% of one replica's measured capacity, {data['one_replica_capacity_rps']:.0f} req/s), then "
        f"{data['hold']['seconds']:.0f} s at {data['hold']['rps']:.0f} req/s.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        _row(
            f"replicas reach the memory-permitted maximum within {targets.AUTOSCALE_REACH_S:.0f} s",
            f"{limit} reached after {reached} s"
            if reached is not None
            else f"not reached (max {data['max_replicas_seen']})",
            reached is not None and reached <= targets.AUTOSCALE_REACH_S,
        ),
        _row("never beyond it", f"max seen {data['max_replicas_seen']}", data["max_replicas_seen"] <= limit),
        _row(
            "no replica killed for memory", f"{data['killed_for_memory']} in the logs", data["killed_for_memory"] == 0
        ),
        _row("no request lost (only 200 or 503)", f"statuses {data['statuses']}{not_sent}", data["lost"] == 0),
        _row(
            f"steady-state p99 within what `plan` predicts for {limit} replicas (each on cores of its own)",
            f"{data['hold_p99_ms']:.1f} ms vs predicted {data['predicted_p99_ms_for_limit']:.1f} ms",
            data["hold_p99_ms"] <= data["predicted_p99_ms_for_limit"],
        ),
        "",
        f"Back to one replica {data['back_to_one_after_load_s']:.0f} s after the load ended; "
        f"{data['machine']['cores']} cores shared by every replica, the ingress and the load generator.",
        "",
    ]


def _monitor(data: dict) -> list[str]:
    costs, alarms = data["costs"], data["false_alarms"]
    limits = {"capture10": targets.CAPTURE_10_COST, "capture100": targets.CAPTURE_100_COST, "drift": targets.DRIFT_COST}
    names = {"capture10": "capture at 10 %", "capture100": "capture at 100 %", "drift": "drift accounting"}
    first = next(iter(costs.values()))
    lines = [
        "## Model monitoring: the cost of capture and drift accounting, false drift alarms",
        "",
        _machine(data["machine"]),
        "",
        f"Command: `python -m benchmarks monitor`. Four identical copies of cnn in one application, one replica "
        f"each: without monitoring, with capture at 10 % and at 100 % (mode all, Parquet), with drift accounting. "
        f"Closed loop at c={data['concurrency']}, JSON; each cost is {first['pairs']} pairs of {first['window_s']:g} s "
        "windows against the copy without monitoring, alternating which runs first; the medians of the pairs' "
        f"on/off ratios. Baseline: {data['baseline']['rps']:.0f} req/s, p99 {data['baseline']['p99_ms']:.1f} ms. "
        f"False alarms: unshifted standard-normal images for {alarms['windows']} windows of {alarms['window_s']:g} s.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for arm, limit in limits.items():
        c = costs[arm]
        lines.append(
            _row(
                f"{names[arm]} costs at most {limit:.0%} of throughput and p99",
                f"throughput x{c['throughput_ratio_median']:.3f}, p99 x{c['p99_ratio_median']:.3f}",
                c["throughput_ratio_median"] >= 1 - limit and c["p99_ratio_median"] <= 1 + limit,
            )
        )
    lines += [
        _row(
            f"false drift alarms on unshifted traffic: at most {targets.FALSE_ALARMS:.0%} of windows",
            f"{alarms['alarms']} of {alarms['windows']} windows",
            alarms["windows"] >= 20 and alarms["alarms"] <= targets.FALSE_ALARMS * alarms["windows"],
        ),
        "",
    ]
    return lines


def _rollout(data: dict) -> list[str]:
    shadow, bad, moves = data["shadow"], data["bad_candidate"], data["transitions"]
    limit = data["failure_limit"] + targets.ROLLBACK_EXTRA_INTERVALS
    cost = targets.SHADOW_COST
    steps = ", ".join(f"{s['step']} ({s['state']})" for s in moves["steps"])
    canary = ", ".join(f"{i['weight']:g} % {i['outcome']}" for i in moves["canary_intervals"])
    return [
        "## Model updates: shadow cost, automatic rollback, transitions",
        "",
        _machine(data["machine"]),
        "",
        f"Command: `python -m benchmarks rollout`. cnn v1 stable, one replica; open loop, Poisson, at "
        f"{shadow['rate_rps']:.0f} req/s (half of the {data['stable_capacity_rps']:.0f} req/s the stable path "
        f"sustains alone, closed loop at c=16). Shadow: {shadow['pairs']} pairs of {shadow['window_s']:g} s windows "
        "without and with shadow 100 % to an identical v2, alternating which runs first; the medians of the "
        f"pairs' on/off ratios. Rollback: canary to a bad v3 (classifier rows permuted) judged every "
        f"{data['interval_s']:g} s, failure_limit {data['failure_limit']}, min_requests {data['min_requests']}.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        _row(
            f"shadow 100 % costs stable's p50 at most {cost:.0%}",
            f"x{shadow['p50_ratio_median']:.3f} (median of {shadow['pairs']} pairs)",
            shadow["p50_ratio_median"] <= 1 + cost,
        ),
        _row(
            f"... and its throughput at most {cost:.0%}",
            f"x{shadow['throughput_ratio_median']:.3f}; {shadow['mirrored_share_median']:.0%} of requests mirrored",
            shadow["throughput_ratio_median"] >= 1 - cost,
        ),
        _row(
            f"a bad candidate rolled back within failure_limit + {targets.ROLLBACK_EXTRA_INTERVALS} = {limit} "
            "intervals",
            f"{bad['state']} after {bad['intervals_to_rollback']} intervals ({bad['seconds_to_rollback']:.1f} s): "
            f"{bad['reason']}",
            bad["state"] == "rolled_back" and bad["intervals_to_rollback"] <= limit,
        ),
        _row(
            "0 non-200 responses through every transition",
            f"{data['non_200']} of {sum(data['statuses'].values())} (statuses {data['statuses']})",
            data["non_200"] == 0,
        ),
        "",
        f"Stable's p50 in the shadow-off windows {_median_p50(shadow, False):.2f} ms, shadow-on "
        f"{_median_p50(shadow, True):.2f} ms: at 100 % every request also runs the model a second time on the "
        f"same {data['machine']['cores']} cores, which the replica, the ingress and the load generator share.",
        "",
        f"Transitions under load: {steps}. The canary to the identical v2 was judged: {canary}.",
        "",
    ]


def _median_p50(shadow: dict, on: bool) -> float:
    return statistics.median(w["p50_ms"] for w in shadow["windows"] if w["shadow"] is on)


def _alone(directory: Path, model: str, batch: int) -> str:
    path = directory / f"profile-{model}.json"
    if not path.exists():
        return "no profile for one replica alone"
    points = [q for q in json.loads(path.read_text())["points"] if q["batch"] == batch]
    return f"one replica alone: {points[0]['rows_per_s']:.0f}" if points else "no profile at that batch"


def _gpu_measured(directory: Path) -> list[str]:
    """GPU memory accounting, fractional packing and the batch step-down, measured on a lent machine."""
    packs = sorted(directory.glob("pack-*.json"))
    if not packs:
        return []
    first = json.loads(packs[0].read_text())
    lines = [
        f"## GPU memory and packing, {first['backend']} backend (measured on `{directory.name}`, not this machine)",
        "",
        _machine(first["machine"]),
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


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="render RESULTS.md (and its plots) from a results directory")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--output", type=Path, default=Path("benchmarks/RESULTS.md"))


def run(args) -> None:
    args.output.write_text(render(args.results, args.output))
    print(args.output)


def _batch(data: dict) -> list[str]:
    models, cold = data["models"], data["cold_start"]
    limits = {"cnn": targets.BATCH_CNN_RATIO, "minilm": targets.BATCH_MINILM_RATIO}
    units = {"cnn": "rows/s", "minilm": "sentences/s"}
    first = next(iter(models.values()))
    lines = [
        "## Batch inference on Ray Data: `trtserve batch` against the raw engine, cold start from S3",
        "",
        _machine(data["machine"]),
        "",
        f"Command: `python -m benchmarks batch`. Per model, {len(first['rounds'])} rounds alternating the raw "
        "in-process engine (`engine.infer` at each batch size up to the model's limit, for 2 s each; MiniLM "
        "tokenizes in the loop, as the job does) and a batch job over "
        + ", ".join(f"{m['rows']} {name} rows" for name, m in models.items())
        + f" (one worker, Ray Data batches of {first['rounds'][0]['job'].get('batch_size', '?')} rows, a local "
        "Ray started once; its rows/s from the start of execution, worker start and model load included, to the "
        "last file written); the median of the rounds' job/raw ratios. Cold start: the version published to "
        "moto's S3 server on loopback, an empty cache.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, limit in limits.items():
        if name not in models:
            continue
        m = models[name]
        best = m["rounds"][-1]
        raw = best["raw"].get(str(best["best_batch"]))
        detail = f"x{m['ratio_median']:.2f} (last round: job {best['job']['rows_per_s']:.0f} {units[name]}"
        detail += f", raw {raw:.0f} at batch {best['best_batch']})" if raw else ")"
        lines.append(
            _row(
                f"{name}: the job at least {limit:g}x the raw engine's best {units[name]}",
                detail,
                m["ratio_median"] >= limit,
            )
        )
    lines += [
        "",
        "| cold start from S3 | size | download + verify | load | warm-up | total |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in cold.items():
        lines.append(
            f"| {name} | {c['bytes'] / 2**20:.1f} MiB | {c['download_verify_s']:.2f} s | {c['load_s']:.2f} s | "
            f"{c['warmup_s']:.2f} s | {c['total_s']:.2f} s |"
        )
    return [*lines, ""]


SCENARIOS = {
    "kill_two": "two replicas, one SIGKILLed",
    "redeploy": "two replicas, redeployed with changed args (every replica replaced)",
    "downscale": "redeployed from two replicas to one",
    "kill_one": "one replica, SIGKILLed",
    "kill_one_short_queue": "one replica with max_queued_requests 16, SIGKILLed",
    "shutdown": "SIGTERM to `trtserve serve` (`LocalServe.stop`)",
}


def auth_cost_met(cost: dict) -> bool:
    """Met when the check's share of the CPU per request of the replica's request loop, the thread the check
    runs on (an upper bound on the throughput it can cost while that thread is the bottleneck, and looser
    when anything else is) is within
    the target, and the end-to-end measurement does not contradict it: its interval for the median reaches
    the target. The end-to-end ratio alone drifts by more than 3 % from window to window on this machine.
    Runs from before the check was timed (two applications compared) are not met: they could not show it."""
    share, interval = cost.get("check_share_of_replica_cpu"), cost.get("throughput_ratio_interval_95")
    if share is None or interval is None:
        return False
    return share <= targets.AUTH_COST and interval[1] >= 1 - targets.AUTH_COST


def _auth_cost_measured(cost: dict) -> str:
    end_to_end = f"throughput x{cost['throughput_ratio_median']:.3f}, p99 x{cost['p99_ratio_median']:.3f}"
    if cost.get("check_share_of_replica_cpu") is None:
        return f"{end_to_end} (two applications compared, the check not timed)"
    low, high = cost["throughput_ratio_interval_95"]
    return (
        f"the check {cost['check_us']:.1f} us per request, {cost['check_share_of_replica_cpu']:.2%} of the "
        f"CPU per request of the replica's request loop ({cost['replica_loop_thread_cpu_ms_per_request']:.2f} ms, "
        f"the process's {cost['replica_process_cpu_ms_per_request']:.2f} ms); end to "
        f"end {end_to_end} (throughput's 95 % interval x{low:.3f} to x{high:.3f})"
    )


def hardening_cost_met(cost: dict) -> bool:
    """Met when the replica's CPU per request with the hardening is within the target of its CPU without
    (what noise moves least here) and the end-to-end interval for the median reaches the target."""
    by_arm, interval = cost["replica_cpu_ms_per_request_by_arm"], cost["throughput_ratio_interval_95"]
    return by_arm["on"] <= by_arm["off"] * (1 + targets.HARDENING_COST) and interval[1] >= 1 - targets.HARDENING_COST


def _stall_row(stall: dict) -> str:
    return _row(
        f"while a {stall['body_bytes'] / 1e6:.0f} MB body is refused, a small request every 0.1 s waits at most "
        f"{targets.STALL_MAX_S:g} s",
        f"refused {stall['refused']}; {stall['small_requests']} small requests, statuses "
        f"{stall['small_statuses']}, the longest wait {stall['small_wait_max_s']:.2f} s (median "
        f"{stall['small_wait_p50_s'] * 1e3:.1f} ms)",
        all(400 <= status < 500 for status in stall["refused"])
        and stall["small_statuses"] == [200]
        and stall["small_wait_max_s"] <= targets.STALL_MAX_S,
    )


def _abuse_rows(abuse: dict, hardening: dict) -> list[str]:
    bodies, labels = abuse["unauthenticated_bodies"], abuse["feedback_kill"]
    by_arm = hardening["replica_cpu_ms_per_request_by_arm"]
    low, high = hardening["throughput_ratio_interval_95"]
    stalls = [abuse[key] for key in ("large_body", "largest_parsed_body") if key in abuse]
    return [
        _row(
            f"{bodies['clients']} concurrent unauthenticated {bodies['body_mib']} MiB bodies: refused, the replica "
            f"grows by at most {targets.UNAUTHENTICATED_GROWTH_MIB} MiB",
            f"statuses {bodies['statuses']}, answered within {bodies['answered_max_s']:.2f} s; the replica grew by "
            f"{bodies['replica_growth_mib']:.0f} MiB",
            set(bodies["statuses"]) == {401} and bodies["replica_growth_mib"] <= targets.UNAUTHENTICATED_GROWTH_MIB,
        ),
        *(_stall_row(stall) for stall in stalls),
        _row(
            f"acknowledged labels lost across a replica SIGKILL: at most {targets.FEEDBACK_LOST}",
            f"{labels['lost']} lost of {labels['acknowledged']} acknowledged ({labels['posters']} posters, "
            f"statuses {labels['statuses']}): {labels.get('in_parquet', '?')} in Parquet (the killed replica's "
            f"recovered by its replacement), {labels.get('in_open_streams', '?')} in the replacement's open stream",
            labels["lost"] <= targets.FEEDBACK_LOST,
        ),
        _row(
            f"the request path's hardening costs at most {targets.HARDENING_COST:.0%} of throughput at "
            f"c={hardening['concurrency']}",
            f"replica CPU per request {by_arm['on']:.3f} ms on, {by_arm['off']:.3f} ms off "
            f"(x{by_arm['on'] / by_arm['off']:.3f}); end to end throughput x{hardening['throughput_ratio_median']:.3f} "
            f"(95 % interval x{low:.3f} to x{high:.3f}), p99 x{hardening['p99_ratio_median']:.3f}",
            hardening_cost_met(hardening),
        ),
    ]


def _reliability(data: dict) -> list[str]:
    s, cost = data["scenarios"], data["auth_cost"]
    labels = {"kill_one": "", "kill_one_short_queue": "short queue: "}
    lone = {label: s[name] for name, label in labels.items() if name in s}
    one_statuses = set().union(*(r["statuses"] for r in lone.values()))
    drained = {name: s[name]["failed"] for name in ("redeploy", "downscale")}
    lines = [
        "## Reliability: replicas killed, replaced, scaled down and stopped under load; the cost of auth",
        "",
        _machine(data["machine"]),
        "",
        f"Command: `python -m benchmarks reliability`. cnn behind the default (HAProxy) ingress as `trtserve serve` "
        f"starts it; open loop, Poisson, {data['rate']:.0f} req/s, JSON; latency from each request's scheduled "
        "time. Each scenario's event comes a few seconds into its load (the kill with two replicas 20 s into a "
        f"60 s load: the minute around it). Auth: closed loop at c={cost['concurrency']}, {cost['pairs']} pairs "
        f"of {cost['window_s']:g} s windows, the same requests (with a bearer token) to one cnn replica whose "
        "token check is switched on for one window of each pair and off for the other "
        "(`benchmarks/auth_toggle_app.py`), alternating which runs first; the medians of the pairs' on/off ratios. "
        "The request path's hardening is measured the same way (its switch: the body read whole first and decoded "
        "before any check, as before issue 30), with the token check on in both arms. Abuse: three clients stream "
        "768 MiB each without a token to that replica (its RSS sampled every 20 ms); a 60 MB JSON request refused "
        "three times while a small one goes every 0.1 s; labels posted by 8 clients while the replica is SIGKILLed, "
        "then looked for in the Parquet files once its replacement is up.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        _row(
            "a replica SIGKILLed under load with two replicas: 0 failed requests",
            f"{s['kill_two']['failed']} failed of {s['kill_two']['requests']}; p99 over the minute "
            f"{s['kill_two']['p99_ms']:.1f} ms (before the kill {s['kill_two']['p99_before_ms']:.1f} ms)",
            s["kill_two"]["failed"] <= targets.KILL_TWO_FAILED,
        ),
        _row(
            f"a lone replica SIGKILLed under load: callers get only {' or '.join(targets.ONE_REPLICA_STATUSES)}",
            "; ".join(f"{label}statuses {r['statuses']}" for label, r in lone.items())
            + " (0: connection failed or timed out)",
            one_statuses <= set(targets.ONE_REPLICA_STATUSES),
        ),
        _row(
            "redeploy and downscale under load drain: 0 failed requests",
            ", ".join(f"{name} {n} failed of {s[name]['requests']}" for name, n in drained.items()),
            all(n <= targets.DRAIN_FAILED for n in drained.values()),
        ),
        _row(
            "shutdown under load: every request sent before it began is answered",
            f"{s['shutdown']['failed_sent_before_event']} of those failed "
            f"(statuses of all: {s['shutdown']['statuses']})",
            s["shutdown"]["failed_sent_before_event"] <= targets.DRAIN_FAILED,
        ),
        _row(
            f"bearer tokens cost at most {targets.AUTH_COST:.0%} of throughput at c={cost['concurrency']}",
            _auth_cost_measured(cost),
            auth_cost_met(cost),
        ),
        *(_abuse_rows(data["abuse"], data["hardening_cost"]) if "abuse" in data else []),
        "",
        "| scenario | requests | statuses | failures from / to (s after the event) | p99 ms before | p99 ms, "
        "10 s after | p99 ms, all | max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label in SCENARIOS.items():
        if name not in s:  # a run from before the scenario existed
            continue
        r = s[name]
        span = "-" if r["first_failure_s"] is None else f"{r['first_failure_s']:+.1f} / {r['last_failure_s']:+.1f}"
        lines.append(
            f"| {label} | {r['requests']} | {r['statuses']} | {span} | {r['p99_before_ms']} | "
            f"{r['p99_first_10s_after_ms']} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} |"
        )
    return [*lines, ""]


def _soak(data: dict) -> list[str]:
    p99 = data["p99_ms_by_minute"]
    growth, drift = data["rss_growth"], data["p99_last_vs_second"]
    return [
        f"## Soak: {data['minutes']:g} minutes of mixed load",
        "",
        _machine(data["machine"]),
        "",
        f"Command: `python -m benchmarks soak`. One replica serving cnn and MiniLM; open loop, Poisson, "
        f"{data['rate']:.0f} req/s of a fixed mix sent in turn ({data['mix']['cnn_json']} cnn JSON, "
        f"{data['mix']['cnn_binary']} cnn binary, {data['mix']['minilm_json']} MiniLM text, {data['mix']['bad']} "
        "planted bad requests: malformed JSON, a wrong shape, an unknown model), every status checked against "
        "what its request should get; the replica's RSS sampled every 5 s.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        _row(
            "no answer but the expected (the planted bad requests' 4xx)",
            f"{data['unexpected']} unexpected of {data['requests']} ({data['planted_bad']} planted bad); "
            f"replica replaced: {'yes' if data['replica_replaced'] else 'no'}",
            data["unexpected"] <= targets.SOAK_UNEXPECTED and not data["replica_replaced"],
        ),
        _row(
            f"replica RSS growth after the first minute at most {targets.SOAK_RSS_GROWTH:.0%}",
            f"{data['rss_bytes_after_minute_1'] / 2**20:.0f} -> {data['rss_bytes_end'] / 2**20:.0f} MiB ({growth:+.1%})"
            if growth is not None
            else "no reading",
            growth is not None and growth <= targets.SOAK_RSS_GROWTH,
        ),
        _row(
            f"p99 of the last minute at most {targets.SOAK_P99_DRIFT:.0%} above the second minute's",
            f"{p99[-1]:.1f} vs {p99[1]:.1f} ms (x{drift:.3f})" if drift is not None else "too short",
            drift is not None and drift <= 1 + targets.SOAK_P99_DRIFT,
        ),
        "",
        f"p99 by minute (ms, good requests, from each request's scheduled time): {_series(p99)}.",
        *_soak_split(data),
        "",
    ]


def _series(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _soak_split(data: dict) -> list[str]:
    """The p99 split into the generator's lag and the server's time (runs from before these were kept lack them)."""
    if "server_p99_ms_by_minute" not in data:
        return []
    lines = [
        "",
        f"Of that, the server's time (sent -> answered), p99 by minute: {_series(data['server_p99_ms_by_minute'])};",
        f"the generator's send lag (scheduled -> sent), p99 by minute: {_series(data['send_lag_p99_ms_by_minute'])}.",
    ]
    if data.get("generator_behind"):
        lines.append("The generator fell behind its schedule (send-lag p99 over 2 ms): it shares the 2 cores.")
    if "replica_cpu_ms_per_request_by_minute" in data:
        cpu = data["replica_cpu_ms_per_request_by_minute"]
        lines += [
            "",
            f"The replica's CPU per request by minute (ms; the same mix each minute, so it follows the shared "
            f"machine's speed, or a replica doing more as it ages): {', '.join(f'{v:.2f}' for v in cpu)}."
            + (
                f" Trend of the p99 from the second minute on: {data['p99_trend_per_minute']:+.1%} a minute."
                if data.get("p99_trend_per_minute") is not None
                else ""
            ),
            "",
            "CPU seconds by minute, by process group:",
            "",
            "| group | " + " | ".join(f"min {m + 1}" for m in range(len(cpu))) + " |",
            "|---|" + "---:|" * len(cpu),
            *(f"| {g} | " + " | ".join(f"{v:.1f}" for v in values) + " |" for g, values in _cpu_groups(data)),
        ]
    return lines


def _cpu_groups(data: dict) -> list[tuple[str, list[float]]]:
    """The soak's CPU by group, Ray's own processes summed into one row."""
    groups: dict[str, list[float]] = {}
    for group, values in data["cpu_s_by_minute"].items():
        name = "ray (GCS, raylet, dashboard, agents)" if group.startswith("ray ") else group
        groups[name] = [a + b for a, b in zip(groups.get(name, [0.0] * len(values)), values, strict=True)]
    return sorted(groups.items())

"""`python -m benchmarks autoscale`: memory-aware autoscaling under a load ramp. The cnn deployment with
the memory-aware policy and a declared memory budget; open-loop load rising from 10% to 200% of one
replica's capacity, then held at 200%; the replica count sampled twice a second.

Reported: the memory-permitted replica count and how long after the ramp started it was reached, the
highest count seen (it must not pass the memory limit), replicas killed for memory (Ray's OOM killer in
the logs), requests lost (anything but 200 or 503), and the p99 of the hold phase beside what
`trtserve capacity plan` predicts for that many replicas at that rate.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import targets
from benchmarks.harness import ROOT, ensure_model, json_request
from benchmarks.rendering import machine_line, table_row
from runtime.capacity.calibrate import calibrate
from runtime.capacity.latency_profile import batch_seconds, profile
from runtime.capacity.load_generator import NOT_SENT, open_loop
from runtime.capacity.local_server import HOST, PORT, serve_config
from runtime.capacity.plan import HttpPath, Replica
from runtime.diagnostics import machine
from runtime.serve.launcher import LocalServe

APP = "autoscale"


def replica_count(server: LocalServe, app: str = APP) -> int:
    """Replicas of the app's deployment running now, among the processes this server started."""
    return len(server.replicas(app))


def _config(path: Path, repository: Path, replica_mb: float, budget_replicas: int, max_replicas: int) -> Path:
    args = {
        "repository": str(repository),
        # Short queues, so overload is answered with 503 within a few batches rather than held for seconds.
        "models": [{"name": "cnn", "max_queued_rows": 128}],
        "max_ongoing_requests": 128,
        "placement": {"host_mb": replica_mb, "headroom": 0.0},
        "ray_actor_options": {"num_cpus": 0.5},  # so that memory, not Ray's CPU accounting, is the limit
        "autoscaling": {
            "min_replicas": 1,
            "max_replicas": max_replicas,
            "target_ongoing_requests": 4,
            "upscale_delay_s": 1,
            "downscale_delay_s": 10,
            "look_back_period_s": 2,
            "memory_budget_mb": replica_mb * budget_replicas + replica_mb / 2,
            "headroom": 0.0,
        },
    }
    return serve_config(path, args, name=APP)


async def _ramp(request: bytes, low: float, high: float, ramp_s: float, hold_s: float, step_s: float = 2.0):
    """Open loop in steps of `step_s` from `low` to `high` requests/s over `ramp_s`, then `hold_s` at `high`."""
    phases = []
    steps = max(1, int(ramp_s / step_s))
    for i in range(steps):
        rate = low + (high - low) * i / max(1, steps - 1)
        phases.append(("ramp", rate, await open_loop(HOST, PORT, request, rate, step_s, seed=i, max_connections=4096)))
    phases.append(("hold", high, await open_loop(HOST, PORT, request, high, hold_s, seed=99, max_connections=4096)))
    return phases


def measure(repository: Path, results: Path, slo_p99_ms: float = 50.0, ramp_s: float = 30.0, hold_s: float = 30.0):
    repository = repository.resolve()
    cnn, _ = ensure_model(repository, ROOT / "configs/models/cnn.yaml")
    work = Path(tempfile.mkdtemp(prefix="trtserve-autoscale-"))
    engine_profile = profile(cnn)
    seconds = batch_seconds(engine_profile)
    # A cnn replica measures ~200-300 MiB; 600 MiB each and a budget of three keeps the limit independent of
    # this machine's figures, and Ray's own max_replicas (6) out of the way.
    replica_mb, budget_replicas, ray_max = 600.0, 3, 6
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    request = json_request("/v2/models/cnn/infer", {"image": image})
    config = _config(work / "autoscale.yaml", repository, replica_mb, budget_replicas, ray_max)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    with LocalServe(config, log_path=work / "serve.log") as server:
        url = server.url
        # One replica's capacity: the closed-loop saturation throughput of the one replica running now,
        # measured before the policy has had time to add another (5 s).
        http_report = calibrate(url, "cnn", request, seconds, window_s=4.0)
        capacity = http_report["saturation"]["rps"]
        deadline = time.monotonic() + 120
        while replica_count(server) > 1 and time.monotonic() < deadline:  # let it settle back to one
            time.sleep(1)
        started = time.monotonic()

        def watch() -> None:
            while not stop.is_set():
                samples.append((round(time.monotonic() - started, 2), replica_count(server)))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        phases = asyncio.run(_ramp(request, 0.1 * capacity, 2.0 * capacity, ramp_s, hold_s))
        ended = time.monotonic() - started
        deadline = time.monotonic() + 120
        while replica_count(server) > 1 and time.monotonic() < deadline:
            time.sleep(1)
        down_after = time.monotonic() - started - ended
        stop.set()
        watcher.join()
    log = (work / "serve.log").read_text()
    statuses: dict[str, int] = {}
    for _, _, result in phases:
        for status, count in result.summary()["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    hold = phases[-1][2].summary()
    limit = budget_replicas
    reached = next((t for t, n in samples if n >= limit), None)
    http = HttpPath.from_report(http_report)
    predicted = Replica(seconds, http, 64, 2.0, replicas=limit).p99_ms(2.0 * capacity)
    report = {
        "benchmark": "autoscale",
        "machine": machine.describe(),
        "one_replica_capacity_rps": capacity,
        "ramp": {"from_rps": round(0.1 * capacity, 1), "to_rps": round(2 * capacity, 1), "seconds": ramp_s},
        "hold": {"rps": round(2 * capacity, 1), "seconds": hold_s, **{k: hold[k] for k in hold if k != "statuses"}},
        "replica_mb": replica_mb,
        "memory_budget_mb": replica_mb * budget_replicas + replica_mb / 2,
        "memory_permitted_replicas": limit,
        "ray_max_replicas": ray_max,
        "reached_limit_after_s": reached,
        "max_replicas_seen": max(n for _, n in samples),
        "back_to_one_after_load_s": round(down_after, 1),
        "killed_for_memory": log.count("OutOfMemoryError") + log.count("low on memory"),
        "statuses": statuses,
        "lost": sum(v for k, v in statuses.items() if k not in ("200", "503", str(NOT_SENT))),
        "not_sent": statuses.get(str(NOT_SENT), 0),  # the generator's connection limit, not the server
        "hold_p99_ms": hold["p99_ms"],
        "predicted_p99_ms_for_limit": round(predicted, 2),
        "slo_p99_ms": slo_p99_ms,
        "samples": samples,
        "phases": [{"phase": p, "rate": round(r, 1), **res.summary()} for p, r, res in phases],
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "autoscale.json").write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"replicas reached {report['max_replicas_seen']} (memory limit {limit}) after {reached} s; lost "
        f"{report['lost']}; hold p99 {hold['p99_ms']:.1f} ms (plan for {limit} replicas: {predicted:.1f} ms)",
        file=sys.stderr,
    )
    return report


def render(data: dict) -> list[str]:
    limit = data["memory_permitted_replicas"]
    reached = data["reached_limit_after_s"]
    not_sent = f" ({data['not_sent']} not sent: the generator's connection limit)" if data.get("not_sent") else ""
    return [
        "## Memory-aware autoscaling under a load ramp",
        "",
        machine_line(data["machine"]),
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
        table_row(
            f"replicas reach the memory-permitted maximum within {targets.AUTOSCALE_REACH_S:.0f} s",
            f"{limit} reached after {reached} s"
            if reached is not None
            else f"not reached (max {data['max_replicas_seen']})",
            reached is not None and reached <= targets.AUTOSCALE_REACH_S,
        ),
        table_row("never beyond it", f"max seen {data['max_replicas_seen']}", data["max_replicas_seen"] <= limit),
        table_row(
            "no replica killed for memory", f"{data['killed_for_memory']} in the logs", data["killed_for_memory"] == 0
        ),
        table_row("no request lost (only 200 or 503)", f"statuses {data['statuses']}{not_sent}", data["lost"] == 0),
        table_row(
            f"steady-state p99 within what `plan` predicts for {limit} replicas (each on cores of its own)",
            f"{data['hold_p99_ms']:.1f} ms vs predicted {data['predicted_p99_ms_for_limit']:.1f} ms",
            data["hold_p99_ms"] <= data["predicted_p99_ms_for_limit"],
        ),
        "",
        f"Back to one replica {data['back_to_one_after_load_s']:.0f} s after the load ended; "
        f"{data['machine']['cores']} cores shared by every replica, the ingress and the load generator.",
        "",
    ]


def add_parser(sub) -> None:
    p = sub.add_parser("autoscale", help="memory-aware autoscaling of cnn under a 10%%->200%% load ramp")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--ramp", type=float, default=30.0, help="seconds from 10%% to 200%% of one replica")
    p.add_argument("--hold", type=float, default=30.0, help="seconds held at 200%%")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))


def run(args) -> None:
    measure(args.repository, args.results, ramp_s=args.ramp, hold_s=args.hold)

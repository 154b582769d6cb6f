"""`trtserve capacity SUBCOMMAND`: each an `add_parser`/`run` pair over this package's library functions,
which it imports when it runs (so `trtserve --help` loads none of them). `python -m benchmarks` offers
the same pairs under its own name.

profile VERSION_DIR   engine latency and throughput against batch size, and memory (in-process)
calibrate --model M   what the HTTP path costs a replica, against a running server
simulate --model M    one configuration's latency at a rate, simulated from profile and calibration
plan --model M        the cheapest replicas x batch limit meeting a p99 SLO at a rate (simulated)
validate --model M    predict the max rate under a p99 SLO and the p99 at 70% of it, then measure both
load --model M        closed-loop concurrency or open-loop rate sweeps against an endpoint
pack --model M        how many replicas of a model fit this machine (GPU or host), then run that many
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path("capacity")  # reports, read back by the next step (profile -> calibrate -> plan)


@dataclass(frozen=True)
class Subcommand:
    add_parser: Callable[[Any], None]  # given argparse's subparsers action
    run: Callable[[argparse.Namespace], None]


# --- profile ---------------------------------------------------------------------------------------------


def _sizes(text: str) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (item.split("=", 1) for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DIM=SIZE[,DIM=SIZE...], got {text!r}") from None


def _profile_parser(sub) -> None:
    p = sub.add_parser("profile", help="engine latency and throughput against batch size, and memory")
    p.add_argument("version_dir", type=Path)
    p.add_argument("--backend", default="auto")
    p.add_argument("--sweep", help="also sweep this dynamic dim (e.g. seq)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--sizes", type=_sizes, help="other dims at these sizes instead of opt, e.g. seq=12")
    p.add_argument("--results", type=Path, default=RESULTS)


def _profile(args) -> None:
    from runtime.capacity.latency_profile import profile

    report = profile(args.version_dir, args.backend, args.sweep, args.repeats, sizes=args.sizes)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"profile-{report['model']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    for point in report["points"]:
        print(
            f"{point['sizes']}: median {point['median_ms']:.3f} ms "
            f"(p10 {point['p10_ms']:.3f}, p90 {point['p90_ms']:.3f}), {point['rows_per_s']:.0f} rows/s"
        )
    print(f"memory: {report['memory']}; written to {out}")


# --- calibrate -------------------------------------------------------------------------------------------


def _calibrate_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="measure the HTTP path's own cost against a running server (for plan)")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--window", type=float, default=8.0, help="seconds per run (stall runs: three times that)")
    p.add_argument("--results", type=Path, default=RESULTS)


def _calibrate(args) -> None:
    from runtime.capacity import latency_profile, load_sweep
    from runtime.capacity.calibrate import calibrate, write

    seconds = latency_profile.batch_seconds(latency_profile.read(args.results, args.model))
    body, headers = load_sweep.request_body(args.url, args.model)
    request = load_sweep.build(args.url, f"/v2/models/{args.model}/infer", body, headers)
    report = calibrate(args.url, args.model, request, seconds, args.window)
    path = write(report, args.results)
    sat = report["saturation"]
    print(
        f"{args.model}: {report['per_request_ms']:.3f} ms a request and {report['per_call_ms']:.3f} ms an engine "
        f"call on the replica's event loop (saturation {sat['rps']:.0f} req/s at {sat['rows_per_engine_call']} "
        f"rows a call), {report['floor_p50_ms']:.2f} ms p50 / {report['floor_p99_ms']:.2f} ms p99 outside the "
        f"replica; written to {path}"
    )


# --- simulate and plan: the same two measurements, one configuration or every candidate ---------------------


def _http_overhead_argument(p) -> None:
    p.add_argument(
        "--http-overhead-ms",
        type=float,
        help="what-if: this per-request cost instead of the one `calibrate` measured (results/http-MODEL.json)",
    )


def _planning_inputs(args):
    """The engine's seconds per batch size and the HTTP path's costs, as `profile` and `calibrate` wrote them."""
    from runtime.capacity import latency_profile
    from runtime.capacity.plan import HttpPath

    seconds = latency_profile.batch_seconds(latency_profile.read(args.results, args.model))
    if args.http_overhead_ms is not None:
        return seconds, HttpPath.fixed(args.http_overhead_ms)
    measured = args.results / f"http-{args.model}.json"
    if not measured.exists():
        raise SystemExit(
            f"{measured} not found: run `trtserve capacity calibrate --model {args.model}` against a "
            "running server first (or give --http-overhead-ms)"
        )
    return seconds, HttpPath.read(measured)


def _simulate_parser(sub) -> None:
    p = sub.add_parser("simulate", help="one configuration's latency at a rate, simulated from profile and calibration")
    p.add_argument("--model", required=True)
    p.add_argument("--rate", type=float, required=True, help="requests/s to serve")
    p.add_argument("--max-batch-size", type=int, required=True)
    p.add_argument("--max-queue-delay-ms", type=float, default=0.0)
    p.add_argument("--replicas", type=int, default=1)
    _http_overhead_argument(p)
    p.add_argument("--results", type=Path, default=RESULTS)


def _simulate(args) -> None:
    from runtime.capacity.plan import Replica

    seconds, http = _planning_inputs(args)
    replica = Replica(seconds, http, args.max_batch_size, args.max_queue_delay_ms, args.replicas)
    result = replica.simulate(args.rate)
    report = {
        "model": args.model,
        "rate": args.rate,
        "replicas": args.replicas,
        "max_batch_size": args.max_batch_size,
        "max_queue_delay_ms": args.max_queue_delay_ms,
        "capacity_rps": round(replica.capacity(), 1),
        **{f"p{q}_ms": round(result.percentile_ms(q), 3) for q in (50, 90, 99)},
        "rows_per_engine_call": round(float(result.batch_sizes.mean()), 2),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"simulate-{args.model}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{args.model}: {args.replicas} replica(s), max_batch_size {args.max_batch_size}, delay "
        f"{args.max_queue_delay_ms:g} ms at {args.rate:g} req/s: p50 {report['p50_ms']:.1f} ms, p99 "
        f"{report['p99_ms']:.1f} ms, {report['rows_per_engine_call']} rows per engine call (capacity at full "
        f"batches {report['capacity_rps']:.0f} req/s); written to {out}"
    )


def _plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="cheapest replicas x batch limit meeting a p99 SLO at a rate (simulated)")
    p.add_argument("--model", required=True)
    p.add_argument("--rate", type=float, required=True, help="requests/s to serve")
    p.add_argument("--slo-p99-ms", type=float, required=True)
    _http_overhead_argument(p)
    p.add_argument("--max-replicas", type=int, default=4)
    p.add_argument("--results", type=Path, default=RESULTS)


def _plan(args) -> None:
    from runtime.capacity.plan import plan

    seconds, http = _planning_inputs(args)
    result = plan(seconds, args.rate, args.slo_p99_ms, http, args.max_replicas)
    (args.results / f"plan-{args.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    if result["plan"] is None:
        raise SystemExit(
            f"no configuration up to {args.max_replicas} replicas meets p99 <= {args.slo_p99_ms} ms "
            f"at {args.rate} req/s"
        )
    best = result["plan"]
    print(
        f"{args.model}: {best['replicas']} replica(s), max_batch_size {best['max_batch_size']}: predicted "
        f"max {best['max_rps']:.0f} req/s within p99 {args.slo_p99_ms} ms; p99 {best['p99_ms_at_rate']:.1f} ms "
        f"at {args.rate:.0f} req/s (HTTP path {result['http_per_request_ms']:.3f} ms a request in the replica, "
        f"{result['http_floor_p50_ms']:.2f} ms outside it)"
    )
    for point in result["curve"]:
        print(f"  {point['rps']:.0f} req/s -> p99 {point['p99_ms']:.1f} ms")


# --- validate --------------------------------------------------------------------------------------------


def _validate_parser(sub) -> None:
    p = sub.add_parser("validate", help="predict max rate under a p99 SLO and p99 at 70%%, then measure both")
    p.add_argument("--model", required=True)
    p.add_argument("--slo-p99-ms", type=float, required=True)
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--version", default="latest")
    p.add_argument("--url", help="use this running server instead of starting one")
    p.add_argument("--window", type=float, default=10.0, help="seconds per open-loop probe")
    p.add_argument("--results", type=Path, default=RESULTS)


def _validate(args) -> None:
    from runtime.capacity.validate import validate
    from runtime.engine.repository import version_dir

    report = validate(
        version_dir(args.repository, args.model, args.version), args.slo_p99_ms, args.results, args.url, args.window
    )
    p, m, e = report["predicted"], report["measured"], report["relative_error"]
    print(
        f"{args.model} (1 replica, max_batch_size {report['config']['max_batch_size']}, SLO p99 "
        f"{args.slo_p99_ms:g} ms): max rate predicted {p['max_rps']:.0f} vs measured {m['max_rps']:.0f} req/s "
        f"({e['max_rps']:+.1%}); p99 at {m['at_rps']:.0f} req/s predicted {p['p99_ms']:.1f} vs measured "
        f"{m['p99_ms']:.1f} ms ({e['p99_ms']:+.1%}); written to {args.results / 'validate.json'}"
    )


# --- load ------------------------------------------------------------------------------------------------


def _numbers(kind):
    return lambda text: [kind(x) for x in text.split(",")]


def _load_parser(sub) -> None:
    p = sub.add_parser("load", help="closed-loop concurrency or open-loop rate sweep against an endpoint")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", type=_numbers(int), help="e.g. 1,8,32")
    p.add_argument("--rate", type=_numbers(float), help="requests/s, e.g. 100,200")
    p.add_argument("--constant", action="store_true", help="evenly spaced sends instead of Poisson arrivals")
    p.add_argument("--binary", action="store_true", help="binary tensor data instead of JSON")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--body", type=Path, help="send this file as the request body instead of generated data")
    p.add_argument("--window", type=float, default=5.0, help="seconds per measurement window")
    p.add_argument("--results", type=Path, default=RESULTS)


def _load(args) -> None:
    from runtime.capacity.load_sweep import build, request_body, sweep

    if not (args.concurrency or args.rate):
        raise SystemExit("load: give --concurrency and/or --rate")
    if args.body:
        body, headers = args.body.read_bytes(), {"Content-Type": "application/json"}
    else:
        body, headers = request_body(args.url, args.model, args.batch, binary=args.binary)
    request = build(args.url, f"/v2/models/{args.model}/infer", body, headers)
    report = sweep(
        args.url, request, args.results, args.model, args.concurrency, args.rate, not args.constant, args.window
    )
    for p in report["points"]:
        label = f"c={p['concurrency']}" if p["concurrency"] else f"rate={p['rate']:g}/s"
        print(
            f"{label}: {p['throughput']:.1f} req/s, p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, "
            f"send lag p99 {p['send_lag_p99_ms']:.2f} ms, {'stable' if p['stable'] else 'NOT stable'} "
            f"after {p['windows']} windows{', generator fell behind' if p['generator_behind'] else ''}"
        )


# --- pack ------------------------------------------------------------------------------------------------


def _pack_parser(sub) -> None:
    p = sub.add_parser("pack", help="how many replicas of a model fit this machine (GPU or host), then run that many")
    p.add_argument("--model", required=True)
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--backend", default="auto")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--headroom", type=float, default=0.2)
    p.add_argument("--max-replicas", type=int, default=8, help="run at most this many even if more fit")
    p.add_argument("--duration", type=float, default=10.0, help="seconds every replica runs full batches")
    p.add_argument("--pressure", action="store_true", help="GPU only: also check the batch step-down")
    p.add_argument("--results", type=Path, default=RESULTS)


def _pack(args) -> None:
    from runtime.capacity.replica_packing import pack, pressure
    from runtime.engine.repository import version_dir

    report = pack(
        args.repository, args.model, args.backend, args.max_batch_size, args.headroom, args.max_replicas, args.duration
    )
    if args.pressure:
        batch = report["need"]["models"][args.model]["max_batch_size"]
        report["pressure"] = pressure(version_dir(args.repository, args.model), args.backend, batch)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"pack-{args.model}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    need, resource = report["need"], report["resource"]
    per = need["device_bytes"] if resource == "gpu" else need["host_bytes"]
    print(
        f"{args.model} ({report['backend']}): a replica uses {per / 2**20:.0f} MiB of {resource} memory; "
        f"options {report['actor_options']}; {report['replicas_fit']} fit, ran {report['replicas_run']}: "
        f"{len(report['workers'])} finished, {report['rows_per_s_total']:.0f} rows/s together"
    )
    for failure in report["failures"]:
        print(f"  a replica failed: {failure}")
    if "pressure" in report:
        p = report["pressure"]
        print(f"pressure: max_batch_size {p['configured']} -> {p['under_pressure']} -> {p['recovered']}")
    print(f"written to {out}")
    if report["failures"]:
        raise SystemExit(1)


SUBCOMMANDS = {
    "profile": Subcommand(_profile_parser, _profile),
    "calibrate": Subcommand(_calibrate_parser, _calibrate),
    "simulate": Subcommand(_simulate_parser, _simulate),
    "plan": Subcommand(_plan_parser, _plan),
    "validate": Subcommand(_validate_parser, _validate),
    "load": Subcommand(_load_parser, _load),
    "pack": Subcommand(_pack_parser, _pack),
}

"""python -m benchmarks convert|serving|profile|calibrate|plan|validate|compare|autoscale|pack|load|generator|report"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _sizes(text: str) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (item.split("=", 1) for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DIM=SIZE[,DIM=SIZE...], got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="time `convert build` end to end")
    c.add_argument("configs", nargs="+", type=Path)
    c.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    c.add_argument("--repeats", type=int, default=1)
    s = sub.add_parser("serving", help="issue 3's serving targets against a naive Ray Serve deployment")
    s.add_argument("--repository", type=Path, default=Path("model_repository"))
    s.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    s.add_argument("--duration", type=float, default=10.0, help="seconds measured per load point")
    p = sub.add_parser("profile", help="engine latency and throughput against batch size, and memory")
    p.add_argument("version_dir", type=Path)
    p.add_argument("--backend", default="auto")
    p.add_argument("--sweep", help="also sweep this dynamic dim (e.g. seq)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--sizes", type=_sizes, help="other dims at these sizes instead of opt, e.g. seq=12")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    ca = sub.add_parser("calibrate", help="measure the HTTP path's own cost against a running server (for plan)")
    ca.add_argument("--url", default="http://127.0.0.1:8000")
    ca.add_argument("--model", required=True)
    ca.add_argument("--window", type=float, default=8.0, help="seconds per run")
    ca.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    pl = sub.add_parser("plan", help="cheapest replicas x batch limit meeting a p99 SLO at a rate (simulated)")
    pl.add_argument("--model", required=True)
    pl.add_argument("--rate", type=float, required=True, help="requests/s to serve")
    pl.add_argument("--slo-p99-ms", type=float, required=True)
    pl.add_argument(
        "--http-overhead-ms",
        type=float,
        help="what-if: this per-request cost instead of the one `calibrate` measured (results/http-MODEL.json)",
    )
    pl.add_argument("--max-replicas", type=int, default=4)
    pl.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    v = sub.add_parser("validate", help="predict max rate under a p99 SLO and p99 at 70%%, then measure both")
    v.add_argument("--model", required=True)
    v.add_argument("--slo-p99-ms", type=float, required=True)
    v.add_argument("--repository", type=Path, default=Path("model_repository"))
    v.add_argument("--version", default="latest")
    v.add_argument("--url", help="use this running server instead of starting one")
    v.add_argument("--window", type=float, default=10.0, help="seconds per open-loop probe")
    v.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    co = sub.add_parser("compare", help="one workload against raw engine, naive Ray Serve, trtserve, torch eager")
    co.add_argument("--repository", type=Path, default=Path("model_repository"))
    co.add_argument("--duration", type=float, default=8.0, help="seconds measured per load point")
    co.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    au = sub.add_parser("autoscale", help="issue 5's ramp: memory-aware autoscaling of cnn under 10%%->200%% load")
    au.add_argument("--repository", type=Path, default=Path("model_repository"))
    au.add_argument("--ramp", type=float, default=30.0, help="seconds from 10%% to 200%% of one replica")
    au.add_argument("--hold", type=float, default=30.0, help="seconds held at 200%%")
    au.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    pk = sub.add_parser("pack", help="how many replicas of a model fit this machine (GPU or host), then run that many")
    pk.add_argument("--model", required=True)
    pk.add_argument("--repository", type=Path, default=Path("model_repository"))
    pk.add_argument("--backend", default="auto")
    pk.add_argument("--max-batch-size", type=int)
    pk.add_argument("--headroom", type=float, default=0.2)
    pk.add_argument("--max-replicas", type=int, default=8, help="run at most this many even if more fit")
    pk.add_argument("--duration", type=float, default=10.0, help="seconds every replica runs full batches")
    pk.add_argument("--pressure", action="store_true", help="GPU only: also check the batch step-down")
    pk.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    lo = sub.add_parser("load", help="closed-loop concurrency or open-loop rate sweep against an endpoint")
    lo.add_argument("--url", default="http://127.0.0.1:8000")
    lo.add_argument("--model", required=True)
    lo.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 1,8,32")
    lo.add_argument("--rate", type=lambda s: [float(x) for x in s.split(",")], help="requests/s, e.g. 100,200")
    lo.add_argument("--constant", action="store_true", help="evenly spaced sends instead of Poisson arrivals")
    lo.add_argument("--binary", action="store_true", help="binary tensor data instead of JSON")
    lo.add_argument("--batch", type=int, default=1)
    lo.add_argument("--body", type=Path, help="send this file as the request body instead of generated data")
    lo.add_argument("--window", type=float, default=5.0, help="seconds per measurement window")
    lo.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    g = sub.add_parser("generator", help="check the open-loop generator keeps its schedule (trivial endpoint)")
    g.add_argument("--rate", type=float, default=1500)
    g.add_argument("--duration", type=float, default=10.0)
    g.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    r = sub.add_parser("report", help="render RESULTS.md from a results directory")
    r.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    r.add_argument("--output", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args()
    if args.command == "convert":
        from benchmarks import convert_time

        convert_time.run(args.configs, args.results, args.repeats)
    elif args.command == "profile":
        from benchmarks.profile import profile

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
    elif args.command == "pack":
        from benchmarks.packing import pack, pressure
        from runtime.errors import TrtserveError
        from runtime.repository import version_dir

        try:
            report = pack(
                args.repository,
                args.model,
                args.backend,
                args.max_batch_size,
                args.headroom,
                args.max_replicas,
                args.duration,
            )
            if args.pressure:
                report["pressure"] = pressure(
                    version_dir(args.repository, args.model),
                    args.backend,
                    report["need"]["models"][args.model]["max_batch_size"],
                )
        except TrtserveError as e:
            raise SystemExit(f"pack: {e}") from None
        args.results.mkdir(parents=True, exist_ok=True)
        out = args.results / f"pack-{args.model}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        need = report["need"]
        resource = report["resource"]
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
    elif args.command == "plan":
        from benchmarks.plan import HttpPath, plan
        from benchmarks.profile import batch_seconds

        source = args.results / f"profile-{args.model}.json"
        if not source.exists():
            raise SystemExit(f"{source} not found: run `python -m benchmarks profile` for {args.model} first")
        if args.http_overhead_ms is not None:
            http = HttpPath.fixed(args.http_overhead_ms)
        else:
            measured = args.results / f"http-{args.model}.json"
            if not measured.exists():
                raise SystemExit(
                    f"{measured} not found: run `python -m benchmarks calibrate --model {args.model}` against a "
                    "running server first (or give --http-overhead-ms)"
                )
            http = HttpPath.read(measured)
        seconds = batch_seconds(json.loads(source.read_text()))
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
    elif args.command == "calibrate":
        from urllib.parse import urlparse

        from benchmarks import calibrate, load
        from benchmarks.profile import batch_seconds

        source = args.results / f"profile-{args.model}.json"
        if not source.exists():
            raise SystemExit(f"{source} not found: run `python -m benchmarks profile` for {args.model} first")
        body, headers = load.request_body(args.url, args.model)
        request = load.build(args.url, f"/v2/models/{args.model}/infer", body, headers)
        parsed = urlparse(args.url)
        seconds = batch_seconds(json.loads(source.read_text()))
        report = calibrate.calibrate(
            args.url, parsed.hostname, parsed.port or 80, args.model, request, seconds, args.window
        )
        path = calibrate.write(report, args.results)
        print(
            f"{args.model}: {report['per_request_ms']:.3f} ms a request in the replica outside the engine "
            f"(saturation {report['saturation']['rps']:.0f} req/s at {report['saturation']['rows_per_engine_call']} "
            f"rows a call), {report['floor_p50_ms']:.2f} ms p50 / {report['floor_p99_ms']:.2f} ms p99 outside "
            f"the replica; written to {path}"
        )
    elif args.command == "validate":
        from benchmarks.validate import validate
        from runtime.repository import version_dir

        report = validate(
            version_dir(args.repository, args.model, args.version), args.slo_p99_ms, args.results, args.url, args.window
        )
        p, m = report["predicted"], report["measured"]
        print(
            f"{args.model} (1 replica, max_batch_size {report['config']['max_batch_size']}, SLO p99 "
            f"{args.slo_p99_ms:g} ms): max rate predicted {p['max_rps']:.0f} vs measured {m['max_rps']:.0f} req/s "
            f"({report['relative_error']['max_rps']:+.1%}); p99 at {m['at_rps']:.0f} req/s predicted "
            f"{p['p99_ms']:.1f} vs measured {m['p99_ms']:.1f} ms ({report['relative_error']['p99_ms']:+.1%}); "
            f"written to {args.results / 'validate.json'}"
        )
    elif args.command == "load":
        from benchmarks import load

        if not (args.concurrency or args.rate):
            raise SystemExit("give --concurrency and/or --rate")
        if args.body:
            body, headers = args.body.read_bytes(), {"Content-Type": "application/json"}
        else:
            body, headers = load.request_body(args.url, args.model, args.batch, binary=args.binary)
        request = load.build(args.url, f"/v2/models/{args.model}/infer", body, headers)
        report = load.run(
            args.url, request, args.results, args.model, args.concurrency, args.rate, not args.constant, args.window
        )
        for p in report["points"]:
            label = f"c={p['concurrency']}" if p["concurrency"] else f"rate={p['rate']:g}/s"
            print(
                f"{label}: {p['throughput']:.1f} req/s, p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, "
                f"send lag p99 {p['send_lag_p99_ms']:.2f} ms, {'stable' if p['stable'] else 'NOT stable'} "
                f"after {p['windows']} windows{', generator fell behind' if p['generator_behind'] else ''}"
            )
    elif args.command == "generator":
        from benchmarks import generator_check

        report = generator_check.run(args.results, args.rate, args.duration)
        print(
            f"offered {report['offered_rps']:.0f}/s, achieved {report['achieved_rps']:.0f}/s, "
            f"send lag p99 {report['send_lag_p99_ms']:.2f} ms"
        )
    elif args.command == "compare":
        from benchmarks import compare

        report = compare.run(args.repository, args.results, args.duration)
        for row in report["table"]:
            ratio = f" ({row['vs_trtserve']:.2f}x trtserve)" if row["vs_trtserve"] else ""
            print(
                f"{row['contender']}, {row['where']}: {row['rps']:.0f} req/s{ratio}, "
                f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
            )
    elif args.command == "autoscale":
        from benchmarks import autoscale

        autoscale.run(args.repository, args.results, ramp_s=args.ramp, hold_s=args.hold)
    elif args.command == "serving":
        from benchmarks import serving

        serving.run(args.repository, args.results, args.duration)
    else:
        from benchmarks import report

        args.output.write_text(report.render(args.results, args.output))
        print(args.output)


if __name__ == "__main__":
    main()

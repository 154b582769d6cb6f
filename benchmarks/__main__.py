"""python -m benchmarks convert|serving|profile|plan|load|report ... (validate and compare: issue 4, to come)."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    pl = sub.add_parser("plan", help="cheapest replicas x batch limit meeting a p99 SLO at a rate (simulated)")
    pl.add_argument("--model", required=True)
    pl.add_argument("--rate", type=float, required=True, help="requests/s to serve")
    pl.add_argument("--slo-p99-ms", type=float, required=True)
    pl.add_argument(
        "--http-overhead-ms",
        type=float,
        required=True,
        help="the HTTP path's own cost per request, measured (e.g. c=1 p50 through the server minus "
        "the engine's batch-1 median)",
    )
    pl.add_argument("--max-replicas", type=int, default=4)
    pl.add_argument("--results", type=Path, default=Path("benchmarks/results"))
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
        import json

        from benchmarks.profile import profile

        report = profile(args.version_dir, args.backend, args.sweep, args.repeats)
        args.results.mkdir(parents=True, exist_ok=True)
        out = args.results / f"profile-{report['model']}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        for point in report["points"]:
            print(
                f"{point['sizes']}: median {point['median_ms']:.3f} ms "
                f"(p10 {point['p10_ms']:.3f}, p90 {point['p90_ms']:.3f}), {point['rows_per_s']:.0f} rows/s"
            )
        print(f"memory: {report['memory']}; written to {out}")
    elif args.command == "plan":
        import json

        from benchmarks.plan import plan
        from benchmarks.profile import batch_seconds

        source = args.results / f"profile-{args.model}.json"
        if not source.exists():
            raise SystemExit(f"{source} not found: run `python -m benchmarks profile` for {args.model} first")
        result = plan(
            batch_seconds(json.loads(source.read_text())),
            args.rate,
            args.slo_p99_ms,
            args.http_overhead_ms,
            args.max_replicas,
        )
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
            f"at {args.rate:.0f} req/s"
        )
        for point in result["curve"]:
            print(f"  {point['rps']:.0f} req/s -> p99 {point['p99_ms']:.1f} ms")
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
    elif args.command == "serving":
        from benchmarks import serving

        serving.run(args.repository, args.results, args.duration)
    else:
        from benchmarks import report

        args.output.write_text(report.render(args.results))
        print(args.output)


if __name__ == "__main__":
    main()

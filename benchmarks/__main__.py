"""python -m benchmarks convert|serving|report ... (profile, load, plan, validate and compare: issue 4)."""

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
    r = sub.add_parser("report", help="render RESULTS.md from a results directory")
    r.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    r.add_argument("--output", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args()
    if args.command == "convert":
        from benchmarks import convert_time

        convert_time.run(args.configs, args.results, args.repeats)
    elif args.command == "serving":
        from benchmarks import serving

        serving.run(args.repository, args.results, args.duration)
    else:
        from benchmarks import report

        args.output.write_text(report.render(args.results))
        print(args.output)


if __name__ == "__main__":
    main()

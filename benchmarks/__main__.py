"""python -m benchmarks convert|report ... (profile, load, plan, validate and compare arrive with issue 4)."""

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
    r = sub.add_parser("report", help="render RESULTS.md from a results directory")
    r.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    r.add_argument("--output", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args()
    if args.command == "convert":
        from benchmarks import convert_time

        convert_time.run(args.configs, args.results, args.repeats)
    else:
        from benchmarks import report

        args.output.write_text(report.render(args.results))
        print(args.output)


if __name__ == "__main__":
    main()

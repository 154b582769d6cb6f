"""python -m benchmarks SUBCOMMAND: each subcommand is a module of this package with an `add_parser`/`run`
pair; `run` is a thin layer over the module's library functions."""

from __future__ import annotations

import argparse
import importlib
import sys

from runtime.engine.errors import TrtserveError

# Subcommand -> module, in the order `make bench` runs them.
COMMANDS = {
    "convert": "convert_time",
    "generator": "generator_check",
    "serving": "serving",
    "profile": "profile",
    "calibrate": "calibrate",
    "plan": "plan",
    "validate": "validate",
    "compare": "compare",
    "autoscale": "autoscale",
    "rollout": "rollout",
    "monitor": "monitor",
    "batch": "batch",
    "reliability": "reliability",
    "soak": "soak",
    "pack": "packing",
    "load": "load",
    "gpu-check": "gpu_check",
    "report": "report",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {name: importlib.import_module(f"benchmarks.{module}") for name, module in COMMANDS.items()}
    for module in modules.values():
        module.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        modules[args.command].run(args)
    except TrtserveError as e:  # a model, artifact or config that is not there: one line, no traceback
        sys.exit(f"{args.command}: {e}")


if __name__ == "__main__":
    main()

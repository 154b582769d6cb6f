"""python -m benchmarks SUBCOMMAND: each subcommand is a module of this package with an `add_parser`/`run`
pair; `run` is a thin layer over the module's library functions. The capacity planning subcommands and
`gpu-check` are the product's (`trtserve capacity ...`, `trtserve gpu-check`), offered here too because
`make bench` runs them beside the rest."""

from __future__ import annotations

import argparse
import importlib
import sys

from runtime.capacity.subcommands import SUBCOMMANDS
from runtime.engine.errors import TrtserveError

# Subcommand -> its module (of this package unless dotted), in the order `make bench` runs them.
COMMANDS = {
    "convert": "convert_time",
    "generator": "generator_check",
    "serving": "serving",
    "profile": SUBCOMMANDS["profile"],
    "calibrate": SUBCOMMANDS["calibrate"],
    "simulate": SUBCOMMANDS["simulate"],
    "plan": SUBCOMMANDS["plan"],
    "validate": SUBCOMMANDS["validate"],
    "compare": "compare",
    "overhead": "overhead",
    "autoscale": "autoscale",
    "rollout": "rollout",
    "monitor": "monitor",
    "batch": "batch_inference",
    "reliability": "reliability",
    "soak": "soak",
    "pack": SUBCOMMANDS["pack"],
    "load": SUBCOMMANDS["load"],
    "gpu-check": "runtime.diagnostics.gpu_check",
    "report": "report",
}


def _command(target):
    """What has the subcommand's `add_parser` and `run`: a product subcommand, or a module."""
    if not isinstance(target, str):
        return target
    return importlib.import_module(target if "." in target else f"benchmarks.{target}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {name: _command(target) for name, target in COMMANDS.items()}
    for command in commands.values():
        command.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        sys.exit(commands[args.command].run(args))
    except TrtserveError as e:  # a model, artifact or config that is not there: one line, no traceback
        sys.exit(f"{args.command}: {e}")


if __name__ == "__main__":
    main()

"""The `convert` command: a thin layer over convert.build, convert.check and convert.inspect.

Exit codes (as docs/reference/cli.md lists them): 0 ok; 1 parity failed; 2 bad config, usage, artifact or
unexportable model; 3 a requested backend is unavailable here; 4 an internal error (a bug: please report it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from runtime.engine.credentials import ScrubCredentials, scrub
from runtime.engine.errors import TrtserveError

EXIT_INTERNAL = 4


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with one line, as argparse does
        self.print_usage(sys.stderr)
        self.exit(2, f"convert: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logs, exporter output and tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", help="errors only")

    parser = _Parser(prog="convert", description="PyTorch -> ONNX -> TensorRT, parity-checked and packaged.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("build", parents=[common], help="export, build engines, check parity, publish a version")
    b.add_argument("config", type=Path, help="model config, e.g. configs/models/minilm.yaml")
    b.add_argument(
        "--repository",
        default="model_repository",
        help="a directory, or s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (default: ./model_repository)",
    )
    b.add_argument("--version", type=int, help="version number (default: the next integer); never overwritten")
    b.add_argument(
        "--backend",
        choices=("onnxruntime", "tensorrt", "all"),
        default="all",
        help="all (default) builds what this machine can and says what it skipped",
    )
    b.add_argument("--precision", nargs="+", choices=("fp32", "fp16"), help="default: the config's precisions")
    b.add_argument("--samples", type=int, default=16, help="parity samples (default 16)")
    b.add_argument("--seed", type=int, default=0, help="seed of the random parity inputs")
    b.add_argument(
        "--if-changed",
        action="store_true",
        help="do nothing when the latest version was built from the same config and weights",
    )
    trt = b.add_argument_group("TensorRT")
    trt.add_argument("--workspace-mib", type=int, default=4096, help="builder workspace limit (default 4096)")
    trt.add_argument("--opt-level", type=int, default=3, choices=range(6), help="builder optimization level")
    trt.add_argument("--timing-cache", type=Path, help="default: ~/.cache/trtserve/timing-<gpu>-sm<cc>-trt<ver>.cache")

    c = sub.add_parser("check", parents=[common], help="verify checksums and paths, re-run parity here")
    c.add_argument("version_dir", help="a version directory, or its URI: s3://BUCKET/PREFIX/MODEL/VERSION")

    i = sub.add_parser("inspect", parents=[common], help="summarise an ONNX file, engine or version dir")
    i.add_argument("path", help="a file or version directory, or a version's s3:// or gs:// URI")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(ScrubCredentials())  # a repository URI's credentials never reach the log
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("trtserve").setLevel(level)
    try:
        return {"build": _build, "check": _check, "inspect": _inspect}[args.command](args)
    except TrtserveError as e:
        if args.verbose:
            logging.getLogger("trtserve").exception("traceback:")
        print(f"convert {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"convert {args.command}: interrupted; nothing was published", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: one line, the (scrubbed) traceback on request
        if args.verbose:
            logging.getLogger("trtserve").exception("traceback:")
        hint = "" if args.verbose else " (rerun with --verbose for the traceback)"
        print(scrub(f"convert {args.command}: internal error: {type(e).__name__}: {e}{hint}"), file=sys.stderr)
        return EXIT_INTERNAL


def _build(args) -> int:
    from convert.build import BuildOptions, build
    from convert.tensorrt_build import TensorRTOptions

    options = BuildOptions(
        repository=args.repository,
        version=args.version,
        backend=args.backend,
        precisions=tuple(args.precision) if args.precision else None,
        samples=args.samples,
        seed=args.seed,
        if_changed=args.if_changed,
        verbose=args.verbose,
        tensorrt=TensorRTOptions(args.workspace_mib, args.opt_level, args.timing_cache),
    )
    result = build(args.config, options)
    for line in result.skipped:
        print(f"note: {line}", file=sys.stderr)
    print(result.version_dir)
    return 0


def _check(args) -> int:
    from convert.check import check
    from convert.parity import format_table
    from runtime.engine.repository import local_version

    result = check(local_version(args.version_dir))
    if result.results:
        print(format_table(result.results))
    for line in result.skipped:
        print(f"skipped {line}")
    failures = [line for r in result.results for line in r.failures()]
    if failures:
        print("parity failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(
        f"{result.version_dir}: ok ({len(result.manifest.files)} files verified, "
        f"{len(result.results)} engines pass parity here)"
    )
    return 0


def _inspect(args) -> int:
    from convert.inspect import describe, render
    from runtime.engine.repository import local_version

    info = describe(local_version(args.path))
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0

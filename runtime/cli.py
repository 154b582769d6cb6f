"""The `trtserve` command.

trtserve serve CONFIG    serve a Ray Serve config on this machine in the foreground; Ctrl-C or
                         SIGTERM stops everything it started, and nothing else
trtserve demo CONFIG     serve the demo models, query them with tritonclient, print, stop
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from runtime.engine.errors import TrtserveError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with one line, as argparse does
        self.print_usage(sys.stderr)
        self.exit(2, f"trtserve: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trtserve", description="Serve trtserve model repositories on Ray Serve.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text in (
        ("serve", "serve a Ray Serve config on this machine until Ctrl-C"),
        ("demo", "serve the demo models, query them with tritonclient, stop"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", type=Path, help="a Ray Serve config, e.g. configs/serve/demo.yaml")
        p.add_argument("--log", type=Path, default=Path("serve.log"), help="serve run's output (default serve.log)")
        p.add_argument(
            "--ingress",
            choices=("haproxy", "proxy"),
            help="Ray's HAProxy (default, or $TRTSERVE_INGRESS) or its Python proxy",
        )
    return parser


def _interrupt(signum, frame) -> None:
    # Once: a second Ctrl-C must not cut the clean-up short and leave processes behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("\nstopping ...", flush=True)
    raise KeyboardInterrupt


def _serve(server) -> int:
    print(f"trtserve ready at {server.url} after {server.ready_after_s:.1f} s. Try:", flush=True)
    print(
        f"  curl -s {server.url}/v2/models/minilm/infer -H 'Content-Type: application/json' "
        """-d '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["Hello, world"]}]}'"""
    )
    print("Ctrl-C stops the server and everything it started.", flush=True)
    while server.process.poll() is None:
        time.sleep(1)
    print(f"serve run exited with {server.process.returncode}; see {server.log_path}", file=sys.stderr)
    return 1


def _demo(server) -> int:
    from runtime.serve.demo import query_demo_models

    query_demo_models(server)
    print("demo finished; stopping the server")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.config.is_file():
        print(f"trtserve {args.command}: error: {args.config}: no such file", file=sys.stderr)
        return 2
    from runtime.serve.launcher import LocalServe

    # Ctrl-C, and a SIGTERM from a supervisor, both stop everything this started; SIGINT is re-armed
    # because a shell that starts us in the background leaves it ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    server = LocalServe(args.config, ingress=args.ingress, log_path=args.log)
    print(f"starting {args.config} ({server.ingress} ingress); logs in {args.log} ...", flush=True)
    try:
        with server:
            return {"serve": _serve, "demo": _demo}[args.command](server)
    except KeyboardInterrupt:
        print("stopped", flush=True)
        return 0
    except (TrtserveError, RuntimeError, TimeoutError) as e:
        print(f"trtserve {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The `trtserve` command.

trtserve serve CONFIG    serve a Ray Serve config on this machine in the foreground; Ctrl-C or
                         SIGTERM stops everything it started, and nothing else
trtserve demo CONFIG     serve the demo models, query them over plain HTTP, print, stop
trtserve rollout ACTION MODEL ...
                         start, status, pause, resume, promote, rollback or history of a model's
                         rollout in a running application (--url, default http://127.0.0.1:8000)
trtserve batch MODEL[:VERSION] --input PATH --output DIR
                         batch inference on Ray Data into Parquet, resumable (--resume)
trtserve monitor report MODEL --capture DIR
                         captures joined with feedback labels: the metric per version and hour, label
                         coverage, drift of what was captured against the reference, plots
trtserve capacity profile | calibrate | simulate | plan | validate | load | pack ...
                         capacity planning: measure a model and its HTTP path, simulate, plan replicas and
                         batch limits for a p99 SLO at a rate, check the plan, pack replicas on a machine
trtserve gpu-check       the TensorRT and CUDA path on this machine's GPU, step by step (skips without one)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

from runtime.auth.tokens import SCOPES
from runtime.engine.credentials import install_scrubbing, scrub
from runtime.engine.errors import TrtserveError


class UsageError(TrtserveError):
    exit_code = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with one line, as argparse does
        self.print_usage(sys.stderr)
        self.exit(2, scrub(f"trtserve: error: {message}\n"))  # it may quote an argument: a repository URI


def _error(message: str) -> None:
    """One line on stderr, scrubbed of credentials: an error may quote a repository URI given to us."""
    print(scrub(message), file=sys.stderr, flush=True)


def _scrub_what_is_logged() -> None:
    """This command configures no logging of its own: what our modules and libraries log (WARNING and above)
    reaches stderr through Python's last-resort handler, which scrubs credentials from then on, as every
    message we print does. (Ray's loggers, in `batch`, write through handlers of their own, not this one.)"""
    if logging.lastResort is not None:
        install_scrubbing(logging.lastResort)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trtserve", description="Serve trtserve model repositories on Ray Serve.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text in (
        ("serve", "serve a Ray Serve config on this machine until Ctrl-C"),
        ("demo", "serve the demo models, query them (JSON and binary tensors), stop"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", type=Path, help="a Ray Serve config, e.g. configs/serve/demo.yaml")
        p.add_argument("--log", type=Path, default=Path("serve.log"), help="serve run's output (default serve.log)")
        p.add_argument(
            "--ingress",
            choices=("haproxy", "proxy"),
            help="Ray's HAProxy (default, or $TRTSERVE_INGRESS) or its Python proxy",
        )
        if name == "demo":
            _token_argument(p, "an infer token, where the config turns authentication on")
    _rollout_parser(sub)
    _token_parser(sub)
    _monitor_parser(sub)
    _batch_parser(sub)
    _capacity_parser(sub)
    _gpu_check_parser(sub)
    return parser


def _capacity_parser(sub) -> None:
    from runtime.capacity.subcommands import SUBCOMMANDS

    capacity = sub.add_parser("capacity", help="capacity planning: profile, calibrate, simulate, plan, validate, ...")
    subcommands = capacity.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for subcommand in SUBCOMMANDS.values():
        subcommand.add_parser(subcommands)


def _gpu_check_parser(sub) -> None:
    from runtime.diagnostics import gpu_check

    gpu_check.add_parser(sub)


def _token_argument(parser, help_text: str) -> None:
    parser.add_argument(
        "--token",
        default=os.environ.get("TRTSERVE_TOKEN"),
        help=f"bearer token: {help_text} (default $TRTSERVE_TOKEN)",
    )


def _token_parser(sub) -> None:
    p = sub.add_parser("token", help="a new bearer token, its digest appended to a tokens file")
    p.add_argument("scopes", nargs="+", choices=SCOPES, help="what the token may do")
    p.add_argument("--file", type=Path, required=True, help="the tokens file (auth.tokens_file); created if absent")


def _token(args) -> int:
    """Print a fresh token once (it is stored nowhere) and append its digest under each scope."""
    from runtime.auth.tokens import digest, new_token

    token = new_token()
    scopes = list(dict.fromkeys(args.scopes))  # each once, in the order given
    lines = "".join(f"{scope} {digest(token)}\n" for scope in scopes)
    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(lines)
    except OSError as e:
        _error(f"trtserve token: error: cannot write {args.file}: {e}")
        return 2
    print(token)
    print(f"appended {', '.join(scopes)} to {args.file}; the token is shown only now", file=sys.stderr)
    return 0


def _batch_parser(sub) -> None:
    p = sub.add_parser("batch", help="batch inference on Ray Data: input files -> Parquet predictions")
    p.add_argument("model", help="MODEL or MODEL:VERSION (default: the latest version)")
    p.add_argument("--repository", default="model_repository", help="a directory, s3:// or gs:// URI")
    p.add_argument("--input", required=True, help="a Parquet, JSON lines or .npy file or directory (or s3:// URI)")
    p.add_argument("--output", required=True, help="a directory for the Parquet predictions")
    p.add_argument("--format", choices=("parquet", "jsonl", "npy"), help="the input's (default: from its name)")
    p.add_argument("--id-column", default="id", help="the input's id column (default id)")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per Ray Data batch (default 1024)")
    p.add_argument("--workers", type=int, default=1, help="actors in the pool, each holding the model (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each worker reserves (default 0)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker reserves (default 1)")
    p.add_argument("--backend", default="auto", help="engine backend, as serving picks it (default auto)")
    p.add_argument("--max-errors", type=int, default=0, help="bad rows tolerated before the job fails (default 0)")
    p.add_argument("--rows-per-file", type=int, default=100_000, help="rows per output file at most (default 100000)")
    p.add_argument("--resume", action="store_true", help="finish a job that was stopped, skipping written rows")
    p.add_argument("--address", help="a Ray cluster (default: $RAY_ADDRESS, else a local Ray of its own)")


def _batch(args) -> int:
    from runtime.batch.job import BatchOptions, run

    name, _, version = args.model.partition(":")
    if version and not (version == "latest" or version.isdigit()):
        raise UsageError(f"{args.model}: expected MODEL or MODEL:VERSION (a positive integer or latest)")
    summary = run(
        BatchOptions(
            model=name,
            version=version or "latest",
            repository=args.repository,
            input=args.input,
            output=args.output,
            format=args.format,
            id_column=args.id_column,
            batch_size=args.batch_size,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
            backend=args.backend,
            max_errors=args.max_errors,
            rows_per_file=args.rows_per_file,
            resume=args.resume,
            address=args.address,
        )
    )
    for line in summary.lines():
        print(line)
    return 0


def _monitor_parser(sub) -> None:
    monitor = sub.add_parser("monitor", help="model quality from captures and feedback")
    actions = monitor.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = actions.add_parser("report", help="accuracy per version and hour, label coverage, drift, plots")
    p.add_argument("model")
    p.add_argument("--capture", type=Path, required=True, help="the capture destination (capture.destination)")
    p.add_argument("--since", help="only requests from then on: an ISO 8601 time, or a duration back (2h, 30m)")
    p.add_argument(
        "--repository",
        default="model_repository",
        help="a directory, s3:// or gs:// URI: where the versions' manifests and references are, for the metric "
        "and drift (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--plots", type=Path, help="write metric.png and drift.png here")


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    from datetime import datetime

    from runtime.rollout.client import seconds

    try:
        return time.time() - seconds(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r}: expected an ISO 8601 time or a duration like 2h") from None
    return moment.timestamp() if moment.tzinfo else moment.astimezone().timestamp()


def _monitor(args) -> int:
    from runtime.monitor.quality_report import ReportError, build_report, plot_report

    try:
        report = build_report(args.capture, args.model, _since(args.since), args.repository)
    except ReportError as e:
        raise UsageError(str(e)) from None
    if args.plots is not None:
        report["plots"] = [str(p) for p in plot_report(report, args.plots)]
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['model']}: captures in {report['capture']}")
    for version, entry in sorted(report["versions"].items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
        value = entry[entry["metric"]]
        shown = "no labels" if value is None else f"{entry['metric']} {value:.4f}"
        print(
            f"  v{version}: {entry['requests']} requests, {entry['labelled']} labelled "
            f"({entry['label_coverage']:.1%}), {shown}"
        )
        for hour, h in sorted(entry["hours"].items()):
            drifted = [t["name"] for t in h.get("drift", []) if t["drifted"]]
            metric = h[entry["metric"]]
            print(
                f"    {hour}:00  {h['requests']} requests, {h['labelled']} labelled, "
                f"{'-' if metric is None else f'{metric:.4f}'}; drift: {', '.join(drifted) or 'none'}"
            )
    for path in report.get("plots", []):
        print(f"  plot: {path}")
    return 0


def _steps(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of percents, e.g. 10,50,100"
        ) from None


def _duration(text: str) -> float:
    from runtime.rollout.client import seconds

    try:
        return seconds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _rollout_parser(sub) -> None:
    rollout = sub.add_parser("rollout", help="canary, blue-green and shadow rollouts of a served model")
    actions = rollout.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for action, help_text in (
        ("start", "start a rollout to version --to"),
        ("status", "where the rollout stands, per interval"),
        ("pause", "hold the routing as it is; no interval is judged"),
        ("resume", "go on from where it was paused"),
        ("promote", "make the candidate stable now"),
        ("rollback", "all traffic back to stable at once"),
        ("history", "every transition, with who, when and why"),
    ):
        p = actions.add_parser(action, help=help_text)
        p.add_argument("model")
        p.add_argument("--url", default="http://127.0.0.1:8000", help="the application (default %(default)s)")
        _token_argument(p, "an admin token, where the application authenticates")
        if action in ("status", "history"):
            p.add_argument("--json", action="store_true", help="one JSON object on stdout")
        if action == "rollback":
            p.add_argument("--reason", help="recorded in the history")
        if action == "start":
            p.add_argument("--to", required=True, help="the candidate version (in the repository)")
            p.add_argument("--strategy", choices=("canary", "bluegreen", "shadow"), default="canary")
            p.add_argument("--steps", type=_steps, help="canary weights, percent (default 10,50,100)")
            p.add_argument("--interval", type=_duration, dest="interval_s", help="per analysis interval (30s)")
            p.add_argument("--failure-limit", type=int, help="failed intervals in a row that roll back (2)")
            p.add_argument("--min-requests", type=int, help="candidate requests an interval needs (100)")
            p.add_argument("--max-error-ratio", type=float, help="the candidate's server errors (0.01)")
            p.add_argument("--max-p99-ratio", type=float, help="the candidate's p99 over stable's (1.5)")
            p.add_argument("--max-p99-ms", type=float, help="the candidate's p99, absolute (none)")
            p.add_argument("--min-agreement", type=float, help="outputs within tolerance (0.99)")
            p.add_argument("--shadow-percent", type=float, help="requests shadowed (shadow, bluegreen: 100)")
            p.add_argument(
                "--latency-budget-ms",
                type=float,
                help="gate: the candidate engine's p99 at the serving batch limit, from --profile (none)",
            )
            p.add_argument("--profile", type=Path, help="`trtserve capacity profile` output for the candidate")
            p.add_argument("--wait", action="store_true", help="until it ends: 0 promoted, 1 rolled back or refused")


def _rollout(args) -> int:
    from runtime.rollout import client

    if args.action in ("status", "history"):
        result = (
            client.status(args.url, args.model, token=args.token)
            if args.action == "status"
            else client.command(args.url, args.model, "history", token=args.token)
        )
        if args.json:
            print(json.dumps(result))
        elif args.action == "history":
            for event in result:
                print(
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(event['at']))}  {event['state']:<11} "
                    f"by {event['by']}: {event['reason']}"
                )
        else:
            print(_summary(result))
        return 0
    unsent = ("command", "action", "model", "url", "json", "wait", "token")
    options = {k: v for k, v in vars(args).items() if k not in unsent}
    if args.action == "start":
        options["profile"] = _profile(args.profile, args.latency_budget_ms)
    result = client.command(args.url, args.model, args.action, token=args.token, **options)
    print(_summary(result))
    if args.action == "start" and result.get("state") == "refused":
        return 1
    if getattr(args, "wait", False):
        result = client.wait(args.url, args.model, token=args.token)
        print(_summary(result))
        return 0 if result["state"] == "promoted" else 1
    return 0


def _profile(path: Path | None, budget_ms: float | None) -> dict | None:
    """The profile report a latency budget is judged on; a usage error when one is missing or unreadable."""
    if budget_ms is None:
        return None
    if path is None:
        raise UsageError("--latency-budget-ms needs --profile, a `trtserve capacity profile` report")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--profile {path}: {e}") from None


def _summary(status: dict) -> str:
    if not status.get("state"):
        return f"{status['model']}: version {status['stable']} serves everything; no rollout"
    line = (
        f"{status['model']}: {status['strategy']} {status['stable']} -> {status['candidate']}: {status['state']}, "
        f"candidate weight {status['weight']:g} %, serving {status['serving']}"
    )
    return line + (f" ({status['reason']})" if status.get("reason") else "")


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
    _error(f"serve run exited with {server.process.returncode}; see {server.log_path}")
    return 1


def _demo(server, token: str | None) -> int:
    from runtime.serve.demo import query_demo_models

    query_demo_models(server, token)
    print("demo finished; stopping the server")
    return 0


def main(argv: list[str] | None = None) -> int:
    _scrub_what_is_logged()
    args = _parser().parse_args(argv)
    if args.command in ("rollout", "monitor"):
        try:
            return _rollout(args) if args.command == "rollout" else _monitor(args)
        except TrtserveError as e:
            _error(f"trtserve {args.command} {args.action}: error: {e}")
            return e.exit_code
    if args.command == "batch":
        return _run_batch(args)
    if args.command == "token":
        return _token(args)
    if args.command == "capacity":
        return _capacity(args)
    if args.command == "gpu-check":
        from runtime.diagnostics import gpu_check

        return gpu_check.run(args)
    if not args.config.is_file():
        _error(f"trtserve {args.command}: error: {args.config}: no such file")
        return 2
    import yaml

    from runtime.serve.launcher import READY_TIMEOUT_S, LocalServe

    # Ctrl-C, and a SIGTERM from a supervisor, both stop everything this started; SIGINT is re-armed
    # because a shell that starts us in the background leaves it ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server = LocalServe(args.config, ingress=args.ingress, log_path=args.log)
    except (OSError, ValueError, yaml.YAMLError) as e:  # no such config, or one this launcher cannot serve
        _error(f"trtserve {args.command}: error: {e}")
        return 2
    print(f"starting {args.config} ({server.ingress} ingress); logs in {args.log} ...", flush=True)
    try:
        try:
            server.launch()
            server.wait_ready(READY_TIMEOUT_S)
            return _serve(server) if args.command == "serve" else _demo(server, args.token)
        except (TrtserveError, RuntimeError, TimeoutError) as e:  # DeployFailed: Serve gave up on an application
            # Said before the clean-up, which takes a while (Ray shuts down), and is why we exit.
            _error(f"trtserve {args.command}: error: {e}")
            return 1
        finally:
            server.stop()
    except KeyboardInterrupt:
        print("stopped", flush=True)
        return 0


def _capacity(args) -> int:
    from runtime.capacity.subcommands import SUBCOMMANDS

    try:
        SUBCOMMANDS[args.action].run(args)
    except TrtserveError as e:  # a model, artifact or config that is not there: one line, no traceback
        _error(f"trtserve capacity {args.action}: error: {e}")
        return e.exit_code
    return 0


def _run_batch(args) -> int:
    try:
        return _batch(args)
    except TrtserveError as e:
        _error(f"trtserve batch: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        print("trtserve batch: interrupted; run it again with --resume to finish", file=sys.stderr)
        return 130
    except Exception as e:  # Ray Data reports a worker's failure wrapped in its own exceptions
        cause = _user_error(e)
        reason = str(cause) if cause is not None else _raised_in_worker(e) or f"{type(e).__name__}: {_last_line(e)}"
        _error(f"trtserve batch: error: {reason}")
        return cause.exit_code if cause is not None else 1


def _user_error(error: BaseException) -> TrtserveError | None:
    """The TrtserveError a worker raised, found through Ray's wrappers (causes and `.cause`)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, TrtserveError):
            return error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def _raised_in_worker(error: BaseException) -> str | None:
    """Ray Data keeps a worker's exception only as its traceback's text: the message of the last
    trtserve error in it."""
    found = re.findall(r"^(?:runtime|convert)\.[\w.]+: (.+)$", str(error), flags=re.MULTILINE)
    return found[-1] if found else None


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else ""


if __name__ == "__main__":
    sys.exit(main())

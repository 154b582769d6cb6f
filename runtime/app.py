"""The Ray Serve application: `serve run configs/serve/<app>.yaml` (import_path runtime.app:build_app).

One deployment is the HTTP ingress and hosts every configured model in-process, with a dynamic batcher
per model: a request crosses one hop (proxy -> replica) and no second actor call. Replicas load and warm
up every model in their constructor, so Ray routes no traffic to a cold replica.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from runtime.handler import KServeHandler, Telemetry
from runtime.histograms import CumulativeHistogram, Publisher
from runtime.host import ModelHost, ModelOptions
from runtime.repository import version_dir

log = logging.getLogger("trtserve.server")

_MODEL_KEYS = {
    "intra_op_threads",
    "spin",
    "name",
    "version",
    "backend",
    "precision",
    "max_batch_size",
    "max_queue_delay_ms",
    "max_queued_rows",
    "timeout_s",
}
_APP_KEYS = {
    "repository",
    "models",
    "max_body_mb",
    "num_replicas",
    "autoscaling_config",
    "ray_actor_options",
    "max_ongoing_requests",
    "max_queued_requests",
    "log_level",
}
_LATENCY_BUCKETS_S = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]


class RayTelemetry(Telemetry):
    """Prometheus metrics through Ray's metrics system, in base units, labelled by model and version.
    Histograms are aggregated in the replica and published once a second (runtime/histograms.py)."""

    def __init__(self, publish_interval_s: float = 1.0) -> None:
        from ray.serve.metrics import Counter, Gauge

        tags = ("model", "version")
        self.requests = Counter("trtserve_requests", "Inference requests by HTTP status.", tag_keys=(*tags, "status"))

        def gauge(name: str, description: str, tag_keys: tuple[str, ...]) -> Gauge:
            return Gauge(name, description, tag_keys=tag_keys)

        def histogram(name: str, description: str, boundaries=_LATENCY_BUCKETS_S) -> CumulativeHistogram:
            return CumulativeHistogram(name, description, boundaries, tags, gauge)

        self.latency = histogram("trtserve_request_latency_seconds", "End-to-end latency in the replica.")
        self.queue = histogram("trtserve_queue_latency_seconds", "Time a request queued before the engine.")
        self.compute = histogram("trtserve_compute_latency_seconds", "Engine time of one engine call.")
        self.batch = histogram("trtserve_batch_size", "Rows per engine call.", [1, 2, 4, 8, 16, 32, 64, 128, 256])
        self.inflight = Gauge("trtserve_in_flight_requests", "Requests in the replica.", tag_keys=tags)
        self.warmup = Gauge("trtserve_warmup_seconds", "Warm-up time of the model.", tag_keys=tags)
        self._inflight: dict[tuple[str, str], int] = {}
        self.publisher = Publisher([self.latency, self.queue, self.compute, self.batch], publish_interval_s).start()

    @staticmethod
    def _tags(host: ModelHost) -> dict[str, str]:
        return {"model": host.name, "version": host.version}

    def request(self, host, status, seconds, queue_s, compute_s) -> None:
        if host is None:
            return
        tags = self._tags(host)
        self.requests.inc(1, {**tags, "status": str(status)})
        self.latency.observe(seconds, tags)
        if status == 200:
            self.queue.observe(queue_s, tags)

    def in_flight(self, host, delta) -> None:
        key = (host.name, host.version)
        self._inflight[key] = self._inflight.get(key, 0) + delta
        self.inflight.set(self._inflight[key], self._tags(host))

    def batch_done(self, host: ModelHost, rows: int, seconds: float, requests: int) -> None:
        tags = self._tags(host)
        self.batch.observe(rows, tags)
        self.compute.observe(seconds, tags)

    def warmed_up(self, host: ModelHost) -> None:
        self.warmup.set(host.warmup_s or 0.0, self._tags(host))


@serve.deployment(name="trtserve", max_ongoing_requests=512)
class KServeServer:
    def __init__(self, repository: str, models: list[dict], max_body_mb: float = 64) -> None:
        _log_like_ray_serve()
        telemetry = RayTelemetry()
        hosts = []
        for spec in models:
            options = ModelOptions(**{k: v for k, v in spec.items() if k not in ("name", "version")})
            host = ModelHost(version_dir(Path(repository), spec["name"], spec.get("version", "latest")), options)
            host.batch_observer = telemetry.batch_done
            host.warmup()
            telemetry.warmed_up(host)
            hosts.append(host)
        self.handler = KServeHandler(hosts, max_body_bytes=int(max_body_mb * 2**20), telemetry=telemetry)
        self._telemetry, self._hosts = telemetry, hosts

    def __del__(self) -> None:  # Ray Serve calls this when it stops the replica
        self._telemetry.publisher.stop()
        for host in self._hosts:
            host.close()

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        request_id = _ray_request_id()
        result = await self.handler.handle(request.method, request.url.path, request.headers, body, request_id)
        if request_id:  # Ray echoes X-Request-ID (or the one it generated) itself
            result.headers.pop("x-request-id", None)
        return Response(result.body, status_code=result.status, headers=result.headers)


def _ray_request_id() -> str | None:
    """The id Ray Serve gave this request (the client's X-Request-ID when it sent one), so our log lines
    and Ray's access log agree."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except (ImportError, AttributeError):
        return None


def _log_like_ray_serve() -> None:
    """Send the trtserve loggers through the replica's Serve handlers (JSON, per LoggingConfig)."""
    serve_logger = logging.getLogger("ray.serve")
    ours = logging.getLogger("trtserve")
    ours.handlers = list(serve_logger.handlers)
    ours.setLevel(serve_logger.level or logging.INFO)
    ours.propagate = False


def parse_args(args: dict[str, Any]) -> dict[str, Any]:
    """Validate the application's args with messages that say how to fix them."""
    unknown = set(args) - _APP_KEYS
    if unknown:
        raise ValueError(f"unknown application args {sorted(unknown)}; expected some of {sorted(_APP_KEYS)}")
    if "repository" not in args or "models" not in args:
        raise ValueError("application args need `repository` (a model repository path) and `models` (a list)")
    repository = Path(args["repository"]).expanduser().resolve()
    models = args["models"]
    if not isinstance(models, list) or not models:
        raise ValueError("`models` must be a non-empty list of {name, version, ...}")
    parsed = []
    for i, spec in enumerate(models):
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"models[{i}] needs a `name`")
        bad = set(spec) - _MODEL_KEYS
        if bad:
            raise ValueError(
                f"models[{i}] ({spec['name']}): unknown keys {sorted(bad)}; expected some of {sorted(_MODEL_KEYS)}"
            )
        version = spec.get("version", "latest")
        if version != "latest" and not (isinstance(version, int) and version > 0):
            raise ValueError(f"models[{i}] ({spec['name']}): version must be a positive integer or 'latest'")
        version_dir(repository, spec["name"], version)  # fails now, with the reason, if it does not exist
        parsed.append({**spec, "version": version})
    return {**args, "repository": str(repository), "models": parsed}


def build_app(args: dict[str, Any]) -> serve.Application:
    args = parse_args(args)
    options: dict[str, Any] = {
        "max_ongoing_requests": args.get("max_ongoing_requests", 512),
        "max_queued_requests": args.get("max_queued_requests", 1024),
    }
    if "autoscaling_config" in args:
        options["autoscaling_config"] = args["autoscaling_config"]
    else:
        options["num_replicas"] = args.get("num_replicas", 1)
    if "ray_actor_options" in args:
        options["ray_actor_options"] = args["ray_actor_options"]
    options["logging_config"] = {"encoding": "JSON", "log_level": args.get("log_level", "INFO")}
    return KServeServer.options(**options).bind(args["repository"], args["models"], args.get("max_body_mb", 64))

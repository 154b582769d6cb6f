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

from runtime import autoscaling
from runtime.handler import KServeHandler, Telemetry
from runtime.histograms import CumulativeHistogram, Publisher
from runtime.host import ModelHost, ModelOptions
from runtime.memory import gpu_free_total, host_available_bytes, host_rss_bytes
from runtime.placement import ReplicaNeed, actor_options, cluster_free, measure_replica
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
    "memory_low_water_mb",
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
    "autoscaling",
    "placement",
}
_AUTOSCALING_KEYS = {
    "min_replicas",
    "max_replicas",
    "initial_replicas",
    "target_ongoing_requests",
    "upscale_delay_s",
    "downscale_delay_s",
    "look_back_period_s",
    "hysteresis",
    "batch_fill_high",
    "headroom",
    "memory_budget_mb",
    "gpu_memory_budget_mb",
}
_PLACEMENT_KEYS = {"headroom", "measure", "host_mb", "device_mb"}
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
        self.memory = Gauge(
            "trtserve_memory_bytes",
            "Memory the model added to its replica, measured after warm-up at its largest batch "
            "(kind: host or device).",
            tag_keys=(*tags, "kind"),
        )
        self._inflight: dict[tuple[str, str], int] = {}
        self._warm: list[ModelHost] = []
        self.publisher = Publisher(
            [self.latency, self.queue, self.compute, self.batch], publish_interval_s, refresh=[self._refresh]
        ).start()

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
        self._warm.append(host)
        self._set_model_gauges(host)

    def _refresh(self) -> None:
        for host in list(self._warm):
            self._set_model_gauges(host)

    def _set_model_gauges(self, host: ModelHost) -> None:
        tags = self._tags(host)
        self.warmup.set(host.warmup_s or 0.0, tags)
        if host.footprint is not None:
            self.memory.set(host.footprint.host_bytes, {**tags, "kind": "host"})
            if host.footprint.device_bytes is not None:
                self.memory.set(host.footprint.device_bytes, {**tags, "kind": "device"})


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
        self._last_batches: dict[str, tuple[int, int]] = {}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What the memory-aware autoscaling policy reads (runtime/autoscaling.py), per replica."""
        fills, queued, device = [], 0, 0
        for host in self._hosts:
            stats = host.batcher.stats
            last = self._last_batches.get(host.name, (0, 0))
            calls, rows = stats.batches - last[0], stats.rows - last[1]
            self._last_batches[host.name] = (stats.batches, stats.rows)
            if calls:
                fills.append(rows / calls / host.max_batch_size)
            queued += host.batcher.queued_rows
            if host.footprint and host.footprint.device_bytes:
                device += host.footprint.device_bytes
        report = {
            autoscaling.BATCH_FILL: max(fills) if fills else 0.0,
            autoscaling.QUEUED_ROWS: float(queued),
            autoscaling.REPLICA_HOST_BYTES: float(host_rss_bytes() or 0),
        }
        available = host_available_bytes()
        if available is not None:
            report[autoscaling.HOST_AVAILABLE_BYTES] = float(available)
        if device:
            report[autoscaling.REPLICA_DEVICE_BYTES] = float(device)
            free_total = gpu_free_total()
            if free_total:
                report[autoscaling.DEVICE_FREE_BYTES] = float(free_total[0])
        return report

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
    for key, allowed in (("autoscaling", _AUTOSCALING_KEYS), ("placement", _PLACEMENT_KEYS)):
        section = args.get(key)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ValueError(f"`{key}` must be a mapping of {sorted(allowed)}")
        bad = set(section) - allowed
        if bad:
            raise ValueError(f"{key}: unknown keys {sorted(bad)}; expected some of {sorted(allowed)}")
    if "autoscaling" in args and ("autoscaling_config" in args or "num_replicas" in args):
        raise ValueError(
            "give either `autoscaling` (trtserve's memory-aware policy) or Ray's `autoscaling_config` / "
            "`num_replicas`, not both"
        )
    return {**args, "repository": str(repository), "models": parsed}


def build_app(args: dict[str, Any]) -> serve.Application:
    args = parse_args(args)
    options: dict[str, Any] = {
        "max_ongoing_requests": args.get("max_ongoing_requests", 512),
        "max_queued_requests": args.get("max_queued_requests", 1024),
        # Scale-down drains: a stopping replica gets this long to finish what it holds.
        "graceful_shutdown_timeout_s": 30,
    }
    need = replica_need(args)
    if need is not None:
        placement = args.get("placement") or {}
        options["ray_actor_options"] = actor_options(
            need, args.get("ray_actor_options"), float(placement.get("headroom", 0.2)), cluster_free()
        )
        log.info("replica need %s -> ray_actor_options %s", need.to_dict(), options["ray_actor_options"])
    elif "ray_actor_options" in args:
        options["ray_actor_options"] = args["ray_actor_options"]
    if "autoscaling" in args:
        options["autoscaling_config"] = autoscaling_config(args["autoscaling"], need)
    elif "autoscaling_config" in args:
        options["autoscaling_config"] = args["autoscaling_config"]
    else:
        options["num_replicas"] = args.get("num_replicas", 1)
    options["logging_config"] = {"encoding": "JSON", "log_level": args.get("log_level", "INFO")}
    return KServeServer.options(**options).bind(args["repository"], args["models"], args.get("max_body_mb", 64))


def replica_need(args: dict[str, Any]) -> ReplicaNeed | None:
    """What one replica needs: given in `placement` (host_mb, device_mb), else measured in a fresh process
    (placement.measure, default true). None when ray_actor_options already sets memory (and num_gpus)."""
    placement = args.get("placement") or {}
    configured = args.get("ray_actor_options") or {}
    if "host_mb" in placement:
        device = placement.get("device_mb")
        gpu = gpu_free_total() if device is not None else None
        return ReplicaNeed(
            int(placement["host_mb"] * 2**20),
            None if device is None else int(device * 2**20),
            gpu[1] if gpu else None,
            {},
        )
    if not placement.get("measure", True) or ("memory" in configured and "num_gpus" in configured):
        return None
    return measure_replica(Path(args["repository"]), args["models"])


def autoscaling_config(spec: dict[str, Any], need: ReplicaNeed | None) -> dict[str, Any]:
    """Ray's autoscaling_config running trtserve's memory-aware policy (runtime/autoscaling.py)."""
    ray_keys = (
        "min_replicas",
        "max_replicas",
        "initial_replicas",
        "upscale_delay_s",
        "downscale_delay_s",
        "look_back_period_s",
        "target_ongoing_requests",
    )
    config = {k: spec[k] for k in ray_keys if k in spec}
    kwargs: dict[str, Any] = {
        k: spec[k] for k in ("target_ongoing_requests", "hysteresis", "batch_fill_high", "headroom") if k in spec
    }
    if "memory_budget_mb" in spec:
        kwargs["host_budget_bytes"] = int(spec["memory_budget_mb"] * 2**20)
    if "gpu_memory_budget_mb" in spec:
        kwargs["device_budget_bytes"] = int(spec["gpu_memory_budget_mb"] * 2**20)
    if need is not None:
        kwargs["replica_host_bytes"] = need.host_bytes
        if need.device_bytes is not None:
            kwargs["replica_device_bytes"] = need.device_bytes
    config["policy"] = {"policy_function": "runtime.autoscaling:MemoryAwarePolicy", "policy_kwargs": kwargs}
    return config

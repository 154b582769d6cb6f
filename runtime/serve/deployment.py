"""The Ray Serve deployment: one HTTP ingress that hosts every model of the application in-process, a
dynamic batcher each, so a request crosses one hop (ingress -> replica) and no second actor call.
Replicas load and warm up every model in their constructor, so Ray routes no traffic to a cold replica.
A rollout's versions come and go through `user_config` (runtime.serve.versions), applied in place.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ray import serve
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from runtime.auth.tokens import TokenTable
from runtime.auth.watch import TokensFileWatcher
from runtime.engine.credentials import log_through
from runtime.engine.memory import gpu_free_total, host_available_bytes, host_rss_bytes
from runtime.engine.repository import version_dir
from runtime.serve import autoscaling
from runtime.serve.access_log import AccessLog
from runtime.serve.app_args import ModelSpec, RequestLogging
from runtime.serve.body import FEEDBACK_LIMIT, Body, BodyBudget, BodyIncomplete
from runtime.serve.capture_sink import CaptureSink
from runtime.serve.drift_observer import DriftObserver
from runtime.serve.handler import HttpHandler
from runtime.serve.heap import freeze_startup_heap
from runtime.serve.model import ServedModel
from runtime.serve.model_registry import ModelRegistry
from runtime.serve.replica_log import writing_directly
from runtime.serve.telemetry import RayTelemetry
from runtime.serve.traffic import Traffic
from runtime.serve.versions import VersionManager

log = logging.getLogger("trtserve.server")
STUCK_ENGINE_S = 60.0  # an engine call longer than this (or twice the model's timeout) is a wedged engine
BODIES_IN_FLIGHT = 4  # a replica holds at most this many of its largest bodies at once; beyond: 503


@serve.deployment(name="trtserve", max_ongoing_requests=512)
class ModelServer:
    def __init__(
        self,
        repository: str,
        versions: list[int],
        models: list[ModelSpec],
        max_body_mb: float = 64,
        rollouts=None,
        tokens_file: str | None = None,  # bearer tokens, read on this node and watched; None: no authentication
        *,
        # The application's secret: which requests are captured, and which a rollout's candidate answers,
        # decided by keyed hashes of their ids, so that no client can choose.
        app_secret: bytes,
        request_logging: RequestLogging | None = None,  # which requests get a log line; default: sampled
    ) -> None:
        _log_like_ray_serve()
        captures = {
            spec.name: CaptureSink(spec.name, spec.capture_settings, app_secret)
            for spec in models
            if spec.capture_settings is not None and spec.capture_settings.destination is not None
        }
        self._registry = ModelRegistry(captures=captures)  # the one list of what this replica serves
        self._telemetry = RayTelemetry(self._registry)
        self._monitor = DriftObserver(self._telemetry)
        self._registry.subscribe(added=self._monitor.register, retired=self._monitor.forget)
        for version, spec in zip(versions, models, strict=True):
            # A local path, or this node's verified download of a version in an object store.
            model = ServedModel(version_dir(repository, spec.name, version), spec, self._telemetry)
            model.warmup()
            self._registry.add(model)
        self._rollouts = rollouts  # the decision-maker's handle (runtime.serve.rollout_controller)
        self.handler = HttpHandler(
            self._registry,
            max_body_bytes=int(max_body_mb * 2**20),
            telemetry=self._telemetry,
            rollout_command=self._rollout_command if rollouts is not None else None,
            traffic=Traffic(routing_key=app_secret),
            monitor=self._monitor,
            # Until the watcher's first look (below, before any request) every token is refused.
            auth=TokenTable(()) if tokens_file else None,
            access_log=AccessLog(request_logging),
        )
        self._bodies = BodyBudget(BODIES_IN_FLIGHT * max(self.handler.max_body_bytes, FEEDBACK_LIMIT))
        self._tokens_watch = TokensFileWatcher(tokens_file, self._use_tokens).start() if tokens_file else None
        self._load = autoscaling.ServedLoad()
        specs = {spec.name: (spec, repository) for spec in models}
        self._versions = VersionManager(self._registry, self.handler.traffic, specs, self._load_version)
        self._configured = False
        self._applied = 0  # the decision-maker's generation this replica routes by
        self._reporting: asyncio.Task | None = None
        frozen = freeze_startup_heap()
        log.info("start-up heap frozen: %d objects no longer walked by full collections", frozen)

    def _ensure_reporting(self) -> None:
        if self._rollouts is not None and (self._reporting is None or self._reporting.done()):
            self._reporting = asyncio.get_running_loop().create_task(self._report_loop())

    async def _report_loop(self) -> None:
        """Every half second: this replica's counts to the decision-maker, its rollouts back."""
        replica = serve.get_replica_context().replica_id.unique_id
        while True:
            try:
                reports = {name: self.handler.traffic.report(name) for name in self._registry}
                reply = await self._rollouts.report.remote(replica, self._applied, reports)
                if reply["generation"] != self._applied:
                    await self._versions.apply({"rollouts": reply["rollouts"]}, wait=False)
                    self._applied = reply["generation"]
            except Exception:
                log.exception("reporting to the rollout decision-maker failed; trying again")
            await asyncio.sleep(0.5)

    async def _rollout_command(self, model: str, action: str, args: dict) -> dict:
        return await self._rollouts.command.remote(model, action, args)

    async def reconfigure(self, user_config: dict) -> None:
        """Ray Serve calls this at start and whenever the deployment's user_config changes (no restart)."""
        await self._versions.apply(user_config, wait=not self._configured)
        self._configured = True

    def _use_tokens(self, table: TokenTable) -> None:
        self.handler.auth = table  # one assignment: a request sees the old table or the new one

    def _load_version(self, directory: Path, spec: ModelSpec) -> ServedModel:
        model = ServedModel(directory, spec, self._telemetry)
        model.warmup()
        freeze_startup_heap()
        return model

    def check_health(self) -> None:
        """Ray Serve calls this every few seconds: raising marks the replica unhealthy, so the ingress stops
        sending it requests (its /-/healthz answers 503) and Serve replaces it."""
        for model in self._registry.served():
            problem = model.batcher.problem(stuck_after_s=max(STUCK_ENGINE_S, 2 * model.options.timeout_s))
            if problem is not None:
                log.error("%s: unhealthy: %s", model.label, problem)
                raise RuntimeError(f"{model.label}: {problem}")
        for name, sink in self._registry.captures.items():  # a writer whose thread died would lose what it is given
            problem = sink.problem()
            if problem is not None:
                log.error("%s: unhealthy: %s", name, problem)
                raise RuntimeError(f"{name}: {problem}")

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What the memory-aware autoscaling policy reads (runtime.serve.autoscaling), per replica."""
        report = self._load.report(self._registry.served())
        report[autoscaling.REPLICA_HOST_BYTES] = float(host_rss_bytes() or 0)
        available = host_available_bytes()
        if available is not None:
            report[autoscaling.HOST_AVAILABLE_BYTES] = float(available)
        if autoscaling.REPLICA_DEVICE_BYTES in report:
            free_total = gpu_free_total()
            if free_total:
                report[autoscaling.DEVICE_FREE_BYTES] = float(free_total[0])
        return report

    def __del__(self) -> None:  # Ray Serve calls this when it stops the replica
        watch = getattr(self, "_tokens_watch", None)  # absent when the constructor failed before it
        if watch is not None:
            watch.stop()
        self._telemetry.close()
        self._monitor.close()
        for sink in self._registry.captures.values():
            sink.close()
        self._versions.close()
        self.handler.close()
        for model in self._registry.served():
            model.close()

    async def __call__(self, request: Request) -> Response:
        self._ensure_reporting()
        # The body is read by the handler, once it knows the route and the caller (runtime.serve.body).
        body = Body(lambda: _chunks(request), request.headers.get("content-length"), self._bodies)
        request_id = _ray_request_id()
        path = app_path(request.scope)
        try:
            result = await self.handler.handle(request.method, path, request.headers, body, request_id)
        finally:
            body.release()
        if request_id:  # Ray echoes X-Request-ID (or the one it generated) itself
            result.headers.pop("x-request-id", None)
        return Response(result.body, status_code=result.status, headers=result.headers)


async def _chunks(request: Request):
    """The body as it arrives; a client gone before its end is BodyIncomplete (a 400 nobody reads)."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise BodyIncomplete("the client went away before sending its whole body") from None


def app_path(scope: dict) -> str:
    """The request's path inside this application: Serve keeps the whole path in `path` and puts the
    application's route prefix (with any global root path) in `root_path`, so an app deployed under
    `route_prefix: /cnn` sees `/v2/models/...` as it does under `/`."""
    path, root = scope.get("path", ""), scope.get("root_path", "").rstrip("/")
    return path[len(root) :] or "/" if root and path.startswith(root) else path


def _ray_request_id() -> str | None:
    """The id Ray Serve gave this request (the client's X-Request-ID when it sent one), so our log lines
    and Ray's access log agree."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except (ImportError, AttributeError):
        return None


def _log_like_ray_serve() -> None:
    """Send the trtserve loggers through the replica's Serve handlers (JSON, per LoggingConfig), each
    scrubbing credentials from what it writes (Serve's own records included: a repository URI may hold
    them); into its log file without Ray's per-record costs (runtime.serve.replica_log)."""
    ours = logging.getLogger("trtserve")
    log_through(ours, logging.getLogger("ray.serve"))
    ours.handlers = writing_directly(ours.handlers)

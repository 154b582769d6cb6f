"""The Open Inference Protocol over HTTP for a set of hosted models, independent of the web framework:
(method, path, headers, body) in, (status, headers, body) out. The Ray Serve deployment and the tests
both drive it through `handle`."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson

from runtime.auth.tokens import ADMIN, FEEDBACK, INFER, TokenTable
from runtime.engine.credentials import scrub
from runtime.serve import triton
from runtime.serve.access_log import AccessLog
from runtime.serve.body import FEEDBACK_LIMIT, SMALL_LIMIT, Body, BufferedBody
from runtime.serve.capture_sink import CaptureSink
from runtime.serve.drift_observer import DriftObserver
from runtime.serve.dynamic_batcher import Overloaded
from runtime.serve.error_codes import (
    BEFORE_WORK,
    MethodNotAllowed,
    NotAuthenticated,
    NotFound,
    NotPermitted,
    WarmingUp,
    code_of,
    http_headers,
    message_of,
)
from runtime.serve.model import ServedModel
from runtime.serve.model_registry import ModelRegistry
from runtime.serve.protocol import (
    HEADER_LENGTH,
    MAX_ID_BYTES,
    InferRequest,
    ProtocolError,
    decode_inputs,
    encode_response,
    error_body,
    parse_request,
)
from runtime.serve.telemetry import Telemetry
from runtime.serve.traffic import Traffic

log = logging.getLogger("trtserve.server")

SERVER_NAME = "trtserve"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
DECODING_THREADS = 2  # large requests are decoded and tokenized here, off the event loop
_REFUSALS = {
    "missing": "authentication required: send Authorization: Bearer <token>",
    "malformed": "the Authorization header must be 'Bearer <token>'",
    "invalid": "the bearer token is not valid",
    "scope": "the bearer token lacks the {scope!r} scope this route needs",
}


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    scope: str | None  # the token scope it needs (where authentication is on); None: open to probes
    action: str  # the HttpHandler method that answers it
    versioned: bool = True  # a model route the path may name a version in


# The HTTP API, declared once (docs/reference/http-api.md). A path no route matches needs the infer scope
# before it is told 404: without a token nothing about the server shows.
SERVER_ROUTES = {
    "/v2/health/live": Route(("GET",), None, "_live"),
    "/v2/health/ready": Route(("GET",), None, "_server_ready"),
    "/v2": Route(("GET",), INFER, "_server_metadata"),
    "/v2/models/stats": Route(("GET",), ADMIN, "_all_statistics"),
}
# /v2/models/{name}[/versions/{version}]{suffix}
MODEL_ROUTES = {
    "": Route(("GET",), INFER, "_metadata"),
    "/ready": Route(("GET",), INFER, "_model_ready"),
    "/config": Route(("GET",), INFER, "_config"),
    "/infer": Route(("POST",), INFER, "_infer_route"),
    "/stats": Route(("GET",), ADMIN, "_statistics"),
    "/monitor": Route(("GET",), ADMIN, "_monitor"),
    "/rollout": Route(("GET", "POST"), ADMIN, "_rollout", versioned=False),
    "/feedback": Route(("POST",), FEEDBACK, "_feedback", versioned=False),
}
_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<suffix>/[a-z]+)?$")


def match_route(path: str) -> tuple[Route | None, str | None, str | None]:
    """(route, model name, version) of a path; route None where none matches."""
    route = SERVER_ROUTES.get(path)
    if route is not None:
        return route, None, None
    match = _MODEL.match(path)
    if match is None:
        return None, None, None
    route = MODEL_ROUTES.get(match["suffix"] or "")
    if route is None or (match["version"] is not None and not route.versioned):
        return None, None, None
    return route, match["name"], match["version"]


@dataclass
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    body: Body | BufferedBody
    request_id: str
    name: str | None = None  # the model a model route names
    version: str | None = None  # the version it names, if any


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trtserve")
    except PackageNotFoundError:
        return "unknown"


def _json(status: int, doc) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(doc), {"content-type": "application/json"})


def _error(status: int, message: str, **headers: str) -> HttpResponse:
    # Scrubbed of credentials (a repository URI may carry some) whatever raised it: no answer shows them.
    return HttpResponse(status, error_body(scrub(message)), {"content-type": "application/json", **headers})


def error_response(error: BaseException, request_id: str, subject: str = "the server") -> HttpResponse:
    """What the client is told of `error` (runtime.serve.error_codes: the one mapping); `subject`: what was
    overloaded or timed out. A 500 names only the request id: the caller logs the details."""
    code = code_of(error)
    return _error(code.http, message_of(error, code, request_id, subject), **http_headers(error, code))


@dataclass
class _Inference:
    """One inference request as it goes: the version answering it, what it was decoded to and the timings."""

    model: ServedModel
    mirror: ServedModel | None
    started: float
    working: float = 0.0  # when the model's own work began: after the body came
    request: InferRequest | None = None
    feed: dict | None = None
    outputs: dict | None = None
    rows: int = 0
    batch_rows: int = 0
    queue_s: float = 0.0
    compute_s: float = 0.0

    def __post_init__(self) -> None:
        self.working = self.started


class HttpHandler:
    def __init__(
        self,
        models: ModelRegistry | Iterable[ServedModel],  # the replica's registry, or the versions to serve (tests)
        max_body_bytes: int = 64 << 20,
        telemetry: Telemetry | None = None,
        traffic: Traffic | None = None,
        rollout_command=None,  # async (model, action, args) -> CommandReply: the decision-maker
        monitor: DriftObserver | None = None,
        captures: dict[str, CaptureSink] | None = None,  # model -> its payload capture and feedback, with a list
        auth: TokenTable | None = None,  # bearer tokens and their scopes; None: no authentication
        access_log: AccessLog | None = None,  # which requests get a log line; default: sampled
    ) -> None:
        if not isinstance(models, ModelRegistry):
            models = ModelRegistry(models, captures)
        elif captures is not None:
            raise ValueError("a registry holds its own capture sinks: give them to ModelRegistry, not the handler")
        self.models = models  # name -> {version: ServedModel}, read on every request
        self.max_body_bytes = max_body_bytes
        self.telemetry = telemetry or Telemetry()
        self.traffic = traffic or Traffic()
        self.rollout_command = rollout_command
        self.monitor = monitor
        self.captures = models.captures
        self.auth = auth
        self.access_log = access_log or AccessLog()
        self.version = _package_version()
        self._decoding = ThreadPoolExecutor(DECODING_THREADS, thread_name_prefix="trtserve-decode")

    def _versions(self, name: str) -> dict[str, ServedModel]:
        versions = self.models.get(name)
        if not versions:
            raise NotFound(f"unknown model {name!r}; serving {', '.join(sorted(self.models)) or 'nothing'}")
        return versions

    def _model(self, name: str, version: str | None) -> ServedModel:
        """The version a path names, or the one answering for the model now (stable, during a rollout)."""
        versions = self._versions(name)
        if version is None:
            return self.traffic.serving(name, versions)
        if version not in versions:
            raise NotFound(f"model {name!r} has no version {version!r}; serving {', '.join(sorted(versions))}")
        return versions[version]

    def _all(self) -> list[ServedModel]:
        return self.models.served()

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self._all())

    def close(self) -> None:
        self._decoding.shutdown(wait=False, cancel_futures=True)

    async def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | Body | BufferedBody = b"",
        request_id: str | None = None,
    ) -> HttpResponse:
        """Answer one request. `body` is read only once the route is known and the caller's token checked,
        and only up to the route's limit (runtime.serve.body)."""
        request_id = request_id or headers.get("x-request-id") or uuid.uuid4().hex
        if len(request_id.encode(errors="surrogateescape")) > MAX_ID_BYTES:
            request_id = uuid.uuid4().hex
            response = error_response(ProtocolError(f"X-Request-ID is longer than {MAX_ID_BYTES} bytes"), request_id)
        else:
            source = BufferedBody(body) if isinstance(body, bytes | bytearray) else body
            try:
                response = await self._route(method, path.rstrip("/") or "/", headers, source, request_id)
            except Exception as e:
                response = error_response(e, request_id)
                if response.status == 500:
                    log.exception("%s %s failed", method, path, extra={"request_id": request_id})
        response.headers["x-request-id"] = request_id
        return response

    def _authenticate(self, request: Request, scope: str) -> None:
        """NotAuthenticated/NotPermitted unless the Authorization header holds a token with `scope`; decided
        from the headers alone, before any of the body is read."""
        verdict = self.auth.check(request.headers.get("authorization"), scope)
        if verdict.allowed:
            return
        self.telemetry.auth_failed(verdict.reason)
        refused = NotPermitted if verdict.reason == "scope" else NotAuthenticated
        error = refused(_REFUSALS[verdict.reason].format(scope=scope), verdict.challenge)
        log.info(
            "refused %s %s: %s (scope %s)",
            request.method,
            request.path,
            verdict.reason,
            scope,
            extra={"request_id": request.request_id, "status": code_of(error).http},
        )
        raise error

    async def _route(self, method: str, path: str, headers, body: Body | BufferedBody, request_id: str) -> HttpResponse:
        route, name, version = match_route(path)
        request = Request(method, path, headers, body, request_id, name, version)
        scope = INFER if route is None else route.scope
        if self.auth is not None and scope is not None:
            self._authenticate(request, scope)
        if route is None:
            raise NotFound(f"no route {method} {path}")
        if method not in route.methods:
            raise MethodNotAllowed(f"{path} takes {' or '.join(route.methods)}", route.methods)
        return await getattr(self, route.action)(request)

    # --- the routes: each answers one entry of SERVER_ROUTES or MODEL_ROUTES ----------------------------

    async def _live(self, request: Request) -> HttpResponse:
        return _json(200, {"live": True})

    async def _server_ready(self, request: Request) -> HttpResponse:
        if not self.ready:
            raise WarmingUp("models are warming up")
        return _json(200, {"ready": True})

    async def _server_metadata(self, request: Request) -> HttpResponse:
        return _json(200, {"name": SERVER_NAME, "version": self.version, "extensions": EXTENSIONS})

    async def _all_statistics(self, request: Request) -> HttpResponse:
        return _json(200, {"model_stats": [triton.statistics(m) for m in self._all()]})

    async def _metadata(self, request: Request) -> HttpResponse:
        return _json(200, triton.metadata(self._model(request.name, request.version)))

    async def _model_ready(self, request: Request) -> HttpResponse:
        model = self._model(request.name, request.version)
        if not model.ready:
            raise WarmingUp(f"model {model.name!r} is warming up")
        return _json(200, {"name": model.name, "ready": True})

    async def _config(self, request: Request) -> HttpResponse:
        return _json(200, triton.model_config(self._model(request.name, request.version)))

    async def _statistics(self, request: Request) -> HttpResponse:
        """As Triton: every version of the model unless the path names one."""
        model = self._model(request.name, request.version)
        versions = [model] if request.version else list(self._versions(model.name).values())
        return _json(200, {"model_stats": [triton.statistics(m) for m in versions]})

    async def _monitor(self, request: Request) -> HttpResponse:
        """The last completed drift window of this version, in this replica."""
        model = self._model(request.name, request.version)
        if self.monitor is None:
            return _json(200, {"model": model.name, "version": model.version, "window": None, "tensors": []})
        return _json(200, self.monitor.result(model))

    async def _infer_route(self, request: Request) -> HttpResponse:
        """Sticky on the request's key: its X-Request-ID (Ray Serve passes it on as its own) until the body is
        read, then the body's "id" where it has one (_prepare routes again on it)."""
        versions = self._versions(request.name)
        try:
            model, route = self.traffic.route(request.name, versions, request.request_id, request.version)
        except LookupError as e:  # a pinned version not loaded here
            raise NotFound(str(e)) from None
        mirror = versions.get(route.mirror) if route.mirror else None
        pinned = request.version is not None
        reroute = None if pinned else functools.partial(self._reroute, model.name, versions)
        return await self._infer(model, request.headers, request.body, request.request_id, mirror, reroute, pinned)

    async def _rollout(self, request: Request) -> HttpResponse:
        """GET: the rollout's status; POST {"action": start|pause|resume|promote|rollback|history, ...}."""
        if self.rollout_command is None:
            raise NotFound("this application has no rollout decision-maker")
        if request.method == "GET":
            action, args = "status", {}
        else:
            try:
                args = orjson.loads(await request.body.read(SMALL_LIMIT) or b"{}")
            except orjson.JSONDecodeError as e:
                raise ProtocolError(f"malformed JSON: {e}") from None
            if not isinstance(args, dict) or not isinstance(args.get("action"), str):
                raise ProtocolError('a rollout command is a JSON object with an "action" string')
            action = args.pop("action")
        reply = await self.rollout_command(request.name, action, args)
        # The decision-maker's answers name versions and reasons, which may quote a repository URI: scrubbed.
        answer = scrub(orjson.dumps(reply.unwrap()).decode()).encode()
        return HttpResponse(200, answer, {"content-type": "application/json"})

    async def _feedback(self, request: Request) -> HttpResponse:
        """POST {"id", "label", "time"?} or a list of them: labels to join with the captures by id. A 200 means
        they are on this node's disk (runtime.serve.capture_sink)."""
        self._versions(request.name)
        sink = self.captures.get(request.name)
        if sink is None:
            raise NotFound(f"model {request.name!r} has no capture destination for feedback; set capture.destination")
        # Parsed, checked and written off the event loop; the answer comes once the labels are on disk.
        return _json(200, {"accepted": await sink.add_feedback(await request.body.read(FEEDBACK_LIMIT))})

    def _reroute(self, name: str, versions, key: str) -> tuple[ServedModel, ServedModel | None]:
        model, route = self.traffic.route(name, versions, key)
        return model, (versions.get(route.mirror) if route.mirror else None)

    def _prepare(
        self,
        model: ServedModel,
        mirror: ServedModel | None,
        body: bytes | bytearray,
        header_length: int | None,
        request_id: str,
        reroute: Callable[[str], tuple[ServedModel, ServedModel | None]] | None,
    ) -> tuple[ServedModel, ServedModel | None, InferRequest, dict]:
        """Parse, check against the model, then decode and tokenize: nothing that grows with the request's
        size runs before its head passed the model's checks. Pure of the event loop: large requests run it in
        a decoding thread."""
        head = parse_request(body, header_length)
        if reroute is not None and head.id is not None and head.id != request_id:
            model, mirror = reroute(head.id)
        model.admit(head)
        request = decode_inputs(head)
        return model, mirror, request, model.feed_from(request)

    async def _infer(
        self,
        model: ServedModel,
        headers,
        body: Body | BufferedBody,
        request_id: str,
        mirror: ServedModel | None = None,
        reroute: Callable[[str], tuple[ServedModel, ServedModel | None]] | None = None,
        pinned: bool = False,
    ) -> HttpResponse:
        """Answer from `model`; with `mirror`, the same request also runs there after the answer is sent.
        With `reroute`, a body whose "id" differs from the request id is routed again on that id. A `pinned`
        request (its path named the version) is counted apart from the rollout's evidence."""
        work = _Inference(model, mirror, started=time.perf_counter())
        arrived = model  # counted in flight where it arrived, whichever version answers
        self.telemetry.in_flight(arrived, +1)
        try:
            if not model.ready:
                response = error_response(WarmingUp(f"model {model.name!r} is warming up"), request_id)
            else:
                response = await self._run(work, headers, body, request_id, reroute)
                self.traffic.ran(work.model, 200, work.compute_s, pinned=pinned)
                if work.mirror is not None:
                    self.traffic.mirror(work.model, work.mirror, work.feed, work.outputs)
        except Exception as e:
            response = error_response(e, request_id, f"model {work.model.name!r}")
            if response.status == 500:
                log.exception("inference failed", extra={"request_id": request_id, "model": work.model.name})
            if response.status >= 500 and not isinstance(e, BEFORE_WORK):
                ran_s = 0.0 if isinstance(e, Overloaded) else time.perf_counter() - work.working
                self.traffic.ran(work.model, response.status, ran_s, pinned=pinned)
        finally:
            self.telemetry.in_flight(arrived, -1)
        self._account(work, response.status, request_id, pinned)
        return response

    async def _run(
        self,
        work: _Inference,
        headers,
        body: Body | BufferedBody,
        request_id: str,
        reroute: Callable[[str], tuple[ServedModel, ServedModel | None]] | None,
    ) -> HttpResponse:
        """Read, check, decode, batch and encode one request; `work` keeps what the accounting needs."""
        header_length = _header_length(headers)
        # No larger than the largest request the model's versions here can take: a body past that is refused
        # unread, however much max_body_mb allows.
        largest = max(m.max_request_bytes for m in self._versions(work.model.name).values())
        data = await body.read(min(self.max_body_bytes, largest))
        work.working = time.perf_counter()
        with work.model.batcher.arriving():
            prepare = (self._prepare, work.model, work.mirror, data, header_length, request_id, reroute)
            if len(data) >= work.model.offload_bytes:
                prepared = await asyncio.get_running_loop().run_in_executor(self._decoding, *prepare)
            else:
                prepared = prepare[0](*prepare[1:])
            work.model, work.mirror, work.request, work.feed = prepared
            if header_length is None:  # JSON: decoded into arrays of their own, the body is no longer held
                del data, prepare
                body.release()
            work.rows = next(iter(work.feed.values())).shape[0]
            model = work.model
            pending = model.batcher.submit(work.feed, model.work_of(work.feed), model.options.timeout_s)
        # Awaited outside `arriving()`: once queued, the request no longer counts as on its way.
        work.outputs, timing = await pending
        work.queue_s, work.compute_s = timing.get("queue_s", 0.0), timing.get("compute_s", 0.0)
        work.batch_rows = timing.get("batch_rows", work.rows)
        payload, extra = encode_response(work.model.name, work.model.version, work.outputs, work.request)
        return HttpResponse(200, payload, extra)

    def _account(self, work: _Inference, status: int, request_id: str, pinned: bool) -> None:
        """Counts, capture, metrics and, where the access log wants one, the request's log line, once it is
        answered."""
        model = work.model
        seconds = time.perf_counter() - work.started
        if work.feed is not None:  # only requests that passed the model's checks are remembered or captured
            self._capture(model, work.request, work.outputs, status, seconds, request_id)
        model.counts.record(status == 200, seconds, work.rows)
        self.traffic.answered(model, status, seconds, pinned=pinned)
        self.telemetry.request(model, status, seconds, work.queue_s, work.compute_s)
        if not (self.access_log.wants(status, seconds) and log.isEnabledFor(logging.INFO)):
            return
        log.info(
            "%s v%s %d in %.2f ms",
            model.name,
            model.version,
            status,
            seconds * 1e3,
            extra={
                "request_id": request_id,
                "model": model.name,
                "model_version": model.version,
                "backend": model.engine.backend,
                "status": status,
                "rows": work.rows,
                "batch_rows": work.batch_rows,
                "latency_ms": round(seconds * 1e3, 3),
                "queue_ms": round(work.queue_s * 1e3, 3),
                "compute_ms": round(work.compute_s * 1e3, 3),
            },
        )

    def _capture(self, model: ServedModel, request: InferRequest, outputs, status: int, seconds: float, request_id):
        sink = self.captures.get(model.name)
        if sink is None:
            return
        inference_id = request.id or request_id
        scored = model.manifest.evaluation
        if outputs is not None and scored is not None and scored.metric == "accuracy":
            sink.remember(inference_id, model.version, outputs[scored.output])
        if sink.wants(inference_id):
            returned = outputs
            if outputs is not None and request.outputs is not None:
                returned = {o.name: outputs[o.name] for o in request.outputs}
            sink.record(
                inference_id, model.version, self.traffic.role(model), status, seconds, request.inputs, returned
            )


def _header_length(headers) -> int | None:
    length = headers.get(HEADER_LENGTH)
    if length is None:
        return None
    try:
        return int(length)
    except ValueError:
        raise ProtocolError(f"Inference-Header-Content-Length {length!r} is not an integer") from None

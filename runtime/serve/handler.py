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
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson

from runtime.auth.tokens import ADMIN, FEEDBACK, INFER, TokenTable
from runtime.engine.credentials import scrub
from runtime.engine.errors import InputError
from runtime.serve import triton
from runtime.serve.body import (
    FEEDBACK_LIMIT,
    SMALL_LIMIT,
    BodiesInFlightFull,
    Body,
    BodyIncomplete,
    BodyTooLarge,
    BodyTooSlow,
    BufferedBody,
)
from runtime.serve.capture_sink import CaptureSink, FeedbackError, FeedbackUnavailable
from runtime.serve.drift_observer import DriftObserver
from runtime.serve.dynamic_batcher import Overloaded, TimedOut
from runtime.serve.model import ServedModel
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
RETRY_AFTER_S = 1  # what a 503 (warming up, overloaded) asks a client to wait before trying again
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
# Routes that need a scope other than infer (/v2/models/stats needs admin too); health routes need none.
ROUTE_SCOPES = {"/rollout": ADMIN, "/monitor": ADMIN, "/stats": ADMIN, "/feedback": FEEDBACK}
DECODING_THREADS = 2  # large requests are decoded and tokenized here, off the event loop
_REFUSALS = {
    "missing": "authentication required: send Authorization: Bearer <token>",
    "malformed": "the Authorization header must be 'Bearer <token>'",
    "invalid": "the bearer token is not valid",
    "scope": "the bearer token lacks the {scope!r} scope this route needs",
}
_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/[a-z]+)?$")


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


def _unavailable(message: str) -> HttpResponse:
    """503 with Retry-After: warming up or overloaded, worth trying again shortly."""
    return _error(503, message, **{"retry-after": str(RETRY_AFTER_S)})


def _internal_error(request_id: str) -> HttpResponse:
    """A 500 says nothing of its cause (which is in the log, under the request id)."""
    return _error(500, f"internal error; request id {request_id}")


class NotFound(Exception):
    """No such model, version or route (404)."""


def error_response(error: Exception, request_id: str, subject: str = "the server") -> HttpResponse:
    """The one mapping of what the request path raises to an HTTP answer (`subject`: what was overloaded or
    timed out); anything not listed is a 500 that names only the request id (the caller logs the details)."""
    if isinstance(error, ProtocolError):
        return _error(error.status, str(error))
    if isinstance(error, InputError | FeedbackError | BodyIncomplete):
        return _error(400, str(error))
    if isinstance(error, NotFound):
        return _error(404, str(error))
    if isinstance(error, BodyTooSlow):
        return _error(408, str(error))
    if isinstance(error, BodyTooLarge):
        return _error(413, str(error))
    if isinstance(error, Overloaded):
        return _unavailable(f"{subject} is overloaded: {error}")
    if isinstance(error, BodiesInFlightFull | FeedbackUnavailable):
        return _unavailable(str(error))
    if isinstance(error, TimedOut):
        return _error(504, f"{subject} timed out: {error}")
    return _internal_error(request_id)


# Errors of the request's own making, before any model work: never a verdict on the model (a rollout's).
_BEFORE_WORK = (BodyTooLarge, BodyTooSlow, BodyIncomplete, BodiesInFlightFull)


class HttpHandler:
    def __init__(
        self,
        models: list[ServedModel],
        max_body_bytes: int = 64 << 20,
        telemetry: Telemetry | None = None,
        traffic: Traffic | None = None,
        rollout_command=None,  # async (model, action, args) -> {"status", "body"}: the decision-maker
        monitor: DriftObserver | None = None,
        captures: dict[str, CaptureSink] | None = None,  # model -> its payload capture and feedback
        auth: TokenTable | None = None,  # bearer tokens and their scopes; None: no authentication
    ) -> None:
        self.models: dict[str, dict[str, ServedModel]] = {}
        for model in models:
            self.add(model)
        self.max_body_bytes = max_body_bytes
        self.telemetry = telemetry or Telemetry()
        self.traffic = traffic or Traffic()
        self.rollout_command = rollout_command
        self.monitor = monitor
        self.captures = captures or {}
        self.auth = auth
        self.version = _package_version()
        self._decoding = ThreadPoolExecutor(DECODING_THREADS, thread_name_prefix="trtserve-decode")

    def add(self, model: ServedModel) -> None:
        """Serve one more version (a rollout's candidate, loaded and warm) beside those already here."""
        self.models.setdefault(model.name, {})[model.version] = model

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
        return [m for versions in self.models.values() for m in versions.values()]

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
            response = _error(400, f"X-Request-ID is longer than {MAX_ID_BYTES} bytes")
            request_id = uuid.uuid4().hex
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

    def _refusal(self, method: str, path: str, scope: str, headers, request_id: str) -> HttpResponse | None:
        """401/403 unless the Authorization header holds a token with `scope`; decided from the headers alone,
        before any of the body is read."""
        verdict = self.auth.check(headers.get("authorization"), scope)
        if verdict.allowed:
            return None
        self.telemetry.auth_failed(verdict.reason)
        log.info(
            "refused %s %s: %s (scope %s)",
            method,
            path,
            verdict.reason,
            scope,
            extra={"request_id": request_id, "status": verdict.status},
        )
        message = _REFUSALS[verdict.reason].format(scope=scope)
        return _error(verdict.status, message, **{"www-authenticate": verdict.challenge})

    async def _route(self, method: str, path: str, headers, body: Body | BufferedBody, request_id: str) -> HttpResponse:
        if path == "/v2/health/live":  # open, with or without authentication: what probes call
            return _json(200, {"live": True})
        if path == "/v2/health/ready":
            return _json(200, {"ready": True}) if self.ready else _unavailable("models are warming up")
        match = _MODEL.match(path)
        rest = (match["rest"] or "") if match else ""
        if self.auth is not None:
            # Before anything else, unknown routes included: without a token nothing about the server shows.
            scope = ADMIN if path == "/v2/models/stats" else ROUTE_SCOPES.get(rest, INFER)
            refusal = self._refusal(method, path, scope, headers, request_id)
            if refusal is not None:
                return refusal
        if path == "/v2":
            return _json(200, {"name": SERVER_NAME, "version": self.version, "extensions": EXTENSIONS})
        if path == "/v2/models/stats":
            return _json(200, {"model_stats": [triton.statistics(m) for m in self._all()]})
        if not match:
            return _error(404, f"no route {method} {path}")
        if rest == "/rollout":
            return await self._rollout(method, match["name"], body, request_id)
        if rest == "/feedback" and match["version"] is None:
            return await self._feedback(method, match["name"], body)
        if rest == "/infer":
            # Sticky on the request's key: its X-Request-ID (Ray Serve passes it on as its own) until the body
            # is read, then the body's "id" where it has one (_infer routes again on it).
            versions = self._versions(match["name"])
            try:
                model, route = self.traffic.route(match["name"], versions, request_id, match["version"])
            except LookupError as e:  # a pinned version not loaded here
                raise NotFound(str(e)) from None
            if method != "POST":
                return _error(405, "infer takes POST")
            mirror = self.models[model.name].get(route.mirror) if route.mirror else None
            pinned = match["version"] is not None
            reroute = None if pinned else functools.partial(self._reroute, model.name, versions)
            return await self._infer(model, headers, body, request_id, mirror, reroute, pinned)
        model = self._model(match["name"], match["version"])
        if method != "GET":
            return _error(405, f"{path} takes GET")
        if rest == "":
            return _json(200, triton.metadata(model))
        if rest == "/ready":
            if model.ready:
                return _json(200, {"name": model.name, "ready": True})
            return _unavailable(f"model {model.name!r} is warming up")
        if rest == "/config":
            return _json(200, triton.model_config(model))
        if rest == "/monitor":  # the last completed drift window of this version, in this replica
            if self.monitor is None:
                return _json(200, {"model": model.name, "version": model.version, "window": None, "tensors": []})
            return _json(200, self.monitor.result(model))
        if rest == "/stats":  # as Triton: every version of the model unless the path names one
            versions = [model] if match["version"] else list(self.models[model.name].values())
            return _json(200, {"model_stats": [triton.statistics(m) for m in versions]})
        return _error(404, f"no route {method} {path}")

    async def _rollout(self, method: str, name: str, body: Body | BufferedBody, request_id: str) -> HttpResponse:
        """GET: the rollout's status; POST {"action": start|pause|resume|promote|rollback|history, ...}."""
        if self.rollout_command is None:
            return _error(404, "this application has no rollout decision-maker")
        if method == "GET":
            action, args = "status", {}
        elif method == "POST":
            try:
                args = orjson.loads(await body.read(SMALL_LIMIT) or b"{}")
            except orjson.JSONDecodeError as e:
                return _error(400, f"malformed JSON: {e}")
            if not isinstance(args, dict) or not isinstance(args.get("action"), str):
                return _error(400, 'a rollout command is a JSON object with an "action" string')
            action = args.pop("action")
        else:
            return _error(405, "rollout takes GET or POST")
        try:
            result = await self.rollout_command(name, action, args)
        except Exception:  # the decision-maker unreachable or failing: nothing of it reaches the client
            log.exception("rollout command %s on %s failed", action, name, extra={"request_id": request_id})
            return _internal_error(request_id)
        if result["status"] >= 500:  # logged by the decision-maker; the answer is the same as any 500's
            return _internal_error(request_id)
        # The decision-maker's answers name versions and reasons, which may quote a repository URI: scrubbed.
        body = scrub(orjson.dumps(result["body"]).decode()).encode()
        return HttpResponse(result["status"], body, {"content-type": "application/json"})

    async def _feedback(self, method: str, name: str, body: Body | BufferedBody) -> HttpResponse:
        """POST {"id", "label", "time"?} or a list of them: labels to join with the captures by id. A 200 means
        they are on this node's disk (runtime.serve.capture_sink)."""
        if method != "POST":
            return _error(405, "feedback takes POST")
        self._versions(name)
        sink = self.captures.get(name)
        if sink is None:
            raise NotFound(f"model {name!r} has no capture destination for feedback; set capture.destination")
        # Parsed, checked and written off the event loop; the answer comes once the labels are on disk.
        return _json(200, {"accepted": await sink.add_feedback(await body.read(FEEDBACK_LIMIT))})

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
        started = time.perf_counter()
        queue_s = compute_s = 0.0
        rows = timing_rows = 0
        request = outputs = feed = None
        arrived = model  # counted in flight where it arrived, whichever version answers
        self.telemetry.in_flight(arrived, +1)
        working = started  # when the model's own work began: after the body came
        try:
            if not model.ready:
                response = _unavailable(f"model {model.name!r} is warming up")
            else:
                header_length = _header_length(headers)
                # No larger than the largest request the model's versions here can take: a body past that is
                # refused unread, however much max_body_mb allows.
                largest = max(m.max_request_bytes for m in self.models[model.name].values())
                data = await body.read(min(self.max_body_bytes, largest))
                working = time.perf_counter()
                with model.batcher.arriving():
                    prepare = (self._prepare, model, mirror, data, header_length, request_id, reroute)
                    if len(data) >= model.offload_bytes:
                        prepared = await asyncio.get_running_loop().run_in_executor(self._decoding, *prepare)
                    else:
                        prepared = prepare[0](*prepare[1:])
                    model, mirror, request, feed = prepared
                    if header_length is None:  # JSON: decoded into arrays of their own, the body is no longer held
                        del data, prepare
                        body.release()
                    rows = next(iter(feed.values())).shape[0]
                    pending = model.batcher.submit(feed, model.work_of(feed), model.options.timeout_s)
                # Awaited outside `arriving()`: once queued, the request no longer counts as on its way.
                outputs, timing = await pending
                self.traffic.ran(model, 200, timing.get("compute_s", 0.0), pinned=pinned)
                queue_s, compute_s = timing.get("queue_s", 0.0), timing.get("compute_s", 0.0)
                timing_rows = timing.get("batch_rows", rows)
                payload, extra = encode_response(model.name, model.version, outputs, request)
                response = HttpResponse(200, payload, extra)
                if mirror is not None:
                    self.traffic.mirror(model, mirror, feed, outputs)
        except Exception as e:
            response = error_response(e, request_id, f"model {model.name!r}")
            if response.status == 500:
                log.exception("inference failed", extra={"request_id": request_id, "model": model.name})
            if response.status >= 500 and not isinstance(e, _BEFORE_WORK):
                ran_s = 0.0 if isinstance(e, Overloaded) else time.perf_counter() - working
                self.traffic.ran(model, response.status, ran_s, pinned=pinned)
        finally:
            self.telemetry.in_flight(arrived, -1)
        seconds = time.perf_counter() - started
        if feed is not None:  # only requests that passed the model's checks are remembered or captured
            self._capture(model, request, outputs, response.status, seconds, request_id)
        model.counts.record(response.status == 200, seconds, rows)
        self.traffic.answered(model, response.status, seconds, pinned=pinned)
        self.telemetry.request(model, response.status, seconds, queue_s, compute_s)
        log.info(
            "%s v%s %d in %.2f ms",
            model.name,
            model.version,
            response.status,
            seconds * 1e3,
            extra={
                "request_id": request_id,
                "model": model.name,
                "model_version": model.version,
                "backend": model.engine.backend,
                "status": response.status,
                "rows": rows,
                "batch_rows": timing_rows,
                "latency_ms": round(seconds * 1e3, 3),
                "queue_ms": round(queue_s * 1e3, 3),
                "compute_ms": round(compute_s * 1e3, 3),
            },
        )
        return response

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

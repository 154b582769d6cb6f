"""The Open Inference Protocol over HTTP for a set of hosted models, independent of the web framework:
(method, path, headers, body) in, (status, headers, body) out. The Ray Serve deployment and the tests
both drive it through `handle`."""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson

from runtime.auth.tokens import ADMIN, INFER, TokenTable
from runtime.engine.errors import InputError, TrtserveError
from runtime.serve import triton
from runtime.serve.batcher import Overloaded, TimedOut
from runtime.serve.capture import CaptureSink, FeedbackError
from runtime.serve.model import ServedModel
from runtime.serve.monitoring import DriftMonitor
from runtime.serve.protocol import HEADER_LENGTH, ProtocolError, decode_request, encode_response, error_body
from runtime.serve.telemetry import Telemetry
from runtime.serve.traffic import Traffic

log = logging.getLogger("trtserve.server")

SERVER_NAME = "trtserve"
RETRY_AFTER_S = 1  # what a 503 (warming up, overloaded) asks a client to wait before trying again
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
# Routes that need the admin scope (with /v2/models/stats); every other one but health needs infer.
ADMIN_ROUTES = frozenset({"/rollout", "/feedback", "/monitor", "/stats"})
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
    return HttpResponse(status, error_body(message), {"content-type": "application/json", **headers})


def _unavailable(message: str) -> HttpResponse:
    """503 with Retry-After: warming up or overloaded, worth trying again shortly."""
    return _error(503, message, **{"retry-after": str(RETRY_AFTER_S)})


class KServeHandler:
    def __init__(
        self,
        models: list[ServedModel],
        max_body_bytes: int = 64 << 20,
        telemetry: Telemetry | None = None,
        traffic: Traffic | None = None,
        rollout_command=None,  # async (model, action, args) -> {"status", "body"}: the decision-maker
        monitor: DriftMonitor | None = None,
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

    def add(self, model: ServedModel) -> None:
        """Serve one more version (a rollout's candidate, loaded and warm) beside those already here."""
        self.models.setdefault(model.name, {})[model.version] = model

    def _versions(self, name: str) -> dict[str, ServedModel]:
        versions = self.models.get(name)
        if not versions:
            raise LookupError(f"unknown model {name!r}; serving {', '.join(sorted(self.models)) or 'nothing'}")
        return versions

    def _model(self, name: str, version: str | None) -> ServedModel:
        """The version a path names, or the one answering for the model now (stable, during a rollout)."""
        versions = self._versions(name)
        if version is None:
            return self.traffic.serving(name, versions)
        if version not in versions:
            raise LookupError(f"model {name!r} has no version {version!r}; serving {', '.join(sorted(versions))}")
        return versions[version]

    def _all(self) -> list[ServedModel]:
        return [m for versions in self.models.values() for m in versions.values()]

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self._all())

    async def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, request_id: str | None = None
    ) -> HttpResponse:
        request_id = request_id or headers.get("x-request-id") or uuid.uuid4().hex
        response = await self._route(method, path.rstrip("/") or "/", headers, body, request_id)
        response.headers["x-request-id"] = request_id
        return response

    async def _route(self, method, path, headers, body, request_id) -> HttpResponse:
        if path == "/v2/health/live":  # open, with or without authentication: what probes call
            return _json(200, {"live": True})
        if path == "/v2/health/ready":
            return _json(200, {"ready": True}) if self.ready else _unavailable("models are warming up")
        match = _MODEL.match(path)
        if self.auth is not None:
            # Before anything else, unknown routes included: without a token nothing about the server shows.
            scope = ADMIN if path == "/v2/models/stats" or (match and match["rest"] in ADMIN_ROUTES) else INFER
            verdict = self.auth.check(headers.get("authorization"), scope)
            if not verdict.allowed:
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
        if path == "/v2":
            return _json(200, {"name": SERVER_NAME, "version": self.version, "extensions": EXTENSIONS})
        if path == "/v2/models/stats":
            return _json(200, {"model_stats": [triton.statistics(m) for m in self._all()]})
        if not match:
            return _error(404, f"no route {method} {path}")
        rest = match["rest"] or ""
        if rest == "/rollout":
            return await self._rollout(method, match["name"], body)
        if rest == "/feedback" and match["version"] is None:
            return self._feedback(method, match["name"], body)
        try:
            if rest == "/infer":
                # Sticky on the request's key: its X-Request-ID (Ray Serve passes it on as its own) until the
                # body is read, then the body's "id" where it has one (_infer routes again on it).
                versions = self._versions(match["name"])
                model, route = self.traffic.route(match["name"], versions, request_id, match["version"])
            else:
                model = self._model(match["name"], match["version"])
        except LookupError as e:
            return _error(404, str(e))
        if rest == "/infer":
            if method != "POST":
                return _error(405, "infer takes POST")
            mirror = self.models[model.name].get(route.mirror) if route.mirror else None
            reroute = None if match["version"] else functools.partial(self._reroute, model.name, versions)
            return await self._infer(model, headers, body, request_id, mirror, reroute)
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

    async def _rollout(self, method: str, name: str, body: bytes) -> HttpResponse:
        """GET: the rollout's status; POST {"action": start|pause|resume|promote|rollback|history, ...}."""
        if self.rollout_command is None:
            return _error(404, "this application has no rollout decision-maker")
        if method == "GET":
            action, args = "status", {}
        elif method == "POST":
            try:
                args = orjson.loads(body or b"{}")
                action = args.pop("action")
            except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError):
                return _error(400, 'a rollout command is JSON with an "action"')
        else:
            return _error(405, "rollout takes GET or POST")
        result = await self.rollout_command(name, action, args)
        return _json(result["status"], result["body"])

    def _feedback(self, method: str, name: str, body: bytes) -> HttpResponse:
        """POST {"id", "label", "time"?} or a list of them: labels to join with the captures by id."""
        if method != "POST":
            return _error(405, "feedback takes POST")
        try:
            self._versions(name)
            sink = self.captures.get(name)
            if sink is None:
                raise LookupError(f"model {name!r} has no capture destination for feedback; set capture.destination")
            accepted = sink.add_feedback(orjson.loads(body))
        except LookupError as e:
            return _error(404, str(e))
        except orjson.JSONDecodeError as e:
            return _error(400, f"malformed JSON: {e}")
        except FeedbackError as e:
            return _error(400, str(e))
        except OverflowError as e:
            return _unavailable(str(e))
        return _json(200, {"accepted": accepted})

    def _reroute(self, name: str, versions, key: str) -> tuple[ServedModel, ServedModel | None]:
        model, route = self.traffic.route(name, versions, key)
        return model, (versions.get(route.mirror) if route.mirror else None)

    async def _infer(
        self,
        model: ServedModel,
        headers,
        body: bytes,
        request_id: str,
        mirror: ServedModel | None = None,
        reroute: Callable[[str], tuple[ServedModel, ServedModel | None]] | None = None,
    ) -> HttpResponse:
        """Answer from `model`; with `mirror`, the same request also runs there after the answer is sent.
        With `reroute`, a body whose "id" differs from the request id is routed again on that id."""
        started = time.perf_counter()
        queue_s = compute_s = 0.0
        rows = timing_rows = 0
        request = outputs = None
        arrived = model  # counted in flight where it arrived, whichever version answers
        self.telemetry.in_flight(arrived, +1)
        try:
            if len(body) > self.max_body_bytes:
                response = _error(413, f"request body of {len(body)} bytes exceeds the limit of {self.max_body_bytes}")
            elif not model.ready:
                response = _unavailable(f"model {model.name!r} is warming up")
            else:
                with model.batcher.arriving():
                    length = headers.get(HEADER_LENGTH)
                    try:
                        header_length = int(length) if length is not None else None
                    except ValueError:
                        raise ProtocolError(f"Inference-Header-Content-Length {length!r} is not an integer") from None
                    request = decode_request(body, header_length)
                    if reroute is not None and request.id is not None and request.id != request_id:
                        model, mirror = reroute(request.id)
                    feed = model.feed_from(request)
                    rows = next(iter(feed.values())).shape[0]
                    pending = model.batcher.submit(feed, model.work_of(feed), model.options.timeout_s)
                # Awaited outside `arriving()`: once queued, the request no longer counts as on its way.
                outputs, timing = await pending
                self.traffic.ran(model, 200, timing.get("compute_s", 0.0))
                queue_s, compute_s = timing.get("queue_s", 0.0), timing.get("compute_s", 0.0)
                timing_rows = timing.get("batch_rows", rows)
                payload, extra = encode_response(model.name, model.version, outputs, request)
                response = HttpResponse(200, payload, extra)
                if mirror is not None:
                    self.traffic.mirror(model, mirror, feed, outputs)
        except ProtocolError as e:
            response = _error(e.status, str(e))
        except InputError as e:
            response = _error(400, str(e))
        except Overloaded as e:
            response = _unavailable(f"model {model.name!r} is overloaded: {e}")
            self.traffic.ran(model, 503, 0.0)
        except TimedOut as e:
            response = _error(504, f"model {model.name!r} timed out: {e}")
            self.traffic.ran(model, 504, time.perf_counter() - started)
        except TrtserveError as e:
            log.warning("%s: %s", model.name, e, extra={"request_id": request_id})
            response = _error(500, str(e))
            self.traffic.ran(model, 500, time.perf_counter() - started)
        except Exception as e:  # an engine failure: this request fails, the replica keeps serving
            log.exception("inference failed", extra={"request_id": request_id, "model": model.name})
            response = _error(500, f"inference failed: {type(e).__name__}: {e}")
            self.traffic.ran(model, 500, time.perf_counter() - started)
        finally:
            self.telemetry.in_flight(arrived, -1)
        seconds = time.perf_counter() - started
        sink = self.captures.get(model.name)
        if sink is not None and request is not None:
            inference_id = request.id or request_id
            scored = model.manifest.evaluation
            if outputs is not None and scored is not None and scored.metric == "accuracy":
                sink.remember(inference_id, model.version, outputs[scored.output])
            if sink.wants(inference_id):
                returned = outputs
                if outputs is not None and request.outputs is not None:
                    returned = {o.name: outputs[o.name] for o in request.outputs}
                sink.record(
                    inference_id,
                    model.version,
                    self.traffic.role(model),
                    response.status,
                    seconds,
                    request.inputs,
                    returned,
                )
        model.counts.record(response.status == 200, seconds, rows)
        self.traffic.answered(model, response.status, seconds)
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

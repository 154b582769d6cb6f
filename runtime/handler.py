"""The Open Inference Protocol over HTTP for a set of hosted models, independent of the web framework:
(method, path, headers, body) in, (status, headers, body) out. The Ray Serve deployment and the tests
both drive it through `handle`."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from runtime.batcher import Overloaded, TimedOut
from runtime.errors import InputError, TrtserveError
from runtime.host import ModelHost
from runtime.protocol import HEADER_LENGTH, ProtocolError, decode_request, encode_response, error_body

log = logging.getLogger("trtserve.server")

SERVER_NAME = "trtserve"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/[a-z]+)?$")


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Telemetry:
    """Where the server reports what happened; the Ray deployment plugs in Ray's metrics."""

    def request(self, host: ModelHost | None, status: int, seconds: float, queue_s: float, compute_s: float) -> None:
        pass

    def in_flight(self, host: ModelHost, delta: int) -> None:
        pass


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


class KServeHandler:
    def __init__(
        self,
        hosts: list[ModelHost],
        max_body_bytes: int = 64 << 20,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.hosts: dict[str, dict[str, ModelHost]] = {}
        for host in hosts:
            self.hosts.setdefault(host.name, {})[host.version] = host
        self.max_body_bytes = max_body_bytes
        self.telemetry = telemetry or Telemetry()
        self.version = _package_version()

    def _host(self, name: str, version: str | None) -> ModelHost:
        versions = self.hosts.get(name)
        if not versions:
            raise LookupError(f"unknown model {name!r}; serving {', '.join(sorted(self.hosts)) or 'nothing'}")
        if version is None:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise LookupError(f"model {name!r} has no version {version!r}; serving {', '.join(sorted(versions))}")
        return versions[version]

    @property
    def ready(self) -> bool:
        return all(h.ready for versions in self.hosts.values() for h in versions.values())

    async def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, request_id: str | None = None
    ) -> HttpResponse:
        request_id = request_id or headers.get("x-request-id") or uuid.uuid4().hex
        response = await self._route(method, path.rstrip("/") or "/", headers, body, request_id)
        response.headers["x-request-id"] = request_id
        return response

    async def _route(self, method, path, headers, body, request_id) -> HttpResponse:
        if path == "/v2/health/live":
            return _json(200, {"live": True})
        if path == "/v2/health/ready":
            return (
                _json(200, {"ready": True})
                if self.ready
                else _error(503, "models are warming up", **{"retry-after": "1"})
            )
        if path == "/v2":
            return _json(200, {"name": SERVER_NAME, "version": self.version, "extensions": EXTENSIONS})
        if path == "/v2/models/stats":
            return _json(200, {"model_stats": [h.stats() for v in self.hosts.values() for h in v.values()]})
        match = _MODEL.match(path)
        if not match:
            return _error(404, f"no route {method} {path}")
        try:
            host = self._host(match["name"], match["version"])
        except LookupError as e:
            return _error(404, str(e))
        rest = match["rest"] or ""
        if rest == "/infer":
            if method != "POST":
                return _error(405, "infer takes POST")
            return await self._infer(host, headers, body, request_id)
        if method != "GET":
            return _error(405, f"{path} takes GET")
        if rest == "":
            return _json(200, host.metadata())
        if rest == "/ready":
            if host.ready:
                return _json(200, {"name": host.name, "ready": True})
            return _error(503, f"model {host.name!r} is warming up", **{"retry-after": "1"})
        if rest == "/config":
            return _json(200, host.triton_config())
        if rest == "/stats":
            return _json(200, {"model_stats": [{**host.stats(), **self._loop_cpu()}]})
        return _error(404, f"no route {method} {path}")

    @staticmethod
    def _loop_cpu() -> dict:
        """What the event loop's thread (this one: /stats is answered on it) has used on Linux: CPU time,
        and time it was runnable but waiting for a CPU. With request counts, the loop's own cost a
        request, whether or not the loop is what limits the replica (`benchmarks calibrate` reads it)."""
        try:
            with open("/proc/thread-self/schedstat") as f:
                cpu_ns, wait_ns = (int(v) for v in f.read().split()[:2])
        except (OSError, ValueError):  # not Linux, or no scheduler statistics
            return {}
        return {"event_loop_cpu_ns": cpu_ns, "event_loop_wait_ns": wait_ns}

    async def _infer(self, host: ModelHost, headers, body: bytes, request_id: str) -> HttpResponse:
        started = time.perf_counter()
        queue_s = compute_s = 0.0
        rows = timing_rows = 0
        self.telemetry.in_flight(host, +1)
        try:
            if len(body) > self.max_body_bytes:
                response = _error(413, f"request body of {len(body)} bytes exceeds the limit of {self.max_body_bytes}")
            elif not host.ready:
                response = _error(503, f"model {host.name!r} is warming up", **{"retry-after": "1"})
            else:
                decode_started = time.perf_counter()
                with host.batcher.arriving():
                    length = headers.get(HEADER_LENGTH)
                    try:
                        header_length = int(length) if length is not None else None
                    except ValueError:
                        raise ProtocolError(f"Inference-Header-Content-Length {length!r} is not an integer") from None
                    request = decode_request(body, header_length)
                    feed = host.feed_from(request)
                    rows = next(iter(feed.values())).shape[0]
                    pending = host.batcher.submit(feed, host.work_of(feed), host.options.timeout_s)
                decoded = time.perf_counter()
                # Awaited outside `arriving()`: once queued, the request no longer counts as on its way.
                outputs, timing = await pending
                queue_s, compute_s = timing.get("queue_s", 0.0), timing.get("compute_s", 0.0)
                timing_rows = timing.get("batch_rows", rows)
                encode_started = time.perf_counter()
                payload, extra = encode_response(host.name, host.version, outputs, request)
                response = HttpResponse(200, payload, extra)
                host.record_handling(decoded - decode_started, time.perf_counter() - encode_started)
        except ProtocolError as e:
            response = _error(e.status, str(e))
        except InputError as e:
            response = _error(400, str(e))
        except Overloaded as e:
            response = _error(503, f"model {host.name!r} is overloaded: {e}", **{"retry-after": "1"})
        except TimedOut as e:
            response = _error(504, f"model {host.name!r} timed out: {e}")
        except TrtserveError as e:
            log.warning("%s: %s", host.name, e, extra={"request_id": request_id})
            response = _error(500, str(e))
        except Exception as e:  # an engine failure: this request fails, the replica keeps serving
            log.exception("inference failed", extra={"request_id": request_id, "model": host.name})
            response = _error(500, f"inference failed: {type(e).__name__}: {e}")
        finally:
            self.telemetry.in_flight(host, -1)
        seconds = time.perf_counter() - started
        host.record(response.status == 200, seconds, rows)
        self.telemetry.request(host, response.status, seconds, queue_s, compute_s)
        log.info(
            "%s v%s %d in %.2f ms",
            host.name,
            host.version,
            response.status,
            seconds * 1e3,
            extra={
                "request_id": request_id,
                "model": host.name,
                "model_version": host.version,
                "backend": host.engine.backend,
                "status": response.status,
                "rows": rows,
                "batch_rows": timing_rows,
                "latency_ms": round(seconds * 1e3, 3),
                "queue_ms": round(queue_s * 1e3, 3),
                "compute_ms": round(compute_s * 1e3, 3),
            },
        )
        return response

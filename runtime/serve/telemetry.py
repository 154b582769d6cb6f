"""What a server reports as it works: one set of hooks, passed to the models and the handler when they
are built. `Telemetry` does nothing; `RayTelemetry` exports Prometheus metrics through Ray's metrics
system, in base units, labelled by model and version. Every hook about a model takes the version it is
about as a `ModelVersion` (a ServedModel is one): the models report here, and this module imports none of
them, nor the registry it reads what a replica serves from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from runtime.serve.histograms import CounterGrowth, CumulativeHistogram, Publisher

if TYPE_CHECKING:
    from runtime.engine.memory import Footprint
    from runtime.monitor.drift_window import WindowResult
    from runtime.serve.capture_sink import CaptureSink

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
ENTROPY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)


class ModelVersion(Protocol):
    """The model version a hook is about (runtime.serve.model.ServedModel), published as its `model` and
    `version` labels."""

    name: str
    version: str
    warmup_s: float | None
    footprint: Footprint | None


class ServedNow(Protocol):
    """What a replica serves, read at every refresh (runtime.serve.model_registry.ModelRegistry)."""

    captures: Mapping[str, CaptureSink]

    def served(self) -> Iterable[ModelVersion]: ...


class Telemetry:
    def request(self, model: ModelVersion, status: int, seconds: float, queue_s: float, compute_s: float) -> None:
        """A request answered."""

    def in_flight(self, model: ModelVersion, delta: int) -> None:
        """A request entered (+1) or left (-1) the model's handling."""

    def batch_done(self, model: ModelVersion, rows: int, seconds: float, requests: int) -> None:
        """An engine call of `rows` rows for `requests` requests took `seconds`."""

    def warmed_up(self, model: ModelVersion) -> None:
        """The model is warm: its warm-up time and memory footprint are known."""

    def predictions(self, model: ModelVersion, confidence, entropy) -> None:
        """A classifier's top-1 confidence and entropy of the rows it answered (arrays)."""

    def drift(self, model: ModelVersion, result: WindowResult) -> None:
        """A drift window of the model version closed (runtime.monitor.drift_window)."""

    def auth_failed(self, reason: str) -> None:
        """A request was refused: missing, malformed or invalid token (401), or a scope it lacks (403)."""

    def close(self) -> None:
        """The server is stopping."""


class RayTelemetry(Telemetry):
    """Histograms and counters are aggregated in the replica and published once a second
    (runtime.serve.histograms), when the gauges of the versions `serving` serves now, and its capture sinks'
    counts, are set again: no hook called per request calls Ray."""

    def __init__(self, serving: ServedNow, publish_interval_s: float = 1.0) -> None:
        from ray.serve.metrics import Counter, Gauge

        tags = ("model", "version")
        self.requests = Counter("trtserve_requests", "Inference requests by HTTP status.", tag_keys=(*tags, "status"))

        def gauge(name: str, description: str, tag_keys: tuple[str, ...]) -> Gauge:
            return Gauge(name, description, tag_keys=tag_keys)

        def histogram(name: str, description: str, boundaries=LATENCY_BUCKETS_S) -> CumulativeHistogram:
            return CumulativeHistogram(name, description, boundaries, tags, gauge)

        self.latency = histogram("trtserve_request_latency_seconds", "End-to-end latency in the replica.")
        self.queue = histogram("trtserve_queue_latency_seconds", "Time a request queued before the engine.")
        self.compute = histogram("trtserve_compute_latency_seconds", "Engine time of one engine call.")
        self.batch = histogram("trtserve_batch_size", "Rows per engine call.", BATCH_BUCKETS)
        self.inflight = Gauge("trtserve_in_flight_requests", "Requests in the replica.", tag_keys=tags)
        self.warmup = Gauge("trtserve_warmup_seconds", "Warm-up time of the model.", tag_keys=tags)
        self.memory = Gauge(
            "trtserve_memory_bytes",
            "Memory the model added to its replica, measured after warm-up at its largest batch "
            "(kind: host or device).",
            tag_keys=(*tags, "kind"),
        )
        self.confidence = histogram(
            "trtserve_prediction_confidence", "Top-1 probability of a classifier's answered rows.", CONFIDENCE_BUCKETS
        )
        self.entropy = histogram(
            "trtserve_prediction_entropy", "Entropy (nats) of a classifier's answered rows.", ENTROPY_BUCKETS
        )
        drift_tags = (*tags, "tensor")
        self.drift_score = Gauge(
            "trtserve_drift_score",
            "Drift test result of one feature in the last window (a p-value for ks, chisquare and mmd; a "
            "distance for wasserstein and jensenshannon; psi beside).",
            tag_keys=(*drift_tags, "feature", "test"),
        )
        self.drift_detected = Gauge(
            "trtserve_drift_detected",
            "1 when at least half of a tensor's features drifted in the last window.",
            tag_keys=drift_tags,
        )
        self.drift_rows = Gauge("trtserve_drift_window_rows", "Rows in the last closed drift window.", tag_keys=tags)
        self.drift_windows = Counter("trtserve_drift_windows", "Drift windows closed.", tag_keys=tags)
        self.capture = Counter(
            "trtserve_capture_records",
            "Capture and feedback records (outcome: written, dropped when the queue was full, failed).",
            tag_keys=("model", "stream", "outcome"),
        )
        self.feedback_labels = Counter(
            "trtserve_feedback_labels",
            "Feedback labels judged against the class this replica answered (outcome: correct, wrong; "
            "unmatched when it did not answer that request or no longer remembers it).",
            tag_keys=(*tags, "outcome"),
        )
        self.auth_failures = Counter(
            "trtserve_auth_failures",
            "Requests refused by authentication (reason: missing, malformed, invalid: 401; scope: 403).",
            tag_keys=("reason",),
        )
        self._serving = serving
        # Written by the event loop alone, read by the publisher's thread through copies (a dict's copy is
        # one step under the GIL): no lock on the request path.
        self._answered: dict[tuple[str, str, int], int] = {}  # (model, version, status) -> requests
        self._inflight: dict[tuple[str, str], int] = {}
        self._inflight_set: dict[tuple[str, str], int] = {}  # what the gauge was last set to
        self._refused: dict[tuple[str], int] = {}  # (reason,) -> requests
        self._drift: dict[tuple[str, str], WindowResult] = {}  # (model, version) -> its last window
        self._requests_growth = CounterGrowth(self.requests, (*tags, "status"))
        self._refused_growth = CounterGrowth(self.auth_failures, ("reason",))
        self._capture_growth = CounterGrowth(self.capture, ("model", "stream", "outcome"))
        self._judged_growth = CounterGrowth(self.feedback_labels, (*tags, "outcome"))
        self._histograms = [self.latency, self.queue, self.compute, self.batch, self.confidence, self.entropy]
        self.publisher = Publisher(
            self._histograms,
            publish_interval_s,
            refresh=[self._refresh],
        ).start()

    @staticmethod
    def _tags(model: ModelVersion) -> dict[str, str]:
        return {"model": model.name, "version": model.version}

    def request(self, model, status, seconds, queue_s, compute_s) -> None:
        key = (model.name, model.version, status)
        self._answered[key] = self._answered.get(key, 0) + 1
        tags = self._tags(model)
        self.latency.observe(seconds, tags)
        if status == 200:
            self.queue.observe(queue_s, tags)

    def in_flight(self, model, delta) -> None:
        key = (model.name, model.version)
        self._inflight[key] = self._inflight.get(key, 0) + delta

    def batch_done(self, model, rows, seconds, requests) -> None:
        tags = self._tags(model)
        self.batch.observe(rows, tags)
        self.compute.observe(seconds, tags)

    def warmed_up(self, model) -> None:
        self._set_model_gauges(model)

    def predictions(self, model, confidence, entropy) -> None:
        tags = self._tags(model)
        self.confidence.observe_many(confidence, tags)
        self.entropy.observe_many(entropy, tags)

    def drift(self, model, result) -> None:
        self._drift[(model.name, model.version)] = result
        tags = self._tags(model)
        self.drift_windows.inc(1, tags)
        self._set_drift_gauges(tags, result)

    def auth_failed(self, reason) -> None:
        key = (reason,)
        self._refused[key] = self._refused.get(key, 0) + 1

    def close(self) -> None:
        self.publisher.stop()

    def _refresh(self) -> None:
        served = list(self._serving.served())
        for model in served:
            self._set_model_gauges(model)
        # A retired version's series are left alone from now on: they drop out of Ray's report.
        versions = {(model.name, model.version) for model in served}
        for histogram in self._histograms:
            histogram.keep_only(lambda tags: (tags["model"], tags["version"]) in versions)
        for (model, version), result in list(self._drift.items()):
            if (model, version) in versions:
                self._set_drift_gauges({"model": model, "version": version}, result)
            else:
                self._drift.pop((model, version), None)
        self._requests_growth.publish(self._answered.copy())
        self._refused_growth.publish(self._refused.copy())
        for key, requests in self._inflight.copy().items():
            # A retired version's is set once more when it changed (to 0 as its last request leaves), then
            # left alone.
            if key in versions or requests != self._inflight_set.get(key):
                self.inflight.set(requests, dict(zip(("model", "version"), key, strict=True)))
                self._inflight_set[key] = requests
        captured, judged = {}, {}
        for model, sink in self._serving.captures.items():
            for stream, writer in (("capture", sink.records), ("feedback", sink.feedback)):
                if writer is not None:
                    for outcome in ("written", "dropped", "failed"):
                        captured[(model, stream, outcome)] = getattr(writer.stats, outcome)
            for (version, outcome), now in list(sink.judged.items()):
                judged[(model, version, outcome)] = now
        self._capture_growth.publish(captured)
        self._judged_growth.publish(judged)

    def _set_drift_gauges(self, tags: dict[str, str], result: WindowResult) -> None:
        self.drift_rows.set(result.rows, tags)
        for tensor in result.tensors:
            tensor_tags = {**tags, "tensor": tensor.name}
            self.drift_detected.set(1.0 if tensor.drifted else 0.0, tensor_tags)
            for f in tensor.features:
                self.drift_score.set(f.score, {**tensor_tags, "feature": f.feature, "test": f.test})
                if f.psi is not None:
                    self.drift_score.set(f.psi, {**tensor_tags, "feature": f.feature, "test": "psi"})

    def _set_model_gauges(self, model: ModelVersion) -> None:
        tags = self._tags(model)
        self.warmup.set(model.warmup_s or 0.0, tags)
        if model.footprint is not None:
            self.memory.set(model.footprint.host_bytes, {**tags, "kind": "host"})
            if model.footprint.device_bytes is not None:
                self.memory.set(model.footprint.device_bytes, {**tags, "kind": "device"})

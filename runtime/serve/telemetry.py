"""What a server reports as it works: one set of hooks, passed to the models and the handler when they
are built. `Telemetry` does nothing; `RayTelemetry` exports Prometheus metrics through Ray's metrics
system, in base units, labelled by model and version."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.serve.histograms import CumulativeHistogram, Publisher

if TYPE_CHECKING:
    from runtime.serve.model import ServedModel

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Telemetry:
    def request(self, model: ServedModel | None, status: int, seconds: float, queue_s: float, compute_s: float) -> None:
        """A request answered (`model` None when it named no served model)."""

    def in_flight(self, model: ServedModel, delta: int) -> None:
        """A request entered (+1) or left (-1) the model's handling."""

    def batch_done(self, model: ServedModel, rows: int, seconds: float, requests: int) -> None:
        """An engine call of `rows` rows for `requests` requests took `seconds`."""

    def warmed_up(self, model: ServedModel) -> None:
        """The model is warm: its warm-up time and memory footprint are known."""

    def close(self) -> None:
        """The server is stopping."""


class RayTelemetry(Telemetry):
    """Histograms are aggregated in the replica and published once a second (runtime.serve.histograms)."""

    def __init__(self, publish_interval_s: float = 1.0) -> None:
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
        self._inflight: dict[tuple[str, str], int] = {}
        self._warm: list[ServedModel] = []
        self.publisher = Publisher(
            [self.latency, self.queue, self.compute, self.batch], publish_interval_s, refresh=[self._refresh]
        ).start()

    @staticmethod
    def _tags(model: ServedModel) -> dict[str, str]:
        return {"model": model.name, "version": model.version}

    def request(self, model, status, seconds, queue_s, compute_s) -> None:
        if model is None:
            return
        tags = self._tags(model)
        self.requests.inc(1, {**tags, "status": str(status)})
        self.latency.observe(seconds, tags)
        if status == 200:
            self.queue.observe(queue_s, tags)

    def in_flight(self, model, delta) -> None:
        key = (model.name, model.version)
        self._inflight[key] = self._inflight.get(key, 0) + delta
        self.inflight.set(self._inflight[key], self._tags(model))

    def batch_done(self, model, rows, seconds, requests) -> None:
        tags = self._tags(model)
        self.batch.observe(rows, tags)
        self.compute.observe(seconds, tags)

    def warmed_up(self, model) -> None:
        self._warm.append(model)
        self._set_model_gauges(model)

    def close(self) -> None:
        self.publisher.stop()

    def _refresh(self) -> None:
        for model in list(self._warm):
            self._set_model_gauges(model)

    def _set_model_gauges(self, model: ServedModel) -> None:
        tags = self._tags(model)
        self.warmup.set(model.warmup_s or 0.0, tags)
        if model.footprint is not None:
            self.memory.set(model.footprint.host_bytes, {**tags, "kind": "host"})
            if model.footprint.device_bytes is not None:
                self.memory.set(model.footprint.device_bytes, {**tags, "kind": "device"})

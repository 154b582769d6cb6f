"""Memory-aware autoscaling: how many replicas the load asks for, never more than the memory holds.

`MemoryAwarePolicy` is a Ray Serve custom autoscaling policy (a class; Ray builds it once with the
config's `policy_kwargs` and calls it with an `AutoscalingContext` every control loop). It reads only the
context, so it is a pure function of what Ray passes and is tested without a cluster. Ray applies
min/max replicas and the upscale/downscale delays to what it returns.

Load: ongoing requests (queued at the handles and in the replicas) against `target_ongoing_requests` per
replica; a deployment whose replicas run full batches with work still queued gets one more replica.
Hysteresis: it scales down only when the load would fit in fewer replicas with `hysteresis` to spare.
Memory: each replica reports (record_autoscaling_stats) its measured footprint and what its node has
left; the policy adds no replica that would not fit with `headroom`, within the declared
`host_budget_bytes` / `device_budget_bytes` if any. Memory seen from the replicas' nodes only, so on a
multi-node cluster the estimate is conservative (a node with no replica yet is not counted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.serve.app_args import RAY_AUTOSCALING_KEYS, Autoscaling

if TYPE_CHECKING:
    from runtime.serve.model import ServedModel
    from runtime.serve.placement import ReplicaNeed

MiB = 2**20

# Metric names replicas report through record_autoscaling_stats (floats, averaged by Ray over its window).
BATCH_FILL = "trtserve_batch_fill"  # rows per engine call / max_batch_size, over the last window
QUEUED_ROWS = "trtserve_queued_rows"
REPLICA_HOST_BYTES = "trtserve_replica_host_bytes"  # the replica process after warm-up
HOST_AVAILABLE_BYTES = "trtserve_host_available_bytes"  # what the replica's node has left
REPLICA_DEVICE_BYTES = "trtserve_replica_device_bytes"
DEVICE_FREE_BYTES = "trtserve_device_free_bytes"


class ServedLoad:
    """The part of a replica's report (record_autoscaling_stats) its models make: how full their batches ran
    since the last report, the rows they have queued, the device memory they hold. Only the versions served
    now count: a retired one stops counting at once."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}  # version label -> (batches, rows) at the last report

    def report(self, models: Iterable[ServedModel]) -> dict[str, float]:
        fills, queued, device, last = [], 0, 0, {}
        for model in models:
            stats = model.batcher.stats
            before = self._last.get(model.label, (0, 0))
            calls, rows = stats.batches - before[0], stats.rows - before[1]
            last[model.label] = (stats.batches, stats.rows)
            if calls:
                fills.append(rows / calls / model.max_batch_size)
            queued += model.batcher.queued_rows
            if model.footprint and model.footprint.device_bytes:
                device += model.footprint.device_bytes
        self._last = last
        report = {BATCH_FILL: max(fills) if fills else 0.0, QUEUED_ROWS: float(queued)}
        if device:
            report[REPLICA_DEVICE_BYTES] = float(device)
        return report


@dataclass
class Decision:
    replicas: int
    load_replicas: int
    memory_replicas: int | None
    reason: str

    def state(self) -> dict[str, Any]:
        return {
            "trtserve": {
                "load_replicas": self.load_replicas,
                "memory_replicas": self.memory_replicas,
                "reason": self.reason,
            }
        }


@dataclass
class MemoryAwarePolicy:
    target_ongoing_requests: float = 8.0
    hysteresis: float = 0.25
    batch_fill_high: float = 0.75
    headroom: float = 0.2
    host_budget_bytes: int | None = None
    device_budget_bytes: int | None = None
    replica_host_bytes: int | None = None  # what placement reserved per replica; replicas' own figure if larger
    replica_device_bytes: int | None = None

    def __call__(self, ctx) -> tuple[int, dict[str, Any]]:
        decision = self.decide(ctx)
        return decision.replicas, decision.state()

    # --- the decision ---------------------------------------------------------------------------

    def decide(self, ctx) -> Decision:
        current = ctx.current_num_replicas
        if current == 0:
            return Decision(max(ctx.target_num_replicas, 1), 1, None, "cold start")
        metrics = _metrics(ctx)
        load, reason = self._load_replicas(ctx, current, metrics)
        memory = self._memory_replicas(current, metrics)
        if memory is not None and load > memory:
            return Decision(max(memory, min(current, load)), load, memory, f"{reason}; capped by memory at {memory}")
        return Decision(load, load, memory, reason)

    def _load_replicas(self, ctx, current: int, metrics: dict) -> tuple[int, str]:
        ongoing = float(ctx.total_num_requests or 0.0)
        wanted = math.ceil(ongoing / self.target_ongoing_requests) if ongoing > 0 else 1
        fill = _mean(metrics.get(BATCH_FILL))
        queued = _total(metrics.get(QUEUED_ROWS))
        if wanted <= current and fill is not None and fill >= self.batch_fill_high and queued > 0:
            return current + 1, f"batches {fill:.0%} full with {queued:.0f} rows queued"
        if wanted > current:
            return wanted, f"{ongoing:.0f} ongoing requests > {current} x {self.target_ongoing_requests:g}"
        if wanted < current:
            # Hysteresis: go down only if the load fits the smaller count with room to spare.
            smaller = max(1, wanted)
            if ongoing <= smaller * self.target_ongoing_requests * (1.0 - self.hysteresis):
                return smaller, f"{ongoing:.0f} ongoing requests fit {smaller} replica(s)"
            return current, "within the hysteresis band"
        return current, "load matches"

    def _memory_replicas(self, current: int, metrics: dict) -> int | None:
        """The most replicas memory allows, or None when nothing limits it."""
        limits = []
        for need_key, free_key, budget, fallback in (
            (REPLICA_HOST_BYTES, HOST_AVAILABLE_BYTES, self.host_budget_bytes, self.replica_host_bytes),
            (REPLICA_DEVICE_BYTES, DEVICE_FREE_BYTES, self.device_budget_bytes, self.replica_device_bytes),
        ):
            # The larger of what replicas report and what placement reserved for one.
            reported = _max(metrics.get(need_key))
            need = max(reported or 0, fallback or 0)
            if not need:
                continue
            need_with_headroom = need * (1.0 + self.headroom)
            if budget is not None:
                limits.append(max(1, int(budget // need_with_headroom)))
            free = _max(metrics.get(free_key))
            if free is not None:
                limits.append(current + max(0, int(free // need_with_headroom)))
        return min(limits) if limits else None


def _metrics(ctx) -> dict[str, dict]:
    try:
        return ctx.aggregated_metrics or {}
    except Exception:  # lazily evaluated by Ray; a failure there must not stop scaling on load
        return {}


def _values(per_replica) -> list[float]:
    return [float(v) for v in (per_replica or {}).values() if v is not None]


def _mean(per_replica) -> float | None:
    values = _values(per_replica)
    return sum(values) / len(values) if values else None


def _max(per_replica) -> float | None:
    values = _values(per_replica)
    return max(values) if values else None


def _total(per_replica) -> float:
    return sum(_values(per_replica))


def ray_autoscaling_config(spec: Autoscaling, need: ReplicaNeed | None) -> dict[str, Any]:
    """Ray Serve's autoscaling_config running `MemoryAwarePolicy` with the app's `autoscaling` settings
    and, where placement knows it, what one replica reserves."""
    given = spec.model_dump(exclude_none=True)
    config = {k: given[k] for k in RAY_AUTOSCALING_KEYS if k in given}
    kwargs: dict[str, Any] = {
        k: given[k] for k in ("target_ongoing_requests", "hysteresis", "batch_fill_high", "headroom") if k in given
    }
    if spec.memory_budget_mb is not None:
        kwargs["host_budget_bytes"] = int(spec.memory_budget_mb * MiB)
    if spec.gpu_memory_budget_mb is not None:
        kwargs["device_budget_bytes"] = int(spec.gpu_memory_budget_mb * MiB)
    if need is not None:
        kwargs["replica_host_bytes"] = need.host_bytes
        if need.device_bytes is not None:
            kwargs["replica_device_bytes"] = need.device_bytes
    config["policy"] = {"policy_function": f"{__name__}:MemoryAwarePolicy", "policy_kwargs": kwargs}
    return config

"""The memory-aware policy over synthetic autoscaling contexts (no Ray cluster)."""

from types import SimpleNamespace

import pytest

from runtime.serve.autoscaling import (
    BATCH_FILL,
    DEVICE_FREE_BYTES,
    HOST_AVAILABLE_BYTES,
    QUEUED_ROWS,
    REPLICA_DEVICE_BYTES,
    REPLICA_HOST_BYTES,
    MemoryAwarePolicy,
)

MiB = 2**20


def ctx(current=1, ongoing=0.0, metrics=None, target=None):
    replicas = [f"r{i}" for i in range(current)]
    per_replica = {name: dict.fromkeys(replicas, value) for name, value in (metrics or {}).items()}
    return SimpleNamespace(
        current_num_replicas=current,
        target_num_replicas=target if target is not None else current,
        total_num_requests=ongoing,
        aggregated_metrics=per_replica,
        policy_state={},
    )


def test_scales_up_with_ongoing_requests_when_memory_allows():
    policy = MemoryAwarePolicy(target_ongoing_requests=8)
    memory = {REPLICA_HOST_BYTES: 200 * MiB, HOST_AVAILABLE_BYTES: 4096 * MiB}
    replicas, state = policy(ctx(current=1, ongoing=30, metrics=memory))
    assert replicas == 4
    assert "30 ongoing" in state["trtserve"]["reason"]


def test_never_beyond_what_fits_in_free_memory_with_headroom():
    policy = MemoryAwarePolicy(target_ongoing_requests=8, headroom=0.2)
    # 1000 MiB free, 200 MiB a replica + 20% = 240 MiB: 4 more fit beside the 2 running.
    memory = {REPLICA_HOST_BYTES: 200 * MiB, HOST_AVAILABLE_BYTES: 1000 * MiB}
    replicas, state = policy(ctx(current=2, ongoing=200, metrics=memory))
    assert replicas == 6
    assert state["trtserve"]["memory_replicas"] == 6 and "capped by memory" in state["trtserve"]["reason"]


def test_headroom_changes_what_fits():
    memory = {REPLICA_HOST_BYTES: 200 * MiB, HOST_AVAILABLE_BYTES: 1000 * MiB}
    assert MemoryAwarePolicy(headroom=0.0)(ctx(current=1, ongoing=500, metrics=memory))[0] == 6
    assert MemoryAwarePolicy(headroom=1.0)(ctx(current=1, ongoing=500, metrics=memory))[0] == 3


def test_a_declared_budget_caps_the_count():
    policy = MemoryAwarePolicy(host_budget_bytes=1000 * MiB, headroom=0.25)
    memory = {REPLICA_HOST_BYTES: 200 * MiB, HOST_AVAILABLE_BYTES: 64 * 1024 * MiB}
    assert policy(ctx(current=1, ongoing=1000, metrics=memory))[0] == 4  # 1000 // 250


def test_device_memory_caps_too():
    policy = MemoryAwarePolicy(headroom=0.0)
    memory = {
        REPLICA_HOST_BYTES: 100 * MiB,
        HOST_AVAILABLE_BYTES: 64 * 1024 * MiB,
        REPLICA_DEVICE_BYTES: 3000 * MiB,
        DEVICE_FREE_BYTES: 7000 * MiB,
    }
    assert policy(ctx(current=1, ongoing=1000, metrics=memory))[0] == 3  # 1 running + 2 more fit


def test_does_not_fit_at_all_keeps_what_runs():
    policy = MemoryAwarePolicy()
    memory = {REPLICA_HOST_BYTES: 500 * MiB, HOST_AVAILABLE_BYTES: 100 * MiB}
    replicas, state = policy(ctx(current=3, ongoing=1000, metrics=memory))
    assert replicas == 3  # no more, and running replicas are not removed for memory
    assert state["trtserve"]["memory_replicas"] == 3


def test_the_larger_of_placement_and_reported_need_counts():
    policy = MemoryAwarePolicy(replica_host_bytes=300 * MiB, host_budget_bytes=900 * MiB, headroom=0.0)
    assert policy(ctx(current=1, ongoing=1000, metrics={}))[0] == 3  # before replicas report
    assert policy(ctx(current=1, ongoing=1000, metrics={REPLICA_HOST_BYTES: 100 * MiB}))[0] == 3
    assert policy(ctx(current=1, ongoing=1000, metrics={REPLICA_HOST_BYTES: 450 * MiB}))[0] == 2


def test_hysteresis_holds_until_the_load_fits_with_room_to_spare():
    policy = MemoryAwarePolicy(target_ongoing_requests=10, hysteresis=0.25)
    assert policy(ctx(current=4, ongoing=28))[0] == 4  # 3 replicas would need <= 22.5
    assert policy(ctx(current=4, ongoing=22))[0] == 3
    assert policy(ctx(current=4, ongoing=0))[0] == 1


def test_full_batches_with_work_queued_add_a_replica():
    policy = MemoryAwarePolicy(target_ongoing_requests=64, batch_fill_high=0.75)
    full = {BATCH_FILL: 0.9, QUEUED_ROWS: 40}
    assert policy(ctx(current=2, ongoing=100, metrics=full))[0] == 3
    idle_queue = {BATCH_FILL: 0.9, QUEUED_ROWS: 0}
    assert policy(ctx(current=2, ongoing=100, metrics=idle_queue))[0] == 2


def test_cold_start_and_broken_metrics():
    assert MemoryAwarePolicy()(ctx(current=0, target=0))[0] == 1

    class Broken(SimpleNamespace):
        @property
        def aggregated_metrics(self):
            raise RuntimeError("metrics store unavailable")

    broken = Broken(current_num_replicas=1, target_num_replicas=1, total_num_requests=40, policy_state={})
    assert MemoryAwarePolicy(target_ongoing_requests=8)(broken)[0] == 5


@pytest.mark.parametrize("ongoing", [0, 7, 8, 9, 100])
def test_never_below_one(ongoing):
    assert MemoryAwarePolicy(target_ongoing_requests=8)(ctx(current=1, ongoing=ongoing))[0] >= 1

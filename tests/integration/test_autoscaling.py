"""Memory-aware autoscaling on real Ray Serve (local, CPU): with a declared memory budget, a load ramp
scales `cnn` up to the memory-permitted count and not beyond, then back down after the load ends, with
every request answered 200 or 503 and none lost. How fast it scales is `make bench`'s business
(`benchmarks autoscale`); here only what happens, with generous bounds.

Slow tier; on the port the session's shared server also uses, so not while that one runs."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.autoscale import APP, replica_count
from benchmarks.harness import json_request
from runtime.capacity.load_generator import closed_loop
from runtime.capacity.local_server import serve_config

pytestmark = [pytest.mark.slow]

PORT = 8000
# Each replica is declared at 600 MiB (more than a cnn replica's measured ~200-300 MiB RSS, so the count
# does not depend on this machine's figures) and the budget holds three: Ray's max_replicas (5) is not
# what stops it.
REPLICA_MB, BUDGET_MB, MEMORY_MAX, RAY_MAX = 600, 1900, 3, 5


def app_args(repository: Path) -> dict:
    return {
        "repository": str(repository),
        "models": [{"name": "cnn", "max_batch_size": 8}],
        "max_ongoing_requests": 8,
        "placement": {"host_mb": REPLICA_MB, "headroom": 0.0},
        # Half a CPU each, so Ray's CPU accounting (1 per replica by default, 2 on this machine) is not
        # what stops the scale-up: memory is.
        "ray_actor_options": {"num_cpus": 0.5},
        "autoscaling": {
            "min_replicas": 1,
            "max_replicas": RAY_MAX,
            "target_ongoing_requests": 2,
            "upscale_delay_s": 1,
            "downscale_delay_s": 4,
            "look_back_period_s": 2,
            "memory_budget_mb": BUDGET_MB,
            "headroom": 0.0,
        },
    }


def test_load_ramp_scales_to_the_memory_limit_and_back(built_repository, tmp_path):
    from runtime.serve.launcher import LocalServe

    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", PORT)) == 0:
            pytest.fail(f"port {PORT} is taken: this test starts its own server")
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    request = json_request("/v2/models/cnn/infer", {"image": image})
    counts: list[tuple[float, int]] = []
    stop = threading.Event()

    def watch(server: LocalServe, started: float) -> None:
        while not stop.is_set():
            counts.append((time.monotonic() - started, replica_count(server)))
            time.sleep(0.5)

    config = serve_config(tmp_path / "autoscale.yaml", app_args(built_repository), name=APP)
    with LocalServe(config, log_path=tmp_path / "serve.log") as server:
        assert replica_count(server) == 1
        started = time.monotonic()
        watcher = threading.Thread(target=watch, args=(server, started), daemon=True)
        watcher.start()
        light = asyncio.run(closed_loop("127.0.0.1", PORT, request, 1, 3.0, warmup_s=0.0))
        heavy = asyncio.run(closed_loop("127.0.0.1", PORT, request, 48, 35.0, warmup_s=0.0))
        load_ended = time.monotonic() - started
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and replica_count(server) > 1:
            time.sleep(1)
        stop.set()
        watcher.join()
        final = replica_count(server)
        log = (tmp_path / "serve.log").read_text()

    during = [n for t, n in counts if t <= load_ended]
    assert max(during) == MEMORY_MAX, counts  # up to what the budget holds, not Ray's max_replicas
    assert max(n for _, n in counts) <= MEMORY_MAX, counts
    assert final == 1, counts  # back down once the load ended
    for result in (light, heavy):
        assert set(result.statuses) <= {200, 503}, result.statuses  # none lost: no resets, no 5xx but 503
    assert heavy.statuses.get(200, 0) >= 0.9 * heavy.completed
    # No replica killed for memory (Ray's OOM killer names "low on memory" / OutOfMemoryError).
    assert "OutOfMemoryError" not in log and "low on memory" not in log

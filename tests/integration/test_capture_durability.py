"""Nothing acknowledged is lost when a replica is SIGKILLed, on real Ray Serve: every label answered 200 by
/feedback, and every request captured more than `capture.flush_s` before the kill, is in readable Parquet
under the capture destination once the replacement replica has started (its writers recover the files
the dead one left)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml

from runtime.monitor.capture_writer import IN_PROGRESS
from runtime.monitor.quality_report import read_feedback
from runtime.serve.launcher import LocalServe
from tests.fixtures.ports import free_port
from tests.integration.test_launcher import wait_for

pytestmark = pytest.mark.slow  # a server start and two replica replacements: about a minute here

APP = "durable"
FLUSH_S = 1.0
IMAGE = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def durable(built_repository, tmp_path_factory):
    """cnn on one replica, every request captured; files rotate only after 300 s, so within the test only
    the recovery of a dead replica's files can make them Parquet."""
    workdir = tmp_path_factory.mktemp("durable")
    capture = workdir / "capture"
    port = free_port()
    app = {
        "name": APP,
        "route_prefix": "/",
        "import_path": "runtime.serve.app:build_app",
        "args": {
            "repository": str(built_repository),
            "capture": {"sampling_percent": 100, "destination": str(capture), "flush_s": FLUSH_S},
            "models": [{"name": "cnn", "version": 1}],
        },
    }
    doc = {"proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": port}, "applications": [app]}
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with LocalServe(path, ingress="proxy", log_path=workdir / "serve.log") as server:
        server.capture = capture
        yield server


def _post(server: LocalServe, path: str, doc: object) -> int:
    request = urllib.request.Request(
        server.url + path, data=json.dumps(doc).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:  # the replica died under it
        return 0


def _kill_and_wait_for_the_replacement(server: LocalServe) -> float:
    """SIGKILL the replica; when it was killed (time.monotonic), once a replacement serves."""
    (replica,) = server.replicas(APP)
    killed_at = time.monotonic()
    os.kill(replica.pid, signal.SIGKILL)

    def replaced() -> bool:
        alive = [p.pid for p in server.replicas(APP)]
        return alive not in ([], [replica.pid]) and server.get("/v2/health/ready")[0] == 200

    wait_for(replaced, 180, "a replacement replica")
    return killed_at


def test_every_acknowledged_label_survives_a_sigkill_of_the_replica(durable):
    acknowledged: list[tuple[float, list[str]]] = []  # when the 200 came, and its labels' ids
    stop = threading.Event()

    def labeller(worker: int) -> None:
        for n in range(100_000):
            if stop.is_set():
                return
            ids = [f"w{worker}-{n}-{k}" for k in range(10)]
            labels = [{"id": i, "label": k} for k, i in enumerate(ids)]
            if _post(durable, "/v2/models/cnn/feedback", labels) == 200:
                acknowledged.append((time.monotonic(), ids))
            else:  # no replica for now
                time.sleep(0.05)

    threads = [threading.Thread(target=labeller, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acknowledged) >= 40, 60, "40 POSTs of labels acknowledged")
    try:
        killed_at = _kill_and_wait_for_the_replacement(durable)  # while the labellers are still posting
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    # Acknowledged by the dead replica: made Parquet by the replacement's recovery.
    by_the_dead = {i for answered, ids in acknowledged if answered < killed_at for i in ids}
    assert len(by_the_dead) >= 400
    wait_for(lambda: by_the_dead <= set(read_feedback(durable.capture, "cnn")), 60, "the dead replica's labels")
    # Acknowledged by the replacement (a POST retried on it, or sent after): on disk in its open stream.
    everything = {i for _, ids in acknowledged for i in ids}
    assert everything <= set(read_feedback(durable.capture, "cnn")) | _in_progress_labels(durable.capture)


def _in_progress_labels(capture: Path) -> set[str]:
    """The ids in the feedback streams being written (every whole batch, as the recovery reads them)."""
    found = set()
    for path in (capture / "_feedback").rglob(f".*{IN_PROGRESS}"):
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_stream(source)
            with contextlib.suppress(StopIteration, pa.ArrowInvalid, OSError):
                while True:
                    found.update(reader.read_next_batch().column("inference_id").to_pylist())
    return found


def test_captures_older_than_flush_s_survive_a_sigkill_of_the_replica(durable):
    ids = {f"capture-{i}" for i in range(20)}
    for i in sorted(ids):
        body = {
            "id": i,
            "inputs": [
                {"name": "image", "datatype": "FP32", "shape": list(IMAGE.shape), "data": IMAGE.ravel().tolist()}
            ],
        }
        assert _post(durable, "/v2/models/cnn/infer", body) == 200
    time.sleep(FLUSH_S + 1.5)
    assert not ids & _captured(durable)  # not yet Parquet: only the dead replica's stream will have them
    _kill_and_wait_for_the_replacement(durable)
    wait_for(lambda: ids <= _captured(durable), 60, "the captures in readable Parquet")


def _captured(server: LocalServe) -> set[str]:
    """The inference ids a dataset reader of the destination reads (every file it lists is whole)."""
    if not any(server.capture.glob("model=*/**/*.parquet")):
        return set()  # no file yet: a dataset of no file has no columns
    return set(
        ds.dataset(server.capture, format="parquet").to_table(columns=["inference_id"])["inference_id"].to_pylist()
    )

"""Model monitoring on real Ray Serve: drift windows against the artifact's reference, payload capture
with redaction, feedback joined into accuracy, and a real Prometheus scraping the drift gauge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import tritonclient.http as httpclient
import yaml

from convert.zoo.minilm import reference_texts
from runtime.monitor.redaction import Redactor
from runtime.serve.launcher import LocalServe
from tests.integration.test_launcher import free_port, wait_for
from tests.unit.test_alerts import ALERTS, alert_expressions, dashboard_expressions, metric_names

WINDOW_S = 3
MIN_ROWS = 48
KEY = "monitor-test-key"

GERMAN = [
    "Der Zug nach München hatte wegen eines Stellwerksausfalls vierzig Minuten Verspätung.",
    "Bitte schicken Sie mir den Bericht bis Freitagmittag zurück.",
    "Meine Großmutter backt jeden Sonntag einen Apfelkuchen mit Zimt.",
    "Wie kann ich mein Passwort zurücksetzen, wenn ich keinen Zugriff auf meine E-Mail habe?",
    "Die Stadtverwaltung hat die neuen Parkregeln für die Innenstadt beschlossen.",
    "Gestern Abend regnete es so stark, dass der Keller unter Wasser stand.",
    "Der Torwart hielt im Elfmeterschießen zwei Schüsse und wurde zum Helden.",
    "Könnten Sie mir ein gutes Restaurant in der Nähe des Bahnhofs empfehlen?",
    "Die Aktienkurse fielen nach der überraschenden Ankündigung deutlich.",
    "Fügen Sie die Eier nacheinander hinzu und rühren Sie ständig weiter.",
    "Unser Nachbar repariert seit Wochen das undichte Dach seiner Scheune.",
    "Warum wird Brot eigentlich so schnell trocken und hart?",
    "Die Bibliothek bleibt wegen Renovierungsarbeiten bis März geschlossen.",
    "Ehrlich gesagt war der Service in diesem Hotel hervorragend.",
    "Vergiss nicht, die Pflanzen zu gießen, während ich verreist bin.",
    "Die Brücke wurde nach zwei Jahren Bauarbeiten endlich wieder eröffnet.",
    "Ich hätte das Ende des Films überhaupt nicht erwartet.",
    "Schließen Sie bitte das Fenster, bevor Sie das Büro verlassen.",
    "Die Bienen zeigen einander mit einem Tanz, wo die Blumen blühen.",
    "Der Server meldete einen Fehler, als die Festplatte voll war.",
]


@pytest.fixture(scope="module")
def monitored(built_repository, tmp_path_factory):
    """cnn and MiniLM with short drift windows; cnn captured in full (mode all), MiniLM's text hashed."""
    workdir = tmp_path_factory.mktemp("monitored")
    capture = workdir / "capture"
    port = free_port()
    monitor = {"window_s": WINDOW_S, "min_rows": MIN_ROWS}
    app = {
        "name": "monitored",
        "route_prefix": "/",
        "import_path": "runtime.serve.app:build_app",
        "args": {
            "repository": str(built_repository),
            "capture": {
                "sampling_percent": 100,
                "destination": str(capture),
                "rotate": {"max_age_s": 1},
            },
            "models": [
                {"name": "cnn", "version": 1, "monitor": monitor},
                {
                    "name": "minilm",
                    "monitor": monitor,
                    "capture": {"mode": "request", "redact": {"hash": ["text"]}},
                },
            ],
        },
    }
    doc = {"proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": port}, "applications": [app]}
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.environ["TRTSERVE_CAPTURE_KEY"] = KEY  # the replicas inherit it
    try:
        with LocalServe(path, ingress="proxy", log_path=workdir / "serve.log") as local:
            local.capture = capture
            local.client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
            yield local
    finally:
        os.environ.pop("TRTSERVE_CAPTURE_KEY", None)


def _monitor(server, model: str) -> dict:
    status, body = server.get(f"/v2/models/{model}/monitor")
    assert status == 200, body
    return json.loads(body)


def _window_after(server, model: str, moment: float, send) -> dict:
    """Keep sending until a window that started at or after `moment` has closed; that window."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        send()
        doc = _monitor(server, model)
        if doc["window"] is not None and doc["window"]["start"] >= moment:
            return doc
    raise AssertionError(f"no {model} drift window closed after {moment}: {doc}")


def _cnn_send(client, rng, shift: float = 0.0, rows: int = 8, ids: list | None = None) -> None:
    x = (rng.standard_normal((rows, 3, 32, 32), dtype=np.float32) + shift).astype(np.float32)
    tensor = httpclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    client.infer("cnn", [tensor], request_id=ids.pop() if ids else "")


def _drifted(doc: dict) -> dict[str, bool]:
    return {t["name"]: t["drifted"] for t in doc["tensors"]}


def test_cnn_drift_is_quiet_in_distribution_and_raised_when_shifted(monitored):
    client, rng = monitored.client, np.random.default_rng(7)
    empty = _monitor(monitored, "cnn")
    assert empty["model"] == "cnn" and empty["version"] == "1" and empty["reference"] is True
    quiet = []
    moment = time.time()
    for _ in range(2):  # two whole windows of unshifted traffic
        doc = _window_after(monitored, "cnn", moment, lambda: [_cnn_send(client, rng) for _ in range(4)])
        quiet.append(doc)
        moment = doc["window"]["end"]
    for doc in quiet:
        assert doc["window"]["rows"] >= MIN_ROWS
        assert _drifted(doc) == {"image": False, "logits": False}, doc
    image = next(t for t in quiet[0]["tensors"] if t["name"] == "image")
    assert {f["feature"]: f["test"] for f in image["features"]} == {"mean": "ks", "std": "ks", "norm": "ks"}
    logits = next(t for t in quiet[0]["tensors"] if t["name"] == "logits")
    assert {"class", "confidence", "entropy"} <= {f["feature"] for f in logits["features"]}
    assert next(f for f in logits["features"] if f["feature"] == "class")["test"] == "chisquare"

    shifted = _window_after(
        monitored, "cnn", time.time(), lambda: [_cnn_send(client, rng, shift=1.5) for _ in range(4)]
    )
    assert _drifted(shifted)["image"] is True, shifted
    mean = next(f for t in shifted["tensors"] if t["name"] == "image" for f in t["features"] if f["feature"] == "mean")
    assert mean["score"] < 0.05 and mean["psi"] > 0.1 and mean["drifted"]
    status, body = monitored.get("/v2/models/cnn/versions/1/monitor")
    assert status == 200 and json.loads(body)["window"] == shifted["window"]


def _minilm_send(client, texts: list[str]) -> None:
    data = np.array([t.encode() for t in texts], dtype=object)
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(data)
    client.infer("minilm", [tensor])


def test_minilm_drift_raised_by_another_language(monitored):
    client, rng = monitored.client, np.random.default_rng(3)
    english = reference_texts()
    held = _window_after(monitored, "minilm", time.time(), lambda: _minilm_send(client, list(rng.choice(english, 8))))
    assert _drifted(held) == {"input_ids": False, "attention_mask": False, "embedding": False}, held
    embedding = next(t for t in held["tensors"] if t["name"] == "embedding")
    assert [(f["feature"], f["test"]) for f in embedding["features"]] == [("embedding", "mmd")]
    german = _window_after(monitored, "minilm", time.time(), lambda: _minilm_send(client, list(rng.choice(GERMAN, 8))))
    drifted = _drifted(german)
    assert drifted["embedding"] and drifted["input_ids"], german


def _captures(capture: Path, model: str) -> list[dict]:
    """Every record in the complete capture files of a model (none before the first file closes)."""
    files = sorted(str(f) for f in (capture / f"model={model}").rglob("*.parquet"))
    return ds.dataset(files, format="parquet").to_table().to_pylist() if files else []


def test_captured_records_equal_the_responses_and_feedback_gives_the_planted_accuracy(monitored):
    client, rng = monitored.client, np.random.default_rng(11)
    answers = {}
    for i in range(40):
        x = rng.standard_normal((1, 3, 32, 32), dtype=np.float32)
        tensor = httpclient.InferInput("image", [1, 3, 32, 32], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = client.infer("cnn", [tensor], request_id=f"cap-{i}")
        answers[f"cap-{i}"] = (x, result.as_numpy("logits"))
    ids = set(answers)
    wait_for(
        lambda: ids <= {r["inference_id"] for r in _captures(monitored.capture, "cnn")}, 30, "the captures to close"
    )
    records = {r["inference_id"]: r for r in _captures(monitored.capture, "cnn") if r["inference_id"] in ids}
    for inference_id, (x, logits) in answers.items():
        record = records[inference_id]
        assert (record["model"], record["version"], record["role"], record["status"]) == ("cnn", "1", "stable", 200)
        (image,) = record["inputs"]
        assert image["name"] == "image" and image["datatype"] == "FP32" and image["shape"] == [1, 3, 32, 32]
        np.testing.assert_array_equal(np.asarray(image["values"], np.float32).reshape(1, 3, 32, 32), x)
        (out,) = record["outputs"]
        np.testing.assert_array_equal(np.asarray(out["values"], np.float32).reshape(1, 10), logits)
    assert not list(monitored.capture.rglob("*.inprogress")) or all(
        p.name.startswith(".") for p in monitored.capture.rglob("*.inprogress")
    )

    # 30 labels: 24 are the class the model answered, 6 another one: accuracy 0.8 over the labelled.
    labelled = sorted(ids)[:30]
    feedback = []
    for n, inference_id in enumerate(labelled):
        answered = int(np.argmax(answers[inference_id][1]))
        feedback.append({"id": inference_id, "label": answered if n < 24 else (answered + 1) % 10})
    status, body = _post(monitored, "/v2/models/cnn/feedback", feedback[:1])  # one object or a list
    assert status == 200 and json.loads(body) == {"accepted": 1}
    status, body = _post(monitored, "/v2/models/cnn/feedback", feedback[1:])
    assert status == 200 and json.loads(body) == {"accepted": 29}
    status, body = _post(monitored, "/v2/models/cnn/feedback", [{"id": "x", "label": "cat"}])
    assert status == 400 and "feedback[0].label" in json.loads(body)["error"]

    repository = Path(monitored.config).parent  # not a repository: the report falls back to accuracy
    plots = monitored.capture.parent / "plots"

    def report() -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "runtime.cli", "monitor", "report", "cnn", "--capture", str(monitored.capture),
             "--json", "--plots", str(plots), "--repository", str(repository)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    wait_for(lambda: report()["versions"]["1"]["labelled"] >= 30, 30, "the feedback to be written")
    doc = report()
    version = doc["versions"]["1"]
    assert doc["model"] == "cnn" and version["labelled"] == 30 and version["requests"] >= 40
    assert version["accuracy"] == pytest.approx(0.8)
    assert (plots / "metric.png").stat().st_size > 0 and (plots / "drift.png").stat().st_size > 0


def test_minilm_text_is_hashed_never_written(monitored):
    client = monitored.client
    secret = "The launch code is hidden under the blue flowerpot."
    for _ in range(2):
        _minilm_send(client, [secret])
    # The keyed hash of the request's text, as anyone holding the key (and no one else) can compute it.
    expected = Redactor(frozenset(), frozenset({"text"}), KEY.encode()).digest(
        "BYTES", np.array([secret.encode()], dtype=object)
    )

    def hashed() -> list:
        return [r for r in _captures(monitored.capture, "minilm") if r["inputs"][0]["hash"] == expected]

    wait_for(lambda: len(hashed()) >= 2, 30, "both captures of the secret text")
    records = _captures(monitored.capture, "minilm")
    assert all(r["outputs"] is None for r in records)  # mode request
    assert all(r["inputs"][0]["text"] is None and r["inputs"][0]["values"] is None for r in records)
    assert all(r["inputs"][0]["shape"] == [1] for r in hashed())
    for path in monitored.capture.rglob("*.parquet"):
        assert b"flowerpot" not in path.read_bytes()


def _post(server, path: str, doc) -> tuple[int, bytes]:
    request = urllib.request.Request(server.url + path, data=json.dumps(doc).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="requires Debian's prometheus package (.ci/run installs it)"
)
def test_prometheus_scrapes_the_drift_gauge_and_the_dashboard_and_alerts_name_only_exported_metrics(
    monitored, tmp_path
):
    discovery = monitored.session_dir / "prom_metrics_service_discovery.json"
    wait_for(discovery.exists, 30, "Ray's service discovery file")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["alerts.yml"],
                "scrape_configs": [{"job_name": "ray", "file_sd_configs": [{"files": [str(discovery)]}]}],
            }
        )
    )
    rng = np.random.default_rng(5)
    ids = [f"prom-{i}" for i in range(4)]
    answers = {}
    for inference_id in ids:  # answered, then labelled: one right, one wrong, for trtserve_feedback_labels
        x = rng.standard_normal((1, 3, 32, 32), dtype=np.float32)
        tensor = httpclient.InferInput("image", [1, 3, 32, 32], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        answers[inference_id] = int(
            np.argmax(monitored.client.infer("cnn", [tensor], request_id=inference_id).as_numpy("logits"))
        )
    labels = [{"id": ids[0], "label": answers[ids[0]]}, {"id": ids[1], "label": (answers[ids[1]] + 1) % 10}]
    assert _post(monitored, "/v2/models/cnn/feedback", labels)[0] == 200
    _window_after(monitored, "cnn", time.time(), lambda: [_cnn_send(monitored.client, rng) for _ in range(4)])
    with open(tmp_path / "prometheus.log", "w") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:

        def api(path: str, **params) -> list | dict | None:
            url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return json.loads(r.read())["data"]
            except OSError:
                return None

        found: list = []

        def scraped() -> bool:
            found[:] = (api("query", query='ray_trtserve_drift_detected{model="cnn",tensor="image"}') or {}).get(
                "result", []
            )
            return bool(found)

        wait_for(scraped, 60, "Prometheus to scrape the drift gauge")
        assert found[0]["metric"]["version"] == "1" and float(found[0]["value"][1]) in (0.0, 1.0)

        def judged() -> dict:
            query = 'sum by (outcome) (ray_trtserve_feedback_labels_total{model="cnn",version="1"})'
            return {
                r["metric"]["outcome"]: float(r["value"][1])
                for r in (api("query", query=query) or {}).get("result", [])
            }

        wait_for(lambda: judged().get("wrong", 0) >= 1, 30, "the feedback counter")
        assert judged().get("correct", 0) >= 1

        exported = set(api("label/__name__/values") or [])
        named = metric_names(dashboard_expressions()) | metric_names(alert_expressions())
        assert named - exported == set(), f"named but not exported: {sorted(named - exported)}"
        rules = [r for g in api("rules")["groups"] for r in g["rules"]]
        assert len(rules) == 5 and all(r["health"] == "ok" for r in rules), rules
    finally:
        process.terminate()
        process.wait(10)

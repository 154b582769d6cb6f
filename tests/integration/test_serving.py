"""The Open Inference Protocol on real Ray Serve (loopback), with tritonclient and raw HTTP."""

from __future__ import annotations

import http.client
import json
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as httpclient

from runtime import load_engine

TEXTS = [
    "Short one.",
    "A somewhat longer sentence about the weather turning cold in the mountains.",
    "Batching must give every caller exactly its own rows, whatever the length of its neighbours.",
    "Ok",
]


@pytest.fixture(scope="module")
def client(server):
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def raw(server, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", 8000, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


def cnn_input(x: np.ndarray, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_server_and_model_endpoints(client, server):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("minilm") and client.is_model_ready("cnn", "1")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("cnn")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert {i["name"] for i in client.get_model_metadata("minilm")["inputs"]} == {"input_ids", "attention_mask", "text"}
    config = client.get_model_config("cnn")
    assert config["max_batch_size"] == 64 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    for name in ("cnn", "minilm"):  # warm-up ran before readiness and is recorded
        stats = client.get_inference_statistics(name)["model_stats"][0]
        assert stats["warmup_seconds"] > 0
        engine = stats["engine"]  # which engine serves it, and why the others were passed over
        assert (engine["backend"], engine["device"], engine["warning"]) == ("onnxruntime", "cpu", None)
        assert engine["reason"] and engine["passed_over"][0].startswith("tensorrt: ")


@pytest.mark.parametrize("binary", [False, True])
def test_cnn_json_and_binary_match_the_engine(client, built_repository, binary):
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    result = client.infer(
        "cnn", [cnn_input(x, binary)], outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary)]
    )
    with load_engine(built_repository / "cnn" / "1", backend="onnxruntime", precision="fp32") as engine:
        expected = engine.infer({"image": x})["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_minilm_text_equals_token_inputs(client, built_repository, binary):
    texts = np.array([t.encode() for t in TEXTS], dtype=object)
    text = httpclient.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(texts, binary_data=binary)
    embedding = client.infer("minilm", [text]).as_numpy("embedding")
    assert embedding.shape == (len(TEXTS), 384)
    from tokenizers import Tokenizer

    from runtime.engine.preprocessing import encode

    tokenizer = Tokenizer.from_file(str(built_repository / "minilm/1/preprocessing/tokenizer/tokenizer.json"))
    feed = encode(tokenizer, TEXTS, 256, ["input_ids", "attention_mask"])
    inputs = []
    for name, array in feed.items():
        tensor = httpclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    np.testing.assert_allclose(client.infer("minilm", inputs).as_numpy("embedding"), embedding, atol=1e-5)


def test_request_id_is_echoed(server):
    status, headers, _ = raw(server, "GET", "/v2/health/ready", headers={"X-Request-ID": "trace-77"})
    assert status == 200 and {k.lower(): v for k, v in headers.items()}["x-request-id"] == "trace-77"


def _json_infer(inputs: list[dict], **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


IMAGE = {"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [0.0] * 3072}
BAD_REQUESTS = [
    ("/v2/models/nope/infer", _json_infer([IMAGE]), {}, 404, "unknown model 'nope'"),
    ("/v2/models/cnn/versions/7/infer", _json_infer([IMAGE]), {}, 404, "has no version '7'"),
    ("/v2/models/cnn/infer", b"{not json", {}, 400, "malformed JSON"),
    ("/v2/models/cnn/infer", _json_infer([{**IMAGE, "name": "picture"}]), {}, 400, "missing input 'image'"),
    ("/v2/models/cnn/infer", _json_infer([IMAGE, {**IMAGE, "name": "extra"}]), {}, 400, "unexpected input 'extra'"),
    (
        "/v2/models/cnn/infer",
        _json_infer([{**IMAGE, "datatype": "INT64", "data": [0] * 3072}]),
        {},
        400,
        "input 'image': expected dtype float32, got int64",
    ),
    ("/v2/models/cnn/infer", _json_infer([{**IMAGE, "shape": [3, 32, 32]}]), {}, 400, "input 'image': expected rank 4"),
    (
        "/v2/models/cnn/infer",
        _json_infer([{**IMAGE, "shape": [1, 3, 32, 16], "data": [0.0] * 1536}]),
        {},
        400,
        "input 'image': dim 3 must be 32",
    ),
    (
        "/v2/models/cnn/infer",
        _json_infer([{**IMAGE, "shape": [65, 3, 32, 32], "data": [0.0] * 3072 * 65}]),
        {},
        400,
        "batch of 65 exceeds this model's max_batch_size 64",
    ),
    (
        "/v2/models/minilm/infer",
        _json_infer(
            [
                {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]},
                {"name": "input_ids", "datatype": "INT64", "shape": [1, 1], "data": [1]},
            ]
        ),
        {},
        400,
        "input 'text' replaces",
    ),
    (
        "/v2/models/minilm/infer",
        _json_infer(
            [
                {"name": "input_ids", "datatype": "INT64", "shape": [1, 300], "data": [1] * 300},
                {"name": "attention_mask", "datatype": "INT64", "shape": [1, 300], "data": [1] * 300},
            ]
        ),
        {},
        400,
        "input 'input_ids': dim 1 (seq) is 300, outside [1, 256]",
    ),
    (
        "/v2/models/cnn/infer",
        _json_infer([{**IMAGE, "data": [0.0] * 10}]),
        {},
        400,
        "input 'image': shape [1, 3, 32, 32] needs 3072 elements, got 10",
    ),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "message"), BAD_REQUESTS)
def test_bad_input_is_a_clear_4xx_and_the_replica_keeps_serving(client, server, path, body, headers, status, message):
    got, _, data = raw(server, "POST", path, body, {"Content-Type": "application/json", **headers})
    assert got == status, data
    assert message in json.loads(data)["error"]
    assert client.is_server_ready()


def test_binary_sizes_that_lie_and_oversized_bodies(server):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [1, 3, 32, 32],
                    "parameters": {"binary_data_size": 3072 * 4},
                }
            ]
        }
    ).encode()
    short = header + b"\0" * 100
    status, _, data = raw(
        server, "POST", "/v2/models/cnn/infer", short, {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 400 and "runs past the end of the binary data" in json.loads(data)["error"]
    long = header + b"\0" * (3072 * 4 + 8)
    status, _, data = raw(
        server, "POST", "/v2/models/cnn/infer", long, {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 400 and "not claimed by any input" in json.loads(data)["error"]
    strings = header.replace(b'"FP32"', b'"BYTES"')
    status, _, data = raw(
        server,
        "POST",
        "/v2/models/cnn/infer",
        strings + struct.pack("<I", 1 << 30) + b"x" * 12284,
        {"Inference-Header-Content-Length": str(len(strings))},
    )
    assert status == 400
    status, _, data = raw(server, "POST", "/v2/models/cnn/infer", b"{" + b" " * (9 << 20) + b"}")
    assert status == 413 and "exceeds the limit" in json.loads(data)["error"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(client, server):
    rng = np.random.default_rng(5)
    # Six distinct sentences (so some requests have equal lengths and must share calls), 1-2 rows each.
    pool = [" ".join(rng.choice(" ".join(TEXTS).split(), size=n).tolist()) for n in (3, 7, 12, 20, 33, 50)]
    requests = [[pool[i % 6] + f" #{i % 3}"] * int(rng.integers(1, 3)) for i in range(48)]

    def infer(texts):
        array = np.array([t.encode() for t in texts], dtype=object)
        tensor = httpclient.InferInput("text", [len(array)], "BYTES")
        tensor.set_data_from_numpy(array)
        local = httpclient.InferenceServerClient("127.0.0.1:8000")
        return local.infer("minilm", [tensor]).as_numpy("embedding")

    alone = [infer(r) for r in requests]
    before = client.get_inference_statistics("minilm")["model_stats"][0]["execution_count"]
    with ThreadPoolExecutor(max_workers=24) as pool:
        together = list(pool.map(infer, requests))
    after = client.get_inference_statistics("minilm")["model_stats"][0]["execution_count"]
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_allclose(t, a, atol=2e-5)
    assert after - before < len(requests)  # fewer engine calls than requests: they were batched


def test_overload_answers_503_with_retry_after_and_loses_nothing(server, built_repository):
    x = np.random.default_rng(2).standard_normal((64, 3, 32, 32)).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + x.tobytes()

    def send(_):
        return raw(server, "POST", "/v2/models/cnn/infer", body, {"Inference-Header-Content-Length": str(len(header))})

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(send, range(64)))
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) > 0 and statuses.count(200) > 0
    with load_engine(built_repository / "cnn" / "1", backend="onnxruntime", precision="fp32") as engine:
        expected = engine.infer({"image": x})["logits"]
    for status, headers, data in results:
        headers = {k.lower(): v for k, v in headers.items()}
        if status == 503:
            assert headers["retry-after"] == "1" and "overloaded" in json.loads(data)["error"]
            continue
        length = int(headers["inference-header-content-length"])
        logits = np.frombuffer(data[length:], np.float32).reshape(64, 10)
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_metrics_are_exported_by_model_and_version(client, server):
    import time
    import urllib.request

    client.infer("cnn", [cnn_input(np.zeros((1, 3, 32, 32), np.float32), True)])
    assert server.session_dir is not None, "the server's Ray session was not found"
    ports = [p.read_text().strip() for p in server.session_dir.glob("metrics_export_port_*")]
    assert ports, "Ray wrote no metrics export port"
    names = [
        "trtserve_requests_total",
        "trtserve_request_latency_seconds_bucket",
        "trtserve_compute_latency_seconds_bucket",
        "trtserve_batch_size_bucket",
        "trtserve_warmup_seconds",
        "trtserve_memory_bytes",
    ]
    # Counters go out with Ray's next report; histograms are published by the replica once a second and
    # then go out with the report after that.
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/metrics", timeout=10) as response:
            text = response.read().decode()
        if all(f"ray_{name}" in text for name in names) and 'model="cnn"' in text:
            break
        time.sleep(2)
    for name in names:
        assert f"ray_{name}" in text, name
    assert 'le="0.005"' in text and 'kind="host"' in text
    assert 'version="1"' in text


def test_json_logs_carry_request_id_model_and_latency_split(server):
    """By default (logging.requests: sampled) every error gets a line, and one in a hundred of the rest: of
    100 answered in a row by the one cnn replica, one (or a few more, if some were slower than 1 s)."""
    import time

    for i in range(100):
        status, _, _ = raw(server, "POST", "/v2/models/cnn/infer", _json_infer([IMAGE]), {"X-Request-ID": f"log-{i}"})
        assert status == 200
    bad = _json_infer([{**IMAGE, "name": "picture"}])
    assert raw(server, "POST", "/v2/models/cnn/infer", bad, {"X-Request-ID": "log-bad"})[0] == 400
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = [
            json.loads(line)
            for path in (server.session_dir / "logs" / "serve").glob("replica_*.log")
            for line in path.read_text(errors="replace").splitlines()
            if '"log-' in line and '"model_version"' in line
        ]
        answered = [r for r in records if r["request_id"].startswith("log-") and r["status"] == 200]
        refused = [r for r in records if r["request_id"] == "log-bad"]
        if answered and refused:
            assert 1 <= len(answered) < 10 and refused[0]["status"] == 400, [r["request_id"] for r in answered]
            for record in (answered[0], refused[0]):
                assert (record["model"], record["model_version"], record["backend"]) == ("cnn", "1", "onnxruntime")
                assert {"latency_ms", "queue_ms", "compute_ms", "rows", "batch_rows"} <= set(record)
            assert answered[0]["rows"] == 1 and answered[0]["batch_rows"] >= 1
            return
        time.sleep(1)
    raise AssertionError("no JSON log line of an answered request and of the refused one")

"""`trtserve demo CONFIG`: serve the demo models, query them as any Open Inference Protocol client would (JSON
and the binary tensor extension, over plain HTTP: nothing beyond the serving install), print the outputs and
latencies, and stop. tritonclient speaks the same protocol (docs/guide/serve.md)."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np

from runtime.serve.launcher import LocalServe

_DATATYPES = {np.dtype(np.float32): "FP32"}


def infer(url: str, model: str, inputs: dict[str, np.ndarray], output: str, binary: bool, headers: dict) -> np.ndarray:
    """One inference request; `binary`: tensors in and out as raw bytes after the JSON header."""
    tensors, payload = [], b""
    for name, array in inputs.items():
        tensor = {"name": name, "shape": list(array.shape)}
        if array.dtype == object:  # text: BYTES, sent as JSON strings
            tensor |= {"datatype": "BYTES", "data": [s.decode() for s in array.ravel()]}
        elif binary:
            raw = np.ascontiguousarray(array).tobytes()
            tensor |= {"datatype": _DATATYPES[array.dtype], "parameters": {"binary_data_size": len(raw)}}
            payload += raw
        else:
            tensor |= {"datatype": _DATATYPES[array.dtype], "data": array.ravel().tolist()}
        tensors.append(tensor)
    head = json.dumps({"inputs": tensors, "outputs": [{"name": output, "parameters": {"binary_data": binary}}]})
    extra = {"Inference-Header-Content-Length": str(len(head))} if binary else {}
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer",
        data=head.encode() + payload,
        headers={"Content-Type": "application/octet-stream" if binary else "application/json", **extra, **headers},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        length = response.headers.get("Inference-Header-Content-Length")
    doc = json.loads(body[: int(length)] if length else body)
    (out,) = [o for o in doc["outputs"] if o["name"] == output]
    if length:
        return np.frombuffer(body[int(length) :], np.float32).reshape(out["shape"])
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def query_demo_models(server: LocalServe, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    texts = np.array(
        [b"A man is playing a guitar.", b"Someone plays an instrument.", b"The stock market fell."], dtype=object
    )
    started = time.perf_counter()
    embedding = infer(server.url, "minilm", {"text": texts}, "embedding", False, headers)
    elapsed = (time.perf_counter() - started) * 1e3
    similarity = embedding @ embedding.T
    print(
        f"minilm: embeddings {embedding.shape} in {elapsed:.1f} ms; cosine(guitar, instrument) = "
        f"{similarity[0, 1]:.3f}, cosine(guitar, stock market) = {similarity[0, 2]:.3f}"
    )
    image = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    for binary in (False, True):
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            logits = infer(server.url, "cnn", {"image": image}, "logits", binary, headers)
            latencies.append((time.perf_counter() - started) * 1e3)
        print(
            f"cnn ({'binary' if binary else 'JSON'}): logits {logits.shape}, argmax {logits.argmax(1).tolist()}, "
            f"median latency {np.median(latencies):.2f} ms over 20 requests"
        )

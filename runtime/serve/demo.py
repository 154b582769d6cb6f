"""`trtserve demo CONFIG`: serve the demo models, query them as a client would (tritonclient), print the
outputs and latencies, and stop."""

from __future__ import annotations

import time

import numpy as np

from runtime.serve.launcher import LocalServe


def query_demo_models(server: LocalServe, token: str | None = None) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    headers = {"Authorization": f"Bearer {token}"} if token else None
    texts = np.array(
        [b"A man is playing a guitar.", b"Someone plays an instrument.", b"The stock market fell."], dtype=object
    )
    text = httpclient.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(texts)
    started = time.perf_counter()
    embedding = client.infer("minilm", [text], headers=headers).as_numpy("embedding")
    elapsed = (time.perf_counter() - started) * 1e3
    similarity = embedding @ embedding.T
    print(
        f"minilm: embeddings {embedding.shape} in {elapsed:.1f} ms; cosine(guitar, instrument) = "
        f"{similarity[0, 1]:.3f}, cosine(guitar, stock market) = {similarity[0, 2]:.3f}"
    )
    image = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    for binary in (False, True):
        tensor = httpclient.InferInput("image", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image, binary_data=binary)
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            logits = client.infer("cnn", [tensor], headers=headers).as_numpy("logits")
            latencies.append((time.perf_counter() - started) * 1e3)
        print(
            f"cnn ({'binary' if binary else 'JSON'}): logits {logits.shape}, argmax {logits.argmax(1).tolist()}, "
            f"median latency {np.median(latencies):.2f} ms over 20 requests"
        )

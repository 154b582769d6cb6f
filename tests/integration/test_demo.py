"""`trtserve demo`'s client against the demo models on real Ray Serve: it needs nothing beyond the serving
install (tritonclient is a dev dependency), and its JSON and binary answers are the engine's."""

from __future__ import annotations

import sys

import numpy as np

from runtime import load_engine
from runtime.serve.demo import infer, query_demo_models


def test_demo_queries_both_models_without_tritonclient(server, monkeypatch, capsys):
    for name in [m for m in sys.modules if m.split(".")[0] == "tritonclient"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tritonclient", None)  # an import of it fails, as where it is not installed
    query_demo_models(server)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("minilm: embeddings (3, 384)")
    assert [line.split(":")[0] for line in lines[1:]] == ["cnn (JSON)", "cnn (binary)"]


def test_demo_answers_are_the_engines(server, built_repository):
    image = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with load_engine(built_repository / "cnn" / "1") as engine:
        expected = engine.infer({"image": image})["logits"]
    for binary in (False, True):
        answer = infer(server.url, "cnn", {"image": image}, "logits", binary, {})
        np.testing.assert_allclose(answer, expected, atol=1e-5)

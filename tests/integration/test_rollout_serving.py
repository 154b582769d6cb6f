"""A rollout's routing on real Ray Serve, from the deployment's user_config: the candidate loaded and warm
in every replica, both versions answering a canary (the response names which), pinned paths reaching
their version, every response 200."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from runtime.rollout.steps import Rollout, RolloutSpec
from runtime.serve.launcher import LocalServe
from tests.fixtures.artifacts import sequence_model
from tests.fixtures.ports import free_port


@pytest.mark.slow  # a minute of the default tier
def test_a_canary_from_user_config_answers_from_both_versions(tmp_path):
    repository = tmp_path / "repo"
    sequence_model(repository / "seq" / "1")
    sequence_model(repository / "seq" / "2", scale=3.0)  # doubled is 3x: the answers tell versions apart
    rollout = Rollout.begin(RolloutSpec(model="seq", stable="1", candidate="2", steps=[50, 100]), now=0)
    port = free_port()
    config = tmp_path / "serve.yaml"
    app = {
        "name": "rollout",
        "route_prefix": "/",
        "import_path": "runtime.serve.app:build_app",
        "args": {"repository": str(repository), "models": [{"name": "seq", "version": 1}]},
        "deployments": [{"name": "trtserve", "user_config": {"rollouts": {"seq": rollout.model_dump(mode="json")}}}],
    }
    doc = {"proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": port}, "applications": [app]}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))

    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    # Ray's Python proxy: HAProxy binds fixed stats ports (8404, 9101) that another server may hold.
    with LocalServe(config, ingress="proxy", log_path=tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = httpclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        answers = {}
        for i in range(60):
            result = client.infer("seq", [tensor], headers={"X-Request-ID": f"req-{i}"})
            version = result.get_response()["model_version"]
            scale = {"1": 2.0, "2": 3.0}[version]
            np.testing.assert_allclose(result.as_numpy("doubled"), scale * x)  # the version that answered
            answers[i] = version
        assert set(answers.values()) == {"1", "2"}
        again = client.infer("seq", [tensor], headers={"X-Request-ID": "req-7"})
        assert again.get_response()["model_version"] == answers[7]  # a retry reaches the same version
        for version in ("1", "2"):
            pinned = client.infer("seq", [tensor], model_version=version)
            assert pinned.get_response()["model_version"] == version
        stats = client.get_inference_statistics("seq")["model_stats"]
        assert {s["version"] for s in stats} == {"1", "2"}

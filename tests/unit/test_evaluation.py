"""A version's score on a labelled eval set, by the engine layer: metrics, the packaged set, offline
scoring of one version on another's eval set (what a rollout's eval gate does for an unscored stable)."""

import numpy as np
import pytest

from runtime.engine.errors import ArtifactError
from runtime.engine.evaluation import EVAL_FILE, accuracy, cosine, read_eval_set, score, score_version
from tests.fixtures.artifacts import sequence_model


def test_accuracy_and_cosine():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    vectors = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert cosine(vectors, np.array([[2.0, 0.0], [0.0, -1.0]])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="accuracy takes"):
        accuracy(logits, np.array([[1], [0], [0]]))


def test_score_batches_at_the_limit_and_names_a_missing_output():
    calls = []

    def infer(feed):
        calls.append(len(feed["x"]))
        return {"y": feed["x"]}

    x = np.eye(5, dtype=np.float32)
    assert score(infer, {"x": x}, np.arange(5), "accuracy", "y", batch=2) == 1.0
    assert calls == [2, 2, 1]
    with pytest.raises(ValueError, match="no output 'z'"):
        score(infer, {"x": x}, np.arange(5), "accuracy", "z", batch=2)
    with pytest.raises(ValueError, match="one input row per label"):
        score(infer, {"x": x}, np.arange(4), "accuracy", "y", batch=2)
    with pytest.raises(ValueError, match="unknown metric"):
        score(infer, {"x": x}, np.arange(5), "f1", "y", batch=2)


def test_a_version_is_scored_offline_on_another_versions_eval_set(tmp_path):
    unscored = sequence_model(tmp_path / "seq" / "1")  # built before the eval set existed
    flipped = sequence_model(tmp_path / "seq" / "2", scale=-1.0, evaluated=True)
    assert score_version(unscored, flipped, "doubled", "accuracy") == 1.0
    assert score_version(flipped, flipped, "doubled", "accuracy") == 0.0


def test_a_tampered_or_missing_eval_set_is_refused(tmp_path):
    version = sequence_model(tmp_path / "seq" / "1", evaluated=True)
    with pytest.raises(ArtifactError, match="has no y"):
        read_eval_set(version, ["x", "y"])
    np.savez_compressed(version / EVAL_FILE, x=np.zeros((2, 8), np.float32), labels=np.zeros(2))
    with pytest.raises(ArtifactError, match=r"evaluation\.npz"):
        score_version(version, version, "doubled", "accuracy")  # its checksum no longer matches

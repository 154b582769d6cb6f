"""Promotion gates before any traffic: parity, the eval set (recorded or scored offline), the latency budget."""

import pytest

from runtime.engine.manifest import ParityRecord, read_manifest
from runtime.rollout.gates import GateInputError, ProfileReport, judge_gates, profile_p99_ms, stable_score_on_file
from tests.fixtures.artifacts import sequence_model


@pytest.fixture
def manifests(tmp_path):
    repo = tmp_path / "seq"
    good = read_manifest(sequence_model(repo / "1", evaluated=True))
    worse = read_manifest(sequence_model(repo / "2", evaluated=True, scale=-1.0))  # argmax flips: accuracy 0
    plain = read_manifest(sequence_model(repo / "3"))
    return good, worse, plain


def profile(model="seq", version=2, p99=4.0, batch=8):
    sizes = {"batch": batch, "seq": 8}
    return ProfileReport.model_validate(
        {
            "model": model,
            "version": version,
            "opt_sizes": {"batch": 4, "seq": 8},
            "points": [{"batch": batch, "sizes": sizes, "p99_ms": p99}, {"batch": 1, "sizes": {**sizes, "batch": 1}}],
            "machine": {"cpu": "the report's other keys are not read"},
        }
    )


def test_a_candidate_without_an_eval_set_passes_on_parity_alone(manifests):
    _, _, plain = manifests
    result = judge_gates(plain)
    assert result.passed and result.figures == {"parity": True}


def test_a_failed_parity_record_refuses(manifests):
    _, _, plain = manifests
    record = {"backend": "onnxruntime", "precision": "fp16", "passed": False, "outputs": {}, "samples": 4}
    failed = plain.model_copy(update={"parity": [ParityRecord(**record)]})
    result = judge_gates(failed)
    assert not result.passed and result.reasons == ["parity failed for onnxruntime fp16"]


def test_the_eval_gate_compares_with_stable_minus_the_margin(manifests):
    good, worse, _ = manifests
    assert stable_score_on_file(worse.evaluation, good) == 1.0  # the same eval set file: stable's own figure
    result = judge_gates(worse, stable_score=1.0)
    assert not result.passed
    assert result.reasons == ["eval accuracy 0.0000 below stable's 1.0000 minus margin 0.01 on 64 rows"]
    assert result.figures["eval"] == {"metric": "accuracy", "candidate": 0.0, "stable": 1.0, "margin": 0.01}
    assert judge_gates(good, stable_score=1.005).passed  # within the margin


def test_a_stable_scored_on_another_set_has_no_recorded_figure(manifests):
    good, _, plain = manifests
    assert stable_score_on_file(good.evaluation, plain) is None  # never scored
    other = plain.model_copy(update={"evaluation": good.evaluation.model_copy(update={"data_sha256": "f" * 64})})
    assert stable_score_on_file(good.evaluation, other) is None  # another eval set
    with pytest.raises(GateInputError, match="needs stable's score"):
        judge_gates(good)


def test_the_latency_budget_reads_the_p99_at_the_serving_batch_limit(manifests):
    _, worse, plain = manifests
    candidate = plain.model_copy(update={"version": 2})
    assert profile_p99_ms(profile(), candidate) == 4.0
    result = judge_gates(candidate, profile=profile(p99=12.5), latency_budget_ms=10)
    assert result.reasons == ["engine p99 12.50 ms at batch 8 above the latency budget 10 ms"]
    assert judge_gates(candidate, profile=profile(p99=9.0), latency_budget_ms=10).passed
    both = judge_gates(worse, stable_score=1.0, profile=profile(p99=12.5), latency_budget_ms=10)
    assert len(both.reasons) == 2  # every failed gate is named


@pytest.mark.parametrize(
    "doc, message",
    [
        (profile(version=1), "not of the candidate seq version 2"),
        (profile(model="cnn"), "not of the candidate seq version 2"),
        (profile(batch=4), "no p99 at the serving batch limit"),
    ],
)
def test_a_profile_that_cannot_judge_the_candidate_is_an_input_error(manifests, doc, message):
    candidate = manifests[2].model_copy(update={"version": 2})
    with pytest.raises(GateInputError, match=message):
        judge_gates(candidate, profile=doc, latency_budget_ms=10)


def test_a_gate_input_error_quoting_a_repository_uri_is_scrubbed():
    """It may quote a failure to read a repository (scoring stable offline): the answer and the log show
    the URI without its credentials."""
    error = GateInputError("eval gate: scoring version 1 failed: OSError: s3://AKIDEXAMPLE:wJalrXUtnFEMI@b/seq/1")
    assert str(error) == "eval gate: scoring version 1 failed: OSError: s3://***@b/seq/1"
    assert isinstance(error, ValueError)

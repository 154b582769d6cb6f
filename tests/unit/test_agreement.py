"""Two versions' answers compared as parity compares: summed tolerances, NaN fails, top-1 for classifiers."""

import numpy as np

from runtime.engine.manifest import Manifest
from runtime.rollout.agreement import AgreementCounter, Tolerance, tolerances
from tests.fixtures.artifacts import manifest_fields

LIMITS = {"logits": Tolerance(1e-3, 1e-3)}


def logits(rows):
    return {"logits": np.array(rows, dtype=np.float32)}


def test_answers_within_tolerance_agree_and_others_do_not():
    counter = AgreementCounter()
    assert counter.add(logits([[1.0, 2.0]]), logits([[1.0005, 2.0]]), LIMITS)
    assert not counter.add(logits([[1.0, 2.0]]), logits([[1.5, 2.0]]), LIMITS)
    assert not counter.add(logits([[1.0, 2.0]]), logits([[np.nan, 2.0]]), LIMITS)
    assert (counter.compared, counter.agreed) == (3, 1)
    assert counter.agreement().ratio == 1 / 3 and counter.max_abs == 0.5


def test_top1_agreement_for_classifiers():
    counter = AgreementCounter()
    counter.add(logits([[1.0, 2.0], [3.0, 0.0]]), logits([[1.0, 2.5], [0.0, 3.0]]), LIMITS)
    assert (counter.top1_compared, counter.top1_agreed) == (2, 1)
    assert counter.to_dict()["top1_agreement"] == 0.5


def test_many_requests_at_once_are_judged_each_as_parity_judges_one():
    from runtime.engine.comparison import OutputStats

    rng = np.random.default_rng(0)
    pairs = []
    for i in range(40):
        rows = int(rng.integers(1, 4))
        stable = rng.standard_normal((rows, 5)).astype(np.float32)
        candidate = stable + rng.choice([0.0, 1e-4, 0.01], p=[0.5, 0.3, 0.2]) * rng.standard_normal(stable.shape)
        if i == 7:
            candidate[0, 2] = np.nan
        pairs.append((logits(stable), logits(candidate.astype(np.float32))))
    pairs.append((logits([[1.0, 2.0]]), logits([[1.0, 2.0, 3.0]])))  # another shape: disagrees
    many = AgreementCounter()
    agreed = many.add_many(pairs, LIMITS)
    for (stable, candidate), verdict in zip(pairs, agreed, strict=True):
        stats = OutputStats(1e-3, 1e-3)
        stats.add(candidate["logits"], stable["logits"])
        assert verdict == stats.passed
    one_by_one = AgreementCounter()
    for stable, candidate in pairs:
        one_by_one.add(stable, candidate, LIMITS)
    assert (many.compared, many.agreed, many.top1_compared, many.top1_agreed) == (
        one_by_one.compared, one_by_one.agreed, one_by_one.top1_compared, one_by_one.top1_agreed
    )  # fmt: skip
    assert many.max_abs == one_by_one.max_abs and abs(many.min_cosine - one_by_one.min_cosine) < 1e-12
    assert 0 < many.agreed < many.compared == 41 and not agreed[7] and not agreed[-1]


def test_counts_since_a_snapshot():
    counter = AgreementCounter()
    counter.add(logits([[1.0, 2.0]]), logits([[1.0, 2.0]]), LIMITS)
    snapshot = counter.copy()
    counter.add(logits([[1.0, 2.0]]), logits([[9.0, 2.0]]), LIMITS)
    window = counter.since(snapshot)
    assert (window.compared, window.agreed) == (1, 0) and (snapshot.compared, snapshot.agreed) == (1, 1)


def parity(atol):
    output = {"passed": True, "max_abs": 0, "max_rel": 0, "atol": atol, "rtol": 1e-3}
    return {"backend": "onnxruntime", "precision": "fp16", "passed": True, "outputs": {"logits": output}, "samples": 4}


def test_tolerance_is_the_sum_of_both_versions_records():
    def manifest(atol):
        outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
        fields = manifest_fields("cnn", 1, [], outputs, {"batch": {"min": 1, "opt": 1, "max": 4}})
        return Manifest.model_validate({**fields, "files": {}, "parity": [parity(atol)]})

    limits = tolerances(manifest(0.01), ("onnxruntime", "fp16"), manifest(0.02), ("onnxruntime", "fp16"))
    assert limits["logits"].atol == 0.03 and limits["logits"].rtol == 0.002
    unrecorded = tolerances(manifest(0.01), ("torch", "fp32"), manifest(0.02), ("tensorrt", "fp16"))
    assert unrecorded["logits"].atol == 0.03  # no record of its own: the tightest one of its artifact

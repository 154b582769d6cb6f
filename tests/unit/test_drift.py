"""Reference statistics, the drift tests (against scipy on the same samples), the window rule and the
reservoir: runtime.monitor's pure decision logic, no Ray."""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax
from scipy.stats import chisquare, ks_2samp, norm, wasserstein_distance

from runtime.monitor import drift
from runtime.monitor.drift_window import DriftWindow, Reservoir, WindowClock
from runtime.monitor.features import CATEGORICAL, NUMERIC, VECTORS, TensorFeatures
from runtime.monitor.reference import (
    BINS,
    SAMPLE_ROWS,
    VECTOR_ROWS,
    FeatureReference,
    compute_reference,
    read_reference,
    write_reference,
)


def _reference_of(values: np.ndarray, kind: str = NUMERIC, seed: int = 0) -> FeatureReference:
    spec = TensorFeatures("x", "input", None, 1)
    if kind == CATEGORICAL:
        spec = TensorFeatures("x", "output", "logits", None)
        return compute_reference([spec], {"x": values}, "test", seed).tensors[0].features[-3]
    return compute_reference([spec], {"x": values.reshape(-1, 1)}, "test", seed).tensors[0].features[0]


# features


def test_a_small_tensor_is_judged_element_by_element():
    spec = TensorFeatures.of("x", "input", [-1, 2, 3])
    assert spec.per_element == 6
    assert [f for f, _ in spec.features] == [str(i) for i in range(6)]
    array = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    out = spec.extract(array)
    np.testing.assert_array_equal(out["5"], [5, 11])


def test_a_large_padded_tensor_is_judged_by_summaries_without_its_padding():
    spec = TensorFeatures.of("ids", "input", [-1, "seq"], pad=0)
    assert spec.per_element is None
    assert [f for f, _ in spec.features] == ["mean", "std", "norm", "length"]
    short = np.array([[4, 6, 0, 0, 0]], np.int64)
    long = np.array([[4, 6]], np.int64)
    a, b = spec.extract(short), spec.extract(long)
    for feature in ("mean", "std", "norm", "length"):
        np.testing.assert_allclose(a[feature], b[feature])
    np.testing.assert_allclose(a["mean"], [5.0])
    np.testing.assert_allclose(a["std"], [1.0])
    np.testing.assert_allclose(a["length"], [2.0])


def test_logits_add_class_confidence_and_entropy():
    spec = TensorFeatures.of("logits", "output", [-1, 10], kind="logits")
    names = dict(spec.features)
    assert names["class"] == CATEGORICAL and names["confidence"] == NUMERIC
    logits = np.random.default_rng(0).normal(size=(50, 10))
    out = spec.extract(logits)
    probs = softmax(logits, axis=1)
    np.testing.assert_array_equal(out["class"], probs.argmax(axis=1))
    np.testing.assert_allclose(out["confidence"], probs.max(axis=1))
    np.testing.assert_allclose(out["entropy"], -(probs * np.log(probs)).sum(axis=1))


def test_an_embedding_is_one_vector_feature():
    spec = TensorFeatures.of("embedding", "output", [-1, 384], kind="embedding")
    assert spec.features == [("embedding", VECTORS)]
    assert spec.extract(np.ones((3, 384)))["embedding"].shape == (3, 384)


# reference statistics


def test_reference_of_a_standard_normal_has_its_deciles_and_std():
    values = np.random.default_rng(1).standard_normal(20_000)
    ref = _reference_of(values)
    assert ref.type == NUMERIC
    np.testing.assert_allclose(ref.cuts, norm.ppf(np.linspace(0, 1, BINS + 1)[1:-1]), atol=0.05)
    assert sum(ref.counts) == 20_000
    assert all(abs(c - 2000) <= 2 for c in ref.counts)
    assert ref.std == pytest.approx(1.0, abs=0.02)
    assert len(ref.sample) == SAMPLE_ROWS
    assert set(ref.sample) <= set(values.tolist())


def test_reference_of_a_classifier_counts_its_classes():
    rng = np.random.default_rng(2)
    classes = rng.choice(3, size=3000, p=[0.5, 0.3, 0.2])
    logits = np.eye(4)[classes] * 5.0  # class 3 never wins
    ref = _reference_of(logits, CATEGORICAL)
    assert ref.feature == "class" and ref.type == CATEGORICAL
    assert ref.categories == [0, 1, 2]
    assert ref.counts == np.bincount(classes).tolist()


def test_reference_bins_count_online_values_on_the_same_cuts():
    ref = FeatureReference(feature="x", type=NUMERIC, cuts=[0.0, 1.0], counts=[1, 1, 1])
    np.testing.assert_array_equal(ref.bin_counts(np.array([-5, -0.1, 0.0, 0.5, 1.0, 7])), [2, 2, 2])


def test_a_reference_round_trips_and_a_bad_one_is_named(tmp_path):
    rng = np.random.default_rng(3)
    specs = [TensorFeatures.of("x", "input", [-1, 4]), TensorFeatures.of("e", "output", [-1, 64], kind="embedding")]
    ref = compute_reference(specs, {"x": rng.normal(size=(500, 4)), "e": rng.normal(size=(500, 64))}, "unit")
    assert len(ref.tensor("e").features[0].sample) == VECTOR_ROWS
    write_reference(tmp_path / "reference.json", ref)
    assert read_reference(tmp_path / "reference.json") == ref
    (tmp_path / "bad.json").write_text('{"rows": 3}')
    with pytest.raises(ValueError, match=r"bad\.json: not a readable reference"):
        read_reference(tmp_path / "bad.json")


def test_reference_arrays_of_different_rows_are_refused():
    spec = TensorFeatures.of("x", "input", [-1, 1])
    with pytest.raises(ValueError, match="one number of rows"):
        compute_reference(
            [spec, TensorFeatures.of("y", "input", [-1, 1])], {"x": np.ones((3, 1)), "y": np.ones((4, 1))}, "t"
        )


# drift tests, against scipy


def test_the_test_follows_the_reference_size():
    assert drift.choose_test(NUMERIC, 1000) == "ks"
    assert drift.choose_test(NUMERIC, 1001) == "wasserstein"
    assert drift.choose_test(CATEGORICAL, 1000) == "chisquare"
    assert drift.choose_test(CATEGORICAL, 5000) == "jensenshannon"
    assert drift.choose_test(VECTORS, 10) == "mmd"


def test_ks_is_scipys_two_sample_test():
    rng = np.random.default_rng(4)
    ref = _reference_of(rng.standard_normal(800))
    current = rng.standard_normal(600) + 0.3
    result = drift.numeric_drift(ref, 800, current, ref.bin_counts(current))
    assert result.test == "ks"
    assert result.score == pytest.approx(ks_2samp(ref.sample, current).pvalue)
    assert result.drifted == (result.score < 0.05) and result.drifted


def test_wasserstein_is_scipys_normed_by_the_reference_std():
    rng = np.random.default_rng(5)
    values = rng.standard_normal(5000) * 2.0
    ref = _reference_of(values)
    current = rng.standard_normal(1000) * 2.0 + 0.1
    result = drift.numeric_drift(ref, 5000, current, ref.bin_counts(current))
    assert result.test == "wasserstein"
    assert result.score == pytest.approx(wasserstein_distance(ref.sample, current) / np.std(values))
    assert not result.drifted  # 0.05 std apart
    shifted = current + 1.0
    assert drift.numeric_drift(ref, 5000, shifted, ref.bin_counts(shifted)).drifted


def test_chisquare_is_scipys_on_the_reference_shares():
    ref = FeatureReference(feature="class", type=CATEGORICAL, categories=[0, 1, 2], counts=[500, 300, 200])
    current = {0: 40, 1: 40, 2: 20}
    result = drift.categorical_drift(ref, 1000, current)
    assert result.test == "chisquare"
    assert result.score == pytest.approx(chisquare([40, 40, 20], [50, 30, 20]).pvalue)
    assert result.drifted == (result.score < 0.05)


def test_a_class_never_seen_in_the_reference_drifts():
    ref = FeatureReference(feature="class", type=CATEGORICAL, categories=[0, 1], counts=[500, 500])
    assert drift.categorical_drift(ref, 1000, {0: 20, 1: 20, 7: 20}).drifted


def test_jensenshannon_is_scipys_distance():
    ref = FeatureReference(feature="class", type=CATEGORICAL, categories=[0, 1, 2], counts=[5000, 3000, 2000])
    result = drift.categorical_drift(ref, 10_000, {0: 10, 1: 60, 3: 30})
    assert result.test == "jensenshannon"
    assert result.score == pytest.approx(jensenshannon([0.5, 0.3, 0.2, 0.0], [0.1, 0.6, 0.0, 0.3]))
    assert result.drifted


def test_psi_is_the_symmetric_divergence_of_the_bin_shares():
    ref, cur = np.array([50, 30, 20]), np.array([20, 30, 50])
    p, q = cur / 100, ref / 100
    assert drift.psi(ref, cur) == pytest.approx(np.sum((p - q) * np.log(p / q)))
    assert drift.psi(ref, ref * 3) == pytest.approx(0.0)
    assert np.isfinite(drift.psi(np.array([10, 0]), np.array([0, 10])))  # empty bins floored


def test_mmd_detects_a_shifted_embedding_and_not_a_same_one():
    rng = np.random.default_rng(6)
    reference = rng.normal(size=(200, 16))
    quiet = drift.mmd_pvalue(reference, rng.normal(size=(150, 16)), rng)
    shifted = drift.mmd_pvalue(reference, rng.normal(size=(150, 16)) + 0.5, rng)
    assert quiet[1] > 0.05
    assert shifted[1] < 0.05 and shifted[0] > quiet[0]


def test_a_tensor_drifts_when_at_least_half_of_its_features_do():
    def f(drifted):
        return drift.FeatureDrift("f", "ks", 0.0, 0.05, drifted)

    assert drift.tensor_drifted([f(True), f(False)])
    assert not drift.tensor_drifted([f(True), f(False), f(False)])
    assert not drift.tensor_drifted([])


# the window rule


def test_a_window_closes_on_its_boundary_with_enough_rows():
    clock = WindowClock(window_s=60, min_rows=500, start=1000.0)
    assert clock.due(1059.9, 10_000) is None
    assert clock.due(1061.0, 500) == 1060.0


def test_a_window_short_of_rows_is_merged_into_the_next():
    clock = WindowClock(window_s=60, min_rows=500, start=1000.0)
    assert clock.due(1060.5, 499) is None  # merged: runs on to 1120
    assert clock.due(1070.0, 800) is None  # rows arriving in between do not close it early
    assert clock.due(1119.0, 800) is None
    assert clock.due(1120.2, 800) == 1120.0


def test_a_window_looked_at_late_closes_on_the_last_boundary_passed():
    clock = WindowClock(window_s=60, min_rows=1, start=0.0)
    assert clock.due(250.0, 5) == 240.0


def _window(values: np.ndarray, window_s=5.0, min_rows=100):
    spec = TensorFeatures.of("x", "input", [-1, 4])
    reference = compute_reference([spec], {"x": values}, "unit")
    return DriftWindow(reference, WindowClock(window_s, min_rows, start=0.0), seed=0)


def test_a_drift_window_judges_what_it_saw_and_opens_the_next():
    rng = np.random.default_rng(7)
    window = _window(rng.standard_normal((800, 4)))
    window.add({"x": rng.standard_normal((300, 4)), "unknown": np.zeros((300, 2))})
    assert window.close_if_due(4.0) is None
    result = window.close_if_due(5.5)
    assert (result.start, result.end, result.rows) == (0.0, 5.0, 300)
    (tensor,) = result.tensors
    assert tensor.name == "x" and not tensor.drifted
    assert [f.test for f in tensor.features] == ["ks"] * 4
    assert window.rows == 0 and window.clock.start == 5.0
    window.add({"x": rng.standard_normal((300, 4)) + 1.5})
    shifted = window.close_if_due(10.1)
    assert shifted.tensors[0].drifted and all(f.drifted for f in shifted.tensors[0].features)


def test_unshifted_windows_rarely_alarm():
    rng = np.random.default_rng(8)
    window = _window(rng.standard_normal((1000, 4)))
    alarms = 0
    for k in range(1, 41):
        window.add({"x": rng.standard_normal((200, 4))})
        alarms += window.close_if_due(5.0 * k + 0.1).tensors[0].drifted
    assert alarms <= 2  # 1 in 20 at most, as the benchmark's target


# the reservoir


def test_the_reservoir_keeps_a_uniform_sample():
    kept = np.zeros(5000)
    for seed in range(60):
        reservoir = Reservoir(100, np.random.default_rng(seed))
        for start in range(0, 5000, 250):  # batches of several sizes would do as well
            reservoir.add({"i": np.arange(start, start + 250)})
        sample = reservoir.sample("i")
        assert len(sample) == 100 and len(set(sample.tolist())) == 100
        kept[sample] += 1
    per_decile = kept.reshape(10, -1).sum(axis=1)  # 600 expected in each tenth of the stream
    assert chisquare(per_decile).pvalue > 0.001


def test_a_reservoir_not_yet_full_keeps_everything():
    reservoir = Reservoir(10, np.random.default_rng(0))
    reservoir.add({"i": np.arange(4), "v": np.ones((4, 2))})
    np.testing.assert_array_equal(reservoir.sample("i"), np.arange(4))
    assert reservoir.sample("v").shape == (4, 2)

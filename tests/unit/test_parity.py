import numpy as np
import pytest

from convert.model_config import Tolerance
from convert.parity import OutputStats, compare, format_table


def stats_for(out, ref, atol=1e-3, rtol=1e-3) -> OutputStats:
    s = OutputStats(atol, rtol)
    s.add(np.asarray(out, dtype=np.float32), np.asarray(ref, dtype=np.float32))
    return s


def test_element_fails_only_beyond_both_tolerances():
    # abs 0.5 > atol but rel 0.5/1000 < rtol: passes
    assert stats_for([1000.5], [1000.0], atol=1e-3, rtol=1e-3).passed
    # rel 1.0 > rtol but abs 1e-4 < atol: passes
    assert stats_for([2e-4], [1e-4], atol=1e-3, rtol=1e-3).passed
    # both exceeded: fails
    s = stats_for([1.1, 1.0], [1.0, 1.0], atol=1e-3, rtol=1e-3)
    assert not s.passed and s.mismatch_fraction == 0.5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_always_fails(bad):
    s = stats_for([bad, 1.0], [bad if np.isnan(bad) else 1.0, 1.0], atol=1e9, rtol=1e9)
    assert not s.passed
    assert s.nonfinite == 1
    assert "NaN/Inf" in s.would_pass()


def test_would_pass_tolerances_do_pass():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(1000).astype(np.float32)
    out = ref + rng.normal(0, 0.05, 1000).astype(np.float32)
    s = stats_for(out, ref, atol=1e-3, rtol=1e-3)
    assert not s.passed
    hint = s.would_pass()
    atol = float(hint.split("atol >= ")[1].split()[0])
    rtol = float(hint.split("rtol >= ")[1].split()[0])
    assert stats_for(out, ref, atol=atol, rtol=1e-3).passed
    assert stats_for(out, ref, atol=1e-3, rtol=rtol).passed


def test_shape_mismatch_fails():
    s = OutputStats(1.0, 1.0)
    s.add(np.zeros((2, 3)), np.zeros((2, 4)))
    assert not s.passed and "shape [2, 3] != reference [2, 4]" in s.would_pass()


def test_compare_reports_per_output_and_survives_engine_errors():
    refs = [{"a": np.ones(3, np.float32), "b": np.zeros(2, np.float32)}] * 2
    feeds = [{}, {}]
    tol = lambda name: Tolerance(atol=1e-3, rtol=1e-3)  # noqa: E731
    result = compare("fake", "fp32", lambda feed: {"a": np.ones(3), "b": np.full(2, 0.5)}, feeds, refs, tol)
    assert result.samples == 2 and not result.passed
    assert result.outputs["a"].passed and not result.outputs["b"].passed
    [line] = result.failures()
    assert "output 'b'" in line and "max abs 0.5" in line and "would pass with atol >= 0.51" in line
    assert "FAIL" in format_table([result])

    def broken(feed):
        raise RuntimeError("kernel exploded")

    result = compare("fake", "fp16", broken, feeds, refs, tol)
    assert not result.passed and "kernel exploded" in result.failures()[0]


def test_cosine_is_reported():
    s = stats_for([1.0, 0.0], [0.0, 1.0], atol=10, rtol=10)
    assert s.min_cosine == pytest.approx(0.0)
    assert s.record().cosine == pytest.approx(0.0)

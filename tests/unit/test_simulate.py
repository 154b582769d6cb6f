"""The batching simulator against queueing closed forms (batch size 1): M/M/1 and M/D/1, within 5%."""

import numpy as np
import pytest

from benchmarks.simulate import profile_service_time, simulate


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_mm1_mean_sojourn(rho):
    mu = 100.0  # services/s
    result = simulate(rho * mu, lambda rows, rng: rng.exponential(1 / mu), requests=200_000, seed=1)
    expected = 1 / (mu - rho * mu)  # W = 1 / (mu - lambda)
    assert result.mean_s == pytest.approx(expected, rel=0.05)
    if rho <= 0.5:  # at high load successive latencies are too correlated for a 5% tail estimate
        # M/M/1 sojourn time is exponential: p99 = -ln(0.01) * W
        assert result.percentile_ms(99) / 1e3 == pytest.approx(-np.log(0.01) * expected, rel=0.05)


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait(rho):
    d = 0.01  # seconds per request
    result = simulate(rho / d, lambda rows, rng: d, requests=200_000, seed=2)
    expected_wait = rho * d / (2 * (1 - rho))  # Pollaczek-Khinchine for deterministic service
    assert result.mean_s - d == pytest.approx(expected_wait, rel=0.05)


def test_batching_raises_capacity_beyond_one_at_a_time():
    # 10 ms a call plus 1 ms a row: one at a time saturates at ~91/s, batches of 16 carry far more.
    service = profile_service_time({1: 0.011, 16: 0.026})
    alone = simulate(150, service, max_batch_size=1, requests=20_000)
    batched = simulate(150, service, max_batch_size=16, requests=20_000)
    assert alone.percentile_ms(99) > 1000  # unstable: the queue grows without bound
    assert batched.percentile_ms(99) < 100 and batched.batch_sizes.max() > 1


def test_more_replicas_lower_the_tail():
    service = profile_service_time({1: 0.01, 8: 0.03})
    one = simulate(120, service, max_batch_size=8, replicas=1, requests=20_000)
    two = simulate(120, service, max_batch_size=8, replicas=2, requests=20_000)
    assert two.percentile_ms(99) < one.percentile_ms(99)

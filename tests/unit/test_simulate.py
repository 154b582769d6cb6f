"""The replica simulator against queueing closed forms, and the batching and event-loop effects it is for.

With a free event loop and batches of one it is a single-server queue: M/M/1 and M/D/1, within 5%."""

import numpy as np
import pytest

from runtime.capacity.simulate import _Stalls, profile_service_time, simulate_replicas


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_mm1_mean_sojourn(rho):
    mu = 100.0  # services/s
    result = simulate_replicas(
        rho * mu, lambda rows, rng: rng.exponential(1 / mu), 0.0, 1, 0.0, requests=200_000, seed=1
    )
    expected = 1 / (mu - rho * mu)  # W = 1 / (mu - lambda)
    assert result.mean_s == pytest.approx(expected, rel=0.05)
    if rho <= 0.5:  # at high load successive latencies are too correlated for a 5% tail estimate
        # M/M/1 sojourn time is exponential: p99 = -ln(0.01) * W
        assert result.percentile_ms(99) / 1e3 == pytest.approx(-np.log(0.01) * expected, rel=0.05)


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait(rho):
    d = 0.01  # seconds per request
    result = simulate_replicas(rho / d, lambda rows, rng: d, 0.0, 1, 0.0, requests=200_000, seed=2)
    expected_wait = rho * d / (2 * (1 - rho))  # Pollaczek-Khinchine for deterministic service
    assert result.mean_s - d == pytest.approx(expected_wait, rel=0.05)


def test_batching_raises_capacity_beyond_one_at_a_time():
    # 10 ms a call plus 1 ms a row: one at a time saturates at ~91/s, batches of 16 carry far more.
    service = profile_service_time({1: 0.011, 16: 0.026})
    alone = simulate_replicas(150, service, 0.0, 1, 0.0, requests=20_000)
    batched = simulate_replicas(150, service, 0.0, 16, 0.0, requests=20_000)
    assert alone.percentile_ms(99) > 1000  # unstable: the queue grows without bound
    assert batched.percentile_ms(99) < 100 and batched.batch_sizes.max() > 1


def test_more_replicas_lower_the_tail():
    service = profile_service_time({1: 0.01, 8: 0.03})
    one = simulate_replicas(120, service, 0.0, 8, 0.0, replicas=1, requests=20_000)
    two = simulate_replicas(120, service, 0.0, 8, 0.0, replicas=2, requests=20_000)
    assert two.percentile_ms(99) < one.percentile_ms(99)


def test_replica_answers_wait_for_the_event_loop_behind_earlier_requests():
    # Engine time 0: the loop alone would be an M/D/1 queue, sojourn d + rho * d / (2 (1 - rho)). But an
    # engine call's results are handed back by a loop task queued behind the requests that came first,
    # so a replica answers later than that, and more so the busier its loop.
    d = 0.001

    def mean_ms(rho: float) -> float:
        result = simulate_replicas(rho / d, lambda rows, rng: 0.0, d, 64, 0.0, requests=50_000, seed=4)
        return result.mean_s * 1e3

    md1 = {rho: (d + rho * d / (2 * (1 - rho))) * 1e3 for rho in (0.05, 0.7)}
    assert mean_ms(0.05) == pytest.approx(md1[0.05], rel=0.1)  # nearly idle: nothing to wait behind
    assert mean_ms(0.7) > 1.2 * md1[0.7]


def test_stalls_hold_the_loop_and_lengthen_the_tail():
    stalls = _Stalls(0.0, (), 10.0, np.random.default_rng(0))
    assert stalls.finish(1.0, 0.5) == 1.5
    stalls.starts, stalls.ends = np.array([1.0, 2.0]), np.array([1.2, 2.5])
    assert stalls.finish(0.9, 0.2) == pytest.approx(1.3)  # 0.1 before the stall, 0.1 after it
    assert stalls.finish(1.1, 0.1) == pytest.approx(1.3)  # started inside it: waits for its end
    assert stalls.finish(1.5, 0.1) == pytest.approx(1.6)
    assert stalls.finish(1.95, 0.1) == pytest.approx(2.55)
    engine = profile_service_time({1: 0.0002, 16: 0.0008})
    calm = simulate_replicas(800, engine, 0.0008, 16, 0.0, requests=20_000)
    stalled = simulate_replicas(800, engine, 0.0008, 16, 0.0, requests=20_000, stall_rate=2.0, stall_s=[0.02])
    assert stalled.percentile_ms(99) > calm.percentile_ms(99) + 10
    assert stalled.percentile_ms(50) == pytest.approx(calm.percentile_ms(50), rel=0.2)


def test_queue_delay_is_paid_only_while_requests_are_being_decoded():
    engine = profile_service_time({1: 0.0002, 16: 0.0008})
    # Light load: a request is rarely being decoded when the engine frees up, so the delay costs ~nothing.
    light0 = simulate_replicas(50, engine, 0.0005, 16, 0.0, requests=5000)
    light5 = simulate_replicas(50, engine, 0.0005, 16, 0.005, requests=5000)
    assert light5.percentile_ms(50) - light0.percentile_ms(50) < 0.5
    # Heavy load: something is always being decoded, so batches wait and grow.
    heavy0 = simulate_replicas(1600, engine, 0.0005, 16, 0.0, requests=20_000)
    heavy5 = simulate_replicas(1600, engine, 0.0005, 16, 0.005, requests=20_000)
    assert heavy5.batch_sizes.mean() > heavy0.batch_sizes.mean()
    assert heavy5.percentile_ms(50) > heavy0.percentile_ms(50)


def test_engine_call_work_on_the_loop_makes_small_batches_dear():
    # Loop: 0.3 ms a request, 0.5 ms an engine call (before the call runs); engine: 2 ms a call of any size.
    # One request a call carries at most 1 / 2.5 ms = 400/s; batches carry 1000/s.
    engine = profile_service_time({1: 0.002, 16: 0.002})
    one = simulate_replicas(1000, engine, 0.0003, 1, 0.0, requests=20_000, call_s=0.0005)
    batched = simulate_replicas(1000, engine, 0.0003, 16, 0.0, requests=20_000, call_s=0.0005)
    assert one.percentile_ms(99) > 500  # over capacity: the queue grows
    assert batched.percentile_ms(99) < 20 and batched.batch_sizes.mean() > 2
    light = simulate_replicas(50, engine, 0.0003, 16, 0.0, requests=5000, call_s=0.0005)
    assert light.percentile_ms(50) == pytest.approx(2.8, abs=0.05)  # decode + call work + engine

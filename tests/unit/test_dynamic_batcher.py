"""The dynamic batcher with a real (tiny) ONNX engine or plain functions; no Ray."""

import asyncio
import time

import numpy as np
import pytest

from runtime.engine.loader import load_engine
from runtime.serve.batch_formation import Work
from runtime.serve.dynamic_batcher import DynamicBatcher, Overloaded, TimedOut
from tests.fixtures.artifacts import sequence_model

PAD = {"seq": {"x": 0.0}}


@pytest.fixture
def engine(tmp_path):
    with load_engine(sequence_model(tmp_path / "seq" / "1")) as engine:
        yield engine


def feed(rows: int, seq: int, seed: int) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((rows, seq)).astype(np.float32)}


def test_concurrent_callers_get_exactly_their_own_rows(engine):
    async def main():
        batcher = DynamicBatcher(
            engine.infer, engine.signature, max_rows=16, max_delay_s=0.002, max_queued_rows=1000, pad_values=PAD
        )
        feeds = [feed(1 + i % 3, 1 + (7 * i) % 40, i) for i in range(60)]
        results = await asyncio.gather(
            *(batcher.submit(f, Work(len(f["x"]), {"seq": f["x"].shape[1]}), 5) for f in feeds)
        )
        batcher.close()
        return feeds, results, batcher.stats

    feeds, results, stats = asyncio.run(main())
    for f, (outputs, timing) in zip(feeds, results, strict=True):
        expected = engine.infer(f)
        assert outputs["doubled"].shape == f["x"].shape  # padding cut away
        np.testing.assert_allclose(outputs["doubled"], expected["doubled"], rtol=1e-6)
        np.testing.assert_allclose(outputs["total"], expected["total"], rtol=1e-5, atol=1e-5)
        assert timing["compute_s"] > 0
    assert stats.batches < 60 and max(stats.batch_sizes) > 1  # requests were actually batched
    assert stats.rows == sum(len(f["x"]) for f in feeds)


def test_no_waiting_when_nothing_else_is_queued(engine):
    async def main():
        batcher = DynamicBatcher(engine.infer, engine.signature, max_rows=16, max_delay_s=0.5, max_queued_rows=100)
        started = time.perf_counter()
        for i in range(5):
            f = feed(1, 8, i)
            await batcher.submit(f, Work(1, {"seq": 8}), 5)
        batcher.close()
        return (time.perf_counter() - started) / 5

    assert asyncio.run(main()) < 0.1  # far below the 0.5 s queue delay


def test_a_failing_request_fails_alone(engine):
    def run(batch):
        if np.isnan(batch["x"]).any():
            raise RuntimeError("engine rejected NaN")
        return engine.infer(batch)

    async def main():
        batcher = DynamicBatcher(
            run, engine.signature, max_rows=16, max_delay_s=0.01, max_queued_rows=100, pad_values=PAD
        )
        good = [feed(1, 4, i) for i in range(6)]
        bad = {"x": np.full((1, 4), np.nan, np.float32)}
        tasks = [batcher.submit(f, Work(1, {"seq": 4}), 5) for f in [*good[:3], bad, *good[3:]]]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        batcher.close()
        return results

    results = asyncio.run(main())
    assert isinstance(results[3], RuntimeError) and "NaN" in str(results[3])
    assert all(not isinstance(r, Exception) for i, r in enumerate(results) if i != 3)


def _rows_of_four():
    """x (batch, 4) in; its double and its rows' totals out."""
    from runtime.engine.signature import DimRange, Signature, TensorSpec

    return Signature(
        (TensorSpec("x", "float32", ("batch", 4)),),
        (TensorSpec("doubled", "float32", ("batch", 4)), TensorSpec("total", "float32", ("batch",))),
        {"batch": DimRange(1, 1, 4)},
    )


def test_full_queue_is_refused_and_slow_requests_time_out():
    def slow(batch):
        time.sleep(0.2)
        return {"doubled": batch["x"] * 2, "total": batch["x"].sum(1)}

    sig = _rows_of_four()

    async def main():
        batcher = DynamicBatcher(slow, sig, max_rows=1, max_delay_s=0, max_queued_rows=2)
        x = {"x": np.zeros((1, 4), np.float32)}
        tasks = [asyncio.ensure_future(batcher.submit(x, Work(1, {}), 0.05)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.submit(x, Work(1, {}), 5)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        batcher.close()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, TimedOut) for r in results)


def test_a_request_whose_caller_is_gone_or_timed_out_is_never_run_and_the_rest_are():
    """While a slow call runs, three requests wait: one's caller is cancelled (its client went away), one times
    out; neither reaches the engine, the third does, and the queue's rows come back to zero."""
    ran = []

    def slow(batch):
        ran.extend(batch["x"][:, 0].tolist())
        time.sleep(0.15)
        return {"doubled": batch["x"] * 2, "total": batch["x"].sum(1)}

    sig = _rows_of_four()

    def x(value: float) -> dict:
        return {"x": np.full((1, 4), value, np.float32)}

    async def main():
        batcher = DynamicBatcher(slow, sig, max_rows=1, max_delay_s=0, max_queued_rows=8)
        first = asyncio.ensure_future(batcher.submit(x(1), Work(1, {}), 5))
        await asyncio.sleep(0.02)  # the first call is under way
        gone = asyncio.ensure_future(batcher.submit(x(2), Work(1, {}), 5))
        late = asyncio.ensure_future(batcher.submit(x(3), Work(1, {}), 0.05))
        kept = asyncio.ensure_future(batcher.submit(x(4), Work(1, {}), 5))
        await asyncio.sleep(0)
        gone.cancel()
        results = await asyncio.gather(first, gone, late, kept, return_exceptions=True)
        queued = batcher.queued_rows
        batcher.close()
        return results, queued

    (first, gone, late, kept), queued = asyncio.run(main())
    assert isinstance(gone, asyncio.CancelledError) and isinstance(late, TimedOut)
    assert first[0]["total"].tolist() == [4.0] and kept[0]["total"].tolist() == [16.0]
    assert ran == [1.0, 4.0] and queued == 0


def test_calibration_turns_two_timings_into_a_call_cost(engine):
    batcher = DynamicBatcher(
        engine.infer, engine.signature, max_rows=8, max_delay_s=0, max_queued_rows=8, pad_values=PAD
    )
    batcher.calibrate(one_row_s=0.002, full_s=0.009, rows=8, elements_per_row=64)
    assert batcher.call_cost == pytest.approx(64.0)  # fixed 1 ms = one row of 1 ms = 64 elements
    batcher.calibrate(one_row_s=0.001, full_s=0.009, rows=8, elements_per_row=64)
    assert batcher.call_cost == 1.0  # nothing to amortise: still positive, so equal sizes share a call
    batcher.close()


def test_a_request_above_a_stepped_down_limit_still_runs(engine):
    # The batch limit fell (memory pressure) after a 4-row request was accepted: it runs, it is not stuck.
    async def main():
        batcher = DynamicBatcher(engine.infer, engine.signature, max_rows=8, max_delay_s=0.0, max_queued_rows=64)
        batcher.max_rows = 2
        feeds = [feed(4, 8, 0), feed(1, 8, 1), feed(1, 8, 2)]
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(f, Work(len(f["x"]), {"seq": 8}), 5) for f in feeds)), 10
        )
        batcher.close()
        return feeds, results, batcher.stats

    feeds, results, stats = asyncio.run(main())
    for f, (outputs, _) in zip(feeds, results, strict=True):
        np.testing.assert_allclose(outputs["doubled"], f["x"] * 2, rtol=1e-6)
    assert max(stats.batch_sizes) == 4 and stats.rows == 6


def test_engine_time_is_timed_in_its_thread_apart_from_the_wait_for_the_loop(engine):
    # An engine of 20 ms a call while the event loop is blocked for 100 ms right after each call starts:
    # compute_infer holds the engine's 20 ms, compute_output the wait to be taken back by the loop.
    def slow(batch):
        time.sleep(0.02)
        return engine.infer(batch)

    async def main():
        batcher = DynamicBatcher(slow, engine.signature, max_rows=16, max_delay_s=0.0, max_queued_rows=100)

        async def hog():
            await asyncio.sleep(0.005)
            time.sleep(0.1)  # the loop busy with something else

        for i in range(3):
            await asyncio.gather(batcher.submit(feed(1, 8, i), Work(1, {"seq": 8}), 5), hog())
        batcher.close()
        return batcher.stats

    stats = asyncio.run(main())
    assert stats.batches == 3 and stats.batch_sizes == {1: 3}
    assert 20e6 <= stats.infer_ns / 3 < 80e6  # a sleep never ends early; the loop's block is not in it
    assert stats.output_ns / 3 > 40e6
    assert stats.input_ns + stats.infer_ns + stats.output_ns == pytest.approx(stats.compute_ns, abs=3)


def test_background_work_is_never_run_on_the_event_loop(engine):
    """A mirrored run is never inline, however small, and its requests share engine calls."""
    import threading

    seen = []

    def run(feed):
        seen.append((threading.current_thread().name, len(feed["x"])))
        return engine.infer(feed)

    async def main():
        batcher = DynamicBatcher(run, engine.signature, max_rows=16, max_delay_s=0.0, max_queued_rows=100)
        batcher._s_per_row = 1e-6  # a tiny model: answered calls run inline on the event loop
        await batcher.submit(feed(1, 8, 0), Work(1, {"seq": 8}), 5)
        futures = [batcher.enqueue_background(feed(1, 8, i), Work(1, {"seq": 8})) for i in range(5)]
        results = await asyncio.gather(*futures)
        with pytest.raises(Overloaded):
            for i in range(200):
                batcher.enqueue_background(feed(1, 8, i), Work(1, {"seq": 8}))
        batcher.close()
        return results, futures

    results, _ = asyncio.run(main())
    assert seen[0] == ("MainThread", 1)
    assert [name.startswith("engine") for name, _ in seen[1:]] == [True] and seen[1][1] == 5  # one call, off-loop
    assert all(outputs["doubled"].shape == (1, 8) for outputs, _ in results)


def test_every_run_is_handed_over_once_and_a_failing_watcher_fails_nothing(engine):
    handed: list[tuple[dict, dict, list[dict]]] = []

    def watch(feed_, outputs, results):
        handed.append((feed_, outputs, results))
        raise RuntimeError("a watcher's bug")

    async def main():
        batcher = DynamicBatcher(
            engine.infer, engine.signature, max_rows=16, max_delay_s=0.002, max_queued_rows=1000, pad_values=PAD
        )
        batcher.on_results = watch
        feeds = [feed(1, 1 + i % 5, i) for i in range(30)]
        answers = await asyncio.gather(*(batcher.submit(f, Work(1, {"seq": f["x"].shape[1]}), 5) for f in feeds))
        batcher.close()
        return feeds, answers

    feeds, answers = asyncio.run(main())
    for f, (outputs, _) in zip(feeds, answers, strict=True):
        expected = engine.infer(f)  # the watcher's failure cost no request its answer
        np.testing.assert_allclose(outputs["doubled"], expected["doubled"], rtol=1e-6)
    assert sum(f["x"].shape[0] for f, _, _ in handed) == 30  # every row once
    for batch_feed, outputs, results in handed:
        assert sum(r["doubled"].shape[0] for r in results) == batch_feed["x"].shape[0]
        assert outputs["doubled"].shape == batch_feed["x"].shape  # as the engine saw it, padded

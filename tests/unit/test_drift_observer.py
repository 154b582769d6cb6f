"""The replica's drift thread (runtime.serve.drift_observer): engine runs handed over through the batcher's
hook are counted as few batches, exactly as if they had come as one; an output padded in a run is counted
request by request; a run whose tensors cannot be counted costs only its own group; a full queue drops
and counts. No Ray."""

from types import SimpleNamespace

import numpy as np

from runtime.engine.manifest import file_record
from runtime.monitor.drift_window import DriftWindow, WindowClock
from runtime.monitor.features import TensorFeatures
from runtime.monitor.reference import compute_reference, write_reference
from runtime.serve.app_args import Monitor
from runtime.serve.drift_observer import DriftObserver
from runtime.serve.telemetry import Telemetry


class Recorded(Telemetry):
    def __init__(self) -> None:
        self.confidence: list[float] = []

    def predictions(self, model, confidence, entropy) -> None:
        self.confidence.extend(np.asarray(confidence).tolist())


def _model(tmp_path, specs, arrays):
    reference = compute_reference(specs, arrays, "unit")
    write_reference(tmp_path / "reference.json", reference)
    model = SimpleNamespace(
        name="m",
        version="1",
        version_dir=tmp_path,
        options=SimpleNamespace(monitor=Monitor(window_s=3600, min_rows=1)),
        manifest=SimpleNamespace(
            reference=SimpleNamespace(file="reference.json"),
            files={"reference.json": file_record(tmp_path / "reference.json")},  # read as verified
        ),
        batcher=SimpleNamespace(on_results=None),
    )
    return model, reference


def _classifier(tmp_path, rng):
    specs = [TensorFeatures.of("x", "input", [-1, 4]), TensorFeatures.of("logits", "output", [-1, 3], kind="logits")]
    return _model(tmp_path, specs, {"x": rng.standard_normal((400, 4)), "logits": rng.standard_normal((400, 3))})


def _same_bins(window: DriftWindow, direct: DriftWindow) -> None:
    for name, tensor in direct.tensors.items():
        for feature, counts in tensor.bins.items():
            np.testing.assert_array_equal(window.tensors[name].bins[feature], counts, err_msg=f"{name}.{feature}")


def test_runs_handed_over_one_by_one_count_as_one_batch(tmp_path):
    rng = np.random.default_rng(3)
    model, reference = _classifier(tmp_path, rng)
    telemetry = Recorded()
    monitor = DriftObserver(telemetry)
    assert monitor.register(model)
    hand_over = model.batcher.on_results
    assert hand_over is not None
    x, logits = rng.standard_normal((50, 4)).astype(np.float32), rng.standard_normal((50, 3)).astype(np.float32)
    start = 0
    for n in [1, 2, 3, 4] * 5:  # 50 rows in 20 runs of several sizes (one row shape)
        hand_over({"x": x[start : start + n]}, {"logits": logits[start : start + n]}, [])
        start += n
    hand_over({"x": np.zeros((1, 5), np.float32)}, {"logits": logits[:1]}, [])  # not countable: logged, skipped
    monitor.drain()
    monitor.close()
    _, window = monitor.windows[("m", "1")]
    assert window.rows == 50 and monitor.observed == 50
    direct = DriftWindow(reference, WindowClock(3600, 1), seed=0)
    direct.add({"x": x, "logits": logits})
    _same_bins(window, direct)
    assert dict(window.tensors["logits"].categories["class"]) == dict(direct.tensors["logits"].categories["class"])
    assert len(telemetry.confidence) == 50


def test_an_output_padded_in_the_run_is_counted_request_by_request(tmp_path):
    rng = np.random.default_rng(5)
    specs = [TensorFeatures.of("ids", "input", [-1, "seq"], pad=0), TensorFeatures.of("tokens", "output", [-1, "seq"])]
    arrays = {"ids": rng.integers(1, 50, (300, 8)), "tokens": rng.standard_normal((300, 8))}
    model, reference = _model(tmp_path, specs, arrays)
    monitor = DriftObserver(Recorded())
    monitor.register(model)
    short, long = rng.standard_normal((1, 3)), rng.standard_normal((1, 8))
    feed = {"ids": np.array([[5, 6, 7, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]])}  # padded to the longest
    batch = {"tokens": np.concatenate([np.pad(short, ((0, 0), (0, 5)), constant_values=9.0), long])}
    model.batcher.on_results(feed, batch, [{"tokens": short}, {"tokens": long}])
    monitor.drain()
    monitor.close()
    _, window = monitor.windows[("m", "1")]
    assert window.rows == 2
    direct = DriftWindow(reference, WindowClock(3600, 1), seed=0)
    direct.add(feed)
    direct.add({"tokens": short}, count_rows=False)
    direct.add({"tokens": long}, count_rows=False)
    _same_bins(window, direct)


def test_a_full_queue_drops_and_counts(tmp_path):
    model, _ = _classifier(tmp_path, np.random.default_rng(4))
    monitor = DriftObserver(Recorded(), queue_max=3)
    monitor.register(model)
    monitor.close()  # the thread stops taking: the queue stays full
    monitor._thread.join(1)
    for _ in range(5):
        model.batcher.on_results({"x": np.zeros((2, 4))}, {"logits": np.zeros((2, 3))}, [])
    assert monitor.dropped[("m", "1")] >= 4  # rows
    assert monitor.result(model)["dropped_rows"] == monitor.dropped[("m", "1")]


def test_forgetting_a_version_unhooks_its_batcher(tmp_path):
    model, _ = _classifier(tmp_path, np.random.default_rng(6))
    monitor = DriftObserver(Recorded())
    monitor.register(model)
    monitor.forget(model)
    monitor.close()
    assert model.batcher.on_results is None and not monitor.watches(model)

import pytest

from runtime.serve.histograms import CumulativeHistogram, Publisher, le_label


class FakeGauge:
    def __init__(self, name, description, tag_keys):
        self.name, self.tag_keys, self.values = name, tag_keys, {}

    def set(self, value, tags):
        assert set(tags) == set(self.tag_keys), (self.name, tags)
        self.values[tuple(sorted(tags.items()))] = value


def make(boundaries=(0.001, 0.01, 0.1)):
    gauges = {}

    def factory(name, description, tag_keys):
        gauges[name] = FakeGauge(name, description, tag_keys)
        return gauges[name]

    return CumulativeHistogram("lat_seconds", "latency", boundaries, ("model",), factory), gauges


def test_buckets_are_cumulative_with_prometheus_le_semantics():
    histogram, gauges = make()
    for value in (0.0005, 0.001, 0.002, 0.05, 3.0):  # 0.001 lands in le="0.001": value <= bound
        histogram.observe(value, {"model": "cnn"})
    histogram.flush()
    buckets = gauges["lat_seconds_bucket"].values
    by_le = {dict(k)["le"]: v for k, v in buckets.items()}
    assert by_le == {"0.001": 2, "0.01": 3, "0.1": 4, "+Inf": 5}
    assert gauges["lat_seconds_count"].values[(("model", "cnn"),)] == 5
    assert gauges["lat_seconds_sum"].values[(("model", "cnn"),)] == pytest.approx(3.0535)


def test_every_flush_republishes_every_series_with_cumulative_counts():
    histogram, gauges = make()
    histogram.observe(0.002, {"model": "a"})
    histogram.observe(0.002, {"model": "b"})
    histogram.flush()
    count = gauges["lat_seconds_count"]
    count.values.clear()
    histogram.observe(0.5, {"model": "a"})
    histogram.flush()
    assert count.values == {(("model", "a"),): 2, (("model", "b"),): 1}  # b set again, unchanged
    assert histogram.snapshot()[(("model", "b"),)] == ([0, 1, 1, 1], 0.002)


def test_labels_and_bad_boundaries():
    assert [le_label(b) for b in (0.0005, 1, 30, float("inf"))] == ["0.0005", "1.0", "30.0", "+Inf"]
    with pytest.raises(ValueError):
        make(boundaries=(0.1, 0.01))


def test_publisher_flushes_and_refreshes_on_stop():
    histogram, gauges = make()
    refreshed = []
    publisher = Publisher([histogram], interval_s=3600, refresh=[lambda: refreshed.append(1)]).start()
    histogram.observe(0.01, {"model": "cnn"})
    publisher.stop()
    assert gauges["lat_seconds_count"].values == {(("model", "cnn"),): 1}
    assert refreshed == [1]

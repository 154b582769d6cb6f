from pathlib import Path

import numpy as np
import pytest
import yaml

from convert.export import probe_sizes
from convert.failures import ConfigError
from convert.model_config import load_config
from convert.sample_inputs import FeedMaker, export_sizes, parity_points

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_io():
    return load_config(ROOT / "tests/fixtures/configs/two_io.yaml")


def test_parity_points_cover_the_corners_first(two_io):
    points = parity_points(two_io, 16)
    assert len(points) == 16
    assert points[0] == {"batch": 1, "seq": 1, "frames": 2}
    assert points[1] == {"batch": 16, "seq": 32, "frames": 20}
    assert points[2] == {"batch": 4, "seq": 10, "frames": 6}
    assert {p["batch"] for p in points} >= {1, 4, 16}
    for p in points:
        for dim, size in p.items():
            assert two_io.dims[dim].min <= size <= two_io.dims[dim].max
    assert parity_points(two_io, 2) == points[:2]
    assert parity_points(two_io, 16, seed=0) == points  # deterministic


def test_export_sizes_are_distinct_and_at_least_two(two_io):
    sizes = export_sizes(two_io)
    assert all(s >= 2 for s in sizes.values())
    assert len(set(sizes.values())) == len(sizes)


def test_probe_sizes_differ_on_every_dim(two_io):
    first, second = probe_sizes(two_io)
    assert all(first[d] != second[d] for d in two_io.dims)


def test_random_feed_respects_dtype_range_and_shape(two_io):
    feed = FeedMaker(two_io, None)({"batch": 3, "seq": 5, "frames": 7})
    assert feed["tokens"].dtype == np.int64 and feed["tokens"].shape == (3, 5)
    assert feed["tokens"].min() >= 0 and feed["tokens"].max() < 100
    assert feed["features"].dtype == np.float32 and feed["features"].shape == (3, 7, 8)


def test_sampler_output_is_checked(tmp_path):
    data = yaml.safe_load((ROOT / "tests/fixtures/configs/two_io.yaml").read_text())
    data["sample"] = "tests.fixtures.models:linear"
    path = tmp_path / "two_io.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)

    def wrong_dtype(batch, dims):
        return {
            "tokens": np.zeros((batch, dims["seq"]), np.int32),
            "features": np.zeros((batch, dims["frames"], 8), np.float32),
        }

    with pytest.raises(ConfigError, match="input 'tokens': expected dtype int64, got int32"):
        FeedMaker(config, wrong_dtype)({"batch": 2, "seq": 3, "frames": 4})

    def wrong_size(batch, dims):
        return {
            "tokens": np.zeros((batch, 9), np.int64),
            "features": np.zeros((batch, dims["frames"], 8), np.float32),
        }

    with pytest.raises(ConfigError, match="was asked for"):
        FeedMaker(config, wrong_size)({"batch": 2, "seq": 3, "frames": 4})

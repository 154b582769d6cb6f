import numpy as np
import pytest

from runtime.engine.errors import InputError
from runtime.engine.signature import DimRange, Signature, TensorSpec

SIG = Signature(
    inputs=(
        TensorSpec("ids", "int64", ("batch", "seq")),
        TensorSpec("mask", "int64", ("batch", "seq")),
        TensorSpec("image", "float32", ("batch", 3)),
    ),
    outputs=(TensorSpec("y", "float32", ("batch", 4)),),
    dims={"batch": DimRange(1, 2, 8), "seq": DimRange(1, 4, 16)},
)


def feed(**overrides):
    base = {
        "ids": np.zeros((2, 5), np.int64),
        "mask": np.ones((2, 5), np.int64),
        "image": np.zeros((2, 3), np.float32),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_valid_feed_binds_dims():
    assert SIG.validate(feed()) == {"batch": 2, "seq": 5}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mask": None}, "missing input 'mask'"),
        ({"extra": np.zeros(1)}, "unexpected input 'extra'"),
        ({"ids": np.zeros((2, 5), np.int32)}, "input 'ids': expected dtype int64, got int32"),
        ({"image": np.zeros((2, 3, 1), np.float32)}, "input 'image': expected rank 2"),
        ({"image": np.zeros((2, 4), np.float32)}, "input 'image': dim 1 must be 3"),
        ({"ids": np.zeros((2, 17), np.int64)}, "input 'ids': dim 1 (seq) is 17, outside [1, 16]"),
        ({"mask": np.ones((2, 6), np.int64)}, "input 'mask': dim 1 (seq) is 6 but input 'ids' has seq=5"),
        ({"ids": [[1, 2]]}, "expected a numpy array"),
    ],
)
def test_bad_feeds_name_the_input(overrides, message):
    with pytest.raises(InputError) as info:
        SIG.validate(feed(**overrides))
    assert message in str(info.value)

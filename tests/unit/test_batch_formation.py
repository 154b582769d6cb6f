import numpy as np
import pytest

from runtime.engine.signature import DimRange, Signature, TensorSpec
from runtime.serve.batch_formation import Work, buckets_for, plan, round_up, stack, unstack

SIG = Signature(
    inputs=(TensorSpec("ids", "int64", ("batch", "seq")), TensorSpec("mask", "int64", ("batch", "seq"))),
    outputs=(TensorSpec("tokens", "float32", ("batch", "seq", 2)), TensorSpec("pooled", "float32", ("batch", 2))),
    dims={"batch": DimRange(1, 8, 32), "seq": DimRange(1, 128, 256)},
)
PAD = {"seq": {"ids": 0, "mask": 0}}
BUCKETS = {"seq": buckets_for(SIG.dims["seq"], 16)}


def test_buckets():
    assert buckets_for(DimRange(1, 128, 256), 64) == [64, 128, 192, 256]
    assert buckets_for(DimRange(10, 20, 100), 8) == [16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 100]
    assert buckets_for(DimRange(1, 128, 256), 1) == []  # no rounding: the group's own longest
    assert round_up(33, [16, 32, 64]) == 64 and round_up(16, [16, 32]) == 16 and round_up(33, []) == 33


def test_similar_lengths_share_one_call_padded_to_the_longest_bucket():
    works = [Work(1, {"seq": 30}), Work(2, {"seq": 20}), Work(1, {"seq": 31})]
    [group] = plan(works, BUCKETS, max_rows=32, call_cost=128)
    assert group.members == (0, 1, 2) and group.rows == 4
    assert group.sizes == {"seq": 32}  # the batch's own longest (31) rounded up, not the model's 256
    [group] = plan(works, {"seq": []}, max_rows=32, call_cost=128)
    assert group.sizes == {"seq": 31}  # no buckets: exactly the longest


def test_very_different_lengths_are_split():
    works = [Work(8, {"seq": 10}), Work(1, {"seq": 250})]
    groups = plan(works, BUCKETS, max_rows=32, call_cost=128)
    assert [(g.members, g.sizes["seq"]) for g in groups] == [((0,), 16), ((1,), 256)]


def test_unpaddable_dims_never_mix_and_rows_are_capped():
    works = [Work(3, {"h": 4}), Work(3, {"h": 5}), Work(3, {"h": 4})]
    groups = plan(works, {}, max_rows=32)
    assert sorted(g.members for g in groups) == [(0, 2), (1,)]
    groups = plan([Work(3, {}) for _ in range(5)], {}, max_rows=7)
    assert all(g.rows <= 7 for g in groups) and sum(len(g.members) for g in groups) == 5


def test_call_cost_must_be_positive():
    with pytest.raises(ValueError):
        plan([Work(1, {})], {}, 4, call_cost=0)


def test_stack_pads_and_unstack_cuts_each_callers_rows():
    feeds = [
        {"ids": np.array([[5, 6, 7]]), "mask": np.array([[1, 1, 1]])},
        {"ids": np.array([[8], [9]]), "mask": np.array([[1], [1]])},
    ]
    batch = stack(feeds, SIG, {"seq": 4}, PAD)
    np.testing.assert_array_equal(batch["ids"], [[5, 6, 7, 0], [8, 0, 0, 0], [9, 0, 0, 0]])
    np.testing.assert_array_equal(batch["mask"], [[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    outputs = {"tokens": np.arange(24, dtype=np.float32).reshape(3, 4, 2), "pooled": np.arange(6).reshape(3, 2)}
    first, second = unstack(outputs, SIG, [Work(1, {"seq": 3}), Work(2, {"seq": 1})])
    assert first["tokens"].shape == (1, 3, 2) and second["tokens"].shape == (2, 1, 2)
    np.testing.assert_array_equal(second["pooled"], [[2, 3], [4, 5]])
    with pytest.raises(ValueError, match="returned 3 rows for 2"):
        unstack(outputs, SIG, [Work(1, {"seq": 3}), Work(1, {"seq": 1})])

"""Batch formation, padding and unpadding: pure functions of shapes and arrays, tested without Ray.

A batch is planned from the requests waiting now. Requests that differ in a dim that may not be padded
never share an engine call. Along paddable dims (e.g. a token sequence) a group is padded to its own
longest member (rounded up to a bucket where the engine wants one), never to the model's maximum; the
queue is split into groups where two smaller calls cost less than padding everything to the longest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod

import numpy as np

from runtime.engine.signature import DimRange, Signature

BATCH = "batch"


@dataclass(frozen=True)
class Work:
    """What the planner needs to know of one request: its rows and the sizes of its other dims."""

    rows: int
    sizes: Mapping[str, int]


@dataclass(frozen=True)
class Group:
    """Requests (indices into the planned list) that run as one engine call, padded to `sizes`."""

    members: tuple[int, ...]
    sizes: Mapping[str, int]
    rows: int


def buckets_for(dim: DimRange, granularity: int) -> list[int]:
    """Sizes a paddable dim is rounded up to: multiples of `granularity` within the engine's profile
    [min, max], and max itself. Granularity 1 means no rounding: on the CPU every padded element is
    pure cost, while GPU kernels prefer aligned sizes (8 for tensor cores)."""
    if granularity <= 1:
        return []
    first = -(-dim.min // granularity) * granularity
    return sorted({*range(first, dim.max, granularity), dim.max})


def round_up(size: int, buckets: Sequence[int]) -> int:
    for bucket in buckets:
        if bucket >= size:
            return bucket
    return size  # beyond the last bucket: validation upstream keeps this from happening


def plan(
    works: Sequence[Work],
    buckets: Mapping[str, Sequence[int]],
    max_rows: int,
    call_cost: float = 1.0,
) -> list[Group]:
    """Split `works` into engine calls.

    buckets: the paddable dims and their bucket sizes; every other dim must match exactly.
    call_cost: the fixed cost of one engine call, in padded elements (rows x padded sizes), which
    decides when splitting beats padding; it must be positive, or every request would run alone.
    """
    if call_cost <= 0:
        raise ValueError("call_cost must be positive")
    by_key: dict[tuple, list[int]] = {}
    for index, work in enumerate(works):
        key = tuple(sorted((d, s) for d, s in work.sizes.items() if d not in buckets))
        by_key.setdefault(key, []).append(index)
    groups = []
    for members in by_key.values():
        groups.extend(_partition(works, members, buckets, max_rows, call_cost))
    return groups


def _padded(works, members, buckets) -> dict[str, int]:
    return {d: round_up(max(works[i].sizes[d] for i in members), b) for d, b in buckets.items()}


def _partition(works, members, buckets, max_rows, call_cost) -> list[Group]:
    """Optimal contiguous split of the members sorted by padded size (dynamic programming)."""
    order = sorted(members, key=lambda i: prod(round_up(works[i].sizes[d], b) for d, b in buckets.items()))
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        rows = 0
        for start in range(end - 1, -1, -1):
            rows += works[order[start]].rows
            if rows > max_rows:
                break
            sizes = _padded(works, order[start:end], buckets)
            cost = best[start] + call_cost + rows * prod(sizes.values())
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups = []
    end = n
    while end > 0:
        start = cut[end]
        chosen = tuple(sorted(order[start:end]))  # first come, first in the batch
        non_padded = {d: s for d, s in works[chosen[0]].sizes.items() if d not in buckets}
        groups.append(
            Group(chosen, {**non_padded, **_padded(works, chosen, buckets)}, sum(works[i].rows for i in chosen))
        )
        end = start
    return sorted(groups, key=lambda g: g.members[0])


def stack(
    feeds: Sequence[Mapping[str, np.ndarray]],
    signature: Signature,
    sizes: Mapping[str, int],
    pad_values: Mapping[str, Mapping[str, float]],
) -> dict[str, np.ndarray]:
    """One engine input from several requests: each padded to `sizes` along its paddable dims (with the
    input's pad value for that dim) and concatenated along the batch."""
    batch = {}
    for spec in signature.inputs:
        parts = []
        for feed in feeds:
            array = feed[spec.name]
            widths = [(0, 0)] * array.ndim
            value = None
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, str) and dim != BATCH and dim in sizes and array.shape[axis] < sizes[dim]:
                    widths[axis] = (0, sizes[dim] - array.shape[axis])
                    value = pad_values[dim][spec.name]
            if value is not None:
                array = np.pad(array, widths, constant_values=value)
            parts.append(array)
        batch[spec.name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return batch


def unstack(
    outputs: Mapping[str, np.ndarray],
    signature: Signature,
    works: Sequence[Work],
) -> list[dict[str, np.ndarray]]:
    """Each request's own rows of every output, with padding along its paddable dims cut away."""
    results = []
    start = 0
    for work in works:
        result = {}
        for spec in signature.outputs:
            array = outputs[spec.name][start : start + work.rows]
            index = [slice(None)] * array.ndim
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, str) and dim in work.sizes and array.shape[axis] != work.sizes[dim]:
                    index[axis] = slice(0, work.sizes[dim])
            result[spec.name] = array[tuple(index)]
        results.append(result)
        start += work.rows
    total = next(iter(outputs.values())).shape[0] if outputs else 0
    if start != total:
        raise ValueError(f"the engine returned {total} rows for {start} requested")
    return results

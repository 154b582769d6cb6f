"""Inputs for export and parity: which shapes to try, and the data to fill them with."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from convert.model_config import BATCH, ModelConfig
from runtime.engine import dtypes
from runtime.engine.errors import InputError

Sizes = dict[str, int]  # a concrete size for every declared dim


def parity_points(config: ModelConfig, count: int, seed: int = 0) -> list[Sizes]:
    """`count` dim assignments: the corners first, then seeded random sizes in between.

    The corners pair batch {min, opt, max} with every other dim at {min, opt, max} (moving together),
    most informative first, so a small count still covers (min, min) and (max, max). The rest draw
    batch from [min, opt] and each other dim independently from [min, max]: odd sizes catch shapes
    baked into the graph, and small batches keep parity affordable.
    """
    if count < 1:
        raise ValueError("parity needs at least one sample")
    levels = ("min", "max", "opt")
    others = [d for d in config.dims if d != BATCH]
    order = [(a, a) for a in levels] + [(a, b) for a, b in itertools.product(levels, levels) if a != b]
    points: list[Sizes] = []
    for batch_level, other_level in order:
        sizes = {BATCH: getattr(config.dims[BATCH], batch_level)}
        sizes.update({d: getattr(config.dims[d], other_level) for d in others})
        if sizes not in points:
            points.append(sizes)
    points = points[:count]
    rng = np.random.default_rng(seed)
    batch = config.dims[BATCH]
    while len(points) < count:
        sizes = {BATCH: int(rng.integers(batch.min, batch.opt + 1))}
        sizes.update({d: int(rng.integers(config.dims[d].min, config.dims[d].max + 1)) for d in others})
        points.append(sizes)
    return points


def export_sizes(config: ModelConfig) -> Sizes:
    """Example sizes for tracing: >= 2 on every dynamic dim (1 would be specialised) and distinct from
    each other (equal sizes can be taken for one symbol), within each dim's range."""
    chosen: Sizes = {}
    for name, dim in config.dims.items():
        if dim.min == dim.max:
            chosen[name] = dim.min
            continue
        size = max(2, dim.min)
        while size in chosen.values() and size < dim.max:
            size += 1
        chosen[name] = min(size, dim.max)
    return chosen


def random_feed(config: ModelConfig, sizes: Sizes, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Data for every input at `sizes`: uniform in `range` where given, else standard normal (floats)."""
    shapes = config.input_signature().shapes_at(sizes)
    feed = {}
    for spec in config.inputs:
        dtype = dtypes.from_name(spec.dtype).numpy
        shape = shapes[spec.name]
        if dtype.kind == "b":
            feed[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind in "iu":
            low, high = spec.range
            feed[spec.name] = rng.integers(int(low), int(high), size=shape).astype(dtype)
        elif spec.range is not None:
            feed[spec.name] = rng.uniform(spec.range[0], spec.range[1], size=shape).astype(dtype)
        else:
            feed[spec.name] = rng.standard_normal(size=shape).astype(dtype)
    return feed


class FeedMaker:
    """Makes the inputs for a dim assignment: the config's `sample` callable where set, else random."""

    def __init__(self, config: ModelConfig, sampler: Callable | None, seed: int = 0) -> None:
        self.config = config
        self.sampler = sampler
        self.seed = seed

    def __call__(self, sizes: Sizes, index: int = 0) -> dict[str, np.ndarray]:
        if self.sampler is None:
            return random_feed(self.config, sizes, np.random.default_rng((self.seed, index)))
        others = {k: v for k, v in sizes.items() if k != BATCH}
        try:
            feed = self.sampler(sizes[BATCH], others)
        except Exception as e:
            raise self.config.error("sample", f"{self.config.sample} raised {type(e).__name__}: {e}") from e
        return self._checked(feed, sizes)

    def _checked(self, feed, sizes: Sizes) -> dict[str, np.ndarray]:
        if not isinstance(feed, dict):
            raise self.config.error("sample", f"{self.config.sample} must return a dict of numpy arrays")
        signature = self.config.input_signature()
        feed = {k: np.asarray(v) for k, v in feed.items()}
        try:
            bound = signature.validate(feed)
        except InputError as e:
            raise self.config.error("sample", f"{self.config.sample} returned inputs that do not fit: {e}") from None
        wrong = {d: s for d, s in bound.items() if sizes.get(d) != s}
        if wrong:
            raise self.config.error("sample", f"{self.config.sample} was asked for {sizes} but returned sizes {bound}")
        return feed

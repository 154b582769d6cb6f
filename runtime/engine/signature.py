"""What an engine takes and returns, and the check every inference input goes through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from runtime.engine import dtypes
from runtime.engine.errors import InputError

Dim = int | str  # a fixed size, or the name of a symbolic dim declared in `dims`


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # a name from runtime.engine.dtypes
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: Mapping[str, DimRange]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def shapes_at(self, sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        """Concrete input shapes with every symbolic dim replaced by `sizes[dim]`."""
        return {s.name: tuple(sizes[d] if isinstance(d, str) else d for d in s.shape) for s in self.inputs}

    def synthetic_feed(self, sizes: Mapping[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Inputs at `sizes` with `synthetic` data: for warm-up, profiling and load, not for parity."""
        shapes = self.shapes_at(sizes)
        return {s.name: synthetic(dtypes.from_name(s.dtype).numpy, shapes[s.name], rng) for s in self.inputs}

    def validate(self, feed: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Check names, dtypes, ranks and sizes; return the size bound to each symbolic dim.

        Raises InputError naming the first offending input, so a server can answer 400 with it.
        """
        for name, array in feed.items():
            if not isinstance(array, np.ndarray):
                raise InputError(f"input {name!r}: expected a numpy array, got {type(array).__name__}")
        return self.check({name: (dtypes.name_of(a.dtype), a.shape) for name, a in feed.items()})

    def check(self, declared: Mapping[str, tuple[str, Sequence[int]]]) -> dict[str, int]:
        """`validate` on what a request declares, (dtype name, shape) by input name, before any data is
        decoded."""
        expected = [s.name for s in self.inputs]
        missing = [n for n in expected if n not in declared]
        if missing:
            raise InputError(f"missing input {missing[0]!r}; this model takes {', '.join(expected)}")
        extra = [n for n in declared if n not in expected]
        if extra:
            raise InputError(f"unexpected input {extra[0]!r}; this model takes {', '.join(expected)}")
        bound: dict[str, tuple[int, str]] = {}
        for spec in self.inputs:
            dtype, shape = declared[spec.name]
            if dtype != spec.dtype:
                raise InputError(f"input {spec.name!r}: expected dtype {spec.dtype}, got {dtype}")
            if len(shape) != len(spec.shape):
                raise InputError(
                    f"input {spec.name!r}: expected rank {len(spec.shape)} {list(spec.shape)}, got shape {list(shape)}"
                )
            for axis, (dim, size) in enumerate(zip(spec.shape, shape, strict=True)):
                if isinstance(dim, int):
                    if size != dim:
                        raise InputError(f"input {spec.name!r}: dim {axis} must be {dim}, got shape {list(shape)}")
                    continue
                limits = self.dims[dim]
                if not limits.min <= size <= limits.max:
                    raise InputError(
                        f"input {spec.name!r}: dim {axis} ({dim}) is {size}, outside [{limits.min}, {limits.max}]"
                    )
                if dim in bound and bound[dim][0] != size:
                    raise InputError(
                        f"input {spec.name!r}: dim {axis} ({dim}) is {size} but input "
                        f"{bound[dim][1]!r} has {dim}={bound[dim][0]}"
                    )
                bound.setdefault(dim, (size, spec.name))
        return {dim: size for dim, (size, _) in bound.items()}


def synthetic(dtype: np.dtype, shape: tuple[int, ...] | list[int], rng: np.random.Generator) -> np.ndarray:
    """Data every model takes: standard normal floats; ones for integers and booleans (a valid token id
    and attention mask alike)."""
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return np.ones(shape, dtype)

"""Model configs (configs/models/<name>.yaml, CONTRACT §2): parsed, validated, and nothing else.

Every problem is a ConfigError naming the file and the key, e.g.
`configs/models/x.yaml: inputs[1].shape: dim 'frames' is not declared under dims`.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convert.errors import ConfigError
from runtime import dtypes
from runtime.signature import DimRange, Signature, TensorSpec

PRECISIONS = ("fp32", "fp16")
BATCH = "batch"
_NAME = re.compile(r"^[a-z0-9_-]+$")
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

_TOP_KEYS = {
    "name": True,
    "description": False,
    "source": True,
    "inputs": True,
    "outputs": True,
    "dims": True,
    "sample": False,
    "preprocessing": False,
    "precisions": True,
    "tolerance": True,
    "serving": False,
}


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


@dataclass(frozen=True)
class InputConfig:
    name: str
    dtype: str
    shape: tuple[int | str, ...]
    range: tuple[float, float] | None = None


@dataclass(frozen=True)
class OutputConfig:
    name: str
    tolerance: dict[str, Tolerance] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    path: Path
    name: str
    description: str | None
    factory: str
    inputs: tuple[InputConfig, ...]
    outputs: tuple[OutputConfig, ...]
    dims: dict[str, DimRange]
    sample: str | None
    preprocessing: dict[str, str]
    precisions: tuple[str, ...]
    tolerance: dict[str, Tolerance]
    max_batch_size: int
    max_queue_delay_ms: float
    pad: dict[str, dict[str, float]] = field(default_factory=dict)  # dim -> input -> pad value

    def tolerance_for(self, output: str, precision: str) -> Tolerance:
        for out in self.outputs:
            if out.name == output and precision in out.tolerance:
                return out.tolerance[precision]
        return self.tolerance[precision]

    def input_signature(self) -> Signature:
        """Inputs and dims as the config declares them (outputs are only known after export)."""
        return Signature(
            inputs=tuple(TensorSpec(i.name, i.dtype, i.shape) for i in self.inputs),
            outputs=(),
            dims=self.dims,
        )

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.path, key, message)


def load_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(path, None, f"cannot read the config: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise ConfigError(path, None, f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    return _Parser(path).parse(raw)


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.path, key, message)

    def mapping(self, value: Any, key: str, known: dict[str, bool]) -> dict:
        """Check a mapping's keys: required ones present, none unknown."""
        if not isinstance(value, dict):
            raise self.fail(key or None, f"expected a mapping, got {type(value).__name__}")
        for k in value:
            if k not in known:
                raise self.fail(_join(key, k), f"unknown key; expected one of {', '.join(known)}")
        for k, required in known.items():
            if required and k not in value:
                raise self.fail(_join(key, k), "required key is missing")
        return value

    def number(self, value: Any, key: str, minimum: float | None = None) -> float:
        # YAML 1.1 reads `1e-4` (no dot) as a string; accept it as the number it obviously is.
        if isinstance(value, bool):
            raise self.fail(key, f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.fail(key, f"expected a number, got {value!r}") from None
        if not math.isfinite(number) or (minimum is not None and number < minimum):
            raise self.fail(key, f"expected a finite number >= {minimum}, got {value!r}")
        return number

    def integer(self, value: Any, key: str, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def callable_ref(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not _CALLABLE.match(value):
            raise self.fail(key, f"expected 'package.module:callable', got {value!r}")
        return value

    def tolerance(self, value: Any, key: str) -> Tolerance:
        self.mapping(value, key, {"atol": True, "rtol": True})
        return Tolerance(self.number(value["atol"], f"{key}.atol", 0.0), self.number(value["rtol"], f"{key}.rtol", 0.0))

    def parse(self, raw: Any) -> ModelConfig:
        self.mapping(raw, "", _TOP_KEYS)
        name = raw["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail("name", f"must match [a-z0-9_-]+, got {name!r}")
        description = raw.get("description")
        if description is not None and not isinstance(description, str):
            raise self.fail("description", "expected text")

        source = self.mapping(raw["source"], "source", {"factory": True})
        factory = self.callable_ref(source["factory"], "source.factory")

        dims = self.parse_dims(raw["dims"])
        inputs = self.parse_inputs(raw["inputs"], dims)
        sample = raw.get("sample")
        if sample is not None:
            sample = self.callable_ref(sample, "sample")
        else:
            for i, spec in enumerate(inputs):
                if dtypes.from_name(spec.dtype).numpy.kind in "iu" and spec.range is None:
                    raise self.fail(
                        f"inputs[{i}].range",
                        f"integer input {spec.name!r} needs a range [low, high) when no `sample` callable is set",
                    )

        precisions = raw["precisions"]
        if not isinstance(precisions, list) or not precisions:
            raise self.fail("precisions", f"expected a non-empty list drawn from {', '.join(PRECISIONS)}")
        for i, p in enumerate(precisions):
            if p not in PRECISIONS:
                raise self.fail(f"precisions[{i}]", f"unknown precision {p!r}; expected one of {', '.join(PRECISIONS)}")
        if len(set(precisions)) != len(precisions):
            raise self.fail("precisions", "lists a precision twice")

        tolerance_raw = self.mapping(raw["tolerance"], "tolerance", {p: False for p in PRECISIONS})
        tolerance = {p: self.tolerance(v, f"tolerance.{p}") for p, v in tolerance_raw.items()}
        for p in precisions:
            if p not in tolerance:
                raise self.fail(f"tolerance.{p}", f"precision {p} is built, so it needs a tolerance {{atol, rtol}}")
        outputs = self.parse_outputs(raw["outputs"], precisions)

        preprocessing = {}
        if raw.get("preprocessing") is not None:
            prep = self.mapping(raw["preprocessing"], "preprocessing", {"tokenizer": False})
            preprocessing = {k: self.callable_ref(v, f"preprocessing.{k}") for k, v in prep.items()}

        serving = raw.get("serving") or {}
        self.mapping(serving, "serving", {"max_batch_size": False, "max_queue_delay_ms": False, "pad": False})
        batch_max = dims[BATCH].max
        max_batch_size = self.integer(serving.get("max_batch_size", batch_max), "serving.max_batch_size")
        if max_batch_size > batch_max:
            raise self.fail(
                "serving.max_batch_size",
                f"{max_batch_size} exceeds dims.batch.max ({batch_max}), which engines are built for",
            )
        delay = self.number(serving.get("max_queue_delay_ms", 5), "serving.max_queue_delay_ms", 0.0)
        pad = self.parse_pad(serving.get("pad") or {}, dims, inputs)

        return ModelConfig(
            path=self.path,
            name=name,
            description=description,
            factory=factory,
            inputs=inputs,
            outputs=outputs,
            dims=dims,
            sample=sample,
            preprocessing=preprocessing,
            precisions=tuple(precisions),
            tolerance=tolerance,
            max_batch_size=max_batch_size,
            max_queue_delay_ms=delay,
            pad=pad,
        )

    def parse_pad(self, raw: Any, dims: dict[str, DimRange], inputs) -> dict[str, dict[str, float]]:
        """serving.pad: {dim: {input: value}}: requests that differ in `dim` may be batched, each input
        padded with its value (e.g. token ids and attention mask with 0)."""
        if not isinstance(raw, dict):
            raise self.fail("serving.pad", "expected {dim: {input: pad value}}")
        pad = {}
        for dim, values in raw.items():
            key = f"serving.pad.{dim}"
            if dim not in dims or dim == BATCH:
                raise self.fail(key, "must name a declared dim other than batch")
            users = [i.name for i in inputs if dim in i.shape]
            self.mapping(values, key, {name: True for name in users})
            pad[dim] = {name: self.number(values[name], f"{key}.{name}") for name in users}
        return pad

    def parse_dims(self, raw: Any) -> dict[str, DimRange]:
        if not isinstance(raw, dict) or not raw:
            raise self.fail("dims", "expected a mapping of dim name to {min, opt, max}")
        dims = {}
        for name, spec in raw.items():
            key = f"dims.{name}"
            if not isinstance(name, str) or not re.match(r"^[A-Za-z_]\w*$", name):
                raise self.fail(key, "dim names must be identifiers")
            self.mapping(spec, key, {"min": True, "opt": True, "max": True})
            low, opt, high = (self.integer(spec[k], f"{key}.{k}") for k in ("min", "opt", "max"))
            if not low <= opt <= high:
                raise self.fail(key, f"needs min <= opt <= max, got {low}, {opt}, {high}")
            dims[name] = DimRange(low, opt, high)
        if BATCH not in dims:
            raise self.fail(f"dims.{BATCH}", "required: `batch` is the batching dim every input starts with")
        return dims

    def parse_inputs(self, raw: Any, dims: dict[str, DimRange]) -> tuple[InputConfig, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail("inputs", "expected a non-empty list, in forward() argument order")
        inputs, used = [], set()
        for i, spec in enumerate(raw):
            key = f"inputs[{i}]"
            self.mapping(spec, key, {"name": True, "dtype": True, "shape": True, "range": False})
            name = spec["name"]
            if not isinstance(name, str) or not name:
                raise self.fail(f"{key}.name", "expected a non-empty name")
            if name in (x.name for x in inputs):
                raise self.fail(f"{key}.name", f"input {name!r} is declared twice")
            if spec["dtype"] not in dtypes.NAMES:
                raise self.fail(
                    f"{key}.dtype",
                    f"unknown dtype {spec['dtype']!r}; expected one of {', '.join(dtypes.NAMES)}",
                )
            shape = spec["shape"]
            if not isinstance(shape, list) or not shape:
                raise self.fail(f"{key}.shape", "expected a list like [batch, seq] or [batch, 3, 32, 32]")
            for axis, dim in enumerate(shape):
                if isinstance(dim, str):
                    if dim not in dims:
                        raise self.fail(f"{key}.shape", f"dim {dim!r} of input {name!r} is not declared under dims")
                    used.add(dim)
                else:
                    self.integer(dim, f"{key}.shape[{axis}]")
            if shape[0] != BATCH:
                raise self.fail(
                    f"{key}.shape",
                    f"input {name!r} must start with the batching dim `batch`, got {shape[0]!r}",
                )
            value_range = None
            if "range" in spec:
                value_range = self.parse_range(spec["range"], f"{key}.range", spec["dtype"])
            inputs.append(InputConfig(name, spec["dtype"], tuple(shape), value_range))
        unused = [d for d in dims if d not in used]
        if unused:
            raise self.fail(f"dims.{unused[0]}", "declared but used by no input")
        return tuple(inputs)

    def parse_range(self, raw: Any, key: str, dtype: str) -> tuple[float, float]:
        if dtype == "bool":
            raise self.fail(key, "bool inputs take no range")
        if not isinstance(raw, list) or len(raw) != 2:
            raise self.fail(key, "expected [low, high)")
        low, high = self.number(raw[0], key), self.number(raw[1], key)
        if low >= high:
            raise self.fail(key, f"needs low < high, got [{raw[0]}, {raw[1]})")
        if dtypes.from_name(dtype).numpy.kind in "iu" and not (float(low).is_integer() and float(high).is_integer()):
            raise self.fail(key, f"integer input needs integer bounds, got [{raw[0]}, {raw[1]})")
        return (low, high)

    def parse_outputs(self, raw: Any, precisions: list[str]) -> tuple[OutputConfig, ...]:
        if not isinstance(raw, list) or not raw:
            raise self.fail("outputs", "expected a non-empty list, in the order forward() returns them")
        outputs = []
        for i, spec in enumerate(raw):
            key = f"outputs[{i}]"
            self.mapping(spec, key, {"name": True, "tolerance": False})
            name = spec["name"]
            if not isinstance(name, str) or not name:
                raise self.fail(f"{key}.name", "expected a non-empty name")
            if name in (o.name for o in outputs):
                raise self.fail(f"{key}.name", f"output {name!r} is declared twice")
            overrides = {}
            if spec.get("tolerance") is not None:
                raw_tol = self.mapping(spec["tolerance"], f"{key}.tolerance", {p: False for p in PRECISIONS})
                overrides = {p: self.tolerance(v, f"{key}.tolerance.{p}") for p, v in raw_tol.items()}
            outputs.append(OutputConfig(name, overrides))
        return tuple(outputs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def resolve_callable(config: ModelConfig, ref: str, key: str) -> Callable:
    """Import `module:attr` named at `key` of `config`; the current directory is on the import path."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any failure while importing user code is a config problem to report
        raise config.error(key, f"{ref!r} does not import: {type(e).__name__}: {_first_line(e)}") from e
    target = getattr(module, attr, None)
    if target is None:
        raise config.error(key, f"{ref!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise config.error(key, f"{ref!r} is not callable")
    return target


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

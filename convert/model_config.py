"""Model configs (configs/models/<name>.yaml): the schema, declared once, and nothing else.

Every problem is a ConfigError naming the file and the key, e.g.
`configs/models/x.yaml: inputs[1].shape: dim 'frames' is not declared under dims`.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, Field, PrivateAttr, ValidationError, model_validator

from convert.failures import ConfigError
from runtime.engine import dtypes
from runtime.engine.evaluation import METRICS
from runtime.engine.schema import (
    CallableRef,
    Name,
    NonNegative,
    Number,
    PositiveInt,
    Schema,
    first_problem,
    invalid,
    matching,
    non_empty_list,
    one_of,
)
from runtime.engine.signature import DimRange, Signature, TensorSpec
from runtime.monitor.features import KINDS

PRECISIONS = ("fp32", "fp16")
BATCH = "batch"
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")

Precision = Annotated[str, one_of(PRECISIONS, "precision")]
DType = Annotated[str, one_of(dtypes.NAMES, "dtype")]


def _range(value: Any) -> Any:
    if not isinstance(value, list) or len(value) != 2:
        raise invalid("expected [low, high)")
    return value


class Tolerance(Schema):
    atol: NonNegative
    rtol: NonNegative


class Tolerances(Schema):
    """One per precision; a precision that is built needs one."""

    fp32: Tolerance | None = None
    fp16: Tolerance | None = None

    def get(self, precision: str) -> Tolerance | None:
        return getattr(self, precision, None)


class Source(Schema):
    factory: CallableRef  # callable() -> torch.nn.Module


def _shape(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise invalid("expected a list like [batch, seq] or [batch, 3, 32, 32]")
    for axis, dim in enumerate(value):
        if not isinstance(dim, str) and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise invalid(f"expected an integer >= 1, got {dim!r}", f"[{axis}]")
    return tuple(value)


class InputConfig(Schema):
    name: Name
    dtype: DType
    shape: Annotated[tuple[int | str, ...], BeforeValidator(_shape)]
    range: Annotated[tuple[Number, Number], BeforeValidator(_range)] | None = None  # [low, high): parity data

    @model_validator(mode="after")
    def _check(self) -> InputConfig:
        if self.shape[0] != BATCH:
            first = self.shape[0]
            raise invalid(f"input {self.name!r} must start with the batching dim `batch`, got {first!r}", "shape")
        if self.range is not None:
            low, high = self.range
            if self.dtype == "bool":
                raise invalid("bool inputs take no range", "range")
            if low >= high:
                raise invalid(f"needs low < high, got [{low:g}, {high:g})", "range")
            if dtypes.from_name(self.dtype).numpy.kind in "iu" and not (low.is_integer() and high.is_integer()):
                raise invalid(f"integer input needs integer bounds, got [{low:g}, {high:g})", "range")
        return self


class OutputConfig(Schema):
    name: Name
    tolerance: Tolerances = Tolerances()  # overrides of the model's, per precision
    # What the output is, for drift monitoring: classifier scores add class, confidence and entropy;
    # an embedding is judged as vectors (runtime.monitor.features).
    kind: Annotated[str, one_of(KINDS, "kind")] | None = None


class Dim(Schema):
    min: PositiveInt
    opt: PositiveInt
    max: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> Dim:
        if not self.min <= self.opt <= self.max:
            raise invalid(f"needs min <= opt <= max, got {self.min}, {self.opt}, {self.max}")
        return self

    @property
    def range(self) -> DimRange:
        return DimRange(self.min, self.opt, self.max)


class Preprocessing(Schema):
    tokenizer: CallableRef | None = None  # callable() -> tokenizer files to package


class Evaluation(Schema):
    """A labelled eval set, packaged with every build and scored by it: a rollout's eval gate refuses a
    candidate scoring below its stable version's score minus `margin`."""

    # callable() -> {"inputs": {name: array}, "labels": array}, or an .npz (one array per input, plus
    # `labels`) relative to the config's directory
    data: str
    metric: Annotated[str, one_of(tuple(METRICS), "metric")] = "accuracy"
    output: Name | None = None  # default: the first output
    margin: NonNegative = 0.0


class Serving(Schema):
    max_batch_size: PositiveInt | None = None  # default: dims.batch.max
    max_queue_delay_ms: NonNegative = 5.0
    # {dim: {input: pad value}}: requests that differ in `dim` may share an engine call, each input
    # padded with its value (e.g. token ids and attention mask with 0).
    pad: dict[str, dict[str, Number]] = Field(default_factory=dict)


class ModelConfig(Schema):
    name: Annotated[str, matching(r"^[a-z0-9_-]+$", "must match [a-z0-9_-]+")]
    description: str | None = None
    source: Source
    inputs: Annotated[list[InputConfig], non_empty_list("expected a non-empty list, in forward() argument order")]
    outputs: Annotated[
        list[OutputConfig], non_empty_list("expected a non-empty list, in the order forward() returns them")
    ]
    dims: dict[str, Dim]
    sample: CallableRef | None = None  # callable(batch, dims) -> dict of arrays, for parity inputs
    preprocessing: Preprocessing | None = None
    precisions: Annotated[
        list[Precision], non_empty_list(f"expected a non-empty list drawn from {', '.join(PRECISIONS)}")
    ]
    tolerance: Tolerances
    serving: Serving = Serving()
    evaluation: Evaluation | None = None
    # Real-looking inputs, the yardstick of drift monitoring: callable() -> {input name: array}, or a .npz
    # (one array per input) or .parquet (one column per input) relative to the config's directory.
    reference: str | None = None
    _path: Path = PrivateAttr(default=Path("?"))

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        for name in self.dims:
            if not _IDENTIFIER.match(name):
                raise invalid("dim names must be identifiers", f"dims.{name}")
        if BATCH not in self.dims:
            raise invalid("required: `batch` is the batching dim every input starts with", f"dims.{BATCH}")
        used, names = set(), set()
        for i, spec in enumerate(self.inputs):
            if spec.name in names:
                raise invalid(f"input {spec.name!r} is declared twice", f"inputs[{i}].name")
            names.add(spec.name)
            for dim in spec.shape:
                if isinstance(dim, str) and dim not in self.dims:
                    raise invalid(
                        f"dim {dim!r} of input {spec.name!r} is not declared under dims", f"inputs[{i}].shape"
                    )
                used.add(dim)
            if dtypes.from_name(spec.dtype).numpy.kind in "iu" and spec.range is None and self.sample is None:
                raise invalid(
                    f"integer input {spec.name!r} needs a range [low, high) when no `sample` callable is set",
                    f"inputs[{i}].range",
                )
        unused = [d for d in self.dims if d not in used]
        if unused:
            raise invalid("declared but used by no input", f"dims.{unused[0]}")
        outputs = [o.name for o in self.outputs]
        for i, name in enumerate(outputs):
            if name in outputs[:i]:
                raise invalid(f"output {name!r} is declared twice", f"outputs[{i}].name")
        if len(set(self.precisions)) != len(self.precisions):
            raise invalid("lists a precision twice", "precisions")
        for p in self.precisions:
            if self.tolerance.get(p) is None:
                raise invalid(f"precision {p} is built, so it needs a tolerance {{atol, rtol}}", f"tolerance.{p}")
        batch_max = self.dims[BATCH].max
        if self.serving.max_batch_size is not None and self.serving.max_batch_size > batch_max:
            raise invalid(
                f"{self.serving.max_batch_size} exceeds dims.batch.max ({batch_max}), which engines are built for",
                "serving.max_batch_size",
            )
        if self.evaluation is not None and self.evaluation.output is not None and self.evaluation.output not in outputs:
            raise invalid(f"unknown output; expected one of {', '.join(outputs)}", "evaluation.output")
        for dim, values in self.serving.pad.items():
            key = f"serving.pad.{dim}"
            if dim not in self.dims or dim == BATCH:
                raise invalid("must name a declared dim other than batch", key)
            users = [i.name for i in self.inputs if dim in i.shape]
            for name in values:
                if name not in users:
                    raise invalid(f"unknown key; expected one of {', '.join(users)}", f"{key}.{name}")
            for name in users:
                if name not in values:
                    raise invalid("required key is missing", f"{key}.{name}")
        return self

    # --- what the convert stage reads ------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def factory(self) -> str:
        return self.source.factory

    @property
    def max_batch_size(self) -> int:
        return self.serving.max_batch_size or self.dims[BATCH].max

    @property
    def preprocessors(self) -> dict[str, str]:
        """kind -> callable returning the files to package, e.g. {"tokenizer": "convert.zoo.minilm:tokenizer_files"}."""
        return {k: v for k, v in (self.preprocessing.model_dump() if self.preprocessing else {}).items() if v}

    @property
    def dim_ranges(self) -> dict[str, DimRange]:
        return {name: dim.range for name, dim in self.dims.items()}

    def tolerance_for(self, output: str, precision: str) -> Tolerance:
        for out in self.outputs:
            if out.name == output and out.tolerance.get(precision) is not None:
                return out.tolerance.get(precision)
        return self.tolerance.get(precision)

    def input_signature(self) -> Signature:
        """Inputs and dims as the config declares them (outputs are only known after export)."""
        return Signature(
            inputs=tuple(TensorSpec(i.name, i.dtype, i.shape) for i in self.inputs),
            outputs=(),
            dims=self.dim_ranges,
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
    if not isinstance(raw, dict):
        raise ConfigError(path, None, f"expected a mapping, got {type(raw).__name__}")
    try:
        config = ModelConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(path, *first_problem(e, ModelConfig)) from None
    config._path = path
    return config


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

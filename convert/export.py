"""PyTorch -> ONNX, trusted only once what was written loads, checks and runs with dynamic dims.

The dynamo exporter goes first and the TorchScript exporter is the fallback. Either result is loaded
back and checked (onnx.checker full check, ONNX Runtime load, dims still dynamic, two runs at
different sizes with the batch first in every output); a failed check falls back, saying why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from convert import onnx_graph
from convert.failures import ExportError
from convert.model_config import BATCH, ModelConfig
from convert.sample_inputs import Sizes, export_sizes
from runtime.engine import dtypes
from runtime.engine.signature import TensorSpec
from runtime.engine.torch_model import to_torch

log = logging.getLogger("trtserve.convert")

OPSET = 18  # LayerNormalization is native from 17; 18 is parsed by TensorRT 10/11 and ORT >= 1.14


@dataclass
class ExportedModel:
    path: Path
    files: list[Path]
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    outputs: tuple[TensorSpec, ...]
    notes: list[str] = field(default_factory=list)


def to_torch_args(config: ModelConfig, feed: dict[str, np.ndarray]) -> tuple:
    return to_torch(feed, [i.name for i in config.inputs])


def describe_feed(feed: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {v.dtype} {list(v.shape)}" for k, v in feed.items())


def check_forward(model, config: ModelConfig, feed: dict[str, np.ndarray]) -> None:
    """Run the model once in PyTorch so a dtype or shape it rejects is reported as such."""
    import torch

    try:
        with torch.inference_mode():
            model(*to_torch_args(config, feed))
    except Exception as e:
        raise ExportError(
            f"{config.path}: the model rejected the example inputs ({describe_feed(feed)}): "
            f"{type(e).__name__}: {_first_line(e)}; check inputs' dtype and shape in the config"
        ) from e


def export_model(
    model, config: ModelConfig, make_feed: Callable[[Sizes], dict], out_path: Path, verbose: bool = False
) -> ExportedModel:
    example = make_feed(export_sizes(config))
    check_forward(model, config, example)
    notes: list[str] = []
    failures: dict[str, Exception] = {}
    for exporter in ("dynamo", "torchscript"):
        with tempfile.TemporaryDirectory(prefix="trtserve-export-") as scratch:
            raw = Path(scratch) / "exported.onnx"
            try:
                _run_exporter(exporter, model, config, example, raw, verbose)
            except Exception as e:
                failures[exporter] = e
                cause = _root_cause(e)
                notes.append(f"{exporter} exporter failed: {type(cause).__name__}: {_first_line(cause)}")
                log.warning("export: %s", notes[-1])
                continue
            try:
                files, outputs = _finalize(raw, config, make_feed, out_path)
            except Exception as e:
                failures[exporter] = e
                notes.append(f"{exporter} exporter wrote a graph that failed its checks: {_first_line(e)}")
                log.warning("export: %s", notes[-1])
                continue
        if notes:
            notes.append(f"fell back to the {exporter} exporter")
            log.warning("export: %s", notes[-1])
        return ExportedModel(out_path, files, exporter, OPSET, outputs, notes)
    raise _export_failure(config, failures)


def _run_exporter(exporter: str, model, config: ModelConfig, feed, path: Path, verbose: bool) -> None:
    import torch

    args = to_torch_args(config, feed)
    names = [i.name for i in config.inputs]
    dynamic = {d for d, r in config.dims.items() if r.min != r.max}
    # The exporters print progress and warnings of their own; keep them for --verbose.
    sink = contextlib.nullcontext() if verbose else _silenced()
    with sink:
        if exporter == "dynamo":
            dim_objects = {d: torch.export.Dim(d, min=config.dims[d].min, max=config.dims[d].max) for d in dynamic}
            shapes = tuple(
                {axis: dim_objects[d] for axis, d in enumerate(i.shape) if d in dynamic} for i in config.inputs
            )
            # output_names is left out on purpose: torch 2.13's dynamo exporter can then emit a graph
            # defining the output name twice. Outputs are named afterwards, safely, by onnx_graph.name_io.
            program = torch.onnx.export(
                model,
                args,
                dynamo=True,
                input_names=names,
                dynamic_shapes=shapes,
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
            program.save(str(path))
        else:
            axes = {i.name: {a: d for a, d in enumerate(i.shape) if d in dynamic} for i in config.inputs}
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                input_names=names,
                output_names=[o.name for o in config.outputs],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
            )


@contextlib.contextmanager
def _silenced():
    """Mute the exporters, whose C++ parts write straight to file descriptors 1 and 2."""
    saved = [os.dup(1), os.dup(2)]
    with (
        open(os.devnull, "w") as devnull,
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        sys.stdout.flush()
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            logging.disable(logging.NOTSET)


def _finalize(raw: Path, config: ModelConfig, make_feed, out_path: Path) -> tuple[list[Path], tuple[TensorSpec, ...]]:
    model = onnx.load(str(raw))
    want_in = [i.name for i in config.inputs]
    want_out = [o.name for o in config.outputs]
    got_in = [i.name for i in model.graph.input]
    if len(got_in) != len(want_in):
        raise ExportError(
            f"the graph has {len(got_in)} inputs {got_in} but the config declares {len(want_in)} {want_in}; "
            "an input the model never reads is dropped by the exporter"
        )
    if len(model.graph.output) != len(want_out):
        raise ExportError(
            f"the model returns {len(model.graph.output)} outputs but the config declares {len(want_out)} {want_out}"
        )
    onnx_graph.name_io(model, want_in, want_out)
    onnx_graph.set_dim_names(model, {i.name: i.shape for i in config.inputs})
    files = onnx_graph.save(model, out_path)
    onnx.checker.check_model(str(out_path), full_check=True)
    outputs = _check_runs(out_path, config, make_feed)
    return files, outputs


def probe_sizes(config: ModelConfig) -> tuple[Sizes, Sizes]:
    """Two dim assignments where every dynamic dim differs, and no two dims share a size where avoidable,
    so each output axis can be traced to the input dim that drives it."""
    first = {d: r.opt for d, r in config.dims.items()}
    second: Sizes = {}
    for d, r in config.dims.items():
        candidates = [s for s in range(r.min, r.max + 1) if s != first[d]] or [first[d]]
        fresh = [s for s in candidates if s not in second.values()] or candidates
        second[d] = fresh[len(fresh) // 2]
    return first, second


def _check_runs(path: Path, config: ModelConfig, make_feed) -> tuple[TensorSpec, ...]:
    """Load in ONNX Runtime, confirm the dynamic dims stayed dynamic, run at two sizes, and derive each
    output's dtype and shape (in config dim names)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    for spec, value in zip(config.inputs, session.get_inputs(), strict=True):
        for axis, dim in enumerate(spec.shape):
            if (
                isinstance(dim, str)
                and config.dims[dim].min != config.dims[dim].max
                and isinstance(value.shape[axis], int)
            ):
                raise ExportError(f"input {spec.name!r} dim {axis} ({dim}) came out fixed at {value.shape[axis]}")
    runs = []
    for sizes in probe_sizes(config):
        feed = make_feed(sizes)
        try:
            outputs = session.run(None, feed)
        except Exception as e:
            raise ExportError(f"ONNX Runtime failed at sizes {sizes}: {_first_line(e)}") from e
        runs.append((sizes, outputs))
    graph_outputs = onnx.load(str(path), load_external_data=False).graph.output
    specs = []
    for index, value in enumerate(graph_outputs):
        shapes = [outputs[index].shape for _, outputs in runs]
        if len({len(s) for s in shapes}) != 1 or not shapes[0]:
            raise ExportError(f"output {value.name!r} changes rank with the input sizes, or is a scalar")
        shape: list[int | str] = []
        for axis in range(len(shapes[0])):
            observed = [s[axis] for s in shapes]
            drivers = [d for d in config.dims if all(sz[d] == o for (sz, _), o in zip(runs, observed, strict=True))]
            if len(set(observed)) == 1 and not (BATCH in drivers and axis == 0):
                shape.append(observed[0])
            elif drivers:
                shape.append(BATCH if BATCH in drivers else drivers[0])
            else:
                shape.append(f"{value.name}_{axis}")
        if shape[0] != BATCH:
            raise ExportError(
                f"output {value.name!r} does not start with the batch dim (shapes {[list(s) for s in shapes]} "
                f"at batch {[sz[BATCH] for sz, _ in runs]}); batching needs it first"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        specs.append(TensorSpec(value.name, dtypes.from_numpy(dtype).name, tuple(shape)))
    return tuple(specs)


_OP_PATTERNS = (
    re.compile(r"Unsupported FX nodes: \{'([^']+)'"),
    re.compile(r"op='([\w.:]+)'"),
    re.compile(r"operator '([\w:.]+)'"),
    re.compile(r"\b(aten::\w+|aten\.\w+(?:\.\w+)?)"),
    re.compile(r"\b(\w+::\w+)\b"),
)


def _export_failure(config: ModelConfig, failures: dict[str, Exception]) -> ExportError:
    roots = {name: _root_cause(e) for name, e in failures.items()}
    text = " ".join(str(e) for e in roots.values())
    op = next((m.group(1) for p in _OP_PATTERNS if (m := p.search(text))), None)
    detail = "; ".join(f"{name}: {type(e).__name__}: {_first_line(e)}" for name, e in roots.items())
    if any(isinstance(e, ExportError) for e in failures.values()) and op is None:
        return ExportError(f"{config.path}: cannot export {config.name}: {detail}")
    head = f"op {op!r} cannot be exported to ONNX" if op else "the model cannot be exported to ONNX"
    return ExportError(f"{config.path}: {head} ({detail})")


def _root_cause(e: BaseException) -> BaseException:
    while e.__cause__ is not None:
        e = e.__cause__
    return e


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(e: BaseException) -> str:
    for line in _ANSI.sub("", str(e)).strip().splitlines():
        if line.strip():
            return line.strip()[:400]
    return type(e).__name__

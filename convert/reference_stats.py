"""A build's reference statistics: the model config's `reference` data run through the version's fp32
ONNX Runtime engine, summarised per tensor and feature into `reference.json` (runtime.monitor.reference),
the yardstick the server judges drift by."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convert.failures import ExportError
from convert.model_config import ModelConfig, resolve_callable
from convert.progress import step
from runtime.engine import dtypes
from runtime.engine.backends import EngineSpec, engine_class
from runtime.engine.manifest import EngineEntry
from runtime.engine.signature import Signature
from runtime.monitor.features import TensorFeatures
from runtime.monitor.reference import REFERENCE_FILE, compute_reference, write_reference


def tensor_features(config: ModelConfig, signature: Signature) -> list[TensorFeatures]:
    """How each input and output is judged: inputs padded along a dim leave their pad value out."""
    pads = {name: value for values in config.serving.pad.values() for name, value in values.items()}
    kinds = {o.name: o.kind for o in config.outputs}
    return [TensorFeatures.of(t.name, "input", t.shape, pad=pads.get(t.name)) for t in signature.inputs] + [
        TensorFeatures.of(t.name, "output", t.shape, kinds.get(t.name)) for t in signature.outputs
    ]


def reference_build(
    config: ModelConfig, staging: Path, signature: Signature, engines: list[EngineEntry]
) -> dict | None:
    """The manifest's `reference` record (None without reference data); reference.json written to staging."""
    if config.reference is None:
        return None
    inputs = _reference_inputs(config)
    rows = next(iter(inputs.values())).shape[0]
    entry = next((e for e in engines if e.backend == "onnxruntime" and e.precision == "fp32"), None)
    if entry is None:
        raise ExportError("reference: its statistics need the fp32 ONNX Runtime engine, which this build did not make")
    engine = engine_class(entry.backend)(EngineSpec(staging, signature, entry.precision, entry.file))
    with step(f"reference statistics of {rows} rows ({config.reference})"), engine:
        try:
            signature.validate({k: v[:1] for k, v in inputs.items()})
        except Exception as e:
            raise config.error("reference", f"the reference data does not fit the model: {e}") from None
        outputs: dict[str, list[np.ndarray]] = {}
        for start in range(0, rows, config.max_batch_size):
            result = engine.infer({k: v[start : start + config.max_batch_size] for k, v in inputs.items()})
            for name, value in result.items():
                outputs.setdefault(name, []).append(value)
        arrays = {**inputs, **{k: np.concatenate(v) for k, v in outputs.items()}}
        reference = compute_reference(tensor_features(config, signature), arrays, config.reference)
    write_reference(staging / REFERENCE_FILE, reference)
    return {"file": REFERENCE_FILE, "rows": rows, "source": config.reference}


def _reference_inputs(config: ModelConfig) -> dict[str, np.ndarray]:
    ref = config.reference
    if ref.endswith((".npz", ".parquet")):
        path = (config.path.parent / ref).resolve()
        try:
            if ref.endswith(".npz"):
                with np.load(path, allow_pickle=False) as data:
                    arrays = {name: data[name] for name in data.files}
            else:
                import pyarrow.parquet as pq

                table = pq.read_table(path)
                arrays = {name: np.array(table.column(name).to_pylist()) for name in table.column_names}
        except Exception as e:  # any unreadable file is a config problem, named
            raise config.error("reference", f"cannot read {path}: {type(e).__name__}: {e}") from None
    else:
        arrays = resolve_callable(config, ref, "reference")()
        if not isinstance(arrays, dict):
            raise config.error("reference", f"{ref!r} must return {{input name: array}}")
    names = [i.name for i in config.inputs]
    if sorted(arrays) != sorted(names):
        raise config.error("reference", f"the reference data has inputs {sorted(arrays)}; the model's are {names}")
    typed = {i.name: np.ascontiguousarray(arrays[i.name], dtypes.from_name(i.dtype).numpy) for i in config.inputs}
    rows = {a.shape[0] for a in typed.values()}
    if len(rows) != 1 or rows == {0}:
        raise config.error("reference", f"the reference inputs need one number of rows (> 0), got {sorted(rows)}")
    return typed

"""A build's eval set: read from the model config's `evaluation.data`, packaged into the version (so any
machine can score any version on it later) and scored by the version's fp32 ONNX Runtime engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convert.failures import ExportError
from convert.model_config import ModelConfig, resolve_callable
from convert.progress import step
from runtime.engine import dtypes
from runtime.engine.backends import EngineSpec, engine_class
from runtime.engine.evaluation import EVAL_FILE, LABELS, score
from runtime.engine.manifest import EngineEntry, sha256_file
from runtime.engine.signature import Signature


def evaluate_build(config: ModelConfig, staging: Path, signature: Signature, engines: list[EngineEntry]) -> dict | None:
    """The manifest's `evaluation` record (None without an eval set); the eval set written to the staging dir."""
    spec = config.evaluation
    if spec is None:
        return None
    inputs, labels = _eval_data(config)
    np.savez_compressed(staging / EVAL_FILE, **inputs, **{LABELS: labels})
    output = spec.output or signature.outputs[0].name
    entry = next((e for e in engines if e.backend == "onnxruntime" and e.precision == "fp32"), None)
    if entry is None:
        raise ExportError("evaluation: scoring needs the fp32 ONNX Runtime engine, which this build did not make")
    engine = engine_class(entry.backend)(EngineSpec(staging, signature, entry.precision, entry.file))
    with step(f"evaluation: {spec.metric} of {output} on {len(labels)} labelled rows"), engine:
        try:
            value = score(engine.infer, inputs, labels, spec.metric, output, config.max_batch_size)
        except ValueError as e:
            raise config.error("evaluation", str(e)) from None
    return {
        "metric": spec.metric,
        "output": output,
        "value": value,
        "rows": len(labels),
        "margin": spec.margin,
        "file": EVAL_FILE,
        "data_sha256": sha256_file(staging / EVAL_FILE),
        "backend": entry.backend,
        "precision": entry.precision,
    }


def _eval_data(config: ModelConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    ref = config.evaluation.data
    if ref.endswith(".npz"):
        path = (config.path.parent / ref).resolve()
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError) as e:
            raise config.error("evaluation.data", f"cannot read {path}: {e}") from None
        inputs = {k: v for k, v in arrays.items() if k != LABELS}
        labels = arrays.get(LABELS)
    else:
        doc = resolve_callable(config, ref, "evaluation.data")()
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict) or "labels" not in doc:
            raise config.error("evaluation.data", f"{ref!r} must return {{'inputs': {{name: array}}, 'labels': array}}")
        inputs, labels = doc["inputs"], doc["labels"]
    if labels is None:
        raise config.error("evaluation.data", "the eval set has no `labels`")
    names = [i.name for i in config.inputs]
    if sorted(inputs) != sorted(names):
        raise config.error("evaluation.data", f"the eval set's inputs are {sorted(inputs)}; the model's are {names}")
    typed = {i.name: np.ascontiguousarray(inputs[i.name], dtypes.from_name(i.dtype).numpy) for i in config.inputs}
    return typed, np.asarray(labels)

"""A served model as Triton describes one: the Open Inference Protocol's model metadata, and Triton's model
configuration and statistics extensions, so Triton's tools (tritonclient, perf_analyzer) read them."""

from __future__ import annotations

import os

from runtime.engine import preprocessing
from runtime.engine.dtypes import from_name
from runtime.engine.signature import TensorSpec
from runtime.serve.model import ServedModel


def platform(model: ServedModel) -> str:
    return "tensorrt_plan" if model.engine.backend == "tensorrt" else "onnxruntime_onnx"


def _tensor(spec: TensorSpec) -> dict:
    return {
        "name": spec.name,
        "datatype": from_name(spec.dtype).kserve,
        "shape": [d if isinstance(d, int) else -1 for d in spec.shape],
    }


def _inputs(model: ServedModel) -> list[dict]:
    entries = [_tensor(t) for t in model.signature.inputs]
    if model.preprocess is not None:
        entries.append({"name": preprocessing.TEXT_INPUT, "datatype": "BYTES", "shape": [-1]})
    return entries


def metadata(model: ServedModel) -> dict:
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": platform(model),
        "inputs": _inputs(model),
        "outputs": [_tensor(t) for t in model.signature.outputs],
    }


def model_config(model: ServedModel) -> dict:
    def entry(meta: dict, optional: bool = False) -> dict:
        data = {
            "name": meta["name"],
            "data_type": f"TYPE_{'STRING' if meta['datatype'] == 'BYTES' else meta['datatype']}",
            "dims": meta["shape"][1:],
        }
        if optional:
            data["optional"] = True
        return data

    optional = model.preprocess is not None  # text, or the token inputs: either set
    return {
        "name": model.name,
        "platform": platform(model),
        "backend": "tensorrt" if model.engine.backend == "tensorrt" else "onnxruntime",
        "max_batch_size": model.max_batch_size,
        "input": [entry(m, optional) for m in _inputs(model)],
        "output": [entry(_tensor(t)) for t in model.signature.outputs],
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(model.batcher.max_delay_s * 1e6),
            "default_queue_policy": {"max_queue_size": model.batcher.max_queued_rows},
        },
        "model_warmup": [{"name": f"batch{s['batch']}", "batch_size": s["batch"]} for s in model.warmup_shapes()],
        "parameters": {
            "precision": {"string_value": model.engine.precision},
            "device": {"string_value": model.engine.device},
            "warmup_seconds": {"string_value": f"{model.warmup_s:.3f}" if model.warmup_s is not None else ""},
        },
    }


def engine_choice(model: ServedModel) -> dict:
    """Which engine serves the model and why: the loader's reason, a warning where the plan was built on
    another GPU model or driver, and the backends passed over (a TensorRT plan that failed to load, say)."""
    engine, spec = model.engine, model.engine.spec
    return {
        "backend": engine.backend,
        "precision": engine.precision,
        "device": engine.device,
        "file": spec.file,
        "reason": spec.reason,
        "warning": spec.warning,
        "passed_over": list(spec.passed_over),
    }


def statistics(model: ServedModel) -> dict:
    """Triton's model statistics (times in ns), and ours: memory, warm-up time, the batch limit now."""
    b, counts = model.batcher.stats, model.counts
    return {
        "name": model.name,
        "version": model.version,
        "last_inference": counts.last_ms,
        "inference_count": counts.rows,
        "execution_count": b.batches,
        "inference_stats": {
            "success": {"count": counts.success, "ns": counts.success_ns},
            "fail": {"count": counts.fail, "ns": counts.fail_ns},
            "queue": {"count": b.rows, "ns": b.queue_ns},
            # Triton's split of an engine call: stacking, the engine itself (timed in its thread),
            # and the rest (back on the event loop, results split), which grows when the loop is busy.
            "compute_input": {"count": b.batches, "ns": b.input_ns},
            "compute_infer": {"count": b.batches, "ns": b.infer_ns},
            "compute_output": {"count": b.batches, "ns": b.output_ns},
        },
        "batch_stats": [
            {"batch_size": size, "compute_infer": {"count": count}} for size, count in sorted(b.batch_sizes.items())
        ],
        "engine": engine_choice(model),
        "memory": {**model.engine.memory(), "footprint": model.footprint.to_dict() if model.footprint else None},
        "warmup_seconds": model.warmup_s,
        "max_batch_size": {"configured": model.max_batch_size, "now": model.batcher.max_rows},
        # Which replica answered: its Ray node, and the directory it loaded (an object store's version:
        # that node's verified download).
        "replica": {"node_id": _node_id(), "pid": os.getpid(), "loaded_from": str(model.version_dir)},
    }


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside Ray (tests, benchmarks in-process)
        return None

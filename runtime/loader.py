"""load_engine: pick the best engine of a verified version directory for this machine, and say why."""

from __future__ import annotations

import logging
from pathlib import Path

from runtime.artifact import verify_version_dir
from runtime.backends import Engine, engine_class
from runtime.cuda_device import probe, tensorrt_version
from runtime.errors import BackendUnavailable
from runtime.signature import Signature
from runtime.tensorrt_plan import plan_compatibility

log = logging.getLogger("trtserve.runtime")

# On a GPU the lower precision is the faster one; parity already proved it within tolerance.
_GPU_PRECISION_ORDER = ("fp16", "fp32")


def load_engine(version_dir: str | Path, backend: str = "auto", precision: str | None = None, **ort_options) -> Engine:
    """Load one engine from a model version directory (checksums and paths verified first).

    backend: 'auto' picks a TensorRT plan built for this GPU and TensorRT version, else ONNX Runtime
    (CUDA when installed, else CPU). The choice and the reason are logged. `ort_options` (e.g.
    intra_op_threads, spin) go to the ONNX Runtime engine when that is the one loaded.
    """
    version_dir = Path(version_dir)
    manifest = verify_version_dir(version_dir)
    signature = Signature.from_manifest(manifest)
    if backend == "torch":  # the eager baseline: rebuilt from the recorded factory, never chosen by auto
        log.info("%s: using torch eager (requested)", version_dir)
        return engine_class("torch")(version_dir, signature, "fp32")
    entries = [e for e in manifest["engines"] if precision in (None, e["precision"])]
    if not entries:
        have = sorted({e["precision"] for e in manifest["engines"]})
        raise BackendUnavailable(f"{version_dir}: no engine of precision {precision}; have {', '.join(have)}")

    if backend in ("auto", "tensorrt"):
        entry, reasons = _pick_tensorrt(entries)
        if entry is not None:
            log.info("%s: using tensorrt %s (%s)", version_dir, entry["precision"], reasons[-1])
            return engine_class("tensorrt")(version_dir / entry["file"], signature, entry["precision"])
        if backend == "tensorrt":
            raise BackendUnavailable(f"{version_dir}: no usable TensorRT engine: {'; '.join(reasons)}")
        fallback_reason = "; ".join(reasons)
    elif backend == "onnxruntime":
        fallback_reason = "onnxruntime requested"
    else:
        raise BackendUnavailable(f"unknown backend {backend!r}; expected auto, onnxruntime, tensorrt or torch")

    ort_entries = [e for e in entries if e["backend"] == "onnxruntime"]
    engine_cls = engine_class("onnxruntime")
    ok, why = engine_cls.availability()
    if not ok or not ort_entries:
        raise BackendUnavailable(f"{version_dir}: cannot fall back to onnxruntime: {why if not ok else 'no ONNX file'}")
    on_gpu = engine_cls.cuda_usable()
    order = _GPU_PRECISION_ORDER if on_gpu else tuple(reversed(_GPU_PRECISION_ORDER))
    entry = min(ort_entries, key=lambda e: order.index(e["precision"]) if e["precision"] in order else len(order))
    log.info(
        "%s: using onnxruntime %s on %s (%s)",
        version_dir,
        entry["precision"],
        "cuda" if on_gpu else "cpu",
        fallback_reason,
    )
    return engine_cls(version_dir / entry["file"], signature, entry["precision"], **ort_options)


def _pick_tensorrt(entries: list[dict]) -> tuple[dict | None, list[str]]:
    plans = [e for e in entries if e["backend"] == "tensorrt"]
    if not plans:
        return None, ["the artifact has no TensorRT engine"]
    device, why = probe()
    cc = device.compute_capability if device else None
    version = tensorrt_version()
    reasons = []
    usable = []
    for entry in plans:
        ok, reason = plan_compatibility(entry, cc, version)
        reasons.append(reason)
        if ok:
            usable.append(entry)
    if not usable:
        if device is None:
            reasons = [why]
        return None, sorted(set(reasons))
    usable.sort(
        key=lambda e: (
            _GPU_PRECISION_ORDER.index(e["precision"])
            if e["precision"] in _GPU_PRECISION_ORDER
            else len(_GPU_PRECISION_ORDER)
        )
    )
    ok, reason = plan_compatibility(usable[0], cc, version)
    return usable[0], [reason]

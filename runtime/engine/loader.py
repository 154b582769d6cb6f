"""load_engine: the best engine of a verified version directory for this machine, and why."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from runtime.engine.artifact import verify_version_dir
from runtime.engine.backends import Engine, EngineOptions, auto_backends, engine_class
from runtime.engine.errors import BackendUnavailable
from runtime.engine.manifest import Manifest

log = logging.getLogger("trtserve.runtime")


def load_engine(
    version_dir: str | Path,
    backend: str = "auto",
    precision: str | None = None,
    options: EngineOptions | None = None,
) -> Engine:
    """Load one engine from a model version directory (checksums and paths verified first).

    backend: a registered backend's name, or 'auto': the first of `auto_backends()` that has an engine
    this machine can run and that loads (a TensorRT plan built for this GPU and TensorRT version, else ONNX
    Runtime, CUDA when it works here, else CPU). The choice and the reasons for passing over the others are
    logged and kept on `engine.spec` (reason, warning, passed_over) for /stats.
    """
    version_dir = Path(version_dir)
    return engine_for(version_dir, verify_version_dir(version_dir), backend, precision, options)


def engine_for(
    version_dir: Path,
    manifest: Manifest,
    backend: str = "auto",
    precision: str | None = None,
    options: EngineOptions | None = None,
) -> Engine:
    """What `load_engine` loads, for a version already verified (`manifest` as verify_version_dir
    returned it), so a server that needs the manifest too checks the files once."""
    names = auto_backends() if backend == "auto" else [backend]
    passed_over: list[str] = []
    for name in names:
        cls = engine_class(name)
        spec, why = cls.choose(version_dir, manifest, precision)
        if spec is None:
            passed_over.append(f"{name}: {why}")
            continue
        spec = replace(spec, reason=spec.reason or why, passed_over=tuple(passed_over))
        if spec.warning:
            log.warning("%s: %s", version_dir, spec.warning)
        try:
            engine = cls(spec, options)
        except BackendUnavailable as e:  # EngineLoadError included: a plan that does not load on this GPU
            if backend != "auto":
                raise
            log.warning("%s: %s %s failed to load, trying the next backend: %s", version_dir, name, spec.precision, e)
            passed_over.append(f"{name}: {spec.file or name} failed to load: {e}")
            continue
        reasons = "; ".join([why, *passed_over]) if passed_over else why
        log.info("%s: using %s %s on %s (%s)", version_dir, name, spec.precision, engine.device, reasons)
        return engine
    raise BackendUnavailable(f"{version_dir}: no engine can run here ({'; '.join(passed_over)})")

"""`convert build`: config -> PyTorch model -> ONNX -> engines -> parity -> published version directory."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convert import precision as precision_variants
from convert.evaluate import evaluate_build
from convert.export import export_model
from convert.failures import BackendUnavailable, ConfigError, ExportError, ParityFailed
from convert.model_config import PRECISIONS, ModelConfig, load_config, resolve_callable
from convert.package import destination, git_commit, toolchain, utc_now, write_json
from convert.parity import ParityResult, compare, format_table
from convert.progress import Counter, step
from convert.reference_stats import reference_build
from convert.sample_inputs import FeedMaker, parity_points
from convert.tensorrt_build import TensorRTOptions, build_engine, tensorrt_target
from convert.torch_reference import TorchReference
from runtime.engine.backends import EngineSpec, engine_class
from runtime.engine.manifest import (
    FORMAT_VERSION,
    PARITY,
    PARITY_SAMPLES,
    EngineEntry,
    Manifest,
    sha256_file,
    write_manifest,
)
from runtime.engine.signature import Signature, TensorSpec
from runtime.engine.tensorrt_plan import profile_json
from runtime.engine.torch_model import weights_sha256

log = logging.getLogger("trtserve.convert")

BACKEND_CHOICES = ("onnxruntime", "tensorrt", "all")
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}


@dataclass
class BuildOptions:
    repository: str | Path = Path("model_repository")  # a path, file://, s3:// or gs:// URI
    version: int | None = None
    backend: str = "all"
    precisions: tuple[str, ...] | None = None  # default: the config's
    samples: int = 16
    seed: int = 0
    if_changed: bool = False  # skip when the latest version has the same config and weights
    verbose: bool = False
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)


@dataclass
class BuildResult:
    version_dir: str  # the published version: a local path, or its URI in an object store
    manifest: Manifest
    parity: list[ParityResult]
    skipped: list[str]  # what was not built here, and why
    up_to_date: bool = False


def build(config_path: str | Path, options: BuildOptions | None = None) -> BuildResult:
    options = options or BuildOptions()
    config = load_config(config_path)
    precisions = _precisions(config, options)
    backends, skipped = _backends(options.backend, precisions)
    if options.samples < 1:
        raise ConfigError(config.path, None, f"--samples must be at least 1, got {options.samples}")

    factory = resolve_callable(config, config.factory, "source.factory")
    sampler = resolve_callable(config, config.sample, "sample") if config.sample else None
    preprocessors = {k: resolve_callable(config, ref, f"preprocessing.{k}") for k, ref in config.preprocessors.items()}

    target = destination(options.repository, config.name)
    version = target.next_version(options.version)
    with step(f"load {config.factory}"):
        model = _instantiate(config, factory)
        weights = weights_sha256(model)
    config_sha = sha256_file(config.path)
    if options.if_changed and options.version is None:
        current = _current_version(target, config_sha, weights)
        if current is not None:
            log.info("%s is up to date (same config and weights); nothing to build", current[0])
            return BuildResult(current[0], current[1], [], skipped, up_to_date=True)

    make_feed = FeedMaker(config, sampler, options.seed)
    with target.staging(version) as staging:
        with step("export to ONNX"):
            exported = export_model(model, config, make_feed, staging / ONNX_FILES["fp32"], options.verbose)
        signature = Signature(
            inputs=tuple(TensorSpec(i.name, i.dtype, i.shape) for i in config.inputs),
            outputs=exported.outputs,
            dims=config.dim_ranges,
        )
        engines = _build_engines(staging, signature, precisions, backends, options)

        points = parity_points(config, options.samples, options.seed)
        with step(f"parity: {len(points)} samples, PyTorch fp32 reference"):
            reference = TorchReference(model, config)
            feeds = [make_feed(sizes, i) for i, sizes in enumerate(points)]
            references = [reference(feed) for feed in feeds]
            results = [_run_parity(staging, signature, entry, feeds, references, config) for entry in engines]
        log.info("parity against PyTorch fp32 (CPU):\n%s", format_table(results))
        failures = [line for r in results for line in r.failures()]
        if failures:
            raise ParityFailed("parity failed, nothing was written:\n  " + "\n  ".join(failures))

        _save_samples(staging / PARITY_SAMPLES, feeds, references)
        preprocessing = _package_preprocessing(staging, preprocessors)
        evaluation = evaluate_build(config, staging, signature, engines)
        reference_stats = reference_build(config, staging, signature, engines)
        parity = [r.record() for r in results]
        write_json(
            staging / PARITY,
            {
                "reference": {"backend": "torch", "precision": "fp32", "device": "cpu"},
                "samples_file": PARITY_SAMPLES,
                "samples": [{"index": i, "sizes": sizes} for i, sizes in enumerate(points)],
                "results": [p.model_dump(mode="json") for p in parity],
            },
        )
        commit, dirty = git_commit(config.path.parent)
        manifest = write_manifest(
            staging,
            {
                "format_version": FORMAT_VERSION,
                "name": config.name,
                "version": version,
                "created_at": utc_now(),
                "source": {
                    "factory": config.factory,
                    "weights_sha256": weights,
                    "git_commit": commit,
                    "git_dirty": dirty,
                    "config": config.path.name,
                    "config_sha256": config_sha,
                    "description": config.description,
                },
                "inputs": [t.to_dict() for t in signature.inputs],
                "outputs": [t.to_dict() for t in signature.outputs],
                "dims": {k: v.model_dump() for k, v in config.dims.items()},
                "toolchain": toolchain(),
                "onnx": {"opset": exported.opset, "exporter": exported.exporter, "notes": exported.notes},
                "engines": engines,
                "parity": parity,
                "preprocessing": preprocessing,
                "serving": {
                    "max_batch_size": config.max_batch_size,
                    "max_queue_delay_ms": config.serving.max_queue_delay_ms,
                    "pad": config.serving.pad,
                },
                "evaluation": evaluation,
                "reference": reference_stats,
            },
        )
        # Without --version a build that lost its number to another meanwhile takes the next one.
        final, manifest = target.publish(staging, version, take_next=options.version is None)
    log.info("published %s", final)
    return BuildResult(final, manifest, results, skipped)


def _precisions(config: ModelConfig, options: BuildOptions) -> tuple[str, ...]:
    if options.precisions is None:
        return config.precisions
    for p in options.precisions:
        if p not in PRECISIONS:
            raise ConfigError(
                config.path, None, f"--precision {p!r} is unknown; expected one of {', '.join(PRECISIONS)}"
            )
        if config.tolerance.get(p) is None:
            raise ConfigError(config.path, f"tolerance.{p}", f"--precision {p} needs a tolerance for it in the config")
    return tuple(dict.fromkeys(options.precisions))


def _backends(requested: str, precisions: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """ONNX Runtime is always built: it is the fallback every artifact must have."""
    if requested not in BACKEND_CHOICES:
        raise BackendUnavailable(f"unknown backend {requested!r}; expected one of {', '.join(BACKEND_CHOICES)}")
    ok, why = engine_class("onnxruntime").availability()
    if not ok:
        raise BackendUnavailable(why)
    backends, skipped = ["onnxruntime"], []
    if requested in ("tensorrt", "all"):
        try:
            tensorrt_target()
            backends.append("tensorrt")
        except BackendUnavailable as e:
            if requested == "tensorrt":
                raise
            skipped.append(f"tensorrt skipped: {e}")
    return backends, skipped


def _instantiate(config: ModelConfig, factory):
    import torch

    try:
        model = factory()
    except Exception as e:
        raise config.error("source.factory", f"{config.factory} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise config.error("source.factory", f"{config.factory} returned {type(model).__name__}, not a torch.nn.Module")
    if model.training:
        log.warning("%s returned a model in training mode; switching it to eval()", config.factory)
    return model.eval()


def _current_version(target, config_sha: str, weights: str) -> tuple[str, Manifest] | None:
    try:
        latest = target.latest()
    except Exception:  # an unreadable latest version is simply not current
        return None
    if latest is None:
        return None
    source = latest[1].source
    if source.config_sha256 == config_sha and source.weights_sha256 == weights:
        return latest
    return None


def _build_engines(
    staging: Path, signature: Signature, precisions, backends, options: BuildOptions
) -> list[EngineEntry]:
    profile = [profile_json(signature)]
    engines = []
    for precision in precisions:
        onnx_file = ONNX_FILES[precision]
        if precision != "fp32":
            with step(f"{precision} ONNX variant"):
                precision_variants.fp16_variant(staging / ONNX_FILES["fp32"], staging / onnx_file)
        engines.append(
            EngineEntry(
                file=onnx_file,
                backend="onnxruntime",
                precision=precision,
                compute_capability=None,
                tensorrt_version=None,
                profiles=profile,
            )
        )
        if "tensorrt" in backends:
            with step(f"TensorRT {precision} engine"):
                engines.append(build_engine(staging / onnx_file, signature, precision, staging, options.tensorrt))
    return engines


def _run_parity(
    staging: Path, signature: Signature, entry: EngineEntry, feeds, references, config: ModelConfig
) -> ParityResult:
    label = f"parity {entry.backend} {entry.precision}"
    try:
        engine = engine_class(entry.backend)(EngineSpec(staging, signature, entry.precision, entry.file))
    except Exception as e:
        raise ExportError(f"{entry.file}: {entry.backend} cannot load the engine it was built into: {e}") from e
    with engine:
        return compare(
            entry.backend,
            entry.precision,
            engine.infer,
            feeds,
            references,
            lambda name: config.tolerance_for(name, entry.precision),
            Counter(label, len(feeds)),
        )


def _save_samples(path: Path, feeds, references) -> None:
    """Parity inputs and reference outputs travel with the artifact, so `convert check` can re-run
    parity on any machine without PyTorch or the model's source."""
    arrays = {}
    for i, (feed, ref) in enumerate(zip(feeds, references, strict=True)):
        arrays.update({f"{i}/input/{k}": v for k, v in feed.items()})
        arrays.update({f"{i}/reference/{k}": v for k, v in ref.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def _package_preprocessing(staging: Path, preprocessors: dict) -> dict | None:
    if not preprocessors:
        return None
    packaged = {}
    for kind, files_fn in preprocessors.items():
        target = staging / "preprocessing" / kind
        target.mkdir(parents=True, exist_ok=True)
        files = []
        for src in files_fn():
            src = Path(src)
            if not src.is_file():
                raise ExportError(f"preprocessing.{kind}: {src} is not a file")
            shutil.copy2(src, target / src.name)
            files.append(f"preprocessing/{kind}/{src.name}")
        packaged[kind] = {"files": files}
    return packaged


__all__ = ["BuildOptions", "BuildResult", "build"]

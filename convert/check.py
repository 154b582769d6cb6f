"""`convert check`: is a version directory intact, and do its engines still pass parity on this machine?

Parity re-runs against the inputs and PyTorch reference outputs stored in the artifact, so neither
PyTorch nor the model's source is needed here.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.parity import ParityResult, compare
from convert.progress import Counter
from runtime.engine.artifact import verify_version_dir
from runtime.engine.backends import EngineSpec, engine_class
from runtime.engine.errors import ArtifactError
from runtime.engine.manifest import PARITY_SAMPLES, Manifest

log = logging.getLogger("trtserve.convert")


@dataclass
class CheckResult:
    version_dir: Path
    manifest: Manifest
    results: list[ParityResult]
    skipped: list[str]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


def check(version_dir: str | Path) -> CheckResult:
    version_dir = Path(version_dir)
    manifest = verify_version_dir(version_dir)
    if version_dir.name != str(manifest.version):
        raise ArtifactError(f"{version_dir}: the directory holds version {manifest.version} of {manifest.name}")
    log.info("%s: %d files match their checksums", version_dir, len(manifest.files))
    if PARITY_SAMPLES not in manifest.files:
        raise ArtifactError(f"{version_dir}: the manifest lists no {PARITY_SAMPLES}; parity cannot be re-run")
    feeds, references = load_samples(version_dir / PARITY_SAMPLES)
    recorded = {(p.backend, p.precision): p for p in manifest.parity}

    results, skipped = [], []
    for entry in manifest.engines:
        label = f"{entry.backend} {entry.precision}"
        backend = engine_class(entry.backend)
        ok, why = backend.runnable(entry)
        if not ok:
            skipped.append(f"{label}: {why}")
            log.warning("skipping %s", skipped[-1])
            continue
        record = recorded.get((entry.backend, entry.precision))
        if record is None:
            raise ArtifactError(f"{version_dir}: {entry.file} has no parity record in the manifest")
        spec = EngineSpec(version_dir, manifest.signature, entry.precision, entry.file, manifest.source)
        with backend(spec) as engine:
            results.append(
                compare(
                    entry.backend,
                    entry.precision,
                    engine.infer,
                    feeds,
                    references,
                    record.outputs.__getitem__,  # the tolerances parity was proved with
                    Counter(f"parity {label}", len(feeds)),
                )
            )
    return CheckResult(version_dir, manifest, results, skipped)


def load_samples(path: Path) -> tuple[list[dict], list[dict]]:
    grouped: dict[int, dict[str, dict]] = defaultdict(lambda: {"input": {}, "reference": {}})
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            index, kind, name = key.split("/", 2)
            grouped[int(index)][kind][name] = data[key]
    order = sorted(grouped)
    return [grouped[i]["input"] for i in order], [grouped[i]["reference"] for i in order]

"""Sizing replicas from the memory they measurably use.

`measure_replica` loads the application's models in a fresh process, the way a replica does (Ray Serve
imported, each model loaded and warmed up at its largest batch), and reports that process's memory:
host RSS and, on a GPU, device memory. `actor_options` turns the figure into Ray actor options:
`memory` (host bytes Ray reserves for the replica) and, on a GPU, a `num_gpus` fraction = device need /
the GPU's memory, both with headroom; options the config sets are kept as they are. A replica that
cannot fit anywhere is refused at deploy time with what it needs and what is free. A replica is sized
for `placement.versions_per_model` versions of each model at once (default 2: a rollout's stable and
candidate, both loaded and warm).

A measurement is kept (`$TRTSERVE_CACHE/replica-need/`, keyed by the models' manifests, their specs and
the software that loads them), so deploying the same models again (a config change, a redeploy) does not
load them once more: an application's build is that much shorter, and during a rebuild Ray's HAProxy has
no servers for the application (docs/design/ingress-and-retries.md).

    python -m runtime.serve.placement REPOSITORY '[{"name": "cnn", "max_batch_size": 64}]'   # prints the JSON
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from runtime.engine.errors import TrtserveError
from runtime.engine.manifest import MANIFEST
from runtime.engine.memory import gpu_free_total, gpu_process_bytes, host_rss_bytes
from runtime.engine.remote import cache_root
from runtime.engine.repository import version_dir
from runtime.serve.app_args import AppArgs, ModelSpec

MiB = 2**20


class PlacementError(TrtserveError):
    """The replica cannot fit: raised at deploy time, with the figures."""


@dataclass
class ReplicaNeed:
    host_bytes: int  # the replica process after warm-up
    device_bytes: int | None  # GPU memory of the replica's models; None on the CPU
    device_total_bytes: int | None  # the GPU's memory, where there is one
    models: dict[str, dict]  # per model: its footprint

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Free:
    """What the cluster has for one more replica: the largest node's figures."""

    host_bytes: int | None
    device_bytes: int | None = None


def actor_options(need: ReplicaNeed, configured: dict | None, headroom: float, free: Free | None) -> dict:
    """Ray actor options for a replica of this need; keys the config sets win. Raises PlacementError
    when the replica does not fit what is free."""
    if headroom < 0:
        raise ValueError("headroom must be >= 0")
    options = dict(configured or {})
    host = math.ceil(need.host_bytes * (1.0 + headroom))
    options.setdefault("memory", host)
    if need.device_bytes is not None:
        if not need.device_total_bytes:
            raise PlacementError(
                "the replica uses a GPU but the GPU's memory is unknown; set ray_actor_options.num_gpus"
            )
        device = need.device_bytes * (1.0 + headroom)
        # Round up to a hundredth, never to zero: Ray schedules GPUs in fractions.
        options.setdefault("num_gpus", min(1.0, max(0.01, math.ceil(device / need.device_total_bytes * 100) / 100)))
    if free is not None:
        _check_fits(need, options, headroom, free)
    return options


def _check_fits(need: ReplicaNeed, options: dict, headroom: float, free: Free) -> None:
    wanted = options.get("memory", 0)
    models = ", ".join(need.models) or "the replica"
    if free.host_bytes is not None and wanted > free.host_bytes:
        raise PlacementError(
            f"{models}: a replica needs {wanted / MiB:.0f} MiB of host memory (measured "
            f"{need.host_bytes / MiB:.0f} MiB + {headroom:.0%} headroom) but the largest node has "
            f"{free.host_bytes / MiB:.0f} MiB free; free memory, lower max_batch_size, or set "
            "ray_actor_options.memory"
        )
    if need.device_bytes is not None and free.device_bytes is not None:
        device = need.device_bytes * (1.0 + headroom)
        if device > free.device_bytes:
            raise PlacementError(
                f"{models}: a replica needs {device / MiB:.0f} MiB of GPU memory (measured "
                f"{need.device_bytes / MiB:.0f} MiB + {headroom:.0%} headroom) but the GPU has "
                f"{free.device_bytes / MiB:.0f} MiB free"
            )


def cluster_free() -> Free | None:
    """The largest free logical `memory` on one alive Ray node (what Ray can still reserve), and this
    machine's free GPU memory; None when Ray is not running here."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    available = ray.available_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    host = None
    if len(nodes) == 1:
        host = int(available.get("memory", 0)) or None
    elif nodes:  # per-node availability is not in available_resources(); the largest node total bounds it
        host = int(max(n["Resources"].get("memory", 0) for n in nodes)) or None
    gpu = gpu_free_total()
    return Free(host, gpu[0] if gpu else None)


def replica_need(args: AppArgs) -> ReplicaNeed | None:
    """What one replica needs: given in `placement` (host_mb, device_mb), else measured in a fresh process
    (placement.measure, default true). None when ray_actor_options already sets memory (and num_gpus)."""
    placement = args.placement
    configured = args.ray_actor_options or {}
    if placement.host_mb is not None:
        device = placement.device_mb
        gpu = gpu_free_total() if device is not None else None
        return ReplicaNeed(
            int(placement.host_mb * MiB), None if device is None else int(device * MiB), gpu[1] if gpu else None, {}
        )
    if not placement.measure or ("memory" in configured and "num_gpus" in configured):
        return None
    return with_versions(cached_measurement(args.repository_path, args.models), placement.versions_per_model)


def with_versions(need: ReplicaNeed, versions: int) -> ReplicaNeed:
    """A replica's need with room for `versions` versions of each model (a rollout holds two warm): the
    process as measured plus, per extra version, each model's own footprint again (a candidate is sized
    like the version it replaces)."""
    extra = versions - 1
    if extra <= 0:
        return need
    host = need.host_bytes + extra * sum(m.get("host_bytes") or 0 for m in need.models.values())
    device = need.device_bytes
    if device is not None:
        device += extra * sum(m.get("device_bytes") or 0 for m in need.models.values())
    return ReplicaNeed(host, device, need.device_total_bytes, need.models)


# What a measurement depends on besides the models: the code that loads them and where it runs.
_SOFTWARE = ("trtserve", "ray", "onnxruntime", "onnxruntime-gpu", "numpy", "cupy-cuda12x", "tensorrt")


def measurement_key(repository: str | Path, models: list[ModelSpec]) -> str:
    """A digest of what a replica's measured need depends on: each model's manifest (its files'
    checksums), its spec, the versions of the software that loads it and trtserve's own source, this
    machine's kind and the GPUs it may see."""
    parts: list = []
    for spec in models:
        manifest = (version_dir(repository, spec.name, spec.version) / MANIFEST).read_bytes()
        parts.append([spec.model_dump(mode="json"), hashlib.sha256(manifest).hexdigest()])
    software = {}
    for name in _SOFTWARE:
        with contextlib.suppress(metadata.PackageNotFoundError):
            software[name] = metadata.version(name)
    where = [sys.version, platform.machine(), platform.node(), os.environ.get("CUDA_VISIBLE_DEVICES")]
    doc = json.dumps([parts, software, _runtime_source_digest(), where], sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def _runtime_source_digest() -> str:
    """trtserve's own code as a replica runs it: its version number stays put between releases, its
    source does not (a few hundred small files, read in milliseconds)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cached_measurement(repository: str | Path, models: list[ModelSpec], cache: Path | None = None) -> ReplicaNeed:
    """`measure_replica`'s figure, kept under the cache by `measurement_key`: measured once per models
    and software, not on every build. A cache that cannot be read or written is only not used."""
    key = measurement_key(repository, models)
    path = (cache or cache_root() / "replica-need") / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        return ReplicaNeed(**json.loads(path.read_text()))
    need = measure_replica(repository, models)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole or not at all: builds on this node may read it at any moment.
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(need.to_dict(), f)
            os.replace(temporary, path)
        except OSError:
            Path(temporary).unlink(missing_ok=True)
    return need


def measure_replica(repository: str | Path, models: list[ModelSpec], timeout_s: float = 600) -> ReplicaNeed:
    """The memory of a process holding these models after warm-up, measured in a fresh subprocess."""
    specs = json.dumps([m.model_dump() for m in models])
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.serve.placement", str(repository), specs],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise PlacementError(f"measuring the replica's memory failed: {proc.stderr.strip().splitlines()[-1:]}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return ReplicaNeed(**doc)


def _measure_here(repository: str | Path, models: list[ModelSpec]) -> ReplicaNeed:
    # A replica has Ray Serve imported: count it (where Ray is installed; `trtserve capacity pack` may run without).
    with contextlib.suppress(ImportError):
        import ray.serve  # noqa: F401

    from runtime.engine.cuda_device import visible_device
    from runtime.serve.model import ServedModel

    served, footprints = [], {}
    for spec in models:
        model = ServedModel(version_dir(repository, spec.name, spec.version), spec)
        model.warmup()
        served.append(model)
        footprints[spec.name] = model.footprint.to_dict()
    device = None
    if any(m.on_gpu for m in served):
        device = gpu_process_bytes()
        if device is None:
            device = sum(f["device_bytes"] or 0 for f in footprints.values())
    gpu, _ = visible_device()
    return ReplicaNeed(host_rss_bytes() or 0, device, gpu.total_memory if gpu and device else None, footprints)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: " + __doc__.strip().splitlines()[-1].strip())
    specs = [ModelSpec.model_validate(spec) for spec in json.loads(sys.argv[2])]
    print(json.dumps(_measure_here(sys.argv[1], specs).to_dict()))

"""`trtserve capacity profile VERSION_DIR`: engine latency and throughput against batch size (and a
swept dynamic dim), measured in-process after warm-up, with the replica's memory. What `plan` simulates
with, and what a rollout's latency budget gate reads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from runtime import load_engine
from runtime.diagnostics import machine
from runtime.engine.manifest import read_manifest
from runtime.engine.memory import FootprintMeter
from runtime.engine.signature import Signature


def profile(
    version_dir: Path,
    backend: str = "auto",
    sweep: str | None = None,
    repeats: int = 20,
    warmup: int = 3,
    sizes: dict[str, int] | None = None,
) -> dict:
    """Median and spread of engine latency at each batch size (powers of two up to the serving
    max_batch_size), other dims at their opt size or at `sizes` (e.g. the token count of the requests a
    benchmark sends); with `sweep`, also at several sizes of that dim."""
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    rng = np.random.default_rng(0)
    meter = FootprintMeter()
    with load_engine(version_dir, backend) as engine:
        signature = engine.signature
        max_batch = manifest.serving.max_batch_size
        base = _base_sizes(signature, sizes or {})
        batches = sorted({min(2**k, max_batch) for k in range(max_batch.bit_length() + 1)})
        grid = [{**base, "batch": b} for b in batches]
        if sweep:
            if sweep not in signature.dims or sweep == "batch":
                raise SystemExit(f"--sweep {sweep}: not a dynamic dim of this model (batch is swept anyway)")
            r = signature.dims[sweep]
            swept = sorted({r.min, *[s for s in (16, 32, 64, 128, 256, 512) if r.min < s < r.max], r.max})
            grid += [{**base, "batch": b, sweep: s} for b in batches for s in swept if s != base[sweep]]
        points = [_time_point(engine, signature.synthetic_feed(point, rng), point, warmup, repeats) for point in grid]
        # The replica's footprint, as a server measures it: after a call at the largest batch and dims.
        engine.infer(
            signature.synthetic_feed({d: r.max for d, r in signature.dims.items()} | {"batch": max_batch}, rng)
        )
        memory = {**engine.memory(), "footprint": meter.finish(engine, max_batch).to_dict()}
        info = {"backend": engine.backend, "precision": engine.precision, "device": engine.device}
    return {
        "benchmark": "profile",
        "model": manifest.name,
        "version": manifest.version,
        **info,
        "machine": machine.describe(),
        "repeats": repeats,
        "opt_sizes": base,
        "points": points,
        "memory": memory,
    }


def _base_sizes(signature: Signature, sizes: dict[str, int]) -> dict[str, int]:
    base = {d: r.opt for d, r in signature.dims.items()}
    for dim, size in sizes.items():
        if dim not in base or dim == "batch":
            raise SystemExit(f"--sizes {dim}={size}: not a dynamic dim of this model other than batch")
        if not signature.dims[dim].min <= size <= signature.dims[dim].max:
            raise SystemExit(f"--sizes {dim}={size}: outside the engine's range")
        base[dim] = size
    return base


def _time_point(engine, feed: dict, sizes: dict[str, int], warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        engine.infer(feed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.infer(feed)
        times.append(time.perf_counter() - started)
    ms = np.array(times) * 1e3
    return {
        "batch": sizes["batch"],
        "sizes": sizes,
        "median_ms": round(float(np.median(ms)), 4),
        "p10_ms": round(float(np.percentile(ms, 10)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),  # what a rollout's latency budget gate reads
        "rows_per_s": round(sizes["batch"] / float(np.median(ms)) * 1e3, 1),
    }


def batch_seconds(report: dict) -> dict[int, float]:
    """Median engine seconds per batch size at the opt sizes: what `plan` simulates with."""
    return {
        p["batch"]: p["median_ms"] / 1e3
        for p in report["points"]
        if p["sizes"] == {**report["opt_sizes"], "batch": p["batch"]}
    }


def read(results: Path, model: str) -> dict:
    """The profile `profile` wrote for `model` under `results`; a clear exit if there is none."""
    path = results / f"profile-{model}.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: run `trtserve capacity profile` for {model} first")
    return json.loads(path.read_text())

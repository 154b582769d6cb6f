"""`python -m benchmarks pack --model M`: how many replicas of a model fit one machine, derived from the
measured footprint the way `build_app` places replicas, then proven by running that many at once.

1. `runtime.placement.measure_replica` measures one replica (fresh process, warmed up at its largest batch).
2. `actor_options` turns it into the Ray options a replica gets (`memory`, and on a GPU a `num_gpus`
   fraction); the replicas that fit are what Ray would pack: 1 / num_gpus on a GPU, free host memory /
   `memory` otherwise, capped at `--max-replicas`.
3. That many worker processes load the model, warm up, wait for one start time and run full batches for
   `--duration` seconds; each reports its rows/s and its own memory, and the parent samples the device's
   free memory throughout. Every worker must finish: one killed for memory fails the run.

On a GPU, `pressure` also takes the free memory below the low-water mark with a ballast allocation and
checks that the model's batch limit steps down and comes back once the ballast is freed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _worker(version_dir: str, backend: str, max_batch_size: int, duration: float) -> dict:
    """One replica's share of the run (in its own process): loads and warms up, says `ready`, then runs
    from the start time the parent writes to its stdin."""
    import numpy as np

    from runtime.host import ModelHost, ModelOptions
    from runtime.memory import gpu_process_bytes, host_rss_bytes

    host = ModelHost(Path(version_dir), ModelOptions(backend=backend, max_batch_size=max_batch_size))
    host.warmup()
    rng = np.random.default_rng(os.getpid())
    shapes = host.warmup_shapes()[-1]  # the largest batch at the largest dims
    from benchmarks.profile import _feed

    feed = _feed(host.signature, shapes, rng)
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    while time.time() < start_at:
        time.sleep(0.001)
    calls, rows, ended = 0, 0, time.time() + duration
    started = time.perf_counter()
    while time.time() < ended:
        host.engine.infer(feed)
        calls += 1
        rows += shapes["batch"]
    elapsed = time.perf_counter() - started
    report = {
        "pid": os.getpid(),
        "device": host.engine.device,
        "calls": calls,
        "rows_per_s": round(rows / elapsed, 1),
        "footprint": host.footprint.to_dict(),
        "host_rss_bytes": host_rss_bytes(),
        "device_bytes": gpu_process_bytes() if host.engine.device.startswith("cuda") else None,
    }
    host.close()
    return report


def pack(
    repository: Path,
    model: str,
    backend: str = "auto",
    max_batch_size: int | None = None,
    headroom: float = 0.2,
    max_replicas: int = 8,
    duration: float = 10.0,
) -> dict:
    from benchmarks import machine
    from runtime.cuda_device import probe
    from runtime.memory import available_bytes, gpu_free_total, host_available_bytes
    from runtime.placement import Free, actor_options, measure_replica
    from runtime.repository import version_dir

    spec: dict = {"name": model, "backend": backend}
    if max_batch_size:
        spec["max_batch_size"] = max_batch_size
    need = measure_replica(repository, [spec])
    footprint = need.models[model]
    on_gpu = need.device_bytes is not None
    gpu = gpu_free_total() if on_gpu else None
    free = Free(host_available_bytes(), gpu[0] if gpu else None)
    options = actor_options(need, None, headroom, free)  # raises PlacementError when one does not fit
    if on_gpu:
        fits = int(1 / options["num_gpus"] + 1e-9)
    else:
        fits = int(free.host_bytes // options["memory"]) if free.host_bytes else 1
    replicas = max(1, min(fits, max_replicas))

    directory = version_dir(repository, model, "latest")
    batch = footprint["max_batch_size"]
    before = available_bytes(on_gpu)
    command = [sys.executable, "-m", "benchmarks.packing", str(directory), backend, str(batch), str(duration)]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    workers = [subprocess.Popen(command, **pipes) for _ in range(replicas)]
    for w in workers:  # all loaded and warmed up, then one start time for all
        w.stdout.readline()
    start_at = f"{time.time() + 0.5}\n"
    for w in workers:
        if w.poll() is None:
            w.stdin.write(start_at)
            w.stdin.flush()
    lowest = before
    while any(w.poll() is None for w in workers):
        now = available_bytes(on_gpu)
        if now is not None and (lowest is None or now < lowest):
            lowest = now
        time.sleep(0.2)
    reports, failures = [], []
    for w in workers:
        out, err = w.communicate()
        if w.returncode == 0:
            reports.append(json.loads(out.strip().splitlines()[-1]))
        else:
            failures.append(f"exit {w.returncode}: {(err.strip().splitlines() or ['(no output)'])[-1]}")
    device, _ = probe()
    return {
        "benchmark": "pack",
        "model": model,
        "backend": backend,
        "machine": machine.describe(),
        "gpu": {"name": device.name, "total_bytes": device.total_memory} if device and on_gpu else None,
        "resource": "gpu" if on_gpu else "host",
        "headroom": headroom,
        "need": need.to_dict(),
        "actor_options": options,
        "replicas_fit": fits,
        "replicas_run": replicas,
        "duration_s": duration,
        "free_before_bytes": before,
        "free_lowest_bytes": lowest,
        "workers": reports,
        "failures": failures,
        "rows_per_s_total": round(sum(r["rows_per_s"] for r in reports), 1),
    }


def pressure(version_dir: Path, backend: str = "torch", max_batch_size: int = 64) -> dict:
    """On a GPU: hold all but half the low-water mark of free memory in a ballast allocation, check the
    batch limit halves down, free the ballast and check it comes back. Needs torch with CUDA."""
    import torch

    from runtime.host import ModelHost, ModelOptions

    if not torch.cuda.is_available():
        raise SystemExit("pack --pressure requires a CUDA device for torch (torch.cuda.is_available() is False)")
    host = ModelHost(Path(version_dir), ModelOptions(backend=backend, max_batch_size=max_batch_size))
    host.warmup()
    if not host.engine.device.startswith("cuda"):
        raise SystemExit(f"pack --pressure: the {backend} engine runs on {host.engine.device}, not a GPU")
    low = host.limiter.low_water_bytes
    free = host.available_memory()
    ballast = torch.empty(max(0, free - low // 2), dtype=torch.uint8, device="cuda")
    clock, steps = 1000.0, []
    for _ in range(8):
        clock += 1.0
        host.check_memory(clock)
        steps.append({"free_bytes": host.available_memory(), "max_batch_size": host.batcher.max_rows})
    under_pressure = host.batcher.max_rows
    del ballast
    torch.cuda.empty_cache()
    for _ in range(8):
        clock += 1.0
        host.check_memory(clock)
        steps.append({"free_bytes": host.available_memory(), "max_batch_size": host.batcher.max_rows})
    result = {
        "low_water_bytes": low,
        "configured": max_batch_size,
        "under_pressure": under_pressure,
        "recovered": host.batcher.max_rows,
        "steps": steps,
    }
    host.close()
    return result


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python -m benchmarks.packing VERSION_DIR BACKEND MAX_BATCH DURATION (a worker)")
    print(json.dumps(_worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))

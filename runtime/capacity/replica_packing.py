"""`trtserve capacity pack --model M`: how many replicas of a model fit one machine, derived from the
measured footprint the way `build_app` places replicas, then proven by running that many at once.

1. `runtime.serve.placement.measure_replica` measures one replica (fresh process, warmed up at its largest batch).
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

    from runtime.engine.memory import gpu_process_bytes, host_rss_bytes
    from runtime.serve.app_args import ModelOptions
    from runtime.serve.model import ServedModel

    model = ServedModel(Path(version_dir), ModelOptions(backend=backend, max_batch_size=max_batch_size))
    model.warmup()
    rng = np.random.default_rng(os.getpid())
    feed = model.signature.synthetic_feed(model.warmup_shapes()[-1], rng)  # the largest batch and dims
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    while time.time() < start_at:
        time.sleep(0.001)
    calls, rows, ended = 0, 0, time.time() + duration
    started = time.perf_counter()
    while time.time() < ended:
        model.engine.infer(feed)
        calls += 1
        rows += model.max_batch_size
    elapsed = time.perf_counter() - started
    report = {
        "pid": os.getpid(),
        "device": model.engine.device,
        "calls": calls,
        "rows_per_s": round(rows / elapsed, 1),
        "footprint": model.footprint.to_dict(),
        "host_rss_bytes": host_rss_bytes(),
        "device_bytes": gpu_process_bytes() if model.on_gpu else None,
    }
    model.close()
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
    from runtime.diagnostics import machine
    from runtime.engine.cuda_device import visible_device
    from runtime.engine.memory import available_bytes, gpu_free_total, host_available_bytes
    from runtime.engine.repository import version_dir
    from runtime.serve.app_args import ModelSpec
    from runtime.serve.placement import Free, actor_options, measure_replica

    directory = version_dir(repository, model, "latest")  # an unknown model fails here, saying so
    need = measure_replica(repository, [ModelSpec(name=model, backend=backend, max_batch_size=max_batch_size)])
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

    batch = footprint["max_batch_size"]
    before = available_bytes(on_gpu)
    command = [
        sys.executable,
        "-m",
        "runtime.capacity.replica_packing",
        str(directory),
        backend,
        str(batch),
        str(duration),
    ]
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
    device, _ = visible_device()
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

    from runtime.serve.app_args import ModelOptions
    from runtime.serve.model import ServedModel

    if not torch.cuda.is_available():
        raise SystemExit("pack --pressure requires a CUDA device for torch (torch.cuda.is_available() is False)")
    model = ServedModel(Path(version_dir), ModelOptions(backend=backend, max_batch_size=max_batch_size))
    model.warmup()
    if not model.on_gpu:
        raise SystemExit(f"pack --pressure: the {backend} engine runs on {model.engine.device}, not a GPU")
    pressure = model.pressure
    low = pressure.limiter.low_water_bytes
    ballast = torch.empty(max(0, pressure.available() - low // 2), dtype=torch.uint8, device="cuda")
    clock, steps = 1000.0, []

    def step() -> None:
        nonlocal clock
        clock += 1.0
        pressure.check(clock)
        steps.append({"free_bytes": pressure.available(), "max_batch_size": model.batcher.max_rows})

    for _ in range(8):
        step()
    under_pressure = model.batcher.max_rows
    del ballast
    torch.cuda.empty_cache()
    for _ in range(8):
        step()
    result = {
        "low_water_bytes": low,
        "configured": max_batch_size,
        "under_pressure": under_pressure,
        "recovered": model.batcher.max_rows,
        "steps": steps,
    }
    model.close()
    return result


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python -m runtime.capacity.replica_packing VERSION_DIR BACKEND MAX_BATCH DURATION (a worker)")
    print(json.dumps(_worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))))

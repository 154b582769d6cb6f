"""`python -m benchmarks batch`: `trtserve batch` on Ray Data against the raw in-process engine, and the
cold start of a version from S3.

Throughput: per model, rounds that alternate the raw engine (one process, `engine.infer` at each batch
size up to the model's limit; MiniLM tokenizes in the loop too, as the job does) and a batch job over the
same rows (one worker, the raw engine's best batch size, a local Ray started once); the median of the
rounds' job/raw ratios, so the machine's drift cancels. The job's rows/s counts from the start of its
execution (worker start and model load included) to the last file written.

Cold start: each model published to moto's S3 server on loopback, then, with an empty cache, the time
to download and verify it, load the engine (checksums verified again) and warm it up, as a replica does."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import targets
from benchmarks.harness import ROOT, ensure_model
from benchmarks.rendering import machine_line, table_row
from runtime.diagnostics import machine

ROWS = {"cnn": 40_000, "minilm": 2_000}
FILES = 8
ROUNDS = 3
JOB_BATCH = 1024  # Ray Data's batch; the worker cuts it to the engine's maximum batch size
RAW_SECONDS = 2.0  # per batch size


def raw_rows_per_s(directory: Path, feeds: list[dict], rows: int) -> dict[int, float]:
    """rows/s of `engine.infer` per batch size; feeds[i] holds rows of input; MiniLM's include tokenizing."""
    from runtime.engine import preprocessing
    from runtime.engine.loader import load_engine
    from runtime.engine.manifest import read_manifest

    manifest = read_manifest(directory)
    tokenize = preprocessing.load(directory, manifest)
    limit = manifest.serving.max_batch_size
    sizes = [b for b in (1, 8, 32, 64, 128, 256) if b <= limit]
    out = {}
    with load_engine(directory) as engine:
        for size in sizes:
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < RAW_SECONDS:
                for start in range(0, rows, size):
                    part = {k: v[start : start + size] for k, v in feeds[0].items()}
                    engine.infer(tokenize(part["text"]) if tokenize else part)
                    done += len(next(iter(part.values())))
                    if time.perf_counter() - started >= RAW_SECONDS:
                        break
            out[size] = done / (time.perf_counter() - started)
    return out


def write_input(model: str, work: Path, rows: int) -> tuple[Path, dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = work / f"{model}-input"
    folder.mkdir()
    if model == "cnn":
        x = np.random.default_rng(0).standard_normal((rows, 3, 32, 32)).astype(np.float32)
        per = rows // FILES
        for i in range(FILES):
            part = x[i * per : (i + 1) * per]
            ids = [f"r{j}" for j in range(i * per, (i + 1) * per)]
            table = pa.table({"id": ids, "image": pa.FixedShapeTensorArray.from_numpy_ndarray(part)})
            pq.write_table(table, folder / f"part-{i}.parquet")
        return folder, {"image": x}
    from convert.zoo.minilm import reference_texts

    texts = reference_texts()
    sentences = [texts[i % len(texts)] for i in range(rows)]
    with open(folder / "sentences.jsonl", "w") as f:
        for i, text in enumerate(sentences):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    return folder, {"text": np.array(sentences, dtype=object)}


def job_rows_per_s(repository: Path, model: str, source: Path, output: Path, batch_size: int) -> dict:
    from runtime.batch.job import BatchOptions, run

    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(str(output) + ".checkpoint", ignore_errors=True)
    summary = run(
        BatchOptions(
            model=model, repository=str(repository), input=str(source), output=str(output), batch_size=batch_size
        )
    )
    return {
        "rows": summary.rows_this_run,
        "seconds": summary.seconds,
        "rows_per_s": summary.rows_per_s,
        "batch_size": batch_size,
    }


def throughput(repository: Path, model: str, work: Path, rounds: int) -> dict:
    directory, _ = ensure_model(repository, ROOT / f"configs/models/{model}.yaml")
    source, feed = write_input(model, work, ROWS[model])
    raw_feed = feed if model == "cnn" else {"text": feed["text"][: min(512, ROWS[model])]}
    measured = []
    for i in range(rounds):
        raw = raw_rows_per_s(directory, [raw_feed], len(next(iter(raw_feed.values()))))
        best = max(raw, key=raw.get)
        job = job_rows_per_s(repository, model, source, work / f"{model}-out", JOB_BATCH)
        measured.append(
            {"round": i, "raw": raw, "best_batch": best, "job": job, "ratio": job["rows_per_s"] / raw[best]}
        )
        print(
            f"{model} round {i}: raw {raw[best]:.0f} rows/s at batch {best}, job {job['rows_per_s']:.0f} rows/s "
            f"(x{measured[-1]['ratio']:.2f})",
            file=sys.stderr,
        )
    return {"rows": ROWS[model], "rounds": measured, "ratio_median": statistics.median(r["ratio"] for r in measured)}


def cold_start(repository: Path, models: list[str], work: Path) -> dict:
    """Download and verify, load, warm up: each model from moto's S3 on loopback, cache empty."""
    import os

    from benchmarks.s3_server import s3_server
    from runtime.engine.remote import RemoteRepository
    from runtime.engine.repository import version_dir
    from runtime.serve.app_args import ModelSpec
    from runtime.serve.model import ServedModel

    out = {}
    with s3_server() as s3:
        uri = s3.bucket("bench") + "/models"
        store = RemoteRepository(uri)
        for model in models:
            local = version_dir(repository, model)
            store.publish(local, model, int(local.name))
            cache = work / f"cache-{model}"
            os.environ["TRTSERVE_CACHE"] = str(cache)
            try:
                started = time.perf_counter()
                directory = store.fetch(model, int(local.name))
                fetched = time.perf_counter()
                served = ServedModel(directory, ModelSpec(name=model))
                loaded = time.perf_counter()
                served.warmup()
                warm = time.perf_counter()
            finally:
                os.environ.pop("TRTSERVE_CACHE", None)
            size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
            out[model] = {
                "bytes": size,
                "download_verify_s": round(fetched - started, 3),
                "load_s": round(loaded - fetched, 3),
                "warmup_s": round(warm - loaded, 3),
                "total_s": round(warm - started, 3),
            }
            print(f"{model} cold start from S3: {out[model]}", file=sys.stderr)
    return out


def measure(repository: Path, results: Path, rounds: int = ROUNDS) -> dict:
    import ray

    work = Path(tempfile.mkdtemp(prefix="trtserve-batch-bench-"))
    try:
        ray.init(address="local", num_cpus=4, logging_level="WARNING")  # room for the stages around the worker
        try:
            models = {m: throughput(repository, m, work, rounds) for m in ("cnn", "minilm")}
        finally:
            ray.shutdown()
        cold = cold_start(repository, list(models), work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"benchmark": "batch", "machine": machine.describe(), "models": models, "cold_start": cold}
    results.mkdir(parents=True, exist_ok=True)
    (results / "batch.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def render(data: dict) -> list[str]:
    models, cold = data["models"], data["cold_start"]
    limits = {"cnn": targets.BATCH_CNN_RATIO, "minilm": targets.BATCH_MINILM_RATIO}
    units = {"cnn": "rows/s", "minilm": "sentences/s"}
    first = next(iter(models.values()))
    lines = [
        "## Batch inference on Ray Data: `trtserve batch` against the raw engine, cold start from S3",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `python -m benchmarks batch`. Per model, {len(first['rounds'])} rounds alternating the raw "
        "in-process engine (`engine.infer` at each batch size up to the model's limit, for 2 s each; MiniLM "
        "tokenizes in the loop, as the job does) and a batch job over "
        + ", ".join(f"{m['rows']} {name} rows" for name, m in models.items())
        + f" (one worker, Ray Data batches of {first['rounds'][0]['job'].get('batch_size', '?')} rows, a local "
        "Ray started once; its rows/s from the start of execution, worker start and model load included, to the "
        "last file written); the median of the rounds' job/raw ratios. Cold start: the version published to "
        "moto's S3 server on loopback, an empty cache.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, limit in limits.items():
        if name not in models:
            continue
        m = models[name]
        best = m["rounds"][-1]
        raw = best["raw"].get(str(best["best_batch"]))
        detail = f"x{m['ratio_median']:.2f} (last round: job {best['job']['rows_per_s']:.0f} {units[name]}"
        detail += f", raw {raw:.0f} at batch {best['best_batch']})" if raw else ")"
        lines.append(
            table_row(
                f"{name}: the job at least {limit:g}x the raw engine's best {units[name]}",
                detail,
                m["ratio_median"] >= limit,
            )
        )
    lines += [
        "",
        "| cold start from S3 | size | download + verify | load | warm-up | total |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in cold.items():
        lines.append(
            f"| {name} | {c['bytes'] / 2**20:.1f} MiB | {c['download_verify_s']:.2f} s | {c['load_s']:.2f} s | "
            f"{c['warmup_s']:.2f} s | {c['total_s']:.2f} s |"
        )
    return [*lines, ""]


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="trtserve batch (Ray Data) against the raw engine; cold start from S3")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--rounds", type=int, default=ROUNDS, help="raw / job rounds per model (median ratio)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))


def run(args) -> None:
    measure(args.repository, args.results, rounds=args.rounds)

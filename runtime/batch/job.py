"""`trtserve batch`: a Ray Data job from input files to Parquet predictions, resumable.

Input: Parquet (a column per model input: Arrow `fixed_shape_tensor` or nested lists, plus the id
column), JSON lines for text models (`{"id": ..., "text": ...}`), or one NumPy `.npy` file for a model
with one input (ids are the row numbers). Output under `--output`: Parquet files of one schema
(runtime.batch.predictor), `_errors/*.jsonl` for the rows that could not be run, `_summary.json` once the
job has finished. Workers are a Ray Data actor pool; each loads and verifies the version once.

Resume: the job keeps a Ray Data checkpoint (`ray.data.checkpoint.CheckpointConfig`, keyed by the id
column) in `<output>.checkpoint` while it runs (removed when it finishes), and writes each output file
with its ids first recorded as pending, so a job killed part-way and run again with `--resume` skips
the ids already written and discards a file whose write was cut off: every id once. That needs an id
column read from files: NumPy input is first written as Parquet, its row numbers as ids, to
`<output>.input` (removed when the job finishes)."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.engine.credentials import install_scrubbing
from runtime.engine.errors import TrtserveError
from runtime.engine.repository import repository_location, resolve_version

log = logging.getLogger("trtserve.batch")

FORMATS = ("parquet", "jsonl", "npy")
SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".npy": "npy",
}
SUMMARY = "_summary.json"  # "_": pyarrow.dataset and Spark skip it when reading the directory


class BatchError(TrtserveError):
    exit_code = 2


@dataclass
class BatchOptions:
    model: str
    repository: str
    input: str
    output: str
    version: int | str = "latest"
    format: str | None = None  # guessed from the input's name when None
    id_column: str = "id"
    batch_size: int = 1024  # rows per Ray Data batch; the worker cuts it to the engine's maximum batch size
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    backend: str = "auto"
    max_errors: int = 0
    rows_per_file: int = 100_000  # output files hold at most this many rows: also what --resume redoes at most
    resume: bool = False
    address: str | None = None  # a Ray cluster; default $RAY_ADDRESS, else a local Ray of its own


@dataclass
class BatchSummary:
    model: str
    version: int
    rows: int  # rows in the output, this run and any it resumed
    rows_this_run: int
    seconds: float
    rows_per_s: float
    errors: int
    output_files: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"{self.model} v{self.version}: {self.rows} rows in {len(self.output_files)} files "
            f"({self.rows_this_run} this run, {self.rows_per_s:.0f} rows/s over {self.seconds:.1f} s), "
            f"{self.errors} bad rows",
        ]


def guess_format(path: str) -> str:
    suffix = Path(path.split("?")[0]).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    local = Path(path)
    if local.is_dir():
        found = {SUFFIXES[p.suffix.lower()] for p in local.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES}
        if len(found) == 1:
            return found.pop()
    raise BatchError(f"{path}: cannot tell the input's format from its name; give --format ({', '.join(FORMATS)})")


def checkpoint_path(output: str) -> str:
    return output.rstrip("/") + ".checkpoint"


def run(options: BatchOptions) -> BatchSummary:
    fmt = options.format or guess_format(options.input)
    if fmt not in FORMATS:
        raise BatchError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if min(options.batch_size, options.workers, options.rows_per_file) < 1 or options.max_errors < 0:
        raise BatchError("--batch-size, --workers and --rows-per-file must be at least 1, --max-errors at least 0")
    repository = str(repository_location(options.repository))
    version = resolve_version(repository, options.model, options.version)
    output = Path(options.output)
    _check_output(output, options.resume)
    if options.resume and (output / SUMMARY).is_file():
        log.info("%s: the job already finished; nothing to resume", output)
        return BatchSummary(**{**json.loads((output / SUMMARY).read_text()), "rows_this_run": 0})

    import ray
    import ray.data

    # Ray's own stderr handlers, scrubbed: its messages may quote a repository URI with credentials.
    install_scrubbing(*logging.getLogger("ray").handlers, *logging.getLogger("ray.data").handlers)
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    started_ray = not ray.is_initialized()
    if started_ray:
        extra = {}
        if address == "local":
            # Our own Ray: room for the worker pool plus the stages around it (listing, reading, writing,
            # and on --resume Ray Data's checkpoint filter, an actor of one CPU), so none waits on another.
            needed = math.ceil(options.workers * options.cpus_per_worker) + 2
            extra["num_cpus"] = max(os.cpu_count() or 1, needed)
        ray.init(address=address, logging_level=logging.WARNING, **extra)
    try:
        return _run(options, fmt, repository, version, output)
    finally:
        if started_ray:
            ray.shutdown()


def _check_output(output: Path, resume: bool) -> None:
    checkpoint = Path(checkpoint_path(str(output.resolve())))
    earlier = (output.is_dir() and any(output.glob("*.parquet"))) or checkpoint.exists()
    if earlier and not resume:
        raise BatchError(
            f"{output} holds the output (or {checkpoint.name}, the checkpoint) of an earlier job; --resume "
            "finishes it, or give another --output"
        )
    if resume and not earlier:
        log.info("%s: nothing to resume; starting the job", output)


def _run(options: BatchOptions, fmt: str, repository: str, version: int, output: Path) -> BatchSummary:
    import pyarrow as pa
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    from runtime.batch.inputs import read_input
    from runtime.batch.predictor import Predictor
    from runtime.batch.sink import TEMPORARY_SUFFIX, AtomicParquetSink

    output.mkdir(parents=True, exist_ok=True)
    for partial in output.glob(f".*{TEMPORARY_SUFFIX}"):  # files a killed job was writing
        partial.unlink()
    before = _rows(output)
    context = ray.data.DataContext.get_current()  # before the dataset is made: it keeps a copy
    context.checkpoint_config = CheckpointConfig(
        id_column=options.id_column, checkpoint_path=checkpoint_path(str(output.resolve()))
    )
    staged = Path(str(output.resolve()) + ".input")  # NumPy input as Parquet with its row numbers as ids
    dataset = read_input(options.input, fmt, options.id_column, repository, options.model, version, staged)
    schema = dataset.schema()
    kind = dict(zip(schema.names, schema.types, strict=True))[options.id_column]
    id_type = "int64" if isinstance(kind, pa.DataType) and pa.types.is_integer(kind) else "string"
    started = time.perf_counter()
    predictions = dataset.map_batches(
        Predictor,
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        batch_size=options.batch_size,
        batch_format="numpy",
        num_gpus=options.gpus_per_worker or None,
        num_cpus=options.cpus_per_worker,
        fn_constructor_kwargs={
            "repository": repository,
            "model": options.model,
            "version": version,
            "id_column": options.id_column,
            "output": str(output.resolve()),
            "backend": options.backend,
            "max_errors": options.max_errors,
            "id_type": id_type,
        },
    )
    predictions = predictions.repartition(target_num_rows_per_block=options.rows_per_file)
    predictions.write_datasink(AtomicParquetSink(str(output.resolve())))
    seconds = time.perf_counter() - started
    files = sorted(p.name for p in output.glob("*.parquet"))
    rows = _rows(output)
    summary = BatchSummary(
        model=options.model,
        version=version,
        rows=rows,
        rows_this_run=rows - before,
        seconds=round(seconds, 3),
        rows_per_s=round((rows - before) / seconds, 1) if seconds > 0 else 0.0,
        errors=_errors(output),
        output_files=files,
    )
    doc = asdict(summary)
    doc.pop("rows_this_run")
    tmp = output / f".{SUMMARY}.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, output / SUMMARY)
    shutil.rmtree(checkpoint_path(str(output.resolve())), ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)
    return summary


def _rows(output: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in output.glob("*.parquet"))


def _errors(output: Path) -> int:
    from runtime.batch.predictor import ERRORS_DIR

    return sum(1 for p in (output / ERRORS_DIR).glob("*.jsonl") for _ in p.open())

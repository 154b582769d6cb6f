"""`trtserve batch` on Ray Data, run as users run it (a separate process with a local Ray of its own):
outputs equal the engine row for row, bad rows go to the errors file, a killed job resumes with every id
exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runtime.engine.loader import load_engine
from runtime.engine.manifest import MANIFEST, sha256_file
from runtime.engine.repository import version_dir

ROOT = Path(__file__).resolve().parents[2]


def trtserve_batch(*args, timeout: float = 300, background: dict | None = None):
    """The CLI's result; with `background` (Popen's keywords), the running process."""
    command = [sys.executable, "-m", "runtime.cli", "batch", *map(str, args), "--address", "local"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    if background is not None:
        return subprocess.Popen(command, cwd=ROOT, env=env, **background)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def images(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3, 32, 32)).astype(np.float32)


def write_images(path: Path, ids: list[str], x: np.ndarray) -> None:
    pq.write_table(pa.table({"id": ids, "image": pa.FixedShapeTensorArray.from_numpy_ndarray(x)}), path)


def outputs(directory: Path) -> pa.Table:
    files = sorted(directory.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def only_parquet_is_output(directory: Path) -> None:
    stray = [p for p in directory.rglob("*.parquet") if p.parent != directory]
    assert not stray, stray


@pytest.mark.slow  # with the next two, Ray Data started on 2 cores: two minutes of the default tier
def test_cnn_outputs_equal_the_engine_row_by_row_and_bad_rows_go_to_the_errors_file(built_repository, tmp_path):
    x = images(300, 0)
    rows = [x[i].tolist() for i in range(300)]  # nested lists, as many writers produce
    rows[7] = x[7, :2].tolist()  # wrong shape
    rows[11] = None  # missing
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(300)], "image": pa.array(rows)}), tmp_path / "in.parquet")
    out = tmp_path / "out"
    proc = trtserve_batch(
        "cnn:1", "--repository", built_repository, "--input", tmp_path / "in.parquet", "--output", out,
        "--batch-size", "64", "--max-errors", "5",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cnn v1: 298 rows" in proc.stdout and "2 bad rows" in proc.stdout

    table = outputs(out)
    schema = table.schema
    assert schema.names == ["id", "logits", "model", "model_version", "manifest_sha256"]
    assert isinstance(schema.field("logits").type, pa.FixedShapeTensorType)
    assert all(pq.read_schema(f) == pq.read_schema(next(out.glob("*.parquet"))) for f in out.glob("*.parquet"))
    only_parquet_is_output(out)
    directory = version_dir(built_repository, "cnn", 1)
    assert set(table["model"].to_pylist()) == {"cnn"} and set(table["model_version"].to_pylist()) == {1}
    assert set(table["manifest_sha256"].to_pylist()) == {sha256_file(directory / MANIFEST)}

    got = dict(zip(table["id"].to_pylist(), table["logits"].combine_chunks().to_numpy_ndarray(), strict=True))
    assert sorted(got) == sorted(f"r{i}" for i in range(300) if i not in (7, 11))
    with load_engine(directory) as engine:
        for i in range(0, 300, 37):
            if i in (7, 11):
                continue
            expected = engine.infer({"image": x[i : i + 1]})["logits"][0]
            np.testing.assert_allclose(got[f"r{i}"], expected, rtol=1e-5, atol=1e-5)
    errors = [json.loads(line) for f in (out / "_errors").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(e["id"] for e in errors) == ["r11", "r7"]
    assert all(e["reason"] for e in errors)
    assert json.loads((out / "_summary.json").read_text())["rows"] == 298
    assert pq.read_table(out).num_rows == 298  # the directory reads as the predictions alone

    again = trtserve_batch("cnn", "--repository", built_repository, "--input", tmp_path / "in.parquet", "--output", out)
    assert again.returncode == 2 and "earlier job" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow
def test_too_many_bad_rows_fail_the_job_with_the_reason(built_repository, tmp_path):
    pq.write_table(pa.table({"id": ["a", "b", "c"], "image": pa.array([[1.0], [2.0], [3.0]])}), tmp_path / "in.parquet")
    proc = trtserve_batch(
        "cnn", "--repository", built_repository, "--input", tmp_path / "in.parquet", "--output", tmp_path / "out",
        "--max-errors", "1",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("trtserve batch: error:") and "--max-errors 1" in last


@pytest.mark.slow  # a minute of the default tier
def test_minilm_sentences_from_json_lines_equal_the_engine(built_repository, tmp_path):
    from convert.zoo.minilm import reference_texts

    texts = reference_texts()[:120]
    with open(tmp_path / "in.jsonl", "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    out = tmp_path / "out"
    proc = trtserve_batch("minilm", "--repository", built_repository, "--input", tmp_path / "in.jsonl", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = outputs(out)
    got = dict(zip(table["id"].to_pylist(), table["embedding"].combine_chunks().to_numpy_ndarray(), strict=True))
    assert sorted(got) == list(range(120))
    from runtime.engine import preprocessing
    from runtime.engine.manifest import read_manifest

    directory = version_dir(built_repository, "minilm", "latest")
    tokenize = preprocessing.load(directory, read_manifest(directory))
    with load_engine(directory) as engine:
        for i in range(0, 120, 13):
            expected = engine.infer(tokenize(np.array([texts[i]], dtype=object)))["embedding"][0]
            np.testing.assert_allclose(got[i], expected, rtol=1e-4, atol=1e-5)  # padded in a batch, alone here


@pytest.mark.slow
def test_numpy_input_ids_are_row_numbers(built_repository, tmp_path):
    x = images(50, 2)
    np.save(tmp_path / "in.npy", x)
    proc = trtserve_batch(
        "cnn", "--repository", built_repository, "--input", tmp_path / "in.npy", "--output", tmp_path / "o"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = outputs(tmp_path / "o")
    assert sorted(table["id"].to_pylist()) == list(range(50))
    assert not (tmp_path / "o.input").exists() and not (tmp_path / "o.checkpoint").exists()  # removed once done


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the job and everything it started (its local Ray), by process id."""
    parent = psutil.Process(proc.pid)
    family = [parent, *parent.children(recursive=True)]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)


@pytest.mark.slow
def test_a_killed_job_resumed_gives_every_id_exactly_once(built_repository, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    x = images(400, 5)
    ids = [f"id{i}" for i in range(400 * 24)]
    for part in range(24):
        write_images(source / f"part-{part:02d}.parquet", ids[part * 400 : (part + 1) * 400], x)
    out = tmp_path / "out"
    args = ("cnn", "--repository", built_repository, "--input", source, "--output", out, "--batch-size", "100",
            "--rows-per-file", "400")  # fmt: skip
    with open(tmp_path / "first.log", "w") as log:
        job = trtserve_batch(*args, background={"stdout": subprocess.DEVNULL, "stderr": log})
        try:
            deadline = time.monotonic() + 240
            while not list(out.glob("*.parquet")) and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            _kill_tree(job)
    first = outputs(out)
    assert first is not None, (tmp_path / "first.log").read_text()[-3000:]
    assert first.num_rows < len(ids) and not (out / "_summary.json").exists()  # it was cut off part-way

    proc = trtserve_batch(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = outputs(out)
    got = table["id"].to_pylist()
    assert len(got) == len(ids) and sorted(got) == sorted(ids)  # every id, once
    only_parquet_is_output(out)
    assert not Path(str(out) + ".checkpoint").exists()
    done = trtserve_batch(*args, "--resume")  # finished: nothing more to do, nothing duplicated
    assert done.returncode == 0 and outputs(out).num_rows == len(ids)


@pytest.mark.parametrize("bad", ["hdfs://nn/models", "ftp://h/m"])
def test_an_unsupported_repository_scheme_is_refused(bad, tmp_path):
    proc = trtserve_batch("cnn", "--repository", bad, "--input", tmp_path / "x.parquet", "--output", tmp_path / "o")
    assert proc.returncode == 2 and "scheme is not supported" in proc.stderr and "Traceback" not in proc.stderr

"""The input of a batch job as a Ray Data dataset: Parquet, JSON lines, or one NumPy array."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runtime.engine.errors import TrtserveError


def read_input(path: str, fmt: str, id_column: str, repository: str, model: str, version: int, staged: Path):
    import ray.data

    if fmt == "parquet":
        dataset = ray.data.read_parquet(path)
    elif fmt == "jsonl":
        dataset = ray.data.read_json(path, lines=True)
    else:
        dataset = _numpy(path, id_column, repository, model, version, staged)
    names = dataset.schema().names
    if id_column not in names:
        raise TrtserveError(f"{path}: no id column {id_column!r} (it has {', '.join(names)}); give --id-column")
    return dataset


def _numpy(path: str, id_column: str, repository: str, model: str, version: int, staged: Path):
    """One .npy file: its rows are the rows of the model's only input; the row numbers are the ids. It is
    written as Parquet to `staged` first (again on each run: the same rows, the same ids), so Ray Data
    reads it from files, which its checkpointing (and so --resume) needs."""
    import pyarrow as pa
    import ray.data

    from runtime.engine.remote import RemoteRepository, is_remote

    if is_remote(path):
        raise TrtserveError(f"{path}: NumPy input is read from a local file; copy it here or use Parquet")
    if is_remote(repository):
        manifest = RemoteRepository(repository).manifest(model, version)
    else:
        from runtime.engine.manifest import read_manifest
        from runtime.engine.repository import version_dir

        manifest = read_manifest(version_dir(repository, model, version))
    inputs = [s.name for s in manifest.signature.inputs]
    if len(inputs) != 1 or manifest.preprocessing:
        raise TrtserveError(
            f"{path}: NumPy input fits a model with one tensor input; {model} takes {', '.join(inputs)}"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise TrtserveError(f"{path}: not a NumPy .npy file: {e}") from None
    if array.ndim < 2:
        raise TrtserveError(f"{path}: expected an array of rows (at least 2 dims), got shape {list(array.shape)}")
    table = pa.table(
        {
            id_column: pa.array(np.arange(len(array), dtype=np.int64)),
            inputs[0]: pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(array)),
        }
    )
    import pyarrow.parquet as pq

    staged.mkdir(parents=True, exist_ok=True)
    temporary = staged / ".rows.parquet.tmp"
    pq.write_table(table, temporary)
    os.replace(temporary, staged / "rows.parquet")
    return ray.data.read_parquet(str(staged / "rows.parquet"))

"""One batch worker: a model version loaded and verified once, applied to Ray Data batches.

Each batch (a dict of numpy columns) becomes an Arrow table: the id column, every output as a
`fixed_shape_tensor` column named after it, and `model`, `model_version`, `manifest_sha256`. Rows that
cannot be run (an input missing, a wrong shape or type, text that does not tokenize) are left out and
appended, with their id and the reason, to this worker's errors file (JSON lines, beside the outputs);
past `max_errors` bad rows the worker fails, and so does the job. Batches are cut to the engine's limits
(its maximum batch size), rows with unlike dynamic dims run apart."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from runtime.engine import dtypes, preprocessing
from runtime.engine.errors import InputError, TrtserveError
from runtime.engine.loader import load_engine
from runtime.engine.manifest import MANIFEST, read_manifest, sha256_file
from runtime.engine.repository import version_dir

ERRORS_DIR = "_errors"  # under --output ("_": readers of the directory skip it): <worker>.jsonl, {"id", "reason"}


class TooManyErrors(TrtserveError):
    exit_code = 1


def output_schema(signature, id_column: str, id_type: pa.DataType) -> pa.Schema:
    """What every output file holds; outputs must have a fixed shape past the batch dim."""
    fields = [pa.field(id_column, id_type)]
    for spec in signature.outputs:
        shape = spec.shape[1:]
        if any(not isinstance(d, int) for d in shape):
            raise TrtserveError(
                f"output {spec.name!r} has shape {list(spec.shape)}: batch outputs need a fixed shape past "
                "the batch dim"
            )
        value = pa.from_numpy_dtype(dtypes.from_name(spec.dtype).numpy)
        fields.append(pa.field(spec.name, pa.fixed_shape_tensor(value, list(shape) or [1])))
    fields += [
        pa.field("model", pa.string()),
        pa.field("model_version", pa.int64()),
        pa.field("manifest_sha256", pa.string()),
    ]
    return pa.schema(fields)


class Predictor:
    def __init__(
        self,
        repository: str,
        model: str,
        version: int,
        id_column: str,
        output: str,
        backend: str = "auto",
        max_errors: int = 0,
        id_type: str = "string",
    ) -> None:
        directory = version_dir(repository, model, version)  # remote: downloaded and verified on this node
        self.engine = load_engine(directory, backend=backend)  # verifies every checksum before loading
        manifest = read_manifest(directory)
        self.tokenize = preprocessing.load(directory, manifest)
        self.signature = manifest.signature
        self.max_rows = manifest.serving.max_batch_size
        self.model, self.version = model, int(manifest.version)
        self.manifest_sha256 = sha256_file(directory / MANIFEST)
        self.id_column, self.max_errors = id_column, max_errors
        self.schema = output_schema(self.signature, id_column, _arrow_type(id_type))
        self.inputs = [preprocessing.TEXT_INPUT] if self.tokenize else [s.name for s in self.signature.inputs]
        self.errors_path = Path(output) / ERRORS_DIR / f"{uuid.uuid4().hex}.jsonl"
        self.errors = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ids = batch[self.id_column]
        missing = [name for name in self.inputs if name not in batch]
        if missing:
            self._bad(ids, f"missing input {missing[0]!r}; this model takes {', '.join(self.inputs)}")
            return self.schema.empty_table()
        rows = len(ids)
        # Text is tokenized an engine call's rows at a time, so each call pads to its own longest text.
        step = self.max_rows if self.tokenize else rows
        feeds = []
        for first in range(0, rows, step):
            part = {name: batch[name][first : first + step] for name in (self.id_column, *self.inputs)}
            feeds += [(index + first, feed) for index, feed in self._feeds(part, len(part[self.id_column]))]
        outputs: dict[str, list[np.ndarray]] = {s.name: [] for s in self.signature.outputs}
        kept: list[np.ndarray] = []
        for index, feed in feeds:
            for start in range(0, len(index), self.max_rows):
                part = index[start : start + self.max_rows]
                chunk = {k: v[start : start + self.max_rows] for k, v in feed.items()}
                result = self.engine.infer(chunk)
                for name in outputs:
                    outputs[name].append(result[name])
                kept.append(part)
        order = np.concatenate(kept) if kept else np.zeros(0, np.int64)
        columns = [pa.array(ids[order]).cast(self.schema.field(self.id_column).type)]
        n = len(order)
        for spec in self.signature.outputs:
            columns.append(_tensors(outputs[spec.name], self.schema.field(spec.name).type, n))
        columns += [pa.array([self.model] * n, pa.string()), pa.array([self.version] * n, pa.int64())]
        columns.append(pa.array([self.manifest_sha256] * n, pa.string()))
        return pa.Table.from_arrays(columns, schema=self.schema)

    # -- inputs -------------------------------------------------------------------------------------
    def _feeds(self, batch: dict[str, np.ndarray], rows: int) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(row indices, feed) groups that can run: the whole batch when it is uniform, else row by row
        validated, grouped by the dims they bind; the rest reported as errors."""
        ids = batch[self.id_column]
        try:
            feed = self._feed({name: batch[name] for name in self.inputs})
            self.signature.validate(feed)
            return [(np.arange(rows), feed)]
        except (InputError, ValueError, TypeError):
            pass
        groups: dict[tuple, tuple[list[int], list[dict]]] = {}
        for i in range(rows):
            try:
                one = self._feed({name: batch[name][i : i + 1] for name in self.inputs})
                bound = self.signature.validate(one)
            except (InputError, ValueError, TypeError) as e:
                self._bad(ids[i : i + 1], str(e))
                continue
            key = tuple(sorted(bound.items())) if not self.tokenize else (one[next(iter(one))].shape[1],)
            groups.setdefault(key, ([], []))
            groups[key][0].append(i)
            groups[key][1].append(one)
        return [
            (np.array(index), {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
            for index, feeds in groups.values()
        ]

    def _feed(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.tokenize:
            texts = columns[preprocessing.TEXT_INPUT]
            if any(not isinstance(t, (str, bytes)) for t in texts):
                raise InputError("input 'text': expected a string")
            return self.tokenize(np.asarray(texts, dtype=object))
        feed = {}
        for spec in self.signature.inputs:
            want = dtypes.from_name(spec.dtype).numpy
            array = _stacked(columns[spec.name])
            if array.dtype.kind not in _COMPATIBLE[want.kind]:
                raise InputError(f"input {spec.name!r}: expected {spec.dtype} values, got {array.dtype}")
            feed[spec.name] = np.ascontiguousarray(array, dtype=want)
        return feed

    def _bad(self, ids: np.ndarray, reason: str) -> None:
        self.errors_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.errors_path, "a") as f:
            for one in ids:
                f.write(json.dumps({"id": _plain(one), "reason": reason}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.errors += len(ids)
        if self.errors > self.max_errors:
            raise TooManyErrors(
                f"{self.errors} bad rows in one worker, more than --max-errors {self.max_errors}; "
                f"see {self.errors_path}"
            )


_COMPATIBLE = {"f": "fiu", "i": "iu", "u": "u", "b": "b"}


def _stacked(column: np.ndarray) -> np.ndarray:
    """A column as one array: tensor columns already are; lists of lists are stacked (ValueError when
    their rows differ in shape)."""
    if column.dtype != object:
        return column
    return np.stack([np.asarray(_nested(v)) for v in column])


def _nested(value):
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_nested(v) for v in value]
    return value


def _tensors(parts: list[np.ndarray], kind: pa.FixedShapeTensorType, rows: int) -> pa.ExtensionArray:
    """Engine outputs as one fixed_shape_tensor column (its rows in the order they were kept)."""
    size = int(np.prod(kind.shape))
    flat = np.concatenate([p.reshape(len(p), -1) for p in parts]) if parts else np.zeros((0, size))
    values = pa.array(flat.reshape(-1).astype(kind.value_type.to_pandas_dtype(), copy=False), kind.value_type)
    storage = pa.FixedSizeListArray.from_arrays(values, size)
    if len(storage) != rows:
        raise ValueError(f"{len(storage)} output rows for {rows} inputs")
    return pa.ExtensionArray.from_storage(kind, storage)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _arrow_type(name: str) -> pa.DataType:
    return {"string": pa.string(), "int64": pa.int64()}[name]

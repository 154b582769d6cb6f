"""`trtserve monitor report`: captures joined with feedback labels by inference id, offline.

Per version and per hour: requests, labelled requests (label coverage), the metric (accuracy: argmax of
a classifier's output against an integer label, a request correct when all its rows are; cosine: mean
cosine of output and label vectors), and the drift of what was captured against the version's
reference (runtime.monitor.drift, the tests the server runs online). Plots are PNG files.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from runtime.engine import preprocessing
from runtime.engine.evaluation import METRICS
from runtime.engine.manifest import read_manifest
from runtime.engine.repository import version_dir
from runtime.monitor.capture_writer import FEEDBACK_DIR, FEEDBACK_SCHEMA, hour_of
from runtime.monitor.drift_window import TensorWindow
from runtime.monitor.reference import read_version_reference
from runtime.monitor.tensors import NUMPY

FLUSH_ROWS = 4096  # captured rows of one tensor counted in one pass


class ReportError(ValueError):
    """Nothing to report on, or captures or a version's reference that cannot be read; the message says which."""


def _dataset(directory: Path, schema=None):
    """The complete Parquet files under a directory, or None when there are none yet (a file being
    written has a hidden name that does not end in `.parquet`). With a schema, a column a file lacks
    reads as null."""
    files = sorted(str(f) for f in directory.rglob("*.parquet")) if directory.is_dir() else []
    return ds.dataset(files, schema=schema, format="parquet") if files else None


def read_feedback(capture_dir: Path, model: str) -> dict[str, np.ndarray]:
    """inference id -> its label: the latest by the label's `time`, of equal times the last received.
    Every partition is read (they are the hours labels were received, or, in files written before
    `received` existed, the labels' own hours): a label for a request may come at any time after it."""
    data = _dataset(capture_dir / FEEDBACK_DIR / f"model={model}", FEEDBACK_SCHEMA)
    if data is None:
        return {}
    table = data.to_table(columns=["inference_id", "time", "received", "label"])
    # A label of a file without `received` is older than any with it.
    received = pc.fill_null(table.column("received"), pa.scalar(0, table.schema.field("received").type))
    table = table.set_column(2, "received", received).sort_by([("time", "ascending"), ("received", "ascending")])
    return {
        i: np.asarray(v, np.float64)
        for i, v in zip(*(table.column(c).to_pylist() for c in ("inference_id", "label")), strict=True)
    }


def _array(tensor: dict) -> np.ndarray | None:
    if tensor.get("values") is not None:
        dtype = NUMPY.get(tensor["datatype"], np.dtype(np.float64))
        return np.asarray(tensor["values"], np.float64).astype(dtype).reshape(tensor["shape"])
    if tensor.get("text") is not None:
        return np.array([t.encode() for t in tensor["text"]], dtype=object).reshape(tensor["shape"])
    return None  # hashed or dropped


def _score(metric: str, output: np.ndarray, label: np.ndarray) -> float | None:
    rows = output.shape[0]
    if metric == "accuracy":
        if label.size != rows or output.ndim < 2:
            return None
        return float(np.all(np.argmax(output.reshape(rows, -1), axis=1) == label.reshape(-1).astype(np.int64)))
    vectors = output.reshape(rows, -1)
    if label.size != vectors.size:
        return None
    return float(METRICS["cosine"](vectors, label.reshape(vectors.shape)))


def _what_to_score(manifest, outputs: list[str]) -> tuple[str, str]:
    if manifest is not None and manifest.evaluation is not None:
        return manifest.evaluation.metric, manifest.evaluation.output
    return "accuracy", (manifest.outputs[0].name if manifest is not None else outputs[0])


def build_report(
    capture_dir: str | Path,
    model: str,
    since: float | None = None,
    repository: str | Path | None = None,
) -> dict:
    capture_dir = Path(capture_dir)
    data = _dataset(capture_dir / f"model={model}")
    if data is None:
        raise ReportError(f"{capture_dir}: no captures of model {model!r} (no model={model} directory)")
    labels = read_feedback(capture_dir, model)
    columns = ["inference_id", "time", "version", "status", "inputs", "outputs"]
    versions: dict[str, dict] = {}
    tallies: dict[tuple[str, str], list] = defaultdict(
        lambda: [0, 0, 0.0]
    )  # (version, hour) -> requests, labelled, sum
    windows: dict[tuple[str, str], dict[str, _Batched]] = {}
    references: dict[str, object] = {}
    manifests: dict[str, object] = {}
    tokenizers: dict[str, object] = {}
    rng = np.random.default_rng(0)
    for batch in data.to_batches(columns=columns):
        for row in batch.to_pylist():
            moment = row["time"].timestamp()
            if since is not None and moment < since:
                continue
            version = row["version"]
            if version not in manifests:
                manifests[version], references[version], tokenizers[version] = _version_files(
                    repository, model, version
                )
            hour = hour_of(moment)
            tally = tallies[(version, hour)]
            tally[0] += 1
            outputs = {t["name"]: _array(t) for t in row["outputs"] or []}
            inputs = {t["name"]: _array(t) for t in row["inputs"] or []}
            metric, output = _what_to_score(manifests[version], list(outputs) or ["?"])
            label = labels.get(row["inference_id"])
            if label is not None and row["status"] == 200 and outputs.get(output) is not None:
                score = _score(metric, outputs[output], label)
                if score is not None:
                    tally[1] += 1
                    tally[2] += score
            versions.setdefault(version, {"metric": metric, "output": output})
            reference = references[version]
            if reference is not None and row["status"] == 200:
                if tokenizers[version] is not None and preprocessing.TEXT_INPUT in inputs:
                    text = inputs.pop(preprocessing.TEXT_INPUT)
                    if text is not None:
                        inputs.update(tokenizers[version](text))
                per_tensor = windows.setdefault((version, hour), {})
                for name, array in {**inputs, **outputs}.items():
                    tensor = reference.tensor(name)
                    if tensor is None or array is None:
                        continue
                    if name not in per_tensor:
                        per_tensor[name] = _Batched(TensorWindow(tensor, rng))
                    per_tensor[name].add(array)
    if not tallies:
        raise ReportError(f"{capture_dir}: no captures of model {model!r}" + (" since then" if since else ""))
    for (version, hour), (requests, labelled, total) in sorted(tallies.items()):
        entry = versions[version]
        entry.setdefault("hours", {})[hour] = {
            "requests": requests,
            "labelled": labelled,
            entry["metric"]: (total / labelled) if labelled else None,
        }
        entry["requests"] = entry.get("requests", 0) + requests
        entry["labelled"] = entry.get("labelled", 0) + labelled
        entry["_total"] = entry.get("_total", 0.0) + total
        tensors = windows.get((version, hour), {})
        if tensors:
            reference = references[version]
            for pending in tensors.values():
                pending.flush()
            judged = [p.window.judge(reference.rows, rng) for p in tensors.values() if p.window.sample.filled]
            entry["hours"][hour]["drift"] = [t.to_json() for t in judged]
    for entry in versions.values():
        total = entry.pop("_total")
        entry["label_coverage"] = entry["labelled"] / entry["requests"] if entry["requests"] else 0.0
        entry[entry["metric"]] = total / entry["labelled"] if entry["labelled"] else None
        entry.setdefault("accuracy", entry.get("accuracy"))
    return {"model": model, "capture": str(capture_dir), "since": since, "versions": versions}


class _Batched:
    """A TensorWindow fed the captures' tensors as they are read, counted FLUSH_ROWS rows at a time (one
    numpy pass per batch of alike rows, not one per request)."""

    def __init__(self, window: TensorWindow) -> None:
        self.window = window
        self.pending: dict[tuple, list[np.ndarray]] = defaultdict(list)
        self.rows = 0

    def add(self, array: np.ndarray) -> None:
        self.pending[(array.shape[1:], array.dtype.str)].append(array)
        self.rows += array.shape[0]
        if self.rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        for arrays in self.pending.values():
            self.window.add(self.window.spec.extract(np.concatenate(arrays)))
        self.pending.clear()
        self.rows = 0


def _version_files(repository, model: str, version: str):
    """(manifest, reference, tokenizer) of a version in the repository, None where there is none."""
    if repository is None:
        return None, None, None
    try:
        directory = version_dir(repository, model, version)  # an object store's: its verified download
        manifest = read_manifest(directory)
    except Exception:  # a version not in this repository: reported without its metric config or drift
        return None, None, None
    # Both read as verified: confined to the version and checked against the manifest's sha256 as read
    # (ArtifactError); a local version was never verified whole.
    try:
        reference = read_version_reference(directory, manifest)
    except ValueError as e:  # verified, but not a reference this release reads
        raise ReportError(str(e)) from None
    return manifest, reference, preprocessing.load(directory, manifest)


def plot_report(report: dict, directory: str | Path) -> list[Path]:
    """metric.png (the metric per hour, per version) and drift.png (share of drifted features per tensor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(8, 4))
    for version, entry in sorted(report["versions"].items()):
        hours = sorted(entry["hours"])
        values = [entry["hours"][h][entry["metric"]] for h in hours]
        ax.plot(hours, [math.nan if v is None else v for v in values], marker="o", label=f"v{version}")
    ax.set_title(
        f"{report['model']}: {'/'.join(sorted({e['metric'] for e in report['versions'].values()}))} from feedback"
    )
    ax.set_xlabel("hour (UTC)")
    ax.set_ylim(0, 1.05)
    ax.legend()
    fig.autofmt_xdate()
    written.append(directory / "metric.png")
    fig.savefig(written[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    for version, entry in sorted(report["versions"].items()):
        series: dict[str, list] = defaultdict(list)
        for hour in sorted(entry["hours"]):
            for tensor in entry["hours"][hour].get("drift", []):
                share = sum(f["drifted"] for f in tensor["features"]) / max(len(tensor["features"]), 1)
                series[tensor["name"]].append((hour, share))
        for name, points in sorted(series.items()):
            ax.plot([h for h, _ in points], [s for _, s in points], marker="o", label=f"v{version} {name}")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_title(f"{report['model']}: share of drifted features per tensor (drifted at >= 0.5)")
    ax.set_xlabel("hour (UTC)")
    ax.set_ylim(0, 1.05)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.autofmt_xdate()
    written.append(directory / "drift.png")
    fig.savefig(written[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return written

"""Payload capture without Ray: sampling by a keyed hash of the id, redaction, the Parquet writer's
rotation, atomic files and bounded queue, feedback validation, and the offline report joining captures
with labels."""

import asyncio
import hashlib
import json
import threading
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from runtime.engine.errors import ArtifactError
from runtime.engine.manifest import MANIFEST, write_manifest
from runtime.monitor import capture_writer
from runtime.monitor.capture_sampling import sampled
from runtime.monitor.capture_writer import (
    CAPTURE_SCHEMA,
    PartitionedWriter,
    Rotate,
    capture_partition,
    capture_table,
)
from runtime.monitor.quality_report import ReportError, build_report, plot_report, read_feedback
from runtime.monitor.redaction import Redactor
from runtime.monitor.reference import REFERENCE_FILE, Reference, write_reference
from runtime.serve.app_args import Capture, parse_args
from runtime.serve.capture_sink import CaptureError, CaptureSink, FeedbackError
from tests.fixtures.artifacts import add_model

# sampling by id

KEY = b"deployment-secret-0123456789abcdef"


def test_sampling_by_id_is_stable_and_close_to_the_percent():
    ids = [f"req-{i}" for i in range(20_000)]
    kept = [sampled(i, 10, KEY) for i in ids]
    assert 0.09 <= sum(kept) / len(ids) <= 0.11
    assert kept == [sampled(i, 10, KEY) for i in ids]  # the same id and key are decided alike, every time
    assert all(sampled(i, 100, KEY) for i in ids[:100]) and not any(sampled(i, 0, KEY) for i in ids[:100])
    assert {i for i, k in zip(ids, kept, strict=True) if k} <= {i for i in ids if sampled(i, 50, KEY)}


def test_sampling_is_keyed_so_a_client_cannot_compute_which_ids_are_kept():
    ids = [f"req-{i}" for i in range(4_000)]
    kept = {i for i in ids if sampled(i, 10, KEY)}
    other = {i for i in ids if sampled(i, 10, b"another deployment's secret")}
    # The unkeyed hash of before: public, so a client could pick ids that are (or are not) captured.
    public = {
        i
        for i in ids
        if int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8, person=b"trtserve-cap").digest(), "big")
        / 2**64
        * 100
        < 10
    }
    assert len(kept & other) < len(kept) / 3  # about 10 % of them by chance
    assert len(kept & public) < len(kept) / 3
    assert kept == {i for i in ids if sampled(i, 10, KEY)}


# redaction


def test_a_dropped_input_is_left_out_and_a_hashed_one_is_keyed():
    redactor = Redactor(frozenset({"ssn"}), frozenset({"ids"}), b"k1")
    arrays = {"ssn": np.array([123456789]), "ids": np.array([[101, 7592, 102]]), "x": np.array([1.5])}
    records = {r["name"]: r for r in redactor.tensors(arrays)}
    assert "ssn" not in records
    assert "values" not in records["ids"] and len(records["ids"]["hash"]) == 64
    assert records["x"]["values"] is arrays["x"]
    again = {r["name"]: r for r in redactor.tensors({"ids": np.array([[101, 7592, 102]])})}
    assert again["ids"]["hash"] == records["ids"]["hash"]  # stable: equal inputs join
    other_key = Redactor(frozenset(), frozenset({"ids"}), b"k2").tensors({"ids": arrays["ids"]})[0]
    assert other_key["hash"] != records["ids"]["hash"]  # keyed: not a lookup table away from the input
    other_input = redactor.tensors({"ids": np.array([[101, 7593, 102]])})[0]
    assert other_input["hash"] != records["ids"]["hash"]
    assert {r["name"] for r in redactor.tensors(arrays, redact=False)} == {"ssn", "ids", "x"}


def test_hashing_without_a_key_or_dropping_and_hashing_one_input_is_refused():
    with pytest.raises(ValueError, match="needs a key"):
        Redactor(frozenset(), frozenset({"ids"}), b"")
    with pytest.raises(ValueError, match="both dropped and hashed"):
        Redactor(frozenset({"ids"}), frozenset({"ids"}), b"k")


# the writer


def _record(i: int, t: float | None = None, model="cnn", version="1") -> dict:
    return {
        "inference_id": f"id-{i}",
        "time": time.time() if t is None else t,
        "model": model,
        "version": version,
        "role": "stable",
        "status": 200,
        "latency_ms": 1.0,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "values": np.array([[i, i + 0.5]])}],
        "outputs": None,
    }


def _writer(root, **rotate):
    return PartitionedWriter(root, CAPTURE_SCHEMA, capture_table, capture_partition, Rotate(**rotate), flush_s=0.05)


def _await(coroutine):
    return asyncio.run(coroutine)


def _parquet(root):
    return sorted(root.rglob("*.parquet"))


def test_records_round_trip_partitioned_by_model_version_and_hour(tmp_path):
    writer = _writer(tmp_path)
    t = 1_780_000_000.0  # 2026-05-28T20:26:40Z
    for i in range(3):
        writer.submit(_record(i, t))
    writer.submit(_record(9, t, version="2"))
    writer.close()
    files = _parquet(tmp_path)
    assert [f.parent.relative_to(tmp_path).as_posix() for f in files] == [
        "model=cnn/version=1/hour=2026-05-28T20",
        "model=cnn/version=2/hour=2026-05-28T20",
    ]
    rows = pq.read_table(files[0]).to_pylist()
    assert [r["inference_id"] for r in rows] == ["id-0", "id-1", "id-2"]
    assert rows[2]["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [1, 2], "values": [2.0, 2.5], "text": None, "hash": None}
    ]
    assert rows[0]["outputs"] is None and rows[0]["time"].timestamp() == t
    assert writer.stats.written == 4 and writer.stats.files == 2


def test_a_file_is_closed_at_max_rows(tmp_path):
    writer = _writer(tmp_path, max_rows=4)
    for i in range(10):
        writer.submit(_record(i))
    writer.close()
    sizes = sorted(pq.read_metadata(f).num_rows for f in _parquet(tmp_path))
    assert sizes == [2, 4, 4]


def test_a_file_is_closed_at_max_bytes(tmp_path):
    writer = _writer(tmp_path, max_bytes=1)
    for i in range(3):
        writer.submit(_record(i))
        writer.flush()
    assert len(_parquet(tmp_path)) == 3  # every write passed the limit: closed at once, not at close()
    writer.close()


def test_files_are_complete_or_hidden_and_closed_by_age_without_more_records(tmp_path):
    writer = _writer(tmp_path, max_age_s=2)
    writer.submit(_record(0))
    writer.flush()
    (hidden,) = list(tmp_path.rglob(".part-*.inprogress.arrows"))
    assert _parquet(tmp_path) == []  # being written: no name a Parquet reader takes
    assert ds.dataset(tmp_path, format="parquet").count_rows() == 0  # nor a dataset reader of the destination
    deadline = time.monotonic() + 10
    while not _parquet(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    (complete,) = _parquet(tmp_path)
    assert not hidden.exists() and pq.read_table(complete).num_rows == 1
    writer.close()


def test_a_full_queue_drops_and_counts_and_never_waits(tmp_path):
    entered, release = threading.Event(), threading.Event()

    def slow_table(records):
        entered.set()
        release.wait(10)
        return capture_table(records)

    writer = PartitionedWriter(
        tmp_path, CAPTURE_SCHEMA, slow_table, capture_partition, Rotate(), queue_max_rows=3, flush_s=0.01
    )
    writer.submit(_record(0))
    assert entered.wait(10)  # the writer holds record 0 and is stuck writing it
    started = time.monotonic()
    accepted = [writer.submit(_record(i)) for i in range(1, 7)]
    assert time.monotonic() - started < 0.5
    assert accepted == [True, True, True, False, False, False]
    assert writer.stats.dropped == 3
    release.set()
    writer.close()
    assert writer.stats.written == 4


# the sink: redaction on disk, feedback


def _sink(tmp_path, monkeypatch, **settings):
    monkeypatch.setenv("TRTSERVE_CAPTURE_KEY", "secret")
    return CaptureSink("m", Capture(destination=str(tmp_path), **settings), KEY)


def test_a_dropped_input_never_reaches_disk(tmp_path, monkeypatch):
    sink = _sink(tmp_path, monkeypatch, sampling_percent=100, redact={"drop": ["ssn"], "hash": ["text"]})
    ssn = np.array([b"SSN-078-05-1120"], dtype=object)
    text = np.array([b"my card is 4111-1111-1111-1111"], dtype=object)
    sink.record(
        "r1", "1", "stable", 200, 0.01, {"ssn": ssn, "text": text, "x": np.ones((1, 2))}, {"y": np.ones((1, 1))}
    )
    sink.close()
    (file,) = _parquet(tmp_path)
    raw = file.read_bytes()
    assert b"078-05-1120" not in raw and b"4111-1111" not in raw
    (row,) = pq.read_table(file).to_pylist()
    assert [t["name"] for t in row["inputs"]] == ["text", "x"]
    assert row["inputs"][0]["text"] is None and len(row["inputs"][0]["hash"]) == 64
    assert row["outputs"][0]["values"] == [1.0]


def test_hashing_needs_its_key(tmp_path, monkeypatch):
    monkeypatch.delenv("TRTSERVE_CAPTURE_KEY", raising=False)
    with pytest.raises(CaptureError, match=r"TRTSERVE_CAPTURE_KEY, which is not set"):
        CaptureSink("m", Capture(destination=str(tmp_path), sampling_percent=1, redact={"hash": ["ids"]}), KEY)


def test_the_mode_decides_which_tensors_are_kept(tmp_path, monkeypatch):
    sink = _sink(tmp_path, monkeypatch, sampling_percent=100, mode="response")
    sink.record("r1", "1", "canary", 200, 0.01, {"x": np.ones((1, 2))}, {"y": np.ones((1, 1))})
    sink.close()
    (row,) = pq.read_table(_parquet(tmp_path)[0]).to_pylist()
    assert row["inputs"] is None and row["outputs"][0]["name"] == "y" and row["role"] == "canary"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "non-empty list"),
        ({"id": "a"}, r"label: expected a number"),
        ({"id": "a", "label": "cat"}, r"label: expected a number"),
        ({"id": "a", "label": float("nan")}, r"label: expected a number"),
        ({"id": "", "label": 1}, r"\.id: expected the inference id"),
        ({"id": "a", "label": 1, "extra": 2}, r"unknown key 'extra'"),
        ({"id": "a", "label": 1, "time": "yesterday"}, r"\.time: expected seconds"),
        ([{"id": "a", "label": 1}, 5], r"feedback\[1\]: expected an object"),
        # times that would kill the writer, or land in a partition nobody reads
        ({"id": "a", "label": 1, "time": 1_780_000_000_000}, r"\.time: 1780000000000 looks like milliseconds"),
        ({"id": "a", "label": 1, "time": 1e20}, r"\.time: 1e\+20 is not between 2000-01-01 and a day from now"),
        ({"id": "a", "label": 1, "time": 10**400}, r"\.time: expected seconds since the epoch"),
        ({"id": "a", "label": 1, "time": float("nan")}, r"\.time: expected seconds"),
        ({"id": "a", "label": 1, "time": True}, r"\.time: expected seconds"),
        ({"id": "a", "label": 1, "time": -1}, r"\.time: -1 is not between"),
        ({"id": "a", "label": 1, "time": "2026-05-28T20:00:00"}, r"\.time: '2026-05-28T20:00:00' has no time zone"),
        ({"id": "a", "label": 1, "time": "9999-12-31T23:00:00Z"}, r"\.time: '9999-12-31T23:00:00Z' is not between"),
        ({"id": "a", "label": 10**400}, r"\.label: expected a number"),
        # ids: at most 256 bytes of UTF-8, and the entry named
        ([{"id": "a", "label": 1}, {"id": "é" * 129, "label": 1}], r"feedback\[1\]\.id: 258 bytes; .* at most 256"),
        ({"id": "\ud800", "label": 1}, r"\.id: not valid UTF-8"),
        ({"id": "a", "label": 1, "x" * 10_000: 1}, r"unknown key 'x{36}\.\.\.; expected"),
        ([{"id": "a", "label": 1}] * 10_001, r"10001 entries; at most 10000 in one POST"),
    ],
)
def test_bad_feedback_is_named_and_nothing_of_it_is_kept(tmp_path, monkeypatch, body, message):
    sink = _sink(tmp_path, monkeypatch)
    with pytest.raises(FeedbackError, match=message):
        _await(sink.add_feedback(body))
    sink.close()
    assert _parquet(tmp_path) == []


def test_feedback_without_a_destination_is_refused(monkeypatch):
    sink = CaptureSink("m", Capture(), KEY)
    with pytest.raises(LookupError, match="no capture destination"):
        _await(sink.add_feedback({"id": "a", "label": 1}))


def test_the_report_gives_the_planted_accuracy_per_version(tmp_path, monkeypatch):
    sink = _sink(tmp_path, monkeypatch, sampling_percent=100)
    rng = np.random.default_rng(0)
    labels = []
    for i in range(40):
        version = "1" if i < 20 else "2"
        logits = rng.normal(size=(1, 5))
        predicted = int(logits.argmax())
        right = i % 4 != 0 if version == "1" else i % 2 == 0  # 75 % and 50 %
        sink.record(f"r{i}", version, "stable", 200, 0.01, {"x": np.ones((1, 2))}, {"logits": logits})
        if i % 5 != 4:  # 80 % labelled
            labels.append({"id": f"r{i}", "label": predicted if right else (predicted + 1) % 5})
    sink.record("failed", "1", "stable", 500, 0.01, {"x": np.ones((1, 2))}, None)
    assert _await(sink.add_feedback(labels)) == len(labels)
    older = {"id": "r0", "label": 4.0, "time": 1_000_000_000.0}
    assert _await(sink.add_feedback(older)) == 1  # the later label stands
    sink.close()
    assert len(read_feedback(tmp_path, "m")) == len(labels)
    report = build_report(tmp_path, "m")
    v1, v2 = report["versions"]["1"], report["versions"]["2"]
    expect = {}
    for version, ids in (("1", range(20)), ("2", range(20, 40))):
        kept = [i for i in ids if i % 5 != 4]
        good = [i for i in kept if (i % 4 != 0 if version == "1" else i % 2 == 0)]
        expect[version] = (len(kept), len(good) / len(kept))
    assert (v1["requests"], v1["labelled"]) == (21, expect["1"][0])
    assert v1["accuracy"] == pytest.approx(expect["1"][1])
    assert v2["accuracy"] == pytest.approx(expect["2"][1])
    assert v2["label_coverage"] == pytest.approx(0.8)
    assert sum(h["requests"] for h in v1["hours"].values()) == 21
    assert {p.name for p in plot_report(report, tmp_path / "plots")} == {"metric.png", "drift.png"}
    assert (tmp_path / "plots" / "metric.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ReportError, match="no captures of model 'other'"):
        build_report(tmp_path, "other")


def test_labels_in_files_written_before_received_existed_are_still_read(tmp_path, monkeypatch):
    """Feedback files of earlier releases: partitioned by each label's hour, without `received`."""
    t = 1_780_000_000.0
    old = tmp_path / "_feedback" / "model=m" / "hour=2026-05-28T20"
    old.mkdir(parents=True)
    schema = pa.schema([(f.name, f.type) for f in capture_writer.FEEDBACK_SCHEMA if f.name != "received"])
    moment = datetime.fromtimestamp(t, timezone.utc)
    rows = [{"inference_id": i, "time": moment, "model": "m", "label": [v]} for i, v in (("a", 1.0), ("b", 2.0))]
    pq.write_table(pa.Table.from_pylist(rows, schema), old / "part-old.parquet")
    sink = _sink(tmp_path, monkeypatch)
    newer = [{"id": "a", "label": 9, "time": t - 10}, {"id": "b", "label": 7, "time": t + 10}, {"id": "c", "label": 3}]
    assert _await(sink.add_feedback(newer)) == 3
    sink.close()
    labels = {i: v.tolist() for i, v in read_feedback(tmp_path, "m").items()}
    assert labels == {"a": [1.0], "b": [7.0], "c": [3.0]}  # the latest by the label's time, old files or new


def _repository_with_a_reference(root, change=None):
    """Model m, version 1, packaging a reference; `change` edits its manifest (a JSON document) after."""
    version = add_model(root / "m" / "1")
    write_reference(version / REFERENCE_FILE, Reference(format_version=1, rows=1, source="tests", tensors=[]))
    doc = json.loads((version / MANIFEST).read_text())
    doc["reference"] = {"file": REFERENCE_FILE, "rows": 1, "source": "tests"}
    write_manifest(version, {k: v for k, v in doc.items() if k != "files"})
    if change is not None:
        doc = json.loads((version / MANIFEST).read_text())
        change(doc)
        (version / MANIFEST).write_text(json.dumps(doc))
    return version


def _captured_once(capture, monkeypatch):
    sink = _sink(capture, monkeypatch, sampling_percent=100)
    sink.record("r0", "1", "stable", 200, 0.01, {"a": np.ones((1, 3))}, {"out": np.ones((1, 3))})
    sink.close()


def test_the_report_reads_a_versions_reference_only_as_verified(tmp_path, monkeypatch):
    capture, repository = tmp_path / "capture", tmp_path / "repository"
    _captured_once(capture, monkeypatch)
    version = _repository_with_a_reference(repository)
    assert build_report(capture, "m", repository=repository)["versions"]["1"]["requests"] == 1
    forged = (version / REFERENCE_FILE).read_text().replace('"tests"', '"TESTS"')  # same size, other bytes
    (version / REFERENCE_FILE).write_text(forged)
    with pytest.raises(ArtifactError, match=r"checksum mismatch for reference\.json"):
        build_report(capture, "m", repository=repository)


def test_the_report_reads_no_reference_from_outside_the_version(tmp_path, monkeypatch):
    capture, repository = tmp_path / "capture", tmp_path / "repository"
    _captured_once(capture, monkeypatch)
    write_reference(tmp_path / "elsewhere.json", Reference(format_version=1, rows=1, source="x", tensors=[]))
    _repository_with_a_reference(repository, lambda m: m["reference"].update({"file": "../../../elsewhere.json"}))
    with pytest.raises(ArtifactError, match=r"reference\.file '\.\./\.\./\.\./elsewhere\.json' leads outside"):
        build_report(capture, "m", repository=repository)


# configuration


def test_a_model_entry_overrides_the_apps_capture_keys(tmp_path, cnn_repository):
    args = parse_args(
        {
            "repository": str(cnn_repository),
            "capture": {"sampling_percent": 10, "destination": str(tmp_path), "redact": {"drop": ["a"]}},
            "models": [
                {"name": "cnn"},
                {"name": "cnn", "version": 1, "capture": {"sampling_percent": 100, "redact": {"hash": ["b"]}}},
            ],
        }
    )
    first, second = (m.capture_settings for m in args.models)
    assert first.sampling_percent == 10 and first.redact.drop == ["a"]
    assert second.sampling_percent == 100 and second.redact.drop == ["a"] and second.redact.hash == ["b"]
    assert second.destination == str(tmp_path.resolve())


def test_capturing_without_a_destination_is_named(cnn_repository):
    with pytest.raises(ValueError, match=r"models\[0\]\.capture.*destination"):
        parse_args({"repository": str(cnn_repository), "models": [{"name": "cnn", "capture": {"sampling_percent": 5}}]})


def test_feedback_is_judged_against_the_answers_this_replica_remembers(tmp_path, monkeypatch):
    sink = _sink(tmp_path, monkeypatch)
    sink.remember("a", "1", np.array([[0.1, 0.9, 0.0]]))
    sink.remember("b", "2", np.array([[0.8, 0.1, 0.1], [0.0, 0.0, 1.0]]))
    sink.recent.max_bytes = sink.recent.held_bytes  # room for these two answers, no more
    sink.remember("c", "2", np.array([[0.0, 1.0]]))  # "a" is forgotten: the oldest goes first
    _await(sink.add_feedback([{"id": "a", "label": 1}, {"id": "b", "label": [0, 2]}, {"id": "c", "label": 0}]))
    _await(sink.add_feedback({"id": "b", "label": [0, 1]}))  # one row of two wrong: the request is wrong
    sink.close()
    assert sink.judged == {("", "unmatched"): 1, ("2", "correct"): 1, ("2", "wrong"): 2}

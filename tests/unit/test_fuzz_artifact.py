"""Property-based tests of the artifact loader: a malformed manifest, a truncated or corrupted ONNX file
(with checksums that match, so the parser itself is tried), files of the wrong size or a manifest naming
any path under any key that names a file are refused with one line naming what is wrong, never another
exception."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.engine.artifact import verify_version_dir
from runtime.engine.errors import ArtifactError, TrtserveError
from runtime.engine.loader import load_engine
from runtime.engine.manifest import MANIFEST, write_manifest
from tests.fixtures.artifacts import sequence_model
from tests.fixtures.fuzz import json_values

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return sequence_model(tmp_path_factory.mktemp("artifact") / "seq" / "1")


def _loaded_or_refused(version_dir: Path) -> None:
    try:
        engine = load_engine(version_dir, backend="onnxruntime")
    except TrtserveError as e:
        message = str(e)
        assert message and "\n" not in message, message
        return
    try:  # it loaded: then it answers, or says why it cannot
        engine.infer({"x": np.ones((1, 4), np.float32)})
    except TrtserveError as e:
        assert "\n" not in str(e)
    finally:
        engine.close()


def _copy(source: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="fuzz-artifact-")) / "seq" / "1"
    shutil.copytree(source, target)
    return target


def _paths(doc, prefix=()):
    """Every key path into a JSON document."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _paths(value, (*prefix, i))


@st.composite
def manifest_mutations(draw, doc: dict):
    doc = json.loads(json.dumps(doc))
    paths = [p for p in _paths(doc) if p]
    for path in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed the way there
            continue
    return doc


@FUZZ
@given(data=st.data())
def test_malformed_manifests(source, data):
    doc = json.loads((source / MANIFEST).read_text())
    version_dir = _copy(source)
    try:
        (version_dir / MANIFEST).write_text(json.dumps(data.draw(manifest_mutations(doc))))
        _loaded_or_refused(version_dir)
    finally:
        shutil.rmtree(version_dir.parent.parent)


@FUZZ
@given(st.binary(max_size=256))
def test_a_manifest_that_is_not_json(source, raw):
    version_dir = _copy(source)
    try:
        (version_dir / MANIFEST).write_bytes(raw)
        _loaded_or_refused(version_dir)
    finally:
        shutil.rmtree(version_dir.parent.parent)


@st.composite
def corruptions(draw, raw: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "random", "empty"]))
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "flip":
        out = bytearray(raw)
        for i in draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "splice":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.binary(min_size=1, max_size=64)) + raw[at:]
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=2048))
    return b""


@FUZZ
@given(data=st.data(), resign=st.booleans())
def test_corrupted_onnx(source, data, resign):
    """With `resign`, the manifest is rewritten to match the damaged file, as a careless re-packaging
    would: the ONNX parser must refuse it. Without, the checksum must."""
    raw = (source / "model.onnx").read_bytes()
    version_dir = _copy(source)
    try:
        (version_dir / "model.onnx").write_bytes(data.draw(corruptions(raw)))
        if resign:
            fields = json.loads((version_dir / MANIFEST).read_text())
            fields.pop("files")
            write_manifest(version_dir, fields)
        _loaded_or_refused(version_dir)
    finally:
        shutil.rmtree(version_dir.parent.parent)


def test_a_file_of_the_wrong_size_is_refused(source):
    version_dir = _copy(source)
    try:
        with open(version_dir / "model.onnx", "ab") as f:
            f.write(b"\0")
        with pytest.raises(TrtserveError, match=r"is .* bytes, the manifest says"):
            load_engine(version_dir, backend="onnxruntime")
    finally:
        shutil.rmtree(version_dir.parent.parent)


def _naming(doc: dict, key: str, path: str) -> dict:
    """`doc` with the manifest key `key` naming the file `path`."""
    doc = json.loads(json.dumps(doc))
    if key == "engines":
        doc["engines"][0]["file"] = path
    elif key == "preprocessing":
        doc["preprocessing"] = {"tokenizer": {"files": [path]}}
    elif key == "reference":
        doc["reference"] = {"file": path, "rows": 1, "source": "fuzz"}
    else:
        sha = doc["files"].get(path, {}).get("sha256", "0" * 64)
        scored = {"metric": "accuracy", "output": "doubled", "value": 1.0, "rows": 1, "margin": 0.0}
        doc["evaluation"] = {**scored, "file": path, "data_sha256": sha, "backend": "onnxruntime", "precision": "fp32"}
    return doc


PATHS = st.text(max_size=24) | st.sampled_from(
    ["model.onnx", "./model.onnx", "a/../model.onnx", "../model.onnx", "/etc/passwd", "..", ".", "model.onnx/", "x\\y"]
)


@FUZZ
@given(key=st.sampled_from(["engines", "preprocessing", "reference", "evaluation"]), path=PATHS)
def test_a_file_the_manifest_names_is_a_listed_one_or_refused_in_one_line(source, key, path):
    doc = json.loads((source / MANIFEST).read_text())
    version_dir = _copy(source)
    try:
        (version_dir / MANIFEST).write_text(json.dumps(_naming(doc, key, path)))
        try:
            manifest = verify_version_dir(version_dir)
        except ArtifactError as e:
            assert str(e) and "\n" not in str(e), str(e)
        else:
            assert path in manifest.files  # only a file the manifest checksums passes
    finally:
        shutil.rmtree(version_dir.parent.parent)

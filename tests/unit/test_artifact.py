import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from convert.package import next_version, publish, staging_dir
from runtime.engine.artifact import onnx_external_data_locations, read_verified, verify_version_dir
from runtime.engine.errors import ArtifactError
from runtime.engine.evaluation import EVAL_FILE, read_eval_set
from runtime.engine.manifest import MANIFEST, read_manifest, write_manifest
from runtime.engine.repository import list_versions, version_dir
from runtime.monitor.reference import REFERENCE_FILE, Reference, read_version_reference, write_reference
from tests.fixtures.artifacts import add_model, sequence_model


def make_version(root: Path, external: bool = False) -> Path:
    return add_model(root, external)


def rewrite_manifest(root: Path, change) -> None:
    manifest = json.loads((root / MANIFEST).read_text())
    change(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))


def test_intact_version_verifies(tmp_path):
    root = make_version(tmp_path / "toy" / "1", external=True)
    manifest = verify_version_dir(root)
    assert set(manifest.files) == {"model.onnx", "model.onnx.data"}


def test_flipped_byte_is_caught(tmp_path):
    root = make_version(tmp_path / "1")
    data = bytearray((root / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"checksum mismatch for model\.onnx"):
        verify_version_dir(root)


def test_truncated_and_missing_files_are_caught(tmp_path):
    root = make_version(tmp_path / "1", external=True)
    (root / "model.onnx.data").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"model\.onnx\.data is 0 bytes"):
        verify_version_dir(root)
    (root / "model.onnx.data").unlink()
    with pytest.raises(ArtifactError, match="listed in the manifest but missing"):
        verify_version_dir(root)


@pytest.mark.parametrize("path", ["../outside.bin", "/etc/passwd", "sub/../../x"])
def test_manifest_paths_leaving_the_directory_are_refused(tmp_path, path):
    root = make_version(tmp_path / "1")
    rewrite_manifest(root, lambda m: m["files"].update({path: {"sha256": "0", "bytes": 0}}))
    with pytest.raises(ArtifactError, match="outside the version directory"):
        verify_version_dir(root)


def test_symlink_leaving_the_directory_is_refused(tmp_path):
    root = make_version(tmp_path / "1")
    (tmp_path / "secret").write_text("x")
    (root / "link").symlink_to(tmp_path / "secret")
    rewrite_manifest(root, lambda m: m["files"].update({"link": {"sha256": "0", "bytes": 1}}))
    with pytest.raises(ArtifactError, match="resolves outside the version directory"):
        verify_version_dir(root)


def test_external_data_location_outside_is_refused(tmp_path):
    root = make_version(tmp_path / "1", external=True)
    (tmp_path / "evil.bin").write_bytes((root / "model.onnx.data").read_bytes())
    model = onnx.load(str(root / "model.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../evil.bin"
    onnx.save_model(model, str(root / "model.onnx"))
    # Re-sign the tampered graph so only the location is wrong.
    manifest = json.loads((root / MANIFEST).read_text())
    write_manifest(root, {k: v for k, v in manifest.items() if k != "files"})
    assert onnx_external_data_locations(root / "model.onnx") == ["../evil.bin"]
    with pytest.raises(ArtifactError, match=r"external-data location of model\.onnx '\.\./evil\.bin' leads outside"):
        verify_version_dir(root)


def test_external_data_must_be_checksummed(tmp_path):
    root = make_version(tmp_path / "1", external=True)
    rewrite_manifest(root, lambda m: m["files"].pop("model.onnx.data"))
    with pytest.raises(ArtifactError, match="does not list; refusing to load unverified data"):
        verify_version_dir(root)


def test_missing_manifest_key(tmp_path):
    root = make_version(tmp_path / "1")
    rewrite_manifest(root, lambda m: m.pop("parity"))
    with pytest.raises(ArtifactError, match="missing key 'parity'"):
        verify_version_dir(root)


def test_versions_are_numbered_and_never_overwritten(tmp_path):
    model_dir = tmp_path / "toy"
    assert next_version(model_dir, None) == 1
    make_version(model_dir / "1")
    (model_dir / ".staging-2-abc").mkdir()  # an interrupted build is not a version
    assert list_versions(model_dir) == [1]
    assert next_version(model_dir, None) == 2
    with pytest.raises(Exception, match="already exists; versions are never overwritten"):
        next_version(model_dir, 1)
    assert version_dir(tmp_path, "toy") == model_dir / "1"
    with pytest.raises(ArtifactError, match="no version 7"):
        version_dir(tmp_path, "toy", 7)


def test_staging_is_removed_on_failure_and_published_by_rename(tmp_path):
    model_dir = tmp_path / "toy"
    with pytest.raises(RuntimeError), staging_dir(model_dir, 1) as staging:
        (staging / "model.onnx").write_text("half")
        raise RuntimeError("parity failed")
    assert list(model_dir.iterdir()) == []
    with staging_dir(model_dir, 1) as staging:
        (staging / "f").write_text("x")
        final = publish(staging, model_dir, 1)
    assert final == model_dir / "1" and (final / "f").read_text() == "x"
    assert [p.name for p in model_dir.iterdir()] == ["1"]
    with staging_dir(model_dir, 1) as staging, pytest.raises(Exception, match="never overwritten"):
        publish(staging, model_dir, 1)


def full_version(root: Path) -> Path:
    """A version naming a file under every key that names one: engines, tokenizer, eval set, reference."""
    root = sequence_model(root, evaluated=True)
    (root / "preprocessing" / "tokenizer").mkdir(parents=True)
    (root / "preprocessing" / "tokenizer" / "tokenizer.json").write_text("{}")
    write_reference(root / REFERENCE_FILE, Reference(format_version=1, rows=1, source="tests", tensors=[]))
    doc = json.loads((root / MANIFEST).read_text())
    doc["preprocessing"] = {"tokenizer": {"files": ["preprocessing/tokenizer/tokenizer.json"]}}
    doc["reference"] = {"file": REFERENCE_FILE, "rows": 1, "source": "tests"}
    write_manifest(root, {k: v for k, v in doc.items() if k != "files"})
    return root


NAMED = {
    "engines[0].file": lambda m: m["engines"][0],
    "preprocessing.tokenizer.files[0]": lambda m: m["preprocessing"]["tokenizer"]["files"],
    "evaluation.file": lambda m: m["evaluation"],
    "reference.file": lambda m: m["reference"],
}


def name_file(key: str, path: str):
    """A manifest change: the file under `key` becomes `path`."""

    def change(manifest: dict) -> None:
        holder = NAMED[key](manifest)
        holder[0 if isinstance(holder, list) else "file"] = path

    return change


def test_a_version_naming_files_under_every_key_verifies(tmp_path):
    manifest = verify_version_dir(full_version(tmp_path / "seq" / "1"))
    assert manifest.preprocessing and manifest.evaluation and manifest.reference


@pytest.mark.parametrize("key", NAMED)
@pytest.mark.parametrize("path", ["../../x", "/etc/passwd", "preprocessing/../../x"])
def test_every_file_the_manifest_names_is_confined_to_the_version(tmp_path, key, path):
    root = full_version(tmp_path / "seq" / "1")
    rewrite_manifest(root, name_file(key, path))
    with pytest.raises(ArtifactError, match=rf"{re.escape(key)} {re.escape(repr(path))} leads outside the version"):
        verify_version_dir(root)


@pytest.mark.parametrize("key", NAMED)
def test_every_file_the_manifest_names_is_one_it_checksums(tmp_path, key):
    root = full_version(tmp_path / "seq" / "1")
    (root / "unlisted.bin").write_bytes(b"not checksummed")
    rewrite_manifest(root, name_file(key, "unlisted.bin"))
    with pytest.raises(ArtifactError, match=rf"{re.escape(key)} 'unlisted.bin' is not listed in the manifest's files"):
        verify_version_dir(root)


def test_a_named_file_leading_outside_by_a_symlink_is_refused(tmp_path):
    root = full_version(tmp_path / "seq" / "1")
    (tmp_path / "secret.json").write_text("{}")
    (root / "link.json").symlink_to(tmp_path / "secret.json")
    rewrite_manifest(root, name_file("reference.file", "link.json"))
    with pytest.raises(ArtifactError, match=r"reference\.file 'link\.json' resolves outside the version directory"):
        verify_version_dir(root)


def test_an_eval_set_checksum_unlike_its_files_record_is_refused(tmp_path):
    root = full_version(tmp_path / "seq" / "1")
    rewrite_manifest(root, lambda m: m["evaluation"].update({"data_sha256": "0" * 64}))
    with pytest.raises(ArtifactError, match=r"evaluation\.data_sha256 is not the checksum"):
        verify_version_dir(root)


def test_auxiliary_files_are_checked_as_they_are_read_even_in_a_version_never_verified(tmp_path):
    root = full_version(tmp_path / "seq" / "1")
    manifest = read_manifest(root)
    assert read_version_reference(root, manifest).source == "tests"
    assert read_eval_set(root, ["x"])[1].shape == (64,)
    forged = (root / REFERENCE_FILE).read_text().replace('"tests"', '"TESTS"')  # same size, other bytes
    (root / REFERENCE_FILE).write_text(forged)
    with pytest.raises(ArtifactError, match=r"checksum mismatch for reference\.json"):
        read_version_reference(root, manifest)
    np.savez_compressed(root / EVAL_FILE, x=np.zeros((2, 8), np.float32), labels=np.zeros(2))
    with pytest.raises(ArtifactError, match=r"evaluation\.npz"):
        read_eval_set(root, ["x"])
    rewrite_manifest(root, name_file("reference.file", "../../x"))
    with pytest.raises(ArtifactError, match=r"reference\.file '\.\./\.\./x' leads outside"):
        read_version_reference(root, read_manifest(root))


def test_read_verified_reads_no_more_than_the_manifest_says(tmp_path):
    root = full_version(tmp_path / "seq" / "1")
    manifest = read_manifest(root)
    with open(root / REFERENCE_FILE, "ab") as f:
        f.write(b" " * (1 << 20))
    with pytest.raises(ArtifactError, match="the file was changed or truncated"):
        read_verified(root, manifest, REFERENCE_FILE, "reference.file")

import json
from pathlib import Path

import onnx
import pytest

from convert.package import next_version, publish, staging_dir
from runtime.engine.artifact import onnx_external_data_locations, verify_version_dir
from runtime.engine.errors import ArtifactError
from runtime.engine.manifest import MANIFEST, write_manifest
from runtime.engine.repository import list_versions, version_dir
from tests.fixtures.artifacts import add_model


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

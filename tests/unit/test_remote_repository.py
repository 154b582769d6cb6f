"""Remote repositories (runtime.engine.remote) against a pyarrow LocalFileSystem standing in for a store:
URI parsing, the publish order, and a cache that refuses what does not match its manifest."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs
import pytest

from runtime.engine.errors import ArtifactError, VersionExists
from runtime.engine.manifest import MANIFEST
from runtime.engine.remote import RemoteRepository, RepositoryError, is_remote, local_path, parse_version_uri
from runtime.engine.repository import repository_location
from tests.fixtures.artifacts import sequence_model


class Recording:
    """A pyarrow filesystem that records the files opened for writing, and may fail the n-th one."""

    def __init__(self, fs, fail_at: int | None = None) -> None:
        self.fs, self.written, self.fail_at = fs, [], fail_at

    def open_output_stream(self, path, *args, **kwargs):
        self.written.append(path)
        if self.fail_at is not None and len(self.written) == self.fail_at:
            raise OSError("connection reset by peer")
        return self.fs.open_output_stream(path, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.fs, name)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("TRTSERVE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "bucket").mkdir()
    return RemoteRepository.on(Recording(pyarrow.fs.LocalFileSystem()), str(tmp_path / "bucket" / "models"))


@pytest.fixture
def built(tmp_path) -> Path:
    return sequence_model(tmp_path / "build" / "seq" / "1")


def test_uri_schemes_are_told_apart_and_unsupported_ones_refused():
    assert is_remote("s3://bucket/prefix") and is_remote("gs://bucket/p") and is_remote("S3://b/p")
    assert not is_remote("model_repository") and not is_remote("/abs/path") and not is_remote("file:///tmp/r")
    assert local_path("file:///tmp/r") == Path("/tmp/r")
    for uri in ("http://example.com/models", "hdfs://nn/models", "azure://c/m", "ftp://h/m"):
        with pytest.raises(RepositoryError, match="scheme is not supported"):
            is_remote(uri)
        with pytest.raises(RepositoryError):
            repository_location(uri)  # never taken as a local path
    assert repository_location("s3://bucket/prefix?region=us-east-1") == "s3://bucket/prefix?region=us-east-1"


def test_version_uris_name_the_repository_model_and_version():
    uri = parse_version_uri("s3://bucket/a/b/cnn/3?endpoint_override=127.0.0.1:9000&scheme=http")
    assert (uri.repository, uri.name, uri.version) == (
        "s3://bucket/a/b?endpoint_override=127.0.0.1:9000&scheme=http",
        "cnn",
        3,
    )
    assert parse_version_uri("s3://bucket/cnn/1").repository == "s3://bucket"
    for bad in ("s3://bucket/cnn", "s3://bucket/cnn/latest", "s3://bucket/cnn/0"):
        with pytest.raises(RepositoryError, match="MODEL/VERSION"):
            parse_version_uri(bad)


def test_publish_uploads_every_file_before_the_manifest_and_never_overwrites(store, built):
    uri = store.publish(built, "seq", 1)
    assert uri.endswith("/seq/1")
    written = [p.rsplit("/seq/1/", 1)[1] for p in store.fs.written]
    assert written[-1] == MANIFEST and written.count(MANIFEST) == 1
    files = sorted(p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert sorted(written[:-1]) == files
    assert store.versions("seq") == [1] and store.resolve("seq") == 1
    with pytest.raises(VersionExists, match="never overwritten"):
        store.publish(built, "seq", 1)
    with pytest.raises(VersionExists):
        store.next_version("seq", 1)
    assert store.next_version("seq", None) == 2


def test_a_failed_upload_leaves_no_version_behind(tmp_path, monkeypatch, built):
    monkeypatch.setenv("TRTSERVE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "bucket" / "models"
    root.mkdir(parents=True)
    failing = RemoteRepository.on(Recording(pyarrow.fs.LocalFileSystem(), fail_at=2), str(root))
    with pytest.raises(RepositoryError, match="connection reset"):
        failing.publish(built, "seq", 1)
    assert not (root / "seq" / "1").exists()
    assert failing.versions("seq") == []


def test_latest_is_the_highest_version_with_a_manifest_and_a_half_upload_keeps_its_number(store, built, tmp_path):
    store.publish(built, "seq", 1)
    half = tmp_path / "bucket" / "models" / "seq" / "2"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"partial")  # an upload that never reached its manifest
    assert store.versions("seq") == [1] and store.resolve("seq", "latest") == 1
    with pytest.raises(ArtifactError, match="no version 2"):
        store.resolve("seq", 2)
    assert store.next_version("seq", None) == 3
    with pytest.raises(ArtifactError, match="no versions of model 'other'"):
        store.resolve("other")


def test_fetch_verifies_the_download_and_reuses_a_verified_cache(store, built, tmp_path):
    store.publish(built, "seq", 1)
    local = store.fetch("seq")
    assert local == tmp_path / "cache" / "s3" / store.root.lstrip("/") / "seq" / "1"
    assert (local / MANIFEST).read_bytes() == (built / MANIFEST).read_bytes()
    assert store.fetch("seq", 1) == local  # reused
    assert not [p for p in local.parent.iterdir() if p.name.startswith(".fetch-")]  # no temporary left


def test_a_tampered_download_is_refused_and_nothing_is_cached(store, built, tmp_path):
    store.publish(built, "seq", 1)
    remote_onnx = tmp_path / "bucket" / "models" / "seq" / "1" / "model.onnx"
    remote_onnx.write_bytes(remote_onnx.read_bytes()[:-8] + b"tampered")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        store.fetch("seq", 1)
    cached = store.cache_dir("seq", 1)
    assert not cached.exists() and not list(cached.parent.iterdir())


def test_a_cached_copy_changed_on_disk_or_unlike_the_store_is_downloaded_again(store, built, tmp_path):
    store.publish(built, "seq", 1)
    local = store.fetch("seq", 1)
    good = (local / "model.onnx").read_bytes()
    (local / "model.onnx").write_bytes(b"corrupted on the node's disk")
    assert (store.fetch("seq", 1) / "model.onnx").read_bytes() == good
    # Another store (same bucket path, other content) must not be served from this cache.
    other_build = sequence_model(tmp_path / "other" / "seq" / "1", scale=3.0)
    remote = tmp_path / "bucket" / "models" / "seq" / "1"
    for path in other_build.rglob("*"):
        if path.is_file():
            (remote / path.relative_to(other_build)).write_bytes(path.read_bytes())
    assert (store.fetch("seq", 1) / MANIFEST).read_bytes() == (other_build / MANIFEST).read_bytes()


def test_a_manifest_path_leading_outside_the_version_is_refused(store, built, tmp_path):
    import json

    store.publish(built, "seq", 1)
    manifest_path = tmp_path / "bucket" / "models" / "seq" / "1" / MANIFEST
    doc = json.loads(manifest_path.read_text())
    doc["files"]["../../escape"] = next(iter(doc["files"].values()))
    manifest_path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="outside"):
        store.fetch("seq", 1)
    assert not (store.cache_dir("seq", 1).parent.parent / "escape").exists()

"""Remote repositories (runtime.engine.remote) against a pyarrow LocalFileSystem standing in for a store:
URI parsing, the publish layout (each publisher's own upload, committed by one conditional write of the
manifest), racing publishers, and a cache that refuses what does not match its manifest."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pyarrow.fs
import pytest

from runtime.engine.artifact import verify_version_dir
from runtime.engine.errors import ArtifactError, VersionExists
from runtime.engine.manifest import MANIFEST, UPLOADS, read_manifest
from runtime.engine.remote import RemoteRepository, RepositoryError, is_remote, local_path, parse_version_uri
from runtime.engine.repository import repository_location
from tests.fixtures.artifacts import sequence_model
from tests.fixtures.races import one_winner, race


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


def bucket(tmp_path) -> Path:
    return tmp_path / "bucket" / "models"


def uploads(tmp_path) -> list[str]:
    folder = bucket(tmp_path) / "seq" / UPLOADS
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_publish_uploads_its_own_folder_then_commits_the_manifest_and_never_overwrites(store, built, tmp_path):
    real_commit = store._commit
    store._commit = lambda path, data: store.fs.written.append(path) or real_commit(path, data)
    uri, manifest = store.publish(built, "seq", 1)
    assert uri.endswith("/seq/1") and manifest.version == 1
    assert manifest.files_under == f"{UPLOADS}/{uploads(tmp_path)[0]}"
    *files, commit = [p.rsplit("/seq/", 1)[1] for p in store.fs.written]
    assert commit == f"1/{MANIFEST}"  # one write, after every upload
    assert sorted(files) == sorted(f"{manifest.files_under}/{rel}" for rel in read_manifest(built).files)
    assert sorted(p.name for p in (bucket(tmp_path) / "seq" / "1").iterdir()) == [MANIFEST]
    assert store.versions("seq") == [1] and store.resolve("seq") == 1
    with pytest.raises(VersionExists, match="never overwritten"):
        store.publish(built, "seq", 1)
    with pytest.raises(VersionExists):
        store.next_version("seq", 1)
    assert store.next_version("seq", None) == 2
    assert len(uploads(tmp_path)) == 1


def test_a_failed_upload_leaves_no_version_and_no_files_behind(tmp_path, monkeypatch, built):
    monkeypatch.setenv("TRTSERVE_CACHE", str(tmp_path / "cache"))
    root = bucket(tmp_path)
    root.mkdir(parents=True)
    failing = RemoteRepository.on(Recording(pyarrow.fs.LocalFileSystem(), fail_at=1), str(root))
    with pytest.raises(RepositoryError, match="connection reset"):
        failing.publish(built, "seq", 1)
    assert not (root / "seq" / "1").exists() and uploads(tmp_path) == []
    assert failing.versions("seq") == []


def test_latest_is_the_highest_version_with_a_manifest_and_a_half_upload_keeps_its_number(store, built, tmp_path):
    store.publish(built, "seq", 1)
    half = bucket(tmp_path) / "seq" / "2"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"partial")  # an older trtserve's upload that never reached its manifest
    assert store.versions("seq") == [1] and store.resolve("seq", "latest") == 1
    with pytest.raises(ArtifactError, match="no version 2"):
        store.resolve("seq", 2)
    assert store.next_version("seq", None) == 3
    with pytest.raises(ArtifactError, match="no versions of model 'other'"):
        store.resolve("other")


def test_fetch_verifies_the_download_and_reuses_a_verified_cache(store, built, tmp_path):
    _, manifest = store.publish(built, "seq", 1)
    local = store.fetch("seq")
    assert local == tmp_path / "cache" / "s3" / store.root.lstrip("/") / "seq" / "1"
    assert read_manifest(local) == manifest and verify_version_dir(local).files == read_manifest(built).files
    assert store.fetch("seq", 1) == local  # reused
    assert not [p for p in local.parent.iterdir() if p.name.startswith(".fetch-")]  # no temporary left


def test_a_version_laid_out_the_old_way_still_reads(store, built, tmp_path):
    shutil.copytree(built, bucket(tmp_path) / "seq" / "1")  # files beside the manifest, no files_under
    assert store.versions("seq") == [1]
    local = store.fetch("seq")
    assert (local / MANIFEST).read_bytes() == (built / MANIFEST).read_bytes()
    assert verify_version_dir(local).files_under is None


def test_a_tampered_download_is_refused_and_nothing_is_cached(store, built, tmp_path):
    _, manifest = store.publish(built, "seq", 1)
    remote_onnx = bucket(tmp_path) / "seq" / manifest.files_under / "model.onnx"
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
    shutil.rmtree(bucket(tmp_path) / "seq")
    other_build = sequence_model(tmp_path / "other" / "seq" / "1", scale=3.0)
    _, other = store.publish(other_build, "seq", 1)
    assert read_manifest(store.fetch("seq", 1)) == other
    assert (store.fetch("seq", 1) / "model.onnx").read_bytes() == (other_build / "model.onnx").read_bytes()


def _rewrite_committed(tmp_path, change) -> None:
    path = bucket(tmp_path) / "seq" / "1" / MANIFEST
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_a_manifest_path_leading_outside_the_version_is_refused(store, built, tmp_path):
    store.publish(built, "seq", 1)
    _rewrite_committed(tmp_path, lambda doc: doc["files"].update({"../../escape": next(iter(doc["files"].values()))}))
    with pytest.raises(ArtifactError, match="outside"):
        store.fetch("seq", 1)
    assert not (store.cache_dir("seq", 1).parent.parent / "escape").exists()


@pytest.mark.parametrize("files_under", ["../../other/1", f"{UPLOADS}/../../x", "1", f"{UPLOADS}/ABC"])
def test_a_manifest_naming_a_folder_other_than_an_upload_is_refused(store, built, tmp_path, files_under):
    store.publish(built, "seq", 1)
    _rewrite_committed(tmp_path, lambda doc: doc.update({"files_under": files_under}))
    with pytest.raises(ArtifactError, match="files_under"):
        store.fetch("seq", 1)


def racing(store: RemoteRepository, barrier: threading.Barrier) -> RemoteRepository:
    """`store`, holding its first commit until every racer has uploaded: the conditional write decides."""
    real_commit = store._commit
    held: list[str] = []

    def commit(path: str, data: bytes) -> bool:
        if not held:
            held.append(path)
            barrier.wait(timeout=30)
        return real_commit(path, data)

    store._commit = commit
    return store


@pytest.fixture
def two_builds(tmp_path) -> list[Path]:
    """Two builds of one version whose files differ, so a mix of them cannot verify."""
    return [sequence_model(tmp_path / f"build-{i}" / "seq" / "1", scale=2.0 + i) for i in range(2)]


def test_racing_publishers_of_one_version_leave_one_winner_and_no_trace_of_the_loser(tmp_path, two_builds):
    root = str(bucket(tmp_path))
    barrier = threading.Barrier(2)
    stores = [racing(RemoteRepository.on(pyarrow.fs.LocalFileSystem(), root), barrier) for _ in two_builds]
    outcomes = race([lambda s=s, b=b: s.publish(b, "seq", 1) for s, b in zip(stores, two_builds, strict=True)])
    index, (_, manifest) = one_winner(outcomes, tuple)
    assert uploads(tmp_path) == [manifest.files_under.split("/")[1]]  # the loser removed its own upload only
    winner = two_builds[index]
    local = stores[0].fetch("seq", 1)
    assert verify_version_dir(local).files == read_manifest(winner).files


def test_racing_publishers_free_to_renumber_take_one_number_each(tmp_path, two_builds):
    root = str(bucket(tmp_path))
    barrier = threading.Barrier(2)
    stores = [racing(RemoteRepository.on(pyarrow.fs.LocalFileSystem(), root), barrier) for _ in two_builds]
    publishers = [
        lambda s=s, b=b: s.publish(b, "seq", 1, take_next=True) for s, b in zip(stores, two_builds, strict=True)
    ]
    outcomes = race(publishers)
    assert all(isinstance(o, tuple) for o in outcomes), outcomes
    assert sorted(m.version for _, m in outcomes) == [1, 2] and stores[0].versions("seq") == [1, 2]
    for (uri, manifest), build in zip(outcomes, two_builds, strict=True):
        assert uri.endswith(f"/seq/{manifest.version}")
        local = stores[0].fetch("seq", manifest.version)
        assert read_manifest(local).version == manifest.version
        assert verify_version_dir(local).files == read_manifest(build).files
    assert len(uploads(tmp_path)) == 2


def test_a_commit_that_landed_though_it_was_answered_taken_keeps_its_files(store, built, tmp_path):
    real_put = store._put_if_absent

    def put_then_refused(path: str, data: bytes) -> None:  # as a retried S3 PUT whose first try landed: 412
        real_put(path, data)
        real_put(path, data)

    store._put_if_absent = put_then_refused
    _, manifest = store.publish(built, "seq", 1)
    assert uploads(tmp_path) == [manifest.files_under.split("/")[1]]
    assert verify_version_dir(store.fetch("seq", 1)).files == read_manifest(built).files


class LooksLikeGcs(Recording):
    """A store pyarrow cannot send a precondition to (gs://): the commit looks, then writes."""

    type_name = "gcs"


def test_a_store_without_conditional_writes_still_commits_one_manifest_naming_its_own_files(tmp_path, built):
    store = RemoteRepository.on(LooksLikeGcs(pyarrow.fs.LocalFileSystem()), str(bucket(tmp_path)), scheme="gs")
    _, manifest = store.publish(built, "seq", 1)
    assert read_manifest(store.fetch("seq", 1)) == manifest and store.versions("seq") == [1]
    store._numbered = lambda name: []  # as if the number was free when this publish looked first
    with pytest.raises(VersionExists, match="version 1 exists"):
        store.publish(built, "seq", 1)
    assert uploads(tmp_path) == [manifest.files_under.split("/")[1]]

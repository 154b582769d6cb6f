"""A model repository in S3 (moto's server on loopback): `convert build` publishes there, `convert check`
and `inspect` read version URIs, unsupported schemes are refused, and Ray Serve serves from it, each
replica from its own verified download. Publishers racing for one version: S3's conditional write of
the manifest (`If-None-Match: *`) leaves exactly one winner, and the loser removes only its own upload."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from benchmarks.s3_server import s3_server
from runtime.engine.artifact import verify_version_dir
from runtime.engine.loader import load_engine
from runtime.engine.manifest import MANIFEST, UPLOADS, read_manifest
from runtime.engine.remote import RemoteRepository
from runtime.serve.launcher import LocalServe
from tests.conftest import run_convert
from tests.fixtures.artifacts import sequence_model
from tests.fixtures.races import one_winner, race
from tests.integration.test_launcher import free_port
from tests.unit.test_remote_repository import racing


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    cache = tmp_path_factory.mktemp("trtserve-cache")
    saved = os.environ.get("TRTSERVE_CACHE")
    os.environ["TRTSERVE_CACHE"] = str(cache)
    try:
        with s3_server() as server:
            server.repository = server.bucket("models") + "/prod"
            server.cache = cache
            yield server
    finally:
        if saved is None:
            os.environ.pop("TRTSERVE_CACHE", None)
        else:
            os.environ["TRTSERVE_CACHE"] = saved


@pytest.fixture(scope="module")
def published(s3):
    proc = run_convert("build", "configs/models/cnn.yaml", "--repository", s3.repository)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{s3.repository}/cnn/1"
    return f"{s3.repository}/cnn/1"


def test_build_publishes_a_complete_version_that_check_and_inspect_read(s3, published, tmp_path):
    store = RemoteRepository(s3.repository)
    assert store.versions("cnn") == [1]
    check = run_convert("check", published)
    assert check.returncode == 0, check.stderr
    assert "ok (" in check.stdout and "engines pass parity here" in check.stdout
    inspect = run_convert("inspect", published, "--json")
    assert inspect.returncode == 0, inspect.stderr
    info = json.loads(inspect.stdout)
    assert info["kind"] == "version" and info["integrity"].startswith("ok")
    assert info["manifest"]["name"] == "cnn" and info["manifest"]["version"] == 1

    again = run_convert("build", "configs/models/cnn.yaml", "--repository", s3.repository, "--version", "1")
    assert again.returncode == 2 and "never overwritten" in again.stderr and "Traceback" not in again.stderr
    assert store.versions("cnn") == [1]


def test_an_unsupported_scheme_is_refused_not_taken_as_a_path(tmp_path):
    for command in (
        ["build", str(Path("configs/models/cnn.yaml").resolve()), "--repository", "http://example.com/models"],
        ["check", "ftp://host/models/cnn/1"],
    ):
        proc = run_convert(*command, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "scheme is not supported" in proc.stderr and "Traceback" not in proc.stderr
        assert list(tmp_path.iterdir()) == []  # no directory named "http:" or "ftp:"


@pytest.fixture
def two_builds(tmp_path) -> list[Path]:
    """Two builds of one version whose files differ, so a mix of them cannot verify."""
    return [sequence_model(tmp_path / f"build-{i}" / "seq" / "1", scale=2.0 + i) for i in range(2)]


def upload_folders(store: RemoteRepository, name: str) -> list[str]:
    import pyarrow.fs

    selector = pyarrow.fs.FileSelector(f"{store.root}/{name}/{UPLOADS}", allow_not_found=True)
    return sorted(
        Path(i.path).name for i in store.fs.get_file_info(selector) if i.type == pyarrow.fs.FileType.Directory
    )


def racers(s3, bucket: str, count: int) -> list[RemoteRepository]:
    """Publishers of one repository, each holding its commit until all have uploaded."""
    uri = s3.bucket(bucket) + "/models"
    barrier = threading.Barrier(count)
    return [racing(RemoteRepository(uri), barrier) for _ in range(count)]


def test_publishers_racing_for_one_version_in_s3_leave_one_winner(s3, two_builds):
    stores = racers(s3, "race-one", 2)
    outcomes = race([lambda s=s, b=b: s.publish(b, "seq", 1) for s, b in zip(stores, two_builds, strict=True)])
    index, (_, manifest) = one_winner(outcomes, tuple)
    assert upload_folders(stores[0], "seq") == [manifest.files_under.split("/")[1]]  # the loser's is gone
    winner = two_builds[index]
    assert stores[1].versions("seq") == [1]
    assert verify_version_dir(stores[1].fetch("seq", 1)).files == read_manifest(winner).files


def test_publishers_racing_without_a_version_in_s3_take_one_number_each(s3, two_builds):
    stores = racers(s3, "race-next", 2)
    outcomes = race(
        [lambda s=s, b=b: s.publish(b, "seq", 1, take_next=True) for s, b in zip(stores, two_builds, strict=True)]
    )
    assert all(isinstance(o, tuple) for o in outcomes), outcomes
    assert sorted(m.version for _, m in outcomes) == [1, 2] and stores[0].versions("seq") == [1, 2]
    for (_, manifest), build in zip(outcomes, two_builds, strict=True):
        local = stores[0].fetch("seq", manifest.version)
        assert read_manifest(local).version == manifest.version
        assert verify_version_dir(local).files == read_manifest(build).files
    assert len(upload_folders(stores[0], "seq")) == 2


def test_a_version_laid_out_the_old_way_in_s3_still_reads(s3, two_builds):
    import pyarrow.fs

    store = RemoteRepository(s3.bucket("old-layout") + "/models")
    build = two_builds[0]
    for path in sorted(p for p in build.rglob("*") if p.is_file()):  # files beside the manifest, manifest last
        with store.fs.open_output_stream(f"{store.root}/seq/1/{path.relative_to(build).as_posix()}") as sink:
            sink.write(path.read_bytes())
    assert store.versions("seq") == [1]
    local = store.fetch("seq", 1)
    assert (local / MANIFEST).read_bytes() == (build / MANIFEST).read_bytes()
    assert store.fs.get_file_info(f"{store.root}/seq/{UPLOADS}").type == pyarrow.fs.FileType.NotFound


@pytest.mark.slow  # a minute of the default tier
def test_serve_from_s3_answers_from_a_verified_download(s3, published, tmp_path):
    port = free_port()
    app = {
        "name": "remote",
        "route_prefix": "/",
        "import_path": "runtime.serve.app:build_app",
        "args": {"repository": s3.repository, "models": [{"name": "cnn", "version": "latest"}]},
    }
    doc = {"proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": port}, "applications": [app]}
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    image = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    # The Python proxy: HAProxy binds fixed stats ports, taken while the session's other server runs.
    with LocalServe(config, ingress="proxy", log_path=tmp_path / "serve.log"):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
        request = httpclient.InferInput("image", list(image.shape), "FP32")
        request.set_data_from_numpy(image)
        answer = client.infer("cnn", [request]).as_numpy("logits")
    cached = s3.cache / "s3" / "models" / "prod" / "cnn" / "1"
    assert (cached / MANIFEST).is_file()
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".fetch-")]
    with load_engine(cached) as engine:
        np.testing.assert_allclose(answer, engine.infer({"image": image})["logits"], rtol=1e-5, atol=1e-5)


def test_batch_from_s3_reads_the_repository_and_the_input_there(s3, published, tmp_path):
    import pyarrow as pa
    import pyarrow.fs
    import pyarrow.parquet as pq

    from tests.integration.test_batch import outputs, trtserve_batch

    x = np.random.default_rng(9).standard_normal((64, 3, 32, 32)).astype(np.float32)
    table = pa.table({"id": [f"s{i}" for i in range(64)], "image": pa.FixedShapeTensorArray.from_numpy_ndarray(x)})
    fs, root = pyarrow.fs.FileSystem.from_uri("s3://models/inputs")
    pq.write_table(table, f"{root}/images.parquet", filesystem=fs)
    out = tmp_path / "out"
    proc = trtserve_batch("cnn:1", "--repository", s3.repository, "--input", "s3://models/inputs/images.parquet",
                          "--output", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = outputs(out)
    with load_engine(s3.cache / "s3" / "models" / "prod" / "cnn" / "1") as engine:
        expected = engine.infer({"image": x})["logits"]
    order = [int(i[1:]) for i in got["id"].to_pylist()]
    np.testing.assert_allclose(got["logits"].combine_chunks().to_numpy_ndarray(), expected[order], rtol=1e-5, atol=1e-5)

"""Our records in a Ray Serve replica's log file (runtime.serve.replica_log): the lines Ray's handlers would
write, into the file they write, rotated as they rotate it, without their per-record file-system calls. The
handlers are built here as ray.serve._private.logging_utils.configure_component_logger builds a replica's."""

import json
import logging
import logging.handlers
import os

import pytest
from ray._common.formatters import JSONFormatter

from runtime.engine.credentials import install_scrubbing
from runtime.serve.replica_log import ReplicaLogFile, writing_directly


class ReplicaContext(logging.Filter):
    """Stands for Ray's context filters: adds what they add."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.replica = "trtserve#abc"
        return True


def dropped(record: logging.LogRecord) -> bool:
    return not getattr(record, "drop", False)


@pytest.fixture
def loggers(tmp_path):
    """(Ray's logger, ours, the log file): Ray's through a MemoryHandler of capacity 1 in front of a
    RotatingFileHandler writing JSON; ours through writing_directly of the same handlers."""

    def build(max_bytes: int = 0, backups: int = 0):
        path = tmp_path / "replica_trtserve_abc.log"
        file = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
        file.setFormatter(JSONFormatter())
        front = logging.handlers.MemoryHandler(capacity=1, target=file, flushLevel=logging.ERROR)
        front.addFilter(ReplicaContext())
        front.addFilter(dropped)
        install_scrubbing(front)
        stderr = logging.StreamHandler()
        theirs, ours = logging.getLogger(f"test.ray.{id(file)}"), logging.getLogger(f"test.ours.{id(file)}")
        theirs.handlers = [stderr, front]
        ours.handlers = writing_directly(theirs.handlers)
        for logger in (theirs, ours):
            logger.setLevel(logging.INFO)
            logger.propagate = False
        built.append(file)
        return theirs, ours, path

    built: list[logging.Handler] = []
    yield build
    for file in built:
        file.close()


def _records(*paths) -> list[dict]:
    return [json.loads(line) for path in paths if path.exists() for line in path.read_text().splitlines()]


def test_our_lines_are_the_lines_ray_writes_with_its_context_and_scrubbed(loggers):
    theirs, ours, path = loggers()
    assert [type(h).__name__ for h in ours.handlers] == ["StreamHandler", "ReplicaLogFile"]
    for logger in (theirs, ours):
        logger.info("read s3://KEY:SECRET@bucket/m", extra={"request_id": "r1", "model_version": "1"})
        logger.info("not written", extra={"drop": True})
    ray_line, our_line = _records(path)
    assert set(our_line) == set(ray_line)
    for record in (ray_line, our_line):
        assert record["replica"] == "trtserve#abc" and record["message"] == "read s3://***@bucket/m"
        assert (record["request_id"], record["model_version"]) == ("r1", "1")


def test_a_line_costs_no_call_on_the_files_path(loggers, monkeypatch):
    theirs, ours, _ = loggers(max_bytes=1 << 30, backups=1)
    calls = []
    for name in ("exists", "isfile"):
        real = getattr(os.path, name)
        monkeypatch.setattr(os.path, name, lambda p, real=real, name=name: calls.append(name) or real(p))
    for _ in range(10):
        ours.info("ok")
    assert calls == []
    theirs.info("ok")
    assert calls == ["exists", "isfile"]  # Python 3.11's shouldRollover, on every record


def test_the_file_rolls_over_as_rays_does_and_both_go_on_writing_the_current_one(loggers):
    theirs, ours, path = loggers(max_bytes=1500, backups=2)
    for i in range(60):
        (ours if i % 3 else theirs).info("line %d", i, extra={"request_id": f"r{i}"})
    files = [path, path.with_name(path.name + ".1"), path.with_name(path.name + ".2")]
    assert all(f.exists() and 0 < f.stat().st_size < 1500 for f in files)
    assert not path.with_name(path.name + ".3").exists()  # backupCount kept
    written = [int(r["request_id"][1:]) for r in _records(*reversed(files))]
    assert written == list(range(60 - len(written), 60))  # in order, none lost across the rollovers
    assert {"r57", "r59"} <= {r["request_id"] for r in _records(path)}  # Ray's last line and ours: the current file


def test_a_file_that_is_not_a_regular_file_is_never_rolled_over(tmp_path):
    file = logging.handlers.RotatingFileHandler(os.devnull, maxBytes=10, backupCount=1)
    front = logging.handlers.MemoryHandler(capacity=1, target=file)
    logger = logging.getLogger("test.devnull")
    logger.handlers, logger.propagate = [ReplicaLogFile(front)], False
    logger.warning("a line longer than ten bytes")
    assert os.path.exists(os.devnull) and not os.path.exists(os.devnull + ".1")
    file.close()

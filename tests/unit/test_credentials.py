"""Credentials in a repository URI never reach a message, a log line or a CLI's output
(runtime.engine.credentials, and the errors and repositories that use it)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from convert.command_line import main as convert_main
from runtime.cli import main as trtserve_main
from runtime.engine.credentials import ScrubCredentials, install_scrubbing, log_through, scrub
from runtime.engine.errors import ArtifactError, TrtserveError
from runtime.engine.remote import RemoteRepository, RepositoryError, is_remote, parse_version_uri

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"  # an AWS-style secret: it may hold "/" and "+"
KEY = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://AKIA:secret@bucket/models", "s3://***@bucket/models"),
        (f"s3://{KEY}:{SECRET}@bucket/m/1: failed", "s3://***@bucket/m/1: failed"),
        ("gs://user@bucket/p", "gs://***@bucket/p"),
        ("http://u:p%40ss@host:9000/x and ftp://a:b@c/d", "http://***@host:9000/x and ftp://***@c/d"),
        ("'s3://K:S@b/p' is not a model", "'s3://***@b/p' is not a model"),
        ("s3://b/p?region=eu&secret_key=abc&x=1", "s3://b/p?region=eu&secret_key=***&x=1"),
        ("s3://b/p?access_key=AK&session_token=T0K", "s3://b/p?access_key=***&session_token=***"),
        (
            "https://h/o?X-Amz-Credential=c&X-Amz-Signature=s&sig=z",
            "https://h/o?X-Amz-Credential=***&X-Amz-Signature=***&sig=***",
        ),
        ("gs://b/p?access_token=ya29.x&scheme=http", "gs://b/p?access_token=***&scheme=http"),
        ("s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http", None),
        ("/local/repository/cnn/1: checksum mismatch", None),
    ],
)
def test_scrub_masks_userinfo_and_secret_query_values_only(text, expected):
    assert scrub(text) == (text if expected is None else expected)
    assert scrub(scrub(text)) == scrub(text)


def test_every_trtserve_error_is_scrubbed_when_made():
    for error in (TrtserveError, ArtifactError, RepositoryError):
        assert SECRET not in str(error(f"s3://{KEY}:{SECRET}@bucket/m: failed"))
    assert TrtserveError("plain", 3).args == ("plain", 3)


def test_repository_messages_name_the_uri_without_its_credentials():
    uri = f"s3://{KEY}:{SECRET.replace('/', '%2F')}@bucket/models?endpoint_override=127.0.0.1:1&region=us-east-1"
    store = RemoteRepository(uri)
    assert store.uri == uri  # pyarrow and boto3 get the real one
    assert store.version_uri("cnn", 3) == "s3://***@bucket/models/cnn/3"
    assert KEY not in store.display and "K7MDENG" not in store.display

    class Unreachable:  # the store's client failing as pyarrow's does, naming what it tried
        def get_file_info(self, *args):
            raise OSError("AWS Error NETWORK_CONNECTION during ListObjectsV2 operation")

    store.fs = Unreachable()
    with pytest.raises(RepositoryError, match="NETWORK_CONNECTION") as caught:
        store.versions("cnn")
    assert str(caught.value).startswith("s3://***@bucket/models?endpoint_override=127.0.0.1:1&region=us-east-1: ")
    assert KEY not in str(caught.value) and "K7MDENG" not in str(caught.value)
    with pytest.raises(RepositoryError, match="MODEL/VERSION") as no_version:
        parse_version_uri(f"s3://{KEY}:{SECRET}@bucket/cnn")
    with pytest.raises(RepositoryError, match="not supported") as unsupported:
        is_remote(f"hdfs://{KEY}:{SECRET}@nn/m")
    for caught in (no_version, unsupported):
        assert SECRET not in str(caught.value) and KEY not in str(caught.value)


def test_an_unparseable_uri_echoed_by_pyarrow_is_scrubbed():
    with pytest.raises(RepositoryError, match="cannot open the repository") as caught:
        RemoteRepository(f"s3://{KEY}:{SECRET}@bucket/models")  # a raw "/" in the secret: pyarrow echoes the URI
    assert "/K7MDENG" not in str(caught.value) and KEY not in str(caught.value)


class Collect(logging.Handler):
    """A handler that keeps what it writes."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.written: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.written.append(self.format(record))


def test_the_log_filter_scrubs_messages_arguments_and_tracebacks():
    handler = Collect()
    records = handler.written
    handler.addFilter(ScrubCredentials())
    logger = logging.getLogger("trtserve.tests.credentials")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("opening %s", f"s3://{KEY}:{SECRET}@bucket/m")
        logger.warning(f"literal s3://{KEY}:{SECRET}@bucket/m")
        try:
            raise OSError(f"Cannot parse URI: 's3://{KEY}:{SECRET}@bucket'")
        except OSError:
            logger.exception("failed")
        logger.warning("nothing secret %d", 1)
    finally:
        logger.removeHandler(handler)
    assert len(records) == 4 and records[-1] == "nothing secret 1"
    assert "Traceback" in records[2] and "s3://***@bucket" in records[2]
    assert not [r for r in records if SECRET in r or KEY in r]


@pytest.fixture
def logging_as_it_was():
    """convert's main() sets up logging for a process: put it back for the tests after this one."""
    root, ours = logging.getLogger(), logging.getLogger("trtserve")
    handlers, level = list(root.handlers), ours.level
    yield
    root.handlers[:] = handlers
    ours.setLevel(level)


def test_convert_never_prints_the_credentials_of_a_uri_it_refuses(capsys, logging_as_it_was):
    assert convert_main(["check", f"s3://{KEY}:{SECRET.replace('/', '%2F')}@bucket/models/cnn/latest"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert check: error: s3://***@bucket/models/cnn/latest: expected"), err
    assert KEY not in err and "K7MDENG" not in err


def test_a_logger_sent_through_anothers_handlers_is_scrubbed_there(monkeypatch):
    """`log_through`: records of ours written where a framework's go (a Ray Serve replica's), scrubbed."""
    host, ours = logging.getLogger("tests.credentials.host"), logging.getLogger("trtserve.tests.through")
    handler = Collect()
    monkeypatch.setattr(host, "handlers", [handler])
    monkeypatch.setattr(ours, "propagate", True)  # put back after: log_through turns it off
    monkeypatch.setattr(ours, "handlers", [])
    log_through(ours, host)
    log_through(ours, host)  # again, as a restarted component would: still one filter
    try:
        logging.getLogger("trtserve.tests.through.child").info("reading %s", f"s3://{KEY}:{SECRET}@bucket/m")
    finally:
        ours.setLevel(logging.NOTSET)
    assert handler.written == ["reading s3://***@bucket/m"]  # INFO too: the host's level, else INFO
    assert [type(f) for f in handler.filters] == [ScrubCredentials]
    assert not ours.propagate


def test_trtserve_never_logs_the_credentials_of_a_uri(tmp_path):
    """In a process of trtserve's CLI (one of its own: its logging is the process's), a record logged after
    any command is written to stderr scrubbed."""
    uri = f"s3://{KEY}:{SECRET}@bucket/m/.upload"
    script = (
        "import logging, sys\n"
        "from runtime.cli import main\n"
        f"assert main(['serve', {str(tmp_path / 'absent.yaml')!r}]) == 2\n"
        "print('-- after main --', file=sys.stderr)\n"
        f"logging.getLogger('trtserve.remote').warning('could not remove %s', {uri!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr.split("-- after main --\n")[1] == "could not remove s3://***@bucket/m/.upload\n", run.stderr


def test_trtserve_never_prints_the_credentials_of_an_argument_it_refuses(capsys, monkeypatch):
    monkeypatch.setattr(logging, "lastResort", type(logging.lastResort)(logging.WARNING))  # main() scrubs it
    with pytest.raises(SystemExit) as refused:
        trtserve_main(["rollout", "start", "m", "--to", "2", "--strategy", f"s3://{KEY}:{SECRET}@b/m"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 's3://***@b/m'" in err and KEY not in err and "K7MDENG" not in err
    install_scrubbing(logging.lastResort)
    assert len(logging.lastResort.filters) == 1  # installed once, however often asked

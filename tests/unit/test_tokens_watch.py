"""A tokens file edited in place applies on the replica without a redeploy (Ray rebuilds an app only when its
config changes); a replica started after an edit serves the file, not the tokens the app was built with; a
bad edit leaves the last good tokens in force; a missing or emptied file refuses every token, at a replica's
start and later; a replica never starts on a file that is there but bad (fail closed)."""

from __future__ import annotations

import logging
import os
import time

import pytest

from runtime.auth.tokens import INFER, TokensFileError, TokenTable, digest
from runtime.auth.watch import TokensFileWatcher


def _lines(*tokens: str) -> str:
    return "".join(f"infer {digest(t)}\n" for t in tokens)


def _watched(path, built_with: str):
    """A replica's view: the table the app was built with, and a watcher that replaces it."""
    held = {"table": TokenTable.parse(_lines(built_with))}
    return held, TokensFileWatcher(path, lambda table: held.update(table=table))


def test_a_replica_started_after_an_edit_serves_the_file_not_the_build(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(_lines("current-token"))
    held, watcher = _watched(path, built_with="revoked-token")
    watcher.start()
    try:
        assert held["table"].scopes_of("revoked-token") == frozenset()
        assert held["table"].scopes_of("current-token") == {INFER}
    finally:
        watcher.stop()


def test_a_revoked_token_is_refused_and_an_added_one_accepted_after_the_change(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(_lines("old-token"))
    held, watcher = _watched(path, built_with="old-token")
    assert watcher.check() and not watcher.check()  # read once, then unchanged
    path.write_text(_lines("new-token"))
    assert watcher.check() and watcher.reloads == 2
    assert held["table"].scopes_of("old-token") == frozenset()
    assert held["table"].scopes_of("new-token") == {INFER}


def test_a_same_size_edit_in_the_same_clock_tick_is_seen(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(_lines("token-aaaa"))
    held, watcher = _watched(path, built_with="token-aaaa")
    watcher.check()
    stat = path.stat()
    path.write_text(_lines("token-bbbb"))  # the same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same modification time
    assert watcher.check()
    assert held["table"].scopes_of("token-bbbb") == {INFER}


def test_a_bad_edit_keeps_the_last_good_tokens_until_it_is_fixed(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(_lines("kept-token"))
    held, watcher = _watched(path, built_with="kept-token")
    watcher.check()
    path.write_text("infer not-a-digest\n")
    assert not watcher.check() and watcher.refused == 1
    assert held["table"].scopes_of("kept-token") == {INFER}
    assert not watcher.check() and watcher.refused == 1  # the same bad file is not parsed again
    path.write_text(_lines("fixed-token"))
    assert watcher.check()
    assert held["table"].scopes_of("fixed-token") == {INFER}


def test_a_replica_starting_without_the_file_refuses_every_token_until_it_comes(tmp_path, caplog):
    path = tmp_path / "tokens.txt"
    held, watcher = _watched(path, built_with="built-token")
    with caplog.at_level(logging.ERROR, logger="trtserve.server"):
        watcher.start()  # not on this node: never the build's tokens
    try:
        assert held["table"].scopes_of("built-token") == frozenset() and not held["table"].entries
        assert "not on this node" in caplog.records[0].getMessage()
        assert not watcher.check()  # still missing: nothing new, logged once
        assert len(caplog.records) == 1
        path.write_text(_lines("b-token"))
        assert watcher.check()
        assert held["table"].scopes_of("b-token") == {INFER}
    finally:
        watcher.stop()


def test_a_file_deleted_after_it_existed_refuses_every_token(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(_lines("a-token"))
    held, watcher = _watched(path, built_with="a-token")
    assert watcher.check() and held["table"].scopes_of("a-token") == {INFER}
    path.unlink()
    assert watcher.check()
    assert held["table"].scopes_of("a-token") == frozenset()


@pytest.mark.parametrize("emptied", ["", "\n", "# every token revoked\n"])
def test_an_emptied_file_refuses_every_token(tmp_path, emptied):
    path = tmp_path / "tokens.txt"
    path.write_text(_lines("a-token"))
    held, watcher = _watched(path, built_with="a-token")
    watcher.check()
    path.write_text(emptied)
    assert watcher.check() and watcher.refused == 0  # applied, not refused as a bad edit
    assert held["table"].scopes_of("a-token") == frozenset()


def test_the_watcher_thread_revokes_within_its_interval(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(_lines("a-token"))
    held = {"table": TokenTable.parse(_lines("a-token"))}
    watcher = TokensFileWatcher(path, lambda table: held.update(table=table), every_s=0.05).start()
    try:
        path.write_text("")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and held["table"].scopes_of("a-token"):
            time.sleep(0.05)
        assert held["table"].scopes_of("a-token") == frozenset()
    finally:
        watcher.stop()


def test_a_kubernetes_secret_update_applies(tmp_path):
    # The kubelet's layout: tokens.txt -> ..data/tokens.txt, ..data -> ..2026_v1; an update writes ..2026_v2,
    # swaps ..data atomically and deletes ..2026_v1.
    secret = tmp_path / "secret"
    (secret / "..2026_v1").mkdir(parents=True)
    (secret / "..2026_v1" / "tokens.txt").write_text(_lines("v1-token"))
    (secret / "..data").symlink_to("..2026_v1")
    (secret / "tokens.txt").symlink_to("..data/tokens.txt")
    held, watcher = _watched(secret / "tokens.txt", built_with="v1-token")
    watcher.check()
    (secret / "..2026_v2").mkdir()
    (secret / "..2026_v2" / "tokens.txt").write_text(_lines("v2-token"))
    (secret / "..data_tmp").symlink_to("..2026_v2")
    (secret / "..data_tmp").replace(secret / "..data")
    (secret / "..2026_v1" / "tokens.txt").unlink()
    (secret / "..2026_v1").rmdir()
    assert watcher.check()
    assert held["table"].scopes_of("v2-token") == {INFER}


def test_the_watcher_thread_applies_a_change_by_itself(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(_lines("before"))
    held = {"table": TokenTable.parse(_lines("before"))}
    watcher = TokensFileWatcher(path, lambda table: held.update(table=table), every_s=0.05).start()
    try:
        path.write_text(_lines("after"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not held["table"].scopes_of("after"):
            time.sleep(0.05)
        assert held["table"].scopes_of("after") == {INFER}
    finally:
        watcher.stop()


def test_the_app_watches_the_path_as_given_symlinks_kept(tmp_path, monkeypatch):
    from runtime.serve.app_args import Auth

    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "tokens.txt").write_text(_lines("a-token"))
    (tmp_path / "tokens.txt").symlink_to("v1/tokens.txt")
    monkeypatch.chdir(tmp_path)
    auth = Auth(tokens_file="./sub/../tokens.txt")
    assert auth.tokens_path == tmp_path / "tokens.txt"  # absolute and normalized, not resolved to v1/
    assert auth.table.scopes_of("a-token") == {INFER}


def test_a_replica_starting_on_a_bad_file_fails_closed_never_on_the_build_tokens(tmp_path):
    # Built with a token revoked since; the file is now malformed as a replacement replica starts: serving the
    # build's table would take the revoked token back.
    path = tmp_path / "tokens.txt"
    path.write_text("infer half-written\n")
    _, watcher = _watched(path, built_with="revoked-token")
    with pytest.raises(TokensFileError, match=r"tokens\.txt:1: the second field"):
        watcher.start()
    assert not watcher._thread.is_alive()


def test_a_file_there_but_unreadable_fails_a_start_and_is_logged_once_later(tmp_path, caplog):
    path = tmp_path / "tokens.txt"
    path.mkdir()  # there, but not a readable file (root ignores permission bits, so a directory stands in)
    held, watcher = _watched(path, built_with="built-token")
    with pytest.raises(TokensFileError, match=r"cannot read the tokens file .*tokens\.txt: Is a directory"):
        watcher.start()
    path.rmdir()
    path.write_text(_lines("good-token"))
    assert watcher.check()
    path.unlink()
    path.mkdir()
    with caplog.at_level(logging.ERROR, logger="trtserve.server"):
        assert not watcher.check() and not watcher.check() and not watcher.check()
    assert watcher.refused == 1 and len(caplog.records) == 1  # a lasting problem is logged once
    assert "the last good tokens stay" in caplog.records[0].getMessage()
    assert held["table"].scopes_of("good-token") == {INFER}


def test_a_file_that_is_not_text_is_refused_with_a_line_of_reason(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_bytes(b"\xff\xfe infer")
    _, watcher = _watched(path, built_with="built-token")
    with pytest.raises(TokensFileError, match="not UTF-8 text"):
        watcher.start()

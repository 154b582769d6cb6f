"""A tokens file edited in place applies on the replica without a redeploy (Ray rebuilds an app only when its
config changes); a bad edit leaves the last good tokens in force; a missing file changes nothing."""

from __future__ import annotations

import os
import time

from runtime.auth.tokens import INFER, TokenTable, digest
from runtime.auth.watch import TokensFileWatcher


def _write(path, *tokens: str) -> None:
    path.write_text("".join(f"infer {digest(t)}\n" for t in tokens))
    os.utime(path, ns=(time.time_ns(), time.time_ns()))  # a new mtime even within the clock's granularity


def _holder(path):
    held = {"table": TokenTable.read(path)}
    watcher = TokensFileWatcher(path, lambda table: held.update(table=table))
    return held, watcher


def test_a_revoked_token_is_refused_and_an_added_one_accepted_after_the_change(tmp_path):
    path = tmp_path / "tokens.txt"
    _write(path, "old-token")
    held, watcher = _holder(path)
    assert not watcher.check()  # unchanged
    _write(path, "new-token")
    assert watcher.check() and watcher.reloads == 1
    assert held["table"].scopes_of("old-token") == frozenset()
    assert held["table"].scopes_of("new-token") == {INFER}


def test_a_bad_edit_keeps_the_last_good_tokens_until_it_is_fixed(tmp_path):
    path = tmp_path / "tokens.txt"
    _write(path, "kept-token")
    held, watcher = _holder(path)
    path.write_text("infer not-a-digest\n")
    assert not watcher.check() and watcher.refused == 1
    assert held["table"].scopes_of("kept-token") == {INFER}
    assert not watcher.check() and watcher.refused == 1  # the same bad file is not re-read
    _write(path, "fixed-token")
    assert watcher.check()
    assert held["table"].scopes_of("fixed-token") == {INFER}


def test_a_missing_file_changes_nothing_and_its_return_applies(tmp_path):
    path = tmp_path / "tokens.txt"
    _write(path, "a-token")
    held, watcher = _holder(path)
    path.unlink()
    assert not watcher.check()
    assert held["table"].scopes_of("a-token") == {INFER}
    _write(path, "b-token")
    assert watcher.check()
    assert held["table"].scopes_of("b-token") == {INFER}


def test_a_swapped_symlink_like_a_kubernetes_secret_applies(tmp_path):
    first, second, link = tmp_path / "v1", tmp_path / "v2", tmp_path / "tokens.txt"
    _write(first, "v1-token")
    _write(second, "v2-token")
    link.symlink_to(first)
    held, watcher = _holder(link)
    staged = tmp_path / "tokens.next"
    staged.symlink_to(second)
    staged.replace(link)  # atomically, as the kubelet does
    assert watcher.check()
    assert held["table"].scopes_of("v2-token") == {INFER}


def test_the_watcher_thread_applies_a_change_by_itself(tmp_path):
    path = tmp_path / "tokens.txt"
    _write(path, "before")
    held, _ = _holder(path)
    watcher = TokensFileWatcher(path, lambda table: held.update(table=table), every_s=0.05).start()
    try:
        _write(path, "after")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not held["table"].scopes_of("after"):
            time.sleep(0.05)
        assert held["table"].scopes_of("after") == {INFER}
    finally:
        watcher.stop()

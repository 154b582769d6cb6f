"""A tokens file watched for changes, so a token added or revoked applies without a redeploy.

Ray Serve rebuilds an application only when its config changes (import path, args, runtime_env), so a
tokens file edited in place, same path, was never read again: a revoked token kept working. A replica reads
the file when it starts and every CHECK_EVERY_S after, and swaps its table in one assignment when the
contents changed. The path is watched as given, symlinks unresolved: a Kubernetes Secret volume swaps a
`..data` symlink and deletes the old target.

Every doubt fails closed. A replica never serves the tokens the app was built with: the file must be on every
node that runs a replica (docs/guide/security.md: how to mount it). A file that is not there, at a replica's
start or after it existed, and a file emptied of tokens, mean no valid token: every request is refused (401)
until a file with tokens is back, and that is logged at ERROR. A file that is there but cannot be read or has
a bad line stops a replica from starting (its error surfaces in `trtserve serve`); later, while the replica
runs, it leaves the last good table, read from the file, in force (a half-written edit must not lock every
client out), logged at ERROR once per distinct problem."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from runtime.auth.tokens import TokensFileError, TokenTable

log = logging.getLogger("trtserve.server")
CHECK_EVERY_S = 2.0
_MISSING = b"missing"  # what `_seen` holds while the file is not there (a digest is 32 bytes)


def _contents(path: Path) -> bytes | None:
    """The file's bytes (a few lines: reading them is cheaper than trusting a modification time, which two
    same-size edits within one clock tick share), or None when there is no file. A file that is there but
    cannot be read (permissions, a directory, an I/O error) is a TokensFileError."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TokensFileError(f"cannot read the tokens file {path}: {e.strerror or e}") from None


class TokensFileWatcher:
    """Calls `apply(table)` with the file's table when the replica starts and each time it changes: an empty
    table when the file is missing or holds no token."""

    def __init__(self, path: str | os.PathLike, apply: Callable[[TokenTable], None], every_s: float = CHECK_EVERY_S):
        self.path = Path(path)
        self.apply = apply
        self.every_s = every_s
        self.reloads = 0  # tables applied (empty ones included)
        self.refused = 0  # problems met, each logged once: a bad version of the file, or a new read error
        self._seen: bytes | None = None  # the digest of the contents last looked at, or _MISSING
        self._problem: str | None = None  # the last problem logged, so that a lasting one is logged once
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trtserve-tokens-watch", daemon=True)

    def start(self) -> TokensFileWatcher:
        """The first look, strict: a file that is there must be readable and valid (TokensFileError); one that
        is not there refuses every request."""
        self._look()
        self._thread.start()
        return self

    def check(self) -> bool:
        """Look once; True when a new table was applied. A file that cannot be read or parsed leaves the table
        in force, logged once per distinct problem."""
        try:
            applied = self._look()
        except TokensFileError as e:
            problem = str(e)
            if problem != self._problem:
                self.refused += 1
                log.error("tokens file not applied, the last good tokens stay: %s", problem)
            self._problem = problem
            return False
        self._problem = None
        return applied

    def _look(self) -> bool:
        contents = _contents(self.path)
        if contents is None:
            if self._seen == _MISSING:
                return False
            self._seen = _MISSING
            self._apply(
                TokenTable(()),
                "tokens file %s is not on this node: every request is refused until it is (mount it on every node "
                "that runs a replica)",
            )
            return True
        seen = hashlib.sha256(contents).digest()
        if seen == self._seen:
            return False
        self._seen = seen  # a bad version is not parsed again: the next look waits for the next change
        try:
            text = contents.decode()
        except UnicodeDecodeError:
            raise TokensFileError(f"{self.path}: not UTF-8 text") from None
        table = TokenTable.parse(text, str(self.path), allow_empty=True)
        if table.entries:
            self._apply(table, "tokens file %s read: " + f"{len(table.entries)} entries")
        else:
            self._apply(table, "tokens file %s holds no token: every request is refused until it does")
        return True

    def _apply(self, table: TokenTable, message: str) -> None:
        self.apply(table)
        self.reloads += 1
        (log.info if table.entries else log.error)(message, self.path)

    def _run(self) -> None:
        while not self._stopped.wait(self.every_s):
            try:
                self.check()
            except Exception:  # a watcher must not die: the next look may succeed
                log.exception("checking the tokens file %s failed", self.path)

    def stop(self) -> None:
        self._stopped.set()

"""A tokens file watched for changes, so a token added or revoked applies without a redeploy.

Ray Serve rebuilds an application only when its config changes (import path, args, runtime_env), so a
tokens file edited in place, same path, was never read again: a revoked token kept working until some
other change. A replica now re-reads the file when its modification time, size or inode changes (a
Kubernetes Secret volume swaps a symlink: the inode changes) and swaps its table in one assignment. A file
that cannot be read or has a bad line leaves the last good table in force and is logged; a missing file
(not on this node: replicas elsewhere were handed the digests read where the app was built) keeps the
table it has.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from runtime.auth.tokens import TokensFileError, TokenTable

log = logging.getLogger("trtserve.server")
CHECK_EVERY_S = 2.0


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class TokensFileWatcher:
    """Calls `apply(table)` with the file's new table each time it changes to a valid one."""

    def __init__(self, path: str | os.PathLike, apply: Callable[[TokenTable], None], every_s: float = CHECK_EVERY_S):
        self.path = Path(path)
        self.apply = apply
        self.every_s = every_s
        self.reloads = 0  # valid changes applied
        self.refused = 0  # changes that could not be read or parsed (the last good table stayed)
        self._seen = _signature(self.path)  # the table in force came from this version of the file
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trtserve-tokens-watch", daemon=True)

    def start(self) -> TokensFileWatcher:
        if self._seen is None:
            log.info("tokens file %s is not on this node: the tokens the app was built with stay", self.path)
        self._thread.start()
        return self

    def check(self) -> bool:
        """Look once; True when a changed, valid file was applied."""
        signature = _signature(self.path)
        if signature is None or signature == self._seen:
            return False
        self._seen = signature
        try:
            table = TokenTable.read(self.path)
        except TokensFileError as e:
            self.refused += 1
            log.error("tokens file changed but was not applied, the previous tokens stay: %s", e)
            return False
        self.apply(table)
        self.reloads += 1
        log.info("tokens file %s reloaded: %d entries", self.path, len(table.entries))
        return True

    def _run(self) -> None:
        while not self._stopped.wait(self.every_s):
            try:
                self.check()
            except Exception:  # a watcher must not die: the next look may succeed
                log.exception("checking the tokens file %s failed", self.path)

    def stop(self) -> None:
        self._stopped.set()

"""trtserve's records written into a Ray Serve replica's log file at half the cost of Ray's own handler.

Ray Serve (ray.serve._private.logging_utils.configure_component_logger, Ray 2.x) gives a replica's `ray.serve`
logger a MemoryHandler (its filters add the job, replica and request ids) in front of a RotatingFileHandler
(JSON or text, per the deployment's LoggingConfig). On every record, Python 3.11's
RotatingFileHandler.shouldRollover stats the file's path twice and formats the record, which emit then
formats again: about half the time of a line (a JSON access line, 2-core VM: ~50 us through Ray's pair,
~27 us here).

`ReplicaLogFile` stands in for that pair for our loggers: the same filters and formatter, the same open
file, formatted once and sized by the stream's position. Rolling over is left to Ray's handler
(`doRollover` on the same instance), so its records and ours always go to the one current file and are
rotated as its LoggingConfig says. Ray's classes are used as they are, never patched.

Where Ray buffers records (RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE > 1) ours are written at once, and may
come before Ray's records it still holds; each line carries its time.
"""

from __future__ import annotations

import logging
import logging.handlers
import os


class ReplicaLogFile(logging.Handler):
    """Writes what `front` (Ray's MemoryHandler) would write into its target, the RotatingFileHandler."""

    def __init__(self, front: logging.handlers.MemoryHandler) -> None:
        super().__init__(front.level)
        target = front.target
        if not isinstance(target, logging.handlers.RotatingFileHandler):
            raise TypeError(f"expected a MemoryHandler in front of a RotatingFileHandler, got {target!r}")
        self.file = target
        self.lock = target.lock  # Ray's records and ours: one writer at a time
        self.filters = list(front.filters)  # the same filter instances: context added, credentials scrubbed
        self.formatter = target.formatter
        path = target.baseFilename
        # bpo-45401: never roll over what is not a regular file (/dev/null); decided once, not per record.
        self._rolls = target.maxBytes > 0 and (not os.path.exists(path) or os.path.isfile(path))

    def emit(self, record: logging.LogRecord) -> None:
        file = self.file
        if file.stream is None:  # closed (Ray reconfiguring, or at exit): let the file handler reopen it
            file.emit(record)
            return
        try:
            line = self.format(record) + file.terminator
            if self._rolls and file.stream.tell() + len(line) >= file.maxBytes:
                file.doRollover()
            file.stream.write(line)
            file.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def writing_directly(handlers: list[logging.Handler]) -> list[logging.Handler]:
    """`handlers` with each MemoryHandler in front of a RotatingFileHandler replaced by a ReplicaLogFile on
    that file; the others (Ray's stderr handler) kept as they are."""
    return [
        ReplicaLogFile(h)
        if isinstance(h, logging.handlers.MemoryHandler) and isinstance(h.target, logging.handlers.RotatingFileHandler)
        else h
        for h in handlers
    ]

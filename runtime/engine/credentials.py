"""Credentials kept out of every message: a repository URI may carry them (`s3://KEY:SECRET@bucket/...`,
or a token in its query), and whatever names a URI (an error, a log line, an HTTP answer) shows it
scrubbed. The real URI goes only to the storage client (pyarrow, boto3).

`scrub` is applied where messages are made (TrtserveError scrubs its own message; RemoteRepository
names itself by its scrubbed URI). `ScrubCredentials` is the net for log records made elsewhere:
installed on handlers (`install_scrubbing`, `log_through`), since a logger's own filters skip the records
its children propagate to it.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# scheme://userinfo@: greedy up to the last "@" of the URI, so a secret holding an unescaped "/" or "@"
# (AWS secret keys may hold "/") is masked whole; stopping at quotes and spaces keeps it within one URI.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"<>]*@")
# A query parameter whose name says it is a secret: secret_key, access_key, session_token, access_token,
# password, X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, sig, ...
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;](?:[\w.-]*(?:key|secret|token|passw|pwd|signature|credential)[\w.-]*|sig)=)[^&\s'\"<>#]*",
    re.IGNORECASE,
)


def scrub(text: str) -> str:
    """`text` with the userinfo of every `scheme://user[:password]@host` and the value of every
    credential-like query parameter replaced by ***."""
    if "://" not in text and "=" not in text:
        return text
    return _QUERY_SECRET.sub(rf"\g<name>{MASK}", _USERINFO.sub(rf"\g<scheme>{MASK}@", text))


class ScrubCredentials(logging.Filter):
    """Scrubs a record's message, its exception text and its stack before any handler formats them."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def install_scrubbing(*handlers: logging.Handler) -> None:
    """`ScrubCredentials` on each handler (once, however often this is called): every record it writes is
    scrubbed, whichever logger made it. A logger's: `install_scrubbing(*logger.handlers)`."""
    for handler in handlers:
        if not any(isinstance(f, ScrubCredentials) for f in handler.filters):
            handler.addFilter(ScrubCredentials())


def log_through(logger: logging.Logger, host: logging.Logger) -> None:
    """`logger` and its children written by `host`'s handlers alone (at `host`'s level, else INFO), every
    one scrubbing credentials: for a process whose logging a framework set up (a Ray Serve replica's
    `ray.serve` logger writes JSON, per the application's LoggingConfig), records of ours go where its own do."""
    install_scrubbing(*host.handlers)
    logger.handlers = list(host.handlers)
    logger.setLevel(host.level or logging.INFO)
    logger.propagate = False


__all__ = ["MASK", "ScrubCredentials", "install_scrubbing", "log_through", "scrub"]

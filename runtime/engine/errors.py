"""Errors shared by the runtime and the convert stage.

Each carries the process exit code a CLI should end with (docs/reference/cli.md lists them), so a command can
turn any of them into one clear line without a traceback. Their messages are scrubbed of credentials
(runtime.engine.credentials) when made: whatever text they wrap (a URI, a storage library's own message)
reaches a user, a log or an HTTP answer without the secrets a repository URI may carry.
"""

from __future__ import annotations

from runtime.engine.credentials import scrub


def single_line(text: str) -> str:
    """`text` on one line: a library's message (ONNX Runtime's span lines) as one error line."""
    return " ".join(text.split())


class TrtserveError(Exception):
    """Base of every error meant for a user: the message says what, where and how to fix it."""

    exit_code = 2

    def __init__(self, *args: object) -> None:
        super().__init__(*(scrub(a) if isinstance(a, str) else a for a in args))


class ArtifactError(TrtserveError):
    """A model version directory is incomplete, tampered with or unsafe to load."""

    exit_code = 2


class VersionExists(TrtserveError):
    """A model version that is already there: versions are never overwritten."""

    exit_code = 2


class BackendUnavailable(TrtserveError):
    """A requested backend cannot run on this machine; the message says why."""

    exit_code = 3


class InputError(TrtserveError):
    """Inference inputs do not match the engine's signature; the message names the input."""

    exit_code = 2


class EngineLoadError(BackendUnavailable):
    """An engine this machine should run failed to load here (a plan that does not deserialize, no memory
    for its context): backend="auto" goes on to the next backend and says why."""

"""Errors of the convert stage, each with its CLI exit code (as docs/reference/cli.md lists them)."""

from __future__ import annotations

from runtime.engine.errors import ArtifactError, BackendUnavailable, TrtserveError

__all__ = [
    "ArtifactError",
    "BackendUnavailable",
    "ConfigError",
    "ExportError",
    "ParityFailed",
    "TrtserveError",
]


class ConfigError(TrtserveError):
    """A model config (or a callable it names) is wrong: the message names the file and the key."""

    exit_code = 2

    def __init__(self, path, key: str | None, message: str) -> None:
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.key = key


class ExportError(TrtserveError):
    """The model cannot be exported or built: the message names the input, output or op."""

    exit_code = 2


class ParityFailed(TrtserveError):
    """An engine's outputs differ from PyTorch's beyond the configured tolerance."""

    exit_code = 1

"""The engine layer: verified model versions (their manifest and checksums), what they take and return,
and the engines that run them, one backend registered by name each. No Ray, no HTTP, no convert stage:
both the convert stage and the serving layer build on it."""

from runtime.engine.backends import Engine, EngineOptions, EngineSpec, register_backend
from runtime.engine.errors import ArtifactError, BackendUnavailable, EngineLoadError, InputError, TrtserveError
from runtime.engine.loader import load_engine
from runtime.engine.manifest import Manifest, read_manifest
from runtime.engine.signature import Signature, TensorSpec

__all__ = [
    "ArtifactError",
    "BackendUnavailable",
    "Engine",
    "EngineLoadError",
    "EngineOptions",
    "EngineSpec",
    "InputError",
    "Manifest",
    "Signature",
    "TensorSpec",
    "TrtserveError",
    "load_engine",
    "read_manifest",
    "register_backend",
]

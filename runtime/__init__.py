"""trtserve runtime: load verified model versions and run them. Needs no torch."""

from runtime.backends import Engine
from runtime.errors import ArtifactError, BackendUnavailable, InputError, TrtserveError
from runtime.loader import load_engine
from runtime.signature import Signature, TensorSpec

__all__ = [
    "ArtifactError",
    "BackendUnavailable",
    "Engine",
    "InputError",
    "Signature",
    "TensorSpec",
    "TrtserveError",
    "load_engine",
]

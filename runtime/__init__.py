"""trtserve runtime: `runtime.engine` loads verified model versions and runs them (no Ray, no torch);
`runtime.serve` serves them on Ray Serve (`import_path: runtime.serve.app:build_app`). The engine
layer's public API (`load_engine`, `Engine`, `Manifest`, ...) is this package's too."""

from runtime.engine import *  # noqa: F403
from runtime.engine import __all__  # noqa: F401

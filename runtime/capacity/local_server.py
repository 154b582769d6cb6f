"""A server started for one measurement: one application on this machine's loopback, its Serve config
and log in a working directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from runtime.serve.launcher import LocalServe

HOST, PORT = "127.0.0.1", 8000
URL = f"http://{HOST}:{PORT}"
APP = "runtime.serve.app:build_app"


def serve_config(
    path: Path, args: dict[str, Any], import_path: str = APP, name: str = "bench", port: int = PORT
) -> Path:
    """A Serve config of one application on HOST:`port`, written to `path`."""
    doc = {
        "proxy_location": "EveryNode",
        "http_options": {"host": HOST, "port": port},
        "applications": [{"name": name, "route_prefix": "/", "import_path": import_path, "args": args}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def server(work: Path, label: str, args: dict[str, Any], import_path: str = APP, ingress: str | None = None):
    """A LocalServe of one application, its config and log under `work` (a context manager)."""
    config = serve_config(work / f"{label}.yaml", args, import_path)
    return LocalServe(config, ingress=ingress, log_path=work / f"{label}-{ingress or 'default'}.log")

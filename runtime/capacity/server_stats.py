"""A running server's own figures, read over HTTP: its per-model statistics and batching configuration
(Triton's /v2/models/M/stats and /config), what calibration and validation compare the load they send with."""

from __future__ import annotations

import json
import urllib.request


def model_stats(url: str, model: str) -> dict:
    """The model's Triton statistics (/v2/models/M/stats)."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as response:
        return json.loads(response.read())["model_stats"][0]


def rows_per_call(before: dict, after: dict) -> float:
    """Rows per engine call between two readings of model_stats."""
    calls = after["execution_count"] - before["execution_count"]
    return (after["inference_count"] - before["inference_count"]) / calls if calls else float("nan")


def served_batching(url: str, model: str) -> tuple[int, float]:
    """max_batch_size and max_queue_delay_ms of the running model (Triton's model configuration)."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}/config", timeout=10) as response:
        config = json.loads(response.read())
    delay_us = config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0)
    return int(config["max_batch_size"]), float(delay_us) / 1e3

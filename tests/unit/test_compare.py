"""`benchmarks compare`'s section: trtserve judged against the plain FastAPI contender by its three targets."""

from __future__ import annotations

from benchmarks.compare import FASTAPI, render


def _run(rps: float, p50: float, p99: float) -> dict:
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99}


def _report(ours_c32: dict, ours_c1: dict) -> dict:
    runs = {
        f"{FASTAPI} [uvicorn]": {"ingress": "uvicorn", "c1": _run(500, 1.8, 3.0), "c32": _run(600, 50.0, 80.0)},
        "trtserve (onnxruntime) [haproxy]": {"ingress": "haproxy", "c1": ours_c1, "c32": ours_c32},
    }
    return {
        "machine": {"cpu": "x", "cores": 2, "memory_gib": 8, "os": "Linux", "python": "3.11", "gpu": "none"},
        "workload": "cnn",
        "duration_s": 8.0,
        "runs": runs,
        "table": [],
    }


def test_trtserve_is_judged_against_fastapi_at_both_concurrencies():
    text = "\n".join(render(_report(_run(1300, 20.0, 35.0), _run(450, 1.7, 3.5))))
    assert "| concurrency 32: >= 2x its requests/s | 1300 vs 600 = 2.17x | yes |" in text
    assert "| concurrency 32: p99 <= 0.5x its p99 | 35.00 vs 80.00 ms = 0.44x | yes |" in text
    assert "| concurrency 1: p50 <= 1x its p50 | 1.70 vs 1.80 ms = 0.94x | yes |" in text


def test_a_miss_is_shown_with_its_figure():
    text = "\n".join(render(_report(_run(900, 30.0, 60.0), _run(450, 2.1, 3.5))))
    assert "| 900 vs 600 = 1.50x | **no** |" in text and "| 60.00 vs 80.00 ms = 0.75x | **no** |" in text
    assert "| 2.10 vs 1.80 ms = 1.17x | **no** |" in text


def test_a_run_without_the_contender_has_no_targets():
    report = _report(_run(900, 30.0, 60.0), _run(450, 2.1, 3.5))
    del report["runs"][f"{FASTAPI} [uvicorn]"]
    assert "against FastAPI" not in "\n".join(render(report))

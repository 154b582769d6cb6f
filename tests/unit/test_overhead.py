"""`python -m benchmarks overhead`'s arithmetic: a window's figures from the model's statistics, the pairs'
ratios, and the section it renders (with and without a baseline)."""

from __future__ import annotations

import pytest

from benchmarks.harness import arm_order
from benchmarks.overhead import (
    WORKLOADS,
    arm_summary,
    on_port,
    paired_ratios,
    render,
    summarize,
    to_floor,
    window_figures,
)
from runtime.capacity.load_generator import build_request


def _stats(rows: int, calls: int, infer_ns: int, input_ns: int = 0, output_ns: int = 0) -> dict:
    return {
        "inference_count": rows,
        "execution_count": calls,
        "inference_stats": {
            "compute_infer": {"count": calls, "ns": infer_ns},
            "compute_input": {"count": calls, "ns": input_ns},
            "compute_output": {"count": calls, "ns": output_ns},
        },
    }


SUMMARY = {"achieved_rps": 249.0, "p50_ms": 1.5, "p99_ms": 4.0, "requests": 2500, "statuses": {"200": 2500}}


def test_a_window_is_charged_per_request_answered_and_per_row_the_engine_ran():
    before = _stats(rows=100, calls=90, infer_ns=10**8)
    after = _stats(rows=2600, calls=1340, infer_ns=10**8 + 2500 * 800_000, input_ns=2500 * 20_000)
    figures = window_figures(SUMMARY, cpu_s=6.4, before=before, after=after)
    assert figures["cpu_ms_per_request"] == pytest.approx(2.56)
    assert figures["engine_ms_per_request"] == pytest.approx(0.8)
    assert figures["input_ms_per_request"] == pytest.approx(0.02)
    assert figures["rows_per_engine_call"] == pytest.approx(2.0)
    assert (figures["achieved_rps"], figures["p99_ms"]) == (249.0, 4.0)


def test_a_window_without_answers_has_no_cost_per_request_rather_than_a_division_by_zero():
    stats = _stats(rows=5, calls=5, infer_ns=0)
    figures = window_figures({**SUMMARY, "statuses": {"0": 10}}, cpu_s=1.0, before=stats, after=stats)
    assert figures["cpu_ms_per_request"] is None and figures["engine_ms_per_request"] is None


def _window(pair: int, arm: str, cpu: float | None) -> dict:
    return {
        "pair": pair,
        "arm": arm,
        "cpu_ms_per_request": cpu,
        "engine_ms_per_request": 0.5,
        "input_ms_per_request": 0.01,
        "output_ms_per_request": 0.1,
        "rows_per_engine_call": 1.5,
        "achieved_rps": 250.0,
        "p50_ms": 1.0,
        "p99_ms": 3.0,
        "requests": 2500,
        "statuses": {"200": 2500},
    }


def test_ratios_are_current_over_baseline_within_each_complete_pair_in_pair_order():
    windows = [
        _window(0, "current", 2.0),
        _window(0, "baseline", 2.5),
        _window(1, "baseline", 3.0),
        _window(1, "current", 3.3),
        _window(2, "current", 2.2),  # its baseline window failed: no ratio
        _window(2, "baseline", None),
    ]
    assert paired_ratios(windows) == [0.8, 1.1]


def test_which_arm_runs_first_alternates():
    assert [arm_order(p, ("current", "baseline")) for p in range(3)] == [
        ("current", "baseline"),
        ("baseline", "current"),
        ("current", "baseline"),
    ]
    assert arm_order(1, ("current",)) == ("current",)


def test_an_arm_summary_is_the_median_of_its_windows_skipping_windows_without_a_figure():
    summary = arm_summary([_window(0, "current", 1.0), _window(1, "current", None), _window(2, "current", 3.0)])
    assert summary["cpu_ms_per_request"] == 2.0 and summary["p99_ms"] == 3.0 and "pair" not in summary


def test_requests_built_for_the_default_port_are_readdressed():
    request = build_request("127.0.0.1", 8000, "/v2/models/cnn/infer", b"{}")
    moved = on_port(request, 8123)
    assert b"Host: 127.0.0.1:8123\r\n" in moved and b"8000" not in moved and moved.endswith(b"\r\n\r\n{}")
    assert on_port(request, 8000) == request


def test_requests_for_the_floor_go_to_its_prefix_and_nowhere_else_changes():
    request = build_request("127.0.0.1", 8000, "/v2/models/cnn/infer", b'{"a": "POST /v2"}')
    moved = to_floor(request)
    assert moved.startswith(b"POST /floor/v2/models/cnn/infer HTTP/1.1\r\n")
    assert moved.replace(b"/floor", b"", 1) == request


def _report(with_baseline: bool, floor: bool = False) -> dict:
    arms = ("current", "baseline") if with_baseline else ("current",)
    workloads = {}
    for w in WORKLOADS:
        windows = [_window(p, arm, 2.0 if arm == "current" else 2.5) for p in range(2) for arm in arms]
        floors = [
            {"pair": p, "cpu_ms_per_request": c, "achieved_rps": 250, "statuses": {}} for p, c in enumerate((0.5, 0.7))
        ]
        engine_ms = 0.64 if w.model == "cnn" else 4.0
        workloads[w.name] = summarize(w, windows, engine_ms=engine_ms, floors=floors if floor else None)
    return {
        "machine": {"cpu": "x", "cores": 2, "memory_gib": 8, "os": "Linux", "python": "3.11", "gpu": "none"},
        "window_s": 10.0,
        "warmup_s": 2.0,
        "pairs": 2,
        "current": {"commit": "954e066" + "0" * 33, "uncommitted": ["runtime/serve/app.py"]},
        "baseline": {"rev": "9f639d3", "commit": "9f639d3" + "0" * 33} if with_baseline else None,
        "engine_cpu_ms_per_call": {"cnn": 0.64, "minilm": 4.0},
        "idle_cpu_ms_per_s": {arm: [3.0, 5.0] for arm in arms},
        "workloads": workloads,
    }


def test_the_section_judges_each_workload_by_its_target_and_shows_the_baseline_when_measured():
    text = "\n".join(render(_report(with_baseline=True)))
    assert "| cnn, KServe v2 JSON, 250 req/s: replica CPU per request <= 4x" in text
    assert "2.000 vs 0.640 ms = 3.12x | yes |" in text  # JSON: within 4x
    assert "2.000 vs 0.640 ms = 3.12x | **no** |" in text  # binary: not within 2.7x
    assert "| minilm-text | baseline 9f639d3 | 2.500 | 0.62x |" in text
    assert "| 0.80x |" in text  # current/baseline, the median of the pairs
    assert "Answers other than 200: none." in text
    assert "Current: commit 954e066 with uncommitted changes to 1 file(s) under runtime/" in text


def test_the_section_without_a_baseline_has_no_baseline_rows():
    report = _report(with_baseline=False)
    assert all(w["vs_baseline"] is None for w in report["workloads"].values())
    text = "\n".join(render(report))
    assert "baseline 9f639d3" not in text and "CPU vs baseline: the median" not in text


def test_the_floor_splits_the_replicas_cpu_into_ray_serves_and_trtserves():
    report = _report(with_baseline=False, floor=True)
    assert report["workloads"]["cnn-json"]["floor"]["cpu_ms_per_request"] == 0.6  # the median of its windows
    text = "\n".join(render(report))
    # replica 2.0 ms, floor 0.6: trtserve's own 1.4; floor + raw engine = 1.24 ms = 1.94x the raw engine's 0.64
    assert "| cnn-json | 2.000 | 0.600 | 1.400 | 0.640 | 1.94x |" in text
    assert "Ray Serve floor" not in "\n".join(render(_report(with_baseline=False)))

"""PNG plots of benchmark results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput_vs_p99(report: dict, path: Path) -> Path:
    """Measured open-loop probes against the simulated curve, with the SLO."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curve = report["predicted"]["curve"]
    ax.plot([p["rps"] for p in curve], [p["p99_ms"] for p in curve], "o--", label="predicted (simulation)")
    probes = sorted(report["measured"]["probes"], key=lambda p: p["achieved_rps"])
    ax.plot(
        [p["achieved_rps"] for p in probes], [p["p99_ms"] for p in probes], "s-", label="measured (open loop, Poisson)"
    )
    ax.axhline(report["slo_p99_ms"], color="grey", linestyle=":", label=f"SLO p99 {report['slo_p99_ms']:g} ms")
    for key, color in (("predicted", "C0"), ("measured", "C1")):
        ax.axvline(report[key]["max_rps"], linestyle=":", color=color)
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p99 latency (ms, log scale)")
    batch = report["config"]["max_batch_size"]
    ax.set_title(f"{report['model']}: throughput vs p99, 1 replica, max_batch_size {batch}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def latency_vs_batch(profile: dict, path: Path) -> Path:
    """Engine latency (median, p10-p90) and rows/s against batch size, at the profiled sizes."""
    points = [p for p in profile["points"] if p["sizes"] == {**profile["opt_sizes"], "batch": p["batch"]}]
    batches = [p["batch"] for p in points]
    median = [p["median_ms"] for p in points]
    errors = [[p["median_ms"] - p["p10_ms"] for p in points], [p["p90_ms"] - p["median_ms"] for p in points]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.errorbar(batches, median, yerr=errors, fmt="o-", capsize=3, label="engine call, median (p10-p90)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size (rows)")
    ax.set_ylabel("latency per engine call (ms)")
    other = ", ".join(f"{k}={v}" for k, v in profile["opt_sizes"].items() if k != "batch") or "fixed shape"
    ax.set_title(f"{profile['model']}: engine latency vs batch size ({profile['backend']}, {other})")
    twin = ax.twinx()
    twin.plot(batches, [p["rows_per_s"] for p in points], "s:", color="C1", label="rows/s")
    twin.set_ylabel("throughput (rows/s)")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def latency_cdf(report: dict, path: Path) -> Path:
    """Latency distribution at 70% of the measured max rate: measured vs simulated."""
    quantiles = list(range(1, 100))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(report["measured"]["latency_quantiles_ms"], quantiles, label="measured")
    ax.plot(report["predicted"]["latency_quantiles_ms"], quantiles, "--", label="predicted (simulation)")
    ax.set_xscale("log")
    ax.set_xlabel("latency from scheduled send (ms, log scale)")
    ax.set_ylabel("percentile of requests")
    ax.set_title(f"{report['model']}: latency CDF at {report['measured']['at_rps']:.0f} req/s (70% of measured max)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def validation(report: dict, results: Path) -> list[Path]:
    model = report["model"]
    return [
        throughput_vs_p99(report, results / f"{model}-throughput-vs-p99.png"),
        latency_vs_batch(report["profile"], results / f"{model}-latency-vs-batch.png"),
        latency_cdf(report, results / f"{model}-latency-cdf.png"),
    ]

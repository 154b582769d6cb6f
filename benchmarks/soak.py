"""`python -m benchmarks soak`: steady mixed load for `minutes` (10 in `make bench`) on one replica serving
both demo models, to catch what only time shows: a leak, a slowdown, an error that comes once an hour.

An open loop (Poisson) at RATE sends, in turn, a fixed mix: cnn as JSON and as binary tensors, MiniLM text
as JSON, and planted bad requests (malformed JSON, a wrong shape, an unknown model) whose 4xx answers are
expected. Every request's status is checked against what it should get; the replica's RSS is sampled every
few seconds. Figures: unexpected answers, RSS growth from the end of the first minute to the end, and the
p99 of the last minute against the second minute's (the first holds the warm-up).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks import targets
from benchmarks.harness import ROOT, binary_request, ensure_model, json_request
from benchmarks.rendering import machine_line, table_row
from benchmarks.serving import sentences
from runtime.capacity.load_generator import build_request, open_loop
from runtime.capacity.local_server import HOST, PORT, server
from runtime.diagnostics import machine
from runtime.serve.launcher import LocalServe

RATE = 150.0  # requests/s: about a third of what this replica sustains with this mix here
SAMPLE_S = 5.0  # RSS sampling period
APP = "bench"


def mix() -> tuple[list[bytes], np.ndarray]:
    """The requests sent in turn, and the status each should get (60: 24 cnn JSON, 21 cnn binary, 12 MiniLM,
    3 bad)."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((45, 1, 3, 32, 32)).astype(np.float32)
    texts = sentences(12)
    good = [json_request("/v2/models/cnn/infer", {"image": images[i]}) for i in range(24)]
    good += [binary_request("/v2/models/cnn/infer", "image", images[24 + i], "logits") for i in range(21)]
    good += [json_request("/v2/models/minilm/infer", {"text": np.array([t], dtype=object)}) for t in texts]
    bad = [
        (build_request(HOST, PORT, "/v2/models/cnn/infer", b'{"inputs": [', {"Content-Type": "application/json"}), 400),
        (json_request("/v2/models/cnn/infer", {"image": images[0][:, :2]}), 400),
        (json_request("/v2/models/no-such-model/infer", {"image": images[0]}), 404),
    ]
    requests, expected = [], []
    for i, request in enumerate(good):  # a bad one every 20 requests
        requests.append(request)
        expected.append(200)
        if i % 19 == 18:
            requests.append(bad[i // 19][0])
            expected.append(bad[i // 19][1])
    return requests, np.array(expected)


# Where the CPU goes, by process: a drift in latency that the server's own time carries shows up here as the
# group whose CPU per request grows. The rest of what the server started (Ray's GCS, raylet, dashboard,
# agents) is grouped by program.
CPU_GROUPS = (
    ("replica", ("ServeReplica:",)),
    ("haproxy", ("haproxy",)),
    ("serve", ("ServeController", "ProxyActor", "HAProxyManager", "serve run")),
)


def cpu_group(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    for group, marks in CPU_GROUPS:
        if any(mark in text for mark in marks):
            return group
    program = next(
        (Path(arg).name for arg in cmdline[:3] if arg.endswith(".py")), Path(cmdline[0]).name if cmdline else ""
    )
    return f"ray {program or 'other'}"


class ProcessSampler(threading.Thread):
    """Every SAMPLE_S seconds from `mark()` (when the load starts): the replica processes' resident memory, and
    the CPU seconds each group of the server's processes (and this load generator) has used since."""

    def __init__(self, server: LocalServe, replicas: list[psutil.Process]) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.replicas = replicas
        self.samples: list[tuple[float, int]] = []  # (seconds since the mark, replica RSS bytes; -1: one gone)
        self.cpu: list[tuple[float, dict[str, float]]] = []  # (seconds since the mark, CPU seconds by group so far)
        self._seen: dict[int, tuple[str, float]] = {}  # pid -> (group, CPU seconds at the last look)
        self._totals: dict[str, float] = {}
        self.stopped = threading.Event()
        self.began = time.perf_counter()

    def mark(self) -> None:
        """The load starts now: CPU from here on is counted, samples are timed from here."""
        self._add_cpu()
        self._totals = {}
        self.began = time.perf_counter()
        self.cpu.append((0.0, {}))
        self.start()

    def run(self) -> None:
        due = SAMPLE_S
        while not self.stopped.wait(max(0.0, due - (time.perf_counter() - self.began))):
            due += SAMPLE_S  # on a fixed schedule: the waits do not add up to a drift
            self._add_cpu()
            now = time.perf_counter() - self.began
            self.cpu.append((now, dict(self._totals)))
            try:
                rss = sum(p.memory_info().rss for p in self.replicas)
            except psutil.Error:  # a replica gone: its absence is the finding, not a sample
                self.samples.append((now, -1))
                continue
            self.samples.append((now, rss))

    def _add_cpu(self) -> None:
        me = psutil.Process()
        for process in [me, *self.server.processes()]:
            try:
                times = process.cpu_times()
                used = times.user + times.system
                if process.pid not in self._seen:
                    name = "generator" if process.pid == me.pid else cpu_group(process.cmdline())
                    self._seen[process.pid] = (name, 0.0)
            except psutil.Error:
                continue
            group, before = self._seen[process.pid]
            self._seen[process.pid] = (group, used)
            self._totals[group] = self._totals.get(group, 0.0) + max(0.0, used - before)


def cpu_by_minute(cpu: list[tuple[float, dict[str, float]]], minutes: int) -> dict[str, list[float]]:
    """CPU seconds each group used in each whole minute, its running total interpolated at the minute marks."""
    times = np.array([t for t, _ in cpu])
    marks = 60.0 * np.arange(minutes + 1)
    table = {}
    for group in sorted({g for _, totals in cpu for g in totals}):
        totals = np.array([so_far.get(group, 0.0) for _, so_far in cpu])
        table[group] = [round(float(v), 2) for v in np.diff(np.interp(marks, times, totals))]
    return table


def _per_request_ms(cpu_s: list[float], scheduled: np.ndarray) -> list[float]:
    counts = np.bincount((scheduled // 60).astype(int), minlength=len(cpu_s))[: len(cpu_s)]
    return [round(1e3 * s / n, 3) if n else 0.0 for s, n in zip(cpu_s, counts, strict=True)]


def _trend(values: list[float]) -> float | None:
    """The least-squares slope of `values` (one a minute) as a fraction of their mean, per minute: a replica
    that slows as it ages shows a steady positive trend; a noisy machine, minutes up and down."""
    if len(values) < 3:
        return None
    slope = np.polyfit(np.arange(len(values)), values, 1)[0]
    return round(float(slope / np.mean(values)), 4)


def _counts(statuses: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(statuses, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def _rss_at(samples: list[tuple[float, int]], t: float) -> int:
    return min(samples, key=lambda s: abs(s[0] - t))[1]


def measure(repository: Path, results: Path, minutes: float = 10.0) -> dict:
    for name in ("cnn", "minilm"):
        ensure_model(repository, ROOT / f"configs/models/{name}.yaml")
    requests, expected_by_index = mix()
    work = Path(tempfile.mkdtemp(prefix="trtserve-soak-"))
    args = {"repository": str(repository), "models": [{"name": "cnn"}, {"name": "minilm"}]}
    duration_s = minutes * 60
    with server(work, "soak", args) as running:
        replicas = running.replicas(APP)
        pids = {p.pid for p in replicas}
        sampler = ProcessSampler(running, replicas)
        sampler.mark()
        result = asyncio.run(open_loop(HOST, PORT, requests, RATE, duration_s, timeout_s=30.0))
        sampler.stopped.set()
        sampler.join()
        replaced = {p.pid for p in running.replicas(APP)} != pids
    expected = expected_by_index[np.arange(len(result.statuses)) % len(requests)]
    unexpected = result.statuses != expected
    latencies = result.latencies_ms
    good = expected == 200

    def minute_percentile(values: np.ndarray, m: int, q: float = 99) -> float:
        mask = good & (result.scheduled >= 60 * m) & (result.scheduled < 60 * (m + 1))
        return round(float(np.percentile(values[mask], q)), 2)

    whole_minutes = int(duration_s // 60)
    per_minute = [minute_percentile(latencies, m) for m in range(whole_minutes)]
    # The latency runs from each request's scheduled time; these two split it into the generator's own lag
    # (scheduled -> sent) and the server's time (sent -> answered), so a drift can be told apart.
    lag_per_minute = [minute_percentile(result.send_lag_ms, m) for m in range(whole_minutes)]
    server_per_minute = [minute_percentile((result.completed - result.sent) * 1e3, m) for m in range(whole_minutes)]
    samples = sampler.samples
    cpu = cpu_by_minute(sampler.cpu, whole_minutes)
    rss_after_1 = _rss_at(samples, 60.0)
    rss_end = samples[-1][1]
    summary = result.summary()
    report = {
        "benchmark": "soak",
        "machine": machine.describe(),
        "minutes": minutes,
        "rate": RATE,
        "mix": {"cnn_json": 24, "cnn_binary": 21, "minilm_json": 12, "bad": 3},
        "requests": len(result.statuses),
        "statuses": summary["statuses"],
        "planted_bad": int((~good).sum()),
        "unexpected": int(unexpected.sum()),
        "unexpected_statuses": _counts(result.statuses[unexpected]),
        "replica_replaced": replaced,
        "p99_ms_by_minute": per_minute,
        "p99_last_vs_second": round(per_minute[-1] / per_minute[1], 4) if whole_minutes >= 3 else None,
        "p50_ms_by_minute": [minute_percentile(latencies, m, 50) for m in range(whole_minutes)],
        "send_lag_p99_ms_by_minute": lag_per_minute,
        "server_p99_ms_by_minute": server_per_minute,
        "rss_bytes_after_minute_1": rss_after_1,
        "rss_bytes_end": rss_end,
        "rss_growth": round(rss_end / rss_after_1 - 1, 4) if rss_after_1 > 0 and rss_end > 0 else None,
        "rss_samples": [(round(t, 1), b) for t, b in samples],
        "cpu_s_by_minute": cpu,
        # The replica's CPU per request: the same work each minute, so it moves with the machine's speed
        # (this machine is shared) or with a replica that does more per request as it ages.
        "replica_cpu_ms_per_request_by_minute": _per_request_ms(cpu.get("replica", []), result.scheduled),
        "p99_trend_per_minute": _trend(per_minute[1:]),
        "generator_behind": summary["generator_behind"],
    }
    print(
        f"soak: {report['requests']} requests over {minutes:g} min, {report['unexpected']} unexpected answers, "
        f"RSS {rss_after_1 / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB, p99 by minute {per_minute}",
        file=sys.stderr,
    )
    for group, seconds in report["cpu_s_by_minute"].items():
        print(f"  CPU s by minute, {group}: {seconds}", file=sys.stderr)
    results.mkdir(parents=True, exist_ok=True)
    (results / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def render(data: dict) -> list[str]:
    p99 = data["p99_ms_by_minute"]
    growth, drift = data["rss_growth"], data["p99_last_vs_second"]
    return [
        f"## Soak: {data['minutes']:g} minutes of mixed load",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `python -m benchmarks soak`. One replica serving cnn and MiniLM; open loop, Poisson, "
        f"{data['rate']:.0f} req/s of a fixed mix sent in turn ({data['mix']['cnn_json']} cnn JSON, "
        f"{data['mix']['cnn_binary']} cnn binary, {data['mix']['minilm_json']} MiniLM text, {data['mix']['bad']} "
        "planted bad requests: malformed JSON, a wrong shape, an unknown model), every status checked against "
        "what its request should get; the replica's RSS sampled every 5 s.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        table_row(
            "no answer but the expected (the planted bad requests' 4xx)",
            f"{data['unexpected']} unexpected of {data['requests']} ({data['planted_bad']} planted bad); "
            f"replica replaced: {'yes' if data['replica_replaced'] else 'no'}",
            data["unexpected"] <= targets.SOAK_UNEXPECTED and not data["replica_replaced"],
        ),
        table_row(
            f"replica RSS growth after the first minute at most {targets.SOAK_RSS_GROWTH:.0%}",
            f"{data['rss_bytes_after_minute_1'] / 2**20:.0f} -> {data['rss_bytes_end'] / 2**20:.0f} MiB ({growth:+.1%})"
            if growth is not None
            else "no reading",
            growth is not None and growth <= targets.SOAK_RSS_GROWTH,
        ),
        table_row(
            f"p99 of the last minute at most {targets.SOAK_P99_DRIFT:.0%} above the second minute's",
            f"{p99[-1]:.1f} vs {p99[1]:.1f} ms (x{drift:.3f})" if drift is not None else "too short",
            drift is not None and drift <= 1 + targets.SOAK_P99_DRIFT,
        ),
        "",
        f"p99 by minute (ms, good requests, from each request's scheduled time): {_series(p99)}.",
        *_soak_split(data),
        "",
    ]


def _series(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def _soak_split(data: dict) -> list[str]:
    """The p99 split into the generator's lag and the server's time (runs from before these were kept lack them)."""
    if "server_p99_ms_by_minute" not in data:
        return []
    lines = [
        "",
        f"Of that, the server's time (sent -> answered), p99 by minute: {_series(data['server_p99_ms_by_minute'])};",
        f"the generator's send lag (scheduled -> sent), p99 by minute: {_series(data['send_lag_p99_ms_by_minute'])}.",
    ]
    if data.get("generator_behind"):
        lines.append("The generator fell behind its schedule (send-lag p99 over 2 ms): it shares the 2 cores.")
    if "replica_cpu_ms_per_request_by_minute" in data:
        cpu = data["replica_cpu_ms_per_request_by_minute"]
        lines += [
            "",
            f"The replica's CPU per request by minute (ms; the same mix each minute, so it follows the shared "
            f"machine's speed, or a replica doing more as it ages): {', '.join(f'{v:.2f}' for v in cpu)}."
            + (
                f" Trend of the p99 from the second minute on: {data['p99_trend_per_minute']:+.1%} a minute."
                if data.get("p99_trend_per_minute") is not None
                else ""
            ),
            "",
            "CPU seconds by minute, by process group:",
            "",
            "| group | " + " | ".join(f"min {m + 1}" for m in range(len(cpu))) + " |",
            "|---|" + "---:|" * len(cpu),
            *(f"| {g} | " + " | ".join(f"{v:.1f}" for v in values) + " |" for g, values in _cpu_groups(data)),
        ]
    return lines


def _cpu_groups(data: dict) -> list[tuple[str, list[float]]]:
    """The soak's CPU by group, Ray's own processes summed into one row."""
    groups: dict[str, list[float]] = {}
    for group, values in data["cpu_s_by_minute"].items():
        name = "ray (GCS, raylet, dashboard, agents)" if group.startswith("ray ") else group
        groups[name] = [a + b for a, b in zip(groups.get(name, [0.0] * len(values)), values, strict=True)]
    return sorted(groups.items())


def add_parser(sub) -> None:
    p = sub.add_parser("soak", help="steady mixed load for minutes: errors, replica RSS growth, p99 drift")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--minutes", type=float, default=10.0, help="how long (at least 3: the figures compare minutes)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))


def run(args) -> None:
    if args.minutes < 3:
        raise SystemExit("--minutes: at least 3 (the first is warm-up; the second and the last are compared)")
    measure(args.repository, args.results, minutes=args.minutes)

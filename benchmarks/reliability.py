"""`python -m benchmarks reliability`: what callers get while replicas fail, scale, are replaced and stop,
and what authentication costs.

One server (`LocalServe`, the default HAProxy ingress as `trtserve serve` starts it) with two applications
on cnn: `trtserve` at `/` and `secured` at `/secured` (the same with bearer tokens, one replica, its token
check switched on and off by the benchmark: benchmarks.auth_toggle_app). The fault scenarios run on
`trtserve` under an open loop (Poisson, JSON), each event `at_s` seconds in; every request's status and
latency (from its scheduled time) is kept:
- `kill_two`: two replicas, one SIGKILLed; the load runs for the minute around the kill.
- `redeploy`: two replicas, the config deployed again with changed args (`serve deploy`): every replica
  replaced, rolling.
- `downscale`: the config deployed with one replica: one replica drained and stopped.
- `kill_one`: one replica, SIGKILLed; the load runs until the replacement answers and beyond.
- `kill_one_short_queue`: the same with `max_queued_requests: 16` (a `deployments:` override): callers
  beyond what the fallback proxy holds get 503 + Retry-After at once instead of waiting.
- `shutdown`: what SIGTERM to `trtserve serve` does (`LocalServe.stop`) under load: requests sent before it
  should all be answered; after it, the server is going away.
Auth cost: closed loop at c=32, JSON, the same requests (with their token) to `secured` in windows that
alternate between its token check on and off (`pairs` pairs, alternating which runs first): one replica
process serves both arms. The medians of the pairs' on/off ratios of throughput and p99. The request path's
hardening is measured the same way (its own switch, the token check on in both arms).
Abuse (one replica each): three unauthenticated 768 MiB bodies streamed to `secured` (its RSS growth); a 60 MB
JSON request refused by `trtserve` while a small one goes every 0.1 s (their waits); labels posted to
`trtserve` while its replica is SIGKILLed (those acknowledged but missing from the Parquet files after).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import yaml

from benchmarks import targets
from benchmarks.abuse import MemoryWatch, Streamed, oversized_json_request, post, stream_body, waits_while
from benchmarks.auth_toggle_app import HARDENING_SWITCH, SWITCH
from benchmarks.harness import ROOT, arm_order, ensure_model, json_request
from benchmarks.rendering import machine_line, table_row
from runtime.auth.tokens import digest
from runtime.capacity.load_generator import closed_loop, open_loop
from runtime.capacity.local_server import HOST, PORT
from runtime.diagnostics import machine
from runtime.serve.launcher import LocalServe

RATE = 150.0  # requests/s: a fifth of what one cnn replica sustains here, so a failure's effect is what shows
CONCURRENCY = 32
TOKEN = "benchmark-infer-token"
APP, SECURED = "trtserve", "secured"
SHORT_QUEUE = 16  # max_queued_requests of the kill_one_short_queue scenario
HALF_CPU = 0.5  # three replicas (and one more while one is replaced) scheduled on two cores


def config(work: Path, repository: Path, replicas: int, generation: int = 0, queued: int | None = None) -> Path:
    """Both applications; `generation` changes `trtserve`'s args (its max_body_mb), so deploying it again
    replaces that application's replicas; `queued` sets its max_queued_requests through a `deployments:`
    override, which Serve applies in place."""
    tokens = work / "tokens.txt"
    tokens.write_text(f"infer {digest(TOKEN)}\n")
    models = [{"name": "cnn", "version": 1}]
    apps = [
        {
            "name": APP,
            "route_prefix": "/",
            "import_path": "runtime.serve.app:build_app",
            "args": {
                "repository": str(repository),
                "models": models,
                "num_replicas": replicas,
                "max_body_mb": 64 + generation,
                "ray_actor_options": {"num_cpus": HALF_CPU},
                "capture": {"destination": str(work / "capture")},  # feedback only: nothing sampled
            },
        },
        {
            "name": SECURED,
            "route_prefix": f"/{SECURED}",
            "import_path": "benchmarks.auth_toggle_app:build_app",
            "args": {
                "repository": str(repository),
                "models": models,
                "auth": {"tokens_file": str(tokens)},
                "ray_actor_options": {"num_cpus": HALF_CPU},
            },
        },
    ]
    if queued is not None:
        apps[0]["deployments"] = [{"name": APP, "max_queued_requests": queued}]
    doc = {"proxy_location": "EveryNode", "http_options": {"host": HOST, "port": PORT}, "applications": apps}
    path = work / f"serve-{replicas}-{generation}{'' if queued is None else f'-q{queued}'}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def wait_for_replicas(server: LocalServe, count: int, timeout_s: float = 240) -> set[int]:
    """The pids of `count` running replicas of `trtserve` once that many run and it is ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = {p.pid for p in server.replicas(APP)}
        if len(pids) == count and server.get("/v2/health/ready")[0] == 200:
            time.sleep(3)  # HAProxy reloads its config as replicas register: let that settle
            if {p.pid for p in server.replicas(APP)} == pids:
                return pids
        time.sleep(1)
    raise TimeoutError(f"not {count} replicas of {APP} within {timeout_s:.0f} s")


def under_load(request: bytes, event: Callable[[], None], at_s: float, duration_s: float) -> dict:
    """An open loop at RATE for `duration_s` with `event()` run `at_s` seconds in: statuses and latencies,
    before and after the event, and when the failures (anything but 200) began and ended."""
    fired: list[float] = []
    failed_event: list[BaseException] = []
    began = time.perf_counter()

    def fire() -> None:
        fired.append(time.perf_counter() - began)
        try:
            event()
        except BaseException as e:  # raised below, once the load is over
            failed_event.append(e)

    timer = threading.Timer(at_s, fire)
    timer.start()
    try:
        result = asyncio.run(open_loop(HOST, PORT, request, RATE, duration_s, timeout_s=60.0, max_connections=4096))
    finally:
        timer.cancel()
    if failed_event:
        raise failed_event[0]
    if not fired:
        raise RuntimeError("the load ended before its event")
    at = fired[0]
    latencies = result.latencies_ms
    before, after = result.scheduled < at, result.scheduled >= at
    failed = result.statuses != 200
    summary = result.summary()

    def p99(mask: np.ndarray) -> float | None:
        return round(float(np.percentile(latencies[mask], 99)), 1) if mask.any() else None

    soon = after & (result.scheduled < at + 10)
    return {
        "event_at_s": round(at, 2),
        "requests": summary["requests"],
        "statuses": summary["statuses"],
        "failed": int(failed.sum()),
        "failed_sent_before_event": int((failed & before).sum()),
        "first_failure_s": round(float(result.scheduled[failed].min() - at), 2) if failed.any() else None,
        "last_failure_s": round(float(result.scheduled[failed].max() - at), 2) if failed.any() else None,
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "p99_before_ms": p99(before),
        "p99_first_10s_after_ms": p99(soon),
        "max_ms": round(float(latencies.max()), 1),
        "retried": summary["retried"],
    }


def kill(server: LocalServe) -> Callable[[], None]:
    victim = min(p.pid for p in server.replicas(APP))
    return lambda: os.kill(victim, signal.SIGKILL)


def switch(route: str, state: str) -> None:
    """Turn `secured`'s token check (SWITCH) or its request path's hardening (HARDENING_SWITCH) on or off
    (benchmarks.auth_toggle_app)."""
    request = urllib.request.Request(f"http://{HOST}:{PORT}/{SECURED}{route}", data=state.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        if response.read().decode() != state:
            raise RuntimeError(f"{route} did not turn {state}")


def check_timings() -> dict:
    """How many token checks `secured`'s replica ran, and the nanoseconds they took."""
    with urllib.request.urlopen(f"http://{HOST}:{PORT}/{SECURED}{SWITCH}", timeout=30) as response:
        return json.loads(response.read())


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the k-th smallest and k-th largest of `values`, with k the
    largest for which the binomial tails leave at least `confidence` (for 16 values, the 4th and the 13th,
    97.9 %). It assumes nothing of the pairs' spread, only that each pair is as likely above as below. Fewer
    than 6 values cannot give 95 % (the whole range of 5 covers 93.75 %): a ValueError, never a mislabel."""
    ordered, n = sorted(values), len(values)
    k, tail = 0, 0.0
    while k < n // 2:
        tail_next = tail + math.comb(n, k) / 2**n
        if 2 * tail_next > 1 - confidence:
            break
        tail, k = tail_next, k + 1
    if not k:
        raise ValueError(f"{n} values give no {confidence:.0%} interval for their median")
    return ordered[k - 1], ordered[n - k]


def thread_cpu_s(process: psutil.Process) -> dict[int, float]:
    """CPU seconds so far of each of the replica's threads, by native thread id."""
    return {t.id: t.user_time + t.system_time for t in process.threads()}


def alternating_windows(server: LocalServe, request: bytes, route: str, window_s: float, pairs: int) -> list[dict]:
    """The same requests to `secured`'s one replica in closed-loop windows whose arm, `route` switched off or
    on, alternates (which runs first alternates too, so the machine's drift cancels in the pairs): each
    window's figures, and the CPU seconds of each of the replica's threads meanwhile."""
    (replica,) = server.replicas(SECURED)
    windows = []
    for pair in range(pairs):
        for arm in arm_order(pair, ("off", "on")):
            switch(route, arm)
            cpu_before = thread_cpu_s(replica)
            result = asyncio.run(closed_loop(HOST, PORT, request, CONCURRENCY, window_s, warmup_s=1.0))
            cpu_after = thread_cpu_s(replica)  # for every request of the window, its warm-up's too
            if result.statuses.keys() != {200}:
                raise RuntimeError(f"{route} {arm}: answers other than 200: {result.statuses}")
            cpu_s = {tid: cpu_after[tid] - cpu_before.get(tid, 0.0) for tid in cpu_after}
            windows.append({"pair": pair, "arm": arm, **result.summary(), "exchanged": result.exchanged, "cpu": cpu_s})
    switch(route, "on")
    return windows


def paired_ratios(windows: list[dict], pairs: int) -> dict:
    """The medians of the pairs' on/off ratios of throughput (with its 95 % interval) and p99, and the
    replica process's CPU per request in each arm."""
    ratios = []
    for pair in range(pairs):
        off, on = (next(w for w in windows if w["pair"] == pair and w["arm"] == a) for a in ("off", "on"))
        ratios.append({"throughput": on["rps"] / off["rps"], "p99": on["p99_ms"] / off["p99_ms"]})
    throughput = [r["throughput"] for r in ratios]
    low, high = median_interval(throughput)

    def cpu_ms_per_request(arm: str) -> float:
        arm_windows = [w for w in windows if w["arm"] == arm]
        cpu_s = sum(sum(w["cpu"].values()) for w in arm_windows)
        return round(1e3 * cpu_s / sum(w["exchanged"] for w in arm_windows), 4)

    return {
        "concurrency": CONCURRENCY,
        "pairs": pairs,
        "same_replica": True,
        "throughput_ratio_median": round(statistics.median(throughput), 4),
        "throughput_ratio_interval_95": [round(low, 4), round(high, 4)],
        "p99_ratio_median": round(statistics.median(r["p99"] for r in ratios), 4),
        "replica_cpu_ms_per_request_by_arm": {arm: cpu_ms_per_request(arm) for arm in ("off", "on")},
        "ratios": ratios,
    }


def auth_cost(server: LocalServe, secured_request: bytes, window_s: float, pairs: int) -> dict:
    """The token check on in one window of each pair and off in the other. Beside the end-to-end ratios, what
    the checks themselves took, timed in the replica: their share of the CPU per request of the thread that
    ran them bounds the throughput they can cost (it times `TokenTable.check`, the hash and compares; the
    header lookup and the route's scope around it are not timed)."""
    switch(SWITCH, "on")
    checks_before = check_timings()
    windows = alternating_windows(server, secured_request, SWITCH, window_s, pairs)
    checks = check_timings()
    loop_thread = checks["thread_id"]  # the thread that ran the checks: the replica's request loop
    checks = {k: checks[k] - checks_before[k] for k in ("checks", "check_ns")}
    on_windows = [w for w in windows if w["arm"] == "on"]
    exchanged = sum(w["exchanged"] for w in on_windows)
    cpu_per_request_ms = 1e3 * sum(w["cpu"].get(loop_thread, 0.0) for w in on_windows) / exchanged
    process_cpu_per_request_ms = 1e3 * sum(sum(w["cpu"].values()) for w in on_windows) / exchanged
    check_us = checks["check_ns"] / checks["checks"] / 1e3 if checks["checks"] else None
    ratios = paired_ratios(windows, pairs)
    for window in windows:
        cpu = window.pop("cpu")
        window["loop_thread_cpu_s"], window["replica_cpu_s"] = cpu.get(loop_thread, 0.0), sum(cpu.values())
    return {
        **ratios,
        "window_s": window_s,
        "checks": checks["checks"],
        "check_us": round(check_us, 3) if check_us is not None else None,
        "replica_loop_thread_cpu_ms_per_request": round(cpu_per_request_ms, 4),
        "replica_process_cpu_ms_per_request": round(process_cpu_per_request_ms, 4),
        "check_share_of_replica_cpu": round(check_us / 1e3 / cpu_per_request_ms, 5) if check_us else None,
        "windows": windows,
    }


def hardening_cost(server: LocalServe, secured_request: bytes, window_s: float, pairs: int) -> dict:
    """The request path's hardening (bodies read after the token check against their route's limit, inputs
    checked against the model before decoding, large requests decoded off the loop) on in one window of each
    pair and off in the other (benchmarks.auth_toggle_app), the token check on in both."""
    windows = alternating_windows(server, secured_request, HARDENING_SWITCH, window_s, pairs)
    result = {**paired_ratios(windows, pairs), "window_s": window_s}
    for window in windows:
        window["replica_cpu_s"] = sum(window.pop("cpu").values())
    return {**result, "windows": windows}


def unauthenticated_bodies(server: LocalServe, clients: int = 3, size: int = 768 << 20) -> dict:
    """`clients` at once each stream `size` bytes, chunked, with no token, to `secured`'s one replica and keep
    sending whatever it answers: their statuses, when each was answered, and how much the replica grew."""
    watch = MemoryWatch(server.replicas(SECURED))
    watch.start()
    results: list[Streamed] = []
    path = f"/{SECURED}/v2/models/cnn/infer"
    threads = [
        threading.Thread(target=lambda: results.append(stream_body(HOST, PORT, path, size, {}))) for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    growth = watch.growth()
    return {
        "clients": clients,
        "body_mib": size >> 20,
        "statuses": sorted(r.status for r in results),
        "answered_max_s": round(max(r.answered_s for r in results), 3),
        "sent_mib": [round(r.sent / 2**20) for r in results],
        "replica_growth_mib": round(growth / 2**20, 1),
    }


def large_body_stall(request: bytes, size: int = 60_000_000) -> dict:
    """A `size`-byte JSON request refused (a batch past any limit: unread past the largest request the model
    takes, else read and parsed first) three times over, while a small request every 0.1 s goes to the same
    replica: how long the small ones waited."""
    big = oversized_json_request(size)
    refused: list[int] = []
    small_body = request.split(b"\r\n\r\n", 1)[1]
    small = ("/v2/models/cnn/infer", small_body, {"Content-Type": "application/json"})

    def send_big() -> None:
        for _ in range(3):
            refused.append(post(HOST, PORT, "/v2/models/cnn/infer", big, {"Content-Type": "application/json"})[0])

    waits = waits_while(HOST, PORT, small, send_big)
    seconds = sorted(w for w, _ in waits)
    return {
        "body_bytes": len(big),
        "refused": refused,
        "small_requests": len(waits),
        "small_statuses": sorted({status for _, status in waits}),
        "small_wait_max_s": round(seconds[-1], 3),
        "small_wait_p50_s": round(seconds[len(seconds) // 2], 4),
    }


def feedback_across_a_kill(server: LocalServe, capture: Path, posters: int = 8, at_s: float = 3.0) -> dict:
    """`posters` send labels (10 a post, ids never reused) for `at_s` + 3 s; the only replica of `trtserve` is
    SIGKILLed `at_s` seconds in. Once its replacement is up: which acknowledged labels are in the Parquet
    files under `_feedback/`."""
    victim = min(p.pid for p in server.replicas(APP))
    acknowledged: set[str] = set()
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def poster(index: int) -> None:
        sent = 0
        while not stop.is_set():
            ids = [f"p{index}-{sent + i}" for i in range(10)]
            sent += 10
            body = json.dumps([{"id": i, "label": 3} for i in ids]).encode()
            try:
                status, _ = post(HOST, PORT, "/v2/models/cnn/feedback", body, {"Content-Type": "application/json"})
            except OSError:
                status = 0
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    acknowledged.update(ids)

    threads = [threading.Thread(target=poster, args=(i,), daemon=True) for i in range(posters)]
    for thread in threads:
        thread.start()
    time.sleep(at_s)
    with lock:
        before_kill = len(acknowledged)
    os.kill(victim, signal.SIGKILL)
    time.sleep(3.0)
    stop.set()
    for thread in threads:
        thread.join(120)
    wait_for_replicas(server, 1)
    deadline, in_parquet, in_streams = time.monotonic() + 60, set(), set()
    while time.monotonic() < deadline and not acknowledged <= in_parquet | in_streams:
        in_parquet, in_streams = _feedback_ids(capture)
        time.sleep(1.0)
    return {
        "posters": posters,
        "acknowledged": len(acknowledged),
        "acknowledged_before_kill": before_kill,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "in_parquet": len(acknowledged & in_parquet),
        "in_open_streams": len(acknowledged & (in_streams - in_parquet)),
        "lost": len(acknowledged - in_parquet - in_streams),
    }


def _feedback_ids(capture: Path) -> tuple[set[str], set[str]]:
    """The label ids under `capture/_feedback`: in Parquet files, and in the live replica's open streams
    (`.part-*.inprogress.arrows`: fsynced before their labels were acknowledged, converted to Parquet at
    rotation or stop; read here up to their last complete batch)."""
    import pyarrow.ipc
    import pyarrow.parquet as pq

    root = capture / "_feedback"
    in_parquet, in_streams = set(), set()
    for path in root.rglob("part-*.parquet"):
        in_parquet.update(pq.read_table(path, columns=["inference_id"]).column("inference_id").to_pylist())
    for path in root.rglob(".part-*.inprogress.arrows"):
        try:
            for batch in pyarrow.ipc.open_stream(path):
                in_streams.update(batch.column("inference_id").to_pylist())
        except (OSError, pyarrow.ArrowInvalid):  # a torn last batch: what came before it is counted
            continue
    return in_parquet, in_streams


def measure(repository: Path, results: Path, window_s: float = 6.0, pairs: int = 16) -> dict:
    source, _ = ensure_model(repository, ROOT / "configs/models/cnn.yaml")
    repository = source.parent.parent
    work = Path(tempfile.mkdtemp(prefix="trtserve-reliability-"))
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    request = json_request("/v2/models/cnn/infer", {"image": image})
    secured = json_request(f"/{SECURED}/v2/models/cnn/infer", {"image": image})
    secured = secured.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode(), 1)
    scenarios: dict[str, dict] = {}

    def run(name: str, event: Callable[[], None], at_s: float, duration_s: float) -> None:
        scenarios[name] = under_load(request, event, at_s, duration_s)
        s = scenarios[name]
        print(
            f"{name}: {s['requests']} requests, statuses {s['statuses']}, p99 {s['p99_ms']} ms "
            f"(before {s['p99_before_ms']}, 10 s after {s['p99_first_10s_after_ms']}), max {s['max_ms']} ms",
            file=sys.stderr,
        )

    server = LocalServe(config(work, repository, 2), log_path=work / "serve.log")
    server.start()
    try:
        wait_for_replicas(server, 2)
        run("kill_two", kill(server), at_s=20.0, duration_s=60.0)
        wait_for_replicas(server, 2)
        run("redeploy", lambda: server.deploy(config(work, repository, 2, generation=1)), at_s=5.0, duration_s=60.0)
        wait_for_replicas(server, 2)
        run("downscale", lambda: server.deploy(config(work, repository, 1, generation=1)), at_s=5.0, duration_s=30.0)
        wait_for_replicas(server, 1)
        # Now each application has one replica; the auth cost is measured on `secured`'s.
        cost = auth_cost(server, secured, window_s, pairs)
        print(
            f"auth: throughput x{cost['throughput_ratio_median']:.3f} (95 % interval "
            f"{cost['throughput_ratio_interval_95']}), p99 x{cost['p99_ratio_median']:.3f}; the check "
            f"{cost['check_us']} us per request, a share {cost['check_share_of_replica_cpu']} of the CPU of the "
            "replica's request loop",
            file=sys.stderr,
        )
        hardening = hardening_cost(server, secured, window_s, pairs)
        print(
            f"hardening: throughput x{hardening['throughput_ratio_median']:.3f} (95 % interval "
            f"{hardening['throughput_ratio_interval_95']}), p99 x{hardening['p99_ratio_median']:.3f}; replica CPU "
            f"per request {hardening['replica_cpu_ms_per_request_by_arm']} ms",
            file=sys.stderr,
        )
        abuse = {"unauthenticated_bodies": unauthenticated_bodies(server)}
        abuse["large_body"] = large_body_stall(request)  # past the largest request cnn takes: refused unread
        abuse["largest_parsed_body"] = large_body_stall(request, 12_000_000)  # read, parsed off the loop, refused
        abuse["feedback_kill"] = feedback_across_a_kill(server, work / "capture")
        print(f"abuse: {json.dumps(abuse)}", file=sys.stderr)
        run("kill_one", kill(server), at_s=5.0, duration_s=60.0)
        wait_for_replicas(server, 1)
        # The same with a short queue: callers beyond it are told 503 + Retry-After instead of waiting.
        server.deploy(config(work, repository, 1, generation=1, queued=SHORT_QUEUE))
        wait_for_replicas(server, 1)
        run("kill_one_short_queue", kill(server), at_s=5.0, duration_s=30.0)
        wait_for_replicas(server, 1)
        run("shutdown", server.stop, at_s=5.0, duration_s=15.0)
    finally:
        server.stop()
    report = {
        "benchmark": "reliability",
        "machine": machine.describe(),
        "model": "cnn",
        "rate": RATE,
        "encoding": "json",
        "auth_cost": cost,
        "hardening_cost": hardening,
        "abuse": abuse,
        "scenarios": scenarios,
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "reliability.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


SCENARIOS = {
    "kill_two": "two replicas, one SIGKILLed",
    "redeploy": "two replicas, redeployed with changed args (every replica replaced)",
    "downscale": "redeployed from two replicas to one",
    "kill_one": "one replica, SIGKILLed",
    "kill_one_short_queue": "one replica with max_queued_requests 16, SIGKILLed",
    "shutdown": "SIGTERM to `trtserve serve` (`LocalServe.stop`)",
}


def auth_cost_met(cost: dict) -> bool:
    """Met when the check's share of the CPU per request of the replica's request loop, the thread the check
    runs on (an upper bound on the throughput it can cost while that thread is the bottleneck, and looser
    when anything else is) is within
    the target, and the end-to-end measurement does not contradict it: its interval for the median reaches
    the target. The end-to-end ratio alone drifts by more than 3 % from window to window on this machine.
    Runs from before the check was timed (two applications compared) are not met: they could not show it."""
    share, interval = cost.get("check_share_of_replica_cpu"), cost.get("throughput_ratio_interval_95")
    if share is None or interval is None:
        return False
    return share <= targets.AUTH_COST and interval[1] >= 1 - targets.AUTH_COST


def _auth_cost_measured(cost: dict) -> str:
    end_to_end = f"throughput x{cost['throughput_ratio_median']:.3f}, p99 x{cost['p99_ratio_median']:.3f}"
    if cost.get("check_share_of_replica_cpu") is None:
        return f"{end_to_end} (two applications compared, the check not timed)"
    low, high = cost["throughput_ratio_interval_95"]
    return (
        f"the check {cost['check_us']:.1f} us per request, {cost['check_share_of_replica_cpu']:.2%} of the "
        f"CPU per request of the replica's request loop ({cost['replica_loop_thread_cpu_ms_per_request']:.2f} ms, "
        f"the process's {cost['replica_process_cpu_ms_per_request']:.2f} ms); end to "
        f"end {end_to_end} (throughput's 95 % interval x{low:.3f} to x{high:.3f})"
    )


def hardening_cost_met(cost: dict) -> bool:
    """Met when the replica's CPU per request with the hardening is within the target of its CPU without
    (what noise moves least here) and the end-to-end interval for the median reaches the target."""
    by_arm, interval = cost["replica_cpu_ms_per_request_by_arm"], cost["throughput_ratio_interval_95"]
    return by_arm["on"] <= by_arm["off"] * (1 + targets.HARDENING_COST) and interval[1] >= 1 - targets.HARDENING_COST


def _stall_row(stall: dict) -> str:
    return table_row(
        f"while a {stall['body_bytes'] / 1e6:.0f} MB body is refused, a small request every 0.1 s waits at most "
        f"{targets.STALL_MAX_S:g} s",
        f"refused {stall['refused']}; {stall['small_requests']} small requests, statuses "
        f"{stall['small_statuses']}, the longest wait {stall['small_wait_max_s']:.2f} s (median "
        f"{stall['small_wait_p50_s'] * 1e3:.1f} ms)",
        all(400 <= status < 500 for status in stall["refused"])
        and stall["small_statuses"] == [200]
        and stall["small_wait_max_s"] <= targets.STALL_MAX_S,
    )


def _abuse_rows(abuse: dict, hardening: dict) -> list[str]:
    bodies, labels = abuse["unauthenticated_bodies"], abuse["feedback_kill"]
    by_arm = hardening["replica_cpu_ms_per_request_by_arm"]
    low, high = hardening["throughput_ratio_interval_95"]
    stalls = [abuse[key] for key in ("large_body", "largest_parsed_body") if key in abuse]
    return [
        table_row(
            f"{bodies['clients']} concurrent unauthenticated {bodies['body_mib']} MiB bodies: refused, the replica "
            f"grows by at most {targets.UNAUTHENTICATED_GROWTH_MIB} MiB",
            f"statuses {bodies['statuses']}, answered within {bodies['answered_max_s']:.2f} s; the replica grew by "
            f"{bodies['replica_growth_mib']:.0f} MiB",
            set(bodies["statuses"]) == {401} and bodies["replica_growth_mib"] <= targets.UNAUTHENTICATED_GROWTH_MIB,
        ),
        *(_stall_row(stall) for stall in stalls),
        table_row(
            f"acknowledged labels lost across a replica SIGKILL: at most {targets.FEEDBACK_LOST}",
            f"{labels['lost']} lost of {labels['acknowledged']} acknowledged ({labels['posters']} posters, "
            f"statuses {labels['statuses']}): {labels.get('in_parquet', '?')} in Parquet (the killed replica's "
            f"recovered by its replacement), {labels.get('in_open_streams', '?')} in the replacement's open stream",
            labels["lost"] <= targets.FEEDBACK_LOST,
        ),
        table_row(
            f"the request path's hardening costs at most {targets.HARDENING_COST:.0%} of throughput at "
            f"c={hardening['concurrency']}",
            f"replica CPU per request {by_arm['on']:.3f} ms on, {by_arm['off']:.3f} ms off "
            f"(x{by_arm['on'] / by_arm['off']:.3f}); end to end throughput x{hardening['throughput_ratio_median']:.3f} "
            f"(95 % interval x{low:.3f} to x{high:.3f}), p99 x{hardening['p99_ratio_median']:.3f}",
            hardening_cost_met(hardening),
        ),
    ]


def render(data: dict) -> list[str]:
    s, cost = data["scenarios"], data["auth_cost"]
    labels = {"kill_one": "", "kill_one_short_queue": "short queue: "}
    lone = {label: s[name] for name, label in labels.items() if name in s}
    one_statuses = set().union(*(r["statuses"] for r in lone.values()))
    drained = {name: s[name]["failed"] for name in ("redeploy", "downscale")}
    lines = [
        "## Reliability: replicas killed, replaced, scaled down and stopped under load; the cost of auth",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `python -m benchmarks reliability`. cnn behind the default (HAProxy) ingress as `trtserve serve` "
        f"starts it; open loop, Poisson, {data['rate']:.0f} req/s, JSON; latency from each request's scheduled "
        "time. Each scenario's event comes a few seconds into its load (the kill with two replicas 20 s into a "
        f"60 s load: the minute around it). Auth: closed loop at c={cost['concurrency']}, {cost['pairs']} pairs "
        f"of {cost['window_s']:g} s windows, the same requests (with a bearer token) to one cnn replica whose "
        "token check is switched on for one window of each pair and off for the other "
        "(`benchmarks/auth_toggle_app.py`), alternating which runs first; the medians of the pairs' on/off ratios. "
        "The request path's hardening is measured the same way (its switch: the body read whole first and decoded "
        "before any check, as before issue 30), with the token check on in both arms. Abuse: three clients stream "
        "768 MiB each without a token to that replica (its RSS sampled every 20 ms); a 60 MB JSON request refused "
        "three times while a small one goes every 0.1 s; labels posted by 8 clients while the replica is SIGKILLed, "
        "then looked for in the Parquet files once its replacement is up.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        table_row(
            "a replica SIGKILLed under load with two replicas: 0 failed requests",
            f"{s['kill_two']['failed']} failed of {s['kill_two']['requests']}; p99 over the minute "
            f"{s['kill_two']['p99_ms']:.1f} ms (before the kill {s['kill_two']['p99_before_ms']:.1f} ms)",
            s["kill_two"]["failed"] <= targets.KILL_TWO_FAILED,
        ),
        table_row(
            f"a lone replica SIGKILLed under load: callers get only {' or '.join(targets.ONE_REPLICA_STATUSES)}",
            "; ".join(f"{label}statuses {r['statuses']}" for label, r in lone.items())
            + " (0: connection failed or timed out)",
            one_statuses <= set(targets.ONE_REPLICA_STATUSES),
        ),
        table_row(
            "redeploy and downscale under load drain: 0 failed requests",
            ", ".join(f"{name} {n} failed of {s[name]['requests']}" for name, n in drained.items()),
            all(n <= targets.DRAIN_FAILED for n in drained.values()),
        ),
        table_row(
            "shutdown under load: every request sent before it began is answered",
            f"{s['shutdown']['failed_sent_before_event']} of those failed "
            f"(statuses of all: {s['shutdown']['statuses']})",
            s["shutdown"]["failed_sent_before_event"] <= targets.DRAIN_FAILED,
        ),
        table_row(
            f"bearer tokens cost at most {targets.AUTH_COST:.0%} of throughput at c={cost['concurrency']}",
            _auth_cost_measured(cost),
            auth_cost_met(cost),
        ),
        *(_abuse_rows(data["abuse"], data["hardening_cost"]) if "abuse" in data else []),
        "",
        "| scenario | requests | statuses | failures from / to (s after the event) | p99 ms before | p99 ms, "
        "10 s after | p99 ms, all | max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label in SCENARIOS.items():
        if name not in s:  # a run from before the scenario existed
            continue
        r = s[name]
        span = "-" if r["first_failure_s"] is None else f"{r['first_failure_s']:+.1f} / {r['last_failure_s']:+.1f}"
        lines.append(
            f"| {label} | {r['requests']} | {r['statuses']} | {span} | {r['p99_before_ms']} | "
            f"{r['p99_first_10s_after_ms']} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} |"
        )
    return [*lines, ""]


def add_parser(sub) -> None:
    p = sub.add_parser("reliability", help="replicas killed, replaced, scaled down and stopped under load; auth cost")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--window", type=float, default=6.0, help="seconds per window of the auth cost")
    p.add_argument("--pairs", type=int, default=16, help="auth off/on window pairs (at least 6)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))


def run(args) -> None:
    if args.pairs < 6:
        raise SystemExit(
            "--pairs: at least 6 window pairs, so the machine's drift cancels in the median and the median's "
            "95 % interval exists"
        )
    measure(args.repository, args.results, window_s=args.window, pairs=args.pairs)

"""`python -m benchmarks calibrate`: what the HTTP path costs, measured against a running server, so that
`plan` charges a measured figure, not an assumed one.

Four runs of one request kind:
1. saturation, closed loop at concurrency 32: throughput X, b rows per engine call and the engine's
   time per call T inside the server (its /stats `compute_infer`, timed in the engine's thread). The
   replica's event loop, which handles every request and every engine call one at a time, is the
   bottleneck there: 1/X = per_request + per_call / b. The engine, in its own thread, shares the CPU
   with that loop (and with the ingress): it ran T / t(b) times slower than the profile t measured alone
   (engine_slowdown). How each call varied around that is recorded too (/stats `recent_engine_calls`:
   engine_variation); `plan` does not draw on it, since the calls that ran long show in the stalls.
   Its slowdown differs at other loads: runs 3. and 4. measure it there too, and `plan` interpolates in
   the rate. Where the engine, not the loop, was the bottleneck (engine busy over 80% of the run: MiniLM
   here), 1/X measures the engine, and the loop's cost comes from the loop thread's own time instead
   (its CPU time, and the share of its waits for a CPU that holds up queued work: `loop_seconds`, from
   /stats), at this load and at those of 4.; an engine call's loop cost
   is then what /stats measured of it at low load (`compute_input` + `compute_output`).
2. small batches, closed loop at concurrency 4: X' at b' rows a call gives the second equation, so
   per_request and per_call separate (the cost of an engine call on the loop: stacking, the hand-off,
   splitting, answering), which is what makes small batches dear. Only where the loop still limits that
   run: if the engine at its profiled speed would have been busy more than half of it, per_call is 0.
3. low load, open loop at a tenth of X: each latency less the handler's mean time there (/stats) and the
   HTTP layer's part before the handler is latency added outside the replica (ingress, loopback,
   client); its samples, not just a mean, go into the simulation so the low-load tail is kept. The
   engine's slowdown there too: an idle engine is slower than a busy one (threads asleep, caches cold).
4. stalls, open loops at a quarter, half and three quarters of X: times the loop could not run at all
   (the CPU or the GIL taken by something else: Ray's own threads and daemons, the ingress, the client).
   Each shows as a burst of requests that all took far longer than the run's median, and its length is
   the answering time the replica lost meanwhile (`stalls`): near an engine-bound model's capacity slow
   requests are its queue, which the simulator reproduces, while answers keep coming. All runs are kept
   and `plan` interpolates between them, and extrapolates beyond: stalls grow with the load, faster
   near capacity (where the ingress, the client and the engine all want the CPU), and they are where
   much of the tail near capacity comes from (a 20 ms stall at 90% load takes long to drain). The
   engine's slowdown and the loop thread's time a request are measured in these runs too.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks import machine
from benchmarks.http_load import closed_loop, open_loop, settling_s
from benchmarks.plan import HttpPath
from benchmarks.simulate import profile_service_time

SATURATION_CONCURRENCY = 32
SMALL_BATCH_CONCURRENCY = 4
LOW_LOAD_FRACTION = 0.1
STALL_LOAD_FRACTIONS = (0.25, 0.5, 0.75)
STALL_GAP_S = 0.02  # slow requests sent closer than this belong to the same stall


def _stall_threshold_ms(median_ms: float, engine_ms: float) -> float:
    """Beyond what a request takes (the median) and waiting out an engine call or two (`engine_ms` each,
    as long as calls took in that run): that is queueing, not a stall."""
    return max(3 * median_ms, median_ms + 5.0, median_ms + 2 * engine_ms)


def stalls(scheduled_s: np.ndarray, completed_s: np.ndarray, engine_ms: float = 0.0) -> list[float]:
    """Stall lengths (ms) in an open-loop run: the answering time the replica lost. A stall shows first as
    a burst of slow requests (each sent within STALL_GAP_S of the last, latency over the stall
    threshold), but slow requests are not a stall by themselves: near an engine-bound model's capacity
    they are its queue, and answers keep coming at the rate requests arrive. So for the slowest request
    of each burst, its wait less the time the answers that came back meanwhile account for at the run's
    rate (at least the median, what the request takes itself) is what the replica lost: all of the
    wait beyond that where nothing was answered (the loop could not run), part of it where the loop ran
    slowly, none where it kept up. A loss shorter than the median is noise in the count of answers."""
    if len(completed_s) < 2:
        return []
    latencies_ms = (completed_s - scheduled_s) * 1e3
    median = float(np.median(latencies_ms))
    rate = (len(scheduled_s) - 1) / float(np.ptp(scheduled_s) or 1.0)
    answered = np.sort(completed_s)
    slow = np.flatnonzero(latencies_ms > _stall_threshold_ms(median, engine_ms))
    bursts: list[int] = []  # the slowest request of each burst
    last = -np.inf
    for i in slow[np.argsort(scheduled_s[slow], kind="stable")]:
        if scheduled_s[i] - last < STALL_GAP_S and bursts:
            bursts[-1] = i if latencies_ms[i] > latencies_ms[bursts[-1]] else bursts[-1]
        else:
            bursts.append(i)
        last = scheduled_s[i]
    lengths = []
    for i in bursts:
        meanwhile = np.searchsorted(answered, completed_s[i]) - np.searchsorted(answered, scheduled_s[i], "right")
        lost = float(latencies_ms[i]) - max(median, meanwhile / rate * 1e3)
        if lost > median:
            lengths.append(lost)
    return lengths


def model_stats(url: str, model: str) -> dict:
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as response:
        return json.loads(response.read())["model_stats"][0]


def rows_per_call(before: dict, after: dict) -> float:
    calls = after["execution_count"] - before["execution_count"]
    return (after["inference_count"] - before["inference_count"]) / calls if calls else float("nan")


def _engine_calls(before: dict, after: dict) -> tuple[float, float]:
    """Rows per engine call and the engine's seconds per call between two /stats readings: the engine
    alone, timed in its thread (not the wait for the event loop to take its results back)."""
    calls = after["execution_count"] - before["execution_count"]
    if not calls:
        return float("nan"), float("nan")
    compute_ns = after["inference_stats"]["compute_infer"]["ns"] - before["inference_stats"]["compute_infer"]["ns"]
    return rows_per_call(before, after), compute_ns / calls / 1e9


def _handling(before: dict, after: dict) -> tuple[float, float]:
    """The handler's seconds a request decoding it and encoding its answer (0, 0 from a server that does
    not report them)."""
    b, a = before.get("request_handling"), after.get("request_handling")
    if not b or not a or a["count"] == b["count"]:
        return 0.0, 0.0
    count = a["count"] - b["count"]
    return (a["decode_ns"] - b["decode_ns"]) / count / 1e9, (a["encode_ns"] - b["encode_ns"]) / count / 1e9


def _handler_seconds(before: dict, after: dict) -> float | None:
    """Mean seconds a successful request spent in the replica's handler (decoding, queueing, the engine
    call, encoding) between two /stats readings."""
    b, a = before["inference_stats"]["success"], after["inference_stats"]["success"]
    return (a["ns"] - b["ns"]) / (a["count"] - b["count"]) / 1e9 if a["count"] > b["count"] else None


def _variation(before: dict, after: dict, engine) -> list[float]:
    """How an engine call's time varied inside the server between two /stats readings, around its mean:
    each recent call's time over the profile's for its rows, divided by their mean (the mean itself is
    the slowdown). Empty from a server that does not list its recent calls."""
    recent = after.get("recent_engine_calls") or {}
    calls = min(after["execution_count"] - before["execution_count"], len(recent.get("rows", [])))
    if calls < 2:
        return []
    rows, infer_us = recent["rows"][-calls:], recent["infer_us"][-calls:]
    ratios = np.array([us / 1e6 / engine(r, None) for r, us in zip(rows, infer_us, strict=True)])
    return [round(float(v), 3) for v in ratios / ratios.mean()]


def _handoff_seconds(before: dict, after: dict) -> float:
    """The event loop's seconds an engine call, besides the engine, between two /stats readings: stacking
    the inputs (`compute_input`) and taking the results back and splitting them (`compute_output`)."""
    calls = after["execution_count"] - before["execution_count"]
    if not calls:
        return 0.0
    stats_b, stats_a = before["inference_stats"], after["inference_stats"]
    parts = ("compute_input", "compute_output")
    return sum(stats_a[k]["ns"] - stats_b[k]["ns"] for k in parts) / calls / 1e9


def _loop_thread_seconds(before: dict, after: dict, key: str) -> float | None:
    """Seconds a request of the replica's event-loop thread's `key` in /stats (`event_loop_cpu_ns`: running;
    `event_loop_wait_ns`: runnable, waiting for a CPU), where the server reports it."""
    if key not in before or key not in after:
        return None
    requests = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    return (after[key] - before[key]) / requests / 1e9 if requests else None


def loop_seconds(cpu_s: float, wait_s: float, rate: float) -> float:
    """The event loop's time taken a request at `rate`: its thread's CPU time, and of its waits for a CPU
    (the engine's threads and everything else on the cores) the share that holds up other work. A wait
    when the loop had work queued delays all of it; one after the loop was idle delays only what woke it
    (latency, which the low-load floor includes). Work is queued about as often as the loop is taken:
    rate x (cpu + wait). (MiniLM, 250 req/s: rows per engine call 2.64 simulated this way, 2.61
    measured; 2.97 with every wait counted, 2.43 with none.)"""
    return cpu_s + wait_s * min(1.0, rate * (cpu_s + wait_s))


def _loop_per_request(before: dict, after: dict, rate: float) -> tuple[float, float, float] | None:
    """The loop thread's CPU and wait seconds a request between two /stats readings, and `loop_seconds`."""
    cpu = _loop_thread_seconds(before, after, "event_loop_cpu_ns")
    wait = _loop_thread_seconds(before, after, "event_loop_wait_ns")
    if cpu is None or wait is None:
        return None
    return cpu, wait, loop_seconds(cpu, wait, rate)


def _closed(url, host, port, model, request, concurrency, window_s):
    """Throughput, rows per engine call, the engine's seconds per call inside the server, the handler's
    decode and encode seconds a request, the event loop's seconds a request (`_loop_per_request`: CPU,
    wait and their `loop_seconds`, or None), and the /stats readings before and after."""
    before = model_stats(url, model)
    result = asyncio.run(closed_loop(host, port, request, concurrency, window_s, warmup_s=1.0))
    after = model_stats(url, model)
    if result.statuses.get(200, 0) != result.completed:
        raise RuntimeError(f"calibration: the server answered {result.statuses} at concurrency {concurrency}")
    figures = (*_engine_calls(before, after), *_handling(before, after), _loop_per_request(before, after, result.rps))
    return result.rps, *figures, (before, after)


def _loop_figures(loop: tuple[float, float, float] | None) -> dict:
    if loop is None:
        return {"event_loop_ms_per_request": None}
    keys = ("event_loop_cpu_ms_per_request", "event_loop_wait_ms_per_request", "event_loop_ms_per_request")
    return {k: round(v * 1e3, 4) for k, v in zip(keys, loop, strict=True)}


def calibrate(
    url: str,
    host: str,
    port: int,
    model: str,
    request: bytes,
    batch_seconds: dict[int, float],
    window_s: float = 8.0,
) -> dict:
    engine = profile_service_time(batch_seconds)
    asyncio.run(closed_loop(host, port, request, 4, 1.0, warmup_s=0.5))  # connections and caches warm
    saturated = _closed(url, host, port, model, request, SATURATION_CONCURRENCY, window_s)
    x_high, rows_high, served_call_s, _, _, saturated_loop, saturated_stats = saturated
    x_low, rows_low, _, decode_s, encode_s, _, _ = _closed(
        url, host, port, model, request, SMALL_BATCH_CONCURRENCY, window_s
    )
    # The loop's time per request is per_request + per_call / rows_per_call; two runs with different batch
    # sizes give both, when the loop is what limits the second run too. Where the engine is busy most of
    # that run (a heavy model), the run says nothing about the loop, and where the batch sizes do not
    # separate, neither: then it is all per request.
    # Whether the engine, at its own speed (the profile), could have limited that run. Its time inside the
    # server is no guide: it stretches with whatever else holds the CPU.
    engine_busy_low = x_low / rows_low * engine(rows_low, None)
    per_call_s = 0.0
    if rows_low < rows_high * 0.7 and engine_busy_low < 0.5:
        per_call_s = max(0.0, (1 / x_low - 1 / x_high) / (1 / rows_low - 1 / rows_high))
    per_request_s = max(1e-6, 1 / x_high - per_call_s / rows_high)
    # Whether the engine, not the loop, limited the saturated run (see below for what changes then).
    engine_busy_high = x_high / rows_high * served_call_s
    engine_bound = engine_busy_high > 0.8 and saturated_loop is not None
    slowdown = max(1.0, served_call_s / engine(rows_high, None))
    low_rate = LOW_LOAD_FRACTION * x_high
    before_low = model_stats(url, model)
    low = asyncio.run(open_loop(host, port, request, low_rate, window_s, warmup_s=settling_s(window_s)))
    after_low = model_stats(url, model)
    low_rows, low_call_s = _engine_calls(before_low, after_low)
    handler_s = _handler_seconds(before_low, after_low)
    low_summary = low.summary()
    stall_runs = []
    for fraction in STALL_LOAD_FRACTIONS:
        rate = fraction * x_high
        before = model_stats(url, model)
        stalled = asyncio.run(
            open_loop(host, port, request, rate, 3 * window_s, seed=11, warmup_s=settling_s(window_s))
        )
        after = model_stats(url, model)
        rows, call_s = _engine_calls(before, after)
        summary = stalled.summary()
        loop = _loop_per_request(before, after, summary["achieved_rps"])
        ok = stalled.statuses == 200
        handler_run_s = _handler_seconds(before, after)
        lengths = stalls(stalled.scheduled[ok], stalled.completed[ok], call_s * 1e3)
        span = float(np.ptp(stalled.scheduled)) or 1.0
        stall_runs.append(
            {
                "rate": round(rate, 1),
                "p50_ms": summary["p50_ms"],
                # For the record (plan does not read them): the run's own p99, and its mean latency
                # outside the replica's handler (what the low-load floor stands for at this load).
                "p99_ms": summary["p99_ms"],
                "outside_handler_ms": round(float(np.mean(stalled.latencies_ms[ok])) - handler_run_s * 1e3, 3)
                if handler_run_s is not None and ok.any()
                else None,
                "per_s": round(len(lengths) / span, 3),
                "span_s": round(span, 3),
                "lengths_ms": [round(v, 3) for v in lengths],
                # The engine's own slowdown at this load: less CPU taken by the loop than at saturation.
                "rows_per_engine_call": round(rows, 2),
                "engine_slowdown": round(max(1.0, call_s / engine(rows, None)), 3),
                "engine_variation": _variation(before, after, engine),
                # The loop's time a request (`loop_seconds`) and its thread's CPU and wait behind it.
                **_loop_figures(loop),
            }
        )
    # Where the engine, not the loop, limited the saturated run (a heavy model), 1/X says how fast the
    # engine went, not what the loop costs: then the loop thread's own time a request is the figure (on
    # a CPU, and part of its waits for one: on a small machine the engine's threads take the cores;
    # `loop_seconds`), as measured in the open loops of 4., which `plan` interpolates in the rate and
    # holds beyond them. Not the saturated run's: a closed loop of 32 with full batches costs the loop
    # less a request (MiniLM: 1.3 against 1.6 ms) than open-loop arrivals near capacity do, which is
    # where validate measures. An engine call's own cost on the loop is what the server measured of it at
    # low load (stacking, and taking the results back), where the loop had nothing else to do.
    loop_from, loop_by_rate = "throughput", []
    if engine_bound:
        per_request_s, loop_from = min(per_request_s, saturated_loop[2]), "event-loop thread"
        loop_by_rate = [
            (r["rate"], r["event_loop_ms_per_request"] / 1e3) for r in stall_runs if r["event_loop_ms_per_request"]
        ]
        per_call_s = _handoff_seconds(before_low, after_low)
    # Latency outside the replica: each low-load latency less the handler's mean time (from /stats) and
    # the HTTP layer's part before the handler (parsing) at that load.
    loop_low_s = HttpPath(per_request_s, per_request_by_rate=loop_by_rate).per_request_at(low_rate)
    parse_s = max(0.0, loop_low_s - decode_s - encode_s)
    if handler_s is None:  # a server without /stats timing: the model's figure for a lone request
        handler_s = engine(1, None) * slowdown + decode_s + encode_s + per_call_s
    floor_s = np.clip(low.completed - low.scheduled - handler_s - parse_s, 0.0, None)
    return {
        "benchmark": "calibrate",
        "model": model,
        "url": url,
        "machine": machine.describe(),
        "saturation": {
            "concurrency": SATURATION_CONCURRENCY,
            "rps": round(x_high, 1),
            "rows_per_engine_call": round(rows_high, 2),
            "engine_ms_per_call_profiled": round(engine(rows_high, None) * 1e3, 4),
            "engine_ms_per_call_served": round(served_call_s * 1e3, 4),
            "engine_busy": round(engine_busy_high, 3),
            "engine_variation": _variation(*saturated_stats, engine),
            **_loop_figures(saturated_loop),
        },
        "small_batches": {
            "concurrency": SMALL_BATCH_CONCURRENCY,
            "rps": round(x_low, 1),
            "rows_per_engine_call": round(rows_low, 2),
            "engine_busy": round(engine_busy_low, 3),
            "used": per_call_s > 0,
        },
        "low_load": {
            "rate": round(low_rate, 1),
            **{k: low_summary[k] for k in ("p50_ms", "p99_ms", "statuses")},
            "handler_ms": round(handler_s * 1e3, 4),
            "rows_per_engine_call": round(low_rows, 2),
            # An idle engine is slower than a busy one: threads asleep, caches cold (MiniLM: 2x alone).
            "engine_slowdown": round(max(1.0, low_call_s / engine(low_rows, None)), 3),
        },
        "per_request_ms": round(per_request_s * 1e3, 4),
        "per_request_from": loop_from,
        # Whether the engine, not the event loop, limited the saturated run.
        "engine_bound": engine_bound,
        # The loop's time a request in open loops, where measured that way: [rate, ms]; `plan`
        # interpolates in the rate (per_request_ms is the saturated run's: the capacity's bound).
        "per_request_by_rate": [[round(r, 1), round(v * 1e3, 4)] for r, v in loop_by_rate],
        # Of which the handler's: decoding (a task of its own after the HTTP layer's) and encoding (after
        # the engine call), measured by the server at concurrency 4, where the GIL is least contended.
        "decode_ms": round(min(decode_s, per_request_s) * 1e3, 4),
        "encode_ms": round(min(encode_s, max(0.0, per_request_s - decode_s)) * 1e3, 4),
        "per_call_ms": round(per_call_s * 1e3, 4),
        "engine_slowdown": round(slowdown, 3),
        "floor_p50_ms": round(float(np.median(floor_s)) * 1e3, 3),
        "floor_p99_ms": round(float(np.percentile(floor_s, 99)) * 1e3, 3),
        "floor_samples_ms": [round(float(v) * 1e3, 4) for v in floor_s],
        "stalls": stall_runs,
    }


# Figures of a stall run that older reports (or servers without the loop's figures) lack.
_OPTIONAL_RUN_FIGURES = (
    "event_loop_cpu_ms_per_request",
    "event_loop_wait_ms_per_request",
    "p99_ms",
    "outside_handler_ms",
)


def pool(reports: list[dict]) -> dict:
    """One calibration from several of the same server taken at different times (`validate` interleaves
    them with its measurement windows, so the machine's drift from minute to minute is in both): the
    figures' means, and every sample of the floor and every stall, each load's stall count over its
    runs' time together."""
    if len(reports) == 1:
        return reports[0]

    def mean(docs: list[dict], key: str) -> float:
        return round(float(np.mean([d[key] for d in docs])), 4)

    def means(docs: list[dict], keys: tuple[str, ...]) -> dict:
        return {k: mean(docs, k) for k in keys}

    stall_runs = []
    for runs in zip(*(r["stalls"] for r in reports), strict=True):
        span = sum(run["span_s"] for run in runs)
        loop = [run["event_loop_ms_per_request"] for run in runs]
        stall_runs.append(
            {
                **means(runs, ("rate", "p50_ms", "rows_per_engine_call", "engine_slowdown")),
                "per_s": round(sum(len(run["lengths_ms"]) for run in runs) / span, 3),
                "span_s": round(span, 3),
                "lengths_ms": [v for run in runs for v in run["lengths_ms"]],
                "engine_variation": [v for run in runs for v in run["engine_variation"]],
                "event_loop_ms_per_request": round(float(np.mean(loop)), 4) if all(loop) else None,
                **{
                    key: mean(runs, key)
                    for key in _OPTIONAL_RUN_FIGURES
                    if all(run.get(key) is not None for run in runs)
                },
            }
        )
    # Engine-bound in most of them: the loop's cost then comes from its thread's time (see calibrate).
    engine_bound = 2 * sum(r["engine_bound"] for r in reports) > len(reports)
    by_rate = [r["per_request_by_rate"] for r in reports if r["per_request_by_rate"]] if engine_bound else []
    if by_rate and len({len(b) for b in by_rate}) == 1:
        by_rate = np.mean(np.array(by_rate, dtype=float), axis=0).round(4).tolist()
    else:
        by_rate = by_rate[-1] if by_rate else []
    low = [r["low_load"] for r in reports]
    floor = [v for r in reports for v in r["floor_samples_ms"]]
    saturation = [r["saturation"] for r in reports]
    return {
        **reports[-1],
        "pooled": len(reports),
        "saturation": {
            **saturation[-1],
            **means(saturation, ("rps", "rows_per_engine_call", "engine_ms_per_call_served", "engine_busy")),
            "engine_variation": [v for s in saturation for v in s["engine_variation"]],
        },
        "low_load": {
            **low[-1],
            **means(low, ("rate", "p50_ms", "p99_ms", "handler_ms", "rows_per_engine_call", "engine_slowdown")),
        },
        **means(reports, ("per_request_ms", "decode_ms", "encode_ms", "per_call_ms", "engine_slowdown")),
        "engine_bound": engine_bound,
        "per_request_by_rate": by_rate,
        "floor_p50_ms": round(float(np.median(floor)), 3),
        "floor_p99_ms": round(float(np.percentile(floor, 99)), 3),
        "floor_samples_ms": floor,
        "stalls": stall_runs,
    }


def write(report: dict, results: Path) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"http-{report['model']}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path

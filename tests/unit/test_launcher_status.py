"""Ray Serve's verdict on a deployment read as one line (`deploy_failure`, `exception_line`), Ray's token
found where Ray looks for it, and HAProxy's stats page moved to loopback in Ray's own config: all without
Ray. The messages are Ray Serve 2.60's own, as its REST API gave them here (frames trimmed)."""

from __future__ import annotations

import importlib.util
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from runtime.serve.launcher import (
    REASON_MAX_CHARS,
    LocalServe,
    deploy_failure,
    exception_line,
    haproxy_wrapper_source,
    ray_auth_token,
    stats_on_loopback,
)

CAPTURE_KEY_LINE = (
    "CaptureError: cnn: capture.redact.hash ['image'] needs a secret key in $TRTSERVE_CAPTURE_KEY, which is not set"
)

# A replica whose constructor raised: Ray wraps the replica's traceback in its own, coloured.
REPLICA_FAILED = (
    "The deployment failed to start 3 times in a row. This may be due to a problem with its constructor or "
    "initial health check failing. See controller logs for details. Error:\n"
    "\x1b[36mray::ServeReplica:trtserve:trtserve.initialize_and_get_metadata()\x1b[39m (pid=5892, ip=192.0.2.2, "
    "actor_id=512cb65e8451e81dd9d1e40502000000, repr=<ray.serve._private.replica.ServeReplica:trtserve:trtserve "
    "object at 0x7f173676e690>)\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/serve/_private/replica.py", line 1928, in initialize\n'
    "    raise RuntimeError(traceback.format_exc()) from None\n"
    "RuntimeError: Traceback (most recent call last):\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/serve/_private/replica.py", line 4008, in '
    "_call_func_or_gen\n"
    "    result = callable(*args, **kwargs)\n"
    "             ^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    '  File "/work/main/runtime/serve/capture_sink.py", line 50, in __init__\n'
    "    raise CaptureError(\n"
    f"runtime.serve.capture_sink.{CAPTURE_KEY_LINE}"
)

# An application whose builder raised: the message is the application's, its deployments are none.
BUILD_FAILED = (
    "Deploying app 'trtserve' failed with exception:\n"
    "Traceback (most recent call last):\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/worker.py", line 1053, in get_objects\n'
    "    raise value.as_instanceof_cause()\n"
    "ray.exceptions.RayTaskError(RuntimeError): \x1b[36mray::build_serve_application()\x1b[39m (pid=14060)\n"
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/serve/_private/application_state.py", line 1843, '
    "in build_serve_application\n"
    "    raise RuntimeError(err_str) from None\n"
    "RuntimeError: Traceback (most recent call last):\n"
    '  File "/work/main/runtime/serve/config.py", line 265, in parse_args\n'
    '    raise ValueError(f"application args: {one_line(e, AppArgs)}") from None\n'
    "ValueError: application args: repository: required key is missing\n"
)


def _app(status: str, message: str = "", deployments: dict | None = None) -> dict:
    return {"status": status, "message": message, "deployments": deployments or {}}


def test_the_replicas_own_exception_is_the_line():
    assert exception_line(REPLICA_FAILED) == CAPTURE_KEY_LINE
    assert exception_line(BUILD_FAILED) == "ValueError: application args: repository: required key is missing"


def test_of_chained_exceptions_the_last_raised_names_the_problem():
    chained = (
        "Traceback (most recent call last):\n"
        '  File "a.py", line 1, in <module>\n'
        "KeyError: 'path'\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n"
        '  File "a.py", line 3, in <module>\n'
        "runtime.engine.errors.ArtifactError: model.onnx: no such file\n"
    )
    assert exception_line(chained) == "ArtifactError: model.onnx: no such file"


def test_a_multi_line_message_gives_its_first_line_and_no_traceback_gives_none():
    pydantic = (
        "Traceback (most recent call last):\n"
        '  File "pydantic/main.py", line 792, in model_validate\n'
        "    return cls.__pydantic_validator__.validate_python(\n"
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ServeDeploySchema\n"
        "applications.0.name\n"
        "  Input should be a valid string [type=string_type, input_value=[1], input_type=list]\n"
    )
    assert exception_line(pydantic) == "ValidationError: 1 validation error for ServeDeploySchema"
    assert exception_line("Failed to update the deployments ['trtserve'].") is None
    assert exception_line("Traceback (most recent call last):\n") is None  # cut before the exception
    assert exception_line("Traceback (most recent call last):\n  File 'x'\nKeyboardInterrupt\n") == "KeyboardInterrupt"


def test_no_verdict_while_the_applications_deploy_run_or_heal():
    assert deploy_failure({}) is None
    slow = {"trtserve": _app("DEPLOYING", deployments={"trtserve": _app("UPDATING")})}
    assert deploy_failure(slow) is None
    assert deploy_failure({"trtserve": _app("RUNNING"), "other": _app("UNHEALTHY", "replica died")}) is None


def test_a_failed_deployment_is_named_with_its_replicas_exception():
    applications = {
        "trtserve": _app(
            "DEPLOY_FAILED",
            "Failed to update the deployments ['trtserve'].",
            {"trtserve-rollouts": _app("HEALTHY"), "trtserve": _app("DEPLOY_FAILED", REPLICA_FAILED)},
        )
    }
    reason = deploy_failure(applications)
    assert reason == f"application trtserve: deployment trtserve failed to start: {CAPTURE_KEY_LINE}"
    assert "\n" not in reason and "Traceback" not in reason and "File " not in reason


def test_a_failed_builder_is_named_with_the_applications_message():
    applications = {"ok": _app("RUNNING"), "trtserve": _app("DEPLOY_FAILED", BUILD_FAILED)}
    assert deploy_failure(applications) == (
        "application trtserve failed to deploy: ValueError: application args: repository: required key is missing"
    )
    silent = deploy_failure({"a": _app("DEPLOY_FAILED", "\n  \n")})
    assert silent == "application a failed to deploy: Ray Serve gave no reason"
    assert deploy_failure({"a": _app("DEPLOY_FAILED", "line one\nno resources left\n")}).endswith(": no resources left")


def test_the_line_is_scrubbed_of_credentials_and_bounded():
    secret = "Traceback (most recent call last):\n  File 'x'\nOSError: s3://AKIDEXAMPLE:wJalrXUtnFEMI@b/m: denied\n"
    reason = deploy_failure({"a": _app("DEPLOY_FAILED", secret)})
    assert "AKIDEXAMPLE" not in reason and "wJalrXUtnFEMI" not in reason
    assert "s3://***@b/m: denied" in reason
    long = "Traceback (most recent call last):\n  File 'x'\nValueError: " + "x" * 5000
    reason = deploy_failure({"a": _app("DEPLOY_FAILED", long)})
    assert len(reason) <= len("application a failed to deploy: ") + REASON_MAX_CHARS and reason.endswith("...")


def test_rays_token_is_found_where_ray_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "token").write_text("from-path\n")
    assert ray_auth_token({"RAY_AUTH_MODE": "token"}) == "from-home"
    assert ray_auth_token({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}) == "from-path"
    both = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token"), "RAY_AUTH_TOKEN": "from-env"}
    assert ray_auth_token(both) == "from-env"
    assert ray_auth_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "from-env"}) is None
    assert ray_auth_token({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "absent")}) is None


def _rays_haproxy_config(stats_port: int) -> str:
    """Ray's HAProxy config as its template renders it (the template read from the installed Ray, which the
    wrapper must keep matching), without importing Ray."""
    jinja2 = pytest.importorskip("jinja2")
    ray = importlib.util.find_spec("ray")
    templates = runpy.run_path(str(Path(ray.origin).parent / "serve" / "_private" / "haproxy_templates.py"))
    env = jinja2.Environment()
    env.filters["haproxy_fmt"] = str
    config = SimpleNamespace(stats_port=stats_port, stats_uri="/stats", metrics_port=9101, frontend_port=8000)
    route_info = SimpleNamespace(status=200, routes_content_type="application/json", routes_message="{}")
    return env.from_string(templates["HAPROXY_CONFIG_TEMPLATE"]).render(
        config=config, backends=[], grpc_backends=[], route_info=route_info
    )


def test_the_stats_page_of_rays_config_is_moved_to_loopback_and_nothing_else():
    config = _rays_haproxy_config(18404)
    assert "\n  bind *:18404\n" in config  # what Ray renders: every interface
    loopback = stats_on_loopback(config)
    assert "\n  bind 127.0.0.1:18404\n" in loopback and "*:18404" not in loopback
    assert loopback.replace("127.0.0.1:18404", "*:18404") == config
    assert stats_on_loopback(loopback) == loopback  # HAProxy started again on a file already rewritten


def test_a_config_without_rays_stats_bind_is_refused():
    with pytest.raises(RuntimeError, match="found 0 `listen stats` sections"):
        stats_on_loopback("listen stats\n  bind 0.0.0.0:8404\n  stats enable\n")
    with pytest.raises(RuntimeError, match="found 2"):
        stats_on_loopback("listen stats\n  bind *:8404\nlisten stats\n  bind *:8405\n")


def _wrapper_run(tmp_path, config_text: str, python: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, Path]:
    """The wrapper `LocalServe` names to Ray, run as Ray runs HAProxy (or by `python`, when given), on a
    stand-in HAProxy that prints its arguments and the config it was given."""
    haproxy = tmp_path / "real-haproxy"
    haproxy.write_text('#!/bin/sh\necho "$@"\ncat "$3"\n')
    haproxy.chmod(0o700)
    config = tmp_path / "haproxy.cfg"
    config.write_text(config_text)
    serve_config = tmp_path / "serve.yaml"
    serve_config.write_text("http_options: {host: 127.0.0.1, port: 8000}\napplications: []\n")
    server = LocalServe(serve_config, ingress="haproxy")
    wrapper = server._haproxy_wrapper(str(haproxy))
    try:
        run = subprocess.run(
            [*python, str(wrapper), "-db", "-f", str(config), "-sf", "123"], capture_output=True, text=True, timeout=60
        )
    finally:
        server.stop()
    assert not wrapper.exists()  # stop removes it
    return run, config


def test_the_wrapper_moves_the_stats_page_in_rays_file_then_runs_haproxy_on_that_file(tmp_path):
    rendered = _rays_haproxy_config(18404)
    run, config = _wrapper_run(tmp_path, rendered)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"-db -f {config} -sf 123\n{stats_on_loopback(rendered)}"
    assert config.read_text() == stats_on_loopback(rendered)  # Ray knows its HAProxies by this path


def test_the_wrapper_refuses_to_run_haproxy_on_a_config_it_cannot_move(tmp_path):
    run, config = _wrapper_run(tmp_path, "listen stats\n  bind :::8404\n")
    assert run.returncode == 1 and run.stdout == ""  # HAProxy never ran
    assert "refusing to start HAProxy with its stats page on every interface" in run.stderr
    assert config.read_text() == "listen stats\n  bind :::8404\n"


def test_the_wrapper_runs_on_the_standard_library_alone(tmp_path):
    """It runs at every HAProxy start and reload: without site-packages or PYTHON* variables, as its first
    line asks, it imports the standard library only (importing runtime.serve.launcher took about 0.3 s)."""
    assert haproxy_wrapper_source("/usr/sbin/haproxy").startswith(f"#!{sys.executable} -SE\n")
    rendered = _rays_haproxy_config(18404)
    run, config = _wrapper_run(tmp_path, rendered, python=(sys.executable, "-S", "-E", "-X", "importtime"))
    assert run.returncode == 0, run.stderr
    assert config.read_text() == stats_on_loopback(rendered)
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in run.stderr.splitlines()[1:] if "|" in line}
    assert "re" in imported and "fcntl" in imported  # the wrapper's own imports were timed
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)

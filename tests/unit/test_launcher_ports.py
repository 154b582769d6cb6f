"""`LocalServe` refuses to start, naming the port and the variable that moves it, when a port its server
needs is taken (another server's HAProxy holds the fixed stats port): nothing is started. A start that
fails part-way leaves nothing behind."""

from __future__ import annotations

import socket
import sys
import tempfile

import psutil
import pytest

from runtime.serve.launcher import LocalServe, port_in_use, ports_to_bind, url_host
from tests.fixtures.ports import free_port, haproxy_ports


def _config(tmp_path, port: int):
    config = tmp_path / "serve.yaml"
    config.write_text(f"http_options: {{host: 127.0.0.1, port: {port}}}\napplications: []\n")
    return config


def _listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_haproxy_ports_come_from_the_environment_with_ray_defaults():
    default = ports_to_bind("127.0.0.1", 8000, "haproxy", {})
    assert [(h, p) for h, p, _ in default] == [
        ("127.0.0.1", 8000),
        ("127.0.0.1", 8404),  # HAProxy's stats page, on loopback by the launcher's wrapper
        ("0.0.0.0", 9101),
        ("127.0.0.1", 8500),
    ]
    moved = ports_to_bind("127.0.0.1", 8000, "haproxy", {"RAY_SERVE_HAPROXY_STATS_PORT": "18404"})
    assert moved[1][1] == 18404 and "RAY_SERVE_HAPROXY_STATS_PORT" in moved[1][2]
    assert [p for _, p, _ in ports_to_bind("127.0.0.1", 8000, "proxy", {})] == [8000]


@pytest.mark.parametrize("taken", ["http", "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"])
def test_a_taken_port_is_refused_before_anything_starts(tmp_path, taken):
    with _listening() as holder:
        held = holder.getsockname()[1]
        env = {
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        }
        port = held if taken == "http" else free_port()
        if taken != "http":
            env[taken] = str(held)
        server = LocalServe(_config(tmp_path, port), ingress="haproxy", env=env)
        with pytest.raises(RuntimeError, match=f"port {held} is already in use") as refused:
            server.start()
        assert (taken if taken != "http" else "http_options.port") in str(refused.value)
        assert server.process is None  # nothing was started


@pytest.mark.parametrize("failing", ["the log", "serve run"])
def test_a_start_that_fails_part_way_removes_the_wrapper_and_closes_the_log(tmp_path, monkeypatch, failing):
    """`launch` made the HAProxy wrapper's directory, then could not open the log or start `serve run`."""
    made = tmp_path / "tmp"
    made.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(made))  # where the wrapper's directory goes
    log = tmp_path / "absent" / "serve.log" if failing == "the log" else tmp_path / "serve.log"
    if failing == "serve run":
        monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))  # no `serve` beside it
    env = {**haproxy_ports(), "RAY_SERVE_HAPROXY_BINARY_PATH": "/bin/true"}
    server = LocalServe(_config(tmp_path, free_port()), ingress="haproxy", log_path=log, env=env)
    with pytest.raises(FileNotFoundError):
        server.start()
    assert server.process is None
    assert list(made.iterdir()) == []  # the wrapper's directory is gone
    assert str(log) not in {f.path for f in psutil.Process().open_files()}


def test_a_bad_port_variable_or_a_port_named_twice_is_one_line():
    with pytest.raises(RuntimeError, match="RAY_SERVE_HAPROXY_STATS_PORT='abc' is not a port number"):
        ports_to_bind("127.0.0.1", 8000, "haproxy", {"RAY_SERVE_HAPROXY_STATS_PORT": "abc"})
    with pytest.raises(RuntimeError, match="port 8000 is named twice"):
        ports_to_bind("127.0.0.1", 8000, "haproxy", {"RAY_SERVE_HAPROXY_METRICS_PORT": "8000"})


def test_a_taken_ipv6_port_is_seen():
    try:
        holder = socket.socket(socket.AF_INET6)
        holder.bind(("::1", 0))
    except OSError:
        pytest.skip("requires IPv6 on loopback")
    with holder:
        holder.listen()
        assert port_in_use("::1", holder.getsockname()[1])
        assert port_in_use("::", holder.getsockname()[1])


@pytest.mark.parametrize("port", ["null", "eighty", "[8000]", "true", "-1", "0", "70000"])
def test_a_config_port_that_is_not_a_number_is_one_line(tmp_path, port):
    config = tmp_path / "serve.yaml"
    config.write_text(f"http_options: {{host: 127.0.0.1, port: {port}}}\napplications: []\n")
    with pytest.raises(ValueError, match=r"http_options\.port .* is not a port number"):
        LocalServe(config)


def test_an_address_family_this_host_lacks_is_left_to_serve_run(monkeypatch):
    def no_family(*args, **kwargs):
        raise OSError(97, "Address family not supported by protocol")

    monkeypatch.setattr(socket, "socket", no_family)
    assert not port_in_use("::1", 8000)


def test_ipv6_hosts_are_written_in_brackets_in_urls(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text("http_options: {host: '::1', port: 8000}\napplications: []\n")
    assert LocalServe(config, ingress="proxy").url == "http://[::1]:8000"
    assert url_host("127.0.0.1") == "127.0.0.1" and url_host("[::1]") == "[::1]"

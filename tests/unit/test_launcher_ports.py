"""`LocalServe` refuses to start, naming the port and the variable that moves it, when a port its server
needs is taken (another server's HAProxy holds the fixed stats port): nothing is started."""

from __future__ import annotations

import socket

import pytest

from runtime.serve.launcher import LocalServe, ports_to_bind


def _config(tmp_path, port: int):
    config = tmp_path / "serve.yaml"
    config.write_text(f"http_options: {{host: 127.0.0.1, port: {port}}}\napplications: []\n")
    return config


def _listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_haproxy_ports_come_from_the_environment_with_ray_defaults():
    default = ports_to_bind("127.0.0.1", 8000, "haproxy", {})
    assert [(h, p) for h, p, _ in default] == [
        ("127.0.0.1", 8000),
        ("0.0.0.0", 8404),
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
            "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_free_port()),
        }
        port = held if taken == "http" else _free_port()
        if taken != "http":
            env[taken] = str(held)
        server = LocalServe(_config(tmp_path, port), ingress="haproxy", env=env)
        with pytest.raises(RuntimeError, match=f"port {held} is already in use") as refused:
            server.start()
        assert (taken if taken != "http" else "http_options.port") in str(refused.value)
        assert server.process is None  # nothing was started

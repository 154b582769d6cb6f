"""`LocalServe.replicas` finds a replica by its process title, also while Ray has retitled it for a method
call (`<title>.check_health`): a fuzz test once saw a live replica missing from the list. `dashboard_url` finds
the port its dashboard really listens on."""

from __future__ import annotations

from types import SimpleNamespace

import psutil

from runtime.serve.launcher import LocalServe


class FakeProcess:
    def __init__(self, pid: int, cmdline: list[str] | None):
        self.pid, self._cmdline = pid, cmdline

    def cmdline(self) -> list[str]:
        if self._cmdline is None:
            raise psutil.NoSuchProcess(self.pid)
        return self._cmdline


def test_replicas_are_found_by_title_also_while_running_a_method(tmp_path, monkeypatch):
    config = tmp_path / "serve.yaml"
    config.write_text("applications: []\n")
    server = LocalServe(config)
    processes = [
        FakeProcess(1, ["ray::ServeReplica:app:trtserve"]),
        FakeProcess(2, ["ray::ServeReplica:app:trtserve.check_health"]),
        FakeProcess(3, ["ray::ServeReplica:app:trtserve-rollouts"]),  # another deployment
        FakeProcess(4, ["ray::ServeReplica:other:trtserve"]),  # another application
        FakeProcess(5, ["ray::ServeReplica:app:trtserve.handle_request extra"]),
        FakeProcess(6, []),
        FakeProcess(7, None),  # gone meanwhile
        FakeProcess(8, ["python", "ray::ServeReplica:app:trtserve"]),
    ]
    monkeypatch.setattr(server, "processes", lambda: processes)
    assert [p.pid for p in server.replicas("app")] == [1, 2, 5]
    assert [p.pid for p in server.replicas("app", "trtserve-rollouts")] == [3]


class FakeDashboard(FakeProcess):
    def __init__(self, pid: int, cmdline: list[str], listening: list[int]):
        super().__init__(pid, cmdline)
        self.listening = listening

    def net_connections(self, kind: str = "inet"):
        return [
            SimpleNamespace(laddr=SimpleNamespace(ip="127.0.0.1", port=p), status=psutil.CONN_LISTEN)
            for p in self.listening
        ]


def test_the_dashboard_is_found_on_the_port_it_moved_to(tmp_path, monkeypatch):
    # Another Ray on this machine held 8265: ours listens on 8266 (and on a port of its own elsewhere).
    # `serve deploy` must go there, never to the other server's 8265.
    config = tmp_path / "serve.yaml"
    config.write_text("applications: []\n")
    server = LocalServe(config)
    command = ["python", "/venv/lib/ray/dashboard/dashboard.py", "--host=127.0.0.1", "--port=8265", "--port-retries=50"]
    monkeypatch.setattr(
        server, "processes", lambda: [FakeProcess(1, ["raylet"]), FakeDashboard(2, command, [44227, 8266])]
    )
    assert server.dashboard_url == "http://127.0.0.1:8266"
    monkeypatch.setattr(server, "processes", lambda: [FakeDashboard(2, command, [44227])])
    assert server.dashboard_url is None  # not listening yet

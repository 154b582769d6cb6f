"""`LocalServe.replicas` finds a replica by its process title, also while Ray has retitled it for a method
call (`<title>.check_health`): a fuzz test once saw a live replica missing from the list."""

from __future__ import annotations

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

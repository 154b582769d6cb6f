"""`gpu-check`'s bookkeeping: steps skipped with their reason, failures named, a report only where there is a GPU."""

import json

from runtime.cli import main
from runtime.diagnostics import gpu_check
from runtime.diagnostics.gpu_check import Failed, Skip, Step
from runtime.engine import cuda_device
from runtime.engine.cuda_device import CudaDevice

H200 = CudaDevice(0, "NVIDIA H200", "9.0", 141 << 30, "GPU-1", "0000:01:00.0", "560.35.03")


def steps(calls):
    def ok(check):
        calls.append("ok")
        return {"figure": 1.5}

    def skips(check):
        raise Skip("the artifact has no plan")

    def fails(check):
        raise Failed("outputs differ")

    def crashes(check):
        raise KeyError("boom")

    return (
        Step("first", ("gpu",), ok),
        Step("needs-trt", ("gpu", "tensorrt"), ok),
        Step("skips", ("gpu",), skips),
        Step("fails", ("gpu",), fails),
        Step("crashes", ("gpu",), crashes),
    )


def test_on_a_gpu_every_step_is_reported_and_written(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cuda_device, "visible_device", lambda ordinal=0: (H200, ""))
    monkeypatch.setitem(gpu_check.NEEDS, "gpu", lambda: "")
    monkeypatch.setitem(gpu_check.NEEDS, "tensorrt", lambda: "tensorrt is not installed")
    calls = []
    _, passed = gpu_check.gpu_check(tmp_path, steps(calls))
    assert not passed and calls == ["ok"]  # needs-trt did not run
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        'PASS first: {"figure": 1.5}',
        "SKIP needs-trt: tensorrt is not installed",
        "SKIP skips: the artifact has no plan",
        "FAIL fails: outputs differ",
        "FAIL crashes: KeyError: 'boom'",
    ]
    written = json.loads((tmp_path / "nvidia-h200" / "gpu-check.json").read_text())
    assert [s["status"] for s in written["steps"]] == ["PASS", "SKIP", "SKIP", "FAIL", "FAIL"]
    assert written["steps"][0]["detail"] == {"figure": 1.5}


def test_without_a_gpu_nothing_runs_and_nothing_is_written(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cuda_device, "visible_device", lambda ordinal=0: (None, "no CUDA device (no driver)"))
    monkeypatch.setitem(gpu_check.NEEDS, "gpu", lambda: "no CUDA device (no driver)")
    calls = []
    _, passed = gpu_check.gpu_check(tmp_path, steps(calls))
    assert passed and calls == [] and list(tmp_path.iterdir()) == []
    assert all(line.endswith(": no CUDA device (no driver)") for line in capsys.readouterr().out.splitlines())


def test_trtserve_gpu_check_here_skips_every_step_and_exits_0(monkeypatch, tmp_path, capsys):
    for need in gpu_check.NEEDS:  # as on a machine without any of them, whatever this one has
        monkeypatch.setitem(gpu_check.NEEDS, need, lambda need=need: f"no {need} here")
    assert main(["gpu-check", "--results", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [f"SKIP {step.name}" for step in gpu_check.STEPS]
    assert list(tmp_path.iterdir()) == []

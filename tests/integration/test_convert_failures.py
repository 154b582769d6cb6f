"""Every failure the convert stage promises to handle: the exit code, one clear line, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runtime.engine.cuda_device import tensorrt_version
from tests.conftest import ROOT, run_convert


def toy_config(tmp_path: Path, factory: str, name: str = "toy", **changes) -> Path:
    data = {
        "name": name,
        "source": {"factory": f"tests.fixtures.models:{factory}"},
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        "outputs": [{"name": "y"}],
        "dims": {"batch": {"min": 1, "opt": 4, "max": 8}},
        "precisions": ["fp32"],
        "tolerance": {"fp32": {"atol": 1e-4, "rtol": 1e-3}},
    }
    data.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build(tmp_path, config, *extra):
    return run_convert("build", config, "--repository", tmp_path / "repo", "--samples", "4", *extra)


def assert_one_line_error(proc, code: int, *fragments: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def assert_nothing_written(tmp_path, name="toy"):
    model_dir = tmp_path / "repo" / name
    assert not model_dir.exists() or list(model_dir.iterdir()) == []


def test_model_drawing_random_numbers_fails_parity(tmp_path):
    proc = build(tmp_path, toy_config(tmp_path, "noisy"))
    assert proc.returncode == 1, proc.stderr
    assert "parity failed, nothing was written" in proc.stderr
    assert "onnxruntime fp32 output 'y'" in proc.stderr
    assert "would pass with atol >=" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_written(tmp_path)


def test_op_that_cannot_be_exported(tmp_path):
    proc = build(tmp_path, toy_config(tmp_path, "mystery"))
    assert_one_line_error(proc, 2, "op 'trtserve_test.mystery' cannot be exported to ONNX", "toy.yaml")
    assert_nothing_written(tmp_path)


def test_dtype_the_model_rejects(tmp_path):
    proc = build(tmp_path, toy_config(tmp_path, "embedding"))
    assert_one_line_error(proc, 2, "the model rejected the example inputs (x float32 [2, 4])", "Long")
    assert_nothing_written(tmp_path)


def test_shape_the_model_rejects(tmp_path):
    config = toy_config(tmp_path, "linear", inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 5]}])
    proc = build(tmp_path, config)
    assert_one_line_error(proc, 2, "the model rejected the example inputs (x float32 [2, 5])")


def test_factory_that_does_not_import(tmp_path):
    proc = build(tmp_path, toy_config(tmp_path, "linear", source={"factory": "tests.fixtures.absent:build"}))
    assert_one_line_error(proc, 2, "source.factory: 'tests.fixtures.absent:build' does not import")
    assert_nothing_written(tmp_path)


def test_factory_returning_something_else(tmp_path):
    proc = build(tmp_path, toy_config(tmp_path, "not_a_module"))
    assert_one_line_error(proc, 2, "source.factory", "returned str, not a torch.nn.Module")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        (
            {"dims": {"batch": {"min": 1, "opt": 4, "max": 8}, "extra": {"min": 1, "opt": 1, "max": 2}}},
            "dims.extra: declared but used by no input",
        ),
        (
            {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "width"]}]},
            "inputs[0].shape: dim 'width' of input 'x' is not declared under dims",
        ),
        ({"outputs": [{"name": "y", "colour": "red"}]}, "outputs[0].colour: unknown key"),
        ({"tolerance": {}}, "tolerance.fp32: precision fp32 is built"),
    ],
)
def test_config_errors(tmp_path, changes, fragment):
    proc = build(tmp_path, toy_config(tmp_path, "linear", **changes))
    assert_one_line_error(proc, 2, fragment)


def test_missing_config_and_bad_usage(tmp_path):
    assert_one_line_error(build(tmp_path, tmp_path / "absent.yaml"), 2, "absent.yaml: cannot read the config")
    proc = run_convert("build")
    assert proc.returncode == 2 and "the following arguments are required: config" in proc.stderr


def test_output_count_mismatch(tmp_path):
    proc = build(tmp_path, toy_config(tmp_path, "linear", outputs=[{"name": "y"}, {"name": "z"}]))
    assert_one_line_error(proc, 2, "the model returns 1 outputs but the config declares 2")


def test_verbose_shows_the_traceback(tmp_path):
    proc = build(tmp_path, toy_config(tmp_path, "mystery"), "--verbose")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


@pytest.mark.skipif(tensorrt_version() is not None, reason="TensorRT is installed here")
def test_tensorrt_requested_without_tensorrt_exits_3(tmp_path):
    proc = build(tmp_path, toy_config(tmp_path, "linear"), "--backend", "tensorrt")
    assert_one_line_error(proc, 3, "tensorrt is not installed")
    assert_nothing_written(tmp_path)


def test_backend_all_builds_what_it_can_and_says_what_it_skipped(tmp_path):
    proc = build(tmp_path, toy_config(tmp_path, "linear"))
    assert proc.returncode == 0, proc.stderr
    if tensorrt_version() is None:
        assert "note: tensorrt skipped: tensorrt is not installed" in proc.stderr


def test_versions_count_up_and_are_never_overwritten(tmp_path):
    config = toy_config(tmp_path, "linear")
    assert build(tmp_path, config).stdout.strip().endswith("toy/1")
    first = (tmp_path / "repo/toy/1/manifest.json").read_text()
    assert build(tmp_path, config).stdout.strip().endswith("toy/2")
    assert_one_line_error(
        build(tmp_path, config, "--version", "1"), 2, "already exists; versions are never overwritten"
    )
    assert (tmp_path / "repo/toy/1/manifest.json").read_text() == first
    proc = build(tmp_path, config, "--if-changed")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("toy/2") and "up to date" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "repo/toy").iterdir()) == ["1", "2"]


def test_new_two_input_two_output_model_needs_only_a_config(tmp_path):
    proc = build(tmp_path, ROOT / "tests/fixtures/configs/two_io.yaml")
    assert proc.returncode == 0, proc.stderr
    import json

    manifest = json.loads((tmp_path / "repo/two_io/1/manifest.json").read_text())
    assert manifest["inputs"] == [
        {"name": "tokens", "dtype": "int64", "shape": ["batch", "seq"]},
        {"name": "features", "dtype": "float32", "shape": ["batch", "frames", 8]},
    ]
    assert manifest["outputs"] == [
        {"name": "summary", "dtype": "float32", "shape": ["batch", 16]},
        {"name": "per_frame", "dtype": "float32", "shape": ["batch", "frames", 4]},
    ]
    fp16 = next(p for p in manifest["parity"] if p["precision"] == "fp16")
    assert fp16["outputs"]["per_frame"]["atol"] == 2e-2  # the per-output override
    assert run_convert("check", tmp_path / "repo/two_io/1").returncode == 0


def test_exporter_fallback_is_recorded(tmp_path):
    proc = build(tmp_path, toy_config(tmp_path, "data_dependent"))
    assert proc.returncode == 0, proc.stderr
    assert "dynamo exporter failed" in proc.stderr and "fell back to the torchscript exporter" in proc.stderr
    import json

    onnx_info = json.loads((tmp_path / "repo/toy/1/manifest.json").read_text())["onnx"]
    assert onnx_info["exporter"] == "torchscript"
    assert any("dynamo exporter failed" in note for note in onnx_info["notes"])

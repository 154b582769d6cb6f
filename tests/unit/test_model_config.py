from pathlib import Path

import pytest
import yaml

from convert.failures import ConfigError
from convert.model_config import load_config, resolve_callable

ROOT = Path(__file__).resolve().parents[2]

BASE = {
    "name": "toy",
    "source": {"factory": "tests.fixtures.models:linear"},
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
    "outputs": [{"name": "y"}],
    "dims": {"batch": {"min": 1, "opt": 4, "max": 8}},
    "precisions": ["fp32"],
    "tolerance": {"fp32": {"atol": 1e-4, "rtol": 1e-3}},
}


def write(tmp_path, data) -> Path:
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def mutate(**changes):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is ...:
            del target[leaf]
        elif isinstance(target, list):
            target[int(leaf)] = value
        else:
            target[leaf] = value
    return data


def error_of(tmp_path, data) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_demo_configs_load():
    minilm = load_config(ROOT / "configs/models/minilm.yaml")
    assert [i.name for i in minilm.inputs] == ["input_ids", "attention_mask"]
    assert minilm.dims["seq"].max == 256
    assert minilm.tolerance_for("embedding", "fp16").atol == 1e-2
    cnn = load_config(ROOT / "configs/models/cnn.yaml")
    assert cnn.inputs[0].shape == ("batch", 3, 32, 32)


def test_defaults_and_overrides(tmp_path):
    data = mutate(outputs__0={"name": "y", "tolerance": {"fp32": {"atol": "1e-3", "rtol": 0.1}}})
    config = load_config(write(tmp_path, data))
    assert config.tolerance_for("y", "fp32").atol == 1e-3  # YAML's string '1e-3' read as the number
    assert config.max_batch_size == 8 and config.serving.max_queue_delay_ms == 5


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": ...}, "name: required key is missing"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"source__factry": "x:y"}, "source.factry: unknown key"),
        ({"name": "Bad Name"}, "name: must match"),
        ({"inputs__0__dtype": "float64"}, "inputs[0].dtype: unknown dtype 'float64'"),
        (
            {"inputs__0__shape": ["batch", "frames"]},
            "inputs[0].shape: dim 'frames' of input 'x' is not declared",
        ),
        ({"inputs__0__shape": [4, "batch"]}, "must start with the batching dim"),
        ({"dims__seq": {"min": 1, "opt": 2, "max": 3}}, "dims.seq: declared but used by no input"),
        ({"dims__batch": {"min": 4, "opt": 2, "max": 8}}, "dims.batch: needs min <= opt <= max"),
        ({"dims__batch__max": 0}, "dims.batch.max: expected an integer >= 1"),
        ({"precisions": ["fp8"]}, "precisions[0]: unknown precision 'fp8'"),
        ({"precisions": ["fp32", "fp16"]}, "tolerance.fp16: precision fp16 is built"),
        ({"tolerance__fp32__atol": "small"}, "tolerance.fp32.atol: expected a number"),
        ({"source__factory": "no_colon"}, "source.factory: expected 'package.module:callable'"),
        ({"inputs__0__range": [5, 1]}, "inputs[0].range: needs low < high"),
        ({"serving": {"max_batch_size": 9}}, "serving.max_batch_size: 9 exceeds dims.batch.max"),
        ({"outputs": []}, "outputs: expected a non-empty list"),
        ({"evaluation": {"data": "m:f", "metric": "f1"}}, "evaluation.metric: unknown metric 'f1'"),
        ({"evaluation": {"data": "m:f", "output": "z"}}, "evaluation.output: unknown output"),
        ({"evaluation": {"data": "m:f", "margin": -1}}, "evaluation.margin"),
        ({"evaluation": {"metric": "accuracy"}}, "evaluation.data: required key is missing"),
    ],
)
def test_config_errors_name_the_key(tmp_path, changes, expected):
    message = error_of(tmp_path, mutate(**changes))
    assert str(tmp_path / "model.yaml") in message
    assert expected in message


def test_integer_input_needs_range_or_sampler(tmp_path):
    data = mutate(inputs__0={"name": "ids", "dtype": "int64", "shape": ["batch", 4]})
    assert "inputs[0].range: integer input 'ids' needs a range" in error_of(tmp_path, data)
    data["sample"] = "tests.fixtures.models:linear"
    assert load_config(write(tmp_path, data)).sample == "tests.fixtures.models:linear"


def test_invalid_yaml_names_the_line(tmp_path):
    assert "model.yaml: line 2: invalid YAML" in error_of(tmp_path, "name: toy\n\tinputs: []\n")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path / "absent.yaml")


def test_factory_that_does_not_import(tmp_path):
    config = load_config(write(tmp_path, mutate(source__factory="tests.fixtures.nowhere:build")))
    with pytest.raises(
        ConfigError,
        match=r"source\.factory: 'tests\.fixtures\.nowhere:build' does not import: "
        r"ModuleNotFoundError",
    ):
        resolve_callable(config, config.factory, "source.factory")
    config = load_config(write(tmp_path, mutate(source__factory="tests.fixtures.models:absent")))
    with pytest.raises(ConfigError, match="has no attribute 'absent'"):
        resolve_callable(config, config.factory, "source.factory")

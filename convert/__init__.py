"""trtserve convert stage: PyTorch -> ONNX -> engines, parity-checked, packaged as verified artifacts."""

from convert.build import BuildOptions, BuildResult, build
from convert.check import CheckResult, check
from convert.model_config import ModelConfig, load_config

__all__ = ["BuildOptions", "BuildResult", "CheckResult", "ModelConfig", "build", "check", "load_config"]

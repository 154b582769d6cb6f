"""Reduced-precision ONNX variants.

TensorRT 11 builds strongly typed networks only: precision comes from the graph's types, not builder
flags. So fp16 gets its own ONNX file, with float tensors in fp16 except where fp16 loses too much:
normalisation, softmax, reductions and the pointwise ops around them stay fp32. Inputs and outputs
keep their declared types, so every precision of a model has one signature.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from convert import onnx_graph

# Ops whose fp16 versions overflow or lose accuracy (sums of many terms, exp, rsqrt of small numbers).
FP32_OPS = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "BatchNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceProd",
    "CumSum",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "Div",
    "Erf",
    "Clip",
)


def fp16_variant(source: Path, target: Path) -> list[Path]:
    """Write the fp16 variant of the ONNX model at `source` to `target`; return the files written."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    # Stale fp32 shape annotations would contradict the converted types; the converter re-infers them.
    del model.graph.value_info[:]
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP32_OPS))
    onnx_graph.topological_sort(converted.graph)
    files = onnx_graph.save(converted, target)
    onnx.checker.check_model(str(target), full_check=True)
    return files

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from convert import onnx_graph

# What onnx >= 1.16 and every ONNX Runtime we support load (a newer onnx would write an IR ORT refuses).
IR_VERSION = 10


def tiny_model(nodes, outputs=("out0",), inputs=("a",), width=3) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", width]) for n in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", width]) for n in outputs],
        initializer=[numpy_helper.from_array(np.ones(width, np.float32), "one")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)


def run(model, feed):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))


def test_output_name_taken_by_an_intermediate_is_freed_first():
    # What torch 2.13's dynamo exporter can produce: the wanted output name labels another value.
    model = tiny_model(
        [
            helper.make_node("Add", ["a", "one"], ["embedding"]),
            helper.make_node("Relu", ["embedding"], ["out0"]),
        ]
    )
    onnx_graph.name_io(model, ["x"], ["embedding"])
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["embedding"]
    x = np.array([[-3.0, 0.0, 2.0]], np.float32)
    np.testing.assert_array_equal(run(model, {"x": x})["embedding"], np.maximum(x + 1, 0))


def test_outputs_that_are_inputs_or_repeated_get_their_own_names():
    model = tiny_model([helper.make_node("Relu", ["a"], ["r"])], outputs=("a", "r", "r"))
    onnx_graph.name_io(model, ["x"], ["same", "relu", "relu_again"])
    onnx.checker.check_model(model, full_check=True)
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    out = run(model, {"x": x})
    np.testing.assert_array_equal(out["same"], x)
    np.testing.assert_array_equal(out["relu"], out["relu_again"])


def test_topological_sort_repairs_node_order():
    model = tiny_model(
        [
            helper.make_node("Relu", ["b"], ["out0"]),
            helper.make_node("Add", ["a", "one"], ["b"]),
        ]
    )
    onnx_graph.topological_sort(model.graph)
    assert [n.op_type for n in model.graph.node] == ["Add", "Relu"]
    onnx.checker.check_model(model, full_check=True)


def test_dim_names_follow_the_config():
    model = tiny_model([helper.make_node("Add", ["a", "one"], ["out0"])])
    mapping = onnx_graph.set_dim_names(model, {"a": ("batch", 3)})
    assert mapping == {"n": "batch"}
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_large_weights_go_to_external_data(tmp_path, monkeypatch):
    model = tiny_model([helper.make_node("Add", ["a", "one"], ["out0"])], width=1024)
    assert onnx_graph.save(model, tmp_path / "small.onnx") == [tmp_path / "small.onnx"]
    monkeypatch.setattr(onnx_graph, "EXTERNAL_DATA_THRESHOLD", 0)
    files = onnx_graph.save(model, tmp_path / "big.onnx")
    assert files == [tmp_path / "big.onnx", tmp_path / "big.onnx.data"]
    assert (tmp_path / "big.onnx.data").stat().st_size > 0
    x = np.zeros((1, 1024), np.float32)
    session = ort.InferenceSession(str(tmp_path / "big.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"a": x})[0], x + 1)

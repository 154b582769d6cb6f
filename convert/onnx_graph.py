"""Small, exact edits of ONNX graphs: naming inputs and outputs, naming dims, saving with external data."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import onnx
from onnx import helper

# Weights above this size go to `<model>.onnx.data` beside the graph (the protobuf limit is 2 GiB;
# keeping large weights apart also lets tools read the graph without loading them).
EXTERNAL_DATA_THRESHOLD = 64 << 20


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def value_names(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for g in _graphs(graph):
        names.update(i.name for i in g.input)
        names.update(i.name for i in g.initializer)
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
    return names


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value everywhere it is defined or used, subgraphs (which may capture it) included."""
    for g in _graphs(graph):
        for collection in (g.input, g.output, g.value_info):
            for value in collection:
                if value.name == old:
                    value.name = new
        for init in g.initializer:
            if init.name == old:
                init.name = new
        for node in g.node:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]


def _fresh(taken: set[str], base: str) -> str:
    i = 0
    while f"{base}__{i}" in taken:
        i += 1
    name = f"{base}__{i}"
    taken.add(name)
    return name


def name_io(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> None:
    """Give graph inputs and outputs the config's names, by position.

    A wanted name may already label some other value (the dynamo exporter names intermediates after
    modules); that value is renamed out of the way first, so the graph stays in SSA form.
    """
    graph = model.graph
    taken = value_names(graph)
    # Outputs that are not produced by a node of their own (a graph input passed through, an
    # initializer, or one value returned twice) get an Identity so each output has a distinct name.
    produced = {o for node in graph.node for o in node.output}
    seen: set[str] = set()
    for out in graph.output:
        if out.name not in produced or out.name in seen:
            alias = _fresh(taken, out.name)
            graph.node.append(helper.make_node("Identity", [out.name], [alias]))
            out.name = alias
        seen.add(out.name)
    for values, wanted in ((graph.input, inputs), (graph.output, outputs)):
        for value, new in zip(values, wanted, strict=True):
            if value.name == new:
                continue
            if new in taken:
                rename_value(graph, new, _fresh(taken, new))
            old = value.name
            rename_value(graph, old, new)
            taken.discard(old)
            taken.add(new)


def set_dim_names(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int | str, ...]]) -> dict[str, str]:
    """Write the config's dim names onto the graph inputs; carry the same renaming to every other
    shape in the graph. Returns the exporter's symbol -> config dim name mapping."""
    mapping: dict[str, str] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        for dim, want in zip(dims, input_shapes[value.name], strict=True):
            if isinstance(want, str):
                if dim.HasField("dim_param"):
                    mapping[dim.dim_param] = want
                dim.dim_param = want
            else:
                dim.dim_value = want
    for g in _graphs(model.graph):
        for value in (*g.output, *g.value_info):
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_param") and dim.dim_param in mapping:
                    dim.dim_param = mapping[dim.dim_param]
    return mapping


def _outer_references(graph: onnx.GraphProto) -> set[str]:
    """Values a subgraph reads from its enclosing graphs."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        defined.update(node.output)
        used.update(node.input)
        used.update(_subgraph_references(node))
    used.update(o.name for o in graph.output)
    return used - defined


def _subgraph_references(node: onnx.NodeProto) -> set[str]:
    refs: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            refs |= _outer_references(sub)
    return refs


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after the producers of what it reads (some converters append nodes
    out of order; ONNX Runtime tolerates that, the checker and TensorRT's parser do not)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = [(node, (set(node.input) | _subgraph_references(node))) for node in graph.node]
    producers = {o for node in graph.node for o in node.output}
    ordered = []
    while pending:
        ready = [(n, deps) for n, deps in pending if all(d in available or d not in producers for d in deps)]
        if not ready:
            raise ValueError(f"the graph has a cycle through node {pending[0][0].name!r}")
        for node, _ in ready:
            ordered.append(node)
            available.update(node.output)
        ready_ids = {id(n) for n, _ in ready}
        pending = [(n, deps) for n, deps in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for t in model.graph.initializer)


def save(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save `model` to `path` (external data beside it when large). Returns every file written."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]

"""`convert inspect`: a readable summary of an ONNX file, a TensorRT plan or a version directory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from runtime.engine import dtypes
from runtime.engine.artifact import onnx_external_data_locations, verify_version_dir
from runtime.engine.cuda_device import tensorrt_version
from runtime.engine.errors import ArtifactError, TrtserveError
from runtime.engine.manifest import MANIFEST, read_manifest
from runtime.engine.tensorrt_plan import parse_engine_filename


def describe(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST).exists():
            raise TrtserveError(f"{path}: not a version directory (no {MANIFEST})")
        return _describe_version(path)
    if not path.is_file():
        raise TrtserveError(f"{path}: no such file or directory")
    if path.suffix == ".onnx":
        return _describe_onnx(path)
    if path.suffix in (".plan", ".engine"):
        return _describe_plan(path)
    raise TrtserveError(f"{path}: expected a .onnx file, a .plan engine or a version directory")


def _shape(dims) -> list:
    return [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?") for d in dims]


def _describe_onnx(path: Path) -> dict:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise TrtserveError(f"{path}: not a readable ONNX model ({e})") from None

    def io(values) -> list[dict]:
        out = []
        for v in values:
            elem = v.type.tensor_type.elem_type
            try:
                dtype = dtypes.from_onnx(elem).name
            except ValueError:
                dtype = onnx.TensorProto.DataType.Name(elem).lower()
            out.append({"name": v.name, "dtype": dtype, "shape": _shape(v.type.tensor_type.shape.dim)})
        return out

    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "kind": "onnx",
        "path": str(path),
        "bytes": path.stat().st_size,
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "nodes": len(model.graph.node),
        "ops": dict(ops.most_common()),
        "initializers": len(model.graph.initializer),
        "parameters": sum(_numel(t.dims) for t in model.graph.initializer),
        "external_data": onnx_external_data_locations(path),
    }


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _describe_plan(path: Path) -> dict:
    info: dict = {"kind": "tensorrt", "path": str(path), "bytes": path.stat().st_size}
    try:
        name = parse_engine_filename(path.name)
        info.update(precision=name.precision, sm=name.cc, built_with_tensorrt=name.tensorrt_version)
    except ValueError as e:
        info["name_note"] = str(e)
    if tensorrt_version() is None:
        info["tensors"] = None
        info["note"] = "tensorrt is not installed: I/O tensors and layers cannot be read here"
        return info
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        info["note"] = f"TensorRT {trt.__version__} cannot deserialize this plan (other version or GPU)"
        return info
    info["tensors"] = [
        {
            "name": (n := engine.get_tensor_name(i)),
            "mode": engine.get_tensor_mode(n).name.lower(),
            "dtype": str(engine.get_tensor_dtype(n)).rsplit(".", 1)[-1].lower(),
            "shape": list(engine.get_tensor_shape(n)),
        }
        for i in range(engine.num_io_tensors)
    ]
    info["layers"] = engine.num_layers
    return info


def _describe_version(path: Path) -> dict:
    try:
        manifest = verify_version_dir(path)
        integrity = "ok: every file matches its checksum"
    except ArtifactError as e:
        manifest = read_manifest(path)
        integrity = f"FAILED: {e}"
    return {"kind": "version", "path": str(path), "integrity": integrity, "manifest": manifest.to_json()}


def render(info: dict) -> str:
    if info["kind"] == "onnx":
        lines = [
            f"ONNX model {info['path']} ({_size(info['bytes'])}, IR {info['ir_version']}, opsets {info['opsets']})",
            f"  producer: {info['producer'] or '-'}",
            *_tensor_lines("inputs", info["inputs"]),
            *_tensor_lines("outputs", info["outputs"]),
            f"  nodes: {info['nodes']}; parameters: {info['parameters']:,} in {info['initializers']} initializers",
            "  ops: "
            + ", ".join(f"{op} x{n}" for op, n in list(info["ops"].items())[:12])
            + (" ..." if len(info["ops"]) > 12 else ""),
            f"  external data: {', '.join(info['external_data']) or 'none'}",
        ]
        return "\n".join(lines)
    if info["kind"] == "tensorrt":
        lines = [f"TensorRT plan {info['path']} ({_size(info['bytes'])})"]
        if "precision" in info:
            lines.append(
                f"  precision {info['precision']}, built for sm{info['sm']} with TensorRT {info['built_with_tensorrt']}"
            )
        for t in info.get("tensors") or []:
            lines.append(f"  {t['mode']:<6} {t['name']}: {t['dtype']} {t['shape']}")
        if info.get("note"):
            lines.append(f"  note: {info['note']}")
        return "\n".join(lines)
    m = info["manifest"]
    src = m["source"]
    tc = m["toolchain"]
    lines = [
        f"{m['name']} version {m['version']} ({info['path']}), created {m['created_at']}",
        f"  integrity: {info['integrity']}",
        f"  source: {src['factory']}, weights sha256 {src['weights_sha256'][:16]}..., "
        f"git {src.get('git_commit') or 'unknown'}{' (dirty)' if src.get('git_dirty') else ''}",
        "  toolchain: " + ", ".join(f"{k} {v}" for k, v in tc.items() if v),
        f"  onnx: opset {m['onnx']['opset']}, {m['onnx']['exporter']} exporter",
        *_tensor_lines("inputs", m["inputs"]),
        *_tensor_lines("outputs", m["outputs"]),
        "  dims: " + ", ".join(f"{k} {v['min']}..{v['max']} (opt {v['opt']})" for k, v in m["dims"].items()),
        "  engines:",
        *[
            f"    {e['backend']:<12} {e['precision']:<5} {e['file']}"
            + (
                f" (sm {e['compute_capability']}, TensorRT {e['tensorrt_version']}{_built_on(e)})"
                if e["tensorrt_version"]
                else ""
            )
            for e in m["engines"]
        ],
        "  parity (vs PyTorch fp32):",
    ]
    for p in m["parity"]:
        worst = max(p["outputs"].values(), key=lambda o: o["max_abs"]) if p["outputs"] else None
        detail = f"max abs {worst['max_abs']:.2e}, min cosine {worst['cosine']:.6f}" if worst else ""
        lines.append(
            f"    {p['backend']:<12} {p['precision']:<5} {'pass' if p['passed'] else 'FAIL'} "
            f"over {p['samples']} samples; {detail}"
        )
    if m.get("preprocessing"):
        lines.append("  preprocessing: " + ", ".join(m["preprocessing"]))
    if m.get("evaluation"):
        ev = m["evaluation"]
        lines.append(
            f"  evaluation: {ev['metric']} of {ev['output']} {ev['value']:.4f} on {ev['rows']} labelled rows "
            f"({ev['backend']} {ev['precision']}); rollout gate margin {ev['margin']:g}"
        )
    lines.append(
        f"  serving: max_batch_size {m['serving']['max_batch_size']}, "
        f"max_queue_delay_ms {m['serving']['max_queue_delay_ms']}"
    )
    lines.append(f"  files: {len(m['files'])}, {_size(sum(f['bytes'] for f in m['files'].values()))}")
    return "\n".join(lines)


def _tensor_lines(title: str, tensors: list[dict]) -> list[str]:
    return [f"  {title}:"] + [f"    {t['name']}: {t['dtype']} {t['shape']}" for t in tensors]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _built_on(entry: dict) -> str:
    if not entry.get("gpu_name"):
        return ""
    return f", built on {entry['gpu_name']}, driver {entry.get('driver_version') or 'unknown'}"

"""`trtserve gpu-check` (`make gpu-check`): the TensorRT and CUDA path on a real NVIDIA GPU.

The steps run in order; each needs some of: a CUDA device, the convert stage (torch), TensorRT, ONNX
Runtime's CUDA provider, torch with CUDA. A step whose needs are not met prints `SKIP <step>: <reason>`
and the run goes on; one that runs prints `PASS` or `FAIL <step>: ...` with its figures. Where there is a
GPU, every result goes to `benchmarks/measured/<gpu>/gpu-check.json` (the gpu-marked tests' output
beside it, `gpu-check-pytest.txt`); without one nothing is written. The exit status is 1 when a step
failed, else 0 (skips included). It runs the demo model configs and the test suite of a checkout.
Targets: TRT_FP16_VS_EAGER and RUNTIME_OVERHEAD below (benchmarks/targets.py names them beside every other).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtime.diagnostics import machine

ROOT = Path(__file__).resolve().parents[2]  # the checkout: its model configs and its gpu-marked tests
MEASURED = ROOT / "benchmarks" / "measured"
MODELS = ("cnn", "minilm")
HEADLINE_BATCH = 32
TRT_FP16_VS_EAGER = 3.0  # TensorRT fp16 at least this many times torch eager's calls/s at batch 32
RUNTIME_OVERHEAD = 0.05  # Engine.infer at most this much slower than the engine alone (TensorRTEngine.replay)


class Skip(Exception):
    """The step cannot run here; the message says why."""


class Failed(Exception):
    """The step ran and found a defect; the message says which."""


# --- what a step needs ----------------------------------------------------------------------------------


def _gpu() -> str:
    from runtime.engine.cuda_device import visible_device

    device, why = visible_device()
    return "" if device else why


def _convert() -> str:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "the convert stage needs torch (pip install 'trtserve[convert]')"
    return ""


def _tensorrt() -> str:
    from runtime.engine.backends.tensorrt import TensorRTEngine

    ok, why = TensorRTEngine.availability()
    return "" if ok else why


def _ort_cuda() -> str:
    from runtime.engine.backends.onnxruntime import cuda_problem

    try:
        return cuda_problem() or ""
    except Exception as e:  # onnxruntime not installed at all
        return str(e)


def _torch_cuda() -> str:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return "" if torch.cuda.is_available() else f"torch {torch.__version__} sees no CUDA device"


NEEDS: dict[str, Callable[[], str]] = {
    "gpu": _gpu,
    "convert": _convert,
    "tensorrt": _tensorrt,
    "ort-cuda": _ort_cuda,
    "torch-cuda": _torch_cuda,
}


@dataclass
class Check:
    work: Path
    out: Path | None
    env: dict[str, str]  # for the convert CLI: the timing cache under work/
    builds: dict[str, dict] = field(default_factory=dict)  # model -> {"version_dir", "seconds", "plans"}

    def version_dir(self, model: str) -> Path:
        if model not in self.builds:
            raise Skip(f"{model} was not built (see the build step)")
        return Path(self.builds[model]["version_dir"])

    def plans(self, model: str) -> list:
        version_dir = self.version_dir(model)
        from runtime.engine.manifest import read_manifest

        plans = [e for e in read_manifest(version_dir).engines if e.backend == "tensorrt"]
        if not plans:
            raise Skip(f"{model} has no TensorRT plan (see the build step)")
        return plans

    def convert(self, *args: str) -> tuple[subprocess.CompletedProcess, float]:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "convert", *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        return proc, time.perf_counter() - start


# --- the steps --------------------------------------------------------------------------------------------


def gpu_tests(check: Check) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu or cuda", "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if check.out:
        (check.out / "gpu-check-pytest.txt").write_text(proc.stdout + proc.stderr)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode not in (0, 5):  # 5: nothing collected
        raise Failed(summary)
    return {"summary": summary}


def device_identity(check: Check) -> dict:
    """The device CUDA numbers 0 here is the card NVML reports for it, and it follows CUDA_VISIBLE_DEVICES."""
    from runtime.engine.cuda_device import nvml, nvml_handle, visible_device

    device, _ = visible_device()
    with nvml() as lib:
        if lib is None:
            raise Skip("NVML is not available (nvidia-ml-py)")
        handle = nvml_handle(lib, device)
        if handle is None:
            raise Failed(f"NVML has no device with UUID {device.uuid} or bus id {device.pci_bus_id}")
        nvml_uuid = str(lib.nvmlDeviceGetUUID(handle))
        uuids = [str(lib.nvmlDeviceGetUUID(lib.nvmlDeviceGetHandleByIndex(i))) for i in range(lib.nvmlDeviceGetCount())]
    result = {"device": asdict(device), "nvml_uuid": nvml_uuid, "gpus_on_node": len(uuids)}
    if nvml_uuid != device.uuid:
        raise Failed(f"CUDA's device 0 is {device.uuid}, NVML's match for it is {nvml_uuid}")
    if not _torch_cuda():
        import torch

        props = torch.cuda.get_device_properties(0)
        result["torch"] = {"name": props.name, "cc": f"{props.major}.{props.minor}", "uuid": str(props.uuid)}
        if props.name != device.name or f"{props.major}.{props.minor}" != device.compute_capability:
            raise Failed(f"torch sees {props.name} sm{props.major}{props.minor}, trtserve {device.name}")
    if len(uuids) > 1:  # the last card by UUID, in a fresh process: identity and memory must be that card's
        code = (
            "import json; from runtime.engine.cuda_device import visible_device; "
            "from runtime.engine.memory import gpu_free_total; d, _ = visible_device(); "
            "print(json.dumps([d.uuid, gpu_free_total()[1]]))"
        )
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": uuids[-1]}
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        seen = json.loads(proc.stdout.strip().splitlines()[-1])[0] if proc.returncode == 0 else proc.stderr[-300:]
        result["remapped"] = {"CUDA_VISIBLE_DEVICES": uuids[-1], "seen": seen}
        if seen != uuids[-1]:
            raise Failed(f"with CUDA_VISIBLE_DEVICES={uuids[-1]} the process reported {seen}")
    return result


def build(check: Check) -> dict:
    """Both demo models through `convert build` (ONNX, and TensorRT plans where TensorRT is here), parity
    passed, with a fresh timing cache (the timing-cache step's cold build)."""
    result = {}
    for model in MODELS:
        proc, seconds = check.convert("build", f"configs/models/{model}.yaml", "--repository", str(check.work / "repo"))
        if proc.returncode != 0:
            raise Failed(f"{model}: convert build exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
        version_dir = proc.stdout.strip().splitlines()[-1]
        from runtime.engine.manifest import read_manifest

        manifest = read_manifest(Path(version_dir))
        plans = [e.file for e in manifest.engines if e.backend == "tensorrt"]
        check.builds[model] = {"version_dir": version_dir, "seconds": round(seconds, 1), "plans": plans}
        failed = [f"{p.backend} {p.precision}" for p in manifest.parity if not p.passed]
        if failed:
            raise Failed(f"{model}: parity failed for {', '.join(failed)}")
        result[model] = {
            **check.builds[model],
            "parity": {f"{p.backend} {p.precision}": p.passed for p in manifest.parity},
        }
    return result


def engine_io(check: Check) -> dict:
    """The plans' I/O tensors have the signature's dtypes (int64 input_ids stay int64 in TensorRT 10)."""
    from runtime import load_engine

    result = {}
    for model in MODELS:
        for entry in check.plans(model):
            with load_engine(check.version_dir(model), backend="tensorrt", precision=entry.precision) as engine:
                got = {name: str(dtype) for name, dtype in engine.tensor_dtypes.items()}
                wanted = {t.name: t.dtype for t in (*engine.signature.inputs, *engine.signature.outputs)}
            result[f"{model} {entry.precision}"] = got
            if got != wanted:
                raise Failed(f"{model} {entry.precision}: engine tensors {got}, the signature says {wanted}")
    return result


def _feed(signature, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Synthetic inputs, with token ids that vary (so a stale row would show)."""
    feed = signature.synthetic_feed(sizes, rng)
    for name, array in feed.items():
        if array.dtype.kind == "i" and "mask" not in name:
            feed[name] = rng.integers(1, 1000, size=array.shape).astype(array.dtype)
    return feed


def shapes(check: Check) -> dict:
    """min, opt, max, opt, min of every dim on the fp16 plan against ONNX Runtime fp32 on the CPU, within the
    tolerance parity was proved with; out of the profile, a clean error."""
    from runtime import EngineOptions, TrtserveError, load_engine

    result = {}
    rng = np.random.default_rng(0)
    for model in MODELS:
        check.plans(model)
        version_dir = check.version_dir(model)
        with (
            load_engine(version_dir, backend="tensorrt") as engine,
            load_engine(version_dir, "onnxruntime", "fp32", EngineOptions(device="cpu")) as reference,
        ):
            dims = engine.signature.dims
            record = _parity_record(version_dir, "tensorrt", engine.precision)
            rows = []
            for point in ("min", "opt", "max", "opt", "min"):
                sizes = {name: getattr(dim, point) for name, dim in dims.items()}
                feed = _feed(engine.signature, sizes, rng)
                got, want = engine.infer(feed), reference.infer(feed)
                worst = {}
                for name, value in want.items():
                    tol = record.outputs[name]
                    diff = np.abs(got[name].astype(np.float64) - value.astype(np.float64))
                    worst[name] = float(diff.max())
                    if not np.all(diff <= tol.atol + tol.rtol * np.abs(value)):
                        raise Failed(f"{model} at {point} {sizes}: {name} differs by {diff.max():.3g}")
                rows.append({"point": point, "sizes": sizes, "max_abs": worst})
            beyond = {name: dim.max + 1 for name, dim in dims.items()}
            feed = _feed(engine.signature, beyond, rng)
            errors = []
            for call in (engine.infer, engine._infer_impl):  # the signature's check, then TensorRT's profile
                try:
                    call(feed)
                except TrtserveError as e:
                    errors.append(str(e))
                else:
                    raise Failed(f"{model}: {beyond} (beyond the profile) was accepted")
            result[model] = {"precision": engine.precision, "points": rows, "out_of_profile": errors}
    return result


def _parity_record(version_dir: Path, backend: str, precision: str):
    from runtime.engine.manifest import read_manifest

    for record in read_manifest(version_dir).parity:
        if (record.backend, record.precision) == (backend, precision):
            return record
    raise Failed(f"{version_dir}: no parity record for {backend} {precision}")


def _timing_caches(check: Check) -> list[Path]:
    return sorted((check.work / "cache" / "trtserve").glob("timing-*.cache"))


def timing_cache(check: Check) -> dict:
    """A second build of cnn, with the cache the first one left, is faster."""
    cold = check.builds.get("cnn", {}).get("seconds")
    check.plans("cnn")
    caches = _timing_caches(check)
    if not caches:
        raise Failed("the first build left no timing cache under $XDG_CACHE_HOME/trtserve/")
    proc, warm = check.convert("build", "configs/models/cnn.yaml", "--repository", str(check.work / "repo"))
    if proc.returncode != 0:
        raise Failed(f"second build exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    result = {"cache": caches[0].name, "cold_s": cold, "warm_s": round(warm, 1), "ratio": round(warm / cold, 3)}
    if warm >= cold:
        raise Failed(f"the second build took {warm:.1f} s, the first {cold:.1f} s")
    return result


def corrupt_cache(check: Check) -> dict:
    """A timing cache of garbage: the build succeeds, the file is set aside, a good one replaces it."""
    check.plans("cnn")
    for path in _timing_caches(check):
        path.write_bytes(b"\x00not a timing cache" * 64)
    proc, seconds = check.convert("build", "configs/models/cnn.yaml", "--repository", str(check.work / "repo"))
    if proc.returncode != 0:
        raise Failed(f"build with a corrupt cache exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    aside = sorted(p.name for p in (check.work / "cache" / "trtserve").glob("timing-*.bad-*"))
    if not aside:
        raise Failed("the corrupt cache was not set aside")
    return {"set_aside": aside, "seconds": round(seconds, 1), "warning": "set aside" in proc.stderr}


def corrupt_plan(check: Check) -> dict:
    """A plan that does not deserialize (checksums rewritten to match, so it gets that far): auto serves ONNX
    Runtime and says why; asked for by name, a clean EngineLoadError."""
    from runtime import EngineLoadError, load_engine
    from runtime.engine.manifest import read_manifest, write_manifest

    plans = check.plans("cnn")
    copy = check.work / "corrupt" / "cnn" / "1"
    shutil.copytree(check.version_dir("cnn"), copy)
    for entry in plans:
        data = (copy / entry.file).read_bytes()
        (copy / entry.file).write_bytes(data[: len(data) // 2])
    fields = read_manifest(copy).to_json()
    fields.pop("files")
    write_manifest(copy, fields)
    with load_engine(copy) as engine:
        result = {"backend": engine.backend, "passed_over": list(engine.spec.passed_over)}
    if engine.backend != "onnxruntime" or not any("failed to load" in p for p in result["passed_over"]):
        raise Failed(f"auto loaded {result}")
    try:
        load_engine(copy, backend="tensorrt").close()
    except EngineLoadError as e:
        result["by_name"] = str(e)
    else:
        raise Failed("a truncated plan loaded by name")
    return result


def two_plans(check: Check) -> dict:
    """Two plans in one process; the first closed, the second still answers the same; the first reloads."""
    from runtime import load_engine

    check.plans("cnn"), check.plans("minilm")
    rng = np.random.default_rng(1)
    first = load_engine(check.version_dir("cnn"), backend="tensorrt")
    second = load_engine(check.version_dir("minilm"), backend="tensorrt")
    opt = {name: dim.opt for name, dim in second.signature.dims.items()}
    feed = _feed(second.signature, opt, rng)
    before = second.infer(feed)
    first.infer(_feed(first.signature, {n: d.opt for n, d in first.signature.dims.items()}, rng))
    first.close()
    after = second.infer(feed)
    second.close()
    with load_engine(check.version_dir("cnn"), backend="tensorrt") as again:
        again.infer(_feed(again.signature, {n: d.opt for n, d in again.signature.dims.items()}, rng))
    same = all(np.array_equal(before[k], after[k]) for k in before)
    if not same:
        raise Failed("minilm's outputs changed when cnn's engine was closed")
    return {"outputs_unchanged": same}


def memory(check: Check) -> dict:
    """Engine.memory()'s device bytes against NVML's figure for this process, after warm-up at max batch."""
    from runtime import load_engine
    from runtime.engine.memory import FootprintMeter

    result = {}
    for model in MODELS:
        check.plans(model)
        meter = FootprintMeter()
        with load_engine(check.version_dir(model), backend="tensorrt") as engine:
            top = {name: dim.max for name, dim in engine.signature.dims.items()}
            engine.infer(_feed(engine.signature, top, np.random.default_rng(2)))
            footprint = meter.finish(engine, top[next(iter(top))])
            reported = engine.memory()["device_bytes"]
        if footprint.device_method != "nvml-process":
            raise Skip("NVML cannot see this process's memory here (a container without the PID namespace?)")
        result[model] = {"engine_reported_mib": reported / 2**20, "nvml_mib": footprint.device_bytes / 2**20}
        if footprint.device_bytes < reported:
            raise Failed(f"{model}: NVML says {footprint.device_bytes} bytes, below the engine's own {reported}")
    return result


def ort_tf32(check: Check) -> dict:
    """ONNX Runtime CUDA fp32 against the PyTorch references stored in the artifact, TF32 off (trtserve's
    setting) and on (ONNX Runtime's default)."""
    import onnxruntime as ort

    from convert.check import load_samples
    from runtime.engine.backends.onnxruntime import cuda_provider_options
    from runtime.engine.manifest import PARITY_SAMPLES, read_manifest

    result = {}
    for model in MODELS:
        version_dir = check.version_dir(model)
        feeds, references = load_samples(version_dir / PARITY_SAMPLES)
        record = _parity_record(version_dir, "onnxruntime", "fp32")
        entry = next(
            e for e in read_manifest(version_dir).engines if (e.backend, e.precision) == ("onnxruntime", "fp32")
        )
        worst = {}
        for tf32 in ("0", "1"):
            options = {**cuda_provider_options("fp32", 0), "use_tf32": tf32}
            session = ort.InferenceSession(
                str(version_dir / entry.file), providers=[("CUDAExecutionProvider", options)]
            )
            names = [o.name for o in session.get_outputs()]
            worst[tf32] = max(
                float(np.abs(out.astype(np.float64) - ref[name]).max())
                for feed, ref in zip(feeds, references, strict=True)
                for name, out in zip(names, session.run(names, feed), strict=True)
            )
        atol = min(o.atol for o in record.outputs.values())
        result[model] = {"max_abs_tf32_off": worst["0"], "max_abs_tf32_on": worst["1"], "atol": atol}
        if worst["0"] > worst["1"] or worst["0"] > atol:
            raise Failed(f"{model}: TF32 off {worst['0']:.3g}, on {worst['1']:.3g} (atol {atol:g})")
    return result


def _alternate(a: Callable[[], float], b: Callable[[], float], pairs: int = 7) -> float:
    """Median over alternating windows of a's seconds / b's seconds."""
    return float(np.median([a() / b() for _ in range(pairs)]))


def _timed(engine, feed: dict, iterations: int) -> Callable[[], float]:
    def window() -> float:
        start = time.perf_counter()
        for _ in range(iterations):
            engine.infer(feed)
        return (time.perf_counter() - start) / iterations

    return window


def headline(check: Check) -> dict:
    """TensorRT fp16 against torch eager (fp32, CUDA) at batch 32: the product's headline."""
    from runtime import EngineOptions, load_engine

    result = {}
    for model in MODELS:
        check.plans(model)
        version_dir = check.version_dir(model)
        with (
            load_engine(version_dir, backend="tensorrt", precision="fp16") as trt,
            load_engine(version_dir, backend="torch", options=EngineOptions(device="cuda")) as eager,
        ):
            sizes = _batch_sizes(trt.signature)
            feed = _feed(trt.signature, sizes, np.random.default_rng(3))
            for engine in (trt, eager):
                for _ in range(10):
                    engine.infer(feed)
            speedup = _alternate(_timed(eager, feed, 50), _timed(trt, feed, 50))
        result[model] = {"sizes": sizes, "speedup": round(speedup, 2), "target": TRT_FP16_VS_EAGER}
    low = [m for m, r in result.items() if r["speedup"] < TRT_FP16_VS_EAGER]
    if low:
        raise Failed(f"below {TRT_FP16_VS_EAGER}x torch eager: {', '.join(low)} ({result})")
    return result


def _batch_sizes(signature) -> dict[str, int]:
    sizes = {name: dim.opt for name, dim in signature.dims.items()}
    batch = signature.inputs[0].shape[0]
    if isinstance(batch, str):
        sizes[batch] = min(HEADLINE_BATCH, signature.dims[batch].max)
    return sizes


def runtime_overhead(check: Check) -> dict:
    """Engine.infer (validation, copies into pinned buffers, shapes and addresses, results copied out) against
    the same call replayed with no Python around it (TensorRTEngine.replay), at batch 32."""
    from runtime import load_engine

    result = {}
    for model in MODELS:
        check.plans(model)
        with load_engine(check.version_dir(model), backend="tensorrt", precision="fp16") as engine:
            feed = _feed(engine.signature, _batch_sizes(engine.signature), np.random.default_rng(4))
            for _ in range(10):
                engine.infer(feed)
            ratio = _alternate(_timed(engine, feed, 100), functools.partial(engine.replay, 100))
        result[model] = {"overhead": round(ratio - 1, 4), "target": RUNTIME_OVERHEAD}
    high = [m for m, r in result.items() if r["overhead"] > RUNTIME_OVERHEAD]
    if high:
        raise Failed(f"above {RUNTIME_OVERHEAD:.0%} over the engine alone: {', '.join(high)} ({result})")
    return result


@dataclass(frozen=True)
class Step:
    name: str
    needs: tuple[str, ...]
    run: Callable[[Check], dict]


STEPS = (
    Step("gpu-tests", ("gpu",), gpu_tests),
    Step("device-identity", ("gpu",), device_identity),
    Step("build", ("gpu", "convert"), build),
    Step("engine-io", ("tensorrt",), engine_io),
    Step("shapes", ("tensorrt",), shapes),
    Step("timing-cache", ("tensorrt", "convert"), timing_cache),
    Step("corrupt-cache", ("tensorrt", "convert"), corrupt_cache),
    Step("corrupt-plan", ("tensorrt",), corrupt_plan),
    Step("two-plans", ("tensorrt",), two_plans),
    Step("memory", ("tensorrt",), memory),
    Step("ort-cuda-tf32", ("ort-cuda",), ort_tf32),
    Step("headline", ("tensorrt", "torch-cuda"), headline),
    Step("runtime-overhead", ("tensorrt",), runtime_overhead),
)


def gpu_check(results: Path = MEASURED, steps=STEPS) -> tuple[dict, bool]:
    """Run every step that can run here; (report, passed). Writes under results/<gpu>/ only where there is a
    GPU."""
    from runtime.engine.cuda_device import visible_device

    device, _ = visible_device()
    work = Path(tempfile.mkdtemp(prefix="trtserve-gpu-check-"))
    out = results / device.slug if device else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(work / "cache")}
    check = Check(work, out, env)
    missing: dict[str, str] = {}
    report = {"benchmark": "gpu-check", "machine": machine.describe(), "steps": []}
    try:
        for step in steps:
            for need in step.needs:
                if need not in missing:
                    missing[need] = NEEDS[need]()
            why = next((missing[n] for n in step.needs if missing[n]), "")
            started = time.perf_counter()
            if why:
                status, detail = "SKIP", why
            else:
                try:
                    status, detail = "PASS", step.run(check)
                except Skip as e:
                    status, detail = "SKIP", str(e)
                except Failed as e:
                    status, detail = "FAIL", str(e)
                except Exception as e:  # a defect the step did not foresee is a failure too, named
                    status, detail = "FAIL", f"{type(e).__name__}: {e}"
            line = detail if isinstance(detail, str) else json.dumps(detail)[:300]
            print(f"{status} {step.name}: {line}", flush=True)
            seconds = round(time.perf_counter() - started, 1)
            report["steps"].append({"step": step.name, "status": status, "detail": detail, "seconds": seconds})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    passed = all(s["status"] != "FAIL" for s in report["steps"])
    if out:
        (out / "gpu-check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report, passed


def add_parser(sub) -> None:
    p = sub.add_parser("gpu-check", help="the TensorRT and CUDA path on this machine's GPU, step by step")
    p.add_argument("--results", type=Path, default=MEASURED, help="reports go to RESULTS/<gpu>/ (a GPU only)")


def run(args) -> int:
    _, passed = gpu_check(args.results)
    return 0 if passed else 1

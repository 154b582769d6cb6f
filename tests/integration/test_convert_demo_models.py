"""The demo models through the CLI: build (session fixture), check, inspect, load, and MiniLM against
sentence-transformers itself."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from convert.check import load_samples
from runtime import load_engine
from runtime.engine.manifest import PARITY_SAMPLES, Manifest
from tests.conftest import run_convert

# None of these is in convert.zoo.minilm.CORPUS (the parity set).
HELD_OUT = [
    "The lighthouse keeper rowed out through the fog at dawn.",
    "Which vaccine schedule is recommended for infants in their first year?",
    "Our database migration failed halfway, leaving two tables locked.",
    "A red fox slipped under the fence and disappeared into the orchard.",
    "He sold the bicycle because the new apartment had no storage room.",
    "Quantum error correction spreads one logical qubit across many physical ones.",
    "Bonjour, je voudrais réserver une table pour deux personnes ce soir.",
    " ".join(["An exceptionally long sentence keeps going past the model's limit of tokens."] * 30),
]


@pytest.mark.parametrize("name", ["cnn", "minilm"])
def test_manifest_is_complete(built_repository, name):
    version = built_repository / name / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    assert list(manifest) == list(Manifest.model_fields)  # every key, in the documented order
    assert manifest["name"] == name and manifest["version"] == 1
    assert manifest["source"]["weights_sha256"] and len(manifest["source"]["weights_sha256"]) == 64
    assert manifest["toolchain"]["torch"].startswith("2.")
    assert manifest["onnx"]["exporter"] in ("dynamo", "torchscript")
    files = {p.relative_to(version).as_posix() for p in version.rglob("*") if p.is_file()} - {"manifest.json"}
    assert files == set(manifest["files"])
    assert {(e["backend"], e["precision"]) for e in manifest["engines"]} >= {
        ("onnxruntime", "fp32"),
        ("onnxruntime", "fp16"),
    }
    assert all(p["passed"] and p["samples"] == 16 for p in manifest["parity"])
    assert not list((built_repository / name).glob(".staging-*"))
    if name == "cnn":  # its config declares an eval set: packaged, checksummed, scored by the fp32 engine
        evaluation = manifest["evaluation"]
        assert evaluation["file"] in manifest["files"] and evaluation["rows"] == 512
        assert evaluation["metric"] == "accuracy" and evaluation["value"] >= 0.99  # labels: its own reference
        assert (evaluation["backend"], evaluation["precision"]) == ("onnxruntime", "fp32")
    else:
        assert manifest["evaluation"] is None


@pytest.mark.parametrize("name", ["cnn", "minilm"])
def test_check_passes_and_reruns_parity(built_repository, name):
    proc = run_convert("check", built_repository / name / "1")
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime  fp32" in proc.stdout and "onnxruntime  fp16" in proc.stdout
    assert "ok (" in proc.stdout and "FAIL" not in proc.stdout


def test_check_catches_a_flipped_byte(built_repository, tmp_path):
    copy = tmp_path / "cnn" / "1"
    shutil.copytree(built_repository / "cnn" / "1", copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 3] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    proc = run_convert("check", copy)
    assert proc.returncode == 2
    assert "checksum mismatch for model.onnx" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_inspect_version_onnx_and_json(built_repository):
    version = built_repository / "minilm" / "1"
    proc = run_convert("inspect", version)
    assert proc.returncode == 0, proc.stderr
    assert "minilm version 1" in proc.stdout and "integrity: ok" in proc.stdout
    assert "embedding: float32 ['batch', 384]" in proc.stdout
    proc = run_convert("inspect", version / "model.onnx", "--json")
    info = json.loads(proc.stdout)
    assert info["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}
    assert info["external_data"] == ["model.onnx.data"]
    proc = run_convert("inspect", version / "nope.onnx")
    assert proc.returncode == 2 and "no such file" in proc.stderr


@pytest.mark.parametrize("name", ["cnn", "minilm"])
def test_load_engine_runs_the_stored_samples(built_repository, name):
    version = built_repository / name / "1"
    feeds, references = load_samples(version / PARITY_SAMPLES)
    with load_engine(version) as engine:  # auto: no GPU here, so ONNX Runtime fp32 on the CPU
        assert (engine.backend, engine.precision, engine.device) == ("onnxruntime", "fp32", "cpu")
        for feed, reference in zip(feeds[:4], references[:4], strict=True):
            for output, expected in reference.items():
                np.testing.assert_allclose(engine.infer(feed)[output], expected, atol=1e-4, rtol=1e-3)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_minilm_matches_sentence_transformers_on_held_out_sentences(built_repository):
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    from convert.zoo.minilm import CORPUS, model_dir

    assert not set(HELD_OUT) & set(CORPUS)
    version = built_repository / "minilm" / "1"
    expected = SentenceTransformer(str(model_dir()), device="cpu").encode(HELD_OUT, normalize_embeddings=True)

    # Tokenize with the tokenizer packaged in the artifact, as the server will.
    tokenizer = Tokenizer.from_file(str(version / "preprocessing/tokenizer/tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(HELD_OUT)
    feed = {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
    }
    assert feed["input_ids"].shape[1] == 256  # the long sentence was truncated like sentence-transformers does
    for precision, floor in (("fp32", 0.9999), ("fp16", 0.999)):
        with load_engine(version, backend="onnxruntime", precision=precision) as engine:
            got = engine.infer(feed)["embedding"]
        assert got.shape == (len(HELD_OUT), 384)
        cosines = _cosines(got, expected)
        assert cosines.min() >= floor, (precision, cosines)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)


def test_torch_eager_baseline_matches_onnxruntime(built_repository):
    version = built_repository / "cnn" / "1"
    feeds, references = load_samples(version / PARITY_SAMPLES)
    with load_engine(version, backend="torch") as engine:
        assert engine.backend == "torch"
        np.testing.assert_allclose(engine.infer(feeds[0])["logits"], references[0]["logits"], rtol=1e-6, atol=1e-7)

"""Preprocessing packaged in an artifact and applied by the server before the engine.

`tokenizer`: a Hugging Face `tokenizers` tokenizer.json. The model then also accepts `text` (BYTES,
shape [batch]) in place of its `input_ids` + `attention_mask` (+ `token_type_ids` when it has one).
Each request is tokenized to its own longest text (truncated to the model's maximum sequence length);
the batcher pads across requests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.engine.artifact import read_verified
from runtime.engine.errors import InputError
from runtime.engine.manifest import Manifest

TEXT_INPUT = "text"


class Tokenize:
    def __init__(self, version_dir: Path, manifest: Manifest) -> None:
        from tokenizers import Tokenizer

        files = manifest.preprocessing["tokenizer"].files
        index = next((i for i, f in enumerate(files) if f.endswith("tokenizer.json")), None)
        if index is None:
            raise InputError(f"{version_dir}: the tokenizer preprocessing has no tokenizer.json")
        key = f"preprocessing.tokenizer.files[{index}]"
        # Read as verified (confined, its sha256 checked as read): what is parsed is what was packaged.
        self._tokenizer = Tokenizer.from_str(read_verified(version_dir, manifest, files[index], key).decode())
        signature = manifest.signature
        ids = signature.input("input_ids")
        seq = ids.shape[1]
        self.max_length = signature.dims[seq].max if isinstance(seq, str) else int(seq)
        self.produces = [s.name for s in signature.inputs]

    def __call__(self, texts: np.ndarray) -> dict[str, np.ndarray]:
        if texts.ndim != 1 or texts.size == 0:
            raise InputError(f"input 'text': expected shape [batch] with batch >= 1, got {list(texts.shape)}")
        try:
            strings = [t.decode() if isinstance(t, bytes) else str(t) for t in texts]
        except UnicodeDecodeError:
            raise InputError("input 'text': elements must be UTF-8") from None
        return encode(self._tokenizer, strings, self.max_length, self.produces)


def encode(tokenizer, texts: list[str], max_length: int, names: list[str], pad_to: int | None = None):
    """Token arrays for `texts`: truncated to max_length, padded to the longest (or to `pad_to`)."""
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=pad_to)
    encodings = tokenizer.encode_batch(texts)
    # Below 2 tokens [CLS] and [SEP] cannot both fit and the tokenizer does not truncate; keep the head.
    columns = {
        "input_ids": [e.ids[:max_length] for e in encodings],
        "attention_mask": [e.attention_mask[:max_length] for e in encodings],
        "token_type_ids": [e.type_ids[:max_length] for e in encodings],
    }
    return {name: np.array(columns[name], dtype=np.int64) for name in names}


def load(version_dir: Path, manifest: Manifest) -> Tokenize | None:
    """The preprocessing a version packages, ready to apply; None when it has none."""
    packaged = manifest.preprocessing or {}
    if "tokenizer" in packaged:
        return Tokenize(version_dir, manifest)
    return None

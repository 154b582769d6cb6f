"""Which requests are captured: decided by a hash of the inference id, so every record of one request
(its answer and its shadow run, on every replica) is kept or dropped together, and a retry with the
same id is decided alike."""

from __future__ import annotations

import hashlib

_SCALE = 2**64


def sampled(inference_id: str, percent: float) -> bool:
    """True for about `percent` % of ids, always the same for one id."""
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    digest = hashlib.blake2b(inference_id.encode(), digest_size=8, person=b"trtserve-cap").digest()
    return int.from_bytes(digest, "big") / _SCALE * 100 < percent

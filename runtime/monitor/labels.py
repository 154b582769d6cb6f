"""Feedback judged online: a replica remembers the classes it answered for its most recent requests, so a
label posted for one of them counts as correct or wrong at once (`trtserve_feedback_labels`), the number
an accuracy alert watches. Bounded in bytes (ids and outputs): the oldest requests are forgotten first; a
label for a request this replica did not answer (or forgot) is `unmatched`, and `trtserve monitor report`
still joins it from the captures. With several replicas each judges the labels it receives for what it
answered: a random share of the labels, so the ratio of correct to judged stays an estimate of the
accuracy."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict

import numpy as np

MAX_BYTES = 64 << 20  # held per model in one replica: about 200,000 answers of 10 classes
ENTRY_BYTES = 250  # what one remembered answer holds beside its id, version and values (slot, tuple, array)
CORRECT, WRONG, UNMATCHED = "correct", "wrong", "unmatched"


class RecentPredictions:
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self._answers: OrderedDict[str, tuple[str, np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, inference_id: str, version: str, output: np.ndarray) -> None:
        """The classifier output a request was answered with (judged when a label comes). A copy: the
        output may be a view of its whole batch, which it would keep alive."""
        kept = np.array(output)
        size = sys.getsizeof(inference_id) + sys.getsizeof(version) + kept.nbytes + ENTRY_BYTES
        with self._lock:
            earlier = self._answers.pop(inference_id, None)
            if earlier is not None:
                self.held_bytes -= earlier[2]
            if size > self.max_bytes or kept.size == 0:  # larger than the whole bound, or nothing to judge
                return
            self._answers[inference_id] = (version, kept, size)
            self.held_bytes += size
            while self.held_bytes > self.max_bytes:
                _, (_, _, forgotten) = self._answers.popitem(last=False)
                self.held_bytes -= forgotten

    def judge(self, inference_id: str, label: list[float]) -> tuple[str | None, str]:
        """(version, correct | wrong) for a remembered request, else (None, unmatched). A request of several
        rows is correct when every row's argmax is its label, as the offline report counts it."""
        with self._lock:
            answer = self._answers.get(inference_id)
        if answer is None:
            return None, UNMATCHED
        version, output, _ = answer
        rows = output.shape[0] if output.ndim > 1 else 1
        classes = np.argmax(output.reshape(rows, -1), axis=1)
        if len(label) != rows:
            return version, WRONG
        return version, CORRECT if np.array_equal(classes, np.asarray(label, np.float64).astype(np.int64)) else WRONG

"""Feedback judged online: a replica remembers the classes it answered for its most recent requests, so a
label posted for one of them counts as correct or wrong at once (`trtserve_feedback_labels`), the number
an accuracy alert watches. Bounded: the oldest requests are forgotten first; a label for a request this
replica did not answer (or forgot) is `unmatched`, and `trtserve monitor report` still joins it from the
captures. With several replicas each judges the labels it receives for what it answered: a random share
of the labels, so the ratio of correct to judged stays an estimate of the accuracy."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

MAX_IDS = 50_000  # requests remembered per model in one replica (a few MB)
CORRECT, WRONG, UNMATCHED = "correct", "wrong", "unmatched"


class RecentPredictions:
    def __init__(self, max_ids: int = MAX_IDS) -> None:
        self.max_ids = max_ids
        self._answers: OrderedDict[str, tuple[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, inference_id: str, version: str, output: np.ndarray) -> None:
        """The classifier output a request was answered with (kept as it is; judged when a label comes)."""
        with self._lock:
            self._answers[inference_id] = (version, output)
            self._answers.move_to_end(inference_id)
            while len(self._answers) > self.max_ids:
                self._answers.popitem(last=False)

    def judge(self, inference_id: str, label: list[float]) -> tuple[str | None, str]:
        """(version, correct | wrong) for a remembered request, else (None, unmatched). A request of several
        rows is correct when every row's argmax is its label, as the offline report counts it."""
        with self._lock:
            answer = self._answers.get(inference_id)
        if answer is None:
            return None, UNMATCHED
        version, output = answer
        rows = output.shape[0] if output.ndim > 1 else 1
        classes = np.argmax(output.reshape(rows, -1), axis=1)
        if len(label) != rows:
            return version, WRONG
        return version, CORRECT if np.array_equal(classes, np.asarray(label, np.float64).astype(np.int64)) else WRONG

"""Deterministic weighted assignment of patients to groups.

sha256("<experiment id>:<patient id>") read as a 64-bit fraction is uniform in [0, 1)
and depends on nothing else, so the same patient in the same experiment always lands in
the same group, in any process, and a re-sent appointment can never move a patient.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from itertools import accumulate


def assignment_point(experiment_id: uuid.UUID, patient_id: str) -> float:
    """A number in [0, 1), fixed for this experiment and patient."""
    digest = hashlib.sha256(f"{experiment_id}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment_id: uuid.UUID, patient_id: str, weights: Sequence[float]) -> int:
    """The index of the patient's group: weights cut [0, 1) into consecutive shares.

    Raises ValueError when there are no weights or one is not positive.
    """
    if not weights or any(w <= 0 for w in weights):
        raise ValueError("weights must be positive, and at least one")
    target = assignment_point(experiment_id, patient_id) * sum(weights)
    for index, bound in enumerate(accumulate(weights)):
        if target < bound:
            return index
    return len(weights) - 1  # float rounding at the very top of the range

"""Deterministic weighted assignment."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from app.experiments.assignment import assign, assignment_point


class TestAssign:
    @pytest.mark.parametrize("weights", [[1, 2, 1], [0.1, 0.3, 0.6]])
    def test_100000_patients_split_within_one_percent_of_the_weights(
        self, weights: list[float]
    ) -> None:
        experiment_id = uuid.UUID("6c0cbb7e-9f4e-4c43-9a59-1d8f1f1b2a10")
        n = 100_000
        counts = Counter(assign(experiment_id, f"p-{i}", weights) for i in range(n))
        total = sum(weights)
        for index, weight in enumerate(weights):
            assert abs(counts[index] / n - weight / total) < 0.01, (index, counts)

    def test_the_same_patient_and_experiment_always_give_the_same_group(self) -> None:
        experiment_id = uuid.uuid4()
        first = [assign(experiment_id, f"p-{i}", [1, 1, 1]) for i in range(1000)]
        again = [assign(experiment_id, f"p-{i}", [1, 1, 1]) for i in range(1000)]
        assert first == again

    def test_another_experiment_shuffles_patients_independently(self) -> None:
        a, b = uuid.uuid4(), uuid.uuid4()
        same = sum(
            assign(a, f"p-{i}", [1, 1]) == assign(b, f"p-{i}", [1, 1]) for i in range(10_000)
        )
        assert 0.47 < same / 10_000 < 0.53

    def test_points_are_in_the_unit_interval(self) -> None:
        points = [assignment_point(uuid.uuid4(), "p") for _ in range(1000)]
        assert all(0 <= p < 1 for p in points)

    @pytest.mark.parametrize("weights", [[], [1, 0], [1, -1]])
    def test_weights_must_be_positive(self, weights: list[float]) -> None:
        with pytest.raises(ValueError):
            assign(uuid.uuid4(), "p", weights)

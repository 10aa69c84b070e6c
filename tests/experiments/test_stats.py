"""The statistics against independent computations (scipy) and published values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from app.experiments import stats

Z = float(scipy_stats.norm.ppf(0.975))


def reference_wilson(x: int, n: int) -> tuple[float, float]:
    """Wilson's interval written from its definition: the p where |p̂ - p| = z·se(p)."""
    p = x / n
    a = 1 + Z**2 / n
    b = -(2 * p + Z**2 / n)
    c = p**2
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


class TestWilson:
    @pytest.mark.parametrize(("x", "n"), [(0, 10), (10, 10), (1, 3), (50, 100), (9_931, 20_000)])
    def test_agrees_with_the_quadratic_definition(self, x: int, n: int) -> None:
        interval = stats.wilson_interval(x, n)
        assert interval is not None
        low, high = reference_wilson(x, n)
        assert interval.low == pytest.approx(max(low, 0.0), abs=1e-12)
        assert interval.high == pytest.approx(min(high, 1.0), abs=1e-12)

    def test_published_value(self) -> None:
        # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 -> 0.2553-0.3662.
        interval = stats.wilson_interval(81, 263)
        assert interval is not None
        assert (round(interval.low, 4), round(interval.high, 4)) == (0.2553, 0.3662)

    def test_no_patients_no_interval(self) -> None:
        assert stats.wilson_interval(0, 0) is None

    def test_z_constant_is_the_normal_quantile(self) -> None:
        assert abs(stats.Z_95 - Z) < 1e-12


class TestNewcombe:
    def test_published_examples(self) -> None:
        # Newcombe (1998), Statistics in Medicine 17:873, table II, method 10.
        for (x1, n1, x2, n2), expected in [
            ((56, 70, 48, 80), (0.0524, 0.3339)),
            ((9, 10, 3, 10), (0.1705, 0.8090)),
        ]:
            interval = stats.newcombe_interval(x1, n1, x2, n2)
            assert interval is not None
            assert (round(interval.low, 4), round(interval.high, 4)) == expected

    def test_empty_group_no_interval(self) -> None:
        assert stats.newcombe_interval(1, 2, 0, 0) is None


class TestZTest:
    @pytest.mark.parametrize(
        ("x1", "n1", "x2", "n2"),
        [(56, 70, 48, 80), (11_000, 20_000, 10_000, 20_000), (3, 9, 4, 11)],
    )
    def test_p_value_equals_pearsons_chi_squared_without_correction(
        self, x1: int, n1: int, x2: int, n2: int
    ) -> None:
        table = np.array([[x1, n1 - x1], [x2, n2 - x2]])
        chi2, p, _, _ = scipy_stats.chi2_contingency(table, correction=False)
        z, p_value = stats.two_proportion_z_test(x1, n1, x2, n2) or (0.0, 0.0)
        assert p_value == pytest.approx(p, rel=1e-9)
        assert z**2 == pytest.approx(chi2, rel=1e-9)

    def test_identical_all_or_nothing_groups_have_p_one(self) -> None:
        assert stats.two_proportion_z_test(0, 10, 0, 20) == (0.0, 1.0)
        assert stats.two_proportion_z_test(10, 10, 20, 20) == (0.0, 1.0)


class TestAaSimulation:
    def test_an_aa_test_rejects_at_about_five_percent(self) -> None:
        rng = np.random.default_rng(20261123)
        runs, n = 400, 2_000
        rejected = 0
        for _ in range(runs):
            a, b = rng.binomial(n, 0.5, size=2)
            comparison = stats.compare(int(a), n, int(b), n)
            assert comparison is not None
            rejected += comparison.p_value < 0.05
        assert 0.025 <= rejected / runs <= 0.08, rejected

    def test_the_difference_interval_covers_the_truth_about_95_percent(self) -> None:
        rng = np.random.default_rng(7)
        runs, n = 400, 500
        covered = 0
        for _ in range(runs):
            a, b = int(rng.binomial(n, 0.55)), int(rng.binomial(n, 0.50))
            interval = stats.newcombe_interval(a, n, b, n)
            assert interval is not None
            covered += interval.low <= 0.05 <= interval.high
        assert 0.92 <= covered / runs <= 0.98, covered

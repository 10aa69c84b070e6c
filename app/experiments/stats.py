"""The small statistics of an experiment's results, in plain Python (no scipy).

- A return rate's 95% interval: Wilson's score interval.
- A difference of two rates (group minus control): Newcombe's hybrid score interval
  (his method 10, 1998), built from the two Wilson intervals. It keeps its coverage
  near 95% for small groups and for rates near 0 or 1, where Wald's interval does not.
- The p-value: the two-sided two-proportion z-test with the pooled proportion under the
  null hypothesis of equal rates (the same as Pearson's chi-squared test without
  continuity correction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The 97.5th percentile of the standard normal distribution: a two-sided 95% interval.
Z_95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Comparison:
    """A group against the control: difference = rate - control's rate."""

    difference: float
    interval: Interval
    z: float
    p_value: float


def rate(successes: int, trials: int) -> float | None:
    return successes / trials if trials else None


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> Interval | None:
    """Wilson's score interval for successes/trials; None when trials is 0."""
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError("successes must be between 0 and trials")
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, z: float = Z_95) -> Interval | None:
    """Newcombe's hybrid score interval for p1 - p2; None when a group is empty."""
    w1, w2 = wilson_interval(x1, n1, z), wilson_interval(x2, n2, z)
    if w1 is None or w2 is None:
        return None
    p1, p2 = x1 / n1, x2 / n2
    d = p1 - p2
    low = d - math.sqrt((p1 - w1.low) ** 2 + (w2.high - p2) ** 2)
    high = d + math.sqrt((w1.high - p1) ** 2 + (p2 - w2.low) ** 2)
    return Interval(low, high)


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float] | None:
    """(z, two-sided p) of H0: p1 == p2, pooled; None when a group is empty.

    When every patient of both groups returned (or none did) the rates cannot differ:
    z = 0, p = 1.
    """
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


def compare(x: int, n: int, control_x: int, control_n: int) -> Comparison | None:
    """The group (x of n) against the control; None when either group is empty."""
    interval = newcombe_interval(x, n, control_x, control_n)
    test = two_proportion_z_test(x, n, control_x, control_n)
    if interval is None or test is None:
        return None
    return Comparison(x / n - control_x / control_n, interval, test[0], test[1])

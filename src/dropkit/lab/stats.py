"""The lab's statistics, in one place: the paired t-test and Holm's correction.

The report's claims (:mod:`dropkit.lab.report.claims`) and the paper protocols
(:mod:`dropkit.lab.reproduce`) judge with these same two functions.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["ALPHA", "holm", "paired_t_test"]

#: The significance level every lab verdict is stated at.
ALPHA = 0.05


def paired_t_test(
    differences: Sequence[float], alpha: float = ALPHA
) -> tuple[float, tuple[float, float], float]:
    """(mean, its ``1 - alpha`` confidence interval, two-sided p) of paired ``differences``.

    Student's t with n-1 degrees of freedom; the same p as ``scipy.stats.ttest_rel``.
    Identical differences have no spread: p is 0 when they are not all 0, else 1.
    """
    from scipy import stats

    n = len(differences)
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 differences, but got {n}")
    mean = statistics.fmean(differences)
    sd = statistics.stdev(differences)
    if sd == 0.0:
        return mean, (mean, mean), 1.0 if mean == 0.0 else 0.0
    se = sd / math.sqrt(n)
    p = 2.0 * float(stats.t.sf(abs(mean / se), n - 1))
    half = float(stats.t.ppf(1.0 - alpha / 2.0, n - 1)) * se
    return mean, (mean - half, mean + half), p


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the input's order.

    The k-th smallest p is multiplied by (m - k + 1), capped at 1, and made
    non-decreasing; reject where the adjusted p < alpha. It controls the chance of
    any false "significant" among the m comparisons at alpha, without assuming
    they are independent.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted

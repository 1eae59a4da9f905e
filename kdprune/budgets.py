"""Budgets and balance: how a selection method turns a kept fraction into a count, and whether it splits
that count across classes. Each method's registration names its rule (``budget=``, a key of
``BUDGET_RULES``) and its balance (``balance=``, one of ``BALANCES``): the reference code's, stated in
the registration's docstring. Pure Python / NumPy: the scores, the selectors and the samplers all use it.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"kept fraction must be in (0, 1], got {fraction}")


def budget(n: int, fraction: float) -> int:
    """Number of examples kept at ``fraction`` of ``n``: round half up, at least 1 (rule ``round_half_up``)."""
    _check_fraction(fraction)
    return max(1, min(n, int(np.floor(fraction * n + 0.5))))


def budget_floor(n: int, fraction: float) -> int:
    """``int(fraction * n)``, no tolerance (N = 90, f = 0.7: 62, as 0.7 * 90 = 62.99999999999999), at least 1
    (rule ``floor``: the CCS code's ``coreset_num = int(args.coreset_ratio * total_num)``)."""
    _check_fraction(fraction)
    return max(1, min(n, int(fraction * n)))


def budget_round(n: int, fraction: float) -> int:
    """Python's ``round(fraction * n)`` (half to even: N = 1295, f = 0.3 -> 388), at least 1 (rule ``round``: the
    RS2 code's ``coreset_size = round(self.n_train * fraction)``, DeepCore's ``CoresetMethod``)."""
    _check_fraction(fraction)
    return max(1, min(n, round(fraction * n)))


def budget_median_band(n: int, fraction: float) -> int:
    """The size of the Moderate-DS code's band of distance ranks ``[round(n * (0.5 - f/2)), round(n * (0.5 + f/2)))``
    (its ``get_prune_idx``; Python's round, half to even: N = 1295, f = 0.1 -> [583, 712), 129), at least 1
    (rule ``median_band``)."""
    _check_fraction(fraction)
    return max(1, min(n, round(n * (0.5 + fraction / 2)) - round(n * (0.5 - fraction / 2))))


# How a method turns a kept fraction into a count. A registration names its rule (``budget=``), the reference
# code's where there is one; ``round_half_up`` is kdprune's own (see README "Budgets").
BUDGET_RULES: dict[str, Callable[[int, float], int]] = {
    "round_half_up": budget, "floor": budget_floor, "round": budget_round, "median_band": budget_median_band,
}


def budget_rule_error(rule: str) -> Optional[str]:
    """What is wrong with a registration's ``budget`` rule name, or None."""
    return None if rule in BUDGET_RULES else f"unknown budget rule {rule!r}; valid: {', '.join(BUDGET_RULES)}"


BALANCES = ("class", "global")  # a registration's ``balance``: per class (DeepCore's default) or over the whole pool


def balance_error(balance: str) -> Optional[str]:
    """What is wrong with a registration's ``balance`` (the balance its published code uses), or None."""
    return None if balance in BALANCES else f"balance must be one of {', '.join(BALANCES)}, got {balance!r}"

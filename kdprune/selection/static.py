"""Static (once, before training) selection of a kept subset.

Every selector is registered by name in ``SELECTORS`` and called as

    fn(ids, labels, scores, fraction, seed, **options) -> kept ids (int64, sorted ascending)

``ids``, ``labels`` and ``scores`` are aligned 1-D arrays (one entry per training example),
``fraction`` in (0, 1] is the kept fraction, the number kept is ``budget(len(ids), fraction)``,
``seed`` drives any randomness through ``np.random.default_rng(seed)`` (never the global RNG) and
``options`` are selector-specific keywords (e.g. CCS's ``beta``). Ties in score are broken by a
seeded random order of the examples (``tie_ranks``), never by id or position: ids may follow the
class order (ImageFolder) and most examples can share a score (forgetting), so breaking ties by id
would pick the subset by id. Where a group of equal scores straddles the budget, the examples
taken from it are split across classes in proportion to the group's class sizes (``class_quotas``)
and drawn at random within each class. Every random draw is made over the ids in sorted order, so
the result never depends on the order of the input arrays.

Registered here: ``keep_high``, ``keep_low``, ``random``, ``class_balanced_high``,
``class_balanced_low``; CCS (``ccs``) lives in ``ccs.py``. A selection method that takes options
from params (CCS) declares them with ``declare_options``: they are named under ``select.<name>``
and validated from the declaration (``SELECTOR_OPTIONS``), like a score's or a sampler's.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from kdprune.budgets import BALANCES, BUDGET_RULES, balance_error, budget, budget_rule_error  # noqa: F401
from kdprune.options import Option, resolve_options
from kdprune.registry import Registry

Selector = Callable[..., np.ndarray]
SELECTORS: Registry[Selector] = Registry("selector")
register_selector = SELECTORS.register


@dataclass(frozen=True)
class SelectorOptions:
    """The options a selection method takes from params, under ``select.<name>``."""
    name: str
    options: dict[str, Option]
    check: Optional[Callable[[dict, dict], Optional[str]]] = None  # cross-key rule (options, params) -> error
    balance: str = "class"  # the balance its published code uses (BALANCES): what select.balance 'auto' runs
    budget: str = "round_half_up"  # its budget rule (BUDGET_RULES)

    def resolve(self, given: Optional[dict]) -> dict:
        """``given`` (params' ``select.<name>``, or None) with the defaults filled in; ValueError
        naming every unknown or bad option."""
        return resolve_options(f"select.{self.name}", self.options, given)


SELECTOR_OPTIONS: Registry[SelectorOptions] = Registry("selection method with options")


def declare_options(name: str, options: dict[str, Option],
                    check: Optional[Callable[[dict, dict], Optional[str]]] = None, *, balance: str = "class",
                    budget: str = "round_half_up") -> SelectorOptions:
    """Register ``name``'s options (``select.<name>``) and its cross-key rule, as a score's ``check``:
    ``(resolved options, params) -> error text or None``, run by params validation; ``balance``: the balance
    its published code uses (``BALANCES``), ``budget``: its budget rule (``BUDGET_RULES``)."""
    for msg in (balance_error(balance), budget_rule_error(budget)):
        if msg:
            raise ValueError(f"selection method {name!r}: {msg}")
    spec = SelectorOptions(name, options, check, balance, budget)
    SELECTOR_OPTIONS.register(name)(spec)
    return spec


def tie_ranks(ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded random rank (0..N-1) of every example: the order in which equal scores are taken.
    A function of the set of ids and the seed only (drawn over the ids sorted ascending), from its
    own random stream (``default_rng([seed, 1])``), independent of the selectors' other draws."""
    ids = np.asarray(ids)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.argsort(ids, kind="stable")] = np.random.default_rng([int(seed), 1]).permutation(len(ids))
    return rank


def _rank_within(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """For rows already in the wanted order: each row's position among the rows of its group."""
    o = np.argsort(groups, kind="stable")
    starts = np.concatenate(([0], np.cumsum(np.bincount(groups, minlength=n_groups))[:-1]))
    r = np.empty(len(groups), dtype=np.int64)
    r[o] = np.arange(len(groups)) - starts[groups[o]]
    return r


def _top_k(ids, labels, scores, k: int, descending: bool, seed: int) -> np.ndarray:
    """Positions of the ``k`` best scores; equal scores in a seeded random order, and a group of equal
    scores that straddles the cut is split across its classes in proportion to their sizes in it."""
    primary = -np.asarray(scores, dtype=np.float64) if descending else np.asarray(scores, dtype=np.float64)
    order = np.lexsort((tie_ranks(ids, seed), primary))  # best first; ties in random order
    if k >= len(order) or primary[order[k - 1]] != primary[order[k]]:
        return order[:k]
    edge = primary[order[k - 1]]
    ranked = primary[order]
    above, group = order[ranked < edge], order[ranked == edge]
    classes, inv, sizes = np.unique(np.asarray(labels)[group], return_inverse=True, return_counts=True)
    quotas = class_quotas(sizes, k - len(above))
    take = group[_rank_within(inv, len(classes)) < quotas[inv]]
    return np.concatenate((above, take))


def _size(n: int, fraction: float, size: Optional[int]) -> int:
    """The count a selector keeps: ``size`` when given (the method's budget rule, ``BUDGET_RULES``), else
    ``budget(n, fraction)``."""
    if size is None:
        return budget(n, fraction)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= n:
        raise ValueError(f"size (number kept) must be an integer in [1, {n}], got {size!r}")
    return int(size)


@register_selector("keep_high")
def keep_high(ids, labels, scores, fraction, seed, size=None):
    """Keep the ``fraction`` of examples with the highest score (ties: see the module docstring);
    ``size``: the count, when the method's budget rule is not ``budget``'s."""
    return np.sort(ids[_top_k(ids, labels, scores, _size(len(ids), fraction, size), True, seed)])


@register_selector("keep_low")
def keep_low(ids, labels, scores, fraction, seed, size=None):
    """Keep the ``fraction`` of examples with the lowest score (ties: see the module docstring);
    ``size`` as ``keep_high``."""
    return np.sort(ids[_top_k(ids, labels, scores, _size(len(ids), fraction, size), False, seed)])


@register_selector("random")
def random_subset(ids, labels, scores, fraction, seed, size=None):
    """A uniform random subset of ``budget(N, fraction)`` ids (``size`` ids when given); ``scores`` are ignored.

    The draw is ``np.random.default_rng(seed).permutation(N)[:k]`` applied to the ids sorted
    ascending, so the same (id set, fraction, seed) gives the same subset in any input order.
    """
    k = _size(len(ids), fraction, size)
    pool = np.sort(np.asarray(ids))
    pick = np.random.default_rng(seed).permutation(len(pool))[:k]
    return np.sort(pool[pick])


random_subset.needs_scores = False  # select() accepts scores=None for it


def class_quotas(class_sizes: np.ndarray, k: int) -> np.ndarray:
    """Split a budget ``k`` across classes proportionally to ``class_sizes`` (largest remainder).

    Class c's exact share is ``k * n_c / N``; each class first gets the floor of its share, and
    the ``k - sum(floors)`` leftover units go one each to the classes with the largest fractional
    remainder, ties broken by class index ascending. Integer arithmetic throughout (remainder
    ``k * n_c mod N``), so no float ties. The total is exactly ``k`` (for 0 <= k <= N) and no
    class gets more than its size: a class only receives a leftover unit when its share is not
    an integer, i.e. when ``floor(share) < share < n_c``. A class may get 0 when its share is
    below one.
    """
    sizes = np.asarray(class_sizes, dtype=np.int64)
    n = int(sizes.sum())
    if not 0 <= k <= n:
        raise ValueError(f"budget {k} must be between 0 and the number of examples {n}")
    if n == 0:
        return np.zeros_like(sizes)
    base, rem = np.divmod(k * sizes, n)
    left = k - int(base.sum())
    # largest remainder first, then class index ascending
    order = np.lexsort((np.arange(len(sizes)), -rem))
    base[order[:left]] += 1
    return base


def _class_balanced(ids, labels, scores, fraction, descending: bool, seed: int, size=None) -> np.ndarray:
    ids = np.asarray(ids)
    labels = np.asarray(labels)
    k = _size(len(ids), fraction, size)
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = class_quotas(sizes, k)
    primary = -np.asarray(scores) if descending else np.asarray(scores)
    # one global order: by class, then score, then the seeded random tie order; then each class's first quota rows
    order = np.lexsort((tie_ranks(ids, seed), primary, inverse))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank_in_class = np.arange(len(ids)) - starts[inverse[order]]
    kept = order[rank_in_class < quotas[inverse[order]]]
    return np.sort(ids[kept])


@register_selector("class_balanced_high")
def class_balanced_high(ids, labels, scores, fraction, seed, size=None):
    """Per class, keep the highest scores; the budget is split across classes in proportion to
    class size (largest-remainder rounding, see ``class_quotas``: the total is exactly
    ``budget(N, fraction)``, or ``size`` when given, and no class gets more than its size). Ties in a
    seeded random order.

    The ids are returned sorted ascending, which is not a training order: the trainer draws a
    fresh permutation of the subset every epoch, which is the "shuffle after class-balanced
    selection" the recipe asks for.
    """
    return _class_balanced(ids, labels, scores, fraction, descending=True, seed=seed, size=size)


@register_selector("class_balanced_low")
def class_balanced_low(ids, labels, scores, fraction, seed, size=None):
    """Per class, keep the lowest scores; otherwise as ``class_balanced_high`` (same quotas,
    ties in a seeded random order, sorted output that the trainer shuffles every epoch)."""
    return _class_balanced(ids, labels, scores, fraction, descending=False, seed=seed, size=size)


def selector_options(selector: str) -> list[str]:
    """Names of the keyword options a registered selector accepts (beyond the five positionals)."""
    params = list(inspect.signature(SELECTORS.get(selector)).parameters.values())[5:]
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def select(selector: str, ids: np.ndarray, labels: np.ndarray, scores: np.ndarray | None, fraction: float,
           seed: int = 0, **options) -> np.ndarray:
    """Run a registered selector after validating its inputs; returns sorted int64 ids.

    ``options`` are passed to the selector as keywords; an option it does not take is a
    ValueError naming the selector and the options it does take. ``scores`` may be None only
    for selectors that ignore them (``random``).
    """
    fn = SELECTORS.get(selector)
    ids = np.asarray(ids)
    labels = np.asarray(labels)
    if scores is None:
        if getattr(fn, "needs_scores", True):
            raise ValueError(f"selector {selector!r} needs scores")
        scores = np.zeros(len(ids))
    scores = np.asarray(scores)
    if not (len(ids) == len(labels) == len(scores)):
        raise ValueError("ids, labels and scores must have the same length")
    if len(ids) == 0:
        raise ValueError("cannot select from an empty set of ids")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids contain duplicates")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    allowed = selector_options(selector)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"selector {selector!r} does not take option(s) {', '.join(unknown)}; "
                         f"it takes: {', '.join(allowed) or 'none'}")
    out = fn(ids, labels, scores, fraction, seed, **options)
    return np.asarray(out).astype(np.int64)

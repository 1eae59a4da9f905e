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

One module each in this package: ``keep`` (``keep_high``, ``keep_low``: the top of a score, the
building block of every score method), ``class_balanced`` (``class_balanced_high``, ``class_balanced_low``),
``random_subset`` (``random``) and ``ccs``. A selector is registered with :func:`register_selector`; one
that is a selection method of its own (``method=True``: a name in ``select.methods``, as ``ccs``)
declares there, as a score does, its options (named under ``select.<name>``), cross-key ``check``,
balance, budget rule, whether it is seeded, which scores it reads (``reads``) and the keywords a
manifest records and it is called with (``keywords``). Nothing else in the code names it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from kdprune.budgets import BALANCES, BUDGET_RULES, balance_error, budget, budget_rule_error  # noqa: F401
from kdprune.options import Option, resolve_options
from kdprune.registry import Registry

Selector = Callable[..., np.ndarray]


@dataclass(frozen=True)
class SelectorSpec:
    """A registered static selector. Every field after ``fn`` concerns a selector that is a selection
    method of its own (``method``): the options it takes from params (``select.<name>``) and how the
    select stage runs it."""
    name: str
    fn: Selector
    method: bool = False  # a name in select.methods (ccs); False: a building block of the score methods
    options: dict[str, Option] = field(default_factory=dict)
    check: Optional[Callable[[dict, Any], Optional[str]]] = None  # cross-key rule (options, typed Params) -> error
    balance: str = "class"  # the balance its published code uses (BALANCES): what select.balance 'auto' runs
    budget: str = "round_half_up"  # its budget rule (BUDGET_RULES)
    seeded: bool = False  # its subset depends on the seed (one manifest per seed)
    needs_scores: bool = True  # False: it ignores the scores (random)
    # (resolved options) -> (the score it selects on, a second score it reads or None): score names
    reads: Optional[Callable[[dict], tuple[str, Optional[str]]]] = None
    # (resolved options, kept fraction) -> its keyword options as the manifest records them (JSON)
    keywords: Optional[Callable[[dict, float], dict]] = None

    def resolve(self, given: Optional[dict]) -> dict:
        """``given`` (params' ``select.<name>``, or None) with the defaults filled in; ValueError
        naming every unknown or bad option."""
        return resolve_options(f"select.{self.name}", self.options, given)

    def __call__(self, *args, **kwargs) -> np.ndarray:
        return self.fn(*args, **kwargs)


SELECTORS: Registry[SelectorSpec] = Registry("selector")
# the selectors that are selection methods of their own (``method=True``): what ``select.<name>`` options name
STATIC_METHODS: Registry[SelectorSpec] = Registry("static selection method")


def register_selector(name: str, *, method: bool = False, options: Optional[dict[str, Option]] = None,
                      check: Optional[Callable[[dict, dict], Optional[str]]] = None, balance: str = "class",
                      budget: str = "round_half_up", seeded: bool = False, needs_scores: bool = True,
                      reads: Optional[Callable[[dict], tuple[str, Optional[str]]]] = None,
                      keywords: Optional[Callable[[dict, float], dict]] = None):
    """Register ``fn(ids, labels, scores, fraction, seed, **keywords) -> kept ids`` as selector ``name``;
    with ``method=True`` also as a selection method of its own (see :class:`SelectorSpec`: ``reads`` and
    ``keywords`` are then required; ``check`` is run by params validation, as a score's)."""
    for msg in (balance_error(balance), budget_rule_error(budget)):
        if msg:
            raise ValueError(f"selector {name!r}: {msg}")
    if method and (reads is None or keywords is None):
        raise ValueError(f"selector {name!r}: a selection method of its own declares reads= and keywords=")
    if not method and (options or check or reads or keywords):
        raise ValueError(f"selector {name!r}: options, check, reads and keywords are for method=True")

    def deco(fn: Selector) -> Selector:
        spec = SelectorSpec(name, fn, method, dict(options or {}), check, balance, budget, seeded, needs_scores,
                            reads, keywords)
        SELECTORS.register(name)(spec)
        if method:
            STATIC_METHODS.register(name)(spec)
        return fn

    return deco


def tie_ranks(ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded random rank (0..N-1) of every example: the order in which equal scores are taken.
    A function of the set of ids and the seed only (drawn over the ids sorted ascending), from its
    own random stream (``default_rng([seed, 1])``), independent of the selectors' other draws."""
    ids = np.asarray(ids)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.argsort(ids, kind="stable")] = np.random.default_rng([int(seed), 1]).permutation(len(ids))
    return rank


def kept_count(n: int, fraction: float, size: Optional[int]) -> int:
    """The count a selector keeps: ``size`` when given (the method's budget rule, ``BUDGET_RULES``), else
    ``budget(n, fraction)``."""
    if size is None:
        return budget(n, fraction)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= n:
        raise ValueError(f"size (number kept) must be an integer in [1, {n}], got {size!r}")
    return int(size)


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


def selector_options(selector: str) -> list[str]:
    """Names of the keyword options a registered selector accepts (beyond the five positionals)."""
    params = list(inspect.signature(SELECTORS.get(selector).fn).parameters.values())[5:]
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def select(selector: str, ids: np.ndarray, labels: np.ndarray, scores: np.ndarray | None, fraction: float,
           seed: int = 0, **options) -> np.ndarray:
    """Run a registered selector after validating its inputs; returns sorted int64 ids.

    ``options`` are passed to the selector as keywords; an option it does not take is a
    ValueError naming the selector and the options it does take. ``scores`` may be None only
    for selectors that ignore them (``random``).
    """
    spec = SELECTORS.get(selector)
    ids = np.asarray(ids)
    labels = np.asarray(labels)
    if scores is None:
        if spec.needs_scores:
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
    out = spec.fn(ids, labels, scores, fraction, seed, **options)
    return np.asarray(out).astype(np.int64)

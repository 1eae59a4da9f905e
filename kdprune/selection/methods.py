"""What a name in ``select.methods`` means: which score, which selector or per-epoch sampler.

    <score>            keep the end the score's recipe keeps (``keep`` of its registration),
                       balanced as ``select.balance`` says: ``auto`` (the default) as the score's
                       registration declares its published code does (``balance``: "class", per-class
                       budgets proportional to class sizes, as DeepCore for every method it runs;
                       "global", over the whole pool, as the Moderate-DS code), ``true`` per class,
                       ``false`` over the whole pool; a score with no keep end (``random``) keeps a
                       uniform random subset (per class when balanced). The count kept is the
                       registration's budget rule (``budget``, kdprune/budgets.py)
    <score>:high|low   keep that end explicitly (balanced as ``select.balance`` says)
    <score>:balanced   class-balanced at the recipe's end, whatever ``select.balance`` says
    <score>:global     over the whole pool at the recipe's end, whatever ``select.balance`` says
    <static method>    a static selector registered as a selection method of its own
                       (``method=True``, kdprune/selection/static), e.g. ``ccs``: coverage-centric
                       selection (Zheng et al. 2023); it reads the scores its registration's
                       ``reads`` names from its options (``select.<name>``; CCS: ``select.ccs.score``,
                       and ``aum_prob`` for its cut, at the cut score's registered ``hard`` end);
                       balanced as its registration's ``balance`` under ``auto``, per class with
                       ``select.balance: true`` or ``<name>:balanced``, over the pool with ``<name>:global``
    <sampler>          a registered per-epoch sampler (kdprune/selection/samplers/), options
                       under ``select.<name>``: rs2, a fresh random subset each epoch without
                       replacement across epochs (Okanovic et al. 2024; the kept fraction is the
                       per-epoch share); infobatch, drop a share of low-loss examples each epoch,
                       rescale the rest, full data at the end (Qin et al. 2024; full data only)
    <joint selector>   a subset chosen as a whole on the teacher's features or gradients
                       (herding, kcenter, facility_location, graph_cut, craig, gradmatch, glister,
                       cal, deepfool; see kdprune/selection/joint); options under
                       ``select.<name>``

Static methods write manifests with the kept ids; per-epoch methods write manifests with every
id of the pool plus the sampler and its seed, and the trainer draws the epochs.
"""
from __future__ import annotations

from dataclasses import dataclass
from kdprune.settings import Frozen
from typing import Mapping, Optional

from kdprune.budgets import BUDGET_RULES
from kdprune.scores import SCORES
from kdprune.selection.joint import JOINT
from kdprune.selection.samplers import SAMPLERS
from kdprune.selection.static import STATIC_METHODS

MODES = ("high", "low", "balanced", "global")
BALANCE_SETTINGS = ("auto", True, False)  # select.balance: as the method's code, per class, over the whole pool


@dataclass(frozen=True)
class Method:
    label: str  # as written in params, e.g. "el2n:balanced"
    score: Optional[str]  # score the selection reads (None for samplers)
    selector: Optional[str]  # static selector name, or None for samplers
    sampler: Optional[str]  # per-epoch sampler name, or None
    cut_score: Optional[str] = None  # a second score the selection reads (CCS's mislabel cut), or None
    cut_end: Optional[str] = None  # the end of ``cut_score`` that is cut: its registration's hard end
    joint: Optional[str] = None  # joint selector name (kdprune.selection.joint), or None
    balanced: bool = False  # budget split across classes in proportion to their sizes (static methods)
    budget: str = "round_half_up"  # how the kept fraction becomes a count (kdprune.budgets.BUDGET_RULES)

    @property
    def stochastic(self) -> bool:
        """Whether the subset depends on a seed (one manifest per seed)."""
        if self.joint is not None:
            return JOINT.get(self.joint).seeded
        seeded_score = self.score is not None and SCORES.get(self.score).seeded
        seeded_method = self.selector in STATIC_METHODS and STATIC_METHODS.get(self.selector).seeded
        return seeded_score or seeded_method or self.sampler is not None

    def size(self, n: int, fraction: float) -> int:
        """How many of ``n`` examples it keeps at ``fraction``: its registration's budget rule."""
        return BUDGET_RULES[self.budget](n, fraction)

    @property
    def file_stem(self) -> str:
        return self.label.replace(":", ".")


def valid_names() -> list[str]:
    return [*SCORES.names(), *(f"<score>:{m}" for m in MODES),
            *(f"{n}{m}" for n in STATIC_METHODS.names() for m in ("", ":balanced", ":global")), *SAMPLERS.names(),
            *JOINT.names()]


def hard_end(score: str) -> str:
    """The end of a score where its hard examples are (its registration's ``hard``), which a cut of the
    hardest drops; ValueError for a score with none (random)."""
    hard = SCORES.get(score).hard
    if hard is None:
        raise ValueError(f"score {score!r} has no hard end (its registration's hard=None): it cannot be cut")
    return hard


def method_from_params(label: str, select: dict) -> Method:
    """``parse_method`` with the settings params' ``select`` section gives it (``balance``, a static
    method's options ``select.<name>``)."""
    return parse_method(label, select["balance"], select.get(label.partition(":")[0]))


def _balanced(mode: str, balance, declared: str) -> bool:
    """Per class or not: an explicit ``:balanced`` / ``:global`` first, then ``select.balance`` (true / false),
    and under ``auto`` the balance the method's registration declares its code uses."""
    if not (balance == "auto" or isinstance(balance, bool)):
        raise ValueError(f"select.balance must be auto, true or false, got {balance!r}")
    if mode in ("balanced", "global"):
        return mode == "balanced"
    return declared == "class" if balance == "auto" else bool(balance)


def parse_method(label: str, balance="auto", options: Optional[dict] = None) -> Method:
    """Interpret one ``select.methods`` entry (``balance``: ``select.balance``, ``auto``, true or false;
    ``options``: a static method's ``select.<name>``, None for its defaults); unknown names raise
    ValueError listing the valid ones."""
    name, _, mode = label.partition(":")
    if name in STATIC_METHODS and mode in ("", "balanced", "global"):
        spec = STATIC_METHODS.get(name)
        score, cut = spec.reads(spec.resolve(options))
        return Method(label, score, name, None, cut_score=cut, cut_end=None if cut is None else hard_end(cut),
                      balanced=_balanced(mode, balance, spec.balance), budget=spec.budget)
    if label in SAMPLERS:
        return Method(label, None, None, label)
    if label in JOINT and label not in SCORES:
        return Method(label, None, None, None, joint=label)
    score, _, mode = label.partition(":")
    if score not in SCORES or (mode and mode not in MODES):
        raise ValueError(f"unknown selection method {label!r}; valid: {', '.join(valid_names())}")
    spec = SCORES.get(score)
    keep = spec.keep
    balanced = _balanced(mode, balance, spec.balance)
    if keep is None:  # no direction (random): uniform draws
        if mode in ("high", "low"):
            raise ValueError(f"{score} takes no ':high' or ':low' (it keeps a uniform subset); "
                             "':balanced' or ':global' choose a per-class or a whole-pool draw")
        # the top-k of uniform draws is a uniform subset; per class, a class-stratified uniform subset
        return Method(label, score, "class_balanced_high" if balanced else "keep_high", None, balanced=balanced,
                      budget=spec.budget)
    end = mode if mode in ("high", "low") else (keep or "high")
    return Method(label, score, f"class_balanced_{end}" if balanced else f"keep_{end}", None, balanced=balanced,
                  budget=spec.budget)


@dataclass(frozen=True)
class SelectSettings:
    """Params' ``select`` section as one typed, frozen value: every entry of ``select.methods`` parsed once
    (a :class:`Method`), and the options of every method that takes some (a static method's, a sampler's or a
    joint selector's, under ``select.<name>``) resolved once, from its registration. What the select stage
    runs on; build it with :func:`select_settings`."""
    methods: tuple[Method, ...]
    fractions: tuple[float, ...]
    balance: object  # "auto", True or False
    options: Mapping[str, Mapping]  # method name -> its resolved options (read-only)

    @property
    def labels(self) -> tuple[str, ...]:
        """``select.methods`` as written (each method's label)."""
        return tuple(m.label for m in self.methods)

    def options_of(self, name: str) -> dict:
        """The resolved options of method ``name`` (a copy; {} for one that takes none)."""
        return dict(self.options.get(name, {}))

    def fractions_of(self, m: Method) -> list[float]:
        """The kept fractions ``m`` runs at: every one of ``select.fractions``, or a full-data sampler's 1.0."""
        return SAMPLERS.get(m.sampler).fractions(list(self.fractions)) if m.sampler else list(self.fractions)

    def sampler_options(self, m: Method, fraction: float) -> dict:
        """A per-epoch method's options at kept ``fraction``: what its manifest records and the sampler is built with."""
        return SAMPLERS.get(m.sampler).options_at(fraction, self.options_of(m.sampler))

    def selector_keywords(self, m: Method, fraction: float) -> dict:
        """A static method's keywords at kept ``fraction`` as its manifest records them (its registration's
        ``keywords``), with the score its cut reads; {} for a score's selector."""
        if m.selector not in STATIC_METHODS:
            return {}
        out = STATIC_METHODS.get(m.selector).keywords(self.options_of(m.selector), fraction)
        if m.cut_score is not None:
            out.update(cut_score=m.cut_score, cut_end=m.cut_end)
        return out


def select_settings(select: dict, resolved: Optional[Mapping[str, dict]] = None) -> SelectSettings:
    """Parse and resolve a validated ``select`` section once (ValueError for a bad entry, as params validation
    reports it); ``resolved``: methods' options already resolved (params validation's, as it checked them)."""
    resolved = resolved or {}
    methods = tuple(method_from_params(label, select) for label in select["methods"])
    options = {}
    for m in methods:
        name = m.joint or m.sampler or (m.selector if m.selector in STATIC_METHODS else None)
        if name is not None and name not in options:
            registry = JOINT if m.joint else SAMPLERS if m.sampler else STATIC_METHODS
            options[name] = Frozen(resolved[name] if name in resolved else registry.get(name).resolve(select.get(name)))
    return SelectSettings(methods, tuple(select["fractions"]), select["balance"], Frozen(options))

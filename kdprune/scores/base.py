"""What every score gets and returns, and what its registration declares.

A score is a pure function ``fn(ctx: ScoreContext, **options) -> np.ndarray`` giving one float
per training example, in the order of ``ctx.ids``; its docstring states the definition and
source. Its registration (:func:`register_score`) declares everything the rest of the pipeline
needs to know about it, so adding a score is one module:

- ``keep``: the end the usual recipe keeps (``"high"``, ``"low"`` or ``None`` for scores with no
  direction, like random); ``hard``: the end where the hard examples are, which a cut of the
  hardest (CCS) drops. They differ for Moderate-DS, which keeps a band around the median distance
  (high score) and whose hard end is the far end (low score).
- ``options``: name -> :class:`~kdprune.options.Option`, the function's keyword options (every one
  it implements; checked against its signature). ``params.yaml`` names them under the score, e.g.
  ``scores: {el2n: {epoch: 5}}``; :meth:`ScoreSpec.resolve` fills the defaults and refuses an
  unknown option, listing the valid ones.
- ``input_options``: options of how the task layer builds the score's inputs rather than of the
  function (el2n_proxy's read epoch of its proxies' logits); named and resolved the same way.
- ``needs``: the :class:`ScoreContext` fields it reads (``PROXY_INPUTS`` says which come from proxy
  trainings); ``prefers``: fields it reads when given and falls back without.
- ``stats``: for a score reading the teacher's dynamics, the per-example statistics
  (:data:`kdprune.train.metrics.STATS`) it computes from when the teacher recorded those instead of
  the full logits (``ctx.stats``); the scores stage reads only these. ``None``: it needs the full
  logits (``ctx.dynamics``), and a teacher that recorded statistics (``teacher.dynamics: stats``) is
  refused for it before any compute. With the full logits every score computes from them.
- ``seeded``: the values depend on ``ctx.seed`` (one score file per seed in ``scores.seeds``).
- ``check``: an optional cross-key rule ``(resolved options, params) -> error text or None`` (``params``: the
  typed :class:`kdprune.settings.Params`),
  run by params validation before any compute (e.g. EL2N's epoch within the teacher's epochs).
- ``balance``: the balance its published code selects with, ``"class"`` (per class, budgets in
  proportion to class sizes: DeepCore, the KD paper's framework, for every method it runs) or
  ``"global"`` (over the whole pool: the Moderate-DS code's band); what ``select.balance: auto`` runs.
- ``budget``: how a kept fraction becomes a count (a rule of :data:`kdprune.budgets.BUDGET_RULES`),
  the reference code's where kdprune follows it (Moderate-DS: ``median_band``), else ``round_half_up``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from kdprune.budgets import balance_error, budget_rule_error
from kdprune.options import Option, resolve_options
from kdprune.registry import Registry
from kdprune.train.metrics import STATS as DYNAMICS_STATS

if TYPE_CHECKING:  # the context only carries torch objects; the scores that use them import torch
    import torch


@dataclass
class ScoreContext:
    ids: np.ndarray  # int64 [N] sample ids of the train split
    labels: np.ndarray  # int64 [N]
    num_classes: int
    seed: int = 0
    # teacher training dynamics: logits of every example at every epoch, [E, N, C]
    dynamics: Optional[np.ndarray] = None
    # or, when the teacher recorded per-example statistics instead (teacher.dynamics: stats): name ->
    # [E, N] (kdprune.train.metrics.STATS), the ones the scores declare (``stats=``), memory-mapped
    stats: Optional[Mapping[str, np.ndarray]] = None
    # Optional inputs of the other scores; every array/tensor is in the order of ``ids``.
    # el2n_proxy: one [N, C] logit array per independently initialised proxy run: a clean eval-mode
    # pass at the read epoch
    proxy_logits: Optional[Sequence[np.ndarray]] = None
    # grand, grand_last_layer: proxy models at/near initialisation (one per seed, torch nn.Module,
    # each with a linear ``head``), and the float inputs [N, C, H, W], already normalised
    proxy_models: Optional[Sequence[Any]] = None
    inputs: Optional["torch.Tensor"] = None
    # entropy, least_confidence, margin: final logits [N, C] (e.g. the teacher in eval mode);
    # when None they read the last epoch of ``dynamics``
    final_logits: Optional[np.ndarray] = None
    # prototypes, prototypes_supervised, moderate_ds: one embedding per example [N, D]
    embeddings: Optional[np.ndarray] = None
    # memorization: bool [M, N]: example n was in model m's training subset / model m is correct on n
    memo_masks: Optional[np.ndarray] = None
    memo_correct: Optional[np.ndarray] = None


# context fields made by proxy trainings, and which kind of run makes them (tasks/scores.py):
# "proxy" = short runs on the full train split, "memo" = runs on random subsets
PROXY_INPUTS = {"proxy_logits": "proxy", "proxy_models": "proxy", "memo_masks": "memo", "memo_correct": "memo"}
ENDS = ("high", "low", None)


@dataclass
class ScoreSpec:
    name: str
    fn: Callable[..., np.ndarray]
    keep: Optional[str]  # "high", "low" or None
    hard: Optional[str]  # the end of the hard examples: "high", "low" or None
    variant: str
    needs: tuple[str, ...] = field(default_factory=tuple)
    prefers: tuple[str, ...] = field(default_factory=tuple)
    seeded: bool = False
    options: dict[str, Option] = field(default_factory=dict)  # function options, then input options
    input_options: tuple[str, ...] = field(default_factory=tuple)  # names among ``options`` the task layer reads
    check: Optional[Callable[[dict, dict], Optional[str]]] = None
    balance: str = "class"  # the balance its published code uses: "class" or "global"
    budget: str = "round_half_up"  # its budget rule (kdprune.budgets.BUDGET_RULES)
    stats: Optional[tuple[str, ...]] = None  # dynamics statistics it computes from; None: needs the full logits

    @property
    def needs_logits(self) -> bool:
        """It reads the teacher's dynamics and cannot compute from the per-example statistics."""
        return "dynamics" in self.needs and self.stats is None

    @property
    def definition(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "").split("\n\n")[0]

    @property
    def proxies(self) -> set[str]:
        """The kinds of proxy training its inputs come from ("proxy", "memo")."""
        return {PROXY_INPUTS[n] for n in self.needs if n in PROXY_INPUTS}

    def resolve(self, given: Optional[dict]) -> dict:
        """Every option (function and input options) with defaults filled in; ValueError naming every
        bad or unknown option and the valid ones."""
        return resolve_options(self.name, self.options, given)

    def fn_options(self, resolved: dict) -> dict:
        """The resolved options the function takes (input options removed)."""
        return {k: v for k, v in resolved.items() if k not in self.input_options}

    def __call__(self, ctx: ScoreContext, **options) -> np.ndarray:
        for need in self.needs:
            if need == "dynamics" and ctx.dynamics is None and ctx.stats is not None:
                if self.stats is None:
                    raise ValueError(f"score {self.name!r} needs the teacher's full logits (it declares no dynamics "
                                     "statistics), but the dynamics are per-example statistics; set "
                                     "teacher.dynamics: logits")
                missing = [s for s in self.stats if s not in ctx.stats]
                if missing:
                    raise ValueError(f"score {self.name!r} reads the dynamics statistics {missing}, which the "
                                     "context lacks")
            elif getattr(ctx, need) is None:
                raise ValueError(f"score {self.name!r} needs {need}, which the context lacks")
        out = np.asarray(self.fn(ctx, **options), dtype=np.float64)
        if out.shape != ctx.ids.shape:
            raise ValueError(f"score {self.name!r} returned shape {out.shape}, expected {ctx.ids.shape}")
        return out


SCORES: Registry[ScoreSpec] = Registry("score")
CONTEXT_FIELDS = tuple(f.name for f in fields(ScoreContext)
                       if f.name not in ("ids", "labels", "num_classes", "seed", "stats"))  # stats: ``stats=``


def _check_signature(name: str, fn: Callable, options: dict[str, Option]) -> None:
    """Every keyword option the function implements is declared, and no other; defaults agree."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # after ctx
    takes = {p.name: p for p in params}
    missing = sorted(set(takes) - set(options))
    extra = sorted(set(options) - set(takes))
    if missing or extra:
        raise ValueError(f"score {name!r}: options {missing} of the function are not declared" if missing else
                         f"score {name!r}: declared options {extra} are not arguments of the function")
    for k, p in takes.items():
        if p.default is not inspect.Parameter.empty and p.default != options[k].default:
            raise ValueError(f"score {name!r}: option {k} defaults to {options[k].default!r} in the registration "
                             f"but {p.default!r} in the function")


def register_score(name: str, *, keep: Optional[str], hard: Optional[str], variant: str, needs: Sequence[str] = (),
                   prefers: Sequence[str] = (), seeded: bool = False, options: Optional[dict[str, Option]] = None,
                   input_options: Optional[dict[str, Option]] = None,
                   check: Optional[Callable[[dict, dict], Optional[str]]] = None, balance: str = "class",
                   budget: str = "round_half_up", stats: Optional[Sequence[str]] = None):
    """Register a score (see the module docstring for what each argument declares)."""
    for msg in (balance_error(balance), budget_rule_error(budget)):
        if msg:
            raise ValueError(f"score {name!r}: {msg}")
    for what, end in (("keep", keep), ("hard", hard)):
        if end not in ENDS:
            raise ValueError(f"score {name!r}: {what} must be 'high', 'low' or None, got {end!r}")
    bad = sorted((set(needs) | set(prefers)) - set(CONTEXT_FIELDS))
    if bad:
        raise ValueError(f"score {name!r} reads unknown context fields {bad}; known: {', '.join(CONTEXT_FIELDS)}")
    unknown = sorted(set(stats or ()) - set(DYNAMICS_STATS.names()))
    if unknown:
        raise ValueError(f"score {name!r} reads unknown dynamics statistics {unknown}; known: "
                         f"{', '.join(DYNAMICS_STATS.names())}")
    fn_opts, in_opts = dict(options or {}), dict(input_options or {})
    if set(fn_opts) & set(in_opts):
        raise ValueError(f"score {name!r}: {sorted(set(fn_opts) & set(in_opts))} are both function and input options")

    def deco(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        _check_signature(name, fn, fn_opts)
        SCORES.register(name)(ScoreSpec(name, fn, keep, hard, variant, tuple(needs), tuple(prefers), seeded,
                                        {**fn_opts, **in_opts}, tuple(in_opts), check, balance, budget,
                                        None if stats is None else tuple(stats)))
        return fn

    return deco


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def read_stats(ctx: ScoreContext, *names: str) -> list[np.ndarray]:
    """The dynamics statistics ``names`` of the context as float64 [E, N] arrays."""
    return [np.asarray(ctx.stats[n], dtype=np.float64) for n in names]

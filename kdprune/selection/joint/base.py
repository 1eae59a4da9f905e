"""Joint selectors: a subset chosen as a whole (greedy coverage, submodular, gradient matching),
not by thresholding a per-example score.

Every joint selector is one module registered with :func:`register_joint`, whose registration
declares everything the pipeline needs to know about it:

- ``options``: name -> :class:`Option` (kind, default, allowed values). ``params.yaml`` names them
  under the selector, e.g. ``select: {craig: {balance: false}}``; :meth:`JointSpec.resolve` fills
  the defaults and refuses an unknown option, listing the valid ones. Every selector has the
  option ``balance`` (its default is the reference recipe's): per class with class-balanced
  budgets (``class_quotas``), or once over the whole pool.
- ``needs``: which inputs it reads (fields of :class:`JointInputs`: teacher features, last-layer
  gradients, probabilities, validation data, the model and its inputs); ``option_needs``: inputs an
  option's value adds, e.g. ``{"input": {"features": ("features",), "gradients": ("gradients",)}}``
  for facility location and graph cut (:meth:`JointSpec.inputs_for` gives the union).
- ``seeded``: whether the subset depends on a seed (one manifest per seed).
- ``weighted``: whether it returns per-element loss weights (CRAIG, GradMatch), which the
  manifest carries and the student's loss uses.

The function is called on one pool (a class, or everything) as
``fn(inputs, k, rng, **options) -> Picked`` with positions into that pool; :func:`run_joint`
splits the pool, maps positions back to sample ids and normalises the weights. Pools are visited
in id order and ties go to the lowest position, so the result does not depend on input order.
"""
from __future__ import annotations

import heapq
import inspect
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Optional, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from kdprune.options import Option, resolve_options  # noqa: F401  (Option: the selectors' modules import it here)
from kdprune.registry import Registry
from kdprune.selection.static import budget, class_quotas

INPUTS = ("features", "probs", "gradients", "validation", "model")


@dataclass
class Picked:
    """What a selector returns for one pool: positions in selection order, optional raw weights."""
    positions: np.ndarray
    weights: Optional[np.ndarray] = None


@dataclass
class JointSpec:
    name: str
    fn: Callable[..., Picked]
    options: dict[str, Option]
    needs: tuple[str, ...]
    seeded: bool
    weighted: bool
    variant: str
    cost: str
    option_needs: dict = field(default_factory=dict)  # option -> {value: inputs that value reads}

    def inputs_for(self, opts: Optional[dict] = None) -> tuple[str, ...]:
        """The inputs it reads with resolved options ``opts`` (None: the defaults): ``needs`` plus what
        ``option_needs`` adds for the options' values, in ``INPUTS`` order."""
        opts = self.resolve(None) if opts is None else opts
        got = set(self.needs)
        for name, by_value in self.option_needs.items():
            got |= set(by_value.get(opts.get(name), ()))
        return tuple(x for x in INPUTS if x in got)

    @property
    def definition(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "").split("\n\n")[0]

    def resolve(self, given: Optional[dict]) -> dict:
        """The options with defaults filled in; ValueError naming every bad or unknown option."""
        return resolve_options(self.name, self.options, given)


JOINT: Registry[JointSpec] = Registry("joint selector")


def register_joint(name: str, *, needs: Sequence[str], seeded: bool, balance: bool, variant: str, cost: str,
                   weighted: bool = False, options: Optional[dict[str, Option]] = None,
                   option_needs: Optional[dict[str, dict[Any, Sequence[str]]]] = None):
    """Register a joint selector; ``balance`` is the default of its per-class option."""
    option_needs = {o: {v: tuple(n) for v, n in by.items()} for o, by in (option_needs or {}).items()}
    bad = sorted((set(needs) | {x for by in option_needs.values() for n in by.values() for x in n}) - set(INPUTS))
    if bad:
        raise ValueError(f"joint selector {name!r} needs unknown inputs {bad}; known: {', '.join(INPUTS)}")
    opts = {"balance": Option(bool, balance, "per class with class-balanced budgets (true) or over the whole pool")}
    opts.update(options or {})
    if set(option_needs) - set(opts):
        raise ValueError(f"joint selector {name!r}: option_needs names options it does not declare: "
                         f"{sorted(set(option_needs) - set(opts))}")

    def deco(fn):
        JOINT.register(name)(JointSpec(name, fn, opts, tuple(needs), seeded, weighted, variant, cost, option_needs))
        return fn

    return deco


@dataclass
class JointInputs:
    """What joint selectors read, every array in the order of the pool's rows.

    features: [N, D] penultimate features of the model; probs: [N, C] its softmax; gradients:
    [N, C*(D+1)] per-example last-layer gradients of the cross-entropy (bias part first, see
    ``inputs.last_layer_gradients``). validation (Glister): val_features [M, D], val_logits [M, C],
    val_labels [M]. model (DeepFool): a torch module in eval mode and its normalised inputs [N, ...].
    """
    labels: np.ndarray
    num_classes: int
    features: Optional[np.ndarray] = None
    probs: Optional[np.ndarray] = None
    logits: Optional[np.ndarray] = None
    gradients: Optional[np.ndarray] = None
    val_features: Optional[np.ndarray] = None
    val_logits: Optional[np.ndarray] = None
    val_labels: Optional[np.ndarray] = None
    model: Any = None
    inputs: Any = None  # torch tensor
    extra: dict = field(default_factory=dict)

    _ROWWISE = ("labels", "features", "probs", "logits", "gradients", "inputs")

    def take(self, rows: np.ndarray, cls: Optional[int] = None) -> "JointInputs":
        """The inputs of a sub-pool; with ``cls``, the validation data of that class only."""
        out = {}
        for f in self._ROWWISE:
            v = getattr(self, f)
            if v is not None:
                out[f] = v[rows] if isinstance(v, np.ndarray) else v[_torch_index(rows, v)]
        if cls is not None and self.val_labels is not None:
            vr = np.flatnonzero(self.val_labels == cls)
            out.update(val_features=self.val_features[vr], val_logits=self.val_logits[vr],
                       val_labels=self.val_labels[vr])
        return replace(self, **out)

    def check(self, spec: JointSpec, opts: Optional[dict] = None) -> None:
        n = len(self.labels)
        missing = []
        for need in spec.inputs_for(opts):
            names = {"validation": ("val_features", "val_logits", "val_labels"), "model": ("model", "inputs")}.get(
                need, (need,))
            missing += [x for x in names if getattr(self, x) is None]
        if missing:
            raise ValueError(f"joint selector {spec.name!r} needs {', '.join(missing)}, which the inputs lack")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in self._ROWWISE and v is not None and len(v) != n:
                raise ValueError(f"inputs.{f.name} has {len(v)} rows, labels {n}")
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all():
                raise ValueError(f"inputs.{f.name} contains NaN or infinite values")


def _torch_index(rows: np.ndarray, t):
    import torch

    return torch.as_tensor(rows, dtype=torch.long, device=t.device)


def run_joint(name: str, ids, inputs: JointInputs, fraction: float, seed: int = 0,
              options: Optional[dict] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Run a registered joint selector: (kept ids sorted ascending, float64 weights aligned or None).

    With ``balance`` the budget ``budget(N, fraction)`` is split over classes in proportion to
    their sizes (``class_quotas``) and the selector runs inside each class (random draws from
    ``default_rng([seed, class])``); otherwise once over the pool (``default_rng(seed)``). Rows are
    given to the selector in id order. Weights (weighted selectors) are scaled to mean 1 over
    the kept set, so a weighted loss keeps the scale of an unweighted one.

    The selectors run with one BLAS thread: their steps are many small matrix-vector products,
    for which a second OpenBLAS thread gains nothing and, on a machine whose cores are shared,
    costs a wait for a descheduled thread on every call (measured on the Fashion-MNIST pool on 2
    busy cores: herding 14x, GradMatch 13x slower with two threads). Torch's threads (DeepFool)
    are left as they are.
    """
    spec = JOINT.get(name)
    opts = spec.resolve(options)
    inputs.check(spec, opts)
    balance = opts.pop("balance")
    ids = np.asarray(ids)
    labels = np.asarray(inputs.labels)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    if len(ids) == 0:
        raise ValueError("cannot select from an empty set of ids")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids contain duplicates")
    k = budget(len(ids), fraction)
    by_id = np.argsort(ids, kind="stable")
    if balance:
        classes, sizes = np.unique(labels, return_counts=True)
        quotas = class_quotas(sizes, k)
        pools = [(by_id[labels[by_id] == c], int(q), int(c), np.random.default_rng([seed, int(c)]))
                 for c, q in zip(classes, quotas)]
    else:
        pools = [(by_id, k, None, np.random.default_rng(seed))]
    kept, weights = [], []
    for rows, quota, cls, rng in pools:
        if quota == 0:
            continue
        with threadpool_limits(limits=1, user_api="blas"):
            picked = spec.fn(inputs.take(rows, cls), quota, rng, **opts)
        pos = np.asarray(picked.positions, dtype=np.int64)
        if len(pos) != quota or len(np.unique(pos)) != quota or pos.min() < 0 or pos.max() >= len(rows):
            raise AssertionError(f"joint selector {name!r} returned {len(pos)} positions for a budget of {quota}")
        kept.append(ids[rows[pos]])
        if spec.weighted:
            weights.append(np.asarray(picked.weights, dtype=np.float64))
    kept_ids = np.concatenate(kept).astype(np.int64)
    order = np.argsort(kept_ids)
    if not spec.weighted:
        return kept_ids[order], None
    w = np.concatenate(weights)[order]
    if (w < 0).any() or w.sum() <= 0:
        raise AssertionError(f"joint selector {name!r} returned negative or all-zero weights")
    return kept_ids[order], w * (len(w) / w.sum())


# ---------------------------------------------------------------- shared machinery

def lazy_greedy(init_gains: np.ndarray, k: int, gain: Callable[[int], float], add: Callable[[int], None]) -> np.ndarray:
    """Lazy greedy (Minoux 1978): maximise a set function by adding, k times, the element of largest
    marginal gain, re-evaluating only the heap's top while its stored gain is stale.

    ``init_gains[j]`` is the gain of j on the empty set, ``gain(j)`` its gain on the current set and
    ``add(j)`` adds j. For a submodular function (gains never grow) the result equals plain greedy,
    ties going to the lowest index. Returns positions in selection order.
    """
    heap = [(-float(g), j) for j, g in enumerate(init_gains)]
    heapq.heapify(heap)
    fresh = np.zeros(len(init_gains), dtype=np.int64)  # size of the set when the stored gain was computed
    chosen: list[int] = []
    while len(chosen) < k:
        neg, j = heapq.heappop(heap)
        if fresh[j] == len(chosen):
            chosen.append(j)
            add(j)
            continue
        fresh[j] = len(chosen)
        heapq.heappush(heap, (-float(gain(j)), j))
    return np.asarray(chosen, dtype=np.int64)


class Similarity:
    """Pairwise similarities of the rows of ``x`` without an N x N matrix unless it fits a bound.

    ``metric="cosine"``: s = (1 + cos) / 2 in [0, 1] (DeepCore's ``cossim``). ``metric="euclidean"``:
    s = d_max - d, d the Euclidean distance and d_max its maximum over the pool (CRAIG). When
    N*N*4 bytes fit ``max_matrix_mb`` the matrix is built once (float32); otherwise columns are
    computed on demand (scikit-learn ``pairwise_distances`` / ``cosine_similarity``), at most
    ``max_matrix_mb`` at a time, so the extra memory stays below that bound plus O(N).

    For cosine the rows are scaled to unit norm in float64 before the float32 cast: scikit-learn's
    ``normalize`` leaves a float32 row whose norm is below about 1e-6 (10 float32 epsilons) as it
    is, which made such a row's self-similarity about 0.5 instead of 1 -- and last-layer gradients
    of well-fit examples are that small. A row that is exactly zero has no direction: cosine 0
    with every row, itself included (s = 0.5; ``diagonal`` says so).
    """

    def __init__(self, x: np.ndarray, metric: str, max_matrix_mb: float):
        self.metric = metric
        self.zero = np.zeros(len(x), dtype=bool)
        if metric == "cosine":
            x64 = np.asarray(x, dtype=np.float64)
            norms = np.linalg.norm(x64, axis=1)
            self.zero = norms == 0.0
            x64 = x64 / np.where(self.zero, 1.0, norms)[:, None]
            self.x = np.ascontiguousarray(x64, dtype=np.float32)
        else:
            self.x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(self.x)
        self.chunk = max(1, int(max_matrix_mb * 2**20 // (4 * max(n, 1))))
        self.full = None
        self.dmax = 0.0
        if metric == "euclidean":
            self.dmax = max(float(self._raw(slice(j, j + self.chunk)).max()) for j in range(0, n, self.chunk))
        if self.chunk >= n:
            self.full = self._sim(slice(0, n))

    def _raw(self, cols) -> np.ndarray:
        from sklearn.metrics.pairwise import cosine_similarity, pairwise_distances

        if self.metric == "cosine":
            return cosine_similarity(self.x, self.x[cols]).astype(np.float32, copy=False)
        return pairwise_distances(self.x, self.x[cols], metric="euclidean").astype(np.float32, copy=False)

    def _sim(self, cols) -> np.ndarray:
        raw = self._raw(cols)
        if self.metric == "cosine":
            return 0.5 + 0.5 * raw
        return self.dmax - raw

    def columns(self, cols) -> np.ndarray:
        """s[:, cols] as float32 [N, len(cols)]."""
        if self.full is not None:
            return self.full[:, cols]
        return self._sim(cols)

    def column_sums(self) -> np.ndarray:
        n = len(self.x)
        if self.full is not None:
            return self.full.sum(axis=0, dtype=np.float64)
        return np.concatenate([self._sim(slice(j, j + self.chunk)).sum(axis=0, dtype=np.float64)
                               for j in range(0, n, self.chunk)])

    def diagonal(self) -> np.ndarray:
        if self.metric == "cosine":
            return np.where(self.zero, 0.5, 1.0)
        return np.full(len(self.x), self.dmax)


METRIC = Option(str, "cosine", "similarity: cosine ((1 + cos) / 2) or euclidean (d_max - d)", ("cosine", "euclidean"))
SIMILARITY_INPUT = Option(str, "features", "what the similarity compares: features (the teacher's penultimate "
                          "features, kdprune's default) or gradients (last-layer gradients, as DeepCore's Submodular)",
                          ("features", "gradients"))
SIMILARITY_INPUT_NEEDS = {"input": {"features": ("features",), "gradients": ("gradients",)}}
MAX_MATRIX_MB = Option(float, 512.0, "largest similarity block held in memory (MiB); larger pools compute columns "
                       "on demand", low=1.0)

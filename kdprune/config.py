"""The params.yaml schema: every key, its type and allowed values, checked before any compute.

``validate(params)`` returns the params with defaults filled in, or raises ``ParamsError`` whose
message lists every problem found, one per line, each naming the key, the bad value and what is
allowed. Names of datasets, architectures, scores and losses are checked against the registries.
"""
from __future__ import annotations

import contextvars
import difflib
import importlib
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Optional

from kdprune.registry import did_you_mean
from kdprune.settings import (  # noqa: F401
    DataSettings, Frozen, Params, ReproducibilitySettings, RunnerSettings, ScoresSettings, StudentSettings,
    TeacherSettings, TrainSettings,
)

# Name checks import the registry they check against, and only when they run: a stage's command
# checks the names its stage uses (STAGE_NAMES), so it imports -- and its dvc.yaml deps list --
# only those parts of the core. The full check (every entrypoint that is not a single stage, and the
# `validate` stage DVC runs before any other) checks them all.
REGISTRIES = {
    "datasets": ("kdprune.data", "DATASETS"),
    "models": ("kdprune.models", "MODELS"),
    "scores": ("kdprune.scores", "SCORES"),
    "losses": ("kdprune.distill", "LOSSES"),
    "schedules": ("kdprune.distill", "SCHEDULES"),
    "methods": ("kdprune.selection", "parse_method"),
    "joint": ("kdprune.selection", "JOINT"),
    "samplers": ("kdprune.selection", "SAMPLERS"),
    "static_methods": ("kdprune.selection", "STATIC_METHODS"),
}
# The pipeline's stages, in order, and the registries whose names each one checks: the one list of stages.
# The pipeline flow (flows/pipeline.py) and the command line (cli/main.py) take theirs from it; dvc.yaml, a
# literal file, is checked against it (tests/test_stages.py). ``validate`` (DVC's first stage, params only)
# checks every name.
STAGE_NAMES: dict[str, tuple[str, ...]] = {
    "validate": tuple(REGISTRIES),
    "prepare": ("datasets",),
    "teacher": ("datasets", "models"),
    "teachers": ("datasets", "models"),
    "scores": ("datasets", "models", "scores"),
    "select": ("datasets", "scores", "methods", "joint", "samplers", "static_methods"),
    "distill": tuple(REGISTRIES),
    "evaluate": tuple(REGISTRIES),
}
STAGES: tuple[str, ...] = tuple(STAGE_NAMES)
_CHECKED: contextvars.ContextVar[frozenset] = contextvars.ContextVar("names_checked", default=frozenset(REGISTRIES))


def _registry(kind: str):
    module, attr = REGISTRIES[kind]
    return getattr(importlib.import_module(module), attr)


def parse_method(label: str):
    """``label`` as a selection method (the select section's own setup of it: :func:`_typed`)."""
    return _registry("methods")(label)


class ParamsError(ValueError):
    """params.yaml is invalid; the message says which keys and how to fix them. ``errors``: one line per
    bad key, each starting with the key (what a caller names the source of a value by)."""

    def __init__(self, message: str, errors: Optional[list[str]] = None):
        super().__init__(message)
        self.errors = list(errors or [])


@dataclass
class Field:
    kind: str  # "int", "float", "bool", "str", "list", "dict"
    default: Any = None
    required: bool = False
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns an error text or None
    item: Optional[str] = None  # element kind for lists
    nullable: bool = False
    doc: str = ""


def _describe(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"must be {'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f"must be {'<' if hi_open else '<='} {hi}"
    return f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _range(lo=None, hi=None, lo_open=False, hi_open=False) -> Callable[[Any], Optional[str]]:
    def check(v):
        bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and (v >= hi if hi_open else v > hi))
        if bad:
            return _describe(lo, hi, lo_open, hi_open)
        return None

    return check


def _one_of(kind: str) -> Callable[[Any], Optional[str]]:
    def check(v):
        if kind not in _CHECKED.get():
            return None
        registry = _registry(kind)
        return None if v in registry else (f"is not a known {registry.kind}; {did_you_mean(v, registry.names())}"
                                           f"valid names: {', '.join(registry.names())}")

    return check


def _each(check, unique=True, nonempty=True) -> Callable[[Any], Optional[str]]:
    def run(values):
        if nonempty and not values:
            return "must not be empty"
        if unique and len(set(map(repr, values))) != len(values):
            dups = sorted({repr(v) for v in values if sum(repr(w) == repr(v) for w in values) > 1})
            return f"has duplicates ({', '.join(dups)})"
        for v in values:
            msg = check(v)
            if msg:
                return f"item {v!r} {msg}"
        return None

    return run


def _method(v) -> Optional[str]:
    if "methods" not in _CHECKED.get():
        return None
    try:
        parse_method(v)
    except ValueError as e:
        methods = importlib.import_module("kdprune.selection.methods")  # in scope with "methods", as parse_method
        names = [n for n in methods.valid_names() if not n.startswith("<")]
        hint = did_you_mean(v, names + [f"{n}:{m}" for n in names for m in methods.MODES])
        return f"is not a selection method; {hint}{e}"
    return None


# section: the registries whose methods take options named under it, ``<section>.<method>: {option: value}``
# (kind, what one is called); each method declares them in its registration
OPTION_SECTIONS = {"scores": (("scores", "score"),),
                   "select": (("joint", "joint selector"), ("samplers", "per-epoch sampler"),
                              ("static_methods", "static selection method")),
                   "student": (("losses", "KD loss"),)}
# section: the registry whose methods each take one argument, a key of the section of its own
# (``<section>.<spec.param>``, e.g. ``student.kd_linear``), declared in the registration (``spec.option``)
ARGUMENT_SECTIONS = {"student": ("schedules", "KD weight schedule")}


def _arguments(section: str) -> dict:
    """``{param: spec}`` of the methods that take an argument in ``section``; {} when their registry is out of scope."""
    kind, _ = ARGUMENT_SECTIONS.get(section, (None, None))
    if kind is None or kind not in _CHECKED.get():
        return {}
    registry = _registry(kind)
    return {registry.get(n).param: registry.get(n) for n in registry.names()}


def _method_options(section: str, key: str, v: Any, errors: list[str]) -> Any:
    """``<section>.<method>``: a registered method's options (``scores.<score>``, ``select.<joint
    selector>``, ``select.<sampler>``, ``select.<static method>``, ``student.<loss>``), or a method's
    argument (``student.kd_linear``), checked against its registration when its registry is in scope
    (returns them resolved; None after an error); out of scope only their shape is checked (the full
    check, DVC's validate stage, runs first)."""
    kinds = OPTION_SECTIONS[section]
    whats = " or ".join(what for _, what in kinds)
    args = ARGUMENT_SECTIONS.get(section)
    if args and args[0] not in _CHECKED.get():  # out of scope: any key may be a method's argument
        return None
    if not all(kind in _CHECKED.get() for kind, _ in kinds):
        if not isinstance(v, dict):
            errors.append(f"{section}.{key}: unknown key, or the options of a {whats}, which must be a mapping")
        return None
    arguments = _arguments(section)
    if key in arguments:  # a method's argument (student.kd_linear: the linear schedule's)
        spec = arguments[key]
        msg = spec.option.check(v)
        if msg:
            errors.append(f"{section}.{key}: {msg} (the argument of {args[1]} {spec.name!r})")
            return None
        return spec.option.convert(v)
    found = [(_registry(kind), what) for kind, what in kinds if key in _registry(kind)]
    if not found:
        registries = [_registry(kind) for kind, _ in kinds]
        names = sorted(n for r in registries for n in r.names())
        # an old flat <method>_<option> key: point at the option under the method
        flat = str(key)
        nested = [f"{n}.{flat[len(n) + 1:]}" for r in registries for n in r.names()
                  if flat.startswith(n + "_") and flat[len(n) + 1:] in r.get(n).options]
        hint = nested or difflib.get_close_matches(str(key), [*SCHEMA[section], *names, *arguments], n=1)
        did = f"did you mean '{section}.{hint[0]}'? " if hint else ""
        more = f", or a {args[1]}'s argument: {', '.join(arguments)}" if arguments else ""
        errors.append(f"{section}.{key}: unknown key; {did}allowed keys here: {', '.join(SCHEMA[section])}, or a "
                      f"{whats}'s options: {', '.join(names)}{more}")
        return None
    registry, what = found[0]
    if not isinstance(v, dict):
        errors.append(f"{section}.{key}: got {v!r}, expected a mapping of {what} {key}'s options")
        return None
    spec = registry.get(key)
    try:
        return spec.resolve(v)
    except ValueError as e:
        describe = importlib.import_module("kdprune.options").describe_options  # imported by the registry above
        errors.append(f"{section}.{key}: {v!r} has bad options: {e}; {key} takes: {describe(spec.options)}")
        return None


def _device(v) -> Optional[str]:
    if v in ("auto", "cpu") or (isinstance(v, str) and (v == "cuda" or v.startswith("cuda:"))):
        return None
    return "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"


def _ray_address(v) -> Optional[str]:
    if v == "auto":
        return None
    host, _, port = v.removeprefix("ray://").rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536:
        return None
    return "must be null (a Ray instance of the run's own on 127.0.0.1), 'auto', 'HOST:PORT' or 'ray://HOST:PORT'"


def _gpus(v) -> Optional[str]:
    if 0.0 < v <= 1.0 or (v > 1.0 and float(v).is_integer()):
        return None
    return "must be a fraction in (0, 1] (several tasks share a GPU) or a whole number of GPUs"


LOADERS = ("memory", "stream", "auto")


def _crop_scale(v) -> Optional[str]:
    if len(v) != 2 or not 0.0 < v[0] <= v[1] <= 1.0:
        return "must be [min, max] with 0 < min <= max <= 1 (shares of the image area)"
    return None


POSITIVE_INT = _range(1)
FRACTION = _range(0.0, 1.0, lo_open=True)  # (0, 1]
SEED = _range(0)


def _train_fields(arch_default: str, epochs: int) -> dict[str, Field]:
    return {
        "arch": Field("str", arch_default, check=_one_of("models"), doc="architecture name"),
        "epochs": Field("int", epochs, check=POSITIVE_INT),
        "batch_size": Field("int", 64, check=POSITIVE_INT),
        "lr": Field("float", 0.05, check=_range(0.0, lo_open=True)),
        "momentum": Field("float", 0.9, check=_range(0.0, 1.0, hi_open=True)),
        "weight_decay": Field("float", 5e-4, check=_range(0.0)),
        "warmup_epochs": Field("float", 1.0, check=_range(0.0)),
        "pad": Field("int", 1, check=_range(0, 16), doc="random translation, pixels"),
        "flip": Field("bool", False, doc="random horizontal flip"),
        "compile": Field("bool", False, doc="torch.compile the model (and the KD teacher) for training"),
        "channels_last": Field("bool", None, nullable=True,
                               doc="NHWC activations for training; null: on CUDA only (on CPU, measured 1.3-1.8x "
                                   "faster convs for 28x28 CNNs)"),
    }


SCHEMA: dict[str, Any] = {
    "device": Field("str", "auto", check=_device),
    "reproducibility": {  # kdprune/reproducibility.py: what makes a CPU result the same on another machine
        "cpu": Field("str", "portable", check=lambda v: None if v in ("portable", "native") else
                     "must be 'portable' (CPU kernels pinned at AVX2 and MKL's COMPATIBLE branch: the same bytes on x86-64 CPUs with AVX2) "
                     "or 'native' (the machine's fastest kernels; bytes differ between CPUs)"),
        "threads": Field("int", 2, check=POSITIVE_INT,
                         doc="torch/BLAS/OpenMP threads of each stage's own process (the teacher trains there); "
                             "a task on the runner takes runner.cpus_per_task. Part of the result"),
    },
    "runner": {  # where the fan-out stages' tasks run (execution/runner.py)
        "kind": Field("str", "local", check=lambda v: None if v in ("local", "ray") else
                      "must be 'local' (threads in the stage's process) or 'ray' (prefect-ray's RayTaskRunner)"),
        "address": Field("str", None, nullable=True, check=_ray_address,
                         doc="ray: null starts a Ray instance for the run on 127.0.0.1; else the cluster to join"),
        "cpus_per_task": Field("int", 1, check=POSITIVE_INT,
                               doc="CPUs a task asks for; torch runs that many threads in it (either runner)"),
        "gpus_per_task": Field("float", None, nullable=True, check=_gpus,
                               doc="ray on CUDA: GPUs a task asks for (null: 1); 0.25 packs four on one GPU"),
    },
    "data": {
        "dataset": Field("str", "digits", check=_one_of("datasets")),
        "root": Field("str", None, nullable=True, doc="directory with the dataset's files, for datasets read from disk"),
        "val_fraction": Field("float", 0.1, check=_range(0.0, 0.5, lo_open=True, hi_open=True)),
        "split_seed": Field("int", 0, check=SEED),
        "max_train": Field("int", None, nullable=True, check=_range(10),
                           doc="keep a stratified random subset of this many training examples (CPU studies); "
                               "null: all"),
        # the streaming path (kdprune/data/stream.py, docs/imagenet.md)
        "loader": Field("str", "auto", check=lambda v: None if v in LOADERS else
                        f"must be one of {', '.join(LOADERS)} (memory: decoded into one tensor on the training "
                        "device; stream: read from files while training; auto: stream when the decoded dataset "
                        "would exceed data.memory_budget_gb)"),
        "memory_budget_gb": Field("float", 4.0, check=_range(0.0, lo_open=True),
                                  doc="auto: stream datasets whose decoded uint8 pixels (all splits) exceed this"),
        "image_size": Field("int", 224, check=_range(8, 4096), doc="stream: side of the square crops trained on"),
        "resize": Field("int", 256, check=_range(8, 4096),
                        doc="stream: evaluation resizes the shorter side to this, then centre-crops image_size"),
        "random_crop": Field("bool", True, doc="stream: random-resized crops for training (else the evaluation "
                                               "transform); flips follow teacher/student.flip"),
        "crop_scale": Field("list", [0.08, 1.0], item="float", check=_crop_scale,
                            doc="stream: the random-resized crop's share of the image area, [min, max]"),
        "workers": Field("int", None, nullable=True, check=_range(0),
                         doc="stream: decoding processes (DataLoader workers); null: the CPUs this process may "
                             "use, at most 8; 0: decode in the training process. Output-neutral"),
    },
    "teacher": {
        **_train_fields("small_cnn", 30), "seed": Field("int", 0, check=SEED),
        # kdprune.train.metrics: DYNAMICS_FORMATS, AUTO_LOGITS_MAX_BYTES (not imported here: it loads torch)
        "dynamics": Field("str", "auto", check=lambda v: None if v in ("auto", "logits", "stats") else
                          "must be auto (the full logits when epochs x N x classes x 2 bytes is under 256 MiB, else "
                          "per-example statistics), logits or stats",
                          doc="what the teacher records per epoch and example for the scores: logits (epochs x N x "
                              "classes float16) or stats (per-example statistics, independent of the classes)"),
        "workers": Field("int", 1, check=POSITIVE_INT,
                         doc="data-parallel workers (PyTorch DDP under Ray Train, on runner.address's Ray): one per "
                             "GPU on CUDA, else CPU workers of reproducibility.threads / workers threads each; 1: one "
                             "process (execution/ddp.py)"),
    },
    "scores": {
        "methods": Field("list", ["random", "el2n", "forgetting"], item="str", check=_each(_one_of("scores"))),
        "seeds": Field("list", [0], item="int", check=_each(SEED), doc="seeds of stochastic scores (random)"),
        "proxy_seeds": Field("list", list(range(10)), item="int", check=_each(SEED),
                             doc="independent proxy runs for el2n_proxy / grand / grand_last_layer (paper: ~10)"),
        "proxy_epochs": Field("int", 5, check=POSITIVE_INT,
                              doc="epochs each proxy runs of the teacher's schedule (teacher.epochs long): read early"),
        "proxy_arch": Field("str", None, nullable=True, check=_one_of("models"), doc="null: teacher.arch"),
        "grand_epoch": Field("int", 0, check=_range(0), doc="proxy epoch the weights of grand and grand_last_layer "
                             "are taken at (one snapshot both read; 0: at init)"),
        "encoder": Field("str", None, nullable=True,
                         doc="prototypes: directory (in the project) with model.safetensors + model.json of an "
                             "encoder; null: the teacher's penultimate features"),
        "memorization_models": Field("int", 8, check=_range(2)),
        "memorization_fraction": Field("float", 0.7, check=_range(0.0, 1.0, lo_open=True, hi_open=True)),
        "memorization_epochs": Field("int", 10, check=POSITIVE_INT),
    },  # plus one key per score: its options (``_method_options``), e.g. ``el2n: {epoch: 5}``
    "select": {
        "methods": Field("list", ["random", "el2n", "forgetting"], item="str", check=_each(_method)),
        "fractions": Field("list", [0.1, 0.3, 0.5], item="float", check=_each(FRACTION)),
        "balance": Field("any", "auto", check=lambda v: None if v == "auto" or isinstance(v, bool) else
                         "must be auto (each method as its published code: its registration's balance), true "
                         "(class-balanced budgets for every method) or false (over the whole pool)",
                         doc="auto: as each method's code (DeepCore's per-class for its methods, random included; "
                             "Moderate-DS and CCS over the whole pool); ':global' / ':balanced' after a method "
                             "name override it"),
    },  # plus one key per joint selector, per-epoch sampler or selection method with options (ccs): its
    # options (``_method_options``), e.g. ``infobatch: {prune_ratio: 0.5}``, ``ccs: {strata: 50}``
    "student": {
        **_train_fields("small_cnn", 30),
        "seeds": Field("list", [0], item="int", check=_each(SEED)),
        "loss": Field("str", "kd", check=_one_of("losses"),
                      doc="KD loss; its own options under student.<loss>; the no-KD baseline (ce) always runs too"),
        "kd_schedule": Field("str", "constant", check=_one_of("schedules"),
                             doc="KD weight vs kept fraction: a registered schedule (kdprune/distill/schedules), whose "
                                 "argument is a student key its registration declares: constant (kd_weights), linear "
                                 "(kd_linear), table (kd_table)"),
        "temperature": Field("float", 4.0, check=_range(0.0, lo_open=True)),
        "cached_logits": Field("bool", True, doc="with augmentation off (pad 0, no flip), compute each teacher's "
                                                 "logits once instead of on every batch"),
        "teachers": Field("list", [], item="str", check=_each(_one_of("models"), nonempty=False),
                          doc="extra teacher architectures (trained like the teacher) students also distil from"),
        "teachers_max_fraction": Field("float", 1.0, check=FRACTION,
                                       doc="extra teachers are used for subsets kept at this fraction or below"),
        "budget": Field("str", "epochs", check=lambda v: None if v in ("epochs", "steps") else
                        "must be 'epochs' (fewer steps on smaller subsets) or 'steps' (compute-matched to the full "
                        "data at student.epochs)"),
    },  # plus one key per KD loss: its options (``_method_options``), e.g. ``my_loss: {beta: 0.5}``, and each
    # schedule's argument (kd_weights, kd_linear, kd_table: ``ARGUMENT_SECTIONS``)
}


def _kind_ok(kind: str, v: Any) -> bool:
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "float":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    if kind == "list":
        return isinstance(v, list)
    if kind == "any":
        return True
    if kind == "dict":
        return isinstance(v, dict)
    raise AssertionError(kind)


def _walk(schema: dict, given: Any, prefix: str, errors: list[str]) -> dict:
    out: dict[str, Any] = {}
    if given is None:
        given = {}
    if not isinstance(given, dict):
        errors.append(f"{prefix.rstrip('.') or 'params'}: expected a mapping, got {given!r}")
        return out
    for key in given:
        if key not in schema:
            hint = difflib.get_close_matches(str(key), list(schema), n=1)
            did = f"did you mean '{prefix}{hint[0]}'? " if hint else ""
            errors.append(f"{prefix}{key}: unknown key; {did}allowed keys here: {', '.join(schema)}")
    for key, spec in schema.items():
        name = prefix + key
        if isinstance(spec, dict):
            out[key] = _walk(spec, given.get(key), name + ".", errors)
            continue
        if key not in given:
            if spec.required:
                errors.append(f"{name}: missing; it is required")
            out[key] = spec.default
            continue
        v = given[key]
        if v is None and spec.nullable:
            out[key] = None
            continue
        if not _kind_ok(spec.kind, v):
            errors.append(f"{name}: got {v!r}, expected {'a list' if spec.kind == 'list' else 'a mapping' if spec.kind == 'dict' else 'a ' + spec.kind}")
            continue
        if spec.kind == "list" and spec.item and not all(_kind_ok(spec.item, x) for x in v):
            errors.append(f"{name}: got {v!r}, expected a list of {spec.item}s")
            continue
        if spec.kind == "float":
            v = float(v)
        if spec.kind == "list" and spec.item == "float":
            v = [float(x) for x in v]
        if any(x != x or x in (float("inf"), float("-inf")) for x in (v if isinstance(v, list) else [v])
               if isinstance(x, float)):
            errors.append(f"{name}: got {v!r}, expected a finite number (not .nan or .inf)")
            continue
        msg = spec.check(v) if spec.check else None
        if msg:
            errors.append(f"{name}: {v!r} {msg}")
            continue
        out[key] = v
    return out


def validate(params: Any, stage: Optional[str] = None) -> Params:
    """Check params.yaml; return it typed (:class:`kdprune.settings.Params`: one frozen value per section, every
    method's options resolved; ``as_dict()``: the plain values with defaults filled in). Every key's type, range and cross-key rule
    is checked; names (datasets, architectures, scores, methods, losses, schedules) are checked against
    every registry, or with ``stage`` only against the registries that stage uses (STAGE_NAMES)."""
    names = frozenset(REGISTRIES) if stage is None else frozenset(STAGE_NAMES[stage])
    token = _CHECKED.set(names)
    try:
        errors: list[str] = []
        method_opts: dict[str, dict] = {}
        checked: dict[str, dict] = {}  # section -> method -> its options as resolved while checking them: used once
        for section in OPTION_SECTIONS:  # scores.<score>, select.<joint selector or sampler>: its options
            if isinstance(params, dict) and isinstance(params.get(section), dict):
                method_opts[section] = {k: v for k, v in params[section].items() if k not in SCHEMA[section]}
                params = {**params, section: {k: v for k, v in params[section].items() if k in SCHEMA[section]}}
        out = _walk(SCHEMA, params, "", errors)
        for section, opts in method_opts.items():
            resolved = {key: _method_options(section, key, v, errors) for key, v in opts.items()}
            if section not in out:
                continue
            arguments = _arguments(section)
            checked[section] = {k: v for k, v in resolved.items() if v is not None and k not in arguments}
            for k, v in opts.items():  # a method's options as given (its consumer resolves them); an argument
                if k in arguments:     # checked and converted; out of scope as given
                    out[section][k] = resolved[k]
                elif isinstance(v, dict) or section in ARGUMENT_SECTIONS:
                    out[section][k] = v
        for section in ARGUMENT_SECTIONS:  # every argument has a value (its declared default), section given or not
            for param, spec in _arguments(section).items():
                if isinstance(out.get(section), dict):
                    out[section].setdefault(param, spec.option.convert(spec.option.default))
        st = out.get("student")
        if not errors and "losses" in _CHECKED.get() and isinstance(st, dict):
            loss = _registry("losses").get(st["loss"])
            if loss.options:  # the chosen loss's own options, resolved: what the trainer passes to it
                st[loss.name] = checked.get("student", {}).get(loss.name) or loss.resolve(None)
        typed = None if errors else _typed(out, checked, errors)
        if typed is not None:  # cross-key rules; a method's own (its registration's check) reads the typed params
            _cross_checks(out, typed, errors)
        if not errors:  # the KD settings, from the schedule's argument its own check has accepted
            typed = replace(typed, student=replace(typed.student, kd_settings=_kd_settings(out, typed.select)))
    finally:
        _CHECKED.reset(token)
    if errors:
        raise ParamsError("invalid params.yaml:\n  " + "\n  ".join(errors), errors)
    return typed


def _data_checks(p: dict, errors: list[str]) -> None:
    """data.loader against the dataset (which can stream, which can be held in memory), the stream sizes,
    and the in-memory translation (pad) that a streamed dataset does not have."""
    d = p["data"]
    if d["resize"] < d["image_size"]:
        errors.append(f"data.resize: {d['resize']} is smaller than data.image_size {d['image_size']}; evaluation "
                      "resizes the shorter side to data.resize and centre-crops data.image_size from it")
    if "datasets" not in _CHECKED.get():
        return
    streamable = importlib.import_module("kdprune.data.stream").FILE_DATASETS
    dataset, loader = d["dataset"], d["loader"]
    if loader == "stream" and dataset not in streamable:
        errors.append(f"data.loader: 'stream' but dataset {dataset!r} is not read from image files; streamable "
                      f"datasets: {', '.join(streamable.names())}; use loader memory (or auto) for {dataset}")
    has_memory_form = not getattr(_registry("datasets").get(dataset), "streamed_only", False)
    if loader == "memory" and not has_memory_form:
        errors.append(f"data.loader: 'memory' but dataset {dataset!r} has no in-memory form (it is streamed from "
                      "files); set data.loader: stream (or auto)")
    streamed = dataset in streamable and (loader == "stream" or not has_memory_form)
    if streamed:
        for s in ("teacher", "student"):
            if p[s]["pad"]:
                errors.append(f"{s}.pad: {p[s]['pad']} with a streamed dataset ({dataset}, data.loader {loader}); "
                              "translation is the in-memory augmentation, streamed data is augmented by "
                              "random-resized crops (data.random_crop): set pad: 0")


def _cross_checks(p: dict, params: Params, errors: list[str]) -> None:
    """Rules across keys, on the plain values ``p``; a registered method's own rule gets the typed ``params``."""
    _data_checks(p, errors)
    sp, sel = p["scores"], p["select"]
    compiled = [s for s in ("teacher", "student") if p[s]["compile"]]
    if compiled and p["reproducibility"]["cpu"] == "portable" and not str(p["device"]).startswith("cuda"):
        import torch  # device auto: CUDA when present (kdprune.device's rule)

        if p["device"] == "cpu" or not torch.cuda.is_available():
            errors.extend(f"{s}.compile: true trains on the CPU here, where torch.compile generates code for this "
                          "machine's instruction set, which reproducibility.cpu: portable cannot pin (and with ATen "
                          "pinned at AVX2, torch 2.15's CPU inductor trained to NaN losses here); set compile: false, "
                          "or reproducibility.cpu: native" for s in compiled)
    if "scores" in _CHECKED.get():  # each computed score's own cross-key rule (its registration's ``check``)
        scores = _registry("scores")
        proxied = []
        for name in sp["methods"]:
            spec = scores.get(name)
            msg = spec.check(params.scores.options_of(name), params) if spec.check else None
            if msg and msg not in errors:  # grand and grand_last_layer share one rule
                errors.append(msg)
            proxied += [name] if "proxy" in spec.proxies else []
        needs_logits = [n for n in sp["methods"] if scores.get(n).needs_logits]
        if needs_logits and p["teacher"]["dynamics"] == "stats":
            errors.append(f"teacher.dynamics: 'stats' records per-example statistics, but scores.methods "
                          f"{', '.join(repr(n) for n in needs_logits)} need the full logits (they declare no "
                          "statistics); allowed with them: logits or auto")
        if proxied and sp["proxy_epochs"] > p["teacher"]["epochs"]:
            errors.append(f"scores.proxy_epochs: {sp['proxy_epochs']} is more than the teacher's schedule; proxies "
                          f"({', '.join(proxied)}) run the first epochs of it: allowed 1..teacher.epochs "
                          f"({p['teacher']['epochs']})")
    parsed = params.select.methods if params.select is not None else ()  # parsed once, by _typed
    for m in parsed:
        label = m.label
        for score in dict.fromkeys(x for x in (m.score, m.cut_score) if x is not None):
            if score not in sp["methods"]:
                errors.append(f"select.methods: {label!r} reads score {score!r}, which scores.methods "
                              f"{sp['methods']} does not compute; add it there")
    for kind in ("static_methods", "samplers"):  # each selection method's own cross-key rule (its registration's)
        if kind not in _CHECKED.get():
            continue
        declared = _registry(kind)
        for name in dict.fromkeys(label.partition(":")[0] for label in sel["methods"]):
            spec = declared.get(name) if name in declared else None
            msg = spec.check(params.select.options_of(name), params) if spec and spec.check else None
            if msg:
                errors.append(msg)
    if p["runner"]["kind"] == "local" and p["runner"]["address"] is not None:
        errors.append(f"runner.address: {p['runner']['address']!r} is only used with runner.kind 'ray'; set "
                      "runner.kind: ray to run on that cluster, or address: null")
    _teacher_workers(p, errors)
    st = p["student"]
    if "schedules" in _CHECKED.get():  # the chosen schedule's own rule on its argument (its registration's check)
        spec = _registry("schedules").get(st["kd_schedule"])
        msg = spec.check(st[spec.param], params) if spec.check else None
        if msg:
            errors.append(msg)
    if p["teacher"]["arch"] in st["teachers"]:
        errors.append(f"student.teachers: {p['teacher']['arch']!r} is already the teacher (teacher.arch); list only "
                      "the extra architectures")
    stochastic = [m.label for m in parsed if m.stochastic]
    if stochastic and sorted(p["scores"]["seeds"]) != sorted(p["student"]["seeds"]):
        errors.append(
            f"scores.seeds: {p['scores']['seeds']} differs from student.seeds {p['student']['seeds']}; seeded selection "
            f"({', '.join(stochastic)}) must run at the same seeds as the students of every other method: set both "
            "to the same list"
        )


def _teacher_workers(p: dict, errors: list[str]) -> None:
    """teacher.workers > 1: the device the workers can train on, and a thread for each CPU worker."""
    workers, device, threads = p["teacher"]["workers"], str(p["device"]), p["reproducibility"]["threads"]
    if workers == 1:
        return
    if device.startswith("cuda:"):
        errors.append(f"device: {device!r} names one GPU, but teacher.workers: {workers} trains one worker per GPU "
                      "(Ray gives each its own); set device: cuda or auto")
    if workers > threads and (device == "cpu" or (device == "auto" and p["runner"]["address"] is None
                                                   and not _cuda_here())):  # CPU workers on this machine
        errors.append(f"teacher.workers: {workers} CPU workers share reproducibility.threads ({threads}) and would "
                      f"leave {workers - threads} of them without a thread; allowed at most {threads} workers, or "
                      "raise reproducibility.threads (each worker runs threads // workers torch threads)")


def _cuda_here() -> bool:
    import torch  # device auto: CUDA when present (kdprune.device's rule)

    return torch.cuda.is_available()


# -- the typed sections: what validation gives the stages ---------------------------------------------------


def _section(cls, section: dict, **resolved):
    return cls(**{f.name: resolved[f.name] if f.name in resolved else section[f.name] for f in fields(cls)
                  if f.name in resolved or f.name in section})


def _kd_settings(p: dict, select) -> Optional[tuple]:
    """Per kept fraction the select stage makes (each method's fractions: ``select.fractions``, or a full-data
    sampler's 1.0), the KD settings of its students: one per arm of ``student.kd_schedule`` and teacher allowed
    at that fraction (``teacher.arch``, and ``student.teachers`` up to ``student.teachers_max_fraction``), each
    with the schedule's weight there (its registration's ``fn(fraction, arg)``, called here once). None when the
    KD or selection registries are out of the validating stage's scope (``select``: the typed select section)."""
    if select is None or not {"losses", "schedules"} <= _CHECKED.get():
        return None
    st = p["student"]
    kd_setting = importlib.import_module("kdprune.distill").KDSetting  # in scope: "losses", "schedules"
    spec = _registry("schedules").get(st["kd_schedule"])
    options = tuple(sorted((st.get(st["loss"]) or {}).items()))
    out = []
    for f in sorted({f for m in select.methods for f in select.fractions_of(m)}):
        teachers = [p["teacher"]["arch"]] + [t for t in st["teachers"] if f <= st["teachers_max_fraction"] + 1e-9]
        out.append((f, tuple(kd_setting(st["loss"], spec.fn(f, arg), st["temperature"], t, spec.name, label, options)
                             for arg, label in spec.arms(st[spec.param]) for t in teachers)))
    return tuple(out)


def _typed(p: dict, checked: dict[str, dict], errors: list[str]) -> Optional[Params]:
    """Validated params ``p`` as typed, frozen sections (the registries in scope resolve the methods' parts:
    each computed score's options, the select section's methods and options; the KD settings follow the
    cross-key checks: :func:`_kd_settings`). ``checked``: the options params name, as resolved while checking
    them (section -> method -> options); a method named without options gets its registration's defaults."""
    st, sp = p["student"], p["scores"]
    score_options = {}
    if "scores" in _CHECKED.get():
        scores = _registry("scores")
        given = checked.get("scores", {})
        score_options = {n: Frozen(given[n] if n in given else scores.get(n).resolve(None)) for n in sp["methods"]}
    select = None
    if {"methods", "joint", "samplers", "static_methods"} <= _CHECKED.get():  # in scope: kdprune.selection
        try:
            select = importlib.import_module("kdprune.selection").select_settings(p["select"], checked.get("select", {}))
        except ValueError as e:  # an entry the per-key check let through, which this section's setup refuses
            errors.append(f"select: {e}")
            return None
    d = p["data"]
    return Params(
        device=p["device"],
        reproducibility=_section(ReproducibilitySettings, p["reproducibility"]),
        runner=_section(RunnerSettings, p["runner"]),
        data=_section(DataSettings, d, crop_scale=tuple(d["crop_scale"])),
        teacher=_section(TeacherSettings, p["teacher"]),
        scores=_section(ScoresSettings, sp, methods=tuple(sp["methods"]), seeds=tuple(sp["seeds"]),
                        proxy_seeds=tuple(sp["proxy_seeds"]), options=Frozen(score_options)),
        select=select,
        student=_section(StudentSettings, st, seeds=tuple(st["seeds"]), teachers=tuple(st["teachers"]),
                         cached_logits=bool(st["cached_logits"] and st["pad"] == 0 and not st["flip"])),
        plain=Frozen(p),
    )

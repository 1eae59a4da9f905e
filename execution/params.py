"""params.yaml and the profiles: read (checked to read the same under DVC's parser), validated, written."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import yaml

from kdprune.config import SCHEMA, ParamsError, validate
from artifacts.files import atomic_write_text


class Yaml12Numbers(yaml.SafeLoader):
    """PyYAML's safe loader reading numbers as YAML 1.2 (DVC's parser, ruamel) does: ``1e-3`` and ``1E5`` are
    floats there, strings under YAML 1.1's float pattern, which needs a dot. Everything else is PyYAML's."""


Yaml12Numbers.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),  # ruamel's YAML 1.2 float (ruamel/yaml/resolver.py)
    list("-+0123456789."))


def read_yaml(text: str):
    """A params file's or a -S value's YAML, numbers as DVC reads them (Yaml12Numbers)."""
    return yaml.load(text, Loader=Yaml12Numbers)


def load_params(root: Path | str, stage: Optional[str] = None) -> dict:
    """Read and validate ``params.yaml``; raise ParamsError naming every bad key. With ``stage``, names
    are checked only against the registries that stage uses (kdprune.config.STAGE_NAMES)."""
    path = Path(root) / "params.yaml"
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the project directory (the one with params.yaml)")
    try:
        raw = parse_params_text(path, read_params_text(path))
        _require_dvc_keys(Path(root), path, raw)
        params = validate(raw, stage)
    except ParamsError as e:
        raise ParamsError(f"{e}{_uncommitted_note(Path(root), e.errors)}", e.errors) from None
    if stage is not None:  # a stage about to compute: its thread count set, the portable pin verified
        from kdprune.reproducibility import check

        check(params.reproducibility.cpu, params.reproducibility.threads)
    return params


def pin_cpu(root: Path | str, profile: Optional[str] = None, overrides=()) -> None:
    """Before torch or NumPy is imported: the environment ``reproducibility`` asks for (read from the
    params this command will run with: params.yaml, or a profile and -S overrides). Params that do not
    parse are left to validation, which names the problem before anything runs."""
    from kdprune.reproducibility import MODES, apply

    try:
        raw = merged_params(Path(root), profile, list(overrides))
    except (ParamsError, OSError):
        return
    section = raw.get("reproducibility") if isinstance(raw, dict) else None
    section = section if isinstance(section, dict) else {}
    defaults = SCHEMA["reproducibility"]
    mode, threads = section.get("cpu", defaults["cpu"].default), section.get("threads", defaults["threads"].default)
    if mode in MODES and isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        apply(mode, threads)


_RESTORE = "restore it from git (`git checkout params.yaml`) or the default profile (`make profile NAME=digits`)"


def read_params_text(path: Path) -> str:
    """A params file's text; bytes that are not UTF-8 are an error naming the file and the place."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ParamsError(f"{path} is not UTF-8 text: byte {data[e.start:e.start + 1]!r} at line {line} "
                          f"(offset {e.start}); save the file as UTF-8, or {_RESTORE}") from None


def _dvc_tracked(root: Path) -> dict[str, list[str]]:
    """The params.yaml keys dvc.yaml reads (its stages' ``params`` and ``${...}`` in paths), each with the
    stages that read it. DVC fails on one that is missing, after kdprune would have filled a default."""
    spec = root / "dvc.yaml"
    if not spec.exists():
        return {}
    import re

    text = spec.read_text()
    keys: dict[str, list[str]] = {}
    for name, stage in (yaml.safe_load(text) or {}).get("stages", {}).items():
        for entry in stage.get("params", []) or []:
            if isinstance(entry, str):
                keys.setdefault(entry, []).append(name)
            elif isinstance(entry, dict) and isinstance(entry.get("params.yaml"), list):
                for k in entry["params.yaml"]:
                    keys.setdefault(k, []).append(name)
        for k in re.findall(r"\$\{\s*([\w.]+)\s*\}", yaml.safe_dump(stage)):
            keys.setdefault(k, []).append(name)
    return keys


def _require_dvc_keys(root: Path, path: Path, raw: Any) -> None:
    """An empty params.yaml, or one without a section or key DVC tracks, is an error naming it: kdprune
    would fill the default and DVC would fail (or track something else), so neither runs."""
    if raw is None or raw == {}:
        raise ParamsError(f"{path} is empty: every section (data, teacher, scores, select, student, ...) must "
                          f"be there for DVC to track it; {_RESTORE}")
    if not isinstance(raw, dict):
        return  # validate() names it
    missing: dict[str, list[str]] = {}
    for key, stages in _dvc_tracked(root).items():
        node: Any = raw
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                missing.setdefault(".".join(parts[:i + 1]), []).extend(stages)
                break
            node = node[part]
    if missing:
        lines = [f"{k}: missing {'section' if '.' not in k else 'key'}; DVC tracks it (stage"
                 f"{'s' if len(set(s)) > 1 else ''} {', '.join(sorted(set(s)))}), so it must be in params.yaml; "
                 f"{_RESTORE}, then edit"
                 for k, s in sorted(missing.items())]
        raise ParamsError(f"invalid {path.name}:\n  " + "\n  ".join(lines))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _uncommitted_note(root: Path, errors: list[str]) -> str:
    """What to say when a bad key's value differs from the committed params.yaml: `dvc exp run -S` rewrites
    params.yaml before its stages run and leaves the rewrite in place when one fails (here, validate), so
    every later run meets it too."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(root), "show", "HEAD:params.yaml"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return ""
        before, now = _flat(read_yaml(head.stdout) or {}), _flat(read_yaml((root / "params.yaml").read_text()) or {})
    except (OSError, subprocess.SubprocessError, yaml.YAMLError):
        return ""
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k, "<missing>") != now.get(k, "<missing>"))
    bad = [k for k in changed if any(e.split(":", 1)[0].strip() in (k, *_parents(k)) for e in errors)]
    if not bad:
        return ""
    return (f"\n{', '.join(bad)} in params.yaml differ from the last commit: a `dvc exp run -S` that failed leaves "
            "its rewrite of params.yaml in place (DVC does not restore it). Undo it with `git checkout params.yaml`, "
            "or set a valid value (`dvc exp run -S KEY=VALUE`, or edit params.yaml).")


def _parents(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k, "<missing>") != b.get(k, "<missing>"):
                return _first_difference(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{where}.{k}" if where else str(k))
    return f"{where or 'the file'}: {a!r} here, {b!r} for DVC"


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN (``.nan`` reads as NaN under both parsers; validate() then refuses it)."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def parse_params_text(path: Path, text: str) -> dict:
    """A params file's YAML, read as kdprune reads it (PyYAML) and checked to read the same under the
    parser DVC uses (ruamel, YAML 1.2): an unquoted ``random:global`` inside ``[...]`` or a bare ``yes``
    parses under one and not (or differently) under the other, and DVC would then fail or track
    other values than the ones validated."""
    from ruamel.yaml import YAML
    from ruamel.yaml import YAMLError as RuamelError

    try:
        raw = read_yaml(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {e}") from None
    try:
        theirs = YAML(typ="safe").load(text)
    except RuamelError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ParamsError(f"{path}: DVC's YAML parser cannot read it{at}: {getattr(e, 'problem', None) or e}. "
                          "A value holding ':' inside [...] must be quoted, e.g. ['random', 'random:global']") from None
    if not _same(theirs, raw):
        raise ParamsError(f"{path} reads differently under DVC's YAML parser (YAML 1.2) at "
                          f"{_first_difference(raw, theirs)}; quote the value or write true/false") from None
    return raw


def inside(root: Path, rel: str | Path) -> Path:
    """Resolve an output path from params, refusing anything that escapes the project."""
    root = Path(root).resolve()
    p = (root / rel).resolve()
    if p != root and root not in p.parents:
        raise ParamsError(f"path {str(rel)!r} leaves the project directory {root}; use a path inside it")
    return p


PROFILES = "profiles"


def profile_names(root: Path) -> list[str]:
    return sorted(p.stem for p in (Path(root) / PROFILES).glob("*.yaml"))


def parse_override(text: str) -> tuple[list[str], object]:
    """``student.kd_weights=[0.3,0.9]`` -> (["student", "kd_weights"], [0.3, 0.9]); the value is YAML, its
    numbers read as DVC reads ``dvc exp run -S`` (``1e-3`` is a float)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"-S {text!r} is not KEY=VALUE (e.g. -S student.seeds=[0,1,2])")
    try:
        return key.strip().split("."), read_yaml(value)
    except yaml.YAMLError as e:
        raise ParamsError(f"-S {text!r}: the value is not valid YAML: {e}") from None


def _from_override(error: str, overrides: list[str]) -> str | None:
    """The -S that set the key an error line names (``teacher.lr: got ...``), or None."""
    key = error.split(":", 1)[0].strip()
    for text in reversed(overrides):  # the last one of a key wins, as it was applied
        over = text.partition("=")[0].strip()
        if key == over or key.startswith(over + ".") or over.startswith(key + "."):
            return text
    return None


def sweep_params(root: Path, profile: Optional[str], overrides: list[str]) -> dict:
    """The params a sweep runs with: the profile (or the current params.yaml) plus the overrides, validated.
    An error names what it came from: the -S that set the key, or the file."""
    root = Path(root)
    raw = merged_params(root, profile, overrides)
    src = root / PROFILES / f"{profile}.yaml" if profile else root / "params.yaml"
    _require_dvc_keys(root, src, raw)
    try:
        validate(raw)  # every problem named before anything is written
    except ParamsError as e:
        if not e.errors:
            raise
        name = src.relative_to(root) if src.is_relative_to(root) else src
        lines = []
        for err in e.errors:
            over = _from_override(err, overrides)
            lines.append(f"-S {over}: {err}" if over else f"{name}: {err}")
        raise ParamsError(f"invalid params ({name}{' with -S overrides' if overrides else ''}):\n  "
                          + "\n  ".join(lines), e.errors) from None
    return raw


def merged_params(root: Path, profile: Optional[str], overrides: list[str]) -> dict:
    """The profile (or the current params.yaml) plus the overrides, as read, not yet validated."""
    root = Path(root)
    if profile:
        src = root / PROFILES / f"{profile}.yaml"
        if not src.exists():
            raise ParamsError(f"no profile {profile!r} in {root / PROFILES}; available: "
                              f"{', '.join(profile_names(root))}")
    else:
        src = root / "params.yaml"
    raw = parse_params_text(src, read_params_text(src)) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for k in path[:-1]:
            if not isinstance(node.setdefault(k, {}), dict):
                raise ParamsError(f"-S {text!r}: {k} is not a section")
            node = node[k]
        node[path[-1]] = value
    return raw


def write_params(root: Path, raw: dict, origin: str, profile: Optional[str] = None, overrides=()) -> bool:
    """Write params.yaml (atomically) if it differs; True when it changed. A profile without
    overrides is copied verbatim (its comments too)."""
    path = Path(root) / "params.yaml"
    if profile and not overrides:
        text = (Path(root) / PROFILES / f"{profile}.yaml").read_text()
    else:
        text = (f"# kdprune params written by `{origin}`; every key is validated before any compute\n"
                "# (kdprune/config.py). Restore the default profile with `make profile NAME=digits`.\n"
                + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))
    old = read_yaml(path.read_text()) if path.exists() else None
    if old == raw:
        return False
    atomic_write_text(path, text)
    return True

"""Typed options of a registered method (scores, joint selectors, per-epoch samplers): declared in the registration,
named under the method in params.yaml, resolved here with their defaults.

An :class:`Option` states its kind (bool, int, float or str; ``object`` for a structured value, e.g.
a table, which its ``check`` validates), default, allowed values or bounds and a one-line doc; :func:`resolve_options` fills the defaults and refuses an unknown or
bad option, naming the valid ones with their types and defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Option:
    kind: type  # bool, int, float, str, or object (any value: ``validate`` says what is allowed)
    default: Any
    doc: str = ""
    choices: Optional[tuple] = None
    low: Optional[float] = None  # bounds for numbers, inclusive unless low_open / high_open
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    validate: Optional[Callable[[Any], Optional[str]]] = None  # a further rule: error text or None

    def check(self, value: Any) -> Optional[str]:
        ok = (True if self.kind is object else
              isinstance(value, bool) if self.kind is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if self.kind is float else
              isinstance(value, self.kind) and not isinstance(value, bool) if self.kind is int else
              isinstance(value, self.kind))
        if not ok:
            return f"got {value!r}, expected a {self.kind.__name__}"
        if self.choices is not None and value not in self.choices:
            return f"got {value!r}, allowed: {', '.join(map(str, self.choices))}"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"got {value!r}, must be {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return f"got {value!r}, must be {'<' if self.high_open else '<='} {self.high}"
        msg = self.validate(value) if self.validate is not None else None
        return f"got {value!r}, {msg}" if msg else None


def describe_options(options: dict[str, Option]) -> str:
    """``name (kind, default X), ...``: what an error message lists as the valid options."""
    if not options:
        return "no options"
    return ", ".join(f"{k} ({'value' if o.kind is object else o.kind.__name__}, default {o.default!r})"
                     for k, o in options.items())


def resolve_options(owner: str, options: dict[str, Option], given: Optional[dict]) -> dict:
    """The options with defaults filled in (floats as float); ValueError naming every bad or unknown
    option, prefixed ``owner.`` (params validation adds their types and defaults: :func:`describe_options`)."""
    given = dict(given or {})
    errors = [f"{owner}.{k}: unknown option; valid options: {', '.join(options) or 'none'}"
              for k in given if k not in options]
    for k, opt in options.items():
        if k in given:
            msg = opt.check(given[k])
            if msg:
                errors.append(f"{owner}.{k}: {msg}")
    if errors:
        raise ValueError("; ".join(errors))
    out = {k: given.get(k, opt.default) for k, opt in options.items()}
    return {k: float(v) if options[k].kind is float and v is not None else v for k, v in out.items()}

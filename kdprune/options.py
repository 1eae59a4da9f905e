"""Typed options of a registered method (scores, static and joint selectors, per-epoch samplers, KD losses,
KD weight schedules): declared in the registration, named under the method in params.yaml (a schedule's
one argument: a ``student`` key of its own), resolved here with their defaults.

An :class:`Option` states its kind (bool, int, float or str; ``list`` with an ``item`` kind, whose bounds
and choices then apply to each item; ``object`` for a structured value, e.g. a table, which its
``validate`` checks), default, allowed values or bounds and a one-line doc; :func:`resolve_options`
fills the defaults and refuses an unknown or bad option, naming the valid ones with their types and defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import isfinite
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Option:
    kind: type  # bool, int, float, str, list (of ``item``), or object (any value: ``validate`` says what is allowed)
    default: Any
    doc: str = ""
    choices: Optional[tuple] = None
    low: Optional[float] = None  # bounds for numbers, inclusive unless low_open / high_open
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    validate: Optional[Callable[[Any], Optional[str]]] = None  # a further rule: error text or None
    item: Optional[type] = None  # kind list: the kind of each item (bool, int, float, str)

    def __post_init__(self):
        if (self.kind is list) != (self.item is not None):
            raise ValueError(f"Option: item= goes with kind list, and kind list needs it (kind {self.kind.__name__})")

    def _scalar_error(self, kind: type, value: Any) -> Optional[str]:
        """What is wrong with one value of ``kind`` (choices, bounds), or None."""
        ok = (True if kind is object else
              isinstance(value, bool) if kind is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, kind) and not isinstance(value, bool) if kind is int else
              isinstance(value, kind))
        if not ok:
            return f"expected a {kind.__name__}"
        if kind is float and not isfinite(value):
            return "expected a finite number (not .nan or .inf)"
        if self.choices is not None and value not in self.choices:
            return f"allowed: {', '.join(map(str, self.choices))}"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"must be {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return f"must be {'<' if self.high_open else '<='} {self.high}"
        return None

    def check(self, value: Any) -> Optional[str]:
        if self.kind is list:
            if not isinstance(value, list):
                return f"got {value!r}, expected a list of {self.item.__name__}s"
            for v in value:
                msg = self._scalar_error(self.item, v)
                if msg:
                    return f"got {value!r}, item {v!r}: {msg}"
        else:
            msg = self._scalar_error(self.kind, value)
            if msg:
                return f"got {value!r}, {msg}"
        msg = self.validate(value) if self.validate is not None else None
        return f"got {value!r}, {msg}" if msg else None

    def convert(self, value: Any) -> Any:
        """A checked value as the method receives it: numbers of a float option (or items) as floats."""
        if value is not None and self.kind is float:
            return float(value)
        if value is not None and self.kind is list and self.item is float:
            return [float(v) for v in value]
        return value


def describe_options(options: dict[str, Option]) -> str:
    """``name (kind, default X), ...``: what an error message lists as the valid options."""
    if not options:
        return "no options"
    return ", ".join(f"{k} ({'value' if o.kind is object else f'list of {o.item.__name__}s' if o.kind is list else o.kind.__name__}, "
                     f"default {o.default!r})"
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
    return {k: opt.convert(given.get(k, opt.default)) for k, opt in options.items()}

"""Name -> implementation registries used by every pluggable part of the core.

Each method (dataset, model, score, static selector, per-epoch sampler, joint selector, KD loss, KD weight
schedule) is one module that registers itself with a decorator declaring its options
(:class:`kdprune.options.Option`) and its own rules, and its package imports every module it holds
(:func:`discover`): adding a method is adding a file. Asking for a name that is not registered fails
with the valid names.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


def did_you_mean(name: object, names: Iterable[str]) -> str:
    """``"did you mean 'random'? "`` for the registered name closest to a misspelt one, or ''."""
    close = difflib.get_close_matches(str(name), list(names), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


class UnknownNameError(KeyError):
    """A name that no implementation registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; {did_you_mean(name, self.names())}valid names: "
                f"{', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


def discover(package: str, path: Iterable[str]) -> None:
    """Import every module of ``package`` (its ``__name__`` and ``__path__``), in name order, so that each
    registers its methods: a package's face calls it once, and no list of its modules is kept by hand."""
    for name in sorted(m.name for m in pkgutil.iter_modules(path)):
        importlib.import_module(f"{package}.{name}")

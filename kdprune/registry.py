"""Name -> implementation registries used by every pluggable part of the core.

Each method (dataset, model, score, joint selector, loss) is one module that registers itself
with a decorator, and its package imports every module it holds (:func:`discover`): adding a method
is adding a file. Asking for a name that is not registered fails with the valid names.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


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
                f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())}"
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

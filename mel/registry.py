"""Name -> factory registries for variants (methods, encoders, datasets, index types).

Registration is validated: names are lowercase slugs, registered once, and factories are callable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Generic, TypeVar

from mel.errors import ConfigError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class Registry(Generic[T]):
    def __init__(self, kind: str, *, callable_only: bool = True) -> None:
        self.kind = kind
        self.callable_only = callable_only
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be a lowercase slug ([a-z][a-z0-9_-]*)")

        def deco(obj: T) -> T:
            if self.callable_only and not callable(obj):
                raise TypeError(f"{self.kind} {name!r}: registered object must be callable")
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self.check_name(name)
        return self._items[name]

    def check_name(self, name: str) -> None:
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

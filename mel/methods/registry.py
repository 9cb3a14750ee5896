"""Registry of linking methods: name -> factory building a :class:`mel.methods.base.Method`."""

from __future__ import annotations

from mel.registry import Registry

METHODS: Registry = Registry("linking method")
register = METHODS.register


def check_name(name: str) -> None:
    _load_builtin()
    METHODS.check_name(name)


def _load_builtin() -> None:
    # Importing the modules registers the built-in methods; kept light (no heavy imports at module level).
    from mel.methods import llm_select, retrieval  # noqa: F401


def get(name: str):  # noqa: ANN201
    _load_builtin()
    return METHODS.get(name)


def names() -> list[str]:
    _load_builtin()
    return METHODS.names()

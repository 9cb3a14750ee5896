"""Linking methods: declared step lists registered by name (:mod:`mel.methods.registry`).

``build_linker(cfg, index_dir)`` loads the parts a method's steps need and returns the in-process
:class:`mel.runner.Runner`; ``mel eval``, ``mel link`` and the Serve app all run the same declaration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mel.methods import registry
from mel.methods.registry import register_method
from mel.methods.spec import MethodSpec

if TYPE_CHECKING:
    from mel.config import Config
    from mel.runner import Runner


def method_needs(cfg: Config, method: str | None = None) -> set[str]:
    """The heavy parts the method (default ``cfg.method``) needs under ``cfg``, read from its active steps."""
    return registry.get(method or cfg.method).needs(cfg)


def build_linker(cfg: Config, index_dir: str | None, *, method: str | None = None, **parts: Any) -> Runner:
    """Load the parts the method's steps need (or take those passed as keyword arguments) and return its runner."""
    from mel.runner import Runner

    return Runner.load(cfg, index_dir, method=method, **parts)


__all__ = ["MethodSpec", "build_linker", "method_needs", "register_method", "registry"]

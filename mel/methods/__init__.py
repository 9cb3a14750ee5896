"""Linking methods, registered by name. ``build_linker(cfg, index_dir)`` is the one entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mel.methods import registry

if TYPE_CHECKING:
    from mel.config import Config
    from mel.methods.base import Linker


def needs_llm(cfg: Config, method: str | None = None) -> bool:
    name = method or cfg.method
    return name != "retrieval" and cfg.selection.enabled and cfg.selection.fusion_weight > 0


def build_linker(cfg: Config, index_dir: str, *, method: str | None = None, **parts: Any) -> Linker:
    """Load components (or take those passed as keyword arguments) and build the configured method."""
    from mel.methods.base import load_components

    name = method or cfg.method
    factory = registry.get(name)
    comps = load_components(cfg, index_dir, need_llm=needs_llm(cfg, name), **parts)
    return factory(cfg, comps)


__all__ = ["build_linker", "needs_llm", "registry"]

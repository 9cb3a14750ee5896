"""Linking steps, registered by name (``describe``, ``retrieve``, ``rerank``, ``entail``, ``attribute_filter``,
``fuse``, ``select``, ``nil``); see
:mod:`mel.steps.base`."""

from __future__ import annotations

from mel.registry import Registry
from mel.steps.base import HOSTS, PART_CONFIG, Host, MentionState, Step, host_of, segments

STEPS: Registry = Registry("linking step")

# Modules under mel.steps whose import registers the built-in steps (light: heavy imports happen in the steps).
BUILTIN = ("describe", "retrieve", "rerank", "image_stream", "entail", "attribute_filter", "fuse", "select", "gemel",
           "nil")


def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: register a :class:`Step` subclass under its ``name`` (checks its needs have a host)."""
    if not (isinstance(cls, type) and issubclass(cls, Step)):
        raise TypeError(f"{cls!r} is not a Step subclass")
    host_of(cls)
    return STEPS.register(cls.name)(cls)


def _load_builtin() -> None:
    import importlib

    for name in BUILTIN:
        importlib.import_module(f"mel.steps.{name}")


def get_step(name: str) -> type[Step]:
    _load_builtin()
    return STEPS.get(name)


__all__ = ["HOSTS", "PART_CONFIG", "STEPS", "Host", "MentionState", "Step", "get_step", "host_of",
           "register_step", "segments"]

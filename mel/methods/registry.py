"""Registry of linking methods: name -> :class:`mel.methods.spec.MethodSpec`."""

from __future__ import annotations

from mel.methods.spec import MethodSpec
from mel.registry import Registry

METHODS: Registry = Registry("linking method", callable_only=False)

# Modules under mel.methods whose import registers the built-in methods (kept light: no heavy imports).
BUILTIN = ("retrieval", "llm_select", "unimel", "ameli", "gemel")


def register_method(spec: MethodSpec) -> MethodSpec:
    """Register a declared method (its steps are checked: known, ending with a closing step; it must say what its
    final score is, see ``MethodSpec.score``)."""
    spec.validate()
    if not spec.score.strip():
        raise ValueError(f"method {spec.name!r} does not say what its final score is (MethodSpec.score): NIL "
                         "thresholds and calibration act on it, so every method must declare one")
    METHODS.register(spec.name)(spec)
    return spec


def load_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import ``plugins`` modules (config ``plugins``): importing one registers its own steps and methods, so a
    method defined outside ``mel`` runs in ``mel eval``, ``mel link`` and the Serve app without editing them."""
    import importlib

    from mel.errors import ConfigError

    _load_builtin()
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ConfigError(f"plugins: cannot import {mod!r}: {e}") from None


def _load_builtin() -> None:
    import importlib

    for name in BUILTIN:
        importlib.import_module(f"mel.methods.{name}")


def check_name(name: str) -> None:
    _load_builtin()
    METHODS.check_name(name)


def get(name: str) -> MethodSpec:
    _load_builtin()
    return METHODS.get(name)


def names() -> list[str]:
    _load_builtin()
    return METHODS.names()
